"""Complex data and unitary matrices: complex64/complex128 Householder products (every algorithm,
both sides, batched), ``.H``/``.T``/``.conj()``, LAPACK's complex reflectors, unitary ``from_dense``,
complex SVD/eigen matrices, torch's gradient convention, SciPy's operator interface.

References are complex128 dense matrices built from the definitions
H(v) = I - 2 v v^H / (v^H v) and H_i = I - tau_i v_i v_i^H.
"""

import inspect
import pickle

import numpy
import pytest
import scipy.linalg
import scipy.optimize
import scipy.sparse.linalg
from helpers import (
    backend_name,
    check_matmul_vjp,
    dtype_name,
    is_native,
    matmul_vjp,
    needs_algorithm,
    rmatmul,
    to_numpy,
)

import cuhouse as ch

ALGORITHMS = ("cwy", "fasth", "sequential", "dense", "auto")
EPS = {numpy.complex64: numpy.finfo(numpy.float32).eps, numpy.complex128: numpy.finfo(numpy.float64).eps}


def crandn(rng, *shape, dtype=numpy.complex128):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)


def reference(v):
    """complex128 H(v_1) ... H(v_n) from the definition, for ``v`` ``(..., n, d)``."""
    v = to_numpy(v).astype(numpy.complex128)
    d = v.shape[-1]
    h = numpy.broadcast_to(numpy.eye(d, dtype=complex), v.shape[:-2] + (d, d)).copy()
    for i in range(v.shape[-2]):
        vi = v[..., i, :]
        outer = vi[..., :, None] * vi.conj()[..., None, :]
        h = h @ (numpy.eye(d) - 2 * outer / (vi.conj() * vi).sum(-1).real[..., None, None])
    return h


def lapack_reference(a, tau):
    """complex128 H_1 ... H_k with H_i = I - tau_i v_i v_i^H from the geqrf layout ``a`` ``(M, N)``."""
    a = numpy.asarray(a, dtype=complex)
    m = a.shape[0]
    q = numpy.eye(m, dtype=complex)
    for i, t in enumerate(tau):
        v = numpy.zeros(m, dtype=complex)
        v[i] = 1
        v[i + 1 :] = a[i + 1 :, i]
        q = q @ (numpy.eye(m) - t * numpy.outer(v, v.conj()))
    return q


def on_backend(xp, matrix):
    """A HouseholderProduct, SVDMatrix or EighMatrix built from NumPy arrays, rebuilt from its params on ``xp``."""
    return type(matrix)(*(xp.asarray(numpy.asarray(p)) for p in matrix.params))


def assert_close(actual, expected, dtype, scale=50):
    expected = numpy.asarray(expected)
    tol = scale * EPS[numpy.dtype(dtype).type] * max(1.0, numpy.abs(expected).max()) * max(expected.shape or (1,))
    numpy.testing.assert_allclose(to_numpy(actual), expected, rtol=0, atol=tol)


# ------------------------------------------------------------------ products
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("dtype", [numpy.complex64, numpy.complex128])
def test_products_match_the_definition(any_xp, algorithm, dtype):
    needs_algorithm(any_xp, algorithm)
    rng = numpy.random.default_rng(0)
    v = crandn(rng, 2, 5, 9, dtype=dtype)
    x = crandn(rng, 2, 9, 4, dtype=dtype)
    xs = any_xp.asarray(x)
    h = ch.HouseholderProduct(any_xp.asarray(v), algorithm=algorithm, block_size=2)
    ref = reference(v)
    assert dtype_name(h) == numpy.dtype(dtype).name and h.shape == (2, 9, 9)
    assert_close(h @ xs, ref @ x, dtype)
    assert_close(rmatmul(any_xp.asarray(x.swapaxes(-1, -2)), h), x.swapaxes(-1, -2) @ ref, dtype)
    assert_close(h.H @ xs, ref.conj().swapaxes(-1, -2) @ x, dtype)
    assert_close(h.T @ xs, ref.swapaxes(-1, -2) @ x, dtype)
    assert_close(h.conj() @ xs, ref.conj() @ x, dtype)
    assert_close(h.inv() @ (h @ xs), x, dtype)
    assert_close(h @ any_xp.asarray(x[0, :, 0]), ref @ x[0, :, 0], dtype)  # a vector, broadcast over H's batch


@pytest.mark.parametrize("dtype", [numpy.complex64, numpy.complex128])
def test_unitary_to_50_eps_d(any_xp, dtype):
    rng = numpy.random.default_rng(1)
    d = 33
    h = ch.HouseholderProduct(any_xp.asarray(crandn(rng, 20, d, dtype=dtype)))
    dense = to_numpy(h.todense())
    assert dense.dtype == dtype
    error = numpy.abs(dense.conj().T @ dense - numpy.eye(d)).max()
    assert error <= 50 * EPS[numpy.dtype(dtype).type] * d


def test_real_and_complex_operands_promote_as_numpy_matmul(any_xp):
    rng = numpy.random.default_rng(2)
    real_v, complex_v = rng.standard_normal((3, 6)), crandn(rng, 3, 6, dtype=numpy.complex64)
    xc, xr = crandn(rng, 6, 2), rng.standard_normal((6, 2)).astype(numpy.float32)
    hr = ch.HouseholderProduct(any_xp.asarray(real_v))
    hc = ch.HouseholderProduct(any_xp.asarray(complex_v))
    assert dtype_name(hr @ any_xp.asarray(xc)) == "complex128"
    assert_close(hr @ any_xp.asarray(xc), reference(real_v) @ xc, numpy.complex128)
    assert_close(rmatmul(any_xp.asarray(xc.T), hr), xc.T @ reference(real_v), numpy.complex128)
    assert dtype_name(hc @ any_xp.asarray(xr)) == "complex64"
    assert dtype_name(hc @ any_xp.asarray(xr.astype(numpy.float64))) == "complex128"
    assert_close(hc @ any_xp.asarray(xr), reference(complex_v) @ xr, numpy.complex64)
    assert_close(rmatmul(any_xp.asarray(xr.T), hc), xr.T @ reference(complex_v), numpy.complex64)
    assert dtype_name(hc @ any_xp.asarray(numpy.ones((6, 2), dtype=int))) == "complex128"


