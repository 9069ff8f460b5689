"""Forward products ``H @ X`` against LAPACK/cuSOLVER ormqr, the sequential loop and a dense GEMM."""
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
    """ormqr on the same reflections (LAPACK on NumPy, cuSOLVER on CuPy) and the
    dense GEMM floor (cuBLAS on CuPy)."""
    out = {}
    if xp is numpy:
        out.update([lapack_ormqr(v, x)])
    else:
        out.update([cusolver_ormqr(v, x, xp)])
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


def cusolver_ormqr(v, x, cupy):
    """``(name, callable)``: cuSOLVER ``?ormqr`` applying the reflectors of
    ``geqrf(v.T)`` to a column-major copy of ``x``, in place. ``geqrf`` and the workspace queries run
    once, untimed. Applying an orthogonal Q in place again and again keeps the
    data bounded, so every call does the same work; it leaves out the output
    allocation that ``H @ X`` pays, which favours the peer."""
    from cupy_backends.cuda.libs import cublas, cusolver

    prefix = "s" if x.dtype == numpy.float32 else "d"
    geqrf_size, geqrf = getattr(cusolver, prefix + "geqrf_bufferSize"), getattr(cusolver, prefix + "geqrf")
    ormqr_size, ormqr = getattr(cusolver, prefix + "ormqr_bufferSize"), getattr(cusolver, prefix + "ormqr")
    handle = cupy.cuda.device.get_cusolver_handle()
    n, d = v.shape
    m = x.shape[1]
    a = cupy.array(v, order="C")          # row-major (n, d) is column-major d x n, lda = d
    tau = cupy.empty(n, dtype=v.dtype)
    info = cupy.empty(1, dtype=numpy.int32)
    work = cupy.empty(geqrf_size(handle, d, n, a.data.ptr, d), dtype=v.dtype)
    geqrf(handle, d, n, a.data.ptr, d, tau.data.ptr, work.data.ptr, work.size, info.data.ptr)
    c = cupy.array(x, order="F")          # d x m, ldc = d
    side, trans = cublas.CUBLAS_SIDE_LEFT, cublas.CUBLAS_OP_N
    work = cupy.empty(ormqr_size(handle, side, trans, d, m, n, a.data.ptr, d, tau.data.ptr, c.data.ptr, d),
                      dtype=v.dtype)
    cupy.cuda.get_current_stream().synchronize()
    if int(info[0]) != 0:
        raise RuntimeError("cuSOLVER {}geqrf failed with info = {}".format(prefix, int(info[0])))

    def apply():
        ormqr(handle, side, trans, d, m, n, a.data.ptr, d, tau.data.ptr, c.data.ptr, d,
              work.data.ptr, work.size, info.data.ptr)
    return "cuSOLVER {}ormqr (trapezoidal, in place)".format(prefix), apply
