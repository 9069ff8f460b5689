"""Adjoints of ``HouseholderProduct``: dot-product tests, cross-algorithm agreement, derived matrices."""

import numpy
import pytest
from helpers import (
    algorithm_names,
    assert_allclose,
    check_matmul_vjp,
    dense_reference,
    dtype_name,
    is_native,
    matmul_vjp,
    needs_algorithm,
    on,
    to_numpy,
)

import cuhouse as ch
from cuhouse._gpu import primitives as _primitives
from cuhouse.algorithms import ALGORITHMS, cwy, portable

ALGORITHM_NAMES = tuple(ALGORITHMS)
BLOCK = 3  # divides neither d = 7 nor n = 5
SHAPES = {  # (batch of v, batch of X, X is a vector)
    "vector": ((), (), True),
    "matrix": ((), (), False),
    "broadcast": ((2, 1), (3,), False),
    "batched-vector": ((2,), (), True),
}


def _operands(xp, n, d, shape, side, seed=0, m=4, dtype=numpy.float64):
    v_batch, x_batch, vector = SHAPES[shape]
    rng = numpy.random.default_rng(seed)
    v = rng.standard_normal(v_batch + (n, d)).astype(dtype)
    x_shape = (d,) if vector else x_batch + ((d, m) if side == "left" else (m, d))
    x = rng.standard_normal(x_shape).astype(dtype)
    return xp.asarray(v), xp.asarray(x)


@pytest.mark.parametrize("algorithm", ALGORITHM_NAMES)
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("n", [5, 7])
def test_dot_product(any_xp, algorithm, side, shape, n):
    """<u, J t> by central differences equals <J^T u, t> from the vjp, to 1e-6 relative."""
    needs_algorithm(any_xp, algorithm)
    v, x = _operands(any_xp, n, 7, shape, side)
    make = lambda vec: ch.HouseholderProduct(vec, algorithm=algorithm, block_size=BLOCK)  # noqa: E731
    check_matmul_vjp(make, (v,), x, side, any_xp)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("n", [5, 7])
def test_algorithms_agree(any_xp, side, shape, n):
    v, x = _operands(any_xp, n, 7, shape, side, seed=2)
    results = []
    for algorithm in algorithm_names(any_xp):
        out, grads = matmul_vjp(ch.HouseholderProduct(v, algorithm=algorithm, block_size=BLOCK), x, side)
        dv, dx = grads(any_xp.ones_like(out))
        results.append((algorithm, to_numpy(dv), to_numpy(dx)))
    _, dv_ref, dx_ref = results[0]
    for algorithm, dv, dx in results[1:]:
        numpy.testing.assert_allclose(dv, dv_ref, rtol=0, atol=1e-10 * numpy.abs(dv_ref).max(), err_msg=algorithm)
        numpy.testing.assert_allclose(dx, dx_ref, rtol=0, atol=1e-10 * numpy.abs(dx_ref).max(), err_msg=algorithm)


@pytest.mark.parametrize("transpose", [False, True])
def test_cwy_store_and_recompute_agree(any_xp, transpose):
    """The compact-WY backward from stored block inputs equals the one that recomputes them
    (``algorithms.cwy`` on NumPy/CuPy, ``algorithms.portable`` on the generic path)."""
    rng = numpy.random.default_rng(3)
    v = rng.standard_normal((2, 9, 11))
    y = on(any_xp, _primitives.normalize_rows(v, _primitives.row_norms(v, numpy), numpy))
    native = is_native(any_xp)
    factors = cwy.build(y, 4, any_xp) if native else portable.build(y, 4, any_xp)
    module = cwy if native else portable
    x = on(any_xp, rng.standard_normal((11, 3)))
    out = module.apply(factors, x, transpose, any_xp)
    dout = on(any_xp, rng.standard_normal(tuple(out.shape)))
    stored = module.backward(factors, out, dout, transpose, any_xp, store_inputs=True)
    recomputed = module.backward(factors, out, dout, transpose, any_xp, store_inputs=False)
    for a, b in zip(stored, recomputed):
        numpy.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=1e-12, atol=1e-13)


def _gradients(xp, h, x, seed=4):
    out, back = ch.vjp(ch.matmul, h, x)
    dparams, dx = back(on(xp, numpy.random.default_rng(seed).standard_normal(tuple(out.shape))))
    return to_numpy(out), [to_numpy(g) for g in dparams], to_numpy(dx)


def test_transpose_and_inverse_match_reversed_vectors(any_xp):
    rng = numpy.random.default_rng(5)
    v = on(any_xp, rng.standard_normal((6, 8)))
    x = on(any_xp, rng.standard_normal((8, 3)))
    out, (dv_explicit,), dx_explicit = _gradients(any_xp, ch.HouseholderProduct(any_xp.flip(v, axis=0)), x)
    for derived in (ch.HouseholderProduct(v).T, ch.HouseholderProduct(v).inv()):
        out_d, (dv,), dx = _gradients(any_xp, derived, x)
        numpy.testing.assert_allclose(out_d, out, rtol=1e-12, atol=1e-12)
        numpy.testing.assert_allclose(dv, dv_explicit[::-1], rtol=1e-10, atol=1e-12)
        numpy.testing.assert_allclose(dx, dx_explicit, rtol=1e-10, atol=1e-12)


