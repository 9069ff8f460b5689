"""cuhouse.torch under torch's transforms: gradgradcheck, gradient penalties, vmap, grad, jacrev, compile.

Every case runs with the default block size and with blocks of 2 reflections
(``blocks`` fixture), so that cuhouse's ``torch.autograd.Function`` with its
level-3 backward (``cuhouse._torch.Matmul``) runs with one block and with many
at small sizes.
"""

import pytest

torch = pytest.importorskip("torch", reason="cuhouse.torch needs PyTorch: pip install 'cuhouse[torch]'")

from test_torch import assert_close, dense_householder, dense_svd_weight, randn  # noqa: E402

import cuhouse.torch as cht  # noqa: E402
from cuhouse import _torch  # noqa: E402
from cuhouse.torch import _columns  # noqa: E402


@pytest.fixture(params=["default", "blocks of 2"])
def blocks(request, monkeypatch):
    """Run the test with the default block size, then with 2 reflections per block (many blocks), and
    orthogonal()'s weight through :mod:`cuhouse.torch._columns` in blocks of 1 wherever its cost rule
    picks it (by default one block up to 128 reflections)."""
    if request.param != "default":
        monkeypatch.setattr(_torch, "BLOCK", 2)
        monkeypatch.setattr(_columns, "BLOCK", 1)
        monkeypatch.setattr(_columns, "ONE_BLOCK", 0)
    return request.param


class _Call(torch.nn.Module):
    """``layer.<attribute>`` (a property, or a method called with ``args``) as a module's forward."""

    def __init__(self, layer, attribute):
        super().__init__()
        self.layer, self.attribute = layer, attribute

    def forward(self, *args):
        value = getattr(self.layer, self.attribute)
        return value(*args) if callable(value) else value


def as_function(layer, attribute="forward"):
    """``(f, params)``: ``f(*args, *params)`` evaluates ``layer.<attribute>(*args)`` at ``params``."""
    call = _Call(layer, attribute)
    names = [name for name, _ in call.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in call.parameters())

    def f(*args):
        n = len(args) - len(params)
        return torch.func.functional_call(call, dict(zip(names, args[n:])), args[:n])

    return f, params


# ------------------------------------------------------------- gradgradcheck
@pytest.mark.parametrize(
    "v_shape, x_shape, transpose",
    [((3, 4), (4, 2), False), ((2, 1, 3, 4), (2, 4, 1), True), ((3, 4), (4,), True)],
)
@pytest.mark.parametrize("check_finite", [True, False], ids=["checked (ranged)", "unchecked (scaled)"])
def test_householder_matmul_gradgradcheck(blocks, v_shape, x_shape, transpose, check_finite):
    v = randn(*v_shape, requires_grad=True)
    x = randn(*x_shape, seed=2, requires_grad=True)

    def f(v, x):
        return cht.householder_matmul(v, x, transpose=transpose, check_finite=check_finite)

    assert torch.autograd.gradcheck(f, (v, x))
    assert torch.autograd.gradgradcheck(f, (v, x))


@pytest.mark.parametrize("transpose", [False, True])
def test_exactly_orthogonal_rows_differentiate_to_second_order(blocks, transpose):
    """Rows with exactly zero Gram entries (axis-aligned vectors): dS/dG is the mask there too. A
    ``where(G == 0, ...)`` in the T factors' build cut that derivative: the float32 one-block
    gradient was wrong by 5.6 (of 6.1) and gradgradcheck failed in float64, with no error."""
    v = torch.zeros(3, 5, dtype=torch.float64)
    v[0, 0], v[1, 1], v[2, 2] = 1.0, 2.0, 1.5
    v.requires_grad_()
    x = randn(5, 2, seed=2, requires_grad=True)

    def f(v, x):
        return cht.householder_matmul(v, x, transpose=transpose)

    assert torch.autograd.gradcheck(f, (v, x))
    assert torch.autograd.gradgradcheck(f, (v, x))
    w = randn(5, 2, seed=3)
    want = torch.autograd.grad((dense_householder(v).mT if transpose else dense_householder(v)) @ x, v, w)[0]
    v32 = v.detach().float().requires_grad_()
    got = torch.autograd.grad(f(v32, x.detach().float()), v32, w.float())[0]
    assert_close(got.double(), want, torch.float32)


