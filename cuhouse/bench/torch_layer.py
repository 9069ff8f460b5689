"""The ``torch`` section: ``cuhouse.torch`` against torch's own layers, on torch's CPU.

The rows of issue 21's table, each at its own size (the section's default
sizes are d = 32, 128 and 1024; ``--sizes`` picks others, with the m given):

* d = 32, a batch of 1 row: ``householder_matmul`` forward + backward (n = d)
  against one training step (forward, squared loss, backward, SGD step) of an
  ``nn.Linear`` with ``parametrizations.orthogonal(..., "cayley")``;
* d = 128, a batch of 64 rows: the same against a plain ``nn.Linear`` step;
* d = 1024, m = 32: against ``torch.linalg.householder_product`` + matmul
  with autograd (geqrf layout, tau implied, gradients w.r.t. the same d x n
  numbers) and against cuhouse's NumPy path (``cuhouse.vjp``), which the
  former DLPack adapter ran;
* every size: the core's ``HouseholderProduct(tensor) @ X`` forward + backward
  (torch autograd through ``cuhouse._torch.Matmul``) against the same NumPy
  ``cuhouse.vjp`` (the former adapter's work without its DLPack crossings);
* every size: a training step of ``cuhouse.torch.Orthogonal`` compiled with
  ``torch.compile(fullgraph=True)`` (inductor) against the same step eager.

torch runs with one thread (``torch.set_num_threads(1)``), as the BLAS does.
"""

import numpy

TITLE = "cuhouse.torch (torch CPU, float32) against torch's layers"
EXPLAIN = {
    "householder_matmul fwd+bwd": "H @ X and its backward, n = d reflections, X (d, m) (m = 1 at d = 32, 64 at 128)",
    "cayley orthogonal Linear step": "torch's parametrizations.orthogonal(nn.Linear(d, d), 'cayley'): one SGD step",
    "nn.Linear step": "an unconstrained nn.Linear(d, d) on the same rows: one SGD step",
    "householder_product + autograd": "torch.linalg.householder_product(a, tau) @ X, forward + backward",
    "cuhouse NumPy vjp": "HouseholderProduct(numpy V) and cuhouse.vjp: the former adapter's path, no DLPack",
    "HouseholderProduct(tensor) @ X fwd+bwd": "the core class on torch tensors, .backward(): torch autograd",
    "Orthogonal step compiled/eager": "cht.Orthogonal(d) SGD step, torch.compile(fullgraph=True) vs eager",
}
SIZES = QUICK_SIZES = (32, 128, 1024)
M = {32: 1, 128: 64, 1024: 32}


def report(d, m, dtype, xp):
    return "(X has m = {} columns; a step's batch has m rows)".format(M.get(d, m))


def _step(module, x, compiled=False):
    import torch

    optimizer = torch.optim.SGD(module.parameters(), lr=1e-3)

    def loss():
        return module(x).square().mean()

    if compiled:
        loss = torch.compile(loss, fullgraph=True)

    def step():
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()

    return step


def cases(d, m, dtype, xp):
    """Each case mapped to its baseline, and the callables (torch on the CPU, whatever ``xp``)."""
    import torch
    from torch import nn
    from torch.nn.utils import parametrizations

    import cuhouse
    import cuhouse.torch as cht

    torch.set_num_threads(1)
    m = M.get(d, m)
    tdtype = getattr(torch, numpy.dtype(dtype).name)
    g = torch.Generator().manual_seed(0)
    vectors = torch.randn(d, d, generator=g, dtype=tdtype).requires_grad_()
    x = torch.randn(d, m, generator=g, dtype=tdtype).requires_grad_()
    dout = torch.randn(d, m, generator=g, dtype=tdtype)
    rows = torch.randn(m, d, generator=g, dtype=tdtype)
    torch.manual_seed(0)

    def householder_matmul():
        cht.householder_matmul(vectors, x).backward(dout)

    def core_product():
        (cuhouse.HouseholderProduct(vectors, check_finite=False) @ x).backward(dout)

    v_np, x_np, dout_np = (t.detach().numpy() for t in (vectors, x, dout))

    def numpy_vjp():
        out, back = cuhouse.vjp(cuhouse.matmul, cuhouse.HouseholderProduct(v_np), x_np)
        return back(dout_np)

    ours, core = "householder_matmul fwd+bwd", "HouseholderProduct(tensor) @ X fwd+bwd"
    calls = {ours: householder_matmul, core: core_product, "cuhouse NumPy vjp": numpy_vjp}
    baselines = {ours: ours, core: "cuhouse NumPy vjp", "cuhouse NumPy vjp": ours}
    if d <= 64:
        cayley = parametrizations.orthogonal(nn.Linear(d, d, bias=False, dtype=tdtype), orthogonal_map="cayley")
        calls["cayley orthogonal Linear step"] = _step(cayley, rows)
        baselines[ours] = "cayley orthogonal Linear step"
    elif d <= 256:
        calls["nn.Linear step"] = _step(nn.Linear(d, d, dtype=tdtype), rows)
        baselines[ours] = "nn.Linear step"
    else:
        a = torch.randn(d, d, generator=g, dtype=tdtype).requires_grad_()

        def householder_product():
            below = torch.tril(a, -1)
            tau = 2 / (1 + below.square().sum(dim=0))
            (torch.linalg.householder_product(below, tau) @ x).backward(dout)

        calls["householder_product + autograd"] = householder_product
        baselines["householder_product + autograd"] = ours
        baselines["cuhouse NumPy vjp"] = ours
    layer = cht.Orthogonal(d, dtype=tdtype)
    calls["Orthogonal step eager"] = _step(layer, rows)
    calls["Orthogonal step compiled"] = _step(layer, rows, compiled=True)
    baselines["Orthogonal step compiled"] = "Orthogonal step eager"
    return {name: baselines.get(name, name) for name in calls}, calls
