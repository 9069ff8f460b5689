"""Forward plus backward of ``H @ X`` on a fresh H, against the same product's forward alone and torch."""

import tracemalloc

import numpy

import cuhouse

from ..algorithms import ALGORITHMS
from . import peers
from .forward import data, gaussian

TITLE = "vjp(matmul, H, X) and its backward (gradients w.r.t. the parameters and X), n = d, fresh H"

EXPLAIN = {
    "cuhouse auto forward": "HouseholderProduct(V) @ X alone: the reference of the full-vector rows",
    "cuhouse <algorithm> fwd+bwd": "vjp(matmul, HouseholderProduct(V), X) and its pullback: dV and dX",
    "cuhouse from_lapack forward": "HouseholderProduct.from_lapack(qr, tau) @ X alone: the reference of the "
    "trapezoidal rows",
    "cuhouse from_lapack fwd+bwd": "the same with vjp and its pullback: the gradient w.r.t. qr and X",
    "torch householder_product fwd+bwd": "torch.linalg.householder_product(qr, tau) @ X with autograd to "
    "qr (tau held fixed), against cuhouse from_lapack fwd+bwd",
}


def forward_and_backward(v, x, dout, algorithm="auto"):
    """Build H, compute ``H @ X`` and its vjp for ``dout``; returns ``(dvectors, dX)``."""
    _, back = cuhouse.vjp(cuhouse.matmul, cuhouse.HouseholderProduct(v, algorithm=algorithm), x)
    (dv,), dx = back(dout)
    return dv, dx


def lapack_forward_and_backward(qr, tau, x, dout):
    """The same for ``from_lapack(qr, tau)``: ``(dqr, dX)``."""
    _, back = cuhouse.vjp(cuhouse.matmul, cuhouse.HouseholderProduct.from_lapack(qr, tau), x)
    (dqr,), dx = back(dout)
    return dqr, dx


def cases(d, m, dtype, xp):
    """``(baselines, callables)``."""
    v, x = data(d, d, m, dtype, xp)
    dout = xp.asarray(gaussian(numpy.random.default_rng(1), (d, m), dtype))
    qr, tau = peers.geqrf(v, xp)
    out = {
        "cuhouse auto forward": lambda: cuhouse.HouseholderProduct(v) @ x,
        "cuhouse auto fwd+bwd": lambda: forward_and_backward(v, x, dout),
    }
    for name in ALGORITHMS:
        if name == "dense" and d > 1024:
            continue  # O(d^3) build and backward: minutes at d = 2048
        out["cuhouse {} fwd+bwd".format(name)] = (lambda name: lambda: forward_and_backward(v, x, dout, name))(name)
    baselines = dict.fromkeys(out, "cuhouse auto forward")
    out["cuhouse from_lapack forward"] = lambda: cuhouse.HouseholderProduct.from_lapack(qr, tau) @ x
    out["cuhouse from_lapack fwd+bwd"] = lambda: lapack_forward_and_backward(qr, tau, x, dout)
    baselines["cuhouse from_lapack forward"] = baselines["cuhouse from_lapack fwd+bwd"] = "cuhouse from_lapack forward"
    torch_case = peers.torch_forward_backward(qr, tau, x, dout, xp)
    if torch_case is not None:
        out["torch householder_product fwd+bwd"] = torch_case
        baselines["torch householder_product fwd+bwd"] = "cuhouse from_lapack fwd+bwd"
    return baselines, out


def report(d, m, dtype, xp):
    """A line with the peak extra host memory of fwd+bwd in recompute mode, against its bound."""
    if xp is not numpy:
        return None
    peak = peak_extra_memory(d, d, m, dtype)
    unit = (d * m + d * d) * numpy.dtype(dtype).itemsize
    return (
        "peak extra host memory of auto fwd+bwd: {:.1f} MiB = {:.2f} x (d m + n d) itemsize "
        "(bound 4 x: the gradient dV and its workspace, the output and the [A | G] sweep buffer){}"
    ).format(peak / 2**20, peak / unit, "" if peak <= 4 * unit else "  OVER THE BOUND")


def peak_extra_memory(d, n, m, dtype):
    """Peak bytes NumPy allocates during one fwd+bwd on a fresh H (auto plan), beyond its inputs.

    One untimed call first, so that one-off allocations of the process (imports,
    the plan's memo) are not counted as the call's.
    """
    v, x = data(d, n, m, dtype, numpy)
    dout = numpy.ones((d, m), dtype=dtype)
    forward_and_backward(v, x, dout)
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
