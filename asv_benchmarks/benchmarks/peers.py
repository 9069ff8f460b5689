"""``H @ X`` starting from the vectors, for cuhouse and its peers, so that the
dashboard shows their ratios in one benchmark.

Each method pays what it needs per call from its own stored form: cuhouse
builds its form of H (a fresh ``HouseholderProduct``, or
``from_lapack(qr, tau)`` on LAPACK's trapezoidal layout read in place),
LAPACK and cuSOLVER ``ormqr`` build their T matrices internally from
``geqrf``'s layout, ``orgqr`` forms Q then one GEMM, ``torch.linalg.householder_product``
forms Q, and the dense GEMM floor has H precomputed. LAPACK's reflectors come
from ``geqrf(V^T)``: trapezoidal, about half the flops of full vectors. The
peers are those of ``python -m cuhouse bench`` (:mod:`cuhouse.bench.peers`).
"""

import numpy

import cuhouse
from cuhouse.bench import peers

from .common import COLUMNS, DTYPES, SIZES, backends, data, skip_if_too_slow_on_cpu

METHODS = [
    "cuhouse auto",
    "cuhouse cwy",
    "cuhouse fasth",
    "cuhouse sequential",
    "cuhouse from_lapack",
    "lapack ormqr",
    "lapack orgqr+gemm",
    "cusolver ormqr",
    "dense gemm",
    "torch householder_product",
]


@backends
class ForwardFromVectors:
    params = [METHODS, SIZES, COLUMNS, DTYPES]
    param_names = ["method", "d", "m", "dtype"]

    def setup(self, method, d, m, dtype):
        skip_unavailable(method, self.xp, d, m)
        vectors, x = data(d, d, m, dtype, self.xp)
        qr, tau = peers.geqrf(vectors, self.xp)
        if method == "cuhouse from_lapack":
            self.run = lambda: cuhouse.HouseholderProduct.from_lapack(qr, tau) @ x
        elif method.startswith("cuhouse "):
            algorithm = method.split()[1]
            self.run = lambda: cuhouse.HouseholderProduct(vectors, algorithm=algorithm) @ x
        elif method == "lapack ormqr":
            self.run = peers.lapack_ormqr(qr, tau, x)
        elif method == "lapack orgqr+gemm":
            self.run = peers.lapack_orgqr_gemm(qr, tau, x)
        elif method == "cusolver ormqr":
            self.run = peers.cusolver_ormqr(qr, tau, x, self.xp)
        elif method == "dense gemm":
            self.run = peers.dense_gemm(cuhouse.HouseholderProduct(vectors).todense(), x)
        else:
            self.run = require(peers.torch_forward(qr, tau, x, self.xp))

    def time_forward(self, method, d, m, dtype):
        self.run()

    def peakmem_forward(self, method, d, m, dtype):
        self.run()


def require(run):
    """``run``, or skip when the peer is unavailable (torch missing, or without CUDA on cupy)."""
    if run is None:
        raise NotImplementedError("torch is not installed (or has no CUDA device for the cupy backend)")
    return run


def skip_unavailable(method, xp, d, m):
    """LAPACK runs on the numpy backend, cuSOLVER on cupy, torch when importable;
    cuhouse and the dense GEMM follow the CPU pruning of ``common``."""
    if method == "cuhouse from_lapack":
        skip_if_too_slow_on_cpu(xp, "auto", d, m)
    elif method.startswith("cuhouse "):
        skip_if_too_slow_on_cpu(xp, method.split()[1], d, m)
    elif method in ("dense gemm", "lapack orgqr+gemm"):
        skip_if_too_slow_on_cpu(xp, "dense", d, m)
    if method.startswith("lapack") and xp is not numpy:
        raise NotImplementedError("LAPACK runs on the numpy backend")
    if method == "cusolver ormqr" and xp is numpy:
        raise NotImplementedError("cuSOLVER ormqr runs on the cupy backend")
