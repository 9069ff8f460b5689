"""Optimizer adapters: flatten_params / unflatten_params."""

import numpy
import pytest
from helpers import to_numpy
from scipy.optimize import minimize

import cuhouse as ch


def test_round_trip_keeps_shapes_dtypes_and_values(xp):
    params = (xp.arange(6.0).reshape(2, 3), xp.ones((1, 4), dtype=xp.float32))
    flat = ch.flatten_params(params)
    assert flat.shape == (10,) and flat.dtype == numpy.float64
    back = ch.unflatten_params(flat, like=params)
    assert [b.shape for b in back] == [(2, 3), (1, 4)] and back[1].dtype == numpy.float32
    for a, b in zip(params, back):
        numpy.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    flat[0] = 99
    assert float(back[0][0, 0]) == 0.0  # pieces are copies


def test_wrong_length_is_a_value_error(xp):
    with pytest.raises(ValueError, match=r"vector must be 1-D with 6 elements .* got shape \(5,\)"):
        ch.unflatten_params(xp.zeros(5), like=(xp.zeros((2, 3)),))


def test_params_not_a_tuple_is_a_type_error(xp):
    with pytest.raises(TypeError, match="params must be a non-empty tuple of arrays such as H.params, got"):
        ch.flatten_params(xp.zeros(3))


def test_scipy_minimize_with_jac_fits_a_rotation():
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
