"""Optimizer adapters: flatten_params / unflatten_params."""

import numpy
import pytest
from helpers import assert_equal, dtype_name, on
from scipy.optimize import minimize

import cuhouse as ch


def test_round_trip_keeps_shapes_dtypes_and_values(any_xp):
    params = (on(any_xp, numpy.arange(6.0).reshape(2, 3)), on(any_xp, numpy.ones((1, 4)), dtype=numpy.float32))
    flat = ch.flatten_params(params)
    assert tuple(flat.shape) == (10,) and dtype_name(flat) == "float64"
    back = ch.unflatten_params(flat, like=params)
    assert [tuple(b.shape) for b in back] == [(2, 3), (1, 4)] and dtype_name(back[1]) == "float32"
    for a, b in zip(params, back):
        assert_equal(a, b)
    flat[0] = 99
    assert float(back[0][0, 0]) == 0.0  # pieces are copies
    assert_equal(ch.flatten_params((params[1],)), numpy.ones(4, numpy.float32))  # one dtype: kept


def test_wrong_length_is_a_value_error(any_xp):
    with pytest.raises(ValueError, match=r"vector must be 1-D with 6 elements .* got shape \(5,\)"):
        ch.unflatten_params(on(any_xp, numpy.zeros(5)), like=(on(any_xp, numpy.zeros((2, 3))),))


def test_params_not_a_tuple_is_a_type_error(any_xp):
    with pytest.raises(TypeError, match="params must be a non-empty tuple of arrays such as H.params, got"):
        ch.flatten_params(on(any_xp, numpy.zeros(3)))


def test_mixing_libraries_is_a_type_error(generic_xp):
    with pytest.raises(TypeError, match=r"cannot mix .*NumPy"):
        ch.flatten_params((on(generic_xp, numpy.zeros(3)), numpy.zeros(2)))


def test_scipy_minimize_with_jac_fits_a_rotation():  # NumPy only: SciPy's optimizers take NumPy vectors
    """The adapters feed scipy.optimize.minimize(jac=True) directly."""
    rng = numpy.random.default_rng(0)
    target = ch.HouseholderProduct(rng.standard_normal((4, 4)))
    x = rng.standard_normal((4, 10))
    y = target @ x
    like = (rng.standard_normal((4, 4)),)

    def fun(flat):
        out, back = ch.vjp(ch.matmul, ch.HouseholderProduct(*ch.unflatten_params(flat, like)), x)
        residual = out - y
        dparams, _ = back(2 * residual)
        return float(numpy.sum(residual**2)), ch.flatten_params(dparams)

    result = minimize(fun, ch.flatten_params(like), jac=True, method="BFGS", options={"gtol": 1e-10})
    fitted = ch.HouseholderProduct(*ch.unflatten_params(result.x, like)).todense()
    numpy.testing.assert_allclose(fitted, target.todense(), atol=1e-6)
