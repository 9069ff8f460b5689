"""cuhouse.torch: forward and gradients against dense torch references, gradcheck, DLPack, errors, compile."""

import math
import subprocess
import sys

import numpy
import pytest

torch = pytest.importorskip("torch", reason="cuhouse.torch needs PyTorch: pip install 'cuhouse[torch]'")

import cuhouse.torch as cht  # noqa: E402
from cuhouse import _torch  # noqa: E402

TOL = {torch.float32: 2e-5, torch.float64: 1e-12}
DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float64, id="float64")]


def randn(*shape, dtype=torch.float64, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_(requires_grad)


def dense_householder(v):
    """H(v_1) ... H(v_n) by the rank-1 loop in torch (differentiable): the reference."""
    d = v.shape[-1]
    h = torch.eye(d, dtype=v.dtype).expand(v.shape[:-2] + (d, d))
    for i in range(v.shape[-2]):
        u = v[..., i, :] / v[..., i, :].norm(dim=-1, keepdim=True)
        h = h - 2 * (h @ u[..., :, None]) @ u[..., None, :]
    return h


def dense_svd_weight(layer):
    r = layer.rank
    u, v = dense_householder(layer.U_vectors), dense_householder(layer.V_vectors)
    return u[:, :r] * layer.s @ v[:, :r].T


def assert_close(a, b, dtype, scale=10):
    tol = scale * TOL[dtype]
    assert a.shape == b.shape
    err = (a - b).abs().max().item() / max(1.0, b.abs().max().item())
    assert err <= tol, err


def gradcheck_attribute(layer, attribute):
    """gradcheck of ``layer.<attribute>`` (a property, or a method taking no argument) w.r.t. its parameters."""

    class Read(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self):
            value = getattr(self.layer, attribute)
            return value() if callable(value) else value

    read = Read()
    names = ["layer." + name for name, _ in layer.named_parameters()]
    return torch.autograd.gradcheck(
        lambda *params: torch.func.functional_call(read, dict(zip(names, params)), ()), tuple(layer.parameters())
    )


def grads(out, inputs, seed=1):
    """Gradients of <out, G> for a fixed random G."""
    g = randn(*out.shape, dtype=out.dtype, seed=seed).to(out.device)
    return torch.autograd.grad(out, inputs, g)


# ------------------------------------------------------------ householder_matmul
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "v_shape, x_shape",
    [((5, 7), (7, 3)), ((2, 1, 5, 7), (3, 7, 4)), ((7, 7), (7,)), ((2, 3, 6), (6,)), ((4, 6), (2, 6, 1))],
)
@pytest.mark.parametrize("transpose", [False, True])
def test_householder_matmul_matches_dense(dtype, v_shape, x_shape, transpose):
    v = randn(*v_shape, dtype=dtype, requires_grad=True)
    x = randn(*x_shape, dtype=dtype, seed=2, requires_grad=True)
    h = dense_householder(v)
    h = h.mT if transpose else h
    expected = torch.matmul(h, x)
    out = cht.householder_matmul(v, x, transpose=transpose)
    assert out.dtype == dtype
    assert_close(out, expected, dtype)
    for got, want in zip(grads(out, (v, x)), grads(expected, (v, x))):
        assert_close(got, want, dtype, scale=100)


def test_householder_matmul_gradcheck():
    v = randn(2, 4, 6, requires_grad=True)
    x = randn(6, 3, seed=2, requires_grad=True)
    assert torch.autograd.gradcheck(cht.householder_matmul, (v, x))
    assert torch.autograd.gradcheck(lambda v, x: cht.householder_matmul(v, x, transpose=True), (v, x[:, 0]))


def test_non_contiguous_inputs():
    base_v = randn(6, 10, requires_grad=True)
    base_x = randn(3, 6, seed=2, requires_grad=True)
    v, x = base_v[1::2, :6], base_x.mT  # rows 1, 3, 5 of the first 6 columns; a transposed (6, 3)
    assert not v.is_contiguous() and not x.is_contiguous()
    out = cht.householder_matmul(v, x)
    expected = dense_householder(v.detach().contiguous()) @ x.detach().contiguous()
    assert_close(out, expected, torch.float64)
    out.sum().backward()
    assert base_v.grad.shape == base_v.shape and base_x.grad.shape == base_x.shape
    assert torch.autograd.gradcheck(cht.householder_matmul, (v, x))


