"""``SVDMatrix`` W = U diag(s) V^T and ``EighMatrix`` E = U diag(w) U^T
applied to X, against the same operations on the dense matrix (NumPy/SciPy,
or CuPy/cupyx on the GPU), as in the seed paper's comparison.

Data are those of the ``spectral`` section of ``python -m cuhouse bench``:
U and V of n = d reflections, |s| and w in [0.5, 2]. The cuhouse matrices are
built in ``setup`` (the forms of H cached, the steady state of a layer); the
dense side is O(d^3) per call and is skipped at d = 4096 on the CPU.
"""

import numpy

import cuhouse
from cuhouse.bench.spectral import data

from .common import COLUMNS, DTYPES, SIZES, backends

METHODS = ["cuhouse", "dense"]


def skip_dense_on_cpu(method, xp, d):
    if method == "dense" and xp is numpy and d >= 4096:
        raise NotImplementedError("dense O(d^3) operations at d=4096 on the CPU")


def dense_expm(xp):
    if xp is numpy:
        from scipy.linalg import expm

        return expm
    try:
        from cupyx.scipy.linalg import expm
    except ImportError:
        raise NotImplementedError("this CuPy has no cupyx.scipy.linalg.expm") from None
    return expm


@backends
class SVDApply:
    """``inv @ X`` and ``solve``; dense: ``inv(W) @ X`` and ``linalg.solve``."""

    params = [METHODS, SIZES, COLUMNS, DTYPES]
    param_names = ["method", "d", "m", "dtype"]

    def setup(self, method, d, m, dtype):
        skip_dense_on_cpu(method, self.xp, d)
        u, s, v, _, self.x = data(d, m, dtype, self.xp)
        self.w = cuhouse.SVDMatrix(u, s, v)
        self.dense = method == "dense"
        if self.dense:
            self.w = self.w.todense()
        self.w @ self.x

    def time_inv(self, method, d, m, dtype):
        (self.xp.linalg.inv(self.w) if self.dense else self.w.inv()) @ self.x

    def time_solve(self, method, d, m, dtype):
        self.xp.linalg.solve(self.w, self.x) if self.dense else self.w.solve(self.x)


@backends
class SVDLogdet:
    """``logdet``; dense: ``linalg.slogdet``."""

    params = [METHODS, SIZES, DTYPES]
    param_names = ["method", "d", "dtype"]

    def setup(self, method, d, dtype):
        skip_dense_on_cpu(method, self.xp, d)
        u, s, v, _, _ = data(d, 1, dtype, self.xp)
        self.w = cuhouse.SVDMatrix(u, s, v)
        self.dense = method == "dense"
        if self.dense:
            self.w = self.w.todense()

    def time_logdet(self, method, d, dtype):
        self.xp.linalg.slogdet(self.w)[1] if self.dense else self.w.logdet()


@backends
class EighApply:
    """``expm @ X`` and ``cayley @ X``, Cayley being (I - E)(I + E)^{-1};
    dense: ``expm(E) @ X`` and ``(I - E) @ solve(I + E, X)``."""

    params = [METHODS, SIZES, COLUMNS, DTYPES]
    param_names = ["method", "d", "m", "dtype"]

    def setup(self, method, d, m, dtype):
        skip_dense_on_cpu(method, self.xp, d)
        u, _, _, w, self.x = data(d, m, dtype, self.xp)
        self.e = cuhouse.EighMatrix(u, w)
        self.dense = method == "dense"
        if self.dense:
            self.e = self.e.todense()
            self.eye = self.xp.eye(d, dtype=dtype)
            self.expm = dense_expm(self.xp)
        self.e @ self.x

    def time_expm(self, method, d, m, dtype):
        (self.expm(self.e) if self.dense else self.e.expm()) @ self.x

    def time_cayley(self, method, d, m, dtype):
        if self.dense:
            (self.eye - self.e) @ self.xp.linalg.solve(self.eye + self.e, self.x)
        else:
            self.e.cayley() @ self.x
