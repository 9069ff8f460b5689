"""The operator protocol (issue 9): SciPy interop, pickling, the closed algebra of
products, ``from_dense``, read-only views, refused operands, singular spectra,
memory checks, and validation once per call."""

import copy
import inspect
import pickle

import numpy
import pytest
import scipy.linalg
import scipy.sparse
import scipy.sparse.linalg as sla
from helpers import (
    assert_allclose,
    backend_name,
    check_matmul_vjp,
    dense_of,
    dtype_name,
    on,
    random_eigh,
    random_householder,
    random_lapack,
    random_svd,
    rmatmul,
    to_numpy,
)

import cuhouse as ch
from cuhouse import _validate

RNG = numpy.random.default_rng(1234)


def _householder(d, n=None, seed=0, dtype=numpy.float64, batch=(), xp=numpy):
    return random_householder(numpy.random.default_rng(seed), d, n, batch, dtype, xp=xp)


def _svd(d_out, d_in, seed=0, low=1.0, high=2.0, xp=numpy):
    return random_svd(numpy.random.default_rng(seed), d_out, d_in, low=low, high=high, xp=xp)


def _eigh(d, seed=0, low=0.5, high=2.0, xp=numpy):
    return random_eigh(numpy.random.default_rng(seed), d, low, high, xp=xp)


def _matrices(d=6, xp=numpy):
    """Every kind of cuhouse matrix, square d x d, derived ones and products included, on ``xp``."""
    H, H2 = _householder(d, xp=xp), _householder(d, 4, seed=5, xp=xp)
    W, E = _svd(d, d, seed=7, xp=xp), _eigh(d, seed=9, xp=xp)
    return {
        "H": H,
        "H1 @ H2.T": H @ H2.T,
        "from_lapack": random_lapack(numpy.random.default_rng(0), d, xp=xp),
        "W": W,
        "W.inv()": W.inv(),
        "W.pinv().T": W.pinv().T,
        "E": E,
        "E.expm()": E.expm(),
        "E.cayley().inv()": E.cayley().inv(),
        "W @ W": W @ W,
        "W @ H": W @ H,
        "H @ W": H @ W,
        "E @ W": E @ W,
        "W.inv() @ E.expm() @ H2": W.inv() @ E.expm() @ H2,
    }


MATRICES = _matrices()


@pytest.fixture(params=list(MATRICES), ids=list(MATRICES))
def matrix(request):
    """Every kind of matrix on NumPy (SciPy's LinearOperator takes NumPy arrays)."""
    return MATRICES[request.param]


@pytest.fixture(params=list(MATRICES), ids=list(MATRICES))
def any_matrix(request, any_xp):
    """Every kind of matrix on every backend, and the backend."""
    return _matrices(xp=any_xp)[request.param], any_xp


def test_every_matrix_is_an_operator(any_matrix):
    assert isinstance(any_matrix[0], ch.Operator)


# ------------------------------------------------------------------ SciPy (NumPy only)


def test_aslinearoperator_methods_match_dense(matrix):
    op = sla.aslinearoperator(matrix)
    dense = dense_of(matrix)
    x = RNG.standard_normal(6)
    xs = RNG.standard_normal((6, 3))
    numpy.testing.assert_allclose(op.matvec(x), dense @ x, atol=1e-12)
    numpy.testing.assert_allclose(op.matvec(x[:, None]), (dense @ x)[:, None], atol=1e-12)
    numpy.testing.assert_allclose(op.rmatvec(x), dense.T @ x, atol=1e-12)
    numpy.testing.assert_allclose(op.matmat(xs), dense @ xs, atol=1e-12)
    numpy.testing.assert_allclose(op.rmatmat(xs), dense.T @ xs, atol=1e-12)
    numpy.testing.assert_allclose(op @ xs, dense @ xs, atol=1e-12)
    numpy.testing.assert_allclose(matrix.dot(x), dense @ x, atol=1e-12)