def test_inputs_are_not_modified_and_requires_grad_is_kept():
    v = randn(4, 6, requires_grad=True)
    x = randn(6, 2, seed=2)
    v0, x0 = v.detach().clone(), x.clone()
    out = cht.householder_matmul(v, x)
    out.sum().backward()
    assert torch.equal(v.detach(), v0) and torch.equal(x, x0)
    assert out.requires_grad and x.grad is None and v.grad is not None


def test_without_grad_no_graph_is_recorded():
    v, x = randn(4, 6, requires_grad=True), randn(6, 2, seed=2)
    expected = dense_householder(v.detach()) @ x
    with torch.no_grad():
        out = cht.householder_matmul(v, x)
    assert out.grad_fn is None and not out.requires_grad
    assert_close(out, expected, torch.float64)
    out = cht.householder_matmul(v.detach(), x)
    assert out.grad_fn is None
    layer = cht.SVDLinear(6, 3, dtype=torch.float64)
    recorded = layer(x.T)
    with torch.no_grad():
        assert_close(layer(x.T), recorded.detach(), torch.float64)


def test_mixed_float_dtypes_promote_to_float64():
    v = randn(4, 6, dtype=torch.float32, requires_grad=True)
    x = randn(6, 2, seed=2, requires_grad=True)
    out = cht.householder_matmul(v, x)
    assert out.dtype == torch.float64
    out.sum().backward()
    assert v.grad.dtype == torch.float32 and x.grad.dtype == torch.float64


@pytest.mark.parametrize("check_finite", [True, False], ids=["checked (ranged)", "unchecked (scaled)"])
@pytest.mark.parametrize("block", [None, 2], ids=["one block", "blocks of 2"])
def test_in_place_change_before_backward_leaves_the_gradient_of_the_forward(monkeypatch, check_finite, block):
    """The Function saves its own copies (of the rows, scaled to their binades or not, and of X or of
    the product), so an in-place change of the caller's tensors after the forward cannot reach the
    backward: the gradient is the one of the values the forward used (as for torch's ``leaf * 2``)."""
    if block:
        monkeypatch.setattr(_torch, "BLOCK", block)
    v = randn(4, 6, requires_grad=True)
    x = randn(6, 2, seed=2, requires_grad=True)
    cht.householder_matmul(v * 1, x * 1, check_finite=check_finite).sum().backward()
    expected = v.grad.clone(), x.grad.clone()
    v.grad = x.grad = None
    leaf, xs = v * 1, x * 1
    out = cht.householder_matmul(leaf, xs, check_finite=check_finite)
    with torch.no_grad():
        leaf.add_(1)
        xs.add_(1)
    out.sum().backward()
    assert torch.equal(v.grad, expected[0]) and torch.equal(x.grad, expected[1])


def _at(scale, rows, dim):
    """``rows`` scaled so that the largest absolute entry along ``dim`` is exactly ``scale``."""
    return rows / rows.abs().amax(dim, keepdim=True) * scale


