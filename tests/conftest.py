"""Fixtures: the backend parametrization. Shared helpers are in ``helpers.py``."""

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
