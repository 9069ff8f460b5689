"""The kernel primitives: the NumPy twins against plain references (always run),
and each raw CUDA kernel against its NumPy twin (``-m gpu``, skipped cleanly
without CuPy and a device)."""

import math

import numpy
import pytest
from helpers import rtol, to_numpy

from cuhouse._backend import cupy_module, gpu_available
from cuhouse._gpu import primitives as _primitives
from cuhouse._gpu import raw_kernels as _kernels

DTYPES = (numpy.float32, numpy.float64)
BLOCK_SIZES = (1, 3, 17, 64, 100, 256)
LENGTHS = (1, 7, 129)


def on_gpu(test):
    """Mark ``test`` ``gpu`` and skip it without CuPy and a device."""
    test = pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA device")(test)
    return pytest.mark.gpu(test)


def rows_with_extremes(shape, dtype, rng):
    """Random rows ``shape`` with, in the last batch entry, a tiny, a huge and a zero row."""
    v = rng.standard_normal(shape)
    big, tiny = (1e30, 1e-30) if dtype == numpy.float32 else (1e300, 1e-300)
    last = v.reshape((-1,) + shape[-2:])[-1]  # a view on the last batch entry
    if len(last) >= 3:
        last[0] *= tiny
        last[1] *= big
        last[2] = 0
    return v.astype(dtype)


def hypot_norms(v):
    """Row norms by ``math.hypot``, exact to an ulp and immune to under/overflow."""
    flat = numpy.asarray(v, dtype=numpy.float64).reshape(-1, v.shape[-1])
    return numpy.array([math.hypot(*row) for row in flat]).reshape(v.shape[:-1])


def cwy_s(batch, k, dtype, rng):
    """``S = I/2 + striu(Y Y^T)`` for random unit rows Y ``(*batch, k, k + 3)``, as CWY builds it."""
    y = rng.standard_normal(batch + (k, k + 3))
    y /= numpy.linalg.norm(y, axis=-1, keepdims=True)
    return (numpy.triu(y @ numpy.swapaxes(y, -1, -2), 1) + 0.5 * numpy.eye(k)).astype(dtype)


