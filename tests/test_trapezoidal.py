"""Structured layouts (``"trapezoidal"``, LAPACK's ``"unit"``) in every algorithm: the same
products and gradients as the full-length rows, computed on the trailing rows only."""
import numpy
import pytest

from cuhouse.algorithms import ALGORITHMS, _blocks

LAYOUTS = ("trapezoidal", "unit")


def _dense(v, identity=None):
    """H = H(v_1) ... H(v_n) in float64 from full rows ``(n, d)``, one batch entry."""
    d = v.shape[-1]
    h = numpy.eye(d)
    for i, vi in enumerate(v.astype(numpy.float64)):
        if (identity is not None and identity[i]) or not vi.any():
            continue
        h = h @ (numpy.eye(d) - 2 * numpy.outer(vi, vi) / (vi @ vi))
    return h


def _stored(rng, batch, n, d, layout, dtype=numpy.float64):
    """Stored rows of the layout, with NaN written where the layout stores nothing."""
    y = rng.standard_normal(batch + (n, d)).astype(dtype)
    ignored = numpy.tril(numpy.ones((n, d), dtype=bool), 0 if layout == "unit" else -1)
    return numpy.where(ignored, numpy.nan, y)


def _full(y, layout):
    full = _blocks.full_rows(numpy.nan_to_num(y, nan=0.0), layout, numpy)
    return full


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("batch, n, d", [((), 7, 7), ((2,), 5, 9), ((3,), 9, 11)])
def test_structured_product_and_gradient_equal_full_rows(algorithm, layout, transpose, batch, n, d):
    rng = numpy.random.default_rng(n * d)
    y = _stored(rng, batch, n, d, layout)
    full = _full(y, layout)
    module = ALGORITHMS[algorithm]
    x = rng.standard_normal(batch + (d, 3))
    dout = rng.standard_normal(batch + (d, 3))
    structured = module.build(y, 4, numpy, layout)
    reference = module.build(full, 4, numpy)
    out = module.apply(structured, x, transpose, numpy)
    expected = module.apply(reference, x, transpose, numpy)
    assert numpy.isfinite(out).all()                      # the NaN where nothing is stored never reach it
    numpy.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)
    dense = numpy.stack([_dense(f) for f in full.reshape((-1, n, d))]).reshape(batch + (d, d))
    numpy.testing.assert_allclose(out, (numpy.swapaxes(dense, -1, -2) if transpose else dense) @ x, atol=1e-12)
    dv, dx = module.backward(structured, out, dout, transpose, numpy)
    dv_full, dx_full = module.backward(reference, expected, dout, transpose, numpy)
    numpy.testing.assert_allclose(dx, dx_full, rtol=0, atol=1e-12)
    numpy.testing.assert_allclose(dv, _blocks.structured(dv_full.copy(), layout, numpy), rtol=0, atol=1e-12)


def _inner(a, b):
    return float((a * b).sum())


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
@pytest.mark.parametrize("layout", ("full",) + LAYOUTS)
@pytest.mark.parametrize("transpose", [False, True])
def test_gradient_of_raw_rows_matches_central_differences(algorithm, layout, transpose):
    """Rows far from unit length, identity factors included: the adjoint is the derivative."""
    rng = numpy.random.default_rng(11)
    n, d = 6, 8
    y = rng.standard_normal((2, n, d)) * rng.uniform(0.3, 3.0, (2, n, 1))
    identity = numpy.zeros((2, n), dtype=bool)
    identity[0, 2] = identity[1, 5] = True
    x = rng.standard_normal((2, d, 3))
    dout = rng.standard_normal((2, d, 3))
    module = ALGORITHMS[algorithm]

    def product(rows, operand):
        return module.apply(module.build(rows, 4, numpy, layout, identity), operand, transpose, numpy)

    out = product(y, x)
    dv, dx = module.backward(module.build(y, 4, numpy, layout, identity), out, dout, transpose, numpy)
    assert not dv[identity].any()
    ty, tx = rng.standard_normal(y.shape), rng.standard_normal(x.shape)
    eps = 1e-6
    numeric = _inner(dout, (product(y + eps * ty, x + eps * tx) - product(y - eps * ty, x - eps * tx)) / (2 * eps))
    adjoint = _inner(dv, ty) + _inner(dx, tx)
    assert abs(numeric - adjoint) <= 1e-7 * max(abs(adjoint), 1.0)


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_identity_factors_act_as_nothing(algorithm, layout):
    rng = numpy.random.default_rng(12)
    y = _stored(rng, (), 6, 8, layout)
    identity = numpy.array([False, True, False, False, True, False])
    x = rng.standard_normal((8, 2))
    module = ALGORITHMS[algorithm]
    out = module.apply(module.build(y, 4, numpy, layout, identity), x, False, numpy)
    numpy.testing.assert_allclose(out, _dense(_full(y, layout), identity) @ x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_float32_structured_matches_float64(algorithm, layout):
    rng = numpy.random.default_rng(13)
    y = _stored(rng, (), 20, 24, layout, numpy.float32)
    x = rng.standard_normal((24, 5)).astype(numpy.float32)
    module = ALGORITHMS[algorithm]
    out = module.apply(module.build(y, 8, numpy, layout), x, True, numpy)
    assert out.dtype == numpy.float32
    expected = _dense(_full(y, layout)).T @ x
    numpy.testing.assert_allclose(out, expected, rtol=0, atol=50 * numpy.finfo(numpy.float32).eps * 24)
