"""Backend selection (NumPy or CuPy) and the dtype rules.

Nothing here touches the GPU at import time: CuPy is imported lazily, and only
the array types of the arguments decide the backend.
"""

import functools

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


def array_module(*arrays):
    """The array module (``numpy`` or ``cupy``) of ``arrays``.

    Non-array arguments (lists, scalars, ``None``) are ignored. Mixing NumPy
    and CuPy arrays is a ``TypeError`` naming both types: nothing is copied
    between host and device behind the caller's back.
    """
    kinds = {}
    for a in arrays:
        if is_cupy_array(a):
            kinds.setdefault("cupy", type(a))
        elif isinstance(a, numpy.ndarray):
            kinds.setdefault("numpy", type(a))
    if len(kinds) > 1:
        raise TypeError(
            "cannot mix NumPy and CuPy arrays: got {} and {}; move the data "
            "explicitly with cupy.asarray or cupy.asnumpy".format(type_name(kinds["numpy"]), type_name(kinds["cupy"]))
        )
    if "cupy" in kinds:
        return cupy_module()
    return numpy


def backend_name(xp):
    """``"numpy"`` or ``"cupy"``."""
    return "cupy" if xp is not numpy else "numpy"


def module_named(name):
    """The array module called ``name`` (``"numpy"`` or ``"cupy"``).

    Matrices keep their backend by name, so that they pickle without a
    module object; unpickling a CuPy matrix where CuPy is missing is an
    ``ImportError`` that says so.
    """
    if name == "numpy":
        return numpy
    cupy = cupy_module()
    if cupy is None:
        raise ImportError(
            "this matrix lives on the CuPy backend, but CuPy is not installed; "
            "pip install 'cuhouse[cuda13]' (or move the data to NumPy before pickling)"
        )
    return cupy


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


def to_host(a):
    """A NumPy copy of a CuPy array; NumPy arrays pass through."""
    return a.get() if hasattr(a, "get") else a
