"""'Device' memory of the stand-in: host ``malloc`` blocks with guard bytes.

Each allocation is ``guard | payload | guard``; the guards hold a canary that
:func:`check_guards` verifies after every launch (a kernel writing past either
end of a buffer is reported), and under ASan they are also poisoned, so a read
is reported at once. ``CUDA_CPU_GUARD_BYTES=0`` (the valgrind mode) leaves
them out: then the tool's own red zones around each ``malloc`` block do it.
Fresh memory is filled with 0xFF bytes (a NaN pattern), except under valgrind,
which tracks it as undefined instead.
"""

import ctypes
import os
import threading
import weakref

import numpy

CANARY = 0xA5
_libc = ctypes.CDLL(None)
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = (ctypes.c_size_t,)
_libc.free.argtypes = (ctypes.c_void_p,)
_poison = getattr(_libc, "__asan_poison_memory_region", None)
_unpoison = getattr(_libc, "__asan_unpoison_memory_region", None)
for _f in (_poison, _unpoison):
    if _f is not None:
        _f.argtypes = (ctypes.c_void_p, ctypes.c_size_t)

_live = weakref.WeakValueDictionary()  # address -> Allocation
_live_lock = threading.Lock()  # threads allocate while another's kernel launch lists the live allocations


def guard_bytes():
    return int(os.environ.get("CUDA_CPU_GUARD_BYTES", "256"))


class Allocation:
    """``nbytes`` of device memory at ``address``, freed with the last NumPy
    view of it (see :func:`device_array`)."""

    def __init__(self, nbytes, device=0):
        self.nbytes = nbytes
        self.device = device
        self.guard = guard_bytes()
        total = nbytes + 2 * self.guard
        self.base = _libc.malloc(max(total, 1))
        if not self.base:
            raise MemoryError("cannot allocate {} bytes".format(total))
        self.address = self.base + self.guard
        if self.guard:
            ctypes.memset(self.base, CANARY, self.guard)
            ctypes.memset(self.address + nbytes, CANARY, self.guard)
            if _poison is not None:
                _poison(self.base, self.guard)
                _poison(self.address + nbytes, self.guard)
        if os.environ.get("CUDA_CPU_UNDEFINED_MEMORY") != "1":
            ctypes.memset(self.address, 0xFF, nbytes)
        with _live_lock:
            _live[self.address] = self
        weakref.finalize(self, _release, self.base, self.guard, nbytes)

    def corrupted_guard(self):
        """``None``, or a sentence saying how far past the payload a kernel wrote
        (the canary is then restored, so each overrun is reported once)."""
        if not self.guard:
            return None
        for name, start in (("before", self.base), ("after", self.address + self.nbytes)):
            guard = numpy.frombuffer((ctypes.c_ubyte * self.guard).from_address(start), numpy.uint8)
            bad = numpy.flatnonzero(guard != CANARY)
            if bad.size:
                reach = self.guard - bad[0] if name == "before" else bad[-1] + 1
                ctypes.memset(start, CANARY, self.guard)
                return "a kernel wrote {} bytes {} a {}-byte buffer".format(reach, name, self.nbytes)
        return None


def _release(base, guard, nbytes):
    if guard and _unpoison is not None:
        _unpoison(base, nbytes + 2 * guard)
    _libc.free(base)


def check_guards():
    """Sentences for every live allocation whose guard bytes were overwritten."""
    with _live_lock:
        live = list(_live.values())
    return [problem for problem in (a.corrupted_guard() for a in live) if problem]


def device_array(shape, dtype, device=0, order="C"):
    """A NumPy array of ``shape`` and ``dtype`` over a fresh allocation (``order`` "C" or "F") on ``device``."""
    if order == "F":
        return device_array(tuple(shape)[::-1], dtype, device).T
    dtype = numpy.dtype(dtype)
    count = int(numpy.prod(shape, dtype=numpy.int64))
    allocation = Allocation(count * dtype.itemsize, device)
    payload = (ctypes.c_ubyte * allocation.nbytes).from_address(allocation.address)
    payload._allocation = allocation  # the base of every view keeps the memory alive
    return numpy.frombuffer(payload, dtype=dtype, count=count).reshape(shape)


def allocation_of(array):
    """The :class:`Allocation` ``array`` views, or ``None`` for host memory."""
    base = array  # through NumPy views and the DummyArray of numpy.lib.stride_tricks.as_strided
    while not hasattr(base, "_allocation") and getattr(base, "base", None) is not None:
        base = base.base
    return getattr(base, "_allocation", None)


def owns(array):
    """True when ``array`` is a view of device memory (its base chain ends in an allocation)."""
    return allocation_of(array) is not None