def test_check_rows_answers_whether_the_scalings_can_be_skipped():
    """``check_rows`` returns True exactly when every row's norm and every column's largest absolute
    entry is in [1/RANGE, RANGE]; zero columns, NaN in X, complex data and anything outside answer
    False (the product then scales); bad rows still raise."""
    from cuhouse.torch import ops

    edge = _torch.RANGE
    v, x = randn(3, 8), randn(8, 2, seed=2)
    axes = torch.eye(3, 8, dtype=torch.float64)  # rows whose norm is exactly their one entry
    assert ops.check_rows(v, "v", x) and ops.check_rows(v, "v", x[:, 0]) and not ops.check_rows(v, "v")
    assert ops.check_rows(edge * axes, "v", _at(1 / edge, x, -2))
    assert ops.check_rows(axes / edge, "v", _at(edge, x, -2))
    for rows in (2 * edge * axes, axes / (2 * edge), _at(edge, v, -1), _at(0.25 / edge, v, -1)):
        assert not ops.check_rows(rows, "v", x)  # a norm outside (above the largest entry by up to sqrt(d))
    for column in (0.0, 2 * edge, 0.5 / edge, math.nan, math.inf):
        bad = x.clone()
        bad[:, 1] = _at(column, bad[:, 1], 0) if column and math.isfinite(column) else column
        assert not ops.check_rows(v, "v", bad)
    assert not ops.check_rows(torch.complex(v, v), "v", x.to(torch.complex128))
    big = randn(300, 300)  # the rows' largest entries read in two passes (more than 2^16 entries)
    assert ops.check_rows(big, "v", randn(300, 2)) and not ops.check_rows(_at(2 * edge, big, -1), "v", randn(300, 2))
    assert not ops.check_rows(_at(1e30, big, -1).float(), "v", randn(300, 2).float())  # norms overflow: scaled
    v[1] = 0
    with pytest.raises(ValueError, match="row 1 is a zero vector"):
        ops.check_rows(v, "v", x)
    big[7] = math.nan
    with pytest.raises(ValueError, match="must be finite"):
        ops.check_rows(big, "v", randn(300, 2))


def _reviewed_inputs(case, dtype):
    """Issue 21's review of the check's host reads: rows ``(64, 128)`` and X ``(128, 8)``."""
    v, x = randn(64, 128, dtype=dtype), randn(128, 8, dtype=dtype, seed=2)
    if case == "a zero column of X":
        x[:, 3] = 0
    elif case == "X times 1e-6":
        x = x * 1e-6
    elif case == "rows times 1e-6":
        v = v * 1e-6
    return v, x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["in range", "a zero column of X", "X times 1e-6", "rows times 1e-6"])
def test_householder_matmul_reads_the_host_once(monkeypatch, dtype, case):
    """One host read per checked product (issue 21; counted by :class:`helpers.SyncCounter`), whether
    or not the rows and X are in range (the product then scales them), and none in the backward."""
    from helpers import SyncCounter

    v, x = _reviewed_inputs(case, dtype)
    modes = record_modes(monkeypatch)
    vt = v.clone().requires_grad_()
    with SyncCounter() as syncs:
        out = cht.householder_matmul(vt, x)
    assert syncs.count == 1
    outside = "scaled" if dtype == torch.float64 else "wide"  # one float32 block: in float64, unscaled
    assert modes == ["ranged" if case == "in range" else outside]
    assert_close(out.double(), dense_householder(v.double()) @ x.double(), dtype)
    with SyncCounter() as syncs:
        out.sum().backward()
    assert syncs.count == 0


@pytest.mark.parametrize("bad", [float("nan"), complex(1, float("nan"))])
def test_nan_rows_are_refused_after_the_one_host_read(bad):
    """A NaN makes its row's norm NaN: the one read already decides the ``ValueError``."""
    from helpers import SyncCounter

    v, x = _reviewed_inputs("in range", torch.float64)
    if isinstance(bad, complex):
        v, x = v.to(torch.complex128), x.to(torch.complex128)
    v[5, 7] = bad
    with SyncCounter() as syncs, pytest.raises(ValueError, match="^vectors must be finite; found NaN or Inf$"):
        cht.householder_matmul(v, x)
    assert syncs.count == 1


@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_rows_whose_squares_underflow_or_overflow_are_read_twice(scale):
    """float32 rows whose sum of squares underflows (1e-30) or overflows (1e30) have a norm of 0 or
    inf, which the one read cannot tell from a zero or an infinite row: a second read of their largest
    entries accepts them (the product scales them)."""
    from helpers import SyncCounter

    from cuhouse.torch import ops

    v, x = randn(4, 8), randn(8, 2, seed=2)
    v[2] *= scale
    with SyncCounter() as syncs:
        assert not ops.check_rows(v.float(), "v", x.float())
    assert syncs.count == 2


