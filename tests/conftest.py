"""Fixtures: the backend parametrization. Shared helpers are in ``helpers.py``."""

import os

import numpy
import pytest

# The cost model's constants: the built-in ones, so that plans do not depend on the machine the tests
# run on (tests of the calibration cache point it at a temporary directory themselves).
os.environ["CUHOUSE_CALIBRATION"] = "off"

from helpers import generic_library  # noqa: E402

from cuhouse._backend import cupy_module, gpu_available  # noqa: E402

if generic_library("torch") is not None:
    import torch

    # The tests' arrays are small: torch's intra-op threads only spin against each other (and against
    # other processes) there; one d = 300 product took 0.03 s on one thread and up to 5.7 s on two
    # busy cores.
    torch.set_num_threads(1)


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
            library = generic_library(name)
            yield pytest.param(library, id=name, marks=pytest.mark.skipif(library is None, reason="needs " + name))


@pytest.fixture(params=list(_backends(generic=False)))
def xp(request):
    """The array module under test: numpy always, cupy when a device answers."""
    return request.param


@pytest.fixture(params=list(_backends()))
def any_xp(request):
    """Every backend: numpy, cupy (with a device), and the generic path's torch (CPU) and
    array_api_strict (each when installed), as a :class:`helpers.Library`."""
    return request.param


@pytest.fixture(params=list(_backends(native=False)))
def generic_xp(request):
    """The generic path's libraries: torch (CPU) and array_api_strict, as :class:`helpers.Library`."""
    return request.param
