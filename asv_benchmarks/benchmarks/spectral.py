"""``SVDMatrix`` W = U diag(s) V^T and ``EighMatrix`` E = U diag(w) U^T
applied to X, against the same operations on the dense matrix (NumPy/SciPy,
or CuPy/cupyx on the GPU), as in the seed paper's comparison.

U and V are Householder products of n = d reflections; s and w lie in
[0.5, 2]. The cuhouse side skips where ``cuhouse.SVDMatrix`` or
``cuhouse.EighMatrix`` does not exist yet. The dense side is O(d^3) per call
and is skipped at d = 4096 on the CPU.
"""
import numpy

import cuhouse

from .common import COLUMNS, DTYPES, SIZES, backends, data, spectrum

METHODS = ["cuhouse", "dense"]


def orthogonal_factor(d, dtype, xp, seed):
    vectors, _ = data(d, d, 1, dtype, xp, seed=seed)
    return cuhouse.HouseholderProduct(vectors)


def require(method, name, xp, d):
    """Skip what the current checkout or this machine cannot run."""
    if method == "cuhouse" and not hasattr(cuhouse, name):
        raise NotImplementedError("cuhouse.{} is not in this checkout".format(name))
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


class SVDMixin:
    """W as an ``SVDMatrix`` (method "cuhouse") or as a dense array ("dense")."""

    def make(self, method, d, dtype):
        require(method, "SVDMatrix", self.xp, d)
        u, v = orthogonal_factor(d, dtype, self.xp, 2), orthogonal_factor(d, dtype, self.xp, 3)
        s = spectrum(d, dtype, self.xp)
        if method == "cuhouse":
            return cuhouse.SVDMatrix(u, s, v)
        return (u.todense() * s) @ v.todense().T


@backends
class SVDApply(SVDMixin):
    params = [METHODS, SIZES, COLUMNS, DTYPES]
    param_names = ["method", "d", "m", "dtype"]

    def setup(self, method, d, m, dtype):
        self.w = self.make(method, d, dtype)
        _, self.x = data(d, 1, m, dtype, self.xp, seed=4)
        self.w @ self.x
        self.dense = method == "dense"

    def time_inv(self, method, d, m, dtype):
        (self.xp.linalg.inv(self.w) if self.dense else self.w.inv()) @ self.x

    def time_solve(self, method, d, m, dtype):
        self.xp.linalg.solve(self.w, self.x) if self.dense else self.w.solve(self.x)


@backends
class SVDLogdet(SVDMixin):
    params = [METHODS, SIZES, DTYPES]
    param_names = ["method", "d", "dtype"]

    def setup(self, method, d, dtype):
        self.w = self.make(method, d, dtype)
        self.dense = method == "dense"

    def time_logdet(self, method, d, dtype):
        self.xp.linalg.slogdet(self.w)[1] if self.dense else self.w.logdet()


@backends
class EighApply:
    """Spectral functions of E applied to X; Cayley is (I + E)^{-1} (I - E)."""
    params = [METHODS, SIZES, COLUMNS, DTYPES]
    param_names = ["method", "d", "m", "dtype"]

    def setup(self, method, d, m, dtype):
        require(method, "EighMatrix", self.xp, d)
        u = orthogonal_factor(d, dtype, self.xp, 5)
        w = spectrum(d, dtype, self.xp, seed=6)
        _, self.x = data(d, 1, m, dtype, self.xp, seed=7)
        self.dense = method == "dense"
        if self.dense:
            self.e = (u.todense() * w) @ u.todense().T
            self.eye = self.xp.eye(d, dtype=dtype)
            self.expm = dense_expm(self.xp)
        else:
            self.e = cuhouse.EighMatrix(u, w)
            self.e @ self.x

    def time_expm(self, method, d, m, dtype):
        (self.expm(self.e) if self.dense else self.e.expm()) @ self.x

    def time_cayley(self, method, d, m, dtype):
        if self.dense:
            self.xp.linalg.solve(self.eye + self.e, self.x - self.e @ self.x)
        else:
            self.e.cayley() @ self.x
