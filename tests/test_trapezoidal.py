"""Structured layouts (``"trapezoidal"``, LAPACK's ``"unit"``) in every algorithm: the same
products and gradients as the full-length rows, computed on the trailing rows only."""

import numpy
import pytest
from helpers import (
    algorithm_names,
    assert_allclose,
    assert_equal,
    check_vjp,
    dense_reference,
    dtype_name,
    is_native,
    needs_algorithm,
    on,
    rmatmul,
    to_numpy,
)

from cuhouse.algorithms import ALGORITHMS, _layout

LAYOUTS = ("trapezoidal", "unit")

# The algorithm modules' layout argument (the first four tests) is NumPy/CuPy's: the generic path's
# algorithms (algorithms.portable) take full rows; from_lapack and trapezoidal vectors below run everywhere.


def _stored(rng, batch, n, d, layout, dtype=numpy.float64):
    """Stored rows of the layout, with NaN written where the layout stores nothing."""
    y = rng.standard_normal(batch + (n, d)).astype(dtype)
    ignored = numpy.tril(numpy.ones((n, d), dtype=bool), 0 if layout == "unit" else -1)
    return numpy.where(ignored, numpy.nan, y)


def _full(y, layout):
    full = _layout.full_rows(numpy.nan_to_num(y, nan=0.0), layout, numpy)
    return full


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("batch, n, d", [((), 7, 7), ((2,), 5, 9), ((3,), 9, 11)])
def test_structured_product_and_gradient_equal_full_rows(algorithm, layout, transpose, batch, n, d):
    rng = numpy.random.default_rng(n * d)
    y = _stored(rng, batch, n, d, layout)
    full = _full(y, layout)
    module = ALGORITHMS[algorithm]
    x = rng.standard_normal(batch + (d, 3))
    dout = rng.standard_normal(batch + (d, 3))
    structured = module.build(y, 4, numpy, layout)
    reference = module.build(full, 4, numpy)
    out = module.apply(structured, x, transpose, numpy)
    expected = module.apply(reference, x, transpose, numpy)
    assert numpy.isfinite(out).all()  # the NaN where nothing is stored never reach it
    numpy.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)
    dense = dense_reference(full)
    numpy.testing.assert_allclose(out, (numpy.swapaxes(dense, -1, -2) if transpose else dense) @ x, atol=1e-12)
    dv, dx = module.backward(structured, out, dout, transpose, numpy)
    dv_full, dx_full = module.backward(reference, expected, dout, transpose, numpy)
    numpy.testing.assert_allclose(dx, dx_full, rtol=0, atol=1e-12)
    numpy.testing.assert_allclose(dv, _layout.structured(dv_full.copy(), layout, numpy), rtol=0, atol=1e-12)


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
@pytest.mark.parametrize("layout", ("full",) + LAYOUTS)
@pytest.mark.parametrize("transpose", [False, True])
def test_gradient_of_raw_rows_matches_central_differences(algorithm, layout, transpose):
    """Rows far from unit length, identity factors included: the adjoint is the derivative."""
    rng = numpy.random.default_rng(11)
    n, d = 6, 8
    y = rng.standard_normal((2, n, d)) * rng.uniform(0.3, 3.0, (2, n, 1))
    identity = numpy.zeros((2, n), dtype=bool)
    identity[0, 2] = identity[1, 5] = True
    x = rng.standard_normal((2, d, 3))
    dout = rng.standard_normal((2, d, 3))
    module = ALGORITHMS[algorithm]

    def product(rows, operand):
        return module.apply(module.build(rows, 4, numpy, layout, identity), operand, transpose, numpy)

    out = product(y, x)
    dv, dx = module.backward(module.build(y, 4, numpy, layout, identity), out, dout, transpose, numpy)
    assert not dv[identity].any()
    check_vjp(
        product,
        (y, x),
        lambda u: module.backward(module.build(y, 4, numpy, layout, identity), out, u, transpose, numpy),
        rtol=1e-7,
    )


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_identity_factors_act_as_nothing(algorithm, layout):
    rng = numpy.random.default_rng(12)
    y = _stored(rng, (), 6, 8, layout)
    identity = numpy.array([False, True, False, False, True, False])
    x = rng.standard_normal((8, 2))
    module = ALGORITHMS[algorithm]
    out = module.apply(module.build(y, 4, numpy, layout, identity), x, False, numpy)
    numpy.testing.assert_allclose(out, dense_reference(_full(y, layout), identity) @ x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_float32_structured_matches_float64(algorithm, layout):
    rng = numpy.random.default_rng(13)
    y = _stored(rng, (), 20, 24, layout, numpy.float32)
    x = rng.standard_normal((24, 5)).astype(numpy.float32)
    module = ALGORITHMS[algorithm]
    out = module.apply(module.build(y, 8, numpy, layout), x, True, numpy)
    assert out.dtype == numpy.float32
    expected = dense_reference(_full(y, layout)).T @ x
    numpy.testing.assert_allclose(out, expected, rtol=0, atol=50 * numpy.finfo(numpy.float32).eps * 24)


# ------------------------------------------------------------------ from_lapack in place
from scipy.linalg import lapack  # noqa: E402

import cuhouse  # noqa: E402


def _geqrf(rng, shape, dtype=numpy.float64, order="F"):
    """``(a, tau)`` from LAPACK, batched by stacking; ``a`` in the requested memory order."""
    prefix = "s" if dtype == numpy.float32 else "d"
    mats = rng.standard_normal(shape).astype(dtype).reshape((-1,) + shape[-2:])
    pieces = [getattr(lapack, prefix + "geqrf")(m)[:2] for m in mats]
    a = numpy.stack([p[0] for p in pieces]).reshape(shape)
    tau = numpy.stack([p[1] for p in pieces]).reshape(shape[:-2] + (-1,))
    return (numpy.asfortranarray(a) if order == "F" else numpy.ascontiguousarray(a)), tau


@pytest.mark.parametrize("algorithm", ["auto"] + sorted(ALGORITHMS))
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("shape, k, order", [((7, 7), 6, "F"), ((9, 4), 4, "C"), ((2, 9, 6), 3, "F")])
def test_from_lapack_in_place_matches_full_rows(any_xp, algorithm, side, shape, k, order):
    """Tall a, k < N, batched, both memory orders (NumPy's; C order elsewhere); H and H.T on both sides,
    values and gradients."""
    needs_algorithm(any_xp, algorithm)
    native = is_native(any_xp)
    rng = numpy.random.default_rng(21)
    a, tau = _geqrf(rng, shape, order=order)
    tau = tau[..., :k]
    if native:
        a, tau = any_xp.asarray(a), any_xp.asarray(tau)
    else:
        a, tau = on(any_xp, a, tau)
    h = cuhouse.HouseholderProduct.from_lapack(a, tau, algorithm=algorithm, block_size=2)
    assert h.params[0] is a
    if any_xp is numpy:
        assert numpy.shares_memory(h._core.rows, a)
    full = cuhouse.HouseholderProduct(on(any_xp, to_numpy(h.vectors)), algorithm=algorithm, block_size=2)
    d = shape[-2]
    x = on(any_xp, rng.standard_normal(shape[:-2] + ((d, 3) if side == "left" else (3, d))))
    for op, reference in ((h, full), (h.T, full.T)):
        args = (op, x) if side == "left" else (x, op)
        ref_args = (reference, x) if side == "left" else (x, reference)
        out, back = cuhouse.vjp(cuhouse.matmul, *args)
        ref_out, ref_back = cuhouse.vjp(cuhouse.matmul, *ref_args)
        assert_allclose(out, ref_out, rtol=0, atol=1e-12)
        dout = on(any_xp, rng.standard_normal(tuple(out.shape)))
        grads, ref_grads = back(dout), ref_back(dout)
        (da,), dx = grads if side == "left" else grads[::-1]
        (dv,), dx_ref = ref_grads if side == "left" else ref_grads[::-1]
        assert da.shape == a.shape
        assert_allclose(dx, dx_ref, rtol=0, atol=1e-12)
        da, dv = to_numpy(da), to_numpy(dv)
        expected = numpy.zeros_like(da)
        expected[..., :k] = numpy.swapaxes(numpy.triu(dv, 1), -1, -2)
        numpy.testing.assert_allclose(da, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_from_lapack_gradient_wrt_a_matches_central_differences(any_xp, algorithm):
    """tau implied by a (recomputed for every perturbed a); a tau == 0 factor stays the identity."""
    needs_algorithm(any_xp, algorithm)
    rng = numpy.random.default_rng(22)
    a, tau = _geqrf(rng, (2, 8, 5))
    tau[1, 2] = 0
    x = on(any_xp, rng.standard_normal((2, 8, 3)))
    dout = on(any_xp, rng.standard_normal((2, 8, 3)))

    def product(a_):  # tau is no leaf (params is (a,)): computed on the host from a_
        implied = 2 / (1 + (numpy.tril(to_numpy(a_), -1)[..., :5] ** 2).sum(axis=-2))
        tau_ = on(any_xp, numpy.where(tau == 0, 0, implied))
        return cuhouse.HouseholderProduct.from_lapack(a_, tau_, algorithm=algorithm, block_size=2) @ x

    a, tau_x = on(any_xp, a, tau)
    _, back = cuhouse.vjp(
        cuhouse.matmul, cuhouse.HouseholderProduct.from_lapack(a, tau_x, algorithm=algorithm, block_size=2), x
    )
    ((da,), _) = back(dout)
    da = to_numpy(da)
    assert not numpy.triu(da).any() and not da[1, :, 2].any()
    check_vjp(product, (a,), lambda u: back(u)[0], rtol=1e-7, xp=any_xp)


def test_nan_above_the_diagonal_of_a_does_not_reach_the_result(any_xp):
    rng = numpy.random.default_rng(23)
    a, tau = _geqrf(rng, (6, 6))
    reference = cuhouse.HouseholderProduct.from_lapack(*on(any_xp, a, tau[:5]))
    poisoned = a.copy(order="F")
    poisoned[numpy.triu_indices(6)] = numpy.nan
    h = cuhouse.HouseholderProduct.from_lapack(*on(any_xp, poisoned, tau[:5]))
    x = on(any_xp, rng.standard_normal((6, 2)))
    for algorithm in algorithm_names(any_xp):
        h.algorithm = reference.algorithm = algorithm
        assert_equal(h @ x, reference @ x)
        (da,), dx = cuhouse.vjp(cuhouse.matmul, h, x)[1](on(any_xp, numpy.ones((6, 2))))
        assert numpy.isfinite(to_numpy(da)).all() and numpy.isfinite(to_numpy(dx)).all()
    assert_equal(h.todense(), reference.todense())


def test_from_lapack_float32_matches_float64(any_xp):
    rng = numpy.random.default_rng(24)
    a, tau = _geqrf(rng, (40, 30), numpy.float32)
    x = rng.standard_normal((40, 4)).astype(numpy.float32)
    a_x, tau_x, x_x = on(any_xp, a, tau, x)
    h = cuhouse.HouseholderProduct.from_lapack(a_x, tau_x, block_size=8)
    assert h.params[0] is a_x and dtype_name(h @ x_x) == "float32"
    exact = cuhouse.HouseholderProduct.from_lapack(*on(any_xp, a.astype(numpy.float64), tau))
    assert_allclose(
        h @ x_x, exact @ on(any_xp, x.astype(numpy.float64)), rtol=0, atol=100 * numpy.finfo(numpy.float32).eps
    )


def test_cost_model_knows_the_structure():  # NumPy only: the native path's cost model and plans
    from cuhouse import plan

    # cwy's full layout on NumPy makes fewer calls per block (direct BLAS, plan._direct_step) than a structured
    # block's head and tail GEMMs: the halved flops show where flops outweigh the calls (m = 256)
    for algorithm, m in (("sequential", 32), ("cwy", 256), ("dense", 32)):
        full = plan.predict(algorithm, 1024, 1024, m, 32)
        structured = plan.predict(algorithm, 1024, 1024, m, 32, layout="unit")
        assert structured < full
    assert plan.choose(512, 512, 32, numpy.float32, layout="unit").store_inputs is False
    a, tau = _geqrf(numpy.random.default_rng(25), (12, 12))
    h = cuhouse.HouseholderProduct.from_lapack(a, tau[:11])
    assert h.plan_for(3) == plan.choose(12, 11, 3, numpy.float64, layout="unit", lapack=True)


@pytest.mark.parametrize("algorithm", ["auto"] + sorted(ALGORITHMS))
def test_trapezoidal_vectors_are_detected_and_keep_their_gradient(any_xp, algorithm):
    """V with row i zero in its first i entries (torch's minimal map): products run on the trailing
    rows (NumPy/CuPy detect the layout); the gradient still covers every entry of V (a product that is
    differentiated uses full rows)."""
    needs_algorithm(any_xp, algorithm)
    native = is_native(any_xp)
    rng = numpy.random.default_rng(26)
    v = numpy.triu(rng.standard_normal((2, 70, 75)))  # more than one 64-row detection block
    h = cuhouse.HouseholderProduct(on(any_xp, v), algorithm=algorithm, block_size=8)
    assert h._core.layout == "trapezoidal" or not native
    x = rng.standard_normal((2, 75, 3))
    xs = on(any_xp, x)
    dense = dense_reference(v[:2])
    assert_allclose(h @ xs, dense @ x, rtol=0, atol=1e-12)
    assert_allclose(rmatmul(any_xp.swapaxes(xs, -1, -2), h), x.swapaxes(-1, -2) @ dense, rtol=0, atol=1e-12)
    (dv,), dx = cuhouse.vjp(cuhouse.matmul, h, xs)[1](on(any_xp, numpy.ones_like(x)))
    w = v.copy()
    w[0, 40, 1] = 1e-300  # one entry below: full rows
    full = cuhouse.HouseholderProduct(on(any_xp, w), algorithm=algorithm, block_size=8)
    assert full._core.layout == "full"
    (dv_full,), dx_full = cuhouse.vjp(cuhouse.matmul, full, xs)[1](on(any_xp, numpy.ones_like(x)))
    dv = to_numpy(dv)
    assert_allclose(dv, dv_full, rtol=0, atol=1e-10)
    assert numpy.abs(numpy.tril(dv[0], -1)).max() > 0


def test_rows_with_nan_are_not_trapezoidal():  # NumPy only: the native layout detection
    v = numpy.triu(numpy.ones((4, 5)))
    v[2, 0] = numpy.nan
    assert not _layout.is_trapezoidal(v, numpy) and _layout.is_trapezoidal(numpy.triu(v), numpy)