def test_real_matrices_have_h_equal_to_t_and_conj_equal_to_self(any_xp):
    rng = numpy.random.default_rng(3)
    h = ch.HouseholderProduct(any_xp.asarray(rng.standard_normal((3, 5))))
    w = on_backend(any_xp, ch.SVDMatrix.random(5, 4, rng=rng))
    e = ch.EighMatrix(any_xp.asarray(rng.standard_normal((3, 5))), any_xp.asarray(rng.standard_normal(5)))
    p = w @ w.T
    for a in (h, w, e, p):
        numpy.testing.assert_array_equal(to_numpy(a.H.todense()), to_numpy(a.T.todense()))
        numpy.testing.assert_array_equal(to_numpy(a.conj().todense()), to_numpy(a.todense()))
    assert h.conj() is h and w.conj() is w and e.H is e


def test_transpose_adjoint_and_conjugate_on_every_type(any_xp):
    rng = numpy.random.default_rng(4)
    h = ch.HouseholderProduct(any_xp.asarray(crandn(rng, 3, 5)))
    w = on_backend(any_xp, ch.SVDMatrix.random(5, 4, rng=rng, dtype=numpy.complex128))
    e = ch.EighMatrix(any_xp.asarray(crandn(rng, 3, 5)), any_xp.asarray(rng.standard_normal(5)))
    p = w @ w.H @ h
    square = on_backend(any_xp, ch.SVDMatrix.random(5, 5, rng=rng, dtype=numpy.complex64))
    for a in (h, w, e, p, h.T, w.pinv(), square.inv(), e.expm()):
        dense, dtype = to_numpy(a.todense()), dtype_name(a)
        assert_close(a.H.todense(), dense.conj().T, dtype)
        assert_close(a.T.todense(), dense.T, dtype)
        assert_close(a.conj().todense(), dense.conj(), dtype)
        assert_close(a.conj().H.todense(), dense.T, dtype)
    assert isinstance(h.T, ch.HouseholderProduct) and isinstance(h.conj(), ch.HouseholderProduct)
    assert e.H is e  # Hermitian
    assert_close(h.H.todense(), to_numpy(h.inv().todense()), numpy.complex128)


def test_compose_conjugated_and_adjoint_views_with_real_products(any_xp):
    rng = numpy.random.default_rng(5)
    h1 = ch.HouseholderProduct(any_xp.asarray(crandn(rng, 3, 6)))
    h2 = ch.HouseholderProduct(any_xp.asarray(rng.standard_normal((2, 6))))
    h3 = ch.HouseholderProduct.from_dense(any_xp.asarray(numpy.linalg.qr(crandn(rng, 6, 6))[0]))
    composed = h1.conj() @ h2 @ h3.H @ h1.T
    assert isinstance(composed, ch.HouseholderProduct)
    d1, d2, d3 = (to_numpy(h.todense()) for h in (h1, h2, h3))
    expected = d1.conj() @ d2 @ d3.conj().T @ d1.T
    assert_close(composed.todense(), expected, numpy.complex128)
    assert_close(composed.det(), numpy.linalg.det(expected), numpy.complex128)
    assert composed.params[0] is h1.params[0] and len(composed.params) == 3


def test_det_and_slogdet_follow_numpy(any_xp):
    rng = numpy.random.default_rng(6)
    h = ch.HouseholderProduct(any_xp.asarray(crandn(rng, 2, 3, 5)))
    numpy.testing.assert_array_equal(to_numpy(h.det()), numpy.full(2, -1.0 + 0j))
    sign, logabs = h.slogdet()
    ref_sign, ref_log = numpy.linalg.slogdet(reference(h.vectors))
    assert dtype_name(sign) == "complex128" and dtype_name(logabs) == "float64"
    assert_close(sign, ref_sign, numpy.complex128)
    assert_close(logabs, ref_log, numpy.complex128)
    assert dtype_name(h.logdet()) == "float64"
    w = on_backend(any_xp, ch.SVDMatrix.random(5, 5, rng=rng, dtype=numpy.complex64))
    dense = to_numpy(w.todense()).astype(numpy.complex128)
    sign, logabs = w.slogdet()
    ref_sign, ref_log = numpy.linalg.slogdet(dense)
    assert dtype_name(sign) == "complex64" and dtype_name(logabs) == "float32"
    assert_close(sign, ref_sign, numpy.complex64)
    assert_close(logabs, ref_log, numpy.complex64)
    assert_close(w.det(), numpy.linalg.det(dense), numpy.complex64)


def test_pickle_and_vectors_of_views(any_xp):
    rng = numpy.random.default_rng(7)
    h = ch.HouseholderProduct(any_xp.asarray(crandn(rng, 3, 5)))
    for view in (h, h.H, h.conj(), h.T):
        copy = pickle.loads(pickle.dumps(view))
        assert copy.backend == view.backend
        assert_close(copy.todense(), to_numpy(view.todense()), numpy.complex128)
        assert_close(reference(view.vectors), to_numpy(view.todense()), numpy.complex128)


def test_refresh_after_an_in_place_update(any_xp):
    rng = numpy.random.default_rng(8)
    v = any_xp.asarray(crandn(rng, 3, 5))
    h = ch.HouseholderProduct(v)
    h.todense()
    v[1, :] *= 2j
    v[0, 2] += 1 - 1j
    assert_close(h.refresh().todense(), reference(v), numpy.complex128)


