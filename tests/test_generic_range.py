"""Never silently wrong on the generic path: vectors and columns far from 1 (issue 17's overflow-safe
products, on torch and array_api_strict, which have no frexp).

Each case is one whose result and gradients are representable in the dtype, but whose unscaled
intermediates (``V X``, ``T Z``, the gradient's bilinear terms) overflow or underflow; before the
generic path scaled X's columns by powers of two these gave NaN, or results off by 100%.
References: the float64 dense product of the same (rounded) data, and NumPy's float64 ``vjp``.
"""

import numpy
import pytest

import cuhouse as ch

# (name, dtype, row scale (None: rows alternately 1e14 and 1e-14), column scale)
CASES = [
    ("large X", "float32", 1.0, 1e36),
    ("tiny X", "float32", 1.0, 1e-35),
    ("large rows, large X", "float32", 1e12, 1e30),
    ("tiny rows, large X", "float32", 1e-12, 1e20),
    ("tiny rows, tiny X", "float32", 1e-14, 1e-30),
    ("rows of mixed sizes", "float32", None, 1e20),
    ("float64, large rows, large X", "float64", 1e100, 1e250),
    ("float64, tiny rows, tiny X", "float64", 1e-140, 1e-280),
]
TOL = {"float32": 2e-5, "float64": 1e-12}


def _data(seed, dtype, row_scale, column_scale, n=6, d=12, m=3):
    rng = numpy.random.default_rng(seed)
    v = rng.standard_normal((n, d))
    if row_scale is None:
        v[0::2] *= 1e14
        v[1::2] *= 1e-14
    else:
        v *= row_scale
    x = rng.standard_normal((d, m)) * column_scale
    g = rng.standard_normal((d, m))
    return v.astype(dtype), x.astype(dtype), g.astype(dtype)


def _dense(v):
    """H = H(v_1) ... H(v_n) in float64, each reflection from its vector divided by its largest entry."""
    h = numpy.eye(v.shape[-1])
    for row in v.astype(numpy.float64):
        u = row / numpy.max(numpy.abs(row))
        h = h @ (numpy.eye(len(u)) - 2 * numpy.outer(u, u) / (u @ u))
    return h


def _relative(got, want):
    got = numpy.asarray(got, dtype=numpy.float64)
    assert numpy.all(numpy.isfinite(got)), "non-finite entries where the result is representable"
    unit = numpy.max(numpy.abs(want))
    return numpy.linalg.norm((got - want) / unit) / numpy.linalg.norm(want / unit)


@pytest.mark.parametrize("name,dtype,row_scale,column_scale", CASES, ids=[c[0] for c in CASES])
def test_products_far_from_one(generic_xp, name, dtype, row_scale, column_scale):
    v, x, _ = _data(0, dtype, row_scale, column_scale)
    h = ch.HouseholderProduct(generic_xp.asarray(v))
    dense = _dense(v)
    x64 = x.astype(numpy.float64)
    xs, xts = generic_xp.asarray(x), generic_xp.asarray(numpy.ascontiguousarray(x.T))
    assert _relative(ch.matmul(h, xs), dense @ x64) < TOL[dtype]
    assert _relative(ch.matmul(h.T, xs), dense.T @ x64) < TOL[dtype]
    assert _relative(ch.matmul(xts, h), x64.T @ dense) < TOL[dtype]


@pytest.mark.parametrize("name,dtype,row_scale,column_scale", CASES, ids=[c[0] for c in CASES])
def test_gradients_far_from_one(generic_xp, name, dtype, row_scale, column_scale):
    v, x, g = _data(1, dtype, row_scale, column_scale)
    out, back = ch.vjp(ch.matmul, ch.HouseholderProduct(generic_xp.asarray(v)), generic_xp.asarray(x))
    (dv,), dx = back(generic_xp.asarray(g))
    want_out, want_back = ch.vjp(ch.matmul, ch.HouseholderProduct(v.astype(numpy.float64)), x.astype(numpy.float64))
    (want_dv,), want_dx = want_back(g.astype(numpy.float64))
    assert _relative(out, want_out) < TOL[dtype]
    assert _relative(dx, want_dx) < TOL[dtype]
    assert _relative(dv, want_dv) < 10 * TOL[dtype]


def test_torch_autograd_far_from_one():
    torch = pytest.importorskip("torch")
    v, x, g = _data(2, "float32", 1e-12, 1e20)
    vt, xt = (torch.tensor(a, requires_grad=True) for a in (v, x))
    (ch.HouseholderProduct(vt) @ xt).backward(torch.tensor(g))
    _, back = ch.vjp(ch.matmul, ch.HouseholderProduct(v.astype(numpy.float64)), x.astype(numpy.float64))
    (want_dv,), want_dx = back(g.astype(numpy.float64))
    assert _relative(vt.grad, want_dv) < 2e-4
    assert _relative(xt.grad, want_dx) < 2e-5


def test_an_overflowing_result_is_inf_not_nan(generic_xp):
    """A column whose image overflows (its norm is past the dtype's largest value) gives inf, as
    the dense product would, and leaves the other columns exact."""
    v, x, _ = _data(3, "float32", 1.0, 1.0)
    x[:, 0] = 3e38
    with numpy.errstate(over="ignore"):  # array_api_strict computes in NumPy, which warns
        out = numpy.asarray(ch.matmul(ch.HouseholderProduct(generic_xp.asarray(v)), generic_xp.asarray(x)))
    assert numpy.any(numpy.isinf(out[:, 0]))
    assert numpy.all(numpy.isfinite(out[:, 1:]))
    assert not numpy.any(numpy.isnan(out))
    assert _relative(out[:, 1:], _dense(v) @ x[:, 1:].astype(numpy.float64)) < 2e-5


@pytest.mark.parametrize("n, d", [(8, 16), (100, 128)], ids=["one block", "two blocks"])
@pytest.mark.parametrize("entry", ["HouseholderProduct", "householder_matmul"])
def test_torch_autograd_near_the_largest_float(entry, n, d):
    """X at 1e37 in float32: the gradient (about 3e37) is representable, ten times below float32's
    largest value; unscaled, the forward's V^T X (two blocks) and the backward's bilinear terms
    overflowed to NaN on both torch entry points."""
    torch = pytest.importorskip("torch")
    from cuhouse import torch as cht

    rng = numpy.random.default_rng(4)
    v, x = rng.standard_normal((n, d)).astype("float32"), (1e37 * rng.standard_normal((d, 3))).astype("float32")
    vt, xt = (torch.tensor(a, requires_grad=True) for a in (v, x))
    out = ch.HouseholderProduct(vt) @ xt if entry == "HouseholderProduct" else cht.householder_matmul(vt, xt)
    out.backward(torch.ones_like(out))
    want_out, back = ch.vjp(ch.matmul, ch.HouseholderProduct(v.astype(numpy.float64)), x.astype(numpy.float64))
    (want_dv,), want_dx = back(numpy.ones(want_out.shape))
    assert numpy.max(numpy.abs(want_dv)) > 1e37
    assert _relative(out.detach(), want_out) < 2e-5
    assert _relative(vt.grad, want_dv) < 2e-4
    assert _relative(xt.grad, want_dx) < 2e-5
