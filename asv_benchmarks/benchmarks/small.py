"""Fixed cost: ``H @ X`` at small sizes (d = 16, 64, 128; m = 1 and 32), and the right product
with a row-major X, so that a regression in what a call costs beyond its flops shows on the
dashboard. The cases are those of ``python -m cuhouse bench --sections small,layout``
(:mod:`cuhouse.bench.small`, :mod:`cuhouse.bench.layout`)."""

import numpy

import cuhouse
from cuhouse.bench import layout, peers

from .common import SMOKE, backends, data

SMALL_SIZES = [16] if SMOKE else [16, 64, 128]
SMALL_COLUMNS = [1, 32]
METHODS = ["cuhouse auto", "cuhouse from_lapack", "cuhouse auto cached", "ormqr", "dense gemm"]


@backends
class SmallForward:
    """A fresh ``HouseholderProduct(V) @ X`` and ``from_lapack(qr, tau) @ X``, a cached ``H @ X``,
    the backend's ormqr on the same ``(qr, tau)`` and one GEMM with the dense H."""

    params = [METHODS, SMALL_SIZES, SMALL_COLUMNS, ["float32"]]
    param_names = ["method", "d", "m", "dtype"]

    def setup(self, method, d, m, dtype):
        vectors, x = data(d, d, m, dtype, self.xp)
        qr, tau = peers.geqrf(vectors, self.xp)
        cached = cuhouse.HouseholderProduct(vectors)
        cached @ x
        self.run = {
            "cuhouse auto": lambda: cuhouse.HouseholderProduct(vectors) @ x,
            "cuhouse from_lapack": lambda: cuhouse.HouseholderProduct.from_lapack(qr, tau) @ x,
            "cuhouse auto cached": lambda: cached @ x,
            "ormqr": peers.ormqr(qr, tau, x, self.xp)[1],
            "dense gemm": peers.dense_gemm(cached.todense(), x),
        }[method]

    def time_forward(self, method, d, m, dtype):
        self.run()


@backends
class RightProduct:
    """``X @ H`` with a row-major X ``(m, d)`` against the same product on the column layout
    (``H.T @ X^T`` with X^T ``(d, m)`` row-major): with the operand's memory order kept the two match.
    n = 64 reflections, d = 256, m = 65536 (m = 256 in the smoke run)."""

    params = [["row-major X @ H", "columns H.T @ X^T"], ["float32"]]
    param_names = ["layout", "dtype"]

    def setup(self, order, dtype):
        rng = numpy.random.default_rng(0)
        rows = 256 if SMOKE else layout.ROWS
        h = cuhouse.HouseholderProduct(self.xp.asarray(rng.standard_normal((layout.REFLECTIONS, 256)).astype(dtype)))
        x = self.xp.asarray(rng.standard_normal((rows, 256)).astype(dtype))
        columns = self.xp.ascontiguousarray(x.T)
        self.run = (lambda: x @ h) if order == "row-major X @ H" else (lambda: h.T @ columns)
        self.run()

    def time_product(self, order, dtype):
        self.run()