# (rows' norm, columns' largest entry, cotangent scale): near the edges of the range in which products
# skip the scalings (2^16 = RANGE), and outside it
FAR = [
    (2.0**-15.9, 2.0**16, 1e20),
    (2.0**15.9, 2.0**-16, 1e-20),
    (2.0**15.9, 2.0**16, 1e-20),
    (2.0**-15.9, 2.0**-16, 1e20),
    (1.0, 1.0, 1e36),
    (1e-12, 1e20, 1.0),
    (1e12, 1e-25, 1e10),
    (1e-14, 1e-30, 1e-3),
]


def record_modes(monkeypatch):
    """The ``mode`` of every eager :class:`cuhouse._torch.Matmul` application from now on (a list)."""
    modes, function = [], _torch._OlderMatmul

    class Recorder:
        @staticmethod
        def apply(*args):
            modes.append(args[-1])
            return function.apply(*args)

    monkeypatch.setattr(_torch, "_OlderMatmul", Recorder)
    return modes


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("block", [None, 16], ids=["one block", "blocks of 16"])
def test_float32_ranged_products_match_dense_float64(monkeypatch, transpose, block):
    """The ranged path in float32 (rows and X in range, read by the check; one block computed in
    float32 at n d (n + m) >= WIDE): product and gradients against the float64 dense reference."""
    if block:
        monkeypatch.setattr(_torch, "BLOCK", block)
    modes = record_modes(monkeypatch)
    v, x, g = randn(64, 64, requires_grad=True), randn(64, 64, seed=2, requires_grad=True), randn(64, 64, seed=3)
    v32, x32 = (t.detach().float().requires_grad_() for t in (v, x))
    out = cht.householder_matmul(v32, x32, transpose)
    assert modes == ["ranged"] and out.dtype == torch.float32
    h = dense_householder(v)
    want = (h.mT if transpose else h) @ x
    assert_close(out.double(), want, torch.float32)
    got_grads = torch.autograd.grad(out, (v32, x32), g.float())
    for got, ref in zip(got_grads, torch.autograd.grad(want, (v, x), g)):
        assert got.dtype == torch.float32
        assert_close(got.double(), ref, torch.float32, scale=100)


@pytest.mark.parametrize("rows, columns, cotangent", FAR)
@pytest.mark.parametrize("check_finite", [True, False], ids=["checked", "unchecked"])
@pytest.mark.parametrize("shape", [(5, 9, 3), (64, 64, 64)], ids=["small", "n = d = m = 64"])
@pytest.mark.parametrize("block", [None, 2], ids=["one block", "blocks of 2"])
def test_float32_products_and_gradients_far_from_one(monkeypatch, rows, columns, cotangent, check_finite, shape, block):
    """float32 ``householder_matmul`` and its gradients against NumPy's float64 ``vjp`` of the same
    (rounded) data, with rows, X's columns and the cotangent far from 1: unscaled where every row and
    column is in range (checked, :data:`cuhouse._torch.RANGE`; one small float32 block in float64,
    :data:`cuhouse._torch.WIDE`), scaled otherwise; never wrong."""
    import cuhouse

    if block:
        monkeypatch.setattr(_torch, "BLOCK", block)
    n, d, m = shape
    v = randn(n, d, seed=7)
    v = (v / v.norm(dim=-1, keepdim=True) * rows).float()
    x = _at(columns, randn(d, m, seed=8), -2).float()
    g = (cotangent * randn(d, m, seed=9)).float()
    inside = all(2.0**-16 <= s <= 2.0**16 for s in (rows, columns))
    expected = "ranged" if check_finite and inside else "scaled"
    if not block:
        expected = "ranged" if expected == "ranged" and n * d * (n + m) >= _torch.WIDE else "wide"
    modes = record_modes(monkeypatch)
    vt, xt = v.clone().requires_grad_(), x.clone().requires_grad_()
    for transpose in (False, True):
        vt.grad = xt.grad = None
        out = cht.householder_matmul(vt, xt, transpose, check_finite=check_finite)
        assert modes[-1] == expected
        out.backward(g)
        h = cuhouse.HouseholderProduct(v.double().numpy())
        want, back = cuhouse.vjp(cuhouse.matmul, h.T if transpose else h, x.double().numpy())
        (want_dv,), want_dx = back(g.double().numpy())
        for got, ref in ((out, want), (vt.grad, want_dv), (xt.grad, want_dx)):
            ref = torch.from_numpy(numpy.asarray(ref))
            assert got.dtype == torch.float32 and bool(torch.isfinite(got).all())
            err = ((got.double() - ref).norm() / ref.norm()).item()
            assert err < 1e-5, (transpose, err)