LAYERS = {
    "SVDLinear": lambda: cht.SVDLinear(3, 2, dtype=torch.float64),
    "SVDLinear wide": lambda: cht.SVDLinear(2, 3, dtype=torch.float64),
    "Orthogonal": lambda: cht.Orthogonal(3, n_reflections=3, bias=True, dtype=torch.float64),
    "orthogonal(Linear) tall": lambda: cht.orthogonal(torch.nn.Linear(2, 4, dtype=torch.float64)),
    "orthogonal(Linear) wide": lambda: cht.orthogonal(torch.nn.Linear(4, 2, dtype=torch.float64)),
}


@pytest.mark.parametrize("name", LAYERS)
def test_layer_gradgradcheck(blocks, name):
    torch.manual_seed(0)
    layer = LAYERS[name]()
    f, params = as_function(layer)
    x = randn(1, layer.weight.shape[1], seed=3, requires_grad=True)
    assert torch.autograd.gradcheck(f, (x,) + params)
    assert torch.autograd.gradgradcheck(f, (x,) + params)
    weight, params = as_function(layer, "weight")
    assert torch.autograd.gradgradcheck(weight, params)


@pytest.mark.parametrize("attribute", ["forward", "inverse", "weight", "logdet"])
def test_svd_conv_gradgradcheck(blocks, attribute):
    torch.manual_seed(0)
    layer = cht.SVDConv1x1(2, dtype=torch.float64)
    with torch.no_grad():
        layer.s.copy_(torch.tensor([1.3, -0.7]))
    f, params = as_function(layer, attribute)
    args = (randn(1, 2, 2, 1, seed=3, requires_grad=True),) if attribute in ("forward", "inverse") else ()
    assert torch.autograd.gradcheck(f, args + params)
    assert torch.autograd.gradgradcheck(f, args + params)


def test_orthogonal_parametrization_of_a_conv_gradgradcheck(blocks):
    torch.manual_seed(0)
    conv = cht.orthogonal(torch.nn.Conv1d(2, 2, 2, groups=2, bias=False, dtype=torch.float64))
    f, params = as_function(conv)
    x = randn(1, 2, 3, seed=3, requires_grad=True)
    assert torch.autograd.gradgradcheck(f, (x,) + params)


# ---------------------------------------------------- gradient penalties
def central_difference(fn, params, eps=1e-6):
    """d fn / d params by central differences, one entry at a time (float64)."""
    grads = []
    for p in params:
        g = torch.zeros_like(p)
        flat = p.detach().view(-1)
        for i in range(flat.numel()):
            old = flat[i].item()
            flat[i] = old + eps
            plus = fn().item()
            flat[i] = old - eps
            minus = fn().item()
            flat[i] = old
            g.view(-1)[i] = (plus - minus) / (2 * eps)
        grads.append(g)
    return grads


PENALIZED = {
    "SVDLinear": lambda: cht.SVDLinear(3, 2, dtype=torch.float64),
    "Orthogonal": lambda: cht.Orthogonal(3, bias=True, dtype=torch.float64),
    "orthogonal()": lambda: cht.orthogonal(torch.nn.Linear(3, 2, dtype=torch.float64)),
    "SVDConv1x1": lambda: cht.SVDConv1x1(3, dtype=torch.float64),
}


@pytest.mark.parametrize("name", PENALIZED)
def test_gradient_penalty_against_finite_differences(blocks, name):
    """penalty(theta) = || d/dx sum(tanh(layer(x))) ||^2, differentiated with create_graph=True."""
    torch.manual_seed(0)
    layer = PENALIZED[name]()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    shape = (2, 3, 2, 1) if name == "SVDConv1x1" else (2, 3)
    x = randn(*shape, seed=5, requires_grad=True)
    params = [p for p in layer.parameters()]

    def penalty(create_graph):
        (dx,) = torch.autograd.grad(torch.tanh(layer(x)).sum(), x, create_graph=create_graph)
        return dx.square().sum()

    got = torch.autograd.grad(penalty(True), params)
    expected = central_difference(lambda: penalty(False), params)
    for g, e in zip(got, expected):
        assert (g - e).abs().max().item() <= 1e-6 * max(1.0, e.abs().max().item()), (g, e)