@pytest.mark.parametrize("refreshed", ["after the forward", "while the backward realifies"])
def test_a_gradient_in_flight_goes_back_through_the_realification_it_ran_on(monkeypatch, refreshed):
    """A unitary product's gradient maps the real rows' gradient back to the complex leaves with the
    units (p, q) of the realification its form was built from, though another thread updated the
    leaves in place and called ``refresh()`` after the forward (before: the new leaves' units, a wrong
    gradient) or again while the backward realified them afresh (before: no units, a TypeError)."""
    rng = numpy.random.default_rng(21)
    v, x, g = crandn(rng, 3, 6), crandn(rng, 6, 2), crandn(rng, 6, 2)
    (want,), want_dx = ch.vjp(ch.matmul, ch.HouseholderProduct(v.copy()), x)[1](g)
    h = ch.HouseholderProduct(v)
    out, back = ch.vjp(ch.matmul, h, x)
    v[...] = crandn(rng, 3, 6)  # another thread: an in-place update, then refresh()
    h.refresh()
    if refreshed == "while the backward realifies":
        realify = ch._reflections.ComplexReflections.paired_rows

        def realify_then_refresh(core):
            found = realify(core)
            monkeypatch.undo()
            h.refresh()
            return found

        monkeypatch.setattr(ch._reflections.ComplexReflections, "paired_rows", realify_then_refresh)
    (got,), dx = back(g)
    numpy.testing.assert_array_equal(got, want)
    numpy.testing.assert_array_equal(dx, want_dx)


# ------------------------------------------------------------------ LAPACK and from_dense
@pytest.mark.parametrize("shape", [(8, 5), (5, 5), (5, 8)])
@pytest.mark.parametrize("dtype", [numpy.complex64, numpy.complex128])
def test_from_lapack_matches_scipy_qr(any_xp, shape, dtype):
    rng = numpy.random.default_rng(9)
    a = crandn(rng, *shape, dtype=dtype)
    (qr, tau), _ = scipy.linalg.qr(a, mode="raw")
    q = scipy.linalg.qr(a)[0]  # ?ungqr's Q
    qr_xp = any_xp.asarray(qr)
    h = ch.HouseholderProduct.from_lapack(qr_xp, any_xp.asarray(tau))
    assert dtype_name(h) == numpy.dtype(dtype).name and h.params[0] is qr_xp
    assert_close(h.todense(), q, dtype)
    assert_close(h.todense(), lapack_reference(qr, tau), dtype)
    assert_close(h.det(), numpy.linalg.det(q.astype(complex)), dtype)
    x = crandn(rng, shape[0], 3, dtype=dtype)
    unmqr = scipy.linalg.lapack.get_lapack_funcs("unmqr", dtype=dtype)
    reflectors = qr[:, : len(tau)]
    expected, _, info = unmqr("L", "N", reflectors, tau, x, max(1, 3 * 64))
    assert info == 0
    assert_close(h @ any_xp.asarray(x), expected, dtype)
    expected_h, _, _ = unmqr("L", "C", reflectors, tau, x, max(1, 3 * 64))
    assert_close(h.H @ any_xp.asarray(x), expected_h, dtype)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_from_lapack_batched_with_identity_factors(any_xp, algorithm):
    needs_algorithm(any_xp, algorithm)
    rng = numpy.random.default_rng(10)
    a = crandn(rng, 2, 7, 4)
    qr = numpy.empty_like(a)
    tau = numpy.empty((2, 4), dtype=complex)
    for b in range(2):
        (qr_b, tau_b), _ = scipy.linalg.qr(a[b], mode="raw")
        qr[b], tau[b] = qr_b, tau_b
    tau[1, 2] = 0  # an identity factor
    h = ch.HouseholderProduct.from_lapack(any_xp.asarray(qr), any_xp.asarray(tau), algorithm=algorithm, block_size=2)
    expected = numpy.stack([lapack_reference(qr[b], tau[b]) for b in range(2)])
    assert_close(h.todense(), expected, numpy.complex128)
    assert_close(h.det(), numpy.linalg.det(expected), numpy.complex128)


def test_from_lapack_takes_torch_geqrf():
    """torch.geqrf's complex output, on the NumPy backend (converted) and on the torch backend (as it is)."""
    torch = pytest.importorskip("torch")
    rng = numpy.random.default_rng(11)
    a = crandn(rng, 6, 4)
    qr, tau = torch.geqrf(torch.from_numpy(a))
    q = torch.linalg.householder_product(qr, tau).numpy()
    h = ch.HouseholderProduct.from_lapack(qr.numpy(), tau.numpy())
    assert_close(h.todense()[:, :4], q, numpy.complex128)
    h = ch.HouseholderProduct.from_lapack(qr, tau)
    assert isinstance(h.todense(), torch.Tensor)
    assert_close(h.todense()[:, :4], q, numpy.complex128)


def test_real_lapack_keeps_tau_implied_by_a(any_xp):
    rng = numpy.random.default_rng(12)
    (qr, tau), _ = scipy.linalg.qr(rng.standard_normal((6, 4)), mode="raw")
    qr_xp = any_xp.asarray(qr)
    h = ch.HouseholderProduct.from_lapack(qr_xp, any_xp.asarray(tau))
    assert dtype_name(h) == "float64" and len(h.params) == 1 and h.params[0] is qr_xp
    with pytest.raises(ValueError, match="tau must be 0 or 2 / \\(v\\^T v\\)"):
        ch.HouseholderProduct.from_lapack(qr_xp, any_xp.asarray(tau * 0.9))


@pytest.mark.parametrize("dtype", [numpy.complex64, numpy.complex128])
def test_from_dense_of_a_unitary_matrix(any_xp, dtype):
    rng = numpy.random.default_rng(13)
    q = numpy.linalg.qr(crandn(rng, 3, 7, 7))[0].astype(dtype)
    h = ch.HouseholderProduct.from_dense(any_xp.asarray(q))
    assert dtype_name(h) == numpy.dtype(dtype).name and h.n_reflections <= 7
    assert_close(h.todense(), q, dtype)
    assert_close(h.det(), numpy.linalg.det(q.astype(complex)), dtype)
    tall = q[..., :3]
    assert_close(to_numpy(ch.HouseholderProduct.from_dense(any_xp.asarray(tall)).todense())[..., :3], tall, dtype)
    eye = ch.HouseholderProduct.from_dense(any_xp.asarray(numpy.eye(4, dtype=dtype)))
    assert_close(eye.todense(), numpy.eye(4), dtype)


