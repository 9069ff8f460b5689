"""Backend selection and the dtype rules.

The backend is the Array API namespace of the inputs. NumPy and CuPy keep
their own modules and fast paths; every other library (torch,
array_api_strict, ...) runs the generic path through its
``array_api_compat`` namespace. Nothing here touches the GPU at import time:
CuPy is imported lazily, and only the array types of the arguments decide the
backend.
"""

import functools
import sys

import numpy

REAL_DTYPES = (numpy.dtype(numpy.float32), numpy.dtype(numpy.float64))
COMPLEX_DTYPES = (numpy.dtype(numpy.complex64), numpy.dtype(numpy.complex128))
SUPPORTED_DTYPES = REAL_DTYPES + COMPLEX_DTYPES


@functools.lru_cache(maxsize=None)
def cupy_module():
    """Return the ``cupy`` module, or ``None`` when CuPy is not installed."""
    try:
        import cupy
    except ImportError:
        return None
    return cupy


def is_cupy_array(x):
    """True when ``x`` is a ``cupy.ndarray`` (without importing CuPy otherwise)."""
    cls = type(x)
    return cls.__module__.startswith("cupy") and cls.__name__ == "ndarray"


def is_dask_array(x):
    """True when ``x`` is a ``dask.array.Array`` (checked by type, without importing Dask)."""
    cls = type(x)
    return cls.__name__ == "Array" and cls.__module__.split(".")[:2] == ["dask", "array"]


@functools.lru_cache(maxsize=None)
def gpu_available():
    """True when CuPy is installed and at least one CUDA device answers."""
    cupy = cupy_module()
    if cupy is None:
        return False
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no driver, no device: CuPy raises its own runtime errors
        return False


def _library(a):
    """``(name, namespace-or-None, device)`` of the array ``a``, or ``None`` when ``a`` is no array.

    NumPy and CuPy keep their own modules (the native paths); any other Array
    API array (torch, array_api_strict, ...) gets its namespace from
    ``array_api_compat``. Lists, scalars (NumPy's included), ``None`` and Dask
    arrays (handled lazily by :mod:`cuhouse._dask`) are no array here.
    """
    if is_cupy_array(a):
        return "cupy", None, None
    if isinstance(a, numpy.ndarray):
        return "numpy", None, None
    if isinstance(a, numpy.generic) or not hasattr(a, "shape") or not hasattr(a, "dtype"):
        return None
    known = _TORCH_TYPES.get(type(a))
    if known is not None:  # a torch tensor type seen before: its namespace, without array_api_compat's tests
        return known + (a.device,)
    compat = array_api_compat()
    if compat is None or compat.is_dask_array(a) or not compat.is_array_api_obj(a):
        return None
    xp = compat.array_namespace(a)
    name = backend_name(xp)
    if name == "torch":
        _TORCH_TYPES[type(a)] = name, xp
    return name, xp, compat.device(a)


_TORCH_TYPES = {}
"""``(name, namespace)`` per torch tensor type met by :func:`_library` (torch's namespace and device
depend on the type alone: ``array_api_compat.device`` of a tensor is its ``.device``)."""


@functools.lru_cache(maxsize=None)
def array_api_compat():
    """The ``array_api_compat`` module, or ``None`` when it is not installed."""
    try:
        import array_api_compat
    except ImportError:  # pragma: no cover - an install requirement
        return None
    return array_api_compat


