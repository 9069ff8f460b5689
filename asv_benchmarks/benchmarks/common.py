"""What every benchmark module shares: fixed-seed data, the parameter axes,
the ``backends`` decorator and the documented CPU pruning.

Skipping works the asv way: ``setup`` raises ``NotImplementedError`` and asv
records the combination as skipped (shown as "n/a"), never as a failure.
"""

import functools
import os

import numpy

from cuhouse._backend import cupy_module, gpu_available, synchronize
from cuhouse.algorithms import ALGORITHMS as ALGORITHM_MODULES
from cuhouse.bench.forward import data

__all__ = [
    "ALGORITHMS",
    "BLOCKED_ALGORITHMS",
    "COLUMNS",
    "DTYPES",
    "SIZES",
    "backends",
    "data",
    "skip_if_too_slow_on_cpu",
]

# CUHOUSE_ASV_SMOKE=1 (tools/asv_smoke.sh) shrinks the axes to a small,
# NumPy-only grid that still runs every benchmark's code.
SMOKE = os.environ.get("CUHOUSE_ASV_SMOKE") == "1"
SIZES = [64] if SMOKE else [256, 1024, 4096]  # d, with n = d reflections
COLUMNS = [1, 32] if SMOKE else [1, 32, 1024]  # m, the columns of X
DTYPES = ["float32", "float64"]
ALGORITHMS = ["auto"] + list(ALGORITHM_MODULES)
BLOCKED_ALGORITHMS = [name for name in ALGORITHM_MODULES if name != "sequential"]
BACKENDS = ["numpy"] if SMOKE else ["numpy", "cupy"]
MEASURED_PREFIXES = ("time_", "peakmem_", "track_", "mem_")


def array_module(backend):
    """``numpy``, or ``cupy`` when CuPy and a CUDA device answer; else skip."""
    if backend == "numpy":
        return numpy
    if not gpu_available():
        raise NotImplementedError("the cupy backend needs CuPy and a CUDA device")
    return cupy_module()


def backends(cls):
    """Class decorator: a leading ``backend`` parameter (numpy, cupy).

    The decorated class declares its own ``params``/``param_names`` and writes
    ``setup`` and the measured methods without the backend
    argument; they find the array module in ``self.xp``. The cupy half is
    skipped when CuPy or a device is missing. Every measured method
    (``time_``, ``peakmem_``, ``track_``, ``mem_``) synchronizes the device
    before and after it runs, so timings include all queued GPU work, and
    ``teardown`` (asv runs it even after a skip) hands CuPy's pooled memory back.
    """
    cls.params = [BACKENDS] + list(cls.params)
    cls.param_names = ["backend"] + list(cls.param_names)
    own_setup = getattr(cls, "setup", None)

    def setup(self, backend, *params):
        self.xp = array_module(backend)
        if own_setup is not None:
            own_setup(self, *params)
        synchronize(self.xp)

    def teardown(self, backend, *params):
        if backend == "cupy" and gpu_available():
            cupy_module().get_default_memory_pool().free_all_blocks()

    cls.setup, cls.teardown = setup, teardown
    for name, method in list(vars(cls).items()):
        if name.startswith(MEASURED_PREFIXES) and callable(method):
            setattr(cls, name, _synchronized(method))
    return cls


def _synchronized(method):
    @functools.wraps(method)
    def measured(self, backend, *params):
        synchronize(self.xp)
        result = method(self, *params)
        synchronize(self.xp)
        return result

    return measured


def skip_if_too_slow_on_cpu(xp, algorithm, d, m, backward=False):
    """The CPU pruning of the product benchmarks (GPU runs keep everything).

    On NumPy, skip
    * ``dense`` at d = 4096: materializing H is an O(d^3) build of seconds per
      setup;
    * ``sequential`` at d * m >= 4096 * 1024: n = d rank-1 updates of a d x m
      block, about a minute at d = 4096, m = 1024;
    * with ``backward``, also ``fasth`` at d * m >= 4096 * 1024: its backward
      loops over every block's vectors, about two minutes at d = 4096, m = 1024.
    """
    if xp is not numpy:
        return
    if algorithm == "dense" and d >= 4096:
        raise NotImplementedError("dense at d=4096 on the CPU: an O(d^3) build")
    slow = ("sequential", "fasth") if backward else ("sequential",)
    if algorithm in slow and d * m >= 4096 * 1024:
        raise NotImplementedError("{} at d*m >= 4096*1024 on the CPU: minutes".format(algorithm))