# ------------------------------------------------------------- torch only
def test_no_crossing_to_numpy_meta_tensors_run():
    """Only torch operations: meta tensors (no data, so nothing could cross to NumPy) give the right shapes."""
    v = torch.empty(2, 70, 80, device="meta", requires_grad=True)
    x = torch.empty(80, 3, device="meta")
    out = cht.householder_matmul(v, x)
    assert out.shape == (2, 80, 3) and out.device.type == "meta"
    (dv,) = torch.autograd.grad(out.sum(), v)
    assert dv.shape == v.shape


# ----------------------------------------------------------------- bad input
@pytest.mark.parametrize("bad_dtype", [torch.int64, torch.bfloat16, torch.float16, torch.complex32])
def test_unsupported_dtype_of_vectors(bad_dtype):
    v = torch.ones(3, 5, dtype=bad_dtype)
    with pytest.raises(
        TypeError,
        match=r"vectors has dtype torch\.{}; supported dtypes are torch\.float32, "
        r"torch\.float64, torch\.complex64 and torch\.complex128".format(str(bad_dtype).split(".")[1]),
    ):
        cht.householder_matmul(v, randn(5, 2))


@pytest.mark.parametrize("bad_dtype", [torch.int32, torch.bfloat16])
def test_unsupported_dtype_of_x(bad_dtype):
    with pytest.raises(TypeError, match=r"X has dtype torch\.{}".format(str(bad_dtype).split(".")[1])):
        cht.householder_matmul(randn(3, 5), torch.ones(5, 2, dtype=bad_dtype))


def test_not_a_tensor():
    with pytest.raises(TypeError, match="X must be a torch.Tensor, got ndarray"):
        cht.householder_matmul(randn(3, 5), numpy.ones((5, 2)))


def test_wrong_shape_of_x():
    with pytest.raises(
        ValueError,
        match=r"X has shape \(4, 2\) but the operator is 5x5: expected "
        r"\(d,\) or \(\.\.\., d, m\) with d=5",
    ):
        cht.householder_matmul(randn(3, 5), randn(4, 2))


def test_scalar_x():
    with pytest.raises(ValueError, match="X must have at least one dimension"):
        cht.householder_matmul(randn(3, 5), torch.tensor(1.0, dtype=torch.float64))


@pytest.mark.parametrize("shape", [(5,), (6, 5), (0, 5)])
def test_wrong_shape_of_vectors(shape):
    with pytest.raises(ValueError, match=r"vectors must have shape \(\.\.\., n, d\)"):
        cht.householder_matmul(torch.ones(shape, dtype=torch.float64), randn(5, 2))


def test_batch_shapes_that_do_not_broadcast():
    with pytest.raises(ValueError, match=r"the batch shapes of the operator \(2,\) and X \(3,\) do not broadcast"):
        cht.householder_matmul(randn(2, 3, 5), randn(3, 5, 2))


def test_zero_vector_is_cuhouse_s_value_error():
    v = randn(3, 5)
    v[1] = 0
    with pytest.raises(ValueError, match="row 1 is a zero vector"):
        cht.householder_matmul(v, randn(5, 2))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_vectors_are_a_value_error(bad):
    v = randn(3, 5)
    v[2, 1] = bad
    with pytest.raises(ValueError, match="vectors must be finite; found NaN or Inf"):
        cht.householder_matmul(v, randn(5, 2))