def array_module(*arrays):
    """The array module of ``arrays``: ``numpy``, ``cupy``, or another library's Array API namespace.

    Non-array arguments (lists, scalars, ``None``) are ignored. Mixing
    libraries (torch with NumPy, NumPy with CuPy, ...) or devices of one
    library (a CPU with a CUDA tensor) is a ``TypeError`` naming both:
    nothing is copied between libraries or devices behind the caller's back.
    """
    found = None
    for a in arrays:
        kind = _library(a)
        if kind is None:
            continue
        if found is None:
            found = kind + (a,)
            continue
        if kind[0] != found[0]:
            raise TypeError(mixing_message(found[3], a))
        if kind[2] != found[2]:
            raise TypeError(
                "cannot mix devices: got a {} array on {} and one on {}; cuhouse copies nothing between "
                "devices: move one explicitly (e.g. with .to(device))".format(found[0], found[2], kind[2])
            )
    if found is None or found[0] == "numpy":
        return numpy
    if found[0] == "cupy":
        return cupy_module()
    return found[1]


def mixing_message(a, b):
    """The ``TypeError`` message for arrays ``a`` and ``b`` of two libraries."""
    names = library_name(a), library_name(b)
    hint = "cupy.asarray or cupy.asnumpy" if set(names) == {"numpy", "cupy"} else "DLPack"
    return (
        "cannot mix {} and {} arrays: got {} and {}; cuhouse copies nothing between libraries or devices: "
        "convert one explicitly (e.g. with {})".format(
            display_name(names[0]), display_name(names[1]), type_name(type(a)), type_name(type(b)), hint
        )
    )


def display_name(library):
    """``"NumPy"``, ``"CuPy"``, or the library's own name."""
    return {"numpy": "NumPy", "cupy": "CuPy"}.get(library, library)


def library_name(a):
    """The name of the library of array ``a`` (``"numpy"``, ``"cupy"``, ``"torch"``, ...), else ``None``."""
    kind = _library(a)
    return None if kind is None else kind[0]


def is_native(xp):
    """True for the NumPy and CuPy modules, which keep their fast paths (``out=``, in place, LAPACK, raw kernels)."""
    return xp is numpy or getattr(xp, "__name__", "") == "cupy"


def backend_name(xp):
    """``"numpy"``, ``"cupy"``, or the name of another Array API library (``"torch"``, ``"array_api_strict"``)."""
    name = xp.__name__
    if name == "numpy":
        return "numpy"
    prefix = "array_api_compat."
    return name[len(prefix) :] if name.startswith(prefix) else name


def module_named(name):
    """The array module called ``name`` (see :func:`backend_name`).

    Matrices keep their backend by name, so that they pickle without a
    module object; unpickling a matrix whose library is missing is an
    ``ImportError`` that says so.
    """
    if name == "numpy":
        return numpy
    if name == "cupy":
        cupy = cupy_module()
        if cupy is None:
            raise ImportError(
                "this matrix lives on the CuPy backend, but CuPy is not installed; "
                "pip install 'cuhouse[cuda13]' (or move the data to NumPy before pickling)"
            )
        return cupy
    return _generic_module(name)


@functools.lru_cache(maxsize=None)
def _generic_module(name):
    import importlib

    try:
        return importlib.import_module("array_api_compat." + name)
    except ImportError:
        pass
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ImportError("this matrix lives on the {0} backend, but {0} is not installed".format(name)) from None


def read_only(a):
    """A read-only view of the NumPy array ``a`` (writing raises NumPy's ``ValueError``).

    CuPy has no read-only arrays: a CuPy array is returned as it is.
    """
    if not isinstance(a, numpy.ndarray):
        return a
    view = a.view()
    view.flags.writeable = False
    return view


def synchronize(xp):
    """Wait for queued device work (a no-op on NumPy)."""
    if xp is not numpy:
        xp.cuda.get_current_stream().synchronize()


def type_name(cls):
    return "{}.{}".format(cls.__module__.split(".")[0], cls.__name__)


# ------------------------------------------------- helpers for every library
# The native paths (NumPy, CuPy) keep NumPy's methods; these few helpers give
# the generic path the same operation through the Array API standard.


def device_of(a):
    """The device of array ``a`` (``None`` for NumPy and CuPy: their arrays need no ``device=``)."""
    if isinstance(a, numpy.ndarray) or is_cupy_array(a):
        return None
    return array_api_compat().device(a)


