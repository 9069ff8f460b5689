// A CUDA execution model on the CPU, for tests only: the unmodified kernel
// sources compile with g++ or clang++ after this header and run with the
// semantics the kernels rely on.
//
//   * every CUDA thread is a fiber (ucontext) with its own stack; the threads of
//     one block run on one OS thread, switching only at rendezvous points
//     (__syncthreads, warp shuffles, __syncwarp, votes, exit), round-robin in
//     thread order: a run is deterministic;
//   * blocks run one after another on a worker OS thread, or, with
//     CUDA_CPU_CONCURRENT_BLOCKS=N, on N worker threads at once so that a race
//     detector sees races between blocks;
//   * __shared__ is thread_local (one copy per worker thread, reused by its
//     blocks like an SM reuses its shared memory); the dynamic shared memory
//     (extern __shared__) is a thread_local array of CUDA_CPU_SHARED_CAPACITY
//     bytes defined by the generated epilogue, whose bytes past the launch's
//     size are poisoned (ASan, valgrind) and checked for writes (canary);
//   * misuse is an error of the launch, not a hang: a barrier not reached by
//     every thread of the block (or reached at different places), a warp
//     operation whose mask omits the caller or names a lane that is missing,
//     exited or waiting elsewhere, a shuffle reading a lane outside its mask,
//     a dynamic shared memory overrun, launch limits (1024 threads per block,
//     48 KiB dynamic shared memory, grid dimensions).
//
// Not modelled: lockstep execution of a warp, the GPU memory model (weak
// ordering, caches), FMA contraction, occupancy, timing.
//
// Sanitizer support: ASan fiber annotations, TSan fibers with explicit
// happens-before edges only at barriers and warp rendezvous (so a missing
// __syncthreads is a data race TSan reports), valgrind stack registration.
#ifndef CUDA_CPU_H
#define CUDA_CPU_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <atomic>
#include <cmath>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define CUDA_CPU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CUDA_CPU_ASAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define CUDA_CPU_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define CUDA_CPU_TSAN 1
#endif
#endif
#if __has_include(<valgrind/memcheck.h>)
#include <valgrind/memcheck.h>
#define CUDA_CPU_VALGRIND 1
#endif

#ifdef CUDA_CPU_ASAN
extern "C" {
void __sanitizer_start_switch_fiber(void** fake_stack_save, const void* bottom, size_t size);
void __sanitizer_finish_switch_fiber(void* fake_stack_save, const void** bottom_old, size_t* size_old);
void __asan_poison_memory_region(void const volatile* addr, size_t size);
void __asan_unpoison_memory_region(void const volatile* addr, size_t size);
}
#endif
#ifdef CUDA_CPU_TSAN
extern "C" {
void* __tsan_get_current_fiber(void);
void* __tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void* fiber);
void __tsan_switch_to_fiber(void* fiber, unsigned flags);
void __tsan_acquire(void* addr);
void __tsan_release(void* addr);
}
// The scheduler's own bookkeeping is shared between fibers without
// happens-before on purpose; only kernel memory is checked.
#define CUDA_CPU_UNCHECKED __attribute__((no_sanitize("thread"), noinline))
#else
#define CUDA_CPU_UNCHECKED
#endif

// ------------------------------------------------------------ CUDA keywords

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
#define __shared__ thread_local

struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
};

static const int warpSize = 32;

