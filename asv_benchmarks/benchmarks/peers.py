"""``H @ X`` starting from the vectors, for cuhouse and its peers, so that the
dashboard shows their ratios in one benchmark.

Each method pays what it needs per call from its own stored form: cuhouse
builds its block factors (a fresh ``HouseholderProduct``), LAPACK and
cuSOLVER ``ormqr`` build their T factors internally from ``geqrf``'s layout,
``torch.linalg.householder_product`` forms Q, and the dense GEMM floor has H
precomputed. LAPACK's reflectors come from ``geqrf(V^T)``: trapezoidal, about
half the flops of full vectors.
"""
import numpy

import cuhouse
from cuhouse.bench.forward import dense_gemm, lapack_ormqr

from .common import COLUMNS, DTYPES, SIZES, backends, data, skip_if_too_slow_on_cpu

METHODS = ["cuhouse auto", "cuhouse cwy", "cuhouse fasth", "cuhouse sequential",
           "lapack ormqr", "cusolver ormqr", "dense gemm", "torch householder_product"]


@backends
class ForwardFromVectors:
    params = [METHODS, SIZES, COLUMNS, DTYPES]
    param_names = ["method", "d", "m", "dtype"]

    def setup(self, method, d, m, dtype):
        skip_unavailable(method, self.xp, d, m)
        vectors, x = data(d, d, m, dtype, self.xp)
        if method.startswith("cuhouse "):
            algorithm = method.split()[1]
            self.run = lambda: cuhouse.HouseholderProduct(vectors, algorithm=algorithm) @ x
        elif method == "lapack ormqr":
            _, self.run = lapack_ormqr(vectors, x)
        elif method == "cusolver ormqr":
            self.run = cusolver_ormqr(vectors, x)
        elif method == "dense gemm":
            _, self.run = dense_gemm(vectors, x)
        else:
            self.run = torch_householder_product(vectors, x, self.xp)

    def time_forward(self, method, d, m, dtype):
        self.run()

    def peakmem_forward(self, method, d, m, dtype):
        self.run()


def skip_unavailable(method, xp, d, m):
    """LAPACK runs on the numpy backend, cuSOLVER on cupy, torch when importable;
    cuhouse and the dense GEMM follow the CPU pruning of ``common``."""
    if method.startswith("cuhouse "):
        skip_if_too_slow_on_cpu(xp, method.split()[1], d, m)
    elif method == "dense gemm":
        skip_if_too_slow_on_cpu(xp, "dense", d, m)
    elif method == "lapack ormqr" and xp is not numpy:
        raise NotImplementedError("LAPACK ormqr runs on the numpy backend")
    elif method == "cusolver ormqr" and xp is numpy:
        raise NotImplementedError("cuSOLVER ormqr runs on the cupy backend")
    elif method.startswith("torch"):
        torch_module(xp)


def cusolver_ormqr(vectors, x):
    """cuSOLVER ``?ormqr`` applying ``geqrf(V^T)``'s reflectors to a copy of ``x``.

    ``ormqr`` overwrites its column-major operand, so each call copies ``x``
    (O(d m), small next to the product).
    """
    import cupy
    from cupy_backends.cuda.libs import cublas, cusolver
    from scipy.linalg import lapack

    prefix = "s" if x.dtype == numpy.float32 else "d"
    qr, tau, _, _ = getattr(lapack, prefix + "geqrf")(cupy.asnumpy(vectors).T.copy())
    qr, tau = cupy.asfortranarray(cupy.asarray(qr)), cupy.asarray(tau)
    x = cupy.asfortranarray(x)
    rows, cols, k = x.shape[0], x.shape[1], tau.size
    ormqr = getattr(cusolver, prefix + "ormqr")
    handle = cupy.cuda.device.get_cusolver_handle()
    side, trans = cublas.CUBLAS_SIDE_LEFT, cublas.CUBLAS_OP_N
    lwork = getattr(cusolver, prefix + "ormqr_bufferSize")(
        handle, side, trans, rows, cols, k, qr.data.ptr, rows, tau.data.ptr, x.data.ptr, rows)
    work = cupy.empty(lwork, dtype=x.dtype)
    info = cupy.empty(1, dtype=numpy.int32)

    def run():
        out = x.copy(order="F")
        ormqr(handle, side, trans, rows, cols, k, qr.data.ptr, rows, tau.data.ptr, out.data.ptr, rows,
              work.data.ptr, lwork, info.data.ptr)
        return out
    return run


def torch_householder_product(vectors, x, xp):
    """``householder_product(A, tau) @ X`` in torch, on the GPU for the cupy backend."""
    torch, a, tau, x = torch_operands(vectors, x, xp)

    def run():
        out = torch.linalg.householder_product(a, tau) @ x
        torch_synchronize(torch, x)
        return out
    return run


def torch_operands(vectors, x, xp):
    """``(torch, A, tau, X)``: ``geqrf(V^T)`` and X as torch tensors on the backend's device.

    Skips (``NotImplementedError``) when torch is not importable, or has no
    CUDA for the cupy backend.
    """
    torch = torch_module(xp)
    device = "cpu" if xp is numpy else "cuda"
    host = (lambda a: a) if xp is numpy else xp.asnumpy
    a, tau = torch.geqrf(torch.as_tensor(host(vectors).T.copy()))
    return torch, a.to(device), tau.to(device), torch.as_tensor(host(x)).to(device)


def torch_module(xp):
    """``torch``, able to run on the backend's device; else skip."""
    try:
        import torch
    except ImportError:
        raise NotImplementedError("torch is not installed") from None
    if xp is not numpy and not torch.cuda.is_available():
        raise NotImplementedError("torch has no CUDA device")
    return torch


def torch_synchronize(torch, tensor):
    if tensor.is_cuda:
        torch.cuda.synchronize()