# -------------------------------------------------------------- torch.func
@pytest.mark.parametrize("in_dims", [(0, None), (None, 0), (0, 0), (1, 2)])
@pytest.mark.parametrize("transpose", [False, True])
def test_vmap_against_a_loop(blocks, in_dims, transpose):
    v = randn(3, 5, 6) if in_dims[0] == 0 else randn(5, 3, 6) if in_dims[0] == 1 else randn(5, 6)
    x = randn(3, 6, 2, seed=2) if in_dims[1] == 0 else randn(6, 2, 3, seed=2) if in_dims[1] == 2 else randn(6, 2)

    def f(v, x):
        return cht.householder_matmul(v, x, transpose=transpose)

    out = torch.func.vmap(f, in_dims=in_dims)(v, x)
    loop = torch.stack(
        [
            f(
                v if in_dims[0] is None else v.select(in_dims[0], i),
                x if in_dims[1] is None else x.select(in_dims[1], i),
            )
            for i in range(3)
        ]
    )
    assert_close(out, loop, torch.float64)


def test_vmap_of_grad_against_a_loop(blocks):
    v, x = randn(3, 4, 6, requires_grad=True), randn(6, 2, seed=2)

    def loss(v):
        return cht.householder_matmul(v, x).sin().sum()

    batched = torch.func.vmap(torch.func.grad(loss))(v)
    loop = torch.stack([torch.autograd.grad(loss(vi), vi)[0] for vi in v.detach().clone().requires_grad_()])
    assert_close(batched, loop, torch.float64)


def test_grad_and_jacrev_against_dense(blocks):
    v, x = randn(4, 5), randn(5, 3, seed=2)

    def f(v):
        return cht.householder_matmul(v, x)

    def dense(v):
        return dense_householder(v) @ x

    assert_close(torch.func.jacrev(f)(v), torch.func.jacrev(dense)(v), torch.float64, scale=100)
    g = torch.func.grad(lambda v: f(v).square().sum())(v)
    assert_close(g, torch.func.grad(lambda v: dense(v).square().sum())(v), torch.float64, scale=100)
    hessian = torch.func.jacrev(torch.func.jacrev(lambda v: f(v).sin().sum()))(v)
    expected = torch.func.jacrev(torch.func.jacrev(lambda v: dense(v).sin().sum()))(v)
    assert_close(hessian, expected, torch.float64, scale=1000)