# ------------------------------------------------------------------ SVD and eigen
def test_svd_matrix_operations_match_dense(any_xp):
    rng = numpy.random.default_rng(14)
    u, s, v = crandn(rng, 4, 5), rng.uniform(0.5, 2, 4), crandn(rng, 4, 4)
    w = ch.SVDMatrix(any_xp.asarray(u), any_xp.asarray(s), any_xp.asarray(v))
    u, v = reference(u), reference(v)
    dense = u[:, :4] @ numpy.diag(s) @ v[:, :4].conj().T
    assert dtype_name(w) == "complex128" and w.shape == (5, 4)
    assert_close(w.todense(), dense, numpy.complex128)
    x = crandn(rng, 4, 3)
    assert_close(w @ any_xp.asarray(x), dense @ x, numpy.complex128)
    assert_close(rmatmul(any_xp.asarray(x.T), w.H), x.T @ dense.conj().T, numpy.complex128)
    assert_close(w.pinv().todense(), numpy.linalg.pinv(dense), numpy.complex128)
    assert_close(
        w.clip(0.8, 1.5).todense(), u[:, :4] @ numpy.diag(numpy.clip(s, 0.8, 1.5)) @ v.conj().T, numpy.complex128
    )
    for ord in (2, "fro", "nuc"):
        assert_close(w.norm(ord), numpy.linalg.norm(dense, ord), numpy.complex128)
    assert_close(w.cond(), numpy.linalg.cond(dense), numpy.complex128)
    square = on_backend(any_xp, ch.SVDMatrix.random(5, 5, rng=rng, dtype=numpy.complex128))
    sq = to_numpy(square.todense())
    b = crandn(rng, 5, 2)
    assert_close(square.inv().todense(), numpy.linalg.inv(sq), numpy.complex128)
    assert_close(square.solve(any_xp.asarray(b)), numpy.linalg.solve(sq, b), numpy.complex128)
    assert_close(square.logdet(), numpy.linalg.slogdet(sq)[1], numpy.complex128)


def test_svd_from_dense_of_a_complex_matrix(any_xp):
    rng = numpy.random.default_rng(15)
    a = crandn(rng, 6, 4)
    w = ch.SVDMatrix.from_dense(any_xp.asarray(a))
    assert dtype_name(w.s) == "float64"
    assert_close(w.todense(), a, numpy.complex128)
    best = ch.SVDMatrix.from_dense(any_xp.asarray(a), rank=2).todense()
    u, s, vh = numpy.linalg.svd(a, full_matrices=False)
    assert_close(best, u[:, :2] * s[:2] @ vh[:2], numpy.complex128)


def test_eigh_matrix_functions_match_scipy(any_xp):
    rng = numpy.random.default_rng(16)
    b = crandn(rng, 5, 5)
    a = b @ b.conj().T + numpy.eye(5)  # Hermitian positive definite
    e = ch.EighMatrix.from_dense(any_xp.asarray(a))
    assert dtype_name(e) == "complex128" and dtype_name(e.w) == "float64"
    assert_close(e.todense(), a, numpy.complex128)
    scaled = ch.EighMatrix(e.U, e.w / 10)
    assert_close(scaled.expm().todense(), scipy.linalg.expm(a / 10), numpy.complex128)
    assert_close(e.sqrtm().todense(), scipy.linalg.sqrtm(a), numpy.complex128)
    assert_close(e.logm().todense(), scipy.linalg.logm(a), numpy.complex128)
    assert_close(e.power(0.3).todense(), scipy.linalg.fractional_matrix_power(a, 0.3), numpy.complex128)
    assert_close(e.inv().todense(), numpy.linalg.inv(a), numpy.complex128)
    assert_close(
        e.cayley().todense(), (numpy.eye(5) - a) @ numpy.linalg.inv(numpy.eye(5) + a), numpy.complex128, scale=500
    )
    assert_close(e.logdet(), numpy.linalg.slogdet(a)[1], numpy.complex128)


# ------------------------------------------------------------------ gradients
def _direction(rng, like):
    return crandn(rng, *like.shape) if numpy.iscomplexobj(like) else rng.standard_normal(like.shape)


def _dot_test(xp, make, params, x, side, rng, masks=None):
    """The dot test (:func:`helpers.check_vjp`) along complex directions, torch's convention: for every
    parameter and X at once; gradients in their leaf's (float) dtype. ``params``, ``x`` and ``masks``
    are NumPy arrays, moved to ``xp`` here."""
    params, x = [xp.asarray(p) for p in params], xp.asarray(x)
    a = make(*params)
    out, grads = matmul_vjp(a, x, side)
    *dparams, dx = grads(xp.asarray(_direction(rng, to_numpy(out))))
    assert [dtype_name(g) for g in dparams] == [numpy.result_type(dtype_name(p), numpy.float32).name for p in params]
    assert dtype_name(dx) == dtype_name(x)
    masks = None if masks is None else (*(xp.asarray(m) for m in masks), None)
    check_matmul_vjp(make, params, x, side, xp, seed=int(rng.integers(2**31)), masks=masks)


@pytest.mark.parametrize("algorithm", ("cwy", "fasth", "sequential", "dense"))
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("kinds", ["cc", "cr", "rc"])  # (vectors, X): complex or real
def test_householder_adjoint_dot_test(any_xp, algorithm, side, kinds):
    needs_algorithm(any_xp, algorithm)
    rng = numpy.random.default_rng(17)
    v = crandn(rng, 2, 4, 7) if kinds[0] == "c" else rng.standard_normal((2, 4, 7))
    shape = (7, 3) if side == "left" else (3, 7)
    x = crandn(rng, *shape) if kinds[1] == "c" else rng.standard_normal(shape)
    _dot_test(any_xp, lambda v: ch.HouseholderProduct(v, algorithm=algorithm, block_size=3), [v], x, side, rng)