# ----------------------------------------------------------- NumPy twins


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", LENGTHS)
def test_row_norms_twin_matches_hypot_with_tiny_huge_and_zero_rows(dtype, d):
    v = rows_with_extremes((2, 5, d), dtype, numpy.random.default_rng(d))
    norms = _primitives.row_norms(v, numpy)
    assert norms.dtype == dtype and norms.shape == (2, 5)
    numpy.testing.assert_allclose(norms, hypot_norms(v), rtol=rtol(dtype, 4), atol=0)
    assert norms[-1, 2] == 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_row_norms_twin_matches_linalg_norm_in_range(dtype):
    v = numpy.random.default_rng(1).standard_normal((3, 4, 33)).astype(dtype)
    numpy.testing.assert_allclose(_primitives.row_norms(v, numpy), numpy.linalg.norm(v, axis=-1), rtol=rtol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_row_norms_twin_propagates_non_finite(dtype):
    v = numpy.ones((3, 4), dtype=dtype)
    v[0, 1], v[1, 2] = numpy.nan, numpy.inf
    norms = _primitives.row_norms(v, numpy)
    assert not numpy.isfinite(norms[:2]).any() and norms[2] == 2


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", LENGTHS)
def test_normalize_rows_twin_gives_unit_rows_and_keeps_zero_rows(dtype, d):
    v = rows_with_extremes((2, 5, d), dtype, numpy.random.default_rng(d))
    unit = _primitives.normalize_rows(v, _primitives.row_norms(v, numpy), numpy)
    lengths = hypot_norms(unit)
    nonzero = numpy.ones(lengths.shape, dtype=bool)
    nonzero[-1, 2] = False
    numpy.testing.assert_allclose(lengths[nonzero], 1, rtol=rtol(dtype, 4))
    assert (unit[-1, 2] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_unit_rows_twin_is_norms_then_normalize(dtype):
    v = rows_with_extremes((4, 9), dtype, numpy.random.default_rng(2))
    unit, norms = _primitives.unit_rows(v, numpy)
    expected = _primitives.row_norms(v, numpy)
    numpy.testing.assert_array_equal(norms, expected)
    numpy.testing.assert_array_equal(unit, _primitives.normalize_rows(v, expected, numpy))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", BLOCK_SIZES)
def test_upper_triangular_inverse_twin_matches_linalg_inv(dtype, k):
    s = cwy_s((2,), k, dtype, numpy.random.default_rng(k))
    t = _primitives.upper_triangular_inverse(s, numpy)
    reference = numpy.linalg.inv(s.astype(numpy.float64))
    assert t.dtype == dtype and t.shape == s.shape
    numpy.testing.assert_allclose(t, reference, rtol=0, atol=rtol(dtype) * numpy.abs(reference).max())
    assert (numpy.tril(t, -1) == 0).all()


def test_upper_triangular_inverse_twin_ignores_the_lower_triangle():
    s = cwy_s((3,), 17, numpy.float64, numpy.random.default_rng(3))
    noisy = s + numpy.tril(numpy.ones_like(s), -1)
    numpy.testing.assert_array_equal(
        _primitives.upper_triangular_inverse(noisy, numpy), _primitives.upper_triangular_inverse(s, numpy)
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", BLOCK_SIZES)
def test_cwy_gradient_coefficients_twin_matches_definition(dtype, k):
    rng = numpy.random.default_rng(k)
    t = numpy.linalg.inv(cwy_s((2,), k, numpy.float64, rng))
    t = numpy.triu(t).astype(dtype)
    n = rng.standard_normal((2, k, k)).astype(dtype)
    c = _primitives.cwy_gradient_coefficients(t, n, numpy)
    t64, n64 = t.astype(numpy.float64), n.astype(numpy.float64)
    r = numpy.swapaxes(t64, -1, -2) @ n64 @ numpy.swapaxes(t64, -1, -2)
    expected = numpy.triu(r, 1) + numpy.swapaxes(numpy.triu(r, 1), -1, -2)
    assert c.dtype == dtype and c.shape == (2, k, k)
    numpy.testing.assert_allclose(c, expected, rtol=0, atol=rtol(dtype, 4 * k) * numpy.abs(expected).max())
    assert (numpy.diagonal(c, axis1=-2, axis2=-1) == 0).all()


# ------------------------------------------------ kernel sources (no device)


def test_kernel_sources_ship_with_the_package():
    directory = _kernels.kernel_directory()
    for name in _kernels.KERNEL_SOURCES:
        assert directory.joinpath(name).is_file(), name


def test_kernel_source_inlines_includes_and_defines_every_template():
    source = _kernels.kernel_source()
    assert "#include" not in source
    assert source.count("#define CUHOUSE_COMMON_CUH") == 1
    for name in _kernels.KERNEL_TEMPLATES:
        assert "void {}(".format(name) in source
    assert len(_kernels.name_expressions()) == 2 * len(_kernels.KERNEL_TEMPLATES)


def _nvrtc():
    if cupy_module() is None:
        return None
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
    except Exception:  # NVRTC's shared library is missing
        return None
    return nvrtc


@pytest.mark.skipif(_nvrtc() is None, reason="needs CuPy's NVRTC binding (no device needed)")
def test_kernel_source_compiles_with_nvrtc_for_every_name_expression():
    nvrtc = _nvrtc()
    program = nvrtc.createProgram(_kernels.kernel_source(), "cuhouse.cu", (), ())
    for expression in _kernels.name_expressions():
        nvrtc.addNameExpression(program, expression)
    try:
        nvrtc.compileProgram(program, list(_kernels.COMPILE_OPTIONS) + ["-arch=compute_80"])
    except Exception as exc:
        pytest.fail("NVRTC failed: {}\n{}".format(exc, nvrtc.getProgramLog(program)))
    for expression in _kernels.name_expressions():
        assert nvrtc.getLoweredName(program, expression).startswith("_Z")


# --------------------------------------------- kernels against their twins


def _device(a):
    return cupy_module().asarray(a)


@on_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", LENGTHS)
@pytest.mark.parametrize("n", (1, 5, 70))
@pytest.mark.parametrize("fused", (False, True), ids=("norms", "fused"))
def test_row_norms_kernel_matches_twin(dtype, d, n, fused):
    v = rows_with_extremes((3, n, d), dtype, numpy.random.default_rng(n * d))
    cupy = cupy_module()
    if fused:
        unit, norms = _primitives.unit_rows(_device(v), cupy)
        expected_unit, expected = _primitives.unit_rows(v, numpy)
        numpy.testing.assert_allclose(to_numpy(unit), expected_unit, rtol=rtol(dtype, 4), atol=0)
    else:
        norms = _primitives.row_norms(_device(v), cupy)
        expected = _primitives.row_norms(v, numpy)
    assert norms.dtype == dtype and norms.shape == expected.shape
    numpy.testing.assert_allclose(to_numpy(norms), expected, rtol=rtol(dtype, 4), atol=0)
    if n >= 3:
        assert float(norms[-1, 2]) == 0


@on_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", LENGTHS)
def test_normalize_rows_kernel_matches_twin_exactly(dtype, d):
    v = rows_with_extremes((2, 6, d), dtype, numpy.random.default_rng(d))
    norms = _primitives.row_norms(v, numpy)
    out = _primitives.normalize_rows(_device(v), _device(norms), cupy_module())
    numpy.testing.assert_array_equal(to_numpy(out), _primitives.normalize_rows(v, norms, numpy))


@on_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", BLOCK_SIZES + (65, 512))
def test_upper_triangular_inverse_kernel_matches_twin(dtype, k):
    s = cwy_s((2, 3) if k <= 100 else (2,), k, dtype, numpy.random.default_rng(k))
    t = _primitives.upper_triangular_inverse(_device(s), cupy_module())
    expected = _primitives.upper_triangular_inverse(s, numpy)
    assert t.dtype == dtype and t.shape == s.shape
    numpy.testing.assert_allclose(to_numpy(t), expected, rtol=0, atol=rtol(dtype) * numpy.abs(expected).max())
    assert (numpy.tril(to_numpy(t), -1) == 0).all()


@on_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", BLOCK_SIZES + (15, 16, 33))
def test_cwy_gradient_coefficients_kernel_matches_twin(dtype, k):
    rng = numpy.random.default_rng(k)
    t = numpy.triu(numpy.linalg.inv(cwy_s((3,), k, numpy.float64, rng))).astype(dtype)
    n = rng.standard_normal((2, 3, k, k)).astype(dtype)  # t broadcasts over n's batch
    c = _primitives.cwy_gradient_coefficients(_device(t), _device(n), cupy_module())
    expected = _primitives.cwy_gradient_coefficients(t, n, numpy)
    assert c.dtype == dtype and c.shape == expected.shape
    numpy.testing.assert_allclose(to_numpy(c), expected, rtol=0, atol=rtol(dtype, 4 * k) * numpy.abs(expected).max())
    assert (numpy.diagonal(to_numpy(c), axis1=-2, axis2=-1) == 0).all()


@on_gpu
def test_kernels_take_non_contiguous_input_and_are_deterministic():
    cupy = cupy_module()
    v = _device(numpy.random.default_rng(0).standard_normal((40, 129)))
    reversed_rows = v[::-1]
    norms = _primitives.row_norms(reversed_rows, cupy)
    numpy.testing.assert_allclose(to_numpy(norms), numpy.linalg.norm(to_numpy(v), axis=-1)[::-1], rtol=1e-12)
    s = _device(cwy_s((5,), 100, numpy.float32, numpy.random.default_rng(1)))
    first = _primitives.upper_triangular_inverse(s, cupy)
    cupy.testing.assert_array_equal(first, _primitives.upper_triangular_inverse(s, cupy))
    n = cupy.swapaxes(s, -1, -2)  # a transposed view
    c = _primitives.cwy_gradient_coefficients(first, n, cupy)
    cupy.testing.assert_array_equal(c, _primitives.cwy_gradient_coefficients(first, n, cupy))
    cupy.testing.assert_array_equal(c, cupy.swapaxes(c, -1, -2))


@on_gpu
def test_kernel_primitives_accept_empty_stacks():
    cupy = cupy_module()
    assert _primitives.row_norms(cupy.zeros((0, 5), dtype=cupy.float32), cupy).shape == (0,)
    assert _primitives.upper_triangular_inverse(cupy.zeros((0, 4, 4)), cupy).shape == (0, 4, 4)
    assert _primitives.cwy_gradient_coefficients(cupy.zeros((0, 4, 4)), cupy.zeros((0, 4, 4)), cupy).shape == (0, 4, 4)


@on_gpu
def test_module_is_memoized_per_device():
    assert _kernels.module() is _kernels.module()


@on_gpu
def test_triangular_inverse_kernel_refuses_k_above_its_limit():
    s = _device(cwy_s((1,), 65, numpy.float32, numpy.random.default_rng(0)))
    with pytest.raises(ValueError, match="takes k <= 64, got k = 65"):
        _kernels.upper_triangular_inverse(s)


@on_gpu
@pytest.mark.parametrize("k, launched", [(64, (2, 64, 64)), (65, (2, 2, 64, 64)), (200, (2, 4, 64, 64))])
def test_triangular_inverse_runs_the_kernel_on_blocks_of_at_most_64(k, launched, monkeypatch):
    """Above the kernel's limit its diagonal blocks of 64 (k padded to 64 times a power of two) are
    inverted by one launch and joined by doubling."""
    shapes, kernel = [], _kernels.upper_triangular_inverse
    monkeypatch.setattr(_kernels, "upper_triangular_inverse", lambda s: shapes.append(s.shape) or kernel(s))
    s = cwy_s((2,), k, numpy.float64, numpy.random.default_rng(k))
    t = _primitives.upper_triangular_inverse(_device(s), cupy_module())
    assert shapes == [launched]
    numpy.testing.assert_allclose(to_numpy(t), numpy.triu(numpy.linalg.inv(s)), rtol=0, atol=1e-12)


@on_gpu
def test_kernels_launch_on_their_arrays_device_whatever_is_current():
    """With two devices (the CPU stand-in has two), data on device 1 is worked on there while device 0
    is current; with one GPU both are device 0 and this checks the plain case."""
    cupy = cupy_module()
    count = cupy.cuda.runtime.getDeviceCount()
    data, current = (1, 0) if count > 1 else (0, 0)
    rng = numpy.random.default_rng(0)
    v = rng.standard_normal((3, 5, 7))
    s = cwy_s((2,), 17, numpy.float64, rng)
    t = numpy.triu(numpy.linalg.inv(s))
    with cupy.cuda.Device(data):
        v_d, s_d, t_d = cupy.asarray(v), cupy.asarray(s), cupy.asarray(t)
    with cupy.cuda.Device(current):
        unit, norms = _primitives.unit_rows(v_d, cupy)
        inverse = _primitives.upper_triangular_inverse(s_d, cupy)
        coefficients = _primitives.cwy_gradient_coefficients(t_d, s_d, cupy)
        normalized = _primitives.normalize_rows(v_d, norms, cupy)
    for result in (unit, norms, inverse, coefficients, normalized):
        assert result.device.id == data
    numpy.testing.assert_allclose(to_numpy(norms), numpy.linalg.norm(v, axis=-1), rtol=1e-14)
    numpy.testing.assert_allclose(to_numpy(inverse), t, atol=1e-12)
    numpy.testing.assert_allclose(to_numpy(normalized), to_numpy(unit), rtol=0, atol=1e-15)
    numpy.testing.assert_allclose(to_numpy(coefficients), _primitives.cwy_gradient_coefficients(t, s, numpy))