def test_complex_zero_vector_is_a_value_error():
    v = torch.complex(randn(3, 5), randn(3, 5, seed=1))
    v[0] = 0
    with pytest.raises(ValueError, match="row 0 is a zero vector"):
        cht.householder_matmul(v, randn(5, 2))


def test_tiny_vectors_pass_the_check_and_are_exact():
    """A float32 row whose squared norm underflows (1e-30) is a valid reflection: accepted, and the
    product agrees with float64's."""
    v = randn(3, 5)
    v[1] *= 1e-30
    x = randn(5, 2, seed=2)
    assert_close(cht.householder_matmul(v.float(), x.float()).double(), dense_householder(v) @ x, torch.float32)


def test_mixed_devices():
    with pytest.raises(TypeError, match=r"X is on cpu but vectors is on meta; .*move one with \.to\(device\)"):
        cht.householder_matmul(torch.ones(3, 5, device="meta", dtype=torch.float64), randn(5, 2))


# ------------------------------------------------------------------- SVDLinear
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("in_features, out_features", [(6, 6), (7, 4), (4, 7)])
@pytest.mark.parametrize("x_shape", [(), (5,), (2, 3)])
def test_svd_linear_matches_dense(dtype, in_features, out_features, x_shape):
    torch.manual_seed(0)
    layer = cht.SVDLinear(in_features, out_features, dtype=dtype)
    x = randn(*x_shape, in_features, dtype=dtype, seed=3, requires_grad=True)
    weight = dense_svd_weight(layer)
    expected = x @ weight.T + layer.bias
    out = layer(x)
    assert out.shape == x_shape + (out_features,) and out.dtype == dtype
    assert_close(out, expected, dtype)
    assert_close(layer.weight, weight, dtype)
    inputs = (x,) + tuple(layer.parameters())
    for got, want in zip(grads(out, inputs), grads(expected, inputs)):
        assert_close(got, want, dtype, scale=100)


def test_svd_linear_parameters_and_initialization():
    torch.manual_seed(0)
    layer = cht.SVDLinear(5, 3)
    assert dict((n, tuple(p.shape)) for n, p in layer.named_parameters()) == {
        "U_vectors": (3, 3),
        "s": (3,),
        "V_vectors": (3, 5),
        "bias": (3,),
    }
    assert bool(((layer.s >= 0.9) & (layer.s <= 1.1)).all())
    assert cht.SVDLinear(5, 3, bias=False).bias is None
    assert cht.SVDLinear(5, 3, dtype=torch.float64).s.dtype == torch.float64
    assert "rank=3" in repr(layer)


def test_svd_linear_gradcheck():
    torch.manual_seed(0)
    layer = cht.SVDLinear(5, 4, dtype=torch.float64)
    x = randn(3, 5, seed=3, requires_grad=True)
    names = [n for n, _ in layer.named_parameters()]

    def forward(x, *params):
        return torch.func.functional_call(layer, dict(zip(names, params)), (x,))

    assert torch.autograd.gradcheck(forward, (x,) + tuple(layer.parameters()))
    assert gradcheck_attribute(layer, "weight")


def test_svd_linear_logdet():
    torch.manual_seed(0)
    layer = cht.SVDLinear(6, 6, dtype=torch.float64)
    with torch.no_grad():
        layer.s[0] = -1.5
    assert_close(layer.logdet(), torch.linalg.slogdet(layer.weight)[1], torch.float64)
    assert gradcheck_attribute(layer, "logdet")
    (ds,) = torch.autograd.grad(layer.logdet(), layer.s)
    assert_close(ds, 1 / layer.s.detach(), torch.float64)
    with pytest.raises(ValueError, match="logdet needs a square layer, but this SVDLinear is 6 -> 4"):
        cht.SVDLinear(6, 4).logdet()


def test_svd_linear_bad_input():
    layer = cht.SVDLinear(5, 3)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 5\), got shape \(2, 4\)"):
        layer(torch.ones(2, 4))
    with pytest.raises(TypeError, match=r"x has dtype torch\.int64"):
        layer(torch.ones(2, 5, dtype=torch.int64))
    with pytest.raises(TypeError, match="dtype must be torch.float32 or torch.float64, got torch.bfloat16"):
        cht.SVDLinear(5, 3, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="in_features must be a positive int, got 0"):
        cht.SVDLinear(0, 3)


