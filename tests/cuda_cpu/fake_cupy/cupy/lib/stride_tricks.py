"""``cupy.lib.stride_tricks`` of the CPU stand-in: views of device memory, as NumPy's."""

import numpy.lib.stride_tricks

from .. import _wrapped


def __getattr__(name):
    return _wrapped(numpy.lib.stride_tricks, name)
