"""Adjoints of ``HouseholderProduct``: dot-product tests, cross-algorithm agreement, derived matrices."""

import numpy
import pytest
from helpers import check_matmul_vjp, dense_reference, matmul_vjp, to_numpy

import cuhouse as ch
from cuhouse._backend import cupy_module
from cuhouse._gpu import primitives as _primitives
from cuhouse.algorithms import ALGORITHMS, cwy

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
def test_dot_product(xp, algorithm, side, shape, n):
    """<u, J t> by central differences equals <J^T u, t> from the vjp, to 1e-6 relative."""
    v, x = _operands(xp, n, 7, shape, side)
    check_matmul_vjp(lambda vec: ch.HouseholderProduct(vec, algorithm=algorithm, block_size=BLOCK), (v,), x, side, xp)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("n", [5, 7])
def test_algorithms_agree(xp, side, shape, n):
    v, x = _operands(xp, n, 7, shape, side, seed=2)
    results = []
    for algorithm in ALGORITHM_NAMES:
        out, grads = matmul_vjp(ch.HouseholderProduct(v, algorithm=algorithm, block_size=BLOCK), x, side)
        dv, dx = grads(xp.ones_like(out))
        results.append((algorithm, to_numpy(dv), to_numpy(dx)))
    _, dv_ref, dx_ref = results[0]
    for algorithm, dv, dx in results[1:]:
        numpy.testing.assert_allclose(dv, dv_ref, rtol=0, atol=1e-10 * numpy.abs(dv_ref).max(), err_msg=algorithm)
        numpy.testing.assert_allclose(dx, dx_ref, rtol=0, atol=1e-10 * numpy.abs(dx_ref).max(), err_msg=algorithm)


@pytest.mark.parametrize("transpose", [False, True])
def test_cwy_store_and_recompute_agree(xp, transpose):
    rng = numpy.random.default_rng(3)
    v = rng.standard_normal((2, 9, 11))
    y = _primitives.normalize_rows(v, _primitives.row_norms(v, numpy), numpy)
    factors = cwy.build(xp.asarray(y), 4, xp)
    x = xp.asarray(rng.standard_normal((11, 3)))
    out = cwy.apply(factors, x, transpose, xp)
    dout = xp.asarray(rng.standard_normal(out.shape))
    stored = cwy.backward(factors, out, dout, transpose, xp, store_inputs=True)
    recomputed = cwy.backward(factors, out, dout, transpose, xp, store_inputs=False)
    for a, b in zip(stored, recomputed):
        numpy.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=1e-12, atol=1e-13)


def _gradients(h, x, seed=4):
    out, back = ch.vjp(ch.matmul, h, x)
    dout = numpy.random.default_rng(seed).standard_normal(out.shape)
    xp = numpy if isinstance(x, numpy.ndarray) else cupy_module()
    dparams, dx = back(xp.asarray(dout))  # cupy.asarray: cupy.ndarray(host data) is a TypeError in CuPy
    return to_numpy(out), [to_numpy(g) for g in dparams], to_numpy(dx)


def test_transpose_and_inverse_match_reversed_vectors(xp):
    rng = numpy.random.default_rng(5)
    v = xp.asarray(rng.standard_normal((6, 8)))
    x = xp.asarray(rng.standard_normal((8, 3)))
    out, (dv_explicit,), dx_explicit = _gradients(ch.HouseholderProduct(v[::-1].copy()), x)
    for derived in (ch.HouseholderProduct(v).T, ch.HouseholderProduct(v).inv()):
        out_d, (dv,), dx = _gradients(derived, x)
        numpy.testing.assert_allclose(out_d, out, rtol=1e-12, atol=1e-12)
        numpy.testing.assert_allclose(dv, dv_explicit[::-1], rtol=1e-10, atol=1e-12)
        numpy.testing.assert_allclose(dx, dx_explicit, rtol=1e-10, atol=1e-12)