def test_composition_matches_concatenated_vectors_with_broadcast(any_xp):
    rng = numpy.random.default_rng(6)
    v1 = on(any_xp, rng.standard_normal((2, 3, 8)))
    v2 = on(any_xp, rng.standard_normal((4, 8)))
    x = on(any_xp, rng.standard_normal((8, 2)))
    h = ch.HouseholderProduct(v1) @ ch.HouseholderProduct(v2).T
    explicit = numpy.concatenate([to_numpy(v1), numpy.broadcast_to(to_numpy(v2)[::-1], (2, 4, 8))], axis=-2)
    out, (dc,), dx_explicit = _gradients(any_xp, ch.HouseholderProduct(on(any_xp, explicit)), x)
    out_d, (dv1, dv2), dx = _gradients(any_xp, h, x)
    assert h.params[0] is v1 and h.params[1] is v2
    numpy.testing.assert_allclose(out_d, out, rtol=1e-12, atol=1e-12)
    numpy.testing.assert_allclose(dv1, dc[:, :3], rtol=1e-10, atol=1e-12)
    numpy.testing.assert_allclose(dv2, dc[:, 3:].sum(axis=0)[::-1], rtol=1e-10, atol=1e-12)
    numpy.testing.assert_allclose(dx, dx_explicit, rtol=1e-10, atol=1e-12)


def test_product_with_own_transpose_sums_into_one_leaf(any_xp):
    rng = numpy.random.default_rng(7)
    v = on(any_xp, rng.standard_normal((3, 9)))
    w = on(any_xp, rng.standard_normal((2, 9)))
    x = on(any_xp, rng.standard_normal((9, 2)))
    h = ch.HouseholderProduct(v)
    composed = h @ ch.HouseholderProduct(w) @ h.T
    assert len(composed.params) == 2 and composed.params[0] is v and composed.params[1] is w
    explicit = numpy.concatenate([to_numpy(v), to_numpy(w), to_numpy(v)[::-1]], axis=-2)
    _, (dc,), _ = _gradients(any_xp, ch.HouseholderProduct(on(any_xp, explicit)), x)
    _, (dv, dw), _ = _gradients(any_xp, composed, x)
    numpy.testing.assert_allclose(dv, dc[:3] + dc[5:][::-1], rtol=1e-10, atol=1e-12)
    numpy.testing.assert_allclose(dw, dc[3:5], rtol=1e-10, atol=1e-12)
    (dv_identity,), _ = ch.vjp(ch.matmul, h @ h.T, x)[1](on(any_xp, numpy.ones((9, 2))))
    assert len((h @ h.T).params) == 1 and (h @ h.T).params[0] is v
    assert numpy.abs(to_numpy(dv_identity)).max() < 1e-12  # H H^T = I does not depend on v


def test_identity_factors_get_zero_gradient(any_xp):
    rng = numpy.random.default_rng(8)
    a = rng.standard_normal((6, 4))
    qr, tau, _, _ = __import__("scipy.linalg", fromlist=["lapack"]).lapack.dgeqrf(a)
    tau[1] = 0
    h = ch.HouseholderProduct.from_lapack(*on(any_xp, qr, tau), algorithm="cwy", block_size=2)
    assert_allclose(h.todense(), dense_reference(numpy.delete(to_numpy(h.vectors), 1, axis=0)), atol=1e-12)
    (da,), _ = ch.vjp(ch.matmul, h, on(any_xp, rng.standard_normal((6, 3))))[1](on(any_xp, numpy.ones((6, 3))))
    da = to_numpy(da)
    assert da.shape == qr.shape  # params is (a,): reflector 1 is column 1 of a
    assert numpy.all(da[:, 1] == 0) and numpy.abs(da).max() > 0


def test_logdet_vjp_gives_zeros_of_leaf_shapes(any_xp):
    v1 = on(any_xp, numpy.random.default_rng(9).standard_normal((2, 3, 5)))
    v2 = on(any_xp, numpy.ones((1, 5)), dtype=numpy.float32)
    h = ch.HouseholderProduct(v1) @ ch.HouseholderProduct(v2)
    value, back = ch.vjp(ch.logdet, h)
    assert tuple(value.shape) == (2,) and not to_numpy(value).any()
    ((dv1, dv2),) = back(on(any_xp, numpy.ones(2)))
    assert dv1.shape == v1.shape and dv2.shape == v2.shape and dtype_name(dv2) == "float32"
    assert not to_numpy(dv1).any() and not to_numpy(dv2).any()


