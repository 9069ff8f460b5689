"""The generic path: every Array API library (torch, array_api_strict) beside NumPy and CuPy.

What only the generic path has. Products, derived and spectral matrices and their
dot tests run on every backend (``any_xp``) in ``test_householder.py``,
``test_spectral.py``, ``test_complex.py``, ``test_reliability.py`` and
``test_fuzz.py``. Here: the vjp's dot test and ``from_lapack``/``from_dense``
against the NumPy path, pickling, mixing libraries and devices, the generic
path's own refusals, and torch autograd through cuhouse's adjoints
(``cuhouse._torch``): gradcheck and gradgradcheck, vmap, host synchronizations.
"""

import pickle
import subprocess
import sys

import numpy
import pytest
import scipy.linalg
from helpers import SyncCounter, on, to_numpy

import cuhouse
from cuhouse.algorithms import portable

torch = pytest.importorskip("torch")

GENERIC_ALGORITHMS = ("auto",) + portable.ALGORITHMS
TOL = {numpy.float32: 2e-5, numpy.float64: 1e-12}


def _rng(seed=0):
    return numpy.random.default_rng(seed)


def _close(actual, expected, dtype, scale=1):
    actual, expected = to_numpy(actual), numpy.asarray(expected)
    assert actual.shape == expected.shape
    err = numpy.abs(actual - expected).max() / max(1.0, numpy.abs(expected).max())
    assert err <= TOL[dtype] * 10 * scale, err


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("algorithm", GENERIC_ALGORITHMS)
def test_vjp_dot_test(generic_xp, side, algorithm):
    """<u, J w> by central differences equals <J^T u, w> by the generic path's vjp (float64, batched)."""
    rng = _rng(1)
    v, x = rng.standard_normal((2, 1, 4, 6)), rng.standard_normal((3, 6, 2))
    if side == "right":
        x = numpy.swapaxes(x, -1, -2)

    def f(v, x):
        h = cuhouse.HouseholderProduct(generic_xp.asarray(v), algorithm=algorithm)
        return to_numpy(h @ generic_xp.asarray(x) if side == "left" else cuhouse.matmul(generic_xp.asarray(x), h))

    h = cuhouse.HouseholderProduct(generic_xp.asarray(v), algorithm=algorithm)
    args = (h, generic_xp.asarray(x)) if side == "left" else (generic_xp.asarray(x), h)
    out, vjp_fn = cuhouse.vjp(cuhouse.matmul, *args)
    u = rng.standard_normal(out.shape)
    grads = vjp_fn(generic_xp.asarray(u))
    (dv,), dx = grads if side == "left" else grads[::-1]
    assert type(dx) is type(out)
    wv, wx = rng.standard_normal(v.shape), rng.standard_normal(x.shape)
    eps = 1e-6
    jw = (f(v + eps * wv, x + eps * wx) - f(v - eps * wv, x - eps * wx)) / (2 * eps)
    lhs = numpy.sum(u * jw)
    rhs = numpy.sum(to_numpy(dv) * wv) + numpy.sum(to_numpy(dx) * wx)
    assert abs(lhs - rhs) <= 1e-7 * max(1.0, abs(lhs)), (lhs, rhs)


def test_from_lapack_and_from_dense(generic_xp):
    rng = _rng(2)
    (raw, tau), _ = scipy.linalg.qr(rng.standard_normal((7, 4)), mode="raw")
    ref = cuhouse.HouseholderProduct.from_lapack(raw, tau)
    h = cuhouse.HouseholderProduct.from_lapack(generic_xp.asarray(raw), generic_xp.asarray(tau))
    assert h.params[0] is not None and h.n_reflections == 4
    x = rng.standard_normal((7, 3))
    _close(h @ generic_xp.asarray(x), ref @ x, numpy.float64, 7)
    out, vjp_fn = cuhouse.vjp(cuhouse.matmul, h, generic_xp.asarray(x))
    ref_out, ref_fn = cuhouse.vjp(cuhouse.matmul, ref, x)
    g = rng.standard_normal(ref_out.shape)
    (da,), dx = vjp_fn(generic_xp.asarray(g))
    (ref_da,), ref_dx = ref_fn(g)
    _close(da, ref_da, numpy.float64, 7)
    _close(dx, ref_dx, numpy.float64, 7)
    q, _ = numpy.linalg.qr(rng.standard_normal((2, 6, 6)))
    _close(cuhouse.HouseholderProduct.from_dense(generic_xp.asarray(q)).todense(), q, numpy.float64, 50)
    thin = cuhouse.HouseholderProduct.from_dense(generic_xp.asarray(q[..., :3])).todense()
    _close(to_numpy(thin)[..., :3], q[..., :3], numpy.float64, 50)