# ------------------------------------------------------------------- Orthogonal
@pytest.mark.parametrize("dtype", DTYPES)
def test_orthogonal_layer_matches_dense(dtype):
    torch.manual_seed(0)
    layer = cht.Orthogonal(6, n_reflections=4, bias=True, dtype=dtype)
    x = randn(2, 3, 6, dtype=dtype, seed=3, requires_grad=True)
    h = dense_householder(layer.vectors)
    expected = x @ h.T + layer.bias
    out = layer(x)
    assert_close(out, expected, dtype)
    assert_close(layer.weight, h, dtype)
    assert_close(layer.weight @ layer.weight.T, torch.eye(6, dtype=dtype), dtype)
    inputs = (x, layer.vectors, layer.bias)
    for got, want in zip(grads(out, inputs), grads(expected, inputs)):
        assert_close(got, want, dtype, scale=100)


def test_orthogonal_layer_gradcheck_and_errors():
    torch.manual_seed(0)
    layer = cht.Orthogonal(5, dtype=torch.float64)
    assert layer.vectors.shape == (5, 5) and layer.bias is None
    x = randn(4, 5, seed=3, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, v: torch.func.functional_call(layer, {"vectors": v}, (x,)), (x, layer.vectors)
    )
    assert gradcheck_attribute(layer, "weight")
    with pytest.raises(ValueError, match="n_reflections must be at most features = 5, got 6"):
        cht.Orthogonal(5, n_reflections=6)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 5\), got shape \(3,\)"):
        layer(torch.ones(3, dtype=torch.float64))


# ----------------------------------------------------- orthogonal(parametrization)
@pytest.mark.parametrize("shape", [(6, 6), (7, 4), (4, 7)])
def test_orthogonal_parametrization_is_the_q_of_the_weight(shape):
    rows, cols = shape
    torch.manual_seed(0)
    linear = torch.nn.Linear(cols, rows, dtype=torch.float64)
    w = linear.weight.detach().clone()
    cht.orthogonal(linear)
    a = w if rows >= cols else w.T
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r))
    assert_close(linear.weight, q if rows >= cols else q.T, torch.float64, scale=1000)
    k = min(shape)
    original = linear.parametrizations.weight.original
    assert (
        original.shape == shape
    )  # the weight's own shape: remove_parametrizations(leave_parametrized=False) keeps a working layer
    eye = torch.eye(k, dtype=torch.float64)
    semi = linear.weight.T @ linear.weight if rows >= cols else linear.weight @ linear.weight.T
    assert_close(semi, eye, torch.float64)
    x = randn(3, cols, seed=4)
    assert torch.autograd.gradcheck(lambda o: linear.parametrizations.weight[0](o), (original,))
    linear(x).sum().backward()
    assert original.grad is not None and original.grad.shape == original.shape


def test_orthogonal_parametrization_keeps_an_orthogonal_weight():
    q, _ = torch.linalg.qr(randn(5, 5))
    linear = torch.nn.Linear(5, 5, bias=False, dtype=torch.float64)
    with torch.no_grad():
        linear.weight.copy_(q)
    cht.orthogonal(linear)
    assert_close(linear.weight, q, torch.float64, scale=100)


@pytest.mark.parametrize("n", [2, 5])
def test_orthogonal_parametrization_n_reflections(n):
    torch.manual_seed(0)
    linear = torch.nn.Linear(3, 5, dtype=torch.float64)  # weight (5, 3): k = 3
    w = linear.weight.detach().clone()
    cht.orthogonal(linear, n_reflections=n)
    assert linear.parametrizations.weight.original.shape == (n, 5)
    q, r = torch.linalg.qr(w)
    q = q * torch.sign(torch.diagonal(r))
    m = min(n, 3)
    assert_close(linear.weight[:, :m], q[:, :m], torch.float64, scale=1000)


