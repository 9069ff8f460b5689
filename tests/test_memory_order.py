"""Every algorithm keeps the operand's memory order: a row-major ``X @ H`` (whose columns view is
column-major) runs, and is differentiated, with no transposing copy of X, of the result or of dX.

NumPy only: memory order (``flags``, strides, ``out=``) is the native path's; the generic path's
right products are checked for values on every backend in ``test_householder.py``."""

import numpy
import pytest

import cuhouse
from cuhouse.algorithms import ALGORITHMS, _steps

LAYOUTS = ["full", "trapezoidal", "unit"]


def _rows(layout, rng, n=10, d=12):
    v = rng.standard_normal((n, d))
    return numpy.triu(v, 1 if layout == "unit" else 0) if layout != "full" else v


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("transpose", [False, True])
def test_apply_and_backward_keep_a_column_major_operand(algorithm, layout, transpose):
    rng = numpy.random.default_rng(0)
    module = ALGORITHMS[algorithm]
    form = module.build(_rows(layout, rng), 4, numpy, layout)
    rows_x = rng.standard_normal((7, 12))  # a row-major X (m, d): its columns view is X^T
    columns = rows_x.T
    assert _steps.column_major(columns)
    out = module.apply(form, columns, transpose, numpy)
    assert _steps.column_major(out) and out.T.flags.c_contiguous
    expected = module.apply(form, numpy.ascontiguousarray(columns), transpose, numpy)
    numpy.testing.assert_allclose(out, expected, rtol=0, atol=1e-13)
    dout = rng.standard_normal((7, 12)).T
    dv, dx = module.backward(form, out, dout, transpose, numpy)
    assert _steps.column_major(dx) and dx.T.flags.c_contiguous
    dv_c, dx_c = module.backward(form, numpy.ascontiguousarray(out), numpy.ascontiguousarray(dout), transpose, numpy)
    numpy.testing.assert_allclose(dx, dx_c, rtol=0, atol=1e-12)
    numpy.testing.assert_allclose(dv, dv_c, rtol=0, atol=1e-12)


@pytest.mark.parametrize("algorithm", ["auto"] + sorted(ALGORITHMS))
def test_right_products_are_row_major_in_and_out(algorithm):
    rng = numpy.random.default_rng(1)
    v = rng.standard_normal((5, 9))
    x = rng.standard_normal((4, 9))
    h = cuhouse.HouseholderProduct(v, algorithm=algorithm)
    dense = h.todense()
    out = x @ h
    assert out.flags.c_contiguous
    numpy.testing.assert_allclose(out, x @ dense, rtol=0, atol=1e-13)
    result, back = cuhouse.vjp(cuhouse.matmul, x, h)
    dx, (dv,) = back(numpy.ones_like(result))
    assert dx.flags.c_contiguous and dv.flags.c_contiguous
    numpy.testing.assert_allclose(dx, numpy.ones_like(result) @ dense.T, rtol=0, atol=1e-13)


def test_sweep_buffer_slices_dx_row_major():
    out = numpy.arange(12.0).reshape(4, 3).T  # column-major (3, 4)
    b = _steps.sweep_buffer(out, out + 100, numpy)
    assert _steps.column_major(b) and b[..., 4:].T.flags.c_contiguous
    numpy.testing.assert_array_equal(b, numpy.concatenate([out, out + 100], axis=-1))
