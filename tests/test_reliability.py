"""Never silently wrong (issue 17): each defect of the reliability review, as a test that failed before its fix."""

import numpy
import pytest
from conftest import dense_reference

import cuhouse as ch
from cuhouse.householder import ALGORITHM_CHOICES


def _scaled_reference(v, x):
    """float64 ``H @ X`` with each column of X scaled by a power of two first (exact) and back after."""
    x = numpy.asarray(x, dtype=numpy.float64)
    largest = numpy.abs(x).max(axis=-2, keepdims=True)
    _, e = numpy.frexp(numpy.where(largest > 0, largest, 1))
    return numpy.ldexp(dense_reference(v) @ numpy.ldexp(x, -e), e)


def _column_error(y, x, ref):
    """max |Y - ref| per column over ||x_j||, computed without overflow."""
    x = numpy.asarray(x, dtype=numpy.float64)
    largest = numpy.abs(x).max(axis=-2)
    _, e = numpy.frexp(numpy.where(largest > 0, largest, 1))
    diff = numpy.ldexp(numpy.asarray(y, dtype=numpy.float64), -e[..., None, :]) - numpy.ldexp(ref, -e[..., None, :])
    return (numpy.abs(diff).max(axis=-2) / numpy.linalg.norm(numpy.ldexp(x, -e[..., None, :]), axis=-2)).max()


# --------------------------------------------------------------- defect 2: the default algorithm overflowed
@pytest.mark.parametrize("algorithm", ALGORITHM_CHOICES)
def test_float32_large_rows_times_large_columns_is_finite_and_right(algorithm):
    # the review's reproducer: "auto" and "cwy" gave 256/256 non-finite entries (V X overflowed)
    rng = numpy.random.default_rng(0)
    v = (rng.standard_normal((64, 64)) * 1e14).astype(numpy.float32)
    x = (rng.standard_normal((64, 4)) * 1e24).astype(numpy.float32)
    y = ch.HouseholderProduct(v, algorithm=algorithm) @ x  # a RuntimeWarning is an error in this suite
    assert numpy.isfinite(y).all()
    assert _column_error(y, x, _scaled_reference(v, x)) < 64 * 2e-6


@pytest.mark.parametrize("algorithm", ALGORITHM_CHOICES)
def test_float64_columns_near_overflow_are_finite_and_right(algorithm):
    # d = 256, max |X| = 1e307 with columns along rows of V: "cwy" gave NaN columns
    rng = numpy.random.default_rng(1)
    v = rng.standard_normal((256, 256))
    x = numpy.stack([v[0], v[5], rng.standard_normal(256), v[200]], axis=1)
    x *= 1e307 / numpy.abs(x).max(axis=0)
    y = ch.HouseholderProduct(v, algorithm=algorithm) @ x
    assert numpy.isfinite(y).all()
    assert _column_error(y, x, _scaled_reference(v, x)) < 1e-13


@pytest.mark.parametrize("algorithm", ALGORITHM_CHOICES)
def test_tiny_columns_are_not_lost_to_underflow(algorithm):
    # rows of norm 2^-300 (inside their safe range) times columns of size 2^-1000: V X underflowed to
    # zero and H @ X came back as X, silently (relative error about 1)
    rng = numpy.random.default_rng(2)
    v = numpy.ldexp(rng.standard_normal((8, 8)), -300)
    x = numpy.ldexp(numpy.stack([rng.standard_normal(8), v[0] * 2.0**300], axis=1), -1000)
    y = ch.HouseholderProduct(v, algorithm=algorithm) @ x
    assert _column_error(y, x, _scaled_reference(v, x)) < 1e-13


@pytest.mark.parametrize("algorithm", ALGORITHM_CHOICES)
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_gradients_at_extreme_scales_equal_the_scaled_gradients(algorithm, dtype):
    # scaling V by 2^u, X by 2^s and dout by 2^t scales dV by 2^(s + t - u) and dX by 2^t, exactly in
    # exact arithmetic; before the fix the gradient underflowed to zero (or lost its digits) at such scales
    rng = numpy.random.default_rng(3)
    v0, x0, g0 = (rng.standard_normal(shape) for shape in ((16, 16), (16, 3), (16, 3)))
    out0, back = ch.vjp(ch.matmul, ch.HouseholderProduct(v0.astype(dtype), algorithm=algorithm), x0.astype(dtype))
    (dv0,), dx0 = back(g0.astype(dtype))
    low = {numpy.float32: (-86, -73, -73), numpy.float64: (-490, -611, -611)}[dtype]
    high = {numpy.float32: (44, 100, -25), numpy.float64: (400, 1000, -300)}[dtype]
    tol = {numpy.float32: 5e-5, numpy.float64: 1e-12}[dtype]
    for u, s, t in (low, high):
        h = ch.HouseholderProduct(numpy.ldexp(v0, u).astype(dtype), algorithm=algorithm)
        out, back = ch.vjp(ch.matmul, h, numpy.ldexp(x0, s).astype(dtype))
        (dv,), dx = back(numpy.ldexp(g0, t).astype(dtype))
        for got, want, e in ((out, out0, s), (dv, dv0, s + t - u), (dx, dx0, t)):
            scaled_back = numpy.ldexp(got.astype(numpy.float64), -e)
            assert numpy.abs(scaled_back - want).max() <= tol * numpy.abs(want).max(), (u, s, t)
