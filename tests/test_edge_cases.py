"""Edge cases: empty operands, mixed precision, degenerate spectra."""

import numpy
import pytest
from helpers import assert_allclose, dense_reference, dtype_name, needs_algorithm, on, rmatmul, to_numpy

import cuhouse
from cuhouse.algorithms import ALGORITHMS

ALGORITHM_NAMES = ["auto"] + sorted(ALGORITHMS)


@pytest.mark.parametrize("algorithm", ALGORITHM_NAMES)
def test_empty_operand_gives_empty_result_and_gradients(any_xp, algorithm):
    needs_algorithm(any_xp, algorithm)
    v = on(any_xp, numpy.random.default_rng(0).standard_normal((3, 5)))
    h = cuhouse.HouseholderProduct(v, algorithm=algorithm)
    assert tuple((h @ on(any_xp, numpy.ones((5, 0)))).shape) == (5, 0)
    assert tuple(rmatmul(on(any_xp, numpy.ones((0, 5))), h).shape) == (0, 5)
    out, back = cuhouse.vjp(cuhouse.matmul, h, on(any_xp, numpy.ones((5, 0))))
    (dv,), dx = back(on(any_xp, numpy.ones((5, 0))))
    assert tuple(dv.shape) == (3, 5) and tuple(dx.shape) == (5, 0)
    assert not to_numpy(dv).any()
    w = cuhouse.SVDMatrix(v, on(any_xp, numpy.ones(3)), v[:, :4] + 1)
    assert tuple((w @ on(any_xp, numpy.ones((4, 0)))).shape) == (5, 0)


@pytest.mark.parametrize("algorithm", ALGORITHM_NAMES)
def test_float32_vectors_with_float64_x_are_float64_accurate(any_xp, algorithm):
    needs_algorithm(any_xp, algorithm)
    v = numpy.random.default_rng(1).standard_normal((20, 30)).astype(numpy.float32)
    h = cuhouse.HouseholderProduct(on(any_xp, v), algorithm=algorithm)
    out = h @ on(any_xp, numpy.eye(30))
    assert dtype_name(out) == "float64"
    assert_allclose(out, dense_reference(v), rtol=0, atol=1e-12)
    ht = cuhouse.HouseholderProduct(on(any_xp, v), algorithm=algorithm).T
    assert_allclose(ht @ on(any_xp, numpy.eye(30)), dense_reference(v).T, rtol=0, atol=1e-12)


@pytest.mark.parametrize("p", [None, 2, -2, "fro", "nuc"])
@pytest.mark.parametrize("s", [[0.0, 0.0, 0.0], [2.0, 0.0, 1.0]])
def test_cond_of_singular_matrix_is_inf_like_numpy(any_xp, p, s):
    rng = numpy.random.default_rng(2)
    w = cuhouse.SVDMatrix(*on(any_xp, rng.standard_normal((3, 3)), s, rng.standard_normal((2, 3))))
    expected = 0.0 if (p == -2 and any(s)) else numpy.inf
    with numpy.errstate(all="raise"):
        assert float(w.cond(p)) == expected


def test_from_dense_of_an_empty_batch_is_empty(any_xp):
    assert cuhouse.SVDMatrix.from_dense(on(any_xp, numpy.zeros((0, 4, 3)))).shape == (0, 4, 3)
    e = cuhouse.EighMatrix.from_dense(on(any_xp, numpy.zeros((0, 4, 4))))
    assert e.shape == (0, 4, 4) and tuple(e.expm().logdet().shape) == (0,)


def test_determinants_are_writable_arrays_of_the_batch_shape(any_xp):
    rng = numpy.random.default_rng(3)
    w = cuhouse.SVDMatrix(
        *on(any_xp, rng.standard_normal((2, 3, 4)), rng.uniform(1, 2, 4), rng.standard_normal((3, 4)))
    )
    e = cuhouse.EighMatrix(*on(any_xp, rng.standard_normal((3, 4)), rng.uniform(1, 2, (2, 4))))
    for a in (w.det(), *w.slogdet(), w.logdet(), e.logdet(), e.expm().det()):
        assert tuple(a.shape) == (2,)
        expected = to_numpy(a) * 2
        a *= 2  # a read-only broadcast view would raise (or alias, on CuPy)
        numpy.testing.assert_array_equal(to_numpy(a), expected)


@pytest.mark.parametrize("make", ["svd", "householder"])
def test_gradients_have_the_dtype_of_their_leaf_and_of_x(any_xp, make):
    rng = numpy.random.default_rng(4)
    u = on(any_xp, rng.standard_normal((3, 4)), dtype=numpy.float32)
    s = on(any_xp, rng.uniform(1, 2, 4), dtype=numpy.float32)
    v = on(any_xp, rng.standard_normal((3, 4)))  # float64
    a = cuhouse.SVDMatrix(u, s, v) if make == "svd" else cuhouse.HouseholderProduct(u) @ cuhouse.HouseholderProduct(v)
    for x in (on(any_xp, numpy.ones((4, 2)), dtype=numpy.float32), on(any_xp, numpy.ones((4, 2)))):
        out, back = cuhouse.vjp(cuhouse.matmul, a, x)
        assert dtype_name(out) == "float64"
        grads, dx = back(on(any_xp, numpy.ones(tuple(out.shape))))
        assert [g.dtype for g in grads] == [p.dtype for p in a.params]
        assert dx.dtype == x.dtype
    if make == "svd":
        value, back = cuhouse.vjp(cuhouse.logdet, a)
        assert [g.dtype for g in back(on(any_xp, numpy.ones(tuple(value.shape))))[0]] == [p.dtype for p in a.params]