def test_float32_gradients_match_float64(any_xp):
    v, x = _operands(numpy, 40, 48, "matrix", "left", seed=10, m=8)
    dout = numpy.random.default_rng(11).standard_normal((48, 8))
    grads = {}
    for dtype in (numpy.float32, numpy.float64):
        out, back = ch.vjp(ch.matmul, ch.HouseholderProduct(on(any_xp, v, dtype=dtype)), on(any_xp, x, dtype=dtype))
        (dv,), dx = back(on(any_xp, dout, dtype=dtype))
        assert dtype_name(out) == dtype_name(dv) == dtype_name(dx) == numpy.dtype(dtype).name
        grads[dtype] = (to_numpy(dv), to_numpy(dx))
    for low, high in zip(grads[numpy.float32], grads[numpy.float64]):
        numpy.testing.assert_allclose(low, high, rtol=0, atol=1e-4 * numpy.abs(high).max())


def test_integer_x_gets_float_gradient(any_xp):
    v = on(any_xp, numpy.random.default_rng(12).standard_normal((3, 4)), dtype=numpy.float32)
    x = on(any_xp, numpy.arange(8).reshape(4, 2))
    out, back = ch.vjp(ch.matmul, ch.HouseholderProduct(v), x)
    (dv,), dx = back(on(any_xp, numpy.ones(tuple(out.shape))))
    assert dtype_name(out) == dtype_name(dx) == "float64" and dx.shape == x.shape and dtype_name(dv) == "float32"


@pytest.mark.parametrize("algorithm", ALGORITHM_NAMES)
def test_inputs_are_not_mutated(any_xp, algorithm):
    needs_algorithm(any_xp, algorithm)
    v, x = _operands(any_xp, 5, 7, "broadcast", "right", seed=13)
    dout = on(any_xp, numpy.random.default_rng(14).standard_normal((2, 3, 4, 7)))
    copies = [to_numpy(a).copy() for a in (v, x, dout)]
    out, back = ch.vjp(ch.matmul, x, ch.HouseholderProduct(v, algorithm=algorithm, block_size=BLOCK))
    out_copy = to_numpy(out).copy()
    back(dout)
    for original, copy in zip((v, x, dout, out), copies + [out_copy]):
        numpy.testing.assert_array_equal(to_numpy(original), copy)


def test_dout_of_wrong_shape_is_a_value_error(any_xp):
    h = ch.HouseholderProduct(on(any_xp, numpy.ones((2, 4)) + numpy.eye(2, 4)))
    _, back = ch.vjp(ch.matmul, h, on(any_xp, numpy.ones((4, 3))))
    with pytest.raises(ValueError, match=r"dout must have the shape .* \(4, 3\), got shape \(3, 4\)"):
        back(on(any_xp, numpy.ones((3, 4))))


def test_dout_of_wrong_type_is_a_type_error(any_xp):
    h = ch.HouseholderProduct(on(any_xp, numpy.ones((2, 4)) + numpy.eye(2, 4)))
    _, back = ch.vjp(ch.matmul, h, on(any_xp, numpy.ones((4, 3))))
    with pytest.raises(TypeError, match="dout must be an array of real or complex numbers, got str"):
        back("gradient")


def test_operand_of_wrong_shape_is_the_forward_error(any_xp):
    h = ch.HouseholderProduct(on(any_xp, numpy.ones((2, 4)) + numpy.eye(2, 4)))
    with pytest.raises(ValueError, match=r"X has shape \(3, 2\) but the operator is 4x4"):
        ch.vjp(ch.matmul, h, on(any_xp, numpy.ones((3, 2))))


def test_two_operators_is_a_type_error(any_xp):
    h = ch.HouseholderProduct(on(any_xp, numpy.ones((2, 4)) + numpy.eye(2, 4)))
    with pytest.raises(TypeError, match=r"got two cuhouse matrices .* differentiate \(A1 @ A2\) @ X instead"):
        ch.vjp(ch.matmul, h, h.T)


def test_logdet_gradient_of_wrong_shape_is_a_value_error(any_xp):
    h = ch.HouseholderProduct(on(any_xp, numpy.ones((3, 2, 4)) + numpy.eye(2, 4)))
    _, back = ch.vjp(ch.logdet, h)
    with pytest.raises(ValueError, match=r"dvalue must have the shape .* \(3,\), got shape \(\)"):
        back(on(any_xp, 1.0))


def test_recompute_mode_peak_memory_is_within_the_bound():  # NumPy only: host memory of the NumPy path
    """Peak extra host memory of fwd+bwd (auto, recompute) <= 4 (d m + n d) itemsize."""
    from cuhouse.bench.gradients import peak_extra_memory

    d, n, m = 512, 384, 16
    assert not ch.plan.store_block_inputs(d, n, m, 64, 4, "numpy")
    peak = peak_extra_memory(d, n, m, numpy.float32)
    assert 0 < peak <= 4 * (d * m + n * d) * 4