def test_device_is_the_parameters_device(any_xp):
    import array_api_compat

    v, s = on(any_xp, _rng(5).standard_normal((3, 4)), [1.0, 2.0, 3.0, 4.0])
    h = cuhouse.HouseholderProduct(v)
    expected = array_api_compat.device(v)
    for matrix in (h, h.T, h @ h.T, cuhouse.SVDMatrix(h, s, h).inv()):
        assert matrix.device == expected
        assert array_api_compat.device(matrix @ on(any_xp, numpy.ones((4, 1)))) == expected


def test_pickle_keeps_the_backend(generic_xp):
    rng = _rng(4)
    h = cuhouse.HouseholderProduct(generic_xp.asarray(rng.standard_normal((3, 5))))
    w = cuhouse.SVDMatrix(h, generic_xp.asarray(numpy.array([1.0, 2.0, 3.0, 4.0, 5.0])), h).inv().T
    for a in (h.T, w):
        b = pickle.loads(pickle.dumps(a))
        assert b.backend == a.backend == generic_xp.name
        x = generic_xp.asarray(rng.standard_normal((5, 2)))
        _close(b @ x, to_numpy(a @ x), numpy.float64)


# ------------------------------------------------------------------- bad inputs
def test_mixing_libraries_is_a_type_error_naming_both(generic_xp):
    v = _rng().standard_normal((3, 5))
    h = cuhouse.HouseholderProduct(generic_xp.asarray(v))
    with pytest.raises(TypeError, match=r"cannot mix {} and NumPy arrays: X is numpy.ndarray".format(generic_xp.name)):
        h @ numpy.ones((5, 2))
    with pytest.raises(TypeError, match=r"cannot mix NumPy and {} arrays".format(generic_xp.name)):
        cuhouse.HouseholderProduct(v) @ generic_xp.asarray(numpy.ones((5, 2)))
    with pytest.raises(TypeError, match=r"cannot mix {} and NumPy arrays: got".format(generic_xp.name)):
        cuhouse.SVDMatrix(h, numpy.ones(3), h)
    with pytest.raises(TypeError, match=r"cannot multiply cuhouse matrices on different backends: .*numpy"):
        h @ cuhouse.SVDMatrix(v, numpy.ones(3), v)
    with pytest.raises(TypeError, match=r"cannot mix NumPy and {} arrays".format(generic_xp.name)):
        cuhouse.HouseholderProduct(v) @ h


def test_torch_devices_and_libraries_do_not_mix():
    h = cuhouse.HouseholderProduct(torch.randn(3, 5))
    with pytest.raises(TypeError, match=r"cannot mix devices: X is on meta but the operator is on cpu"):
        h @ torch.empty(5, 2, device="meta")
    with pytest.raises(TypeError, match=r"cannot mix devices: got a torch array on cpu and one on meta"):
        cuhouse.SVDMatrix(torch.randn(3, 5), torch.ones(3, device="meta"), torch.randn(3, 5))
    strict = pytest.importorskip("array_api_strict")
    with pytest.raises(TypeError, match=r"cannot mix torch and array_api_strict arrays"):
        h @ strict.ones((5, 2))


