"""``cupy.testing`` of the CPU stand-in: NumPy's assertions on host copies."""

import numpy


def _host(a):
    return a.get() if hasattr(a, "get") and not isinstance(a, numpy.ndarray) else a


def assert_array_equal(actual, desired, *args, **kwargs):
    numpy.testing.assert_array_equal(_host(actual), _host(desired), *args, **kwargs)


def assert_allclose(actual, desired, *args, **kwargs):
    numpy.testing.assert_allclose(_host(actual), _host(desired), *args, **kwargs)
