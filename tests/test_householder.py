"""HouseholderProduct against float64 dense references, for every algorithm."""

import numpy
import pytest
import scipy.linalg
from helpers import (
    assert_allclose,
    assert_equal,
    dense_reference,
    dtype_name,
    is_native,
    needs_algorithm,
    on,
    rmatmul,
    rtol,
    to_numpy,
)
from scipy.linalg import lapack

import cuhouse
from cuhouse.algorithms import ALGORITHMS

ALGORITHM_NAMES = ["auto"] + sorted(ALGORITHMS)
DTYPES = [numpy.float32, numpy.float64]
# (d, n): d = 1, n = 1, prime d, d not divisible by the block sizes, n < d and n = d.
SIZES = [(1, 1), (2, 1), (5, 5), (7, 3), (13, 13), (31, 1), (64, 64), (97, 40), (128, 127), (300, 300)]


def _data(xp, shape_v, shape_x, dtype, seed=0):
    rng = numpy.random.default_rng(seed)
    v = rng.standard_normal(shape_v).astype(dtype)
    x = rng.standard_normal(shape_x).astype(dtype)
    return xp.asarray(v), xp.asarray(x)


def _assert_close(actual, expected, dtype, d):
    actual, expected = to_numpy(actual), numpy.asarray(expected)
    assert actual.shape == expected.shape
    scale = max(1.0, numpy.abs(expected).max())
    err = numpy.abs(actual - expected).max() / scale
    assert err <= rtol(dtype, scale=max(d, 10)), err


