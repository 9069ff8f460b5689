"""The CPU execution model (cuda_cpu.h) and the CuPy stand-in, on small kernels
written for these tests: indices and warp functions give CUDA's answers, and
every misuse the model promises to report is reported, with a message naming
it. Needs g++ (skipped without); the stand-in is loaded under another name,
so nothing here is importable as ``cupy``."""

import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys

import numpy
import pytest

FAKE = pathlib.Path(__file__).parent / "fake_cupy"

SOURCE = r"""
template <typename T>
__global__ void copy_n(const T* __restrict__ in, long long n, T* __restrict__ out) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = in[i];
}

__global__ void indices(int* out) {
    const int block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const int threads = blockDim.x * blockDim.y * blockDim.z;
    const int thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    out[block * threads + thread] = block * 10000 + thread;
}

__global__ void warp_functions(int* out) {
    const int lane = threadIdx.x;
    int* row = out + 7 * lane;
    row[0] = __shfl_xor_sync(0xffffffffu, lane, 5);
    row[1] = __shfl_down_sync(0xffffffffu, lane, 3);
    row[2] = __shfl_up_sync(0xffffffffu, lane, 3);
    row[3] = __shfl_sync(0xffffffffu, lane, 7);
    row[4] = (int)__ballot_sync(0xffffffffu, lane % 3 == 0);
    row[5] = __any_sync(0xffffffffu, lane == 9) + 2 * __all_sync(0xffffffffu, lane < 31);
    row[6] = __shfl_xor_sync(0xffffffffu, lane, 2, 4);          // width 4: within groups of four
}

__global__ void barrier_after_exit(int* out) {
    if (threadIdx.x == 0) return;
    __syncthreads();
    out[threadIdx.x] = 1;
}

__global__ void barrier_divergent(int* out) {
    if (threadIdx.x < 16) {
        __syncthreads();
    } else {
        __syncthreads();
    }
}

__global__ void shuffle_full_mask(int* out) {
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, (int)threadIdx.x, 1);
}

__global__ void shuffle_exited_lane(int* out) {
    if (threadIdx.x == 3) return;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, (int)threadIdx.x, 1);
}

__global__ void shuffle_omits_caller(int* out) {
    out[threadIdx.x] = __shfl_xor_sync(0x1u, (int)threadIdx.x, 0);
}

__global__ void shuffle_outside_mask(int* out) {
    out[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, (int)threadIdx.x, 16);
}

__global__ void shuffle_against_barrier(int* out) {
    if (threadIdx.x < 16) {
        out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, (int)threadIdx.x, 1);
    } else {
        __syncthreads();
    }
}

__global__ void rotate_in_shared(int* out) {
    extern __shared__ int buffer[];
    buffer[threadIdx.x] = threadIdx.x;
    __syncthreads();
    out[threadIdx.x] = buffer[(threadIdx.x + 1) % blockDim.x];
}
"""
NAMES = [
    "copy_n<float>",
    "copy_n<double>",
    "indices",
    "warp_functions",
    "barrier_after_exit",
    "barrier_divergent",
    "shuffle_full_mask",
    "shuffle_exited_lane",
    "shuffle_omits_caller",
    "shuffle_outside_mask",
    "shuffle_against_barrier",
    "rotate_in_shared",
]