def creation_kwargs(like):
    """``dtype``/``device`` keyword arguments placing a new array beside ``like`` (``{}`` natively)."""
    device = device_of(like)
    return {} if device is None else {"device": device}


def astype(a, dtype, xp):
    """``a`` in ``dtype``, without a copy when it already is."""
    if is_native(xp):
        return a.astype(dtype, copy=False)
    return a if a.dtype == dtype else xp.astype(a, dtype)


def swap(a, xp):
    """The transpose of the last two axes (a view)."""
    return a.swapaxes(-1, -2) if is_native(xp) else a.mT


def numpy_dtype(dtype):
    """The NumPy dtype of the same name as ``dtype`` of any library (``torch.float32`` -> ``float32``)."""
    if isinstance(dtype, numpy.dtype):
        return dtype
    try:
        return _NUMPY_DTYPES[dtype]
    except (KeyError, TypeError):  # not met yet, or unhashable
        pass
    try:
        result = numpy.dtype(dtype)
    except TypeError:
        result = numpy.dtype(str(dtype).rsplit(".", 1)[-1])
    try:
        _NUMPY_DTYPES[dtype] = result
    except TypeError:
        pass
    return result


_NUMPY_DTYPES = {}
"""NumPy dtypes of other libraries' dtypes met by :func:`numpy_dtype` (a failed ``numpy.dtype(torch.float32)``
costs an exception per call)."""


def library_dtype(name, xp):
    """The dtype of ``xp`` called ``name`` (a NumPy dtype or its name)."""
    name = numpy.dtype(name).name
    return numpy.dtype(name) if is_native(xp) else getattr(xp, name)


def result_type(xp, *dtypes):
    """The dtype of an operation on ``dtypes`` by NumPy's rules (the contract), as a dtype of ``xp``."""
    if is_native(xp):
        return numpy.result_type(*dtypes)
    return library_dtype(numpy.result_type(*(numpy_dtype(d) for d in dtypes)), xp)


def concat(arrays, axis, xp):
    """``arrays`` joined along ``axis`` (``concatenate`` natively: CuPy may lack ``concat``)."""
    return xp.concatenate(arrays, axis=axis) if is_native(xp) else xp.concat(arrays, axis=axis)


def copy(a, xp):
    """A new array equal to ``a`` (torch: ``clone``, which keeps the autograd graph)."""
    if is_native(xp):
        return a.copy()
    return a.clone() if is_torch(xp) else xp.asarray(a, copy=True)


def contiguous(a, xp):
    """``a`` in row-major order (torch: ``.contiguous()``; libraries without the notion: ``a``)."""
    if is_native(xp):
        return xp.ascontiguousarray(a)
    return a.contiguous() if hasattr(a, "contiguous") else a


def is_torch(xp):
    """True when ``xp`` is torch or its Array API namespace: a test of the module's name (no cached
    helper, which torch.compile would trace)."""
    return getattr(xp, "__name__", None) in ("torch", "array_api_compat.torch")


def is_complex(dtype):
    """True for a complex dtype of any library."""
    return numpy_dtype(dtype).kind == "c"


def to_host(a):
    """A NumPy copy of a device array, for error messages only; NumPy arrays pass through."""
    if isinstance(a, numpy.ndarray):
        return a
    if hasattr(a, "get"):  # CuPy
        return a.get()
    if hasattr(a, "cpu"):  # torch, any device
        return a.detach().cpu().numpy()
    return numpy.asarray(a)


def functorch_wrapped(t, unknown=True):
    """Whether torch tensor ``t`` is a ``torch.func`` transform's wrapper (vmap's batched or grad's
    tracking tensor), by torch's private probe (torch 2.4-2.13); ``unknown`` where this torch has none."""
    probe = getattr(getattr(sys.modules["torch"]._C, "_functorch", None), "is_functorch_wrapped_tensor", None)
    return unknown if probe is None else probe(t)
