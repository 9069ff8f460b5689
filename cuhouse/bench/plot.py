"""``python -m cuhouse bench --plot out.png``: the seed paper's Figure 3.

Time of forward plus backward of ``H @ X`` (gradients with respect to the
vectors and X, from a fresh H) against d, for every algorithm and peer, on
log axes. Where ``cuhouse.vjp`` cannot differentiate a ``HouseholderProduct``
yet, it plots the forward pass (the ``forward`` section's cases) and says so
in the title.
"""
import numpy

import cuhouse
from .._backend import backend_name
from ..algorithms import ALGORITHMS
from . import forward
from ._timing import measure


def draw(path, sizes, m, dtype, xp, rounds):
    """Time every case at every d, print the table, and save the figure to ``path``."""
    pyplot = _pyplot()
    backward = can_differentiate(dtype, xp)
    cases = forward_backward_cases if backward else forward.cases
    times = {}
    print("cuhouse bench --plot: backend={} dtype={} m={} rounds={}".format(backend_name(xp), dtype, m, rounds))
    print("{:>6}  {:<34} {:>11}".format("d", "method", "median ms"))
    for d in sizes:
        baseline, callables = cases(d, m, dtype, xp)
        for name, (seconds, _) in measure(callables, baseline, rounds, xp).items():
            times.setdefault(name, {})[d] = seconds
            print("{:>6}  {:<34} {:>11.3f}".format(d, name, seconds * 1e3))
    figure, axes = pyplot.subplots(figsize=(7, 5))
    for name, by_size in times.items():
        ds = sorted(by_size)
        axes.plot(ds, [by_size[d] for d in ds], marker="o", label=name)
    axes.set_xscale("log", base=2)
    axes.set_xticks(sizes, [str(d) for d in sizes])
    axes.minorticks_off()
    axes.set_yscale("log")
    axes.set_xlabel("d (n = d reflections)")
    axes.set_ylabel("median seconds")
    what = "forward + backward" if backward else "forward only (cuhouse.vjp cannot differentiate H yet)"
    axes.set_title("H @ X, {}\nm = {}, {}, {}".format(what, m, dtype, backend_name(xp)))
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    print("wrote {}".format(path))
    return 0


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install 'cuhouse[plot]'") from None
    matplotlib.use("Agg")
    from matplotlib import pyplot
    return pyplot


def can_differentiate(dtype, xp):
    """True when ``cuhouse.vjp(cuhouse.matmul, H, X)`` works for a HouseholderProduct."""
    v, x = forward.data(4, 4, 2, dtype, xp)
    try:
        _forward_backward(v, x, x, "auto")
    except (AttributeError, NotImplementedError):
        return False
    return True


def forward_backward_cases(d, m, dtype, xp):
    """Baseline name and forward + backward callables for one size."""
    v, x = forward.data(d, d, m, dtype, xp)
    _, dout = forward.data(d, 1, m, dtype, xp, seed=1)
    out = {}
    for name in ("auto",) + tuple(ALGORITHMS):
        if name == "dense" and d > 1024:
            continue                   # O(d^3) build, as in the forward section
        out["cuhouse " + name] = (lambda name: lambda: _forward_backward(v, x, dout, name))(name)
    dense = cuhouse.HouseholderProduct(v).todense()
    out["dense GEMM floor (H precomputed)"] = lambda: (dense @ x, dout @ x.T, dense.T @ dout)
    torch_case = _torch_forward_backward(v, x, dout, xp)
    if torch_case is not None:
        out["torch householder_product"] = torch_case
    return "cuhouse auto", out


def _forward_backward(v, x, dout, algorithm):
    h = cuhouse.HouseholderProduct(v, algorithm=algorithm)
    _, pullback = cuhouse.vjp(cuhouse.matmul, h, x)
    return pullback(dout)


def _torch_forward_backward(v, x, dout, xp):
    """torch autograd through ``householder_product``, on the CPU; None without torch."""
    if xp is not numpy:
        return None
    try:
        import torch
    except ImportError:
        return None
    a, tau = torch.geqrf(torch.as_tensor(v.T.copy()))
    a.requires_grad_(True)
    x, dout = torch.as_tensor(x), torch.as_tensor(dout)

    def run():
        a.grad = None
        (torch.linalg.householder_product(a, tau) @ x).backward(dout)
    return run
