"""Forward products ``H @ X`` against LAPACK ormqr, the sequential loop and a dense GEMM."""
import numpy

import cuhouse
from ..algorithms import ALGORITHMS

TITLE = "H @ X on a freshly built H (n = d reflections), block factors included"
BASELINE_LABEL = "cuhouse auto"


def data(d, n, m, dtype, xp, seed=0):
    """Random vectors ``(n, d)`` and X ``(d, m)`` with a fixed seed."""
    rng = numpy.random.default_rng(seed)
    v = xp.asarray(rng.standard_normal((n, d)).astype(dtype))
    x = xp.asarray(rng.standard_normal((d, m)).astype(dtype))
    return v, x


def cases(d, m, dtype, xp):
    """Baseline name and callables for one size."""
    v, x = data(d, d, m, dtype, xp)
    out = {"cuhouse auto": lambda: cuhouse.HouseholderProduct(v) @ x}
    for name in ALGORITHMS:
        if name == "dense" and d > 1024:
            continue                   # O(d^3) build: minutes at d = 2048, and never the plan here
        out["cuhouse " + name] = (lambda name: lambda: cuhouse.HouseholderProduct(v, algorithm=name) @ x)(name)
    out.update(peers(v, x, xp))
    return "cuhouse auto", out


def peers(v, x, xp):
    """LAPACK ormqr on the same number of reflections, and the dense GEMM floor."""
    out = {}
    if xp is numpy:
        out.update([lapack_ormqr(v, x)])
    out.update([dense_gemm(v, x)])
    return out


def lapack_ormqr(v, x):
    """``(name, callable)``: LAPACK ``?ormqr`` applying the reflectors of ``geqrf(v.T)`` to ``x``."""
    from scipy.linalg import lapack
    prefix = "s" if x.dtype == numpy.float32 else "d"
    geqrf, ormqr = getattr(lapack, prefix + "geqrf"), getattr(lapack, prefix + "ormqr")
    qr, tau, _, _ = geqrf(v.T.copy())
    lwork = int(ormqr("L", "N", qr, tau, x, -1)[1][0])
    return "LAPACK {}ormqr (trapezoidal)".format(prefix), lambda: ormqr("L", "N", qr, tau, x, lwork)


def dense_gemm(v, x):
    """``(name, callable)``: one GEMM with the dense H precomputed, the floor."""
    dense = cuhouse.HouseholderProduct(v).todense()
    return "dense GEMM, H precomputed", lambda: dense @ x