def test_duck_methods_on_rectangular_matrix():
    W = _svd(7, 4)
    dense = dense_of(W)
    numpy.testing.assert_allclose(W.matvec(numpy.ones(4)), dense @ numpy.ones(4), atol=1e-12)
    numpy.testing.assert_allclose(W.rmatvec(numpy.ones(7)), dense.T @ numpy.ones(7), atol=1e-12)
    numpy.testing.assert_allclose(W.rmatmat(numpy.eye(7)), dense.T, atol=1e-12)
    with pytest.raises(ValueError, match=r"X has shape \(4,\) but the operator is 4x7"):
        W.rmatvec(numpy.ones(4))


def test_gmres_solves_with_a_cuhouse_matrix():
    W = _svd(12, 12, seed=3)
    b = RNG.standard_normal(12)
    tolerance = "rtol" if "rtol" in inspect.signature(sla.gmres).parameters else "tol"  # SciPy < 1.12: tol
    x, info = sla.gmres(sla.aslinearoperator(W), b, **{tolerance: 1e-12}, atol=0, restart=12, maxiter=50)
    assert info == 0
    numpy.testing.assert_allclose(x, numpy.linalg.solve(dense_of(W), b), atol=1e-9)


def test_lsqr_on_a_tall_matrix():
    W = _svd(12, 5, seed=4)
    b = RNG.standard_normal(12)
    x = sla.lsqr(sla.aslinearoperator(W), b, atol=1e-14, btol=1e-14)[0]
    numpy.testing.assert_allclose(x, numpy.linalg.lstsq(dense_of(W), b, rcond=None)[0], atol=1e-9)


def test_svds_finds_the_singular_values():
    rng = numpy.random.default_rng(5)
    s = numpy.linspace(1, 5, 12)
    W = ch.SVDMatrix(_householder(12, seed=1), s, _householder(12, seed=2))
    found = sla.svds(sla.aslinearoperator(W), k=3, return_singular_vectors=False, random_state=rng)
    numpy.testing.assert_allclose(numpy.sort(found), s[-3:], rtol=1e-10)


def test_eigsh_finds_the_eigenvalues():
    w = numpy.linspace(-2, 3, 12)
    E = ch.EighMatrix(_householder(12, seed=6), w)
    found = sla.eigsh(sla.aslinearoperator(E), k=2, which="LA", return_eigenvectors=False)
    numpy.testing.assert_allclose(numpy.sort(found), w[-2:], rtol=1e-10)


# --------------------------------------------------------------- pickling
@pytest.mark.parametrize("clone", ["pickle", "copy", "deepcopy"])
def test_round_trip_keeps_the_matrix_and_its_lineage(any_matrix, clone):
    matrix, xp = any_matrix
    twin = {"pickle": lambda a: pickle.loads(pickle.dumps(a)), "copy": copy.copy, "deepcopy": copy.deepcopy}[clone](
        matrix
    )
    assert type(twin) is type(matrix) and twin.shape == matrix.shape and twin.dtype == matrix.dtype
    numpy.testing.assert_array_equal(dense_of(twin), dense_of(matrix))
    if hasattr(matrix, "lineage"):
        assert twin.lineage == matrix.lineage
    x, dout = on(xp, RNG.standard_normal((6, 2)), RNG.standard_normal((6, 2)))
    (grads, dx), (twin_grads, twin_dx) = (ch.vjp(ch.matmul, a, x)[1](dout) for a in (matrix, twin))
    assert len(twin.params) == len(matrix.params)
    for g, tg in zip(grads, twin_grads):
        assert_allclose(tg, g, atol=1e-13)
    if clone != "copy":  # a deep copy has leaves of its own, which its gradients belong to
        assert all(t is not m for t, m in zip(twin.params, matrix.params))