def test_generic_path_refusals(generic_xp):
    v = generic_xp.asarray(_rng().standard_normal((3, 5)))
    with pytest.raises(ValueError, match=r"algorithm='fasth' runs on NumPy and CuPy only.*'cwy'"):
        cuhouse.HouseholderProduct(v, algorithm="fasth")
    if generic_xp.name == "torch":  # array_api_strict has no float16
        with pytest.raises(TypeError, match=r"vectors has dtype float16; supported dtypes are float32, float64"):
            cuhouse.HouseholderProduct(torch.ones((3, 5), dtype=torch.float16))
        with pytest.raises(TypeError, match=r"vectors has dtype torch.bfloat16; supported dtypes are float32"):
            cuhouse.HouseholderProduct(torch.ones((3, 5), dtype=torch.bfloat16))
    with pytest.raises(ValueError, match=r"X has shape \(4, 2\) but the operator is 5x5"):
        cuhouse.HouseholderProduct(v) @ generic_xp.asarray(numpy.ones((4, 2)))
    with pytest.raises(ValueError, match=r"vectors row 1 is a zero vector"):
        cuhouse.HouseholderProduct(generic_xp.asarray(numpy.array([[1.0, 2.0], [0.0, 0.0]])))
    with pytest.raises(ValueError, match=r"vectors must be finite; found NaN or Inf"):
        cuhouse.HouseholderProduct(generic_xp.asarray(numpy.array([[1.0, numpy.nan]])))
    with pytest.raises(ValueError, match=r"X must be finite; found NaN or Inf"):
        cuhouse.HouseholderProduct(v) @ generic_xp.asarray(numpy.full((5, 1), numpy.inf))
    with pytest.raises(ValueError, match=r"dout must have the shape of the value"):
        cuhouse.vjp(cuhouse.matmul, cuhouse.HouseholderProduct(v), generic_xp.asarray(numpy.ones((5, 2))))[1](
            generic_xp.asarray(numpy.ones((5, 3)))
        )
    with pytest.raises(ValueError, match=r"tau must be 0 or 2 / \(v\^T v\)"):
        cuhouse.HouseholderProduct.from_lapack(
            generic_xp.asarray(numpy.ones((4, 2))), generic_xp.asarray(numpy.ones(2))
        )
    with pytest.raises(TypeError, match=r"on the {} backend cannot become a NumPy array".format(generic_xp.name)):
        numpy.asarray(cuhouse.HouseholderProduct(v))


def test_check_finite_false_skips_the_value_checks_on_the_generic_path(generic_xp):
    v = generic_xp.asarray(numpy.array([[1.0, 2.0], [0.0, 0.0]]))
    h = cuhouse.HouseholderProduct(v, check_finite=False)  # no host synchronization: a zero row is the identity
    ref = cuhouse.HouseholderProduct(numpy.array([[1.0, 2.0]]))
    x = numpy.arange(4.0).reshape(2, 2)
    _close(h @ generic_xp.asarray(x), ref @ x, numpy.float64)


# ---------------------------------------------------------------- torch autograd
def _t(a, grad=True):
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


def test_torch_tensors_keep_dtype_and_device():
    for dtype in (torch.float32, torch.float64):
        v, x = torch.randn(2, 4, 6, dtype=dtype), torch.randn(6, 3, dtype=dtype)
        out = cuhouse.HouseholderProduct(v) @ x
        assert out.dtype == dtype and out.device == x.device and isinstance(out, torch.Tensor)
        g, tau = torch.geqrf(torch.randn(6, 4, dtype=dtype))
        h = cuhouse.HouseholderProduct.from_lapack(g, tau)
        assert h.params[0] is g
        q = torch.linalg.householder_product(g, tau)
        assert (h.todense()[:, :4] - q).abs().max() < 1e-5
        assert (x.mT @ cuhouse.HouseholderProduct(v)).dtype == dtype


def test_autograd_matches_the_vjp():
    rng = _rng(5)
    v, x, g = rng.standard_normal((2, 4, 6)), rng.standard_normal((6, 3)), rng.standard_normal((2, 6, 3))
    (dv,), dx = cuhouse.vjp(cuhouse.matmul, cuhouse.HouseholderProduct(v), x)[1](g)
    vt, xt = _t(v), _t(x)
    (cuhouse.HouseholderProduct(vt) @ xt).backward(torch.tensor(g))
    numpy.testing.assert_allclose(vt.grad.numpy(), dv, rtol=1e-12, atol=1e-12)
    numpy.testing.assert_allclose(xt.grad.numpy(), dx, rtol=1e-12, atol=1e-12)


def _svd_inv(u, s, v, x):
    return cuhouse.SVDMatrix(u, s, v).inv().T @ x


def _svd_logdet(u, s, v, x):
    return cuhouse.SVDMatrix(u, s, v).clip(0.6, 1.4).logdet() + (x * 0).sum()


def _eigh(u, w, x):
    return cuhouse.matmul(x.mT, cuhouse.EighMatrix(u, w).expm().power(0.5))


def _householder(v, x):
    return cuhouse.HouseholderProduct(v, algorithm="cwy", block_size=2) @ x


def _lapack(a, x):
    tau = 2 / (1 + (torch.tril(a, -1) ** 2).sum(-2))  # tau as implied by a: only a is differentiated
    return (cuhouse.HouseholderProduct.from_lapack(a, tau) @ cuhouse.HouseholderProduct(a.mT[:2] + 1)).T @ x