def test_non_native_byte_order_is_accepted():  # NumPy only: byte order is a NumPy dtype property
    rng = numpy.random.default_rng(5)
    v, x = rng.standard_normal((3, 4)), rng.standard_normal((4, 2))
    swapped = v.dtype.newbyteorder(">" if numpy.little_endian else "<")
    h = cuhouse.HouseholderProduct(v.astype(swapped))
    assert h.dtype == numpy.float64
    numpy.testing.assert_allclose(h @ x.astype(swapped), dense_reference(v) @ x, atol=1e-14)
    w = cuhouse.SVDMatrix(v.astype(swapped), numpy.ones(3, swapped), v)
    numpy.testing.assert_allclose(w.todense(), cuhouse.SVDMatrix(v, numpy.ones(3), v).todense())


@pytest.mark.parametrize("algorithm", ALGORITHM_NAMES)
@pytest.mark.parametrize("make", ["householder", "svd"])
def test_modifying_the_vjp_output_in_place_leaves_the_gradients_intact(any_xp, algorithm, make):
    needs_algorithm(any_xp, algorithm)
    rng = numpy.random.default_rng(6)
    v = on(any_xp, rng.standard_normal((4, 5)))
    a = (
        cuhouse.HouseholderProduct(v, algorithm=algorithm)
        if make == "householder"
        else cuhouse.SVDMatrix(cuhouse.HouseholderProduct(v, algorithm=algorithm), on(any_xp, numpy.ones(4)), v)
    )
    x, y = on(any_xp, rng.standard_normal((5, 3)), rng.standard_normal((5, 3)))
    out, back = cuhouse.vjp(cuhouse.matmul, a, x)
    expected = back(out - y)
    out, back = cuhouse.vjp(cuhouse.matmul, a, x)
    out -= y  # the residual, computed in place
    grads, dx = back(out)
    for g, e in zip(grads + (dx,), expected[0] + (expected[1],)):
        assert_allclose(g, e, rtol=1e-12, atol=1e-12)


def _random_svd(xp, d_out, d_in):
    """An ``SVDMatrix`` on ``xp`` (``SVDMatrix.random`` makes NumPy arrays)."""
    rng = numpy.random.default_rng(0)
    r = min(d_out, d_in)
    return cuhouse.SVDMatrix(
        *on(xp, rng.standard_normal((r, d_out)), rng.uniform(0.9, 1.1, r), rng.standard_normal((r, d_in)))
    )


def test_solve_names_b_in_shape_errors(any_xp):
    w = _random_svd(any_xp, 4, 4)
    with pytest.raises(ValueError, match=r"B has shape \(3,\) but the operator is 4x4"):
        w.solve(on(any_xp, numpy.ones(3)))


@pytest.mark.parametrize(
    "rcond,error,match",
    [
        ("a", TypeError, "rcond must be a real number, got str"),
        (-1.0, ValueError, "rcond must be a non-negative number, got -1.0"),
        (numpy.nan, ValueError, "rcond must be a non-negative number, got nan"),
    ],
)
def test_pinv_rejects_bad_rcond(any_xp, rcond, error, match):
    with pytest.raises(error, match=match):
        _random_svd(any_xp, 4, 3).pinv(rcond)


@pytest.mark.parametrize(
    "d_out,error,match",
    [
        (-1, ValueError, "d_out must be a positive int, got -1"),
        (None, TypeError, "d_out must be a positive int, got NoneType"),
        (2.0, TypeError, "d_out must be a positive int, got float"),
    ],
)
def test_random_rejects_bad_sizes(d_out, error, match):  # NumPy only: SVDMatrix.random makes NumPy arrays
    with pytest.raises(error, match=match):
        cuhouse.SVDMatrix.random(d_out, 3, rng=0)


@pytest.mark.skipif(numpy.lib.NumpyVersion(numpy.__version__) < "2.0.0", reason="asarray(copy=) is NumPy 2")
def test_asarray_without_copy_is_refused():  # NumPy only: numpy.asarray(H) (refused on the generic path)
    h = cuhouse.HouseholderProduct(numpy.eye(3))
    with pytest.raises(ValueError, match=r"copy=False\) is impossible"):
        numpy.asarray(h, copy=False)
    with pytest.raises(ValueError, match=r"copy=False\) is impossible"):
        numpy.asarray(cuhouse.SVDMatrix.random(3, 3, rng=0), copy=False)
    assert numpy.asarray(h, copy=True).shape == (3, 3)


def test_from_lapack_accepts_float32_a_with_float64_tau(any_xp):
    from scipy.linalg import lapack

    a = numpy.random.default_rng(1).standard_normal((6, 4)).astype(numpy.float32)
    qr, tau, _, _ = lapack.sgeqrf(a)
    h = cuhouse.HouseholderProduct.from_lapack(*on(any_xp, qr, tau.astype(numpy.float64)))
    q = cuhouse.HouseholderProduct.from_lapack(*on(any_xp, qr, tau)).todense()
    assert_allclose(h.todense(), q, atol=1e-5)
