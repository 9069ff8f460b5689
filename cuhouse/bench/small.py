"""Fixed cost: ``H @ X`` at small sizes, for m = 1 and m = 32 columns, and which plan ran.

At d = 16..128 a product is a few microseconds of flops, so what a call
costs is mostly its fixed cost: validation, the plan, building the form, the
Python layers. Each row pairs a cuhouse call with its peer on the same
reflections: LAPACK/cuSOLVER ``ormqr`` on LAPACK's ``(qr, tau)`` of
``geqrf(V^T)``, and one GEMM with the dense Q for a cached H.
"""

import cuhouse

from ..plan import describe
from . import peers
from .forward import data

TITLE = "fixed cost at small sizes: H @ X with n = d reflections, m = 1 and m = 32 columns"
SIZES = (16, 64, 128)
QUICK_SIZES = (64,)
COLUMNS = (1, 32)
EXPLAIN = {
    "from_lapack m=<m>": "HouseholderProduct.from_lapack(qr, tau) @ X, fresh: against ormqr on the same (qr, tau)",
    "auto m=<m>": "HouseholderProduct(V) @ X, fresh (full-length vectors: about twice LAPACK's flops)",
    "auto cached m=<m>": "H @ X with H's form already built, against one GEMM with the dense H",
    "auto reused m=<m>": "the same after H.prepare_reuse(): the form fastest per product (here the dense H)",
}


def cases(d, m, dtype, xp):
    """``(baselines, callables)`` for m = 1 and m = 32 (the ``--m`` option does not apply here)."""
    baselines, out = {}, {}
    for columns in COLUMNS:
        v, x = data(d, d, columns, dtype, xp)
        qr, tau = peers.geqrf(v, xp)
        label, run_ormqr = peers.ormqr(qr, tau, x, xp)
        reference = "{} m={}".format(label, columns)
        cached = cuhouse.HouseholderProduct(v)
        cached @ x
        reused = cuhouse.HouseholderProduct(v).prepare_reuse()
        reused @ x
        gemm = "dense GEMM m={}".format(columns)
        out["from_lapack m={}".format(columns)] = (
            lambda qr, tau, x: lambda: cuhouse.HouseholderProduct.from_lapack(qr, tau) @ x
        )(qr, tau, x)
        out["auto m={}".format(columns)] = (lambda v, x: lambda: cuhouse.HouseholderProduct(v) @ x)(v, x)
        out[reference] = run_ormqr
        out["auto cached m={}".format(columns)] = (lambda h, x: lambda: h @ x)(cached, x)
        out["auto reused m={}".format(columns)] = (lambda h, x: lambda: h @ x)(reused, x)
        out[gemm] = peers.dense_gemm(cached.todense(), x)
        for name in ("from_lapack", "auto"):
            baselines["{} m={}".format(name, columns)] = reference
        baselines[reference] = reference
        baselines["auto cached m={}".format(columns)] = gemm
        baselines["auto reused m={}".format(columns)] = gemm
        baselines[gemm] = gemm
    return baselines, out


def report(d, m, dtype, xp):
    """The plans the rows ran (the cost model's choice with this machine's calibration)."""
    parts = []
    for columns in COLUMNS:
        v, _ = data(d, d, columns, dtype, xp)
        qr, tau = peers.geqrf(v, xp)
        full = cuhouse.HouseholderProduct(v).plan_for(columns)
        lapack = cuhouse.HouseholderProduct.from_lapack(qr, tau).plan_for(columns)
        reused = cuhouse.HouseholderProduct(v).prepare_reuse().plan_for(columns)
        parts.append(
            "m={}: auto {}, from_lapack {}, reused {}".format(
                columns, describe(full), describe(lapack), describe(reused)
            )
        )
    return "plans: " + "; ".join(parts)