def test_pickle_drops_caches_and_keeps_the_backend_by_name(any_xp):
    H = _householder(64, seed=2, xp=any_xp)
    ones = on(any_xp, numpy.ones((64, 8)))
    before = len(pickle.dumps(H))
    H @ ones  # builds and caches the form of H
    assert H._core._forms
    assert len(pickle.dumps(H)) == before
    twin = pickle.loads(pickle.dumps(H))
    assert twin._core._forms == {} and twin._core._cache == {}
    name = backend_name(any_xp)
    assert twin.backend == name and twin._core.__getstate__()["backend"] == name
    assert_allclose(twin @ ones, H @ ones, atol=1e-13)


def test_shared_leaves_stay_shared_in_a_copy(any_xp):
    W = _svd(5, 5, xp=any_xp)
    twin = copy.deepcopy(W @ W.T)
    assert len(twin.params) == 3 and twin.params[0] is twin.args[0].params[0]


# ------------------------------------------------------------- products
@pytest.mark.parametrize("name", ["W @ W", "W @ H", "H @ W", "E @ W", "W.inv() @ E.expm() @ H2"])
def test_products_are_cuhouse_matrices(any_xp, name):
    P = _matrices(xp=any_xp)[name]
    assert isinstance(P, ch.Product)
    factors = [dense_of(f) for f in P.args]
    expected = factors[0]
    for f in factors[1:]:
        expected = expected @ f
    numpy.testing.assert_allclose(dense_of(P), expected, atol=1e-12)
    numpy.testing.assert_allclose(dense_of(P.T), expected.T, atol=1e-12)
    x = RNG.standard_normal((6, 3))
    assert_allclose(P @ on(any_xp, x), expected @ x, atol=1e-12)
    assert_allclose(rmatmul(on(any_xp, x.T), P), x.T @ expected, atol=1e-12)
    assert P.shape == (6, 6)


def test_householder_products_still_compose_into_one(any_xp):
    H1, H2 = _householder(6, xp=any_xp), _householder(6, 3, seed=1, xp=any_xp)
    assert isinstance(H1 @ H2.T, ch.HouseholderProduct)
    assert isinstance(H1 @ ch.SVDMatrix(H1, on(any_xp, numpy.ones(6)), H2), ch.Product)


def test_product_params_are_distinct_leaves_in_order_of_first_appearance(any_xp):
    matrices = _matrices(xp=any_xp)
    W, H = matrices["W"], matrices["H"]
    P = W @ H @ W.inv()
    assert len(P.params) == 4
    assert all(a is b for a, b in zip(P.params, W.params + H.params))


def test_nested_products_flatten(any_xp):
    matrices = _matrices(xp=any_xp)
    W, H = matrices["W"], matrices["H"]
    assert len(((W @ H) @ (W @ W)).args) == 4


def test_product_gradients_sum_a_leaf_used_twice(any_xp):
    rng = numpy.random.default_rng(8)
    leaves = on(
        any_xp,
        rng.standard_normal((5, 5)),
        rng.uniform(1, 2, 5),
        rng.standard_normal((5, 5)),
        rng.standard_normal((3, 5)),
    )

    def svd(u, s, v):
        return ch.SVDMatrix(ch.HouseholderProduct(u), s, ch.HouseholderProduct(v))

    builds = [
        lambda u, s, v, h: svd(u, s, v) @ svd(u, s, v) @ ch.HouseholderProduct(h),
        lambda u, s, v, h: svd(u, s, v) @ ch.HouseholderProduct(h) @ svd(u, s, v).inv(),
        lambda u, s, v, h: (
            svd(u, s, v).T @ ch.HouseholderProduct(h).T @ ch.EighMatrix(ch.HouseholderProduct(u), s).expm()
        ),
    ]
    for build in builds:
        assert all(a is b for a, b in zip(build(*leaves).params, leaves))
        check_matmul_vjp(build, leaves, on(any_xp, rng.standard_normal((5, 2))), xp=any_xp)


