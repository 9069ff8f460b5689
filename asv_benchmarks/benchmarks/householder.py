"""Householder products H = H(v_1) ... H(v_n) with n = d: the forward pass,
building the algorithm's form of H, GPU memory and numerical error.

Host memory (``peakmem_``) and the comparison with other libraries are in
``peers.py``, where every method starts from the same vectors.
"""

import numpy

import cuhouse
from cuhouse.algorithms import ALGORITHMS as ALGORITHM_MODULES

from .common import ALGORITHMS, BLOCKED_ALGORITHMS, COLUMNS, DTYPES, SIZES, backends, data, skip_if_too_slow_on_cpu


@backends
class Forward:
    """``H @ X`` with the algorithm's form of H already built and cached.

    The steady state of a layer or an RNN step that reuses H; the one-off
    build is timed by :class:`BuildFactors`.
    """

    params = [ALGORITHMS, SIZES, COLUMNS, DTYPES]
    param_names = ["algorithm", "d", "m", "dtype"]

    def setup(self, algorithm, d, m, dtype):
        skip_if_too_slow_on_cpu(self.xp, algorithm, d, m)
        vectors, self.x = data(d, d, m, dtype, self.xp)
        self.h = cuhouse.HouseholderProduct(vectors, algorithm=algorithm)
        self.h @ self.x

    def time_forward(self, algorithm, d, m, dtype):
        self.h @ self.x


@backends
class BuildFactors:
    """The one-off build of the algorithm's form from unit vectors.

    The block size is the plan's choice for m = 32. ``sequential`` has
    nothing to build; ``dense`` materializes H.
    """

    params = [BLOCKED_ALGORITHMS, SIZES, DTYPES]
    param_names = ["algorithm", "d", "dtype"]

    def setup(self, algorithm, d, dtype):
        skip_if_too_slow_on_cpu(self.xp, algorithm, d, 1)
        vectors, _ = data(d, d, 1, dtype, self.xp)
        self.unit = vectors / self.xp.linalg.norm(vectors, axis=-1, keepdims=True)
        plan = cuhouse.HouseholderProduct(vectors, algorithm=algorithm).plan_for(32)
        self.build, self.block_size = ALGORITHM_MODULES[plan.algorithm].build, plan.block_size

    def time_build(self, algorithm, d, dtype):
        self.build(self.unit, self.block_size, self.xp)


@backends
class GPUMemory:
    """Bytes CuPy's memory pool grows by during ``H @ X`` on a fresh H.

    The pool is emptied first; blocks freed during the call stay pooled, so
    the growth is the call's high-water mark of device allocations
    (build and apply). Skipped on NumPy.
    """

    params = [ALGORITHMS, SIZES, COLUMNS, DTYPES]
    param_names = ["algorithm", "d", "m", "dtype"]

    def setup(self, algorithm, d, m, dtype):
        if self.xp is numpy:
            raise NotImplementedError("GPU memory is measured on the cupy backend only")
        self.vectors, self.x = data(d, d, m, dtype, self.xp)

    def track_gpu_pool_bytes(self, algorithm, d, m, dtype):
        pool = self.xp.get_default_memory_pool()
        pool.free_all_blocks()
        before = pool.total_bytes()
        cuhouse.HouseholderProduct(self.vectors, algorithm=algorithm) @ self.x
        return pool.total_bytes() - before

    track_gpu_pool_bytes.unit = "bytes"


@backends
class OrthogonalityError:
    """``||H^T H - I||_F``, with H^T H formed as ``H.T @ (H @ I)`` by the algorithm."""

    params = [ALGORITHMS, SIZES, DTYPES]
    param_names = ["algorithm", "d", "dtype"]

    def setup(self, algorithm, d, dtype):
        skip_if_too_slow_on_cpu(self.xp, algorithm, d, d)
        vectors, _ = data(d, d, 1, dtype, self.xp)
        self.h = cuhouse.HouseholderProduct(vectors, algorithm=algorithm)
        self.eye = self.xp.eye(d, dtype=dtype)

    def track_orthogonality_error(self, algorithm, d, dtype):
        return float(self.xp.linalg.norm(self.h.T @ (self.h @ self.eye) - self.eye))

    track_orthogonality_error.unit = "||H^T H - I||_F"


@backends
class ForwardError:
    """Relative error of ``H @ X`` (m = 32) against the float64 sequential loop."""

    params = [ALGORITHMS, SIZES, DTYPES]
    param_names = ["algorithm", "d", "dtype"]

    def setup(self, algorithm, d, dtype):
        skip_if_too_slow_on_cpu(self.xp, algorithm, d, 32)
        vectors, self.x = data(d, d, 32, dtype, self.xp)
        self.h = cuhouse.HouseholderProduct(vectors, algorithm=algorithm)
        exact = cuhouse.HouseholderProduct(vectors.astype(numpy.float64), algorithm="sequential")
        self.reference = exact @ self.x.astype(numpy.float64)

    def track_forward_error(self, algorithm, d, dtype):
        error = (self.h @ self.x).astype(numpy.float64) - self.reference
        return float(self.xp.linalg.norm(error) / self.xp.linalg.norm(self.reference))

    track_forward_error.unit = "relative error"