def test_composition_matches_concatenated_vectors_with_broadcast(xp):
    rng = numpy.random.default_rng(6)
    v1 = xp.asarray(rng.standard_normal((2, 3, 8)))
    v2 = xp.asarray(rng.standard_normal((4, 8)))
    x = xp.asarray(rng.standard_normal((8, 2)))
    h = ch.HouseholderProduct(v1) @ ch.HouseholderProduct(v2).T
    explicit = xp.concatenate([v1, xp.broadcast_to(v2[::-1], (2, 4, 8))], axis=-2)
    out, (dc,), dx_explicit = _gradients(ch.HouseholderProduct(explicit), x)
    out_d, (dv1, dv2), dx = _gradients(h, x)
    assert h.params[0] is v1 and h.params[1] is v2
    numpy.testing.assert_allclose(out_d, out, rtol=1e-12, atol=1e-12)
    numpy.testing.assert_allclose(dv1, dc[:, :3], rtol=1e-10, atol=1e-12)
    numpy.testing.assert_allclose(dv2, dc[:, 3:].sum(axis=0)[::-1], rtol=1e-10, atol=1e-12)
    numpy.testing.assert_allclose(dx, dx_explicit, rtol=1e-10, atol=1e-12)


def test_product_with_own_transpose_sums_into_one_leaf(xp):
    rng = numpy.random.default_rng(7)
    v = xp.asarray(rng.standard_normal((3, 9)))
    w = xp.asarray(rng.standard_normal((2, 9)))
    x = xp.asarray(rng.standard_normal((9, 2)))
    h = ch.HouseholderProduct(v)
    composed = h @ ch.HouseholderProduct(w) @ h.T
    assert len(composed.params) == 2 and composed.params[0] is v and composed.params[1] is w
    explicit = xp.concatenate([v, w, v[::-1]], axis=-2)
    _, (dc,), _ = _gradients(ch.HouseholderProduct(explicit), x)
    _, (dv, dw), _ = _gradients(composed, x)
    numpy.testing.assert_allclose(dv, dc[:3] + dc[5:][::-1], rtol=1e-10, atol=1e-12)
    numpy.testing.assert_allclose(dw, dc[3:5], rtol=1e-10, atol=1e-12)
    (dv_identity,), _ = ch.vjp(ch.matmul, h @ h.T, x)[1](xp.ones((9, 2)))
    assert len((h @ h.T).params) == 1 and (h @ h.T).params[0] is v
    assert numpy.abs(to_numpy(dv_identity)).max() < 1e-12  # H H^T = I does not depend on v


def test_identity_factors_get_zero_gradient():
    rng = numpy.random.default_rng(8)
    a = rng.standard_normal((6, 4))
    qr, tau, _, _ = __import__("scipy.linalg", fromlist=["lapack"]).lapack.dgeqrf(a)
    tau[1] = 0
    h = ch.HouseholderProduct.from_lapack(qr, tau, algorithm="cwy", block_size=2)
    numpy.testing.assert_allclose(h.todense(), dense_reference(numpy.delete(h.vectors, 1, axis=0)), atol=1e-12)
    (da,), _ = ch.vjp(ch.matmul, h, rng.standard_normal((6, 3)))[1](numpy.ones((6, 3)))
    assert da.shape == qr.shape  # params is (a,): reflector 1 is column 1 of a
    assert numpy.all(da[:, 1] == 0) and numpy.abs(da).max() > 0


def test_logdet_vjp_gives_zeros_of_leaf_shapes(xp):
    v1 = xp.asarray(numpy.random.default_rng(9).standard_normal((2, 3, 5)))
    v2 = xp.asarray(numpy.ones((1, 5)), dtype=xp.float32)
    h = ch.HouseholderProduct(v1) @ ch.HouseholderProduct(v2)
    value, back = ch.vjp(ch.logdet, h)
    assert value.shape == (2,) and not to_numpy(value).any()
    ((dv1, dv2),) = back(xp.ones(2))
    assert dv1.shape == v1.shape and dv2.shape == v2.shape and dv2.dtype == numpy.float32
    assert not to_numpy(dv1).any() and not to_numpy(dv2).any()