def test_vmap_over_an_ensemble_of_layers(blocks):
    """torch.func.stack_module_state + vmap: a batch of SVDLinear layers against a loop."""
    torch.manual_seed(0)
    layers = [cht.SVDLinear(5, 3, dtype=torch.float64) for _ in range(3)]
    params, buffers = torch.func.stack_module_state(layers)
    x = randn(4, 5, seed=3)

    def call(params, buffers):
        return torch.func.functional_call(layers[0], (params, buffers), (x,))

    out = torch.func.vmap(call)(params, buffers)
    assert_close(out, torch.stack([layer(x) for layer in layers]), torch.float64)
    assert_close(layers[1].weight, dense_svd_weight(layers[1]), torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("transpose", [False, True])
def test_forward_mode_of_one_block_and_refused_for_many(blocks, dtype, transpose):
    """Forward-mode AD (jvp, jacfwd): the Function's rule for one block (4 reflections at the default
    block size) agrees with central differences in float64 and jacfwd with jacrev; with blocks of 2
    (many blocks) it is a loud error naming jvp."""
    v, x = randn(4, 5, dtype=dtype), randn(5, 2, seed=2, dtype=dtype)
    tv, tx = randn(4, 5, seed=3, dtype=dtype), randn(5, 2, seed=4, dtype=dtype)

    def f(v, x):
        return cht.householder_matmul(v, x, transpose=transpose)

    if blocks != "default":
        with pytest.raises(NotImplementedError, match="jvp"):
            torch.func.jvp(f, (v, x), (tv, tx))
        return
    out, tangent = torch.func.jvp(f, (v, x), (tv, tx))
    assert tangent.dtype == dtype
    v64, x64, h = v.double(), x.double(), 1e-6
    want = (f(v64 + h * tv.double(), x64 + h * tx.double()) - f(v64 - h * tv.double(), x64 - h * tx.double())) / (2 * h)
    assert_close(tangent.double(), want, torch.float32 if dtype == torch.float32 else torch.float64, scale=1e3)
    assert_close(out, f(v, x), dtype)
    assert_close(torch.func.jacfwd(lambda v: f(v, x))(v), torch.func.jacrev(lambda v: f(v, x))(v), dtype)


def _graph_nodes(tensor):
    """The names of the autograd nodes behind ``tensor``."""
    names, stack = set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and type(node).__name__ not in names:
            names.add(type(node).__name__)
            stack.extend(next_node for next_node, _ in node.next_functions)
    return names


@pytest.mark.parametrize("transpose", [False, True])
def test_eager_calls_use_the_older_function_form_with_the_same_results(blocks, transpose):
    """Plain eager calls go through ``_torch._OlderMatmul`` (autograd's older Function form: no argument
    binding per call); under a torch.func transform ``ForwardModeMatmul`` (the ``setup_context`` form those
    need): same bits, same gradients to second order, and in eager the same forward-mode tangent for
    one block (dual tensors) and the same refusal for many."""
    seen = []
    torch.func.vmap(lambda x: seen.append(_torch.eager()) or x)(torch.ones(2))
    assert _torch.eager() and seen == [False]
    v, x = randn(4, 5, requires_grad=True), randn(5, 2, seed=2, requires_grad=True)
    weight = randn(5, 2, seed=3)
    assert "_OlderMatmulBackward" in _graph_nodes(cht.householder_matmul(v, x, transpose=transpose))
    k = _torch.default_block_size(4, 5, 2)  # 4 (one block) or 2 (blocks of 2)
    assert k == (4 if blocks == "default" else 2)
    results = []
    for form in (_torch._OlderMatmul, _torch.ForwardModeMatmul):
        out = form.apply(v, x, None, transpose, k, "cwy", False, "scaled")[0]
        first = torch.autograd.grad((out * weight).sin().sum(), (v, x), create_graph=True)
        second = torch.autograd.grad(sum((g * g).sum() for g in first), (v, x))
        results.append((out.detach(), *(g.detach() for g in first), *second))
    for got, want in zip(*results):
        assert torch.equal(got, want)
    assert_close(
        results[0][0],
        (dense_householder(v.detach()).mT if transpose else dense_householder(v.detach())) @ x.detach(),
        torch.float64,
    )
    tv, tx = randn(4, 5, seed=4), randn(5, 2, seed=5)

    def f(form, v, x):
        return form.apply(v, x, None, transpose, k, "cwy", False, "scaled")[0]

    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual
        if blocks != "default":
            with pytest.raises(NotImplementedError, match="jvp"):
                f(_torch._OlderMatmul, dual(v.detach(), tv), dual(x.detach(), tx))
            return
        tangent = torch.autograd.forward_ad.unpack_dual(
            f(_torch._OlderMatmul, dual(v.detach(), tv), dual(x.detach(), tx))
        ).tangent
    _, want = torch.func.jvp(lambda v, x: f(_torch.ForwardModeMatmul, v, x), (v.detach(), x.detach()), (tv, tx))
    assert torch.equal(tangent, want)


# ------------------------------------------------------------ compile, export
def test_compiled_backward_does_not_recompute_the_forward(monkeypatch):
    """Many blocks (the Function): AOT autograd's backward graph has no triangular solve, the T
    factors are saved from the forward."""
    monkeypatch.setattr(_torch, "BLOCK", 2)
    graphs = {}

    def capture(kind):
        def compiler(graph, example_inputs):
            graphs[kind] = graph
            return graph.forward

        return compiler

    from torch._dynamo.backends.common import aot_autograd

    backend = aot_autograd(fw_compiler=capture("forward"), bw_compiler=capture("backward"))
    v = randn(6, 8, requires_grad=True)
    x = randn(8, 3, seed=2, requires_grad=True)
    out = torch.compile(lambda v, x: cht.householder_matmul(v, x), fullgraph=True, backend=backend)(v, x)
    out.sum().backward()
    ops = [str(node.target) for node in graphs["backward"].graph.nodes if node.op == "call_function"]
    assert "aten.mm.default" in ops and not any("solve_triangular" in op for op in ops), ops
    assert_close(v.grad, torch.autograd.grad(cht.householder_matmul(v, x).sum(), v)[0], torch.float64)


@pytest.mark.parametrize("name", ["SVDLinear", "Orthogonal", "orthogonal()", "SVDConv1x1"])
def test_export_of_each_layer(name):
    torch.manual_seed(0)
    layer = PENALIZED[name]()
    x = randn(*((2, 3, 3, 3) if name == "SVDConv1x1" else (2, 3)), seed=3)
    exported = torch.export.export(layer, (x,))
    assert_close(exported.module()(x), layer(x), torch.float64)


@pytest.mark.parametrize("transpose", [False, True])
def test_trapezoidal_blocks_skip_only_rows_they_cannot_touch(monkeypatch, transpose):
    """The layout orthogonal() uses (row i zero before column i): the same products and gradients
    as the full-length path, with blocks of 2 so that later blocks skip rows."""
    monkeypatch.setattr(_torch, "BLOCK", 2)
    v = randn(5, 7, requires_grad=True)
    x = randn(2, 7, 3, seed=2, requires_grad=True)

    def f(v, x, trapezoidal):
        return _torch.matmul(torch.triu(v), x, transpose, trapezoidal=trapezoidal)

    assert_close(f(v, x, True), f(v, x, False), torch.float64)
    for got, want in zip(
        torch.autograd.grad(f(v, x, True).sin().sum(), (v, x)), torch.autograd.grad(f(v, x, False).sin().sum(), (v, x))
    ):
        assert_close(got, want, torch.float64)
    assert torch.autograd.gradgradcheck(lambda v, x: f(v, x, True), (v[:3, :4], x[0, :4, :1]))


@pytest.mark.parametrize("check_finite", [True, False], ids=["checked (float32)", "unchecked (float64)"])
def test_float32_one_block_differentiates_twice_as_float64(check_finite):
    """One float32 block is computed in float32 where the check found every row and column in range,
    else in float64 by the Function's one-block rule; a gradient penalty through it (second order)
    agrees with the float64 Function's."""
    n, d, m = (64, 64, 64) if check_finite else (4, 6, 3)  # checked: n d (n + m) >= _torch.WIDE
    v64, x64, w64 = randn(n, d), randn(d, m, seed=2), randn(d, m, seed=3)

    def penalty_gradient(v, x):
        v = v.clone().requires_grad_()
        w = w64.to(v.dtype)  # a fixed weight: |H x|^2 alone does not depend on v
        out = cht.householder_matmul(v, x, check_finite=check_finite)
        (g,) = torch.autograd.grad((out * w).sum(), v, create_graph=True)
        (gg,) = torch.autograd.grad(g.square().sum(), v)
        return gg

    want = penalty_gradient(v64, x64)
    got = penalty_gradient(v64.float(), x64.float())
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


@pytest.mark.parametrize("transpose", [False, True])
def test_one_block_on_numpy_matches_torch(transpose):
    """:func:`cuhouse.algorithms.portable.one_block`, its backward and its tangent solve with S (a
    triangular solve on torch, the standard's ``linalg.solve`` elsewhere): the same values on NumPy."""
    import array_api_compat.numpy as np_xp
    import array_api_compat.torch as torch_xp

    from cuhouse.algorithms import portable

    y, x, dout = randn(3, 5), randn(5, 2, seed=2), randn(5, 2, seed=3)
    dy, dx = randn(3, 5, seed=4), randn(5, 2, seed=5)
    results = []
    for xp, arrays in ((torch_xp, (y, x, dout, dy, dx)), (np_xp, [a.numpy() for a in (y, x, dout, dy, dx)])):
        y_, x_, dout_, dy_, dx_ = arrays
        out, s, w = portable.one_block(y_, x_, transpose, xp)
        back = portable.one_block_backward(y_, x_, s, w, dout_, transpose, xp)
        tangent = portable.one_block_tangent(y_, x_, s, w, dy_, dx_, transpose, xp)
        results.append([torch.as_tensor(a) for a in (out, *back, tangent)])
    for got, want in zip(*results):
        assert_close(got, want, torch.float64)
    h = dense_householder(y)
    assert_close(results[0][0], (h.mT if transpose else h) @ x, torch.float64)
