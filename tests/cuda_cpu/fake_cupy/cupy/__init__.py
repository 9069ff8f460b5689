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

from . import _memory, _trace, cuda, testing  # noqa: E402, F401  (cupy.cuda, cupy.testing)
from ._compiler import KernelError, Library  # noqa: E402

__version__ = "0.0-cuda-cpu"
__cuda_cpu__ = True  # the tests can tell the stand-in from CuPy

float32 = numpy.float32
float64 = numpy.float64
int32 = numpy.int32
int64 = numpy.int64
uintp = numpy.uintp

# The array functions that run as matrix products (counted as GEMMs, operands checked for copies).
GEMM_FUNCTIONS = frozenset({"matmul", "dot", "einsum", "tensordot", "inner", "vdot"})


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

    # --- attributes (metadata: no call, no launch)
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
    mT = property(lambda self: ndarray(numpy.swapaxes(self._view, -1, -2)))

    @property
    def device(self):
        return cuda.Device(_memory.allocation_of(self._view).device)

    def __len__(self):
        return len(self._view)

    def __repr__(self):
        return "cupy.ndarray(cpu stand-in, {!r})".format(self._view)

    def __array__(self, *args, **kwargs):
        raise TypeError(
            "Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct "
            "a NumPy array explicitly."
        )

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        """NumPy ufuncs on device arrays run on the device, as in CuPy."""
        return _compute(getattr(ufunc, method), inputs, kwargs)

    def __array_function__(self, func, types, args, kwargs):
        """NumPy functions on device arrays run on the device, as in CuPy."""
        return _compute(func, args, kwargs, gemm=func.__name__ in GEMM_FUNCTIONS)

    def __reduce__(self):
        """Pickled as CuPy pickles a device array (``array, (self.get(),)``): unpickled into new device
        memory. (object's own reduce pickled the NumPy view: the copy viewed host memory and no longer
        owned an allocation, so its ``device`` fell through to NumPy's ``"cpu"``.)"""
        return array, (self.get(),)

    # --- device to host: each a synchronization
    def get(self, stream=None, order="C", out=None, blocking=True):
        _trace.call()
        _trace.sync("ndarray.get()")
        if out is not None:
            out[...] = self._view
            return out
        return numpy.array(self._view, copy=True, order=order)

    def item(self):
        _trace.call()
        _trace.sync("ndarray.item()")
        return self._view.item()

    def tolist(self):
        _trace.call()
        _trace.sync("ndarray.tolist()")
        return self._view.tolist()

    def __float__(self):
        _trace.sync("float(ndarray)")
        return float(self._view)

    def __int__(self):
        _trace.sync("int(ndarray)")
        return int(self._view)

    def __index__(self):
        _trace.sync("operator.index(ndarray)")
        return self._view.__index__()

    def __bool__(self):
        _trace.sync("bool(ndarray)")
        return bool(self._view)

    # --- DLPack (the device is a CUDA one; the capsule points at the stand-in's memory)
    def __dlpack_device__(self):
        return (2, _memory.allocation_of(self._view).device)  # kDLCUDA

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        return self._view.__dlpack__()

    # --- indexing
    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        if not any(k is Ellipsis for k in key):
            key = key + (Ellipsis,)  # a[0, 0] is a 0-d view, as in CuPy, not a NumPy scalar
        return _compute(self._view.__getitem__, (key,))

    def __setitem__(self, key, value):
        _trace.call()
        self._view[_host(key)] = _host(value)
        _trace.launch(replay=lambda: self._view.__setitem__(_host(key), _host(value)))

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __getattr__(self, name):  # methods: reshape, astype, copy, sum, ...
        if name.startswith("__"):  # no __array_interface__ & co.: no silent conversion to NumPy
            raise AttributeError(name)
        attribute = getattr(self._view, name)
        if not callable(attribute):
            return _wrap(attribute)[0]

        def method(*args, **kwargs):
            result = _compute(attribute, args, kwargs, gemm=name == "dot")
            # the array itself (astype(copy=False), view of the same dtype): the same object, as in CuPy
            return self if isinstance(result, ndarray) and result._view is self._view else result

        return method


def _binary(name):
    def operator(self, other):
        return _compute(getattr(numpy.ndarray, name), (self, other), gemm="matmul" in name)

    return operator


def _inplace(name):
    """``a op= b`` writes through (one launch), as CuPy's in-place operators do."""

    def operator(self, other):
        _trace.call()
        method = getattr(self._view, name)
        method(_host(other))
        _trace.launch(replay=lambda: method(_host(other)))
        return self

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
    "lshift",
    "rshift",
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
for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "and", "or", "xor", "lshift", "rshift"):
    setattr(ndarray, "__i{}__".format(_name), _inplace("__i{}__".format(_name)))
for _name in ("neg", "pos", "abs", "invert"):
    setattr(ndarray, "__{}__".format(_name), lambda self, _n=_name: _compute(getattr(self._view, "__{}__".format(_n))))


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


def _device_array(shape, dtype, order="C"):
    """A fresh allocation on the current device (refused during stream capture)."""
    _trace.allocation()
    return _memory.device_array(shape, dtype, cuda.current_device_id(), order)


def _wrap(value):
    """``(device value, fresh)``: a NumPy result as device data, and the list of ``(device view,
    NumPy result)`` pairs that had to be copied into new device memory. Views of device memory
    stay views; scalars and the rest pass through."""
    fresh = []

    def wrap(v):
        if isinstance(v, tuple):
            return tuple(wrap(x) for x in v)
        if isinstance(v, list):
            return [wrap(x) for x in v]
        if isinstance(v, numpy.generic):
            v = numpy.asarray(v)
        if not isinstance(v, numpy.ndarray):
            return v
        if _memory.owns(v):
            return ndarray(v)
        order = "F" if v.flags.f_contiguous and not v.flags.c_contiguous else "C"
        out = _device_array(v.shape, v.dtype, order)
        out[...] = v
        fresh.append(out)
        return ndarray(out)

    return wrap(value), fresh