def test_product_logdet_and_its_gradient(any_xp):
    W, E = _svd(6, 6, seed=1, xp=any_xp), _eigh(6, seed=2, xp=any_xp)
    P = W @ E.expm()
    assert_allclose(P.logdet(), numpy.linalg.slogdet(dense_of(P))[1], atol=1e-12)
    assert_allclose(P.det(), numpy.linalg.det(dense_of(P)), rtol=1e-10)
    value, back = ch.vjp(ch.logdet, P)
    (grads,) = back(on(any_xp, numpy.ones(())))
    assert_allclose(grads[1], 1 / to_numpy(W.s), atol=1e-12)  # d/ds sum log|s|
    assert_allclose(grads[-1], numpy.ones(6), atol=1e-12)  # d/dw sum(w) through expm


def test_product_errors(any_xp):
    with pytest.raises(ValueError, match=r"cannot multiply a 6x4 SVDMatrix by a 6x6 HouseholderProduct"):
        _svd(6, 4, xp=any_xp) @ _householder(6, xp=any_xp)
    with pytest.raises(ValueError, match=r"slogdet\(\) needs a square matrix, but the Product is 6x4"):
        (_svd(6, 4, xp=any_xp) @ _householder(4, xp=any_xp)).logdet()
    eye = on(any_xp, numpy.eye(3))
    with pytest.raises(TypeError, match="Product takes cuhouse matrices, got {}".format(type(eye).__name__)):
        ch.Product(_householder(3, xp=any_xp), eye)


# ------------------------------------------------------------- from_dense
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("batch", [(), (3,)])
@pytest.mark.parametrize("d", [1, 2, 7, 40])
def test_from_dense_reproduces_an_orthogonal_matrix(any_xp, dtype, batch, d):
    q = numpy.linalg.qr(numpy.random.default_rng(d).standard_normal(batch + (d, d)))[0].astype(dtype)
    H = ch.HouseholderProduct.from_dense(on(any_xp, q))
    assert H.n_reflections <= d and dtype_name(H) == numpy.dtype(dtype).name
    assert numpy.abs(to_numpy(H.todense()) - q).max() <= 50 * numpy.finfo(dtype).eps * d
    assert_allclose(H.det(), numpy.linalg.det(q.astype(numpy.float64)), rtol=0, atol=50 * numpy.finfo(dtype).eps * d)


def test_from_dense_of_identity_and_sign_flips_uses_identity_factors(any_xp):
    H = ch.HouseholderProduct.from_dense(on(any_xp, numpy.eye(5)))
    numpy.testing.assert_array_equal(to_numpy(H.todense()), numpy.eye(5))
    assert float(to_numpy(H.det())) == 1
    flip = numpy.diag([1.0, -1.0, 1.0, 1.0, -1.0])
    assert_allclose(ch.HouseholderProduct.from_dense(on(any_xp, flip)).todense(), flip, atol=1e-15)


def test_from_dense_of_orthonormal_columns(any_xp):
    q = numpy.linalg.qr(numpy.random.default_rng(0).standard_normal((9, 4)))[0]
    H = ch.HouseholderProduct.from_dense(on(any_xp, q))
    assert H.n_reflections <= 4 and H.shape == (9, 9)
    assert_allclose(to_numpy(H.todense())[:, :4], q, atol=50 * numpy.finfo(float).eps * 9)


def test_from_dense_rejects_a_matrix_that_is_not_orthogonal(any_xp):
    with pytest.raises(ValueError, match=r"Q must be orthogonal to within 50 eps d = .* \(max \|Q\^T Q - I\|\), got"):
        ch.HouseholderProduct.from_dense(on(any_xp, numpy.eye(4) * 1.01))
    with pytest.raises(ValueError, match="Q must be orthonormal columns to within"):
        ch.HouseholderProduct.from_dense(on(any_xp, numpy.ones((4, 2))))


def test_from_dense_rejects_a_wide_matrix(any_xp):
    with pytest.raises(ValueError, match=r"Q must have shape \(\.\.\., d, r\) with r <= d .* got shape \(2, 3\)"):
        ch.HouseholderProduct.from_dense(on(any_xp, numpy.zeros((2, 3))))


