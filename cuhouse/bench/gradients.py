"""Forward plus backward of ``H @ X`` on a fresh H, against the same plan's forward alone and torch."""
import tracemalloc

import numpy

import cuhouse
from ..algorithms import ALGORITHMS
from .forward import data

TITLE = "vjp(matmul, H, X) and its backward on a freshly built H (n = d reflections)"
BASELINE_LABEL = "cuhouse auto forward"


def forward_and_backward(v, x, dout, algorithm="auto"):
    """Build H, compute ``H @ X`` and its vjp for ``dout``; returns ``(dvectors, dX)``."""
    _, back = cuhouse.vjp(cuhouse.matmul, cuhouse.HouseholderProduct(v, algorithm=algorithm), x)
    (dv,), dx = back(dout)
    return dv, dx


def cases(d, m, dtype, xp):
    """Baseline name and callables for one size."""
    v, x = data(d, d, m, dtype, xp)
    dout = xp.asarray(numpy.random.default_rng(1).standard_normal((d, m)).astype(dtype))
    out = {
        BASELINE_LABEL: lambda: cuhouse.HouseholderProduct(v) @ x,
        "cuhouse auto fwd+bwd": lambda: forward_and_backward(v, x, dout),
    }
    for name in ALGORITHMS:
        if name == "dense" and d > 1024:
            continue                   # O(d^3) build and backward: minutes at d = 2048
        out["cuhouse {} fwd+bwd".format(name)] = (lambda name: lambda: forward_and_backward(v, x, dout, name))(name)
    torch_case = torch_householder_product(v, x, dout, xp)
    if torch_case is not None:
        out["torch householder_product fwd+bwd"] = torch_case
    return BASELINE_LABEL, out


def torch_householder_product(v, x, dout, xp):
    """``householder_product(A, tau) @ X`` with autograd, when torch is installed (else ``None``)."""
    try:
        import torch
    except ImportError:
        return None
    device = "cpu" if xp is numpy else "cuda"
    a, tau = torch.geqrf(torch.as_tensor(numpy.asarray(v.T) if xp is numpy else v.T.get(), device=device))
    tx = torch.as_tensor(x if xp is numpy else x.get(), device=device)
    tg = torch.as_tensor(dout if xp is numpy else dout.get(), device=device)

    def run():
        leaf = a.detach().requires_grad_()
        (torch.linalg.householder_product(leaf, tau) @ tx).backward(tg)
        if device == "cuda":
            torch.cuda.synchronize()
    return run


def report(d, m, dtype, xp):
    """A line with the peak extra host memory of fwd+bwd in recompute mode, against the bound."""
    if xp is not numpy:
        return None
    peak = peak_extra_memory(d, d, m, dtype)
    bound = 4 * (d * m + d * d) * numpy.dtype(dtype).itemsize
    return "peak extra host memory of auto fwd+bwd (recompute): {:.1f} MiB = {:.2f} x (d m + n d) itemsize; " \
           "bound 4 x = {:.1f} MiB".format(peak / 2 ** 20, peak / (bound / 4), bound / 2 ** 20)


def peak_extra_memory(d, n, m, dtype):
    """Peak bytes NumPy allocates during one fwd+bwd on a fresh H (auto plan), beyond its inputs."""
    v, x = data(d, n, m, dtype, numpy)
    dout = numpy.ones((d, m), dtype=dtype)
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        forward_and_backward(v, x, dout)
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        if not tracing:
            tracemalloc.stop()
