"""Complex data on the generic path (torch, array_api_strict): unitary ``HouseholderProduct``,
``from_lapack`` of complex ``geqrf`` output (``torch.geqrf``), ``SVDMatrix``, ``EighMatrix``, products on
both sides, views, det/logdet and gradients, against complex128 dense references and NumPy's ``vjp``
(whose adjoints test_complex dot-tests); torch autograd with ``gradcheck`` and ``gradgradcheck``."""

import numpy
import pytest
import scipy.linalg

import cuhouse as ch

TOL = {"complex64": 2e-5, "complex128": 1e-12}


def crandn(rng, *shape):
    return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)


def _host(a):
    return numpy.asarray(a)


def _close(actual, expected, dtype="complex128"):
    actual, expected = _host(actual), numpy.asarray(expected)
    assert actual.shape == expected.shape
    scale = max(1.0, float(numpy.max(numpy.abs(expected))))
    assert numpy.max(numpy.abs(actual - expected)) <= TOL[dtype] * 50 * scale


def _dense(v):
    """H(v_1) ... H(v_n), H(v) = I - 2 v v^H / (v^H v), in complex128."""
    h = numpy.eye(v.shape[-1], dtype=complex)
    for row in v.astype(numpy.complex128):
        h = h @ (numpy.eye(len(row)) - 2 * numpy.outer(row, row.conj()) / numpy.vdot(row, row).real)
    return h


@pytest.mark.parametrize("dtype", ["complex64", "complex128"])
def test_unitary_products_on_both_sides_and_views(generic_xp, dtype):
    rng = numpy.random.default_rng(0)
    v, x = crandn(rng, 4, 7).astype(dtype), crandn(rng, 7, 3).astype(dtype)
    h, dense = ch.HouseholderProduct(generic_xp.asarray(v)), _dense(v)
    assert str(h.dtype).endswith(dtype)
    xs, xts = generic_xp.asarray(x), generic_xp.asarray(numpy.ascontiguousarray(x.T))
    out = ch.matmul(h, xs)
    assert type(out) is type(xs) and str(out.dtype).endswith(dtype)
    _close(out, dense @ x, dtype)
    _close(ch.matmul(h.T, xs), dense.T @ x, dtype)
    _close(ch.matmul(h.H, xs), dense.conj().T @ x, dtype)
    _close(ch.matmul(h.conj(), xs), dense.conj() @ x, dtype)
    _close(ch.matmul(xts, h), x.T @ dense, dtype)
    _close(h.todense(), dense, dtype)
    _close(h.det(), numpy.linalg.det(dense), dtype)
    _close(h.logdet(), 0.0, dtype)


def test_real_and_complex_operands_promote_as_numpy_matmul(generic_xp):
    rng = numpy.random.default_rng(1)
    v, x = crandn(rng, 3, 5), crandn(rng, 5, 2)
    real_v, real_x = v.real.copy(), x.real.copy()
    _close(ch.matmul(ch.HouseholderProduct(generic_xp.asarray(v)), generic_xp.asarray(real_x)), _dense(v) @ real_x)
    _close(ch.matmul(ch.HouseholderProduct(generic_xp.asarray(real_v)), generic_xp.asarray(x)), _dense(real_v) @ x)


def test_batched_composed_products(generic_xp):
    rng = numpy.random.default_rng(2)
    v, w, x = crandn(rng, 2, 3, 6), crandn(rng, 2, 6), crandn(rng, 6, 2)
    h = ch.HouseholderProduct(generic_xp.asarray(v)) @ ch.HouseholderProduct(generic_xp.asarray(w)).H
    expected = numpy.stack([_dense(b) @ _dense(w).conj().T @ x for b in v])
    _close(ch.matmul(h, generic_xp.asarray(x)), expected)


def test_from_lapack_of_complex_geqrf_output(generic_xp):
    rng = numpy.random.default_rng(3)
    (qr, tau), _ = scipy.linalg.qr(crandn(rng, 6, 4), mode="raw")
    h = ch.HouseholderProduct.from_lapack(generic_xp.asarray(qr), generic_xp.asarray(tau))
    expected = ch.HouseholderProduct.from_lapack(qr, tau).todense()  # NumPy's (test_complex: = scipy's Q)
    _close(h.todense(), expected)
    _close(h.det(), numpy.linalg.det(expected))
    with pytest.raises(ValueError, match=r"tau must make unitary factors I - tau v v\^H"):
        ch.HouseholderProduct.from_lapack(generic_xp.asarray(qr), generic_xp.asarray(tau * 0.9))


def test_from_lapack_takes_torch_geqrf():
    torch = pytest.importorskip("torch")
    a = torch.from_numpy(crandn(numpy.random.default_rng(4), 6, 4))
    qr, tau = torch.geqrf(a)
    h = ch.HouseholderProduct.from_lapack(qr, tau)
    assert isinstance(h @ a, torch.Tensor)
    _close(h.todense()[:, :4], torch.linalg.householder_product(qr, tau))


def test_spectral_matrices(generic_xp):
    rng = numpy.random.default_rng(5)
    u, v, x = crandn(rng, 4, 4), crandn(rng, 3, 4), crandn(rng, 4, 2)
    s = rng.uniform(0.5, 1.5, 4)
    w = ch.SVDMatrix(generic_xp.asarray(u), generic_xp.asarray(s), generic_xp.asarray(v))
    e = ch.EighMatrix(generic_xp.asarray(u), generic_xp.asarray(s))
    dense_w = _dense(u) @ numpy.diag(s) @ _dense(v).conj().T
    dense_e = _dense(u) @ numpy.diag(s) @ _dense(u).conj().T
    xs = generic_xp.asarray(x)
    _close(ch.matmul(w, xs), dense_w @ x)
    _close(ch.matmul(w.inv(), xs), numpy.linalg.solve(dense_w, x))
    _close(ch.matmul(e, xs), dense_e @ x)
    _close(w.logdet(), numpy.linalg.slogdet(dense_w)[1])
    sign, logabs = w.slogdet()
    _close(sign, numpy.linalg.slogdet(dense_w)[0])
    _close(e.todense(), dense_e)


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
        _close(got_x, want_x)
        assert len(got) == len(want), name
        for a, b in zip(got, want):
            _close(a, b)
        (got,) = ch.vjp(ch.logdet, make(generic_xp.asarray))[1](generic_xp.asarray(1.0, dtype="float64"))
        (want,) = ch.vjp(ch.logdet, make(numpy.asarray))[1](numpy.ones(()))
        for a, b in zip(got, want):
            _close(a, b)


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
    _close(batched, torch.stack([apply(v) for v in vb]))


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
    _close(grads[1], grads[0])
    with torch.no_grad():
        v.add_(0.25)
    out = h.refresh() @ x
    out.abs().sum().backward()
    _close(out.detach(), _dense(v.detach().numpy()) @ x.numpy())
    fresh = v.detach().clone().requires_grad_(True)
    (ch.HouseholderProduct(fresh) @ x).abs().sum().backward()
    _close(v.grad, fresh.grad)