def test_orthogonal_parametrization_training_step():
    torch.manual_seed(0)
    linear = cht.orthogonal(torch.nn.Linear(4, 4))
    opt = torch.optim.SGD(linear.parameters(), lr=0.1)
    x = torch.randn(8, 4)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = (linear(x) - x.flip(-1)).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert_close(linear.weight @ linear.weight.T, torch.eye(4), torch.float32)


def test_orthogonal_parametrization_errors():
    with pytest.raises(ValueError, match="orthogonal needs a tensor module.missing, got None"):
        cht.orthogonal(torch.nn.Linear(3, 3), name="missing")
    with pytest.raises(
        ValueError, match=r"n_reflections must be at most max\(rows, cols\) = 3 of the 3x3 matrices, got 4"
    ):
        cht.orthogonal(torch.nn.Linear(3, 3), n_reflections=4)
    with pytest.raises(
        ValueError, match=r"orthogonal needs module.bias to have at least 2 dimensions .* got shape \(3,\)"
    ):
        cht.orthogonal(torch.nn.Linear(3, 3), name="bias")
    with pytest.raises(TypeError, match=r"module.weight has dtype torch.float16; supported dtypes are"):
        cht.orthogonal(torch.nn.Linear(3, 3, dtype=torch.float16))


# ------------------------------------------------------------- torch.compile
class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.svd = cht.SVDLinear(6, 5)
        self.orth = cht.Orthogonal(5, bias=True)
        self.linear = cht.orthogonal(torch.nn.Linear(5, 3))

    def forward(self, x):
        return self.linear(torch.tanh(self.orth(self.svd(x))))


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compile_fullgraph(backend):
    """fullgraph=True: the fake implementations and AOT autograd (aot_eager), and the default
    backend inductor, which builds C++ on the CPU (about 10 s)."""
    torch.manual_seed(0)
    model = _Model()
    x = torch.randn(4, 2, 6)
    out = torch.compile(model, fullgraph=True, backend=backend)(x)
    out.square().sum().backward()
    compiled_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    expected = model(x)
    expected.square().sum().backward()
    assert_close(out, expected, torch.float32)
    for got, p in zip(compiled_grads, model.parameters()):
        assert_close(got, p.grad, torch.float32)


def test_export():
    torch.manual_seed(0)
    model = _Model()
    x = torch.randn(4, 6)
    exported = torch.export.export(model, (x,))
    targets = {str(node.target) for node in exported.graph.nodes}
    assert "aten.linalg_solve_triangular.default" in targets  # the T factors, traced as torch ops
    assert_close(exported.module()(x), model(x), torch.float32)


# ------------------------------------------------------------------- imports
def test_import_cuhouse_does_not_import_torch():
    code = "import sys, cuhouse; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_import_without_torch_says_how_to_install():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "try:\n    import cuhouse.torch\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert 'pip install "cuhouse[torch]"' in out


def test_a_torch_without_the_private_functorch_probes_takes_the_forms_valid_everywhere(monkeypatch):
    """cuhouse asks torch._C whether a torch.func transform is active or wraps a tensor (private
    probes of torch 2.4-2.13); where they are missing, products, gradients and orthogonal()'s step
    run the setup_context Function and out-of-place operations, with the same values."""
    import cuhouse
    import cuhouse._torch

    torch.manual_seed(0)
    v, x = randn(6, 8, requires_grad=True), randn(8, 3, seed=2, requires_grad=True)
    layer = cht.orthogonal(torch.nn.Linear(8, 8, dtype=torch.float64))

    def run():
        out = cht.householder_matmul(v, x) + cuhouse.HouseholderProduct(v) @ x + layer(x.T).T[:, :3]
        return (out, *torch.autograd.grad(out.square().sum(), (v, x, layer.parametrizations.weight.original)))

    expected = run()
    monkeypatch.setattr(cuhouse._torch, "_TRANSFORMS_ACTIVE", None)
    monkeypatch.delattr(torch._C._functorch, "is_functorch_wrapped_tensor")
    assert not cuhouse._torch.eager()
    for got, want in zip(run(), expected):
        assert_close(got, want, torch.float64)
