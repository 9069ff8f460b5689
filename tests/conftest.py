"""Backend parametrization and dtype-aware tolerances shared by the tests."""

import os

import numpy
import pytest

# The cost model's constants: the built-in ones, so that plans do not depend on the machine the tests
# run on (tests of the calibration cache point it at a temporary directory themselves).
os.environ["CUHOUSE_CALIBRATION"] = "off"

from cuhouse._backend import cupy_module, gpu_available


class Library:
    """A library of the generic path as the tests use it: its Array API namespace, plus the few
    NumPy spellings the suite is written with (``asarray`` of a NumPy array, ``swapaxes``).

    ``name`` is the backend's name (``"torch"``, ``"array_api_strict"``); ``native`` is False, so a
    test that needs a NumPy/CuPy-only feature asks for it with :func:`native_only`.
    """

    native = False

    def __init__(self, name, namespace):
        self.name = self.__name__ = name
        self._namespace = namespace

    def __getattr__(self, attribute):
        return getattr(self._namespace, attribute)

    def asarray(self, a, dtype=None):
        if isinstance(a, numpy.ndarray) and dtype is not None:
            a = a.astype(dtype)
        if isinstance(a, numpy.ndarray):
            return self._namespace.asarray(numpy.ascontiguousarray(a))
        return self._namespace.asarray(a) if dtype is None else self._namespace.asarray(a, dtype=self._dtype(dtype))

    def _dtype(self, dtype):
        return getattr(self._namespace, numpy.dtype(dtype).name)

    def swapaxes(self, a, axis1, axis2):
        if sorted((axis1 % a.ndim, axis2 % a.ndim)) != [a.ndim - 2, a.ndim - 1]:
            raise NotImplementedError("the tests swap the last two axes only")
        return a.mT


def _generic(name):
    """The :class:`Library` of ``name``, or ``None`` when it is not installed."""
    try:
        if name == "torch":
            import array_api_compat.torch as namespace
        else:
            namespace = __import__(name)
    except ImportError:
        return None
    return Library(name, namespace)


def _backends(native=True, generic=True):
    if native:
        yield pytest.param(numpy, id="numpy")
        yield pytest.param(
            cupy_module(),
            id="cupy",
            marks=[pytest.mark.gpu, pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA device")],
        )
    if generic:
        for name in ("torch", "array_api_strict"):
            library = _generic(name)
            yield pytest.param(library, id=name, marks=pytest.mark.skipif(library is None, reason="needs " + name))


@pytest.fixture(params=list(_backends(generic=False)))
def xp(request):
    """The array module under test: numpy always, cupy when a device answers."""
    return request.param


@pytest.fixture(params=list(_backends()))
def any_xp(request):
    """Every backend: numpy, cupy (with a device), and the generic path's torch (CPU) and
    array_api_strict (each when installed), as a :class:`Library`."""
    return request.param


@pytest.fixture(params=list(_backends(native=False)))
def generic_xp(request):
    """The generic path's libraries: torch (CPU) and array_api_strict, as :class:`Library`."""
    return request.param


def native_only(xp, what):
    """Skip the test on the generic path, saying which NumPy/CuPy-only feature it exercises."""
    if getattr(xp, "native", True) is False:
        pytest.skip("{} is NumPy/CuPy only".format(what))


def matmul(a, b):
    """``a @ b``, through :func:`cuhouse.matmul` (array_api_strict's ``@`` refuses a cuhouse matrix)."""
    import cuhouse

    return cuhouse.matmul(a, b)


def to_numpy(a):
    """A NumPy copy of a NumPy, CuPy, torch or array_api_strict array."""
    if hasattr(a, "get"):
        return a.get()
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    return numpy.asarray(a)


def rtol(dtype, scale=1):
    """Relative tolerance for results computed in ``dtype`` (as numpy.linalg's tests do)."""
    return scale * {numpy.float32: 2e-5, numpy.float64: 1e-12}[numpy.dtype(dtype).type]


def dense_reference(vectors):
    """float64 H(v_1) ... H(v_n) by the sequential loop, for a single (n, d) stack or a batch."""
    v = to_numpy(vectors).astype(numpy.float64)
    d = v.shape[-1]
    h = numpy.broadcast_to(numpy.eye(d), v.shape[:-2] + (d, d)).copy()
    for i in range(v.shape[-2]):
        vi = v[..., i, :]
        unit = vi / numpy.linalg.norm(vi, axis=-1, keepdims=True)
        h -= 2 * (h @ unit[..., :, None]) @ unit[..., None, :]
    return h