def _matrix_contiguous(a):
    """Whether the matrices (last two axes) of ``a`` are C- or F-contiguous (what cuBLAS takes as is)."""
    if a.ndim < 2:
        return True
    rows, cols = a.shape[-2:]
    row, col = a.strides[-2:]
    item = a.itemsize
    c_order = (cols <= 1 or col == item) and (rows <= 1 or row == cols * item)
    f_order = (rows <= 1 or row == item) and (cols <= 1 or col == rows * item)
    return c_order or f_order


def _count_operand_copies(arrays):
    for a in arrays:
        if isinstance(a, numpy.ndarray) and _memory.owns(a) and not _matrix_contiguous(a):
            _trace.add("operand_copies")
            _trace.add("launches")


def _writes(args, kwargs):
    """Whether a call that returned ``None`` wrote device memory (``copyto``, ``fill``, ...)."""
    return any(isinstance(a, ndarray) for a in list(args) + list(kwargs.values()))


def _compute(target, args=(), kwargs=None, gemm=False):
    """``target`` on the NumPy views of the arguments, the result as device data; counted (see
    :mod:`._trace`) and recorded while a graph is being captured."""
    kwargs = kwargs or {}
    _trace.call()
    host_args, host_kwargs = _host(args), _host(kwargs)
    if gemm:
        _count_operand_copies(host_args)
    result = target(*host_args, **host_kwargs)
    for original in args:  # NumPy gave an argument back (asarray & co.): that same device array
        if isinstance(original, ndarray) and result is original._view:
            return original
    wrapped, fresh = _wrap(result)
    if fresh or "out" in kwargs or (result is None and _writes(args, kwargs)):

        def replay():
            again = target(*_host(args), **_host(kwargs))
            flat = list(again) if isinstance(again, (tuple, list)) else [again]
            for out, value in zip(fresh, flat):
                out[...] = value

        _trace.launch(replay=replay, gemm=gemm)
    return wrapped


def asarray(a, dtype=None, order=None, *, copy=None, blocking=False):
    """CuPy's ``asarray``: ``a`` itself when it is a device array of that dtype and order."""
    if isinstance(a, ndarray):
        same = (dtype is None or numpy.dtype(dtype) == a.dtype) and (
            order in (None, "K", "A")
            or (order == "C" and a.flags.c_contiguous)
            or (order == "F" and a.flags.f_contiguous)
        )
        if same and not copy:
            _trace.call()
            return a
        if copy is False:
            raise ValueError("asarray(copy=False): the array would need a copy (dtype or order)")
    return array(a, dtype=dtype, copy=True, order=order or "K", blocking=blocking)


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, *, blocking=False):
    """CuPy's ``array``: a device copy (host data travels to the device: one launch)."""
    if isinstance(obj, ndarray) and not copy:
        return asarray(obj, dtype=dtype, order=None if order == "K" else order, copy=False if copy is False else None)
    return _compute(lambda o: numpy.array(o, dtype=dtype, copy=True, order=order, ndmin=ndmin), (obj,))


def ascontiguousarray(a, dtype=None):
    return asarray(a, dtype=dtype, order="C")


def asfortranarray(a, dtype=None):
    return asarray(a, dtype=dtype, order="F")


def asnumpy(a, stream=None, order="C", out=None, blocking=True):
    if isinstance(a, ndarray):
        return a.get(order=order, out=out)
    return numpy.asarray(a, order=order)


def empty(shape, dtype=float64, order="C"):
    _trace.call()
    shape = (shape,) if isinstance(shape, (int, numpy.integer)) else tuple(shape)
    return ndarray(_device_array(shape, dtype, order))


def empty_like(a, dtype=None, order="K", subok=None, shape=None):
    order = "F" if order in ("F", "K", "A") and a.flags.f_contiguous and not a.flags.c_contiguous else "C"
    return empty(a.shape if shape is None else shape, a.dtype if dtype is None else dtype, order)


def zeros(shape, dtype=float64, order="C"):
    out = empty(shape, dtype, order)
    out._view[...] = 0
    _trace.launch(replay=lambda: out._view.__setitem__(Ellipsis, 0))  # a memset
    return out


def zeros_like(a, dtype=None, order="K", subok=None, shape=None):
    out = empty_like(a, dtype, order, shape=shape)
    out._view[...] = 0
    _trace.launch(replay=lambda: out._view.__setitem__(Ellipsis, 0))
    return out


def from_dlpack(array, *, device=None, copy=None):
    """A device array from a DLPack producer on a CUDA device (here: a stand-in array)."""
    _trace.call()
    if isinstance(array, ndarray):
        return array
    kind = array.__dlpack_device__()[0] if hasattr(array, "__dlpack_device__") else None
    raise BufferError(
        "the CPU stand-in of CuPy takes DLPack data from its own arrays only (got {} on DLPack device type {})".format(
            type(array).__name__, kind
        )
    )


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


def _wrapped(module, name):
    """``module.name`` (a NumPy function) as a function on device data."""
    target = getattr(module, name)
    if not callable(target) or isinstance(target, type):
        return target
    return lambda *args, **kwargs: _compute(target, args, kwargs, gemm=name in GEMM_FUNCTIONS)


def __getattr__(name):
    """Every other array function is NumPy's, on device data."""
    if name in ("linalg", "lib", "cublas"):
        import importlib

        return importlib.import_module("{}.{}".format(__name__, name))
    return _wrapped(numpy, name)
