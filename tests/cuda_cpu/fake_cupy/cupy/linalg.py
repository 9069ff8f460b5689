"""``cupy.linalg`` of the CPU stand-in: ``numpy.linalg`` on device data."""

import numpy

from . import _wrapped


def __getattr__(name):
    return _wrapped(numpy.linalg, name)