@pytest.mark.parametrize("view", ["T", "H", "conj", "compose"])
def test_views_adjoint_dot_test(any_xp, view):
    rng = numpy.random.default_rng(18)
    makers = {
        "T": lambda v: ch.HouseholderProduct(v).T,
        "H": lambda v: ch.HouseholderProduct(v).H,
        "conj": lambda v: ch.HouseholderProduct(v).conj(),
        "compose": lambda v, w: ch.HouseholderProduct(v, block_size=2) @ ch.HouseholderProduct(w).conj().T,
    }
    params = [crandn(rng, 4, 6), rng.standard_normal((3, 6))][: 2 if view == "compose" else 1]
    for side, x in (("left", crandn(rng, 6, 2)), ("right", crandn(rng, 2, 6))):
        _dot_test(any_xp, makers[view], params, x, side, rng)


@pytest.mark.parametrize("algorithm", ("cwy", "fasth", "sequential", "dense"))
def test_from_lapack_adjoint_dot_test_holds_the_eigenvalues_fixed(any_xp, algorithm):
    needs_algorithm(any_xp, algorithm)
    rng = numpy.random.default_rng(19)
    (qr, tau), _ = scipy.linalg.qr(crandn(rng, 7, 4), mode="raw")
    eigenvalues = any_xp.asarray(1 - tau * (1 + (numpy.abs(numpy.tril(qr, -1)) ** 2).sum(0)))
    below = any_xp.asarray(numpy.tril(numpy.ones(qr.shape), -1))

    def make(a):
        implied = (1 - eigenvalues) / (1 + any_xp.sum(any_xp.abs(a * below) ** 2, axis=0))
        return ch.HouseholderProduct.from_lapack(a, implied, algorithm=algorithm, block_size=2)

    for side, x in (("left", crandn(rng, 7, 2)), ("right", crandn(rng, 2, 7))):
        _dot_test(any_xp, make, [qr], x, side, rng, masks=[numpy.tril(numpy.ones(qr.shape), -1)])
    _, back = ch.vjp(ch.matmul, make(any_xp.asarray(qr)), any_xp.asarray(crandn(rng, 7, 2)))
    (grad,), _ = back(any_xp.asarray(crandn(rng, 7, 2)))
    assert numpy.all(numpy.triu(to_numpy(grad)) == 0)


def test_spectral_adjoint_dot_tests(any_xp):
    rng = numpy.random.default_rng(20)
    svd = lambda u, s, v: ch.SVDMatrix(u, s, v)  # noqa: E731
    params = [crandn(rng, 3, 6), rng.uniform(1, 2, 3), crandn(rng, 3, 5)]
    _dot_test(any_xp, svd, params, crandn(rng, 5, 2), "left", rng)
    _dot_test(any_xp, svd, params, rng.standard_normal((2, 6)), "right", rng)
    derived = lambda u, s, v: ch.SVDMatrix(u, s, v).inv().T.conj()  # noqa: E731
    square = [crandn(rng, 5, 5), rng.uniform(1, 2, 5), crandn(rng, 5, 5)]
    _dot_test(any_xp, derived, square, crandn(rng, 5, 2), "left", rng)
    eigh = lambda u, w: ch.EighMatrix(u, w).expm().H  # noqa: E731
    _dot_test(any_xp, eigh, [crandn(rng, 5, 5), rng.uniform(-1, 1, 5)], crandn(rng, 5, 2), "left", rng)


def test_logdet_gradient_of_a_complex_svd(any_xp):
    rng = numpy.random.default_rng(21)
    u, s, v = crandn(rng, 4, 4), rng.uniform(1, 2, 4), crandn(rng, 4, 4)
    value, back = ch.vjp(ch.logdet, ch.SVDMatrix(*(any_xp.asarray(a) for a in (u, s, v))))
    ((du, ds, dv),) = back(any_xp.asarray(numpy.ones(())))
    assert dtype_name(value) == "float64"
    numpy.testing.assert_allclose(to_numpy(ds), 1 / s)
    assert not to_numpy(du).any() and not to_numpy(dv).any() and dtype_name(du) == "complex128"


def test_gradients_match_torch_autograd_on_the_dense_formula(any_xp):
    """cuhouse's vjp on every backend against torch autograd through the dense definitions."""
    torch = pytest.importorskip("torch")
    rng = numpy.random.default_rng(22)
    v, x, g = crandn(rng, 4, 6), crandn(rng, 6, 3), crandn(rng, 6, 3)
    (dv,), dx = ch.vjp(ch.matmul, ch.HouseholderProduct(any_xp.asarray(v)), any_xp.asarray(x))[1](any_xp.asarray(g))
    tv = torch.tensor(v, requires_grad=True)
    tx = torch.tensor(x, requires_grad=True)
    h = torch.eye(6, dtype=torch.complex128)
    for i in range(4):
        vi = tv[i]
        h = h @ (torch.eye(6, dtype=torch.complex128) - 2 * torch.outer(vi, vi.conj()) / (vi.conj() @ vi))
    loss = torch.real(torch.sum(torch.conj(torch.tensor(g)) * (h @ tx)))
    loss.backward()
    numpy.testing.assert_allclose(to_numpy(dv), tv.grad.numpy(), atol=1e-12)
    numpy.testing.assert_allclose(to_numpy(dx), tx.grad.numpy(), atol=1e-12)
    # LAPACK's generalized reflectors against torch.linalg.householder_product, tau implied by a
    # with each factor's eigenvalue 1 - tau v^H v held fixed
    a, x, g = crandn(rng, 6, 6), crandn(rng, 6, 2), crandn(rng, 6, 2)
    qr, tau = torch.geqrf(torch.from_numpy(a))
    h = ch.HouseholderProduct.from_lapack(any_xp.asarray(qr.numpy()), any_xp.asarray(tau.numpy()))
    (da,), _ = ch.vjp(ch.matmul, h, any_xp.asarray(x))[1](any_xp.asarray(g))
    eigenvalue = 1 - tau * (1 + (qr.tril(-1).abs() ** 2).sum(0))
    tqr = qr.clone().requires_grad_(True)
    implied = (1 - eigenvalue) / (1 + (tqr.tril(-1).abs() ** 2).sum(0))
    q = torch.linalg.householder_product(tqr, implied)
    torch.real(torch.sum(torch.conj(torch.from_numpy(g)) * (q @ torch.from_numpy(x)))).backward()
    numpy.testing.assert_allclose(to_numpy(da), numpy.tril(tqr.grad.numpy(), -1), atol=1e-11)


