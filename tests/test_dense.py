"""The dense plan's build (cuhouse.algorithms.dense): one NumPy matrix in the full layout builds
``H = I - V^T S^{-1} V`` with one triangular solve when it is one block, and otherwise skips the first
block's ``V I`` (the numbers of compact WY applied to the identity)."""

import numpy
import pytest
from helpers import dense_reference

from cuhouse.algorithms import cwy, dense


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize(
    "n, d, k", [(1, 1, 1), (16, 16, 16), (16, 16, 5), (7, 24, 3), (7, 24, 7), (64, 64, 32), (40, 64, 64)]
)
def test_the_direct_build_gives_h(dtype, n, d, k):
    rng = numpy.random.default_rng(n + d + k)
    y = rng.standard_normal((n, d)).astype(dtype)
    form = dense.build(y, k, numpy)
    assert form.h.flags.c_contiguous and form.h.dtype == dtype and form.h.shape == (d, d)
    tol = 1e-5 if dtype == numpy.float32 else 1e-13
    numpy.testing.assert_allclose(form.h, dense_reference(y.astype(numpy.float64)), rtol=0, atol=tol)
    applied = cwy.apply(form.wy, numpy.eye(d, dtype=dtype), False, numpy)
    if k < n:  # several blocks: the steps of compact WY, bit for bit
        numpy.testing.assert_array_equal(form.h, applied)
    numpy.testing.assert_allclose(form.h, applied, rtol=0, atol=tol)


def test_a_one_block_build_with_zero_rows_and_a_column_major_matrix():
    rng = numpy.random.default_rng(4)
    y = rng.standard_normal((6, 10))
    y[2] = 0  # an identity factor
    for rows in (y, numpy.asfortranarray(y)):
        numpy.testing.assert_allclose(dense.build(rows, 6, numpy).h, dense_reference(rows), rtol=0, atol=1e-13)


def test_batched_and_structured_builds_take_the_general_steps():
    rng = numpy.random.default_rng(5)
    y = rng.standard_normal((2, 6, 9))
    numpy.testing.assert_allclose(dense.build(y, 4, numpy).h, dense_reference(y), rtol=0, atol=1e-13)
    unit = numpy.triu(rng.standard_normal((6, 9)), 1) + numpy.eye(6, 9)
    numpy.testing.assert_allclose(dense.build(unit, 4, numpy, "unit").h, dense_reference(unit), rtol=0, atol=1e-13)
