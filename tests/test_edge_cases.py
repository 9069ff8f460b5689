"""Edge cases: empty operands, mixed precision, degenerate spectra."""
import numpy
import pytest

import cuhouse
from cuhouse.algorithms import ALGORITHMS
from conftest import dense_reference, to_numpy

ALGORITHM_NAMES = ["auto"] + sorted(ALGORITHMS)


@pytest.mark.parametrize("algorithm", ALGORITHM_NAMES)
def test_empty_operand_gives_empty_result_and_gradients(xp, algorithm):
    v = xp.asarray(numpy.random.default_rng(0).standard_normal((3, 5)))
    h = cuhouse.HouseholderProduct(v, algorithm=algorithm)
    assert (h @ xp.ones((5, 0))).shape == (5, 0)
    assert (xp.ones((0, 5)) @ h).shape == (0, 5)
    out, back = cuhouse.vjp(cuhouse.matmul, h, xp.ones((5, 0)))
    (dv,), dx = back(xp.ones((5, 0)))
    assert dv.shape == (3, 5) and dx.shape == (5, 0)
    assert not to_numpy(dv).any()
    w = cuhouse.SVDMatrix(v, xp.ones(3), v[:, :4] + 1)
    assert (w @ xp.ones((4, 0))).shape == (5, 0)
