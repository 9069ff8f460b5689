"""Forward products ``H @ X`` against the backend's ormqr, orgqr-then-GEMM and a dense GEMM."""

import numpy

import cuhouse

from ..algorithms import ALGORITHMS
from ..plan import describe
from . import peers

TITLE = "H @ X with n = d reflections, the factors built inside each call (unless 'cached')"

EXPLAIN = {
    "cuhouse auto": "HouseholderProduct(V) @ X: full-length vectors V, validation and the form of H built in the call",
    "cuhouse <algorithm>": "the same with the algorithm pinned",
    "cuhouse from_lapack": "HouseholderProduct.from_lapack(qr, tau) @ X on LAPACK's trapezoidal (qr, tau) of "
    "geqrf(V^T): the same Q, half the flops, read in place",
    "cuhouse auto, cached": "H @ X with H's form already built (a layer reusing H)",
    "cuhouse auto, reused": "the same after H.prepare_reuse(): the form fastest per product once built",
    "cuhouse auto, cached, X near overflow": "the same with X's entries near max/(16 d): every column is "
    "scaled by a power of two and back (the overflow-safe path; its test, one GEMV over |X|, is in every row)",
    "ormqr": "LAPACK/cuSOLVER ormqr applying the same (qr, tau) to X: the reference (ratio 1)",
    "orgqr then GEMM": "LAPACK orgqr forming Q from (qr, tau), then Q @ X",
    "dense GEMM": "one GEMM with the dense Q precomputed outside the call: the floor",
}


def gaussian(rng, shape, dtype):
    """Standard normal entries of ``dtype``; complex ones have independent real and imaginary parts."""
    g = rng.standard_normal(shape)
    if numpy.dtype(dtype).kind == "c":
        g = g + 1j * rng.standard_normal(shape)
    return g.astype(dtype)


def data(d, n, m, dtype, xp, seed=0):
    """Random vectors ``(n, d)`` and X ``(d, m)`` with a fixed seed (complex for a complex ``dtype``)."""
    rng = numpy.random.default_rng(seed)
    return xp.asarray(gaussian(rng, (n, d), dtype)), xp.asarray(gaussian(rng, (d, m), dtype))


def near_overflow(x, xp):
    """``x`` ``(d, m)`` times a power of two that puts its largest entries near ``max / (16 d)``: its
    columns' norms and ``H @ x`` are representable, but products with unscaled rows would overflow."""
    d = x.shape[-2]
    exponent = int(numpy.log2(numpy.finfo(x.dtype).max)) - int(numpy.ceil(numpy.log2(16 * d)))
    return x / float(xp.max(xp.abs(x))) * 2.0**exponent  # a power of two: exact, as ldexp (which refuses complex)


def cases(d, m, dtype, xp):
    """``(baselines, callables)``: each case's reference case name, and the callables."""
    v, x = data(d, d, m, dtype, xp)
    qr, tau = peers.geqrf(v, xp)
    reference, run_ormqr = peers.ormqr(qr, tau, x, xp)
    out = {"cuhouse auto": lambda: cuhouse.HouseholderProduct(v) @ x}
    for name in ALGORITHMS:
        if name == "dense" and d > 1024:
            continue  # O(d^3) build: minutes at d = 2048, and never the plan here
        out["cuhouse " + name] = (lambda name: lambda: cuhouse.HouseholderProduct(v, algorithm=name) @ x)(name)
    out["cuhouse from_lapack"] = lambda: cuhouse.HouseholderProduct.from_lapack(qr, tau) @ x
    out[reference] = run_ormqr
    if xp is numpy:
        out["LAPACK orgqr then GEMM"] = peers.lapack_orgqr_gemm(qr, tau, x)
    cached = cuhouse.HouseholderProduct(v)
    cached @ x
    dense = cached.todense()
    out["cuhouse auto, cached"] = lambda: cached @ x
    reused = cuhouse.HouseholderProduct(v).prepare_reuse()
    reused @ x
    out["cuhouse auto, reused"] = lambda: reused @ x
    large = near_overflow(x, xp)
    out["cuhouse auto, cached, X near overflow"] = lambda: cached @ large
    out["dense GEMM"] = peers.dense_gemm(dense, x)
    baselines = dict.fromkeys(out, reference)
    baselines["cuhouse auto, cached"] = "dense GEMM"
    baselines["cuhouse auto, reused"] = "dense GEMM"
    baselines["cuhouse auto, cached, X near overflow"] = "cuhouse auto, cached"
    return baselines, out


def report(d, m, dtype, xp):
    """The plans the fresh rows ran (the cost model's choice with this machine's calibration)."""
    v, _ = data(d, d, m, dtype, xp)
    qr, tau = peers.geqrf(v, xp)
    return "plans: auto {}, from_lapack {}, reused {}".format(
        describe(cuhouse.HouseholderProduct(v).plan_for(m)),
        describe(cuhouse.HouseholderProduct.from_lapack(qr, tau).plan_for(m)),
        describe(cuhouse.HouseholderProduct(v).prepare_reuse().plan_for(m)),
    )