def _stand_in():
    if shutil.which("g++") is None:
        pytest.skip("needs g++ to compile kernels for the CPU")
    if "cuda_cpu_cupy" in sys.modules:
        return sys.modules["cuda_cpu_cupy"]
    spec = importlib.util.spec_from_file_location(
        "cuda_cpu_cupy", FAKE / "cupy" / "__init__.py", submodule_search_locations=[str(FAKE / "cupy")]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["cuda_cpu_cupy"] = module
    try:
        spec.loader.exec_module(module)
    except RuntimeError as exc:  # a real CuPy is installed: the stand-in stays out of the way
        del sys.modules["cuda_cpu_cupy"]
        pytest.skip(str(exc))
    return module


@pytest.fixture(scope="module")
def cp():
    return _stand_in()


@pytest.fixture(scope="module")
def module(cp):
    return cp.RawModule(code=SOURCE, options=("-std=c++17",), name_expressions=NAMES)


def ints(cp, n):
    return cp.zeros((n,), dtype=numpy.int32)


def test_thread_and_block_indices_cover_a_3d_launch(cp, module):
    out = ints(cp, 2 * 3 * 2 * 16)
    module.get_function("indices")((2, 3, 2), (4, 2, 2), (out,))
    expected = [b * 10000 + t for b in range(12) for t in range(16)]
    numpy.testing.assert_array_equal(out.get(), expected)


def test_blocks_on_concurrent_workers_give_the_same_result(cp, module, monkeypatch):
    monkeypatch.setenv("CUDA_CPU_CONCURRENT_BLOCKS", "3")
    out = ints(cp, 12 * 16)
    module.get_function("indices")((2, 3, 2), (4, 2, 2), (out,))
    numpy.testing.assert_array_equal(out.get(), [b * 10000 + t for b in range(12) for t in range(16)])


def test_warp_functions_give_cuda_semantics(cp, module):
    out = ints(cp, 32 * 7)
    module.get_function("warp_functions")((1,), (32,), (out,))
    rows = out.get().reshape(32, 7)
    lane = numpy.arange(32)
    numpy.testing.assert_array_equal(rows[:, 0], lane ^ 5)
    numpy.testing.assert_array_equal(rows[:, 1], numpy.where(lane + 3 < 32, lane + 3, lane))
    numpy.testing.assert_array_equal(rows[:, 2], numpy.where(lane >= 3, lane - 3, lane))
    numpy.testing.assert_array_equal(rows[:, 3], 7)
    assert (rows[:, 4].view(numpy.uint32) == sum(1 << i for i in range(0, 32, 3))).all()
    numpy.testing.assert_array_equal(rows[:, 5], 1)
    numpy.testing.assert_array_equal(rows[:, 6], lane ^ 2)


def test_dynamic_shared_memory_of_the_launch_size_works(cp, module):
    out = ints(cp, 64)
    module.get_function("rotate_in_shared")((1,), (64,), (out,), shared_mem=64 * 4)
    numpy.testing.assert_array_equal(out.get(), (numpy.arange(64) + 1) % 64)


@pytest.mark.parametrize(
    "name, threads, message",
    [
        ("barrier_after_exit", 32, r"__syncthreads at kernel_source:\d+ waited for thread \(0,0,0\).*which has exited"),
        ("barrier_divergent", 32, r"__syncthreads reached at different places"),
        ("shuffle_full_mask", 16, r"lane 16 does not exist \(the block has 16 threads\)"),
        ("shuffle_exited_lane", 32, r"lane 3 has exited"),
        ("shuffle_omits_caller", 2, r"the mask 0x00000001 omits the calling lane 1"),
        ("shuffle_outside_mask", 16, r"reads lane 16, outside its mask 0x0000ffff"),
        ("shuffle_against_barrier", 32, r"lane 16 waits at __syncthreads"),
    ],
)
def test_misuse_of_barriers_and_warp_functions_is_reported(cp, module, name, threads, message):
    with pytest.raises(cp.KernelError, match=message):
        module.get_function(name)((1,), (threads,), (ints(cp, 32),))


def test_dynamic_shared_memory_overrun_is_reported(cp, module):
    with pytest.raises(cp.KernelError, match=r"dynamic shared memory overrun.*wrote byte 252.*gave 252 bytes"):
        module.get_function("rotate_in_shared")((1,), (64,), (ints(cp, 64),), shared_mem=63 * 4)


@pytest.mark.parametrize(
    "grid, block, shared, message",
    [
        ((1,), (1025,), 0, r"exceeds 1024 threads"),
        ((1,), (1, 1, 65), 0, r"exceeds 1024 threads or \(1024, 1024, 64\)"),
        ((1,), (32,), 48 * 1024 + 1, r"49153 bytes of dynamic shared memory exceed the 48 KiB limit"),
        ((0,), (32,), 0, r"empty grid"),
        ((1, 65536), (32,), 0, r"exceeds \(2\^31-1, 65535, 65535\)"),
    ],
)
def test_launch_limits_are_enforced(cp, module, grid, block, shared, message):
    with pytest.raises(cp.KernelError, match=message):
        module.get_function("indices")(grid, block, (ints(cp, 32),), shared_mem=shared)


def test_a_write_past_a_buffer_hits_its_guard_bytes(cp, module):
    source = cp.asarray(numpy.arange(10, dtype=numpy.float32))
    small = cp.empty((8,), dtype=numpy.float32)
    with pytest.raises(cp.KernelError, match=r"wrote 8 bytes after a 32-byte buffer"):
        module.get_function("copy_n<float>")((1,), (32,), (source, numpy.int64(10), small))


def test_arguments_are_checked_against_the_cpp_parameters(cp, module):
    copy = module.get_function("copy_n<float>")
    x = cp.zeros((4,), dtype=numpy.float32)
    with pytest.raises(cp.KernelError, match=r"parameter pointer:const float32\): got an array of float64"):
        copy((1,), (4,), (cp.zeros((4,)), numpy.int64(4), x))
    with pytest.raises(cp.KernelError, match=r"parameter int64\): got int32 \(4 bytes\)"):
        copy((1,), (4,), (x, numpy.int32(4), x))
    with pytest.raises(cp.KernelError, match=r"got a non-contiguous array"):
        copy((1,), (4,), (cp.zeros((8,), dtype=numpy.float32)[::2], numpy.int64(4), x))
    with pytest.raises(cp.KernelError, match=r"2 arguments for 3 parameters"):
        copy((1,), (4,), (x, numpy.int64(4)))
    with pytest.raises(cp.KernelError, match=r"got 'ndarray', not a device array"):
        copy((1,), (4,), (numpy.zeros(4, numpy.float32), numpy.int64(4), x))
    with pytest.raises(cp.KernelError, match=r"not one of the module's name expressions"):
        module.get_function("copy_n<int>")


def test_python_ints_are_64_bit_as_in_cupy(cp, module):
    x = cp.asarray(numpy.arange(4, dtype=numpy.float64))
    y = cp.zeros((4,))
    module.get_function("copy_n<double>")((1,), (4,), (x, 4, y))
    numpy.testing.assert_array_equal(y.get(), [0, 1, 2, 3])


def test_device_arrays_refuse_implicit_conversion_like_cupy(cp):
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        numpy.asarray(cp.zeros((2,)))


def test_a_pickled_device_array_comes_back_in_device_memory_like_cupy(cp):
    import pickle

    x = cp.arange(6.0).reshape(2, 3)[:, ::2]
    y = pickle.loads(pickle.dumps(x))
    assert type(y) is type(x) and y.device.id == x.device.id
    numpy.testing.assert_array_equal(y.get(), x.get())
    y[0, 0] = 7.0  # its own memory
    assert x.get()[0, 0] == 0.0


def test_the_stand_in_refuses_to_shadow_a_real_cupy(tmp_path):
    _stand_in()
    real = tmp_path / "cupy"
    real.mkdir()
    (real / "__init__.py").write_text("")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(FAKE), str(tmp_path)]))
    result = subprocess.run([sys.executable, "-c", "import cupy"], env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "refuses to shadow the real CuPy" in result.stderr


def test_every_seeded_bug_still_applies_to_the_sources(tmp_path):
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    try:
        import seeded_bugs
    finally:
        sys.path.pop(0)
    for i, (_name, relative, text, replacement) in enumerate(seeded_bugs.MUTANTS):
        copy = tmp_path / str(i)
        seeded_bugs.project_copy(str(copy))
        seeded_bugs.apply(str(copy), relative, text, replacement)  # exits when the text left the sources
    assert len(seeded_bugs.MUTANTS) >= 11


# ------------------------------------------------ the stand-in's CuPy semantics


def test_in_place_operators_write_through_views(cp):
    x = cp.zeros((4, 3))
    view = x[1:]
    view -= 1.5
    view *= 2
    same = view
    same += cp.ones((3, 3))
    assert same is view
    numpy.testing.assert_array_equal(x.get(), numpy.vstack([numpy.zeros((1, 3)), numpy.full((3, 3), -2.0)]))


def test_asarray_and_array_follow_cupy(cp):
    x = cp.asarray(numpy.arange(6.0).reshape(2, 3))
    assert cp.asarray(x) is x and x.astype(x.dtype, copy=False) is x
    assert cp.asarray(x, copy=True) is not x and cp.array(x) is not x
    with pytest.raises(ValueError, match="copy=False"):
        cp.asarray(x, dtype=numpy.float32, copy=False)
    f = cp.asfortranarray(x)
    assert f.flags.f_contiguous and not f.flags.c_contiguous
    numpy.testing.assert_array_equal(f.get(), x.get())
    assert cp.array(x, copy=True, order="C").flags.c_contiguous


def test_counts_calls_launches_gemms_copies_and_syncs(cp):
    from cuda_cpu_cupy import _trace

    a = cp.asarray(numpy.ones((6, 6)))
    with _trace.counting() as counts:
        view = a[:, 1:4]  # a view: a call, no launch (.T below is an attribute: no call)
        product = view.T @ a  # one GEMM; view.T is neither C- nor F-contiguous: CuPy copies it
        total = float(product.sum())  # a reduction (launch), then a sync
    assert total == 3 * 6 * 6
    assert counts.as_dict() == {"calls": 3, "launches": 3, "gemms": 1, "operand_copies": 1, "syncs": 1}


def test_cublas_gemm_accumulates_with_beta(cp):
    rng = numpy.random.default_rng(0)
    a, b, c = (rng.standard_normal(shape) for shape in ((4, 3), (4, 5), (3, 5)))
    out = cp.asarray(c)
    result = cp.cublas.gemm("T", "N", cp.asarray(a), cp.asarray(b), out=out, alpha=-1.0, beta=1.0)
    assert result is out
    numpy.testing.assert_allclose(out.get(), c - a.T @ b, rtol=1e-14)


def test_graph_capture_replays_launches_on_the_same_buffers(cp):
    from cuda_cpu_cupy import _trace

    a = cp.asarray(numpy.eye(3))
    b = cp.asarray(numpy.arange(9.0).reshape(3, 3))
    out = cp.empty((3, 3))
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        cp.matmul(a, b, out=out)
        out += b
        with pytest.raises(_trace.CaptureError, match="not permitted during stream capture"):
            float(out[0, 0])
        with pytest.raises(_trace.CaptureError, match="allocated before the capture"):
            _ = a + b
        graph = stream.end_capture()
    a[...] = 2 * cp.asarray(numpy.eye(3))
    with _trace.counting() as counts:
        graph.launch()
    assert counts.launches == 1
    numpy.testing.assert_array_equal(out.get(), 3 * numpy.arange(9.0).reshape(3, 3))
    with pytest.raises(RuntimeError, match="null stream"):
        cp.cuda.Stream.null.begin_capture()


def test_two_fake_devices_and_launches_checked_against_the_arrays_device(cp, module):
    assert cp.cuda.runtime.getDeviceCount() == 2
    with cp.cuda.Device(1):
        x = cp.asarray(numpy.arange(4.0))
        y = cp.zeros((4,))
    assert x.device.id == 1 and cp.zeros((1,)).device.id == 0
    with pytest.raises(cp.KernelError, match="lives on device 1 but the launch is on device 0"):
        module.get_function("copy_n<double>")((1,), (4,), (x, 4, y))
    with x.device:
        module.get_function("copy_n<double>")((1,), (4,), (x, 4, y))
    numpy.testing.assert_array_equal(y.get(), numpy.arange(4.0))
    with pytest.raises(RuntimeError, match="invalid device ordinal 2"):
        cp.cuda.Device(2)


def test_linalg_and_stride_tricks_work_on_device_data(cp):
    a = cp.asarray(numpy.diag([2.0, 4.0]))
    inverse = cp.linalg.inv(a)
    assert isinstance(inverse, cp.ndarray)
    numpy.testing.assert_array_equal(inverse.get(), numpy.diag([0.5, 0.25]))
    from cuda_cpu_cupy.lib.stride_tricks import as_strided

    x = cp.asarray(numpy.arange(6.0))
    window = as_strided(x, shape=(2, 3), strides=(3 * 8, 8))
    window[1, 0] = -1  # a view: writes reach x
    assert x.get()[3] == -1
