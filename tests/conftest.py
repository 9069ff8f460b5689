"""Backend parametrization and dtype-aware tolerances shared by the tests."""

import os

import numpy
import pytest

# The cost model's constants: the built-in ones, so that plans do not depend on the machine the tests
# run on (tests of the calibration cache point it at a temporary directory themselves).
os.environ["CUHOUSE_CALIBRATION"] = "off"

from cuhouse._backend import cupy_module, gpu_available


def _backends():
    yield pytest.param(numpy, id="numpy")
    yield pytest.param(
        cupy_module(),
        id="cupy",
        marks=[pytest.mark.gpu, pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA device")],
    )


@pytest.fixture(params=list(_backends()))
def xp(request):
    """The array module under test: numpy always, cupy when a device answers."""
    return request.param


def to_numpy(a):
    """A NumPy copy of a NumPy or CuPy array."""
    return a.get() if hasattr(a, "get") else numpy.asarray(a)


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
