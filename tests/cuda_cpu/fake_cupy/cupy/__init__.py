"""A stand-in for CuPy that runs raw CUDA kernels on the CPU, for tests only.

Put on ``sys.path`` only by ``tools/sanitizer_driver.py --on-cpu`` (and so by
``tools/kernels_on_cpu.sh``); it refuses to load where a real CuPy is
importable, so it never shadows one. It provides what ``cuhouse._gpu`` and the
GPU tests of ``tests/test_kernels.py`` use: an ``ndarray`` over NumPy views of
guarded 'device' memory, the array functions as NumPy's (results land in
device memory; views stay views), ``RawModule`` compiling the kernel source
with ``tests/cuda_cpu/cuda_cpu.h`` and launching through ctypes, and the bits
of ``cupy.cuda`` the code calls. Implicit conversion to NumPy raises, as in CuPy.
"""

import importlib.machinery
import os
import sys

import numpy

_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_real = importlib.machinery.PathFinder.find_spec(
    "cupy", [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
)
if _real is not None:
    raise RuntimeError(
        "the CPU stand-in of CuPy ({}) refuses to shadow the real CuPy at {}".format(
            _HERE, _real.origin or _real.submodule_search_locations
        )
    )

from . import _memory, cuda, testing  # noqa: E402, F401  (cupy.cuda, cupy.testing)
from ._compiler import KernelError, Library  # noqa: E402

__version__ = "0.0-cuda-cpu"
__cuda_cpu__ = True  # the tests can tell the stand-in from CuPy

float32 = numpy.float32
float64 = numpy.float64
int32 = numpy.int32
int64 = numpy.int64


class _Pointer:
    def __init__(self, ptr):
        self.ptr = ptr


class ndarray:
    """A device array: a NumPy view of memory from :mod:`._memory`."""

    __array_priority__ = 100

    def __init__(self, view):
        if not _memory.owns(view):
            raise TypeError("cupy.ndarray must view device memory")
        self._view = view

    # --- attributes
    shape = property(lambda self: self._view.shape)
    dtype = property(lambda self: self._view.dtype)
    size = property(lambda self: self._view.size)
    ndim = property(lambda self: self._view.ndim)
    strides = property(lambda self: self._view.strides)
    nbytes = property(lambda self: self._view.nbytes)
    itemsize = property(lambda self: self._view.itemsize)
    flags = property(lambda self: self._view.flags)
    data = property(lambda self: _Pointer(self._view.ctypes.data))
    T = property(lambda self: ndarray(self._view.T))

    def __len__(self):
        return len(self._view)

    def __repr__(self):
        return "cupy.ndarray(cpu stand-in, {!r})".format(self._view)

    def __array__(self, *args, **kwargs):
        raise TypeError(
            "Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct "
            "a NumPy array explicitly."
        )

    def get(self):
        return numpy.array(self._view, copy=True)

    def __getitem__(self, key):
        return _wrap(self._view[_host(key)])

    def __setitem__(self, key, value):
        self._view[_host(key)] = _host(value)

    def __float__(self):
        return float(self._view)

    def __int__(self):
        return int(self._view)

    def __bool__(self):
        return bool(self._view)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __getattr__(self, name):  # methods: reshape, astype, copy, sum, ...
        if name.startswith("__"):  # no __array_interface__ & co.: no silent conversion to NumPy
            raise AttributeError(name)
        attribute = getattr(self._view, name)
        if not callable(attribute):
            return _wrap(attribute)
        return lambda *args, **kwargs: _wrap(attribute(*_host(args), **_host(kwargs)))


def _binary(name):
    def operator(self, other):
        return _wrap(getattr(self._view, name)(_host(other)))

    return operator


for _name in (
    "add",
    "sub",
    "mul",
    "truediv",
    "floordiv",
    "mod",
    "pow",
    "matmul",
    "and",
    "or",
    "xor",
    "radd",
    "rsub",
    "rmul",
    "rtruediv",
    "rfloordiv",
    "rmod",
    "rpow",
    "rmatmul",
    "rand",
    "ror",
    "rxor",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
):
    setattr(ndarray, "__{}__".format(_name), _binary("__{}__".format(_name)))
for _name in ("neg", "pos", "abs", "invert"):
    setattr(ndarray, "__{}__".format(_name), lambda self, _n=_name: _wrap(getattr(self._view, "__{}__".format(_n))()))


def _host(value):
    """``value`` with every ndarray replaced by its NumPy view (for NumPy to compute on)."""
    if isinstance(value, ndarray):
        return value._view
    if isinstance(value, tuple):
        return tuple(_host(v) for v in value)
    if isinstance(value, list):
        return [_host(v) for v in value]
    if isinstance(value, dict):
        return {k: _host(v) for k, v in value.items()}
    return value


def _wrap(value):
    """A NumPy result as device data: views of device memory stay views, other
    arrays are copied into device memory, scalars and the rest pass through."""
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    if isinstance(value, numpy.generic):
        value = numpy.asarray(value)
    if not isinstance(value, numpy.ndarray):
        return value
    if _memory.owns(value):
        return ndarray(value)
    out = _memory.device_array(value.shape, value.dtype)
    out[...] = value
    return ndarray(out)


def asarray(a, dtype=None, order=None):
    if isinstance(a, ndarray) and (dtype is None or numpy.dtype(dtype) == a.dtype):
        return a
    return _wrap(numpy.array(_host(a), dtype=dtype, order=order or "C", copy=True))


array = asarray


def ascontiguousarray(a, dtype=None):
    a = asarray(a, dtype=dtype)
    return a if a.flags.c_contiguous else _wrap(numpy.ascontiguousarray(a._view))


def asnumpy(a):
    return a.get() if isinstance(a, ndarray) else numpy.asarray(a)


def empty(shape, dtype=float64, order="C"):
    return ndarray(
        _memory.device_array(tuple(numpy.atleast_1d(shape).tolist()) if not isinstance(shape, tuple) else shape, dtype)
    )


def empty_like(a, dtype=None):
    return empty(a.shape, a.dtype if dtype is None else dtype)


def zeros(shape, dtype=float64):
    out = empty(shape, dtype)
    out._view[...] = 0
    return out


def get_array_module(*args):
    return sys.modules[__name__] if any(isinstance(a, ndarray) for a in args) else numpy


class RawModule:
    """``cupy.RawModule(code=..., options=..., name_expressions=...)`` for the CPU;
    compiled at the first ``get_function``, as CuPy does."""

    def __init__(self, code, options=(), name_expressions=None, **unsupported):
        if unsupported:
            raise KernelError("the CPU stand-in does not take {}".format(sorted(unsupported)))
        self._arguments = (code, tuple(options), tuple(name_expressions or ()))
        self._library = None

    def get_function(self, name):
        if self._library is None:
            self._library = Library(*self._arguments)
        return self._library.function(name)


def __getattr__(name):
    """Every other array function is NumPy's, on device data."""
    target = getattr(numpy, name)
    if not callable(target) or isinstance(target, type):
        return target
    return lambda *args, **kwargs: _wrap(target(*_host(args), **_host(kwargs)))
