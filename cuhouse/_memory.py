"""How much memory a dense result may take: the machine's RAM, or the GPU's memory on CuPy."""

import os

import numpy


def dense_memory(shape, dtype, what, xp, workspace):
    """``MemoryError`` up front when a dense result of ``shape`` and ``dtype``,
    with its intermediates (``workspace`` times the result), is larger than
    the memory of the machine (host RAM, or the device's memory on CuPy).

    Says how much it needs and what to do instead, rather than failing deep
    inside an allocation of terabytes. Cost: O(1).
    """
    result = float(numpy.prod(shape, dtype=numpy.float64)) * numpy.dtype(dtype).itemsize
    needed = workspace * result
    if xp is numpy:
        available, where = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's memory"
    else:
        available, where = xp.cuda.Device().mem_info[1], "the GPU's memory"
    if needed > available:
        raise MemoryError(
            "{} needs a dense {} array of shape {} ({}; about {} with its intermediates), more "
            "than {} ({}); multiply by a thin X instead (A @ X costs O(d n m) without forming "
            "A)".format(
                what, numpy.dtype(dtype), tuple(shape), _bytes(result), _bytes(needed), where, _bytes(available)
            )
        )


def _bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return "{:.3g} {}".format(n, unit)
        n /= 1024