# ------------------------------------------------------------------ SciPy's operator interface
# NumPy only: SciPy's LinearOperator computes with NumPy arrays.
def test_scipy_linear_operator_lines_on_a_real_operator():
    rng = numpy.random.default_rng(23)
    h = ch.HouseholderProduct(rng.standard_normal((3, 6)))
    w = ch.SVDMatrix.random(6, 6, rng=rng)
    for a in (h, w, h @ w):
        op = scipy.sparse.linalg.aslinearoperator(a)
        dense = a.todense()
        x = crandn(rng, 6, 2)
        assert_close((2j * op).rmatmat(2j * x), (2j * dense).conj().T @ (2j * x), numpy.complex128)
        b = crandn(rng, 6)
        tolerance = "rtol" if "rtol" in inspect.signature(scipy.sparse.linalg.gmres).parameters else "tol"
        solution, info = scipy.sparse.linalg.gmres(op, b, **{tolerance: 1e-12}, atol=0)
        assert info == 0
        assert_close(a @ solution, b, numpy.complex128, scale=1e4)
        if "traceA" not in inspect.signature(scipy.sparse.linalg.expm_multiply).parameters:
            continue  # SciPy < 1.9 takes the trace of A itself, which a LinearOperator does not have
        assert_close(
            scipy.sparse.linalg.expm_multiply(op, x, traceA=numpy.trace(dense)),
            scipy.linalg.expm(dense) @ x,
            numpy.complex128,
            scale=1e3,
        )


def test_rmatvec_is_the_true_adjoint_of_a_complex_operator():
    rng = numpy.random.default_rng(24)
    for a in (ch.HouseholderProduct(crandn(rng, 3, 5)), ch.SVDMatrix.random(5, 4, rng=rng, dtype=numpy.complex64)):
        op = scipy.sparse.linalg.aslinearoperator(a)
        x, y = crandn(rng, a.shape[1]), crandn(rng, a.shape[0])
        lhs = numpy.vdot(y, op.matvec(x))
        rhs = numpy.vdot(op.rmatvec(y), x)
        assert abs(lhs - rhs) <= 1e-5 * abs(lhs)
        assert_close(op.H.matvec(y), a.todense().conj().T @ y, a.dtype)


# ------------------------------------------------------------------ bad input
def test_complex_singular_values_are_a_type_error(any_xp):
    rng = numpy.random.default_rng(25)
    u, v = any_xp.asarray(crandn(rng, 2, 3)), any_xp.asarray(crandn(rng, 2, 3))
    with pytest.raises(TypeError, match="s must be real .*got dtype \\S*complex128"):
        ch.SVDMatrix(u, any_xp.asarray(numpy.ones(2, dtype=complex)), v)
    with pytest.raises(TypeError, match="w must be real .*eigenvalues.*got dtype \\S*complex64"):
        ch.EighMatrix(u, any_xp.asarray(numpy.ones(3, dtype=numpy.complex64)))


def test_non_unitary_q_is_a_value_error(any_xp):
    rng = numpy.random.default_rng(26)
    with pytest.raises(ValueError, match=r"Q must be unitary to within 50 eps d = .* \(max \|Q\^H Q - I\|\), got"):
        ch.HouseholderProduct.from_dense(any_xp.asarray(crandn(rng, 4, 4)))
    with pytest.raises(ValueError, match=r"Q must be orthonormal columns .*Q\^H Q"):
        ch.HouseholderProduct.from_dense(any_xp.asarray(crandn(rng, 4, 2)))


def test_tau_that_makes_no_unitary_factor_is_a_value_error(any_xp):
    rng = numpy.random.default_rng(27)
    (qr, tau), _ = scipy.linalg.qr(crandn(rng, 5, 3), mode="raw")
    with pytest.raises(
        ValueError, match=r"tau must make unitary factors I - tau v v\^H, that is \|1 - tau v\^H v\| = 1"
    ):
        ch.HouseholderProduct.from_lapack(any_xp.asarray(qr), any_xp.asarray(tau * 1.1))


def test_non_hermitian_matrix_in_eigh_from_dense_is_a_value_error(any_xp):
    rng = numpy.random.default_rng(28)
    a = crandn(rng, 4, 4)
    with pytest.raises(ValueError, match=r"A must be Hermitian, but max \|A - A\^H\|"):
        ch.EighMatrix.from_dense(any_xp.asarray(a + a.T))  # complex symmetric is not Hermitian


@pytest.mark.parametrize("dtype", [numpy.float16, numpy.clongdouble])
def test_unsupported_dtypes_stay_a_type_error(any_xp, dtype):
    if not is_native(any_xp) and (dtype is numpy.clongdouble or backend_name(any_xp) != "torch"):
        pytest.skip("{} has no {} arrays".format(backend_name(any_xp), numpy.dtype(dtype).name))
    rng = numpy.random.default_rng(29)
    h = ch.HouseholderProduct(any_xp.asarray(crandn(rng, 2, 4)))
    with pytest.raises(
        TypeError,
        match="X has dtype {}; supported dtypes are float32, float64, complex64 and complex128".format(
            numpy.dtype(dtype)
        ),
    ):
        h @ any_xp.asarray(numpy.ones((4, 2), dtype=dtype))
    with pytest.raises(TypeError, match="vectors has dtype {}".format(numpy.dtype(dtype))):
        ch.HouseholderProduct(any_xp.asarray(numpy.ones((2, 4), dtype=dtype)))