def test_float32_gradients_match_float64(xp):
    v, x = _operands(xp, 40, 48, "matrix", "left", seed=10, m=8)
    dout = xp.asarray(numpy.random.default_rng(11).standard_normal((48, 8)))
    grads = {}
    for dtype in (numpy.float32, numpy.float64):
        out, back = ch.vjp(ch.matmul, ch.HouseholderProduct(v.astype(dtype)), x.astype(dtype))
        (dv,), dx = back(dout.astype(dtype))
        assert out.dtype == dv.dtype == dx.dtype == dtype
        grads[dtype] = (to_numpy(dv), to_numpy(dx))
    for low, high in zip(grads[numpy.float32], grads[numpy.float64]):
        numpy.testing.assert_allclose(low, high, rtol=0, atol=1e-4 * numpy.abs(high).max())


def test_integer_x_gets_float_gradient(xp):
    v = xp.asarray(numpy.random.default_rng(12).standard_normal((3, 4)).astype(numpy.float32))
    x = xp.arange(8).reshape(4, 2)
    out, back = ch.vjp(ch.matmul, ch.HouseholderProduct(v), x)
    (dv,), dx = back(xp.ones(out.shape))
    assert out.dtype == dx.dtype == numpy.float64 and dx.shape == x.shape and dv.dtype == numpy.float32


@pytest.mark.parametrize("algorithm", ALGORITHM_NAMES)
def test_inputs_are_not_mutated(xp, algorithm):
    v, x = _operands(xp, 5, 7, "broadcast", "right", seed=13)
    dout = xp.asarray(numpy.random.default_rng(14).standard_normal((2, 3, 4, 7)))
    copies = [to_numpy(a).copy() for a in (v, x, dout)]
    out, back = ch.vjp(ch.matmul, x, ch.HouseholderProduct(v, algorithm=algorithm, block_size=BLOCK))
    out_copy = to_numpy(out).copy()
    back(dout)
    for original, copy in zip((v, x, dout, out), copies + [out_copy]):
        numpy.testing.assert_array_equal(to_numpy(original), copy)


def test_dout_of_wrong_shape_is_a_value_error(xp):
    h = ch.HouseholderProduct(xp.ones((2, 4)) + xp.eye(2, 4))
    _, back = ch.vjp(ch.matmul, h, xp.ones((4, 3)))
    with pytest.raises(ValueError, match=r"dout must have the shape .* \(4, 3\), got shape \(3, 4\)"):
        back(xp.ones((3, 4)))


def test_dout_of_wrong_type_is_a_type_error(xp):
    h = ch.HouseholderProduct(xp.ones((2, 4)) + xp.eye(2, 4))
    _, back = ch.vjp(ch.matmul, h, xp.ones((4, 3)))
    with pytest.raises(TypeError, match="dout must be an array of real or complex numbers, got str"):
        back("gradient")


def test_operand_of_wrong_shape_is_the_forward_error(xp):
    h = ch.HouseholderProduct(xp.ones((2, 4)) + xp.eye(2, 4))
    with pytest.raises(ValueError, match=r"X has shape \(3, 2\) but the operator is 4x4"):
        ch.vjp(ch.matmul, h, xp.ones((3, 2)))


def test_two_operators_is_a_type_error(xp):
    h = ch.HouseholderProduct(xp.ones((2, 4)) + xp.eye(2, 4))
    with pytest.raises(TypeError, match=r"got two cuhouse matrices .* differentiate \(A1 @ A2\) @ X instead"):
        ch.vjp(ch.matmul, h, h.T)


def test_logdet_gradient_of_wrong_shape_is_a_value_error(xp):
    h = ch.HouseholderProduct(xp.ones((3, 2, 4)) + xp.eye(2, 4))
    _, back = ch.vjp(ch.logdet, h)
    with pytest.raises(ValueError, match=r"dvalue must have the shape .* \(3,\), got shape \(\)"):
        back(xp.asarray(1.0))


def test_recompute_mode_peak_memory_is_within_the_bound():
    """Peak extra host memory of fwd+bwd (auto, recompute) <= 4 (d m + n d) itemsize."""
    from cuhouse.bench.gradients import peak_extra_memory

    d, n, m = 512, 384, 16
    assert not ch.plan.store_block_inputs(d, n, m, 64, 4, "numpy")
    peak = peak_extra_memory(d, n, m, numpy.float32)
    assert 0 < peak <= 4 * (d * m + n * d) * 4
