// Shared helpers for the cuhouse kernels. No standard headers: the sources are
// compiled by NVRTC through cupy.RawModule as well as by nvcc in CI.
//
// Conventions of every kernel here:
//   * templates over the element type T (float or double), instantiated by
//     name_expressions in cuhouse/_gpu/raw_kernels.py, or by CUHOUSE_INSTANTIATE for nvcc;
//   * inputs and outputs are C-contiguous; all element offsets are 64-bit
//     (cuhouse_index) so stacks larger than 2^31 elements are addressed correctly;
//   * every thread checks its own bounds; threads out of range still reach every
//     __syncthreads of their block;
//   * no atomics: each output element is written by exactly one thread and every
//     reduction runs in a fixed order, so results are bit-reproducible.
#ifndef CUHOUSE_COMMON_CUH
#define CUHOUSE_COMMON_CUH

typedef long long cuhouse_index;

#define CUHOUSE_WARP 32
#define CUHOUSE_FULL_MASK 0xffffffffu

// Butterfly reductions over one full warp: every lane ends with the same value,
// combined in the same order on every run.
template <typename T>
__device__ __forceinline__ T cuhouse_warp_sum(T value) {
    for (int offset = CUHOUSE_WARP / 2; offset > 0; offset /= 2) {
        value += __shfl_xor_sync(CUHOUSE_FULL_MASK, value, offset);
    }
    return value;
}

template <typename T>
__device__ __forceinline__ T cuhouse_warp_max(T value) {
    for (int offset = CUHOUSE_WARP / 2; offset > 0; offset /= 2) {
        value = max(value, __shfl_xor_sync(CUHOUSE_FULL_MASK, value, offset));
    }
    return value;
}

#endif  // CUHOUSE_COMMON_CUH