@pytest.mark.parametrize(
    "fn,shapes",
    [
        (_householder, [(2, 3, 5), (5, 2)]),
        (_svd_inv, [(4, 4), (4,), (3, 4), (4, 2)]),
        (_svd_logdet, [(2, 4, 4), (2, 4), (4, 4), (4, 2)]),
        (_eigh, [(3, 4), (4,), (4, 2)]),
        (_lapack, [(5, 3), (5, 2)]),
    ],
)
def test_gradcheck_and_gradgradcheck(fn, shapes):
    """First and second derivatives (torch autograd around cuhouse._torch.Matmul) against finite differences."""
    rng = _rng(6)
    args = [rng.standard_normal(shape) for shape in shapes]
    if fn is not _householder and fn is not _lapack:
        args[1] = rng.uniform(0.5, 1.5, shapes[1])  # spectra away from 0 (and from the clip edges)
    args = [_t(a) for a in args]
    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)


def test_gradient_penalty_matches_finite_differences():
    """d/ds of ||d<W x, c>/dx||^2 (a gradient penalty, create_graph=True) against central differences."""
    rng = _rng(7)
    u, v, x, c = (torch.tensor(rng.standard_normal(s)) for s in ((4, 4), (4, 4), (4, 3), (4, 3)))
    s0 = rng.uniform(0.5, 1.5, 4)

    def penalty(s, create_graph):
        xg = x.clone().requires_grad_(True)
        (gx,) = torch.autograd.grad((cuhouse.SVDMatrix(u, s, v) @ xg * c).sum(), xg, create_graph=create_graph)
        return (gx**2).sum()

    s = _t(s0)
    (ds,) = torch.autograd.grad(penalty(s, True), s)
    eps = 1e-6
    for i in range(4):
        e = numpy.zeros(4)
        e[i] = eps
        fd = (penalty(torch.tensor(s0 + e), False) - penalty(torch.tensor(s0 - e), False)) / (2 * eps)
        assert abs(float(ds[i]) - float(fd)) <= 1e-6 * max(1.0, abs(float(fd)))


def test_vmap_and_func_grad_compose():
    rng = _rng(8)
    vb, x = torch.tensor(rng.standard_normal((3, 2, 5))), torch.tensor(rng.standard_normal((5, 2)))

    def apply(v):
        return cuhouse.HouseholderProduct(v, check_finite=False) @ x

    batched = torch.func.vmap(apply)(vb)
    looped = torch.stack([apply(v) for v in vb])
    assert (batched - looped).abs().max() < 1e-12
    grads = torch.func.vmap(torch.func.grad(lambda v: apply(v).sin().sum()))(vb)
    for v, g in zip(vb, grads):
        vt = v.clone().requires_grad_(True)
        apply(vt).sin().sum().backward()
        assert (vt.grad - g).abs().max() < 1e-12
    jac = torch.func.jacrev(apply)(vb[0])
    assert jac.shape == (5, 2, 2, 5)


@pytest.mark.parametrize("check_finite,allowed", [(True, 1), (False, 0)])
def test_host_synchronizations_per_product(check_finite, allowed):
    rng = _rng(9)
    v = _t(rng.standard_normal((4, 6)))
    x, s = _t(rng.standard_normal((6, 3))), _t(rng.uniform(0.5, 1.5, 4))
    h = cuhouse.HouseholderProduct(v, check_finite=check_finite)
    w = cuhouse.SVDMatrix(v, s, v, check_finite=check_finite)
    for op in (h, h.T, w, w.T):
        with SyncCounter() as syncs:
            out = op @ x
        assert syncs.count <= allowed, (op, syncs.count)
        with SyncCounter() as syncs:
            out.sum().backward()
        assert syncs.count == 0
    if not check_finite:
        square = _t(rng.standard_normal((6, 6)))
        with SyncCounter() as syncs:
            cuhouse.HouseholderProduct(v, check_finite=False) @ x
            cuhouse.SVDMatrix(square, s.detach().repeat(2)[:6], square, check_finite=False).logdet().backward()
        assert syncs.count == 0


def test_the_torch_path_imports_no_cupy():
    code = (
        "import sys, torch, cuhouse\n"
        "v = torch.randn(3, 5, requires_grad=True)\n"
        "(cuhouse.HouseholderProduct(v) @ torch.randn(5, 2)).sum().backward()\n"
        "assert 'cupy' not in sys.modules, 'cupy imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