// CUDA's max/min/fabs/sqrt overloads for device code (max/min of floating
// point are fmax/fmin, as in CUDA's math headers).
inline float max(float a, float b) { return fmaxf(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline int min(int a, int b) { return a < b ? a : b; }
inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
using std::fabs;
using std::sqrt;

namespace cuda_cpu {

static const int kWarp = 32;
static const unsigned kMaxThreads = 1024;
static const size_t kMaxDynamicShared = 48 * 1024;
static const size_t kStackBytes = 256 * 1024;
static const unsigned char kCanary = 0xA5;
// Bytes of each extern __shared__ array: the 48 KiB limit and a guard.
static const size_t kSharedCapacity = kMaxDynamicShared + 256;

enum class Wait { ready, barrier, warp, done };
enum class WarpOp { shfl_idx, shfl_up, shfl_down, shfl_xor, syncwarp, ballot, any, all };

inline const char* op_name(WarpOp op) {
    switch (op) {
        case WarpOp::shfl_idx: return "__shfl_sync";
        case WarpOp::shfl_up: return "__shfl_up_sync";
        case WarpOp::shfl_down: return "__shfl_down_sync";
        case WarpOp::shfl_xor: return "__shfl_xor_sync";
        case WarpOp::syncwarp: return "__syncwarp";
        case WarpOp::ballot: return "__ballot_sync";
        case WarpOp::any: return "__any_sync";
        default: return "__all_sync";
    }
}

struct Fiber {
    ucontext_t context;
    char* stack;
    uint3 index;
    Wait wait;
    const char* file;    // where it waits
    int line;
    WarpOp op;
    unsigned mask;
    int operand;         // src lane, delta or lane mask
    int width;
    uint64_t value;      // the value it offers
    uint64_t result;     // what it receives
    unsigned round;      // barrier or warp round it waits in (TSan sync slot)
    void* asan_fake_stack;
    void* tsan_fiber;
};

// Dynamic shared memory regions (one per `extern __shared__` name), defined by
// the epilogue the CuPy stand-in appends to the kernel source.
struct SharedRegion {
    const char* name;
    unsigned char* (*address)();
};
extern const SharedRegion dynamic_shared_regions[];
extern const int dynamic_shared_region_count;

struct Worker;
static thread_local Worker* current_worker = nullptr;

// One OS thread running blocks; owns the fibers of its current block.
struct Worker {
    dim3 grid, block;
    size_t shared_bytes;
    unsigned threads;
    const std::function<void()>* body;
    uint3 block_index;
    std::vector<Fiber> fibers;
    Fiber* current = nullptr;
    ucontext_t main;
    const void* main_stack_bottom = nullptr;
    size_t main_stack_size = 0;
    void* main_fake_stack = nullptr;
    void* main_tsan = nullptr;
    unsigned barrier_round = 0;
    std::vector<unsigned> warp_round;
    char barrier_sync[2];   // TSan sync objects: one per barrier round parity
    std::vector<char> warp_sync;
    char start_sync, exit_sync;
    std::string error;
    std::vector<unsigned> valgrind_ids;

    Worker(dim3 g, dim3 b, size_t shared, const std::function<void()>* f)
        : grid(g), block(b), shared_bytes(shared), threads(b.x * b.y * b.z), body(f), fibers(threads) {
        const unsigned warps = (threads + kWarp - 1) / kWarp;
        warp_round.assign(warps, 0);
        warp_sync.assign(2 * warps, 0);
        for (unsigned i = 0; i < threads; ++i) {
            void* stack = mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (stack == MAP_FAILED) {
                fprintf(stderr, "cuda_cpu: cannot map a fiber stack\n");
                abort();
            }
            fibers[i].stack = static_cast<char*>(stack);
#ifdef CUDA_CPU_VALGRIND
            valgrind_ids.push_back(VALGRIND_STACK_REGISTER(fibers[i].stack, fibers[i].stack + kStackBytes));
#endif
        }
    }
    ~Worker() {
        for (unsigned i = 0; i < threads; ++i) {
#ifdef CUDA_CPU_ASAN
            __asan_unpoison_memory_region(fibers[i].stack, kStackBytes);
#endif
#ifdef CUDA_CPU_VALGRIND
            VALGRIND_STACK_DEREGISTER(valgrind_ids[i]);
#endif
            munmap(fibers[i].stack, kStackBytes);
        }
    }

    std::string where(const Fiber& f) const {
        char text[160];
        snprintf(text, sizeof text, "thread (%u,%u,%u) of block (%u,%u,%u)", f.index.x, f.index.y, f.index.z,
                 block_index.x, block_index.y, block_index.z);
        return text;
    }
    static std::string site(const Fiber& f) { return std::string(f.file) + ":" + std::to_string(f.line); }

    void fail(const std::string& message) {
        if (error.empty()) error = message;
    }

    // ---- fiber switching (scheduler side)
    CUDA_CPU_UNCHECKED void resume(Fiber& f) {
        current = &f;
#ifdef CUDA_CPU_ASAN
        __sanitizer_start_switch_fiber(&main_fake_stack, f.stack, kStackBytes);
#endif
#ifdef CUDA_CPU_TSAN
        __tsan_switch_to_fiber(f.tsan_fiber, 1 /* no_sync: only barriers order threads */);
#endif
        swapcontext(&main, &f.context);
#ifdef CUDA_CPU_ASAN
        __sanitizer_finish_switch_fiber(main_fake_stack, nullptr, nullptr);
#endif
        current = nullptr;
    }

    // ---- fiber switching (fiber side)
    CUDA_CPU_UNCHECKED void suspend(Fiber& f) {
#ifdef CUDA_CPU_ASAN
        __sanitizer_start_switch_fiber(&f.asan_fake_stack, main_stack_bottom, main_stack_size);
#endif
#ifdef CUDA_CPU_TSAN
        __tsan_switch_to_fiber(main_tsan, 1);
#endif
        swapcontext(&f.context, &main);
#ifdef CUDA_CPU_ASAN
        __sanitizer_finish_switch_fiber(f.asan_fake_stack, &main_stack_bottom, &main_stack_size);
#endif
    }

    CUDA_CPU_UNCHECKED static void entry() {
        Worker* w = current_worker;
#ifdef CUDA_CPU_ASAN
        __sanitizer_finish_switch_fiber(nullptr, &w->main_stack_bottom, &w->main_stack_size);
#endif
#ifdef CUDA_CPU_TSAN
        __tsan_acquire(&w->start_sync);
#endif
        (*w->body)();
        Fiber& f = *w->current;
        f.wait = Wait::done;
#ifdef CUDA_CPU_TSAN
        __tsan_release(&w->exit_sync);
#endif
#ifdef CUDA_CPU_ASAN
        __sanitizer_start_switch_fiber(nullptr, w->main_stack_bottom, w->main_stack_size);
#endif
#ifdef CUDA_CPU_TSAN
        __tsan_switch_to_fiber(w->main_tsan, 1);
#endif
        setcontext(&w->main);
    }

    // ---- dynamic shared memory guard
    void guard_shared() {
        for (int r = 0; r < dynamic_shared_region_count; ++r) {
            unsigned char* base = dynamic_shared_regions[r].address();
            memset(base + shared_bytes, kCanary, kSharedCapacity - shared_bytes);
#ifdef CUDA_CPU_VALGRIND
            VALGRIND_MAKE_MEM_UNDEFINED(base, shared_bytes);   // shared memory starts uninitialized
            VALGRIND_MAKE_MEM_NOACCESS(base + shared_bytes, kSharedCapacity - shared_bytes);
#endif
#ifdef CUDA_CPU_ASAN
            __asan_poison_memory_region(base + shared_bytes, kSharedCapacity - shared_bytes);
#endif
        }
    }
    void check_shared() {
        for (int r = 0; r < dynamic_shared_region_count; ++r) {
            unsigned char* base = dynamic_shared_regions[r].address();
            const size_t span = kSharedCapacity - shared_bytes;
#ifdef CUDA_CPU_ASAN
            __asan_unpoison_memory_region(base + shared_bytes, span);
#endif
#ifdef CUDA_CPU_VALGRIND
            VALGRIND_MAKE_MEM_DEFINED(base + shared_bytes, span);
#endif
            for (size_t i = 0; i < span; ++i) {
                if (base[shared_bytes + i] != kCanary) {
                    char text[256];
                    snprintf(text, sizeof text,
                             "dynamic shared memory overrun: block (%u,%u,%u) wrote byte %zu of extern __shared__ "
                             "%s, but the launch gave %zu bytes",
                             block_index.x, block_index.y, block_index.z, shared_bytes + i,
                             dynamic_shared_regions[r].name, shared_bytes);
                    fail(text);
                    break;
                }
            }
        }
    }

    // ---- the block's scheduler
    CUDA_CPU_UNCHECKED void run_block(uint3 index) {
        block_index = index;
        barrier_round = 0;
        guard_shared();
#ifdef CUDA_CPU_TSAN
        main_tsan = __tsan_get_current_fiber();
        __tsan_release(&start_sync);
#endif
        for (unsigned i = 0; i < threads; ++i) {
            Fiber& f = fibers[i];
            f.index = uint3{i % block.x, (i / block.x) % block.y, i / (block.x * block.y)};
            f.wait = Wait::ready;
            f.asan_fake_stack = nullptr;
            getcontext(&f.context);
            f.context.uc_stack.ss_sp = f.stack;
            f.context.uc_stack.ss_size = kStackBytes;
            f.context.uc_link = nullptr;
            makecontext(&f.context, &Worker::entry, 0);
#ifdef CUDA_CPU_TSAN
            f.tsan_fiber = __tsan_create_fiber(0);
#endif
        }
        unsigned live = threads;
        while (live > 0 && error.empty()) {
            for (unsigned i = 0; i < threads && error.empty(); ++i) {
                if (fibers[i].wait == Wait::ready) {
                    resume(fibers[i]);
                    if (fibers[i].wait == Wait::done) --live;
                }
            }
            if (live == 0 || !error.empty()) break;
            if (!complete_warp_operations() && error.empty()) complete_barrier(live);
        }
#ifdef CUDA_CPU_TSAN
        for (unsigned i = 0; i < threads; ++i) __tsan_destroy_fiber(fibers[i].tsan_fiber);
        __tsan_acquire(&exit_sync);
#endif
#ifdef CUDA_CPU_ASAN
        if (!error.empty()) {   // abandoned fibers leave poisoned frames behind
            for (unsigned i = 0; i < threads; ++i) __asan_unpoison_memory_region(fibers[i].stack, kStackBytes);
        }
#endif
        check_shared();
    }

    // Every live thread waits somewhere. Completes each warp operation whose
    // mask is fully present; reports a mask naming a lane that is missing,
    // exited or waiting elsewhere. True when some operation completed.
    CUDA_CPU_UNCHECKED bool complete_warp_operations() {
        bool progressed = false;
        const unsigned warps = (threads + kWarp - 1) / kWarp;
        for (unsigned w = 0; w < warps && error.empty(); ++w) {
            const unsigned first = w * kWarp;
            const unsigned lanes = threads - first < (unsigned)kWarp ? threads - first : (unsigned)kWarp;
            for (unsigned l = 0; l < lanes && error.empty(); ++l) {
                const Fiber& f = fibers[first + l];
                if (f.wait == Wait::warp && !(f.mask >> l & 1u)) {
                    fail(std::string(op_name(f.op)) + " at " + site(f) + ": the mask " + hex(f.mask) +
                         " omits the calling lane " + std::to_string(l) + " (" + where(f) + ")");
                }
            }
            for (unsigned l = 0; l < lanes && error.empty(); ++l) {
                const Fiber& f = fibers[first + l];
                if (f.wait != Wait::warp) continue;
                for (unsigned m = 0; m < (unsigned)kWarp && error.empty(); ++m) {
                    if (!(f.mask >> m & 1u)) continue;
                    std::string problem;
                    if (m >= lanes) {
                        problem = "does not exist (the block has " + std::to_string(threads) + " threads)";
                    } else {
                        const Fiber& g = fibers[first + m];
                        if (g.wait == Wait::done) {
                            problem = "has exited";
                        } else if (g.wait == Wait::barrier) {
                            problem = "waits at __syncthreads at " + site(g);
                        } else if (g.wait != Wait::warp || g.op != f.op || g.mask != f.mask ||
                                   strcmp(g.file, f.file) != 0 || g.line != f.line) {
                            problem = std::string("waits at ") + op_name(g.op) + " at " + site(g) + " with mask " +
                                      hex(g.mask);
                        }
                    }
                    if (!problem.empty()) {
                        fail(std::string(op_name(f.op)) + " at " + site(f) + " by " + where(f) + " with mask " +
                             hex(f.mask) + ": lane " + std::to_string(m) + " " + problem);
                    }
                }
                if (error.empty()) {
                    exchange(first, lanes, f.mask);
                    progressed = true;
                }
            }
        }
        return progressed;
    }

    static std::string hex(unsigned mask) {
        char text[16];
        snprintf(text, sizeof text, "0x%08x", mask);
        return text;
    }

    CUDA_CPU_UNCHECKED void exchange(unsigned first, unsigned lanes, unsigned mask) {
        uint32_t ballot = 0;
        for (unsigned m = 0; m < lanes; ++m) {
            if (mask >> m & 1u && fibers[first + m].value != 0) ballot |= 1u << m;
        }
        for (unsigned m = 0; m < lanes && error.empty(); ++m) {
            if (!(mask >> m & 1u)) continue;
            Fiber& f = fibers[first + m];
            const int width = f.width;
            const int base = (int)m - (int)m % width;
            int source = (int)m;
            switch (f.op) {
                case WarpOp::shfl_idx: source = base + ((f.operand % width) + width) % width; break;
                case WarpOp::shfl_up: source = (int)m % width >= f.operand ? (int)m - f.operand : (int)m; break;
                case WarpOp::shfl_down:
                    source = (int)m % width + f.operand < width ? (int)m + f.operand : (int)m;
                    break;
                case WarpOp::shfl_xor: {
                    const int target = (int)m ^ f.operand;
                    source = target < base + width ? target : (int)m;
                    break;
                }
                default: break;
            }
            switch (f.op) {
                case WarpOp::syncwarp: f.result = 0; break;
                case WarpOp::ballot: f.result = ballot; break;
                case WarpOp::any: f.result = (ballot & mask) != 0; break;
                case WarpOp::all: f.result = (ballot & mask) == mask; break;
                default:
                    if (source < 0 || source >= kWarp || !(mask >> source & 1u)) {
                        fail(std::string(op_name(f.op)) + " at " + site(f) + " by " + where(f) + " reads lane " +
                             std::to_string(source) + ", outside its mask " + hex(mask));
                        return;
                    }
                    f.result = fibers[first + source].value;
            }
        }
        for (unsigned m = 0; m < lanes; ++m) {
            if (mask >> m & 1u) fibers[first + m].wait = Wait::ready;
        }
        ++warp_round[first / kWarp];
    }

    // No warp operation could complete: every live thread must wait at the
    // same __syncthreads, and none may have exited.
    CUDA_CPU_UNCHECKED void complete_barrier(unsigned live) {
        const Fiber* at = nullptr;
        for (unsigned i = 0; i < threads && !at; ++i) {
            if (fibers[i].wait == Wait::barrier) at = &fibers[i];
        }
        if (!at) {
            for (unsigned i = 0; i < threads; ++i) {
                if (fibers[i].wait == Wait::warp) {
                    fail(std::string(op_name(fibers[i].op)) + " at " + site(fibers[i]) + " by " +
                         where(fibers[i]) + " never completes");
                    return;
                }
            }
            fail("scheduler: no thread can run");
            return;
        }
        for (unsigned i = 0; i < threads; ++i) {
            const Fiber& f = fibers[i];
            if (f.wait == Wait::done) {
                fail("__syncthreads at " + site(*at) + " waited for " + where(f) +
                     ", which has exited (" + std::to_string(live) + " of " + std::to_string(threads) +
                     " threads are live)");
                return;
            }
            if (f.wait == Wait::warp) {
                fail("__syncthreads at " + site(*at) + " waited for " + where(f) + ", which waits at " +
                     op_name(f.op) + " at " + site(f));
                return;
            }
            if (strcmp(f.file, at->file) != 0 || f.line != at->line) {
                fail("__syncthreads reached at different places: " + where(*at) + " at " + site(*at) + ", " +
                     where(f) + " at " + site(f));
                return;
            }
        }
        for (unsigned i = 0; i < threads; ++i) fibers[i].wait = Wait::ready;
        ++barrier_round;
    }
};

// ---- what kernel code calls (fiber side)

CUDA_CPU_UNCHECKED inline uint3 thread_index() { return current_worker->current->index; }
CUDA_CPU_UNCHECKED inline uint3 block_index() { return current_worker->block_index; }
CUDA_CPU_UNCHECKED inline dim3 block_dim() { return current_worker->block; }
CUDA_CPU_UNCHECKED inline dim3 grid_dim() { return current_worker->grid; }

CUDA_CPU_UNCHECKED inline void syncthreads(const char* file, int line) {
    Worker* w = current_worker;
    Fiber& f = *w->current;
    f.wait = Wait::barrier;
    f.file = file;
    f.line = line;
    f.round = w->barrier_round;
#ifdef CUDA_CPU_TSAN
    __tsan_release(&w->barrier_sync[f.round & 1]);
#endif
    w->suspend(f);
#ifdef CUDA_CPU_TSAN
    __tsan_acquire(&w->barrier_sync[f.round & 1]);
#endif
}

CUDA_CPU_UNCHECKED inline uint64_t warp_rendezvous(WarpOp op, unsigned mask, uint64_t value, int operand, int width,
                                                   const char* file, int line) {
    Worker* w = current_worker;
    Fiber& f = *w->current;
    const unsigned warp = (unsigned)(&f - w->fibers.data()) / kWarp;
    f.wait = Wait::warp;
    f.op = op;
    f.mask = mask;
    f.value = value;
    f.operand = operand;
    f.width = width;
    f.file = file;
    f.line = line;
    f.round = w->warp_round[warp];
    if (width <= 0 || width > kWarp || (width & (width - 1)) != 0) {
        w->fail(std::string(op_name(op)) + " at " + Worker::site(f) + ": width " + std::to_string(width) +
                " is not a power of two up to 32");
    }
#ifdef CUDA_CPU_TSAN
    __tsan_release(&w->warp_sync[2 * warp + (f.round & 1)]);
#endif
    w->suspend(f);
#ifdef CUDA_CPU_TSAN
    __tsan_acquire(&w->warp_sync[2 * warp + (f.round & 1)]);
#endif
    return f.result;
}

template <typename T>
inline T shuffle(WarpOp op, unsigned mask, T var, int operand, int width, const char* file, int line) {
    static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "shuffles move up to 8 bytes");
    uint64_t bits = 0;
    memcpy(&bits, &var, sizeof(T));
    bits = warp_rendezvous(op, mask, bits, operand, width, file, line);
    T out;
    memcpy(&out, &bits, sizeof(T));
    return out;
}

// ---- launching (host side)

template <typename T>
const char* scalar_code() {
    typedef typename std::remove_cv<T>::type U;
    if (std::is_same<U, float>::value) return "float32";
    if (std::is_same<U, double>::value) return "float64";
    if (std::is_same<U, bool>::value) return "bool";
    if (std::is_integral<U>::value) {
        static const char* signed_names[] = {"", "int8", "int16", "", "int32", "", "", "", "int64"};
        static const char* unsigned_names[] = {"", "uint8", "uint16", "", "uint32", "", "", "", "uint64"};
        return std::is_signed<U>::value ? signed_names[sizeof(U)] : unsigned_names[sizeof(U)];
    }
    return "unsupported";
}

template <typename T>
std::string parameter_code() {
    if (std::is_pointer<T>::value) {
        typedef typename std::remove_pointer<T>::type E;
        return std::string("pointer:") + (std::is_const<E>::value ? "const " : "") + scalar_code<E>();
    }
    return scalar_code<T>();
}

// "float32,pointer:const float64,...": the kernel's parameter types, for the
// caller to check its arguments against.
template <typename... A>
const char* signature(void (*)(A...)) {
    static const std::string text = [] {
        std::string s;
        const std::string codes[] = {parameter_code<A>()..., ""};
        for (size_t i = 0; i + 1 < sizeof...(A) + 1; ++i) s += (i ? "," : "") + codes[i];
        return s;
    }();
    return text.c_str();
}

inline std::string check_configuration(dim3 grid, dim3 block, size_t shared) {
    char text[256];
    const unsigned long long threads = (unsigned long long)block.x * block.y * block.z;
    if (block.x == 0 || block.y == 0 || block.z == 0 || grid.x == 0 || grid.y == 0 || grid.z == 0) {
        snprintf(text, sizeof text, "launch: empty grid (%u,%u,%u) or block (%u,%u,%u)", grid.x, grid.y, grid.z,
                 block.x, block.y, block.z);
        return text;
    }
    if (threads > kMaxThreads || block.x > 1024 || block.y > 1024 || block.z > 64) {
        snprintf(text, sizeof text, "launch: block (%u,%u,%u) exceeds 1024 threads or (1024, 1024, 64)", block.x,
                 block.y, block.z);
        return text;
    }
    if (grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535) {
        snprintf(text, sizeof text, "launch: grid (%u,%u,%u) exceeds (2^31-1, 65535, 65535)", grid.x, grid.y,
                 grid.z);
        return text;
    }
    if (shared > kMaxDynamicShared) {
        snprintf(text, sizeof text, "launch: %zu bytes of dynamic shared memory exceed the 48 KiB limit", shared);
        return text;
    }
    return "";
}

// Runs the grid: blocks one after another on one worker thread, or on
// CUDA_CPU_CONCURRENT_BLOCKS worker threads at once, worker w taking blocks
// w, w + workers, ...: neighbouring blocks always run on different threads,
// with no happens-before between them, so TSan sees any race between them
// whatever the timing.
inline std::string run_grid(dim3 grid, dim3 block, size_t shared, const std::function<void()>& body) {
    const unsigned long long blocks = (unsigned long long)grid.x * grid.y * grid.z;
    const char* concurrent = getenv("CUDA_CPU_CONCURRENT_BLOCKS");
    unsigned long long workers = concurrent ? strtoull(concurrent, nullptr, 10) : 1;
    if (workers < 1) workers = 1;
    if (workers > blocks) workers = blocks;
    std::atomic<bool> failed(false);
    std::mutex lock;
    std::string error;
    auto work = [&](unsigned long long first) {
        Worker w(grid, block, shared, &body);
        current_worker = &w;
        for (unsigned long long b = first; b < blocks; b += workers) {
            if (failed.load(std::memory_order_relaxed)) break;
            w.run_block(uint3{(unsigned)(b % grid.x), (unsigned)(b / grid.x % grid.y),
                              (unsigned)(b / ((unsigned long long)grid.x * grid.y))});
            if (!w.error.empty()) {
                std::lock_guard<std::mutex> guard(lock);
                if (error.empty()) error = w.error;
                failed.store(true, std::memory_order_relaxed);
                break;
            }
        }
        current_worker = nullptr;
    };
    std::vector<std::thread> pool;
    for (unsigned long long i = 0; i < workers; ++i) pool.emplace_back(work, i);
    for (auto& t : pool) t.join();
    return error;
}

template <typename... A, size_t... I>
int launch_with(void (*kernel)(A...), const unsigned* grid, const unsigned* block, size_t shared, void** args,
                char* message, size_t message_size, std::index_sequence<I...>) {
    const dim3 g{grid[0], grid[1], grid[2]};
    const dim3 b{block[0], block[1], block[2]};
    std::string error = check_configuration(g, b, shared);
    if (error.empty()) {
        const std::tuple<A...> values(*static_cast<A*>(args[I])...);
        const std::function<void()> body = [&] { kernel(std::get<I>(values)...); };
        error = run_grid(g, b, shared, body);
    }
    snprintf(message, message_size, "%s", error.c_str());
    return error.empty() ? 0 : 1;
}

// The launch entry point: args[i] points at the value of parameter i (as
// cuLaunchKernel's kernelParams). Returns 0, or 1 with a message.
template <typename... A>
int launch(void (*kernel)(A...), const unsigned* grid, const unsigned* block, size_t shared, void** args,
           char* message, size_t message_size) {
    return launch_with(kernel, grid, block, shared, args, message, message_size, std::index_sequence_for<A...>());
}

}  // namespace cuda_cpu

#define threadIdx (::cuda_cpu::thread_index())
#define blockIdx (::cuda_cpu::block_index())
#define blockDim (::cuda_cpu::block_dim())
#define gridDim (::cuda_cpu::grid_dim())

inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    ::cuda_cpu::syncthreads(file, line);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(),
                       int line = __builtin_LINE()) {
    ::cuda_cpu::warp_rendezvous(::cuda_cpu::WarpOp::syncwarp, mask, 0, 0, 32, file, line);
}
template <typename T>
T __shfl_sync(unsigned mask, T var, int src, int width = 32, const char* file = __builtin_FILE(),
              int line = __builtin_LINE()) {
    return ::cuda_cpu::shuffle(::cuda_cpu::WarpOp::shfl_idx, mask, var, src, width, file, line);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32, const char* file = __builtin_FILE(),
                 int line = __builtin_LINE()) {
    return ::cuda_cpu::shuffle(::cuda_cpu::WarpOp::shfl_up, mask, var, (int)delta, width, file, line);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32, const char* file = __builtin_FILE(),
                   int line = __builtin_LINE()) {
    return ::cuda_cpu::shuffle(::cuda_cpu::WarpOp::shfl_down, mask, var, (int)delta, width, file, line);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32, const char* file = __builtin_FILE(),
                  int line = __builtin_LINE()) {
    return ::cuda_cpu::shuffle(::cuda_cpu::WarpOp::shfl_xor, mask, var, lane_mask, width, file, line);
}
inline unsigned __ballot_sync(unsigned mask, int predicate, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
    return (unsigned)::cuda_cpu::warp_rendezvous(::cuda_cpu::WarpOp::ballot, mask, predicate != 0, 0, 32, file,
                                                 line);
}
inline int __any_sync(unsigned mask, int predicate, const char* file = __builtin_FILE(),
                      int line = __builtin_LINE()) {
    return (int)::cuda_cpu::warp_rendezvous(::cuda_cpu::WarpOp::any, mask, predicate != 0, 0, 32, file, line);
}
inline int __all_sync(unsigned mask, int predicate, const char* file = __builtin_FILE(),
                      int line = __builtin_LINE()) {
    return (int)::cuda_cpu::warp_rendezvous(::cuda_cpu::WarpOp::all, mask, predicate != 0, 0, 32, file, line);
}

#endif  // CUDA_CPU_H