@pytest.mark.parametrize("algorithm", ALGORITHM_NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d,n", SIZES)
def test_products_match_dense_reference(any_xp, algorithm, dtype, d, n):
    needs_algorithm(any_xp, algorithm)
    v, x = _data(any_xp, (n, d), (d, 4), dtype)
    h = cuhouse.HouseholderProduct(v, algorithm=algorithm)
    ref = dense_reference(v)
    xn = to_numpy(x).astype(numpy.float64)
    _assert_close(h @ x, ref @ xn, dtype, d)
    _assert_close(rmatmul(x.T, h), xn.T @ ref, dtype, d)
    _assert_close(h.T @ x, ref.T @ xn, dtype, d)
    _assert_close(h @ x[:, 0], ref @ xn[:, 0], dtype, d)
    _assert_close(rmatmul(x[:, 0], h), xn[:, 0] @ ref, dtype, d)
    assert dtype_name(h @ x) == numpy.dtype(dtype).name


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
@pytest.mark.parametrize("block_size", [1, 2, 3, 8, 64])
def test_block_sizes_including_non_divisors(any_xp, algorithm, block_size):
    needs_algorithm(any_xp, algorithm)
    v, x = _data(any_xp, (29, 37), (37, 3), numpy.float64)
    h = cuhouse.HouseholderProduct(v, algorithm=algorithm, block_size=block_size)
    _assert_close(h @ x, dense_reference(v) @ to_numpy(x), numpy.float64, 37)


@pytest.mark.parametrize("algorithm", ALGORITHM_NAMES)
@pytest.mark.parametrize(
    "shape_v,shape_x",
    [
        ((3, 4, 6), (6, 2)),  # batched H, single X
        ((4, 6), (3, 6, 2)),  # single H, batched X
        ((2, 1, 4, 6), (3, 6, 2)),  # broadcasting to (2, 3)
        ((3, 4, 6), (3, 6, 2)),
    ],
)
def test_batched_equals_loop_over_batch(any_xp, algorithm, shape_v, shape_x):
    needs_algorithm(any_xp, algorithm)
    v, x = _data(any_xp, shape_v, shape_x, numpy.float64)
    h = cuhouse.HouseholderProduct(v, algorithm=algorithm)
    out = to_numpy(h @ x)
    batch = numpy.broadcast_shapes(shape_v[:-2], shape_x[:-2])
    assert out.shape == batch + (6, 2)
    vb = numpy.broadcast_to(to_numpy(v), batch + shape_v[-2:])
    xb = numpy.broadcast_to(to_numpy(x), batch + shape_x[-2:])
    for idx in numpy.ndindex(*batch):
        single = cuhouse.HouseholderProduct(on(any_xp, vb[idx]), algorithm=algorithm)
        assert_allclose(out[idx], single @ on(any_xp, xb[idx]), rtol=1e-12, atol=1e-12)
    right = to_numpy(rmatmul(any_xp.swapaxes(x, -1, -2), h))
    expected = numpy.swapaxes(to_numpy(x), -1, -2) @ dense_reference(v)
    numpy.testing.assert_allclose(right, expected, atol=1e-12)


def test_transpose_inverse_and_composition(any_xp):
    v1, x = _data(any_xp, (5, 9), (9, 3), numpy.float64, seed=1)
    v2, _ = _data(any_xp, (7, 9), (9, 3), numpy.float64, seed=2)
    h1, h2 = cuhouse.HouseholderProduct(v1), cuhouse.HouseholderProduct(v2)
    r1, r2 = dense_reference(v1), dense_reference(v2)
    xn = to_numpy(x)
    assert isinstance(h1.T, cuhouse.HouseholderProduct)
    assert isinstance(h1.inv(), cuhouse.HouseholderProduct)
    numpy.testing.assert_allclose(to_numpy(h1.inv() @ x), r1.T @ xn, atol=1e-13)
    numpy.testing.assert_array_equal(to_numpy(h1.T.vectors), to_numpy(v1)[::-1])
    assert h1.T.T.vectors is h1.vectors
    composed = h1 @ h2.T
    assert isinstance(composed, cuhouse.HouseholderProduct)
    assert composed.n_reflections == 12  # more than d: allowed for compositions
    numpy.testing.assert_allclose(to_numpy(composed @ x), r1 @ r2.T @ xn, atol=1e-13)
    numpy.testing.assert_allclose(to_numpy(composed.T @ x), (r1 @ r2.T).T @ xn, atol=1e-13)
    assert composed.params[0] is h1.params[0] and composed.params[1] is h2.params[0]
    assert (h1 @ h1.T).params == (h1.params[0],)
    numpy.testing.assert_allclose(to_numpy((h1 @ h1.T) @ x), xn, atol=1e-13)


def test_attributes_and_repr(any_xp):
    v, _ = _data(any_xp, (2, 3, 5), (5, 1), numpy.float32)
    h = cuhouse.HouseholderProduct(v)
    assert h.shape == (2, 5, 5) and h.ndim == 3 and dtype_name(h) == "float32"
    assert h.n_reflections == 3
    assert h.params == (v,) and h.params[0] is v
    # vectors is a read-only view of the caller's array (CuPy has no read-only arrays)
    assert h.vectors is v if any_xp is not numpy else (h.vectors.base is v and not h.vectors.flags.writeable)
    text = repr(h)
    for part in ("shape=(2, 5, 5)", "float32", "n_reflections=3", "backend=", "algorithm='auto'"):
        assert part in text


@pytest.mark.parametrize("n", [1, 2, 5])
def test_determinants(any_xp, n):
    v, _ = _data(any_xp, (3, n, 6), (6, 1), numpy.float64)
    h = cuhouse.HouseholderProduct(v)
    numpy.testing.assert_array_equal(to_numpy(h.det()), numpy.full(3, (-1.0) ** n))
    sign, logabs = h.slogdet()
    numpy.testing.assert_array_equal(to_numpy(sign), numpy.full(3, (-1.0) ** n))
    numpy.testing.assert_array_equal(to_numpy(logabs), numpy.zeros(3))
    numpy.testing.assert_array_equal(to_numpy(h.logdet()), numpy.zeros(3))
    numpy.testing.assert_allclose(numpy.linalg.det(to_numpy(h.todense())), numpy.full(3, (-1.0) ** n))


def test_todense(any_xp):
    v, _ = _data(any_xp, (4, 7), (7, 1), numpy.float64)
    assert_allclose(cuhouse.HouseholderProduct(v).todense(), dense_reference(v), atol=1e-14)


def test_array_protocol():  # NumPy only: numpy.asarray(H) (the generic path refuses it, test_backends.py)
    v, _ = _data(numpy, (4, 7), (7, 1), numpy.float64)
    h = cuhouse.HouseholderProduct(v)
    numpy.testing.assert_allclose(numpy.asarray(h), dense_reference(v), atol=1e-14)
    assert numpy.asarray(h, dtype=numpy.float32).dtype == numpy.float32


def test_ndarray_matmul_reaches_rmatmul():  # NumPy only: ndarray.__matmul__ deferring to H
    v, x = _data(numpy, (4, 7), (3, 7), numpy.float64)
    h = cuhouse.HouseholderProduct(v)
    out = x @ h
    assert isinstance(out, numpy.ndarray)
    numpy.testing.assert_allclose(out, x @ dense_reference(v), atol=1e-14)


def test_dtype_promotion():  # NumPy only: integer, boolean and list operands
    v, _ = _data(numpy, (3, 4), (4, 1), numpy.float32)
    h = cuhouse.HouseholderProduct(v)
    assert (h @ numpy.ones((4, 2), dtype=numpy.float64)).dtype == numpy.float64
    assert (h @ numpy.ones((4, 2), dtype=numpy.int64)).dtype == numpy.float64
    assert (h @ numpy.ones((4, 2), dtype=bool)).dtype == numpy.float32
    assert (h @ [1, 2, 3, 4]).shape == (4,)
    ints = cuhouse.HouseholderProduct([[1, 2, 3], [0, 1, 0]])
    assert ints.dtype == numpy.float64


def test_caller_arrays_are_not_mutated(any_xp):
    v, x = _data(any_xp, (6, 8), (8, 3), numpy.float64)
    v0, x0 = to_numpy(v).copy(), to_numpy(x).copy()
    for algorithm in ALGORITHMS:
        if algorithm == "fasth" and not is_native(any_xp):
            continue  # NumPy/CuPy only
        h = cuhouse.HouseholderProduct(v, algorithm=algorithm)
        h @ x, rmatmul(x.T, h), h.T @ x, h.todense()
    assert_equal(v, v0)
    assert_equal(x, x0)


def test_factors_are_cached_and_refresh_rebuilds(any_xp):
    v, x = _data(any_xp, (6, 8), (8, 3), numpy.float64)
    h = cuhouse.HouseholderProduct(v, algorithm="cwy")
    first = h @ x
    built = dict(h._core._forms)
    h @ x
    assert h._core._forms.keys() == built.keys()
    assert all(h._core._forms[k] is built[k] for k in built)
    v[0, ...] += 0.5  # an in-place optimizer step
    h.refresh()
    assert_allclose(h @ x, dense_reference(v) @ to_numpy(x), atol=1e-13)
    assert not numpy.allclose(to_numpy(first), to_numpy(h @ x))


def test_tiny_and_huge_vectors_are_normalized_safely(any_xp):
    rng = numpy.random.default_rng(3)
    base = rng.standard_normal((3, 5))
    x = rng.standard_normal((5, 2))
    for scale in (1e-300, 1e-30, 1.0, 1e30, 1e300):
        h = cuhouse.HouseholderProduct(on(any_xp, base * scale))
        out = to_numpy(h @ on(any_xp, x))
        assert numpy.isfinite(out).all()
        numpy.testing.assert_allclose(out, dense_reference(base) @ x, atol=1e-13)


class TestFromLapack:
    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("rows,cols", [(6, 6), (9, 4), (4, 9), (1, 1)])
    def test_matches_orgqr_and_ormqr(self, any_xp, dtype, rows, cols):
        rng = numpy.random.default_rng(4)
        a = rng.standard_normal((rows, cols)).astype(dtype)
        prefix = "s" if dtype == numpy.float32 else "d"
        qr, tau, _, _ = getattr(lapack, prefix + "geqrf")(a)
        h = cuhouse.HouseholderProduct.from_lapack(*on(any_xp, qr, tau))
        x = rng.standard_normal((rows, 3)).astype(dtype)
        k = tau.shape[0]
        expected = getattr(lapack, prefix + "ormqr")("L", "N", qr[:, :k], tau, x, max(1, 3 * 64))[0]
        assert_allclose(h @ on(any_xp, x), expected, atol=rtol(dtype, 100))
        full = numpy.zeros((rows, rows), dtype=dtype)
        full[:, :k] = qr[:, :k]
        q = getattr(lapack, prefix + "orgqr")(full, numpy.r_[tau, numpy.zeros(rows - k, dtype)])[0]
        assert_allclose(h.todense(), q, atol=rtol(dtype, 100))

    def test_scipy_qr_raw_and_tau_zero_identity_factor(self, any_xp):
        rng = numpy.random.default_rng(5)
        a = rng.standard_normal((7, 5))
        (qr, tau), _ = scipy.linalg.qr(a, mode="raw")
        q, _ = scipy.linalg.qr(a)
        assert_allclose(cuhouse.HouseholderProduct.from_lapack(*on(any_xp, qr, tau)).todense(), q, atol=1e-13)
        tau = tau.copy()
        tau[2] = 0.0
        h = cuhouse.HouseholderProduct.from_lapack(*on(any_xp, qr, tau))
        padded = numpy.zeros((7, 7))
        padded[:, :5] = qr
        expected = lapack.dorgqr(padded, numpy.r_[tau, 0, 0])[0]
        assert_allclose(h.todense(), expected, atol=1e-13)
        assert float(to_numpy(h.det())) == 1.0  # four proper reflections, one identity factor

    def test_all_identity_factors(self, any_xp):
        upper = numpy.triu(numpy.arange(1.0, 10.0).reshape(3, 3))
        qr, tau, _, _ = lapack.dgeqrf(upper)
        tau = numpy.zeros_like(tau)
        h = cuhouse.HouseholderProduct.from_lapack(*on(any_xp, qr, tau))
        assert_allclose(h.todense(), numpy.eye(3))
        assert float(to_numpy(h.det())) == 1.0

    def test_batched(self, any_xp):
        rng = numpy.random.default_rng(6)
        a = rng.standard_normal((3, 6, 4))
        pieces = [lapack.dgeqrf(a[i])[:2] for i in range(3)]
        qr = numpy.stack([p[0] for p in pieces])
        tau = numpy.stack([p[1] for p in pieces])
        dense = to_numpy(cuhouse.HouseholderProduct.from_lapack(*on(any_xp, qr, tau)).todense())
        for i in range(3):
            numpy.testing.assert_allclose(dense[i], scipy.linalg.qr(a[i])[0], atol=1e-13)

    def test_rejects_inconsistent_tau(self, any_xp):
        qr, tau, _, _ = lapack.dgeqrf(numpy.random.default_rng(7).standard_normal((5, 5)))
        with pytest.raises(ValueError, match="2 / \\(v\\^T v\\)"):
            cuhouse.HouseholderProduct.from_lapack(*on(any_xp, qr, tau * 0.5))

    def test_rejects_bad_tau_shape(self, any_xp):
        qr, tau, _, _ = lapack.dgeqrf(numpy.eye(4))
        with pytest.raises(ValueError, match="tau must have shape"):
            cuhouse.HouseholderProduct.from_lapack(*on(any_xp, qr, numpy.zeros(5)))


def test_from_lapack_accepts_torch_geqrf():
    torch = pytest.importorskip("torch")
    a = torch.randn(7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    qr, tau = torch.geqrf(a)
    h = cuhouse.HouseholderProduct.from_lapack(qr, tau)
    q = torch.linalg.householder_product(qr, tau).numpy()  # the first 5 columns of Q
    numpy.testing.assert_allclose(h.todense()[:, :5], q, atol=1e-13)
    numpy.testing.assert_allclose(h.todense()[:, :5], numpy.linalg.qr(a.numpy())[0], atol=1e-13)


# NumPy only: the memory order of NumPy operands and results.
@pytest.mark.parametrize("algorithm", ["dense", "cwy"])
def test_both_memory_orders_of_x_give_the_same_contiguous_result(algorithm):
    v, _ = _data(numpy, (6, 8), (8, 3), numpy.float64)
    h = cuhouse.HouseholderProduct(v, algorithm=algorithm)
    x = numpy.random.default_rng(1).standard_normal((5, 8))
    reference = x @ dense_reference(v)
    for operand in (x, numpy.asfortranarray(x)):
        numpy.testing.assert_allclose(operand @ h, reference, atol=1e-13)
        numpy.testing.assert_allclose(h.T @ operand.T, reference.T, atol=1e-13)
        assert (operand @ h).flags.c_contiguous and (h.T @ operand.T).flags.c_contiguous