def test_flatten_params_gives_real_optimizers_real_entries():  # NumPy only: SciPy's optimizer drives it
    """Complex parameters flatten to interleaved real and imaginary parts, and their gradients (torch's
    convention) flatten to the gradient w.r.t. those real entries: scipy.optimize drives a complex SVD."""
    rng = numpy.random.default_rng(30)
    u, s, v = crandn(rng, 3, 4), rng.uniform(1, 2, 3), crandn(rng, 3, 4)
    flat = ch.flatten_params((u, s, v))
    assert flat.dtype == numpy.float64 and flat.shape == (2 * 12 + 3 + 2 * 12,)
    back = ch.unflatten_params(flat, like=(u, s, v))
    for a, b in zip(back, (u, s, v)):
        assert a.dtype == b.dtype
        numpy.testing.assert_array_equal(a, b)
    x, target = crandn(rng, 4, 2), crandn(rng, 4, 2)

    def fun(entries):
        w = ch.SVDMatrix(*ch.unflatten_params(entries, like=(u, s, v)))
        out, vjp_fn = ch.vjp(ch.matmul, w, x)
        residual = out - target
        grads, _ = vjp_fn(residual)  # L = |out - target|^2 / 2: the cotangent is the residual
        return 0.5 * numpy.sum(numpy.abs(residual) ** 2), ch.flatten_params(grads)

    numeric = scipy.optimize.approx_fprime(flat, lambda e: fun(e)[0], 1e-7)
    numpy.testing.assert_allclose(fun(flat)[1], numeric, atol=1e-5)


