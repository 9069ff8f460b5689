"""cuhouse.torch._columns: Q = H[:, :k] of trapezoidal vectors, the weight that orthogonal() materializes.

Small sizes with blocks of 1 or 2 reflections (``many_blocks``), so that the
orgqr-order forward, the skew-congruence backward and the window bookkeeping
(padding of the last block, k < d, n < k) all run.
"""

import pytest

torch = pytest.importorskip("torch", reason="cuhouse.torch needs PyTorch: pip install 'cuhouse[torch]'")

from test_torch import assert_close, dense_householder, randn  # noqa: E402

import cuhouse.torch as cht  # noqa: E402
from cuhouse.torch import _columns  # noqa: E402

F64 = torch.float64


@pytest.fixture
def many_blocks(monkeypatch):
    """Blocks of 2 reflections, however few there are."""
    monkeypatch.setattr(_columns, "BLOCK", 2)
    monkeypatch.setattr(_columns, "ONE_BLOCK", 0)


def trapezoidal(*shape, seed=0, requires_grad=False):
    return torch.triu(randn(*shape, seed=seed)).requires_grad_(requires_grad)


def signs_of(k):
    return torch.tensor([(-1.0) ** (i * i // 3) for i in range(k)], dtype=F64)


def columns_of(v, k):
    """Q = H[:, :k] diag(signs) through the Function, v's entries below row i's diagonal not read."""
    return _columns.columns(torch.triu(v), k, signs_of(k))


# (n, d, k, block): one block; the last block padded; k < d; n < k; n = k = d
SHAPES = [(3, 3, 3, 4), (5, 7, 6, 2), (4, 4, 4, 2), (6, 9, 7, 4), (7, 7, 7, 3), (1, 4, 2, 2), (2, 6, 4, 1)]


@pytest.mark.parametrize("n, d, k, block", SHAPES)
def test_columns_match_the_dense_product(monkeypatch, n, d, k, block):
    monkeypatch.setattr(_columns, "BLOCK", block)
    v = trapezoidal(2, n, d)
    assert_close(_columns.columns(v, k), dense_householder(v)[..., :k], F64)
    assert_close(columns_of(v, k), dense_householder(v)[..., :k] * signs_of(k), F64)


@pytest.mark.parametrize("n, d, k, block", SHAPES)
def test_columns_gradcheck(monkeypatch, n, d, k, block):
    monkeypatch.setattr(_columns, "BLOCK", block)
    v = trapezoidal(n, d, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: columns_of(v, k), (v,))


# small enough for gradgradcheck (d^2 k second derivatives): padded last block with k < d; n < k
@pytest.mark.parametrize("n, d, k, block", [(3, 5, 4, 2), (2, 4, 3, 1)])
def test_columns_gradgradcheck(monkeypatch, n, d, k, block):
    monkeypatch.setattr(_columns, "BLOCK", block)
    v = trapezoidal(n, d, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda v: columns_of(v, k), (v,))


def test_columns_batched_gradients_against_the_dense_product(many_blocks):
    v = trapezoidal(2, 1, 5, 6, requires_grad=True)
    weight = randn(2, 1, 6, 5, seed=3)

    def loss(q):
        return (q * weight).sin().sum()

    got = torch.autograd.grad(loss(columns_of(v, 5)), v)[0]
    want = torch.autograd.grad(loss(dense_householder(torch.triu(v))[..., :5] * signs_of(5)), v)[0]
    assert_close(got, want, F64)


def test_columns_vmap_and_vmap_of_grad_against_a_loop(many_blocks):
    v = trapezoidal(3, 5, 6)
    assert_close(torch.func.vmap(lambda v: columns_of(v, 5))(v), torch.stack([columns_of(vi, 5) for vi in v]), F64)

    def loss(v):
        return columns_of(v, 5).sin().sum()

    batched = torch.func.vmap(torch.func.grad(loss))(v)
    loop = torch.stack([torch.func.grad(loss)(vi) for vi in v])
    assert_close(batched, loop, F64)


@pytest.mark.parametrize("batch", [(), (2,), (2, 1)])  # matrices, 3-d stacks (baddbmm), more axes
@pytest.mark.parametrize("one_block", [True, False])
def test_columns_ignore_the_entries_before_the_diagonal(monkeypatch, batch, one_block):
    """Row i is read from column i on: Q as for the trapezoidal rows, and an exact zero gradient before
    the diagonal, from the eager backward (in place) and from the differentiable one (create_graph)."""
    monkeypatch.setattr(_columns, "BLOCK", 2)
    monkeypatch.setattr(_columns, "ONE_BLOCK", 8 if one_block else 0)
    n, d, k = 5, 7, 6
    raw = randn(*batch, n, d, seed=4).requires_grad_()
    v = torch.triu(raw.detach()).requires_grad_()
    weight = randn(*batch, d, k, seed=5)
    assert_close(_columns.columns(raw, k), dense_householder(v.detach())[..., :k], F64)
    (want,) = torch.autograd.grad((_columns.columns(v, k) * weight).sin().sum(), v)
    for create_graph in (False, True):
        (got,) = torch.autograd.grad((_columns.columns(raw, k) * weight).sin().sum(), raw, create_graph=create_graph)
        assert_close(got, want, F64)
        assert torch.equal(torch.tril(got.detach(), -1), torch.zeros_like(got.detach()))


def test_eager_calls_use_the_older_function_form_with_the_same_results(many_blocks):
    """Eager calls go through ``_OlderColumns`` (no argument binding per call); under a torch.func
    transform ``Columns`` (the form torch.func, torch.compile and torch.export need): same bits,
    same gradients."""
    seen = []
    torch.func.vmap(lambda x: seen.append(_columns.eager()) or x)(torch.ones(2))
    assert _columns.eager() and seen == [False]
    v = trapezoidal(2, 5, 6, requires_grad=True)
    weight = randn(2, 6, 5, seed=6)
    results = []
    for form in (_columns._OlderColumns, _columns.Columns):
        q = form.apply(v, torch.ones(5, dtype=F64), 5, 2)[0]
        results.append((q.detach(), torch.autograd.grad((q * weight).sin().sum(), v, create_graph=True)[0]))
    for got, want in zip(*results):
        assert torch.equal(got, want)
    assert_close(results[0][0], dense_householder(v.detach())[..., :5], F64)


@pytest.mark.parametrize("one_block", [True, False])
def test_columns_gradients_at_axis_aligned_rows(monkeypatch, one_block):
    """Rows e_i (the vectors of an identity weight): every off-diagonal Gram entry is exactly zero,
    and S's derivative there must not be cut (gradcheck and gradgradcheck, one block and many)."""
    monkeypatch.setattr(_columns, "BLOCK", 2)
    monkeypatch.setattr(_columns, "ONE_BLOCK", 8 if one_block else 0)
    v = torch.eye(5, 6, dtype=F64).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: _columns.columns(v, 5), (v,))
    assert torch.autograd.gradgradcheck(lambda v: _columns.columns(v, 5), (v,))


def test_orthogonal_refuses_forward_mode():
    """The materialized weight's Function has no forward-mode rule (a Function with one cannot be
    traced by torch.compile): jacfwd is a NotImplementedError naming jvp, never a wrong value;
    reverse mode (jacrev) works."""
    torch.manual_seed(0)
    layer = cht.orthogonal(torch.nn.Linear(8, 8))
    params, x = dict(layer.named_parameters()), torch.randn(2, 8)

    def call(p):
        return torch.func.functional_call(layer, p, (x,))

    with pytest.raises(NotImplementedError, match="jvp"):
        torch.func.jacfwd(call)(params)
    assert torch.func.jacrev(call)(params)["parametrizations.weight.original"].shape == (2, 8, 8, 8)


def test_cost_rule():
    """The Function for many reflections of a square or nearly square Q; the compact-WY product otherwise."""
    assert all(_columns.cheaper(d, d, d) for d in (1, 2, 32, 128, 129, 256, 1024))
    assert _columns.block_size(128) == 128 and _columns.block_size(129) == _columns.BLOCK
    assert not _columns.cheaper(200, 4096, 200)  # k << d: carrying Q and G is cheaper than a d x d K
    this, wy = _columns.flops(1024, 1024, 1024)
    assert this < 0.7 * wy


@pytest.mark.parametrize("d", [16, 128, 256, 1024, 4096])
def test_flops_are_the_closed_forms_of_the_docstrings(d):
    """A square Q in nb blocks (d a multiple of the block): what the module docstring states."""
    nb = -(-d // _columns.block_size(d))
    this, wy = _columns.flops(d, d, d)
    forward = 4 / 3 * (1 + 1 / nb) * (1 + 1 / (2 * nb))
    backward = 4.0 if nb == 1 else 2 + forward + 2 / 3 * (1 - 1 / nb) * (1 - 1 / (2 * nb))
    assert this / d**3 == pytest.approx(forward + backward, rel=1e-12)
    assert wy / d**3 == pytest.approx((2 + 6) * (1 + 1 / nb), rel=1e-12)


LINEARS = {"square": (6, 6), "tall": (4, 7), "wide": (7, 5)}


@pytest.mark.parametrize("shape", LINEARS)
def test_orthogonal_uses_the_function_and_agrees_with_the_product(monkeypatch, shape):
    """orthogonal() through _columns and through the compact-WY product: same weight, same gradient."""
    monkeypatch.setattr(_columns, "BLOCK", 2)
    monkeypatch.setattr(_columns, "ONE_BLOCK", 0)
    torch.manual_seed(0)
    linear = cht.orthogonal(torch.nn.Linear(*LINEARS[shape], dtype=F64))
    x = randn(3, LINEARS[shape][0], seed=2)
    results = {}
    for name in ("columns", "product"):
        monkeypatch.setattr(_columns, "cheaper", lambda n, d, k, name=name: name == "columns")
        linear.zero_grad()
        out = linear(x)
        out.sin().sum().backward()
        results[name] = (out.detach(), linear.parametrizations.weight.original.grad.clone())
    for got, want in zip(results["columns"], results["product"]):
        assert_close(got, want, F64)
    weight = linear.weight.detach()
    gram = weight.mT @ weight if weight.shape[0] >= weight.shape[1] else weight @ weight.mT
    assert_close(gram, torch.eye(gram.shape[0], dtype=F64), F64)


def test_orthogonal_gradient_penalty_against_finite_differences(many_blocks):
    from test_torch_transforms import central_difference

    torch.manual_seed(0)
    linear = cht.orthogonal(torch.nn.Linear(4, 4, dtype=F64))
    x = randn(5, 4, seed=2, requires_grad=True)
    original = linear.parametrizations.weight.original
    original.data = original.data.contiguous()  # central_difference writes through a flat view

    def penalty():
        (gx,) = torch.autograd.grad(linear(x).tanh().sum(), x, create_graph=True)
        return gx.square().sum()

    (got,) = torch.autograd.grad(penalty(), original)
    (want,) = central_difference(penalty, [original])
    assert_close(got, want, F64, scale=1e5)


def test_orthogonal_compiled_step_matches_eager(many_blocks):
    torch.manual_seed(0)
    linear = cht.orthogonal(torch.nn.Linear(5, 5, dtype=F64))
    x = randn(3, 5, seed=2)

    def loss():
        return linear(x).square().mean()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    grads = []
    for f in (loss, compiled):
        linear.zero_grad()
        f().backward()
        grads.append(linear.parametrizations.weight.original.grad.clone())
    assert_close(grads[1], grads[0], F64)


def test_orthogonal_export(many_blocks):
    torch.manual_seed(0)
    linear = cht.orthogonal(torch.nn.Linear(5, 5, dtype=F64))
    x = randn(2, 5, seed=3)
    exported = torch.export.export(linear, (x,))
    assert_close(exported.module()(x), linear(x), F64)
