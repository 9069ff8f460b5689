"""How much memory a dense result may take: the machine's RAM, or the GPU's memory (CuPy, torch CUDA)."""

import functools
import math
import os

import numpy

from ._backend import is_native, numpy_dtype

# Peak memory of the dense plan and of todense() in units of the d x d result: measured
# 4.06x at d = 2000 (cwy), 2.0x (dense).
DENSE_WORKSPACE = 4


def dense_memory(shape, dtype, what, xp, workspace, device=None):
    """``MemoryError`` up front when a dense result of ``shape`` and ``dtype``,
    with its intermediates (``workspace`` times the result), is larger than
    the memory of the machine (host RAM, or the device's memory on CuPy).

    Says how much it needs and what to do instead, rather than failing deep
    inside an allocation of terabytes. ``device`` is the arrays' device on the
    generic path (``None`` on NumPy and CuPy); a device whose memory the
    library does not report is not checked. Cost: O(1).
    """
    if xp is numpy and host_fits(workspace * float(math.prod(shape)) * numpy.dtype(dtype).itemsize):
        return  # the common case first, in fewer steps (a small product checks its dense H on every build)
    dtype = numpy_dtype(dtype)
    result = float(math.prod(shape)) * dtype.itemsize
    needed = workspace * result
    kind = getattr(device, "type", None)
    if xp is numpy or (not is_native(xp) and (device is None or kind == "cpu" or "CPU" in str(device))):
        available, where = host_memory(), "this machine's memory"
    elif is_native(xp):
        available, where = xp.cuda.Device().mem_info[1], "the GPU's memory"
    elif kind == "cuda":
        import torch

        available, where = torch.cuda.mem_get_info(device)[1], "the GPU's memory"
    else:
        return
    if needed > available:
        raise MemoryError(
            "{} needs a dense {} array of shape {} ({}; about {} with its intermediates), more "
            "than {} ({}); multiply by a thin X instead (A @ X costs O(d n m) without forming "
            "A)".format(what, dtype, tuple(shape), _bytes(result), _bytes(needed), where, _bytes(available))
        )


def host_fits(nbytes):
    """Whether ``nbytes`` fit this machine's physical memory (:func:`host_memory`). O(1)."""
    return nbytes <= host_memory()


def _bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return "{:.3g} {}".format(n, unit)
        n /= 1024


@functools.lru_cache(maxsize=None)
def host_memory():
    """Bytes of this machine's physical memory (read once: two system calls)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