@pytest.mark.parametrize("algorithm", ["cwy", "sequential"])
def test_raw_kernels_serve_unitary_products_on_real_rows(xp, algorithm, monkeypatch):
    """The raw GPU kernels stay real-only: a complex product reaches them with the realified (real)
    rows and matches the definition, forward and backward. Runs on CuPy (and its CPU stand-in)."""
    if xp is numpy:
        pytest.skip("the raw kernels run on CuPy arrays only")
    from cuhouse._gpu import raw_kernels

    seen = []
    for name in ("row_norms", "normalize_rows", "upper_triangular_inverse", "cwy_gradient_coefficients"):
        original = getattr(raw_kernels, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            seen.append((_name, args[0].dtype))
            return _original(*args, **kwargs)

        monkeypatch.setattr(raw_kernels, name, spy)
    rng = numpy.random.default_rng(31)
    v, x, g = crandn(rng, 6, 9), crandn(rng, 9, 3), crandn(rng, 9, 3)
    h = ch.HouseholderProduct(xp.asarray(v), algorithm=algorithm, block_size=4)
    out, back = ch.vjp(ch.matmul, h, xp.asarray(x))
    assert_close(out, reference(v) @ x, numpy.complex128)
    (dv,), dx = back(xp.asarray(g))
    (expected_dv,), expected_dx = ch.vjp(ch.matmul, ch.HouseholderProduct(v, algorithm=algorithm, block_size=4), x)[1](
        g
    )
    assert_close(dv, expected_dv, numpy.complex128)
    assert_close(dx, expected_dx, numpy.complex128)
    assert seen and all(dtype == numpy.float64 for _, dtype in seen)


# ------------------------------------------------------------------ generic path (torch, array_api_strict)
def test_batched_composed_products(generic_xp):
    rng = numpy.random.default_rng(2)
    v, w, x = crandn(rng, 2, 3, 6), crandn(rng, 2, 6), crandn(rng, 6, 2)
    h = ch.HouseholderProduct(generic_xp.asarray(v)) @ ch.HouseholderProduct(generic_xp.asarray(w)).H
    expected = numpy.stack([reference(b) @ reference(w).conj().T @ x for b in v])
    assert_close(ch.matmul(h, generic_xp.asarray(x)), expected, numpy.complex128)


def test_gradients_match_numpy_vjp(generic_xp):
    rng = numpy.random.default_rng(6)
    u, v, x, g = crandn(rng, 4, 4), crandn(rng, 2, 4), crandn(rng, 4, 3), crandn(rng, 4, 3)
    s = rng.uniform(0.5, 1.5, 4)
    makers = {
        "householder": lambda lib: ch.HouseholderProduct(lib(v)),
        "adjoint": lambda lib: ch.HouseholderProduct(lib(v)).H,
        "svd": lambda lib: ch.SVDMatrix(lib(u), lib(s), lib(u[::-1].copy())),
        "eigh": lambda lib: ch.EighMatrix(lib(u), lib(s)),
    }
    for name, make in makers.items():
        _, back = ch.vjp(ch.matmul, make(generic_xp.asarray), generic_xp.asarray(x))
        _, want_back = ch.vjp(ch.matmul, make(numpy.asarray), x)
        (got, got_x), (want, want_x) = back(generic_xp.asarray(g)), want_back(g)
        assert_close(got_x, want_x, numpy.complex128)
        assert len(got) == len(want), name
        for a, b in zip(got, want):
            assert_close(a, b, numpy.complex128)
        (got,) = ch.vjp(ch.logdet, make(generic_xp.asarray))[1](generic_xp.asarray(1.0, dtype="float64"))
        (want,) = ch.vjp(ch.logdet, make(numpy.asarray))[1](numpy.ones(()))
        for a, b in zip(got, want):
            assert_close(a, b, numpy.complex128)


# ------------------------------------------------------------------ cuhouse.torch
def test_torch_autograd_gradcheck_and_gradgradcheck():
    torch = pytest.importorskip("torch")
    rng = numpy.random.default_rng(7)

    def leaf(a):
        return torch.tensor(a, requires_grad=True)

    v, u, x, s = leaf(crandn(rng, 3, 4)), leaf(crandn(rng, 4, 4)), leaf(crandn(rng, 4, 2)), leaf(rng.uniform(0.5, 1, 4))
    a0, tau0 = torch.geqrf(torch.tensor(crandn(rng, 4, 3)))
    below = torch.tril(torch.ones(4, 3, dtype=torch.float64), -1)
    eigenvalues = 1 - tau0 * (1 + (a0.abs() ** 2 * below).sum(0))

    def lapack(a, x):  # tau implied by a with the eigenvalues held fixed, as cuhouse's gradient does
        return ch.HouseholderProduct.from_lapack(a, (1 - eigenvalues) / (1 + (a.abs() ** 2 * below).sum(0))) @ x

    cases = {
        "H @ X": (lambda v, x: ch.HouseholderProduct(v) @ x, (v, x)),
        "X^T @ H.H": (lambda v, x: x.mT @ ch.HouseholderProduct(v).H, (v, x)),
        "composed": (lambda v, u, x: (ch.HouseholderProduct(v) @ ch.HouseholderProduct(u).T) @ x, (v, u, x)),
        "svd": (lambda u, s, v, x: ch.SVDMatrix(u, s, v) @ x, (u, s, v, x)),
        "svd logdet": (lambda u, s: ch.SVDMatrix(u, s, u).logdet(), (u, s)),
        "eigh": (lambda u, s, x: ch.EighMatrix(u, s) @ x, (u, s, x)),
        "from_lapack": (lapack, (a0.clone().requires_grad_(True), x)),
    }
    for name, (function, args) in cases.items():
        assert torch.autograd.gradcheck(function, args, fast_mode=True), name
        if name in ("H @ X", "from_lapack"):  # the others' double backward runs the same adjoints
            assert torch.autograd.gradgradcheck(function, args), name


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")  # torch's vmap of conj
def test_torch_vmap_of_complex_products():
    torch = pytest.importorskip("torch")
    rng = numpy.random.default_rng(8)
    vb, x = torch.tensor(crandn(rng, 3, 2, 5)), torch.tensor(crandn(rng, 5, 2))

    def apply(v):
        return ch.HouseholderProduct(v, check_finite=False) @ x

    batched = torch.func.vmap(apply)(vb)
    assert_close(batched, torch.stack([apply(v) for v in vb]), numpy.complex128)


def test_torch_a_reused_product_differentiates_again_and_after_refresh():
    """The realified rows are cached without a graph: a second backward through the same product works,
    and after an in-place update and ``refresh`` the product and gradient follow the new vectors."""
    torch = pytest.importorskip("torch")
    rng = numpy.random.default_rng(9)
    v, x = torch.tensor(crandn(rng, 3, 5), requires_grad=True), torch.tensor(crandn(rng, 5, 2))
    h = ch.HouseholderProduct(v)
    grads = []
    for _ in range(2):
        (h @ x).abs().sum().backward()
        grads.append(v.grad.clone())
        v.grad = None
    assert_close(grads[1], grads[0], numpy.complex128)
    with torch.no_grad():
        v.add_(0.25)
    out = h.refresh() @ x
    out.abs().sum().backward()
    assert_close(out.detach(), reference(v.detach().numpy()) @ x.numpy(), numpy.complex128)
    fresh = v.detach().clone().requires_grad_(True)
    (ch.HouseholderProduct(fresh) @ x).abs().sum().backward()
    assert_close(v.grad, fresh.grad, numpy.complex128)


def test_torch_householder_matmul_takes_complex_tensors():
    """Complex vectors and/or X in cuhouse.torch: the core's product and gradients (torch's convention is
    cuhouse's), ``transpose=True`` the adjoint, gradcheck and gradgradcheck, vmap."""
    torch = pytest.importorskip("torch")
    import cuhouse.torch as cht

    gen = torch.Generator().manual_seed(0)

    def randn(*shape, dtype=torch.complex128):
        return torch.randn(*shape, dtype=dtype, generator=gen)

    v, x, g = randn(2, 3, 6), randn(6, 2), randn(2, 6, 2)
    h = ch.HouseholderProduct(v.numpy())
    vl, xl = v.clone().requires_grad_(), x.clone().requires_grad_()
    out = cht.householder_matmul(vl, xl)
    assert_close(out.detach().numpy(), h @ x.numpy(), numpy.complex128)
    assert_close(cht.householder_matmul(v, x, transpose=True).numpy(), h.H @ x.numpy(), numpy.complex128)
    out.backward(g)
    (dv,), dx = ch.vjp(ch.matmul, h, x.numpy())[1](g.numpy())
    assert_close(vl.grad.numpy(), dv, numpy.complex128)
    assert_close(xl.grad.numpy(), dx, numpy.complex128)
    real_v, real_x = randn(3, 6, dtype=torch.float64), randn(6, 2, dtype=torch.float64)
    for a, b in ((v[0], x), (v[0], real_x), (real_v, x)):
        args = (a.clone().requires_grad_(), b.clone().requires_grad_())
        assert torch.autograd.gradcheck(cht.householder_matmul, args)
    assert torch.autograd.gradgradcheck(
        cht.householder_matmul, (v[0].clone().requires_grad_(), x.clone().requires_grad_())
    )
    batched = torch.func.vmap(lambda w: cht.householder_matmul(w, x))(v)
    assert_close(batched.numpy(), h @ x.numpy(), numpy.complex128)


@pytest.mark.parametrize("shape", [(4, 4), (3, 5), (5, 3)])
def test_torch_orthogonal_on_a_complex_linear_is_unitary(shape):
    torch = pytest.importorskip("torch")
    import cuhouse.torch as cht

    torch.manual_seed(0)
    layer = cht.orthogonal(torch.nn.Linear(shape[1], shape[0], dtype=torch.complex128))
    k = min(shape)

    def gram(w):
        return w.conj().T @ w if shape[0] >= shape[1] else w @ w.conj().T

    assert layer.weight.dtype == torch.complex128
    assert_close(gram(layer.weight).detach().numpy(), numpy.eye(k), numpy.complex128)
    tall = torch.linalg.qr(torch.randn(max(shape), k, dtype=torch.complex128))[0]
    unitary = tall if shape[0] >= shape[1] else tall.mT
    layer.weight = unitary  # an orthonormal weight is kept as it is
    assert_close(layer.weight.detach().numpy(), unitary.numpy(), numpy.complex128)
    loss = layer(torch.randn(7, shape[1], dtype=torch.complex128)).abs().pow(2).sum()
    loss.backward()
    torch.optim.SGD(layer.parameters(), lr=0.1).step()
    assert_close(gram(layer.weight).detach().numpy(), numpy.eye(k), numpy.complex128)