# -------------------------------------------------------- read-only views
def test_views_of_caller_arrays_are_read_only():  # NumPy only: torch and CuPy have no read-only arrays
    v = numpy.random.default_rng(0).standard_normal((3, 4))
    original = v.copy()
    H = ch.HouseholderProduct(v)
    for view in (H.vectors, H.T.vectors):
        with pytest.raises(ValueError, match="read-only"):
            view[0, 0] = 123
    numpy.testing.assert_array_equal(v, original)
    W, E = _svd(4, 4), _eigh(4)
    for view in (W.s, W.U.vectors, E.w, W.inv().s):
        with pytest.raises(ValueError, match="read-only"):
            view[0] = 1
    assert H.params[0] is v  # the caller's own array, for optimizers that update in place


# ------------------------------------------------------ refused operands (NumPy only: SciPy and NumPy types)
@pytest.mark.parametrize("name", ["H", "W"])
def test_sparse_operand_is_a_type_error_that_says_what_to_do(name):
    A = MATRICES[name]
    with pytest.raises(
        TypeError, match=r"X is a SciPy sparse csr_matrix; cuhouse takes dense arrays: pass X.toarray\(\)"
    ):
        A @ scipy.sparse.csr_matrix(numpy.eye(6))
    with pytest.raises(TypeError, match=r"X is a SciPy sparse csr_array"):
        ch.vjp(ch.matmul, A, scipy.sparse.csr_array(numpy.eye(6)))[1]
    with pytest.raises(TypeError, match=r"X is a SciPy sparse csr_array"):
        ch.vjp(ch.matmul, A, scipy.sparse.csr_array(numpy.eye(6)))


@pytest.mark.parametrize("name", ["H", "W"])
def test_masked_operand_is_a_type_error(name):
    A = MATRICES[name]
    masked = numpy.ma.masked_array(numpy.eye(6), mask=numpy.eye(6) > 0)
    with pytest.raises(TypeError, match="X is a numpy.ma.MaskedArray; masked arrays are not supported"):
        A @ masked
    with pytest.raises(TypeError, match="masked arrays are not supported"):
        masked @ A


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_numpy_matrix_input_is_taken_as_its_ndarray_view():
    v = numpy.random.default_rng(0).standard_normal((4, 4))
    H = ch.HouseholderProduct(numpy.matrix(v))
    assert type(H.vectors) is numpy.ndarray
    numpy.testing.assert_allclose(H @ numpy.eye(4), ch.HouseholderProduct(v).todense(), atol=1e-15)
    q = numpy.linalg.qr(v)[0]
    numpy.testing.assert_allclose(ch.HouseholderProduct.from_dense(numpy.matrix(q)).todense(), q, atol=1e-14)


def test_solve_names_b_in_its_errors(any_xp):
    W = _svd(4, 4, xp=any_xp)
    with pytest.raises(ValueError, match="B must be finite"):
        W.solve(on(any_xp, numpy.full(4, numpy.nan)))
    with pytest.raises(ValueError, match=r"B has shape \(3,\) but the operator is 4x4"):
        W.solve(on(any_xp, numpy.ones(3)))


def test_matrix_times_a_scipy_linear_operator_stays_lazy():  # NumPy only: SciPy's LinearOperator
    m = numpy.random.default_rng(0).standard_normal((6, 6))
    product = MATRICES["H"] @ sla.aslinearoperator(m)
    assert isinstance(product, sla.LinearOperator)
    numpy.testing.assert_allclose(product @ numpy.eye(6), dense_of(MATRICES["H"]) @ m, atol=1e-12)


# ------------------------------------------------------ singular spectra
def test_logdet_of_a_singular_spectrum_is_minus_inf_and_its_gradient_a_value_error(any_xp):
    E = ch.EighMatrix(_householder(4, xp=any_xp), on(any_xp, [0.0, 1.0, 2.0, 3.0]))
    assert float(to_numpy(E.logdet())) == -numpy.inf  # RuntimeWarnings are errors in this suite
    with pytest.raises(ValueError, match=r"the gradient of logdet needs every w nonzero .* got w\[0\] = 0.0"):
        ch.vjp(ch.logdet, E)
    with pytest.raises(ValueError, match=r"inv\(\) needs every w nonzero"):
        E.inv()


def test_inverse_of_a_subnormal_spectrum_is_a_value_error_not_a_warning(any_xp):
    E = ch.EighMatrix(_householder(3, xp=any_xp), on(any_xp, [1e-320, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"inv\(\) needs every 1/w finite \(W is numerically singular\), got w\[0\]"):
        E.inv()


# ----------------------------------------------------------------- memory
def test_todense_too_large_says_how_much_memory_it_needs(any_xp):
    ones = on(any_xp, numpy.ones((1, 10**6)))
    H = ch.HouseholderProduct(ones)
    with pytest.raises(
        MemoryError,
        match=r"todense\(\) needs a dense float64 array of shape \(1000000, 1000000\) "
        r"\(7.28 TiB; about 29.1 TiB with its intermediates\), more than "
        + (r"the GPU's memory \(" if backend_name(any_xp) == "cupy" else r"this machine's memory"),
    ):
        H.todense()
    with pytest.raises(MemoryError, match=r'algorithm="dense" needs a dense float64 array .* \(7.28 TiB; about'):
        ch.HouseholderProduct(ones, algorithm="dense") @ on(any_xp, numpy.ones(10**6))
    with pytest.raises(MemoryError, match=r"shape \(1000000, 1000000\)"):
        ch.SVDMatrix(ones, on(any_xp, numpy.ones(1)), ones).todense()


def test_todense_of_a_wide_matrix_applies_the_transpose_to_the_smaller_identity(any_xp):
    W = ch.SVDMatrix(*on(any_xp, numpy.eye(1, 5), numpy.ones(1), numpy.ones((1, 10**6))))  # 5 x 10^6: 40 MB
    dense = W.todense()
    assert tuple(dense.shape) == (5, 10**6)
    assert_allclose(dense[:, :3], W @ on(any_xp, numpy.eye(10**6, 3)), atol=1e-15)
    matrices = _matrices(xp=any_xp)
    wide = _svd(3, 6, xp=any_xp) @ matrices["W"]
    numpy.testing.assert_allclose(dense_of(wide), dense_of(_svd(3, 6, xp=any_xp)) @ dense_of(matrices["W"]), atol=1e-12)


# --------------------------------------------- one validation per call
def test_one_validation_and_one_cotangent_check_per_call(any_xp, monkeypatch):
    calls = {"product_operand": 0, "cotangent": 0}
    for name in calls:
        original = getattr(_validate, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(_validate, name, counted)
    W = _svd(6, 6, xp=any_xp)
    x = on(any_xp, numpy.ones((6, 2)))
    out, back = ch.vjp(ch.matmul, (W.inv() @ W.T) @ _householder(6, xp=any_xp), x)
    back(any_xp.ones_like(out))
    assert calls == {"product_operand": 1, "cotangent": 1}


def test_plain_products_build_no_backward(any_xp, monkeypatch):
    def refuse(*args):
        raise AssertionError("a plain product built an adjoint")

    for cls in (ch.HouseholderProduct, ch.SVDMatrix, ch.Product):
        monkeypatch.setattr(cls, "_vjp_matmat", refuse)
    x = on(any_xp, numpy.ones((6, 2)))
    matrices = _matrices(xp=any_xp)
    for A in (matrices["H"], matrices["W.inv()"], matrices["W @ H"]):
        A @ x, rmatmul(x.T, A), A.todense()


def test_the_plan_does_not_depend_on_what_is_cached(any_xp):
    H = _householder(256, seed=3, xp=any_xp)
    before = [H.plan_for(m) for m in (1, 32, 256)]
    for m in (1, 32, 256):
        H @ on(any_xp, numpy.ones((256, m)))
    assert [H.plan_for(m) for m in (1, 32, 256)] == before
