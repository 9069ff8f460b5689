"""SVDMatrix and EighMatrix against numpy.linalg / scipy.linalg on the dense matrix."""

import itertools

import numpy
import pytest
import scipy.linalg
from helpers import check_logdet_vjp, check_matmul_vjp, dense_reference, dtype_name, examples, rmatmul, rtol, to_numpy
from hypothesis import given, settings
from hypothesis import strategies as st

import cuhouse as ch

DTYPES = [numpy.float32, numpy.float64]
# (d_out, d_in, r): square full rank, tall, wide, square rank-deficient
SHAPES = [(6, 6, 6), (7, 4, 4), (4, 7, 3), (5, 5, 2)]
BATCHES = [(), (2,)]


def spectrum(rng, shape, low=0.5, high=2.0):
    """Values with magnitudes in [low, high] and random signs."""
    return rng.uniform(low, high, shape) * rng.choice([-1.0, 1.0], shape)


def svd_arrays(any_xp, dtype, d_out, d_in, r, batch=(), seed=0):
    """Leaf arrays ``(u, s, v)`` (U batched, V not) and the float64 dense W.

    U has d_out reflections and V d_in - 1, so det U det V = -1 for square W.
    """
    rng = numpy.random.default_rng(seed)
    u = rng.standard_normal(batch + (d_out, d_out))
    v = rng.standard_normal((max(d_in - 1, 1), d_in))
    s = spectrum(rng, batch + (r,))
    dense = dense_reference(u)[..., :r] * s[..., None, :] @ numpy.swapaxes(dense_reference(v)[..., :r], -1, -2)
    return tuple(any_xp.asarray(a.astype(dtype)) for a in (u, s, v)), dense


def eigh_arrays(any_xp, dtype, d, batch=(), seed=0, low=0.3, high=2.0):
    """Leaf arrays ``(u, w)`` with positive w in [low, high] and the float64 dense W."""
    rng = numpy.random.default_rng(seed)
    u = rng.standard_normal(batch + (d, d))
    w = rng.uniform(low, high, batch + (d,))
    q = dense_reference(u)
    return (any_xp.asarray(u.astype(dtype)), any_xp.asarray(w.astype(dtype))), (q * w[..., None, :]) @ numpy.swapaxes(
        q, -1, -2
    )


def arrays(xp, *values):
    """Each of ``values`` (NumPy arrays or nested lists) as a float64 array of ``xp``."""
    return tuple(xp.asarray(numpy.asarray(v, dtype=numpy.float64)) for v in values)


def random_svd(xp, d_out, d_in, rank=None, batch=()):
    """An ``SVDMatrix`` of ``xp`` arrays (:func:`svd_arrays`, float64)."""
    return ch.SVDMatrix(*svd_arrays(xp, numpy.float64, d_out, d_in, rank or min(d_out, d_in), batch)[0])


def assert_close(actual, expected, dtype, scale=10):
    """Relative to the largest entry of ``expected``, with a dtype-aware tolerance."""
    actual, expected = to_numpy(actual), numpy.asarray(expected)
    assert actual.shape == expected.shape
    finite = numpy.isfinite(expected)
    assert numpy.array_equal(finite, numpy.isfinite(actual))
    assert numpy.array_equal(numpy.sign(expected[~finite]), numpy.sign(actual[~finite]))
    bound = rtol(dtype, scale) * max(1.0, numpy.abs(expected[finite]).max(initial=0))
    numpy.testing.assert_allclose(actual[finite], expected[finite], rtol=0, atol=bound)


def per_matrix(fn, a):
    """``fn`` applied to each matrix of a stack."""
    a = numpy.asarray(a)
    flat = a.reshape((-1,) + a.shape[-2:])
    return numpy.stack([numpy.real_if_close(fn(m)) for m in flat]).reshape(a.shape[:-2] + (-1,) + a.shape[-1:])


# ---------------------------------------------------------------- SVDMatrix
@pytest.fixture(
    params=list(itertools.product(DTYPES, SHAPES, BATCHES)),
    ids=lambda p: "{}-{}x{}r{}-batch{}".format(numpy.dtype(p[0]).name, *p[1], len(p[2])),
)
def svd_case(request, any_xp):
    """``(W, dense float64 W, dtype, (d_out, d_in, r), batch)`` for every dtype, shape class and batch."""
    dtype, shape, batch = request.param
    (u, s, v), dense = svd_arrays(any_xp, dtype, *shape, batch)
    return ch.SVDMatrix(u, s, v), dense, dtype, shape, batch


def test_products_and_dense_match_reference(any_xp, svd_case):
    W, dense, dtype, shape, batch = svd_case
    d_out, d_in, _ = shape
    rng = numpy.random.default_rng(1)
    x_left = rng.standard_normal((3, 1, d_in, 5)).astype(dtype)  # broadcasts against the batch
    x_right = rng.standard_normal((5, d_out)).astype(dtype)
    assert W.shape == batch + (d_out, d_in) and dtype_name(W) == numpy.dtype(dtype).name
    assert_close(W.todense(), dense, dtype)
    assert_close(W @ any_xp.asarray(x_left), dense @ x_left, dtype)
    assert_close(rmatmul(any_xp.asarray(x_right), W), x_right @ dense, dtype)
    assert_close(W @ any_xp.asarray(x_left[0, 0, :, 0]), dense @ x_left[0, 0, :, 0], dtype)
    assert_close(rmatmul(any_xp.asarray(x_right[0]), W), x_right[0] @ dense, dtype)
    assert_close(W.T.todense(), numpy.swapaxes(dense, -1, -2), dtype)
    assert_close(W.T @ any_xp.asarray(x_right.T), numpy.swapaxes(dense, -1, -2) @ x_right.T, dtype)
    assert dtype_name(W @ any_xp.asarray(x_left)) == numpy.dtype(dtype).name
    if any_xp is numpy:
        assert_close(numpy.asarray(W), dense, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", BATCHES)
def test_inv_solve_and_round_trip(any_xp, dtype, batch):
    (u, s, v), dense = svd_arrays(any_xp, dtype, 6, 6, 6, batch)
    W = ch.SVDMatrix(u, s, v)
    rng = numpy.random.default_rng(2)
    x = rng.standard_normal((6, 4)).astype(dtype)
    b = rng.standard_normal(6).astype(dtype)
    assert_close(W.inv().todense(), numpy.linalg.inv(dense), dtype)
    # right-hand sides broadcast to the batch first: NumPy 1 reads a (6, 4) b against (B, 6, 6) as B vectors
    x_batch = numpy.broadcast_to(x, dense.shape[:-2] + x.shape)
    b_batch = numpy.broadcast_to(b[:, None], dense.shape[:-2] + (6, 1))
    assert_close(W.solve(any_xp.asarray(x)), numpy.linalg.solve(dense, x_batch), dtype)
    assert_close(W.solve(any_xp.asarray(b)), numpy.linalg.solve(dense, b_batch)[..., 0], dtype)
    assert_close(W.inv() @ (W @ any_xp.asarray(x)), numpy.broadcast_to(x, batch + x.shape), dtype)
    assert_close(W.inv().T.todense(), numpy.swapaxes(numpy.linalg.inv(dense), -1, -2), dtype)


def test_pinv_matches_numpy(svd_case):
    W, dense, dtype, shape, batch = svd_case
    assert W.pinv(rcond=1e-6).shape == batch + shape[1::-1]
    assert_close(W.pinv(rcond=1e-6).todense(), numpy.linalg.pinv(dense, rcond=1e-6), dtype)


def test_pinv_cuts_small_values_like_numpy(any_xp):
    (u, _, v), _ = svd_arrays(any_xp, numpy.float64, 5, 5, 5)
    s = numpy.array([3.0, 1.0, 1e-3, -2.0, 1e-4])
    W = ch.SVDMatrix(u, any_xp.asarray(s), v)
    dense = to_numpy(W.todense())
    assert_close(W.pinv(rcond=1e-3).todense(), numpy.linalg.pinv(dense, rcond=1e-3), numpy.float64, 1e4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(6, 6, 6), (5, 5, 2)])
@pytest.mark.parametrize("batch", BATCHES)
def test_determinants_match_numpy(any_xp, dtype, shape, batch):
    (u, s, v), dense = svd_arrays(any_xp, dtype, *shape, batch)
    W = ch.SVDMatrix(u, s, v)
    sign, logabs = numpy.linalg.slogdet(dense)
    if shape[2] < shape[0]:  # rank-deficient: exactly singular
        sign, logabs = numpy.zeros_like(sign), numpy.full_like(logabs, -numpy.inf)
    got_sign, got_logabs = W.slogdet()
    assert_close(got_sign, sign, dtype)
    assert_close(got_logabs, logabs, dtype)
    assert_close(W.logdet(), logabs, dtype)
    assert_close(W.det(), sign * numpy.exp(logabs), dtype)
    assert W.det().shape == batch and dtype_name(W.det()) == numpy.dtype(dtype).name


def test_norms_and_cond_match_numpy(svd_case):
    W, dense, dtype, shape, _ = svd_case
    for order in (None, "fro", "nuc", 2, -2):
        assert_close(W.norm(order), numpy.linalg.norm(dense, order, axis=(-2, -1)), dtype)
    full_rank = shape[2] == min(shape[:2])
    if full_rank:
        assert_close(W.cond(), numpy.linalg.cond(dense), dtype)
        assert_close(W.cond(-2), numpy.linalg.cond(dense, -2), dtype)
    else:
        assert numpy.all(to_numpy(W.cond()) == numpy.inf)
    if full_rank and shape[0] == shape[1]:
        for p in ("fro", "nuc"):
            assert_close(W.cond(p), numpy.linalg.cond(dense, p), dtype)
    # unsorted |s|, zero-padded to min(d_out, d_in): sorted, they are the dense matrix's
    singular_values = -numpy.sort(-to_numpy(W.singular_values()), axis=-1)
    assert_close(singular_values, numpy.linalg.svd(dense, compute_uv=False), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_clip_clips_singular_values(any_xp, dtype, shape):
    (u, s, v), dense = svd_arrays(any_xp, dtype, *shape)
    left, sigma, right = numpy.linalg.svd(dense, full_matrices=False)
    rank = shape[2]
    expected = (left[:, :rank] * numpy.clip(sigma[:rank], 0.8, 1.5)) @ right[:rank]
    W = ch.SVDMatrix(u, s, v).clip(0.8, 1.5)
    assert_close(W.todense(), expected, dtype)
    assert_close(W.norm(2), min(1.5, sigma.max()), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("batch", BATCHES)
def test_from_dense_round_trip(any_xp, dtype, shape, batch):
    d_out, d_in, _ = shape
    a = numpy.random.default_rng(3).standard_normal(batch + (d_out, d_in))
    W = ch.SVDMatrix.from_dense(any_xp.asarray(a.astype(dtype)))
    assert W.rank == min(d_out, d_in) and W.U.n_reflections <= max(1, d_out - 1)
    assert_close(W.todense(), a, dtype)


def test_from_dense_truncates_to_best_rank_r(any_xp):
    a = numpy.random.default_rng(4).standard_normal((6, 8))
    W = ch.SVDMatrix.from_dense(any_xp.asarray(a), rank=2)
    left, sigma, right = numpy.linalg.svd(a, full_matrices=False)
    assert W.rank == 2 and W.U.n_reflections == 2 and W.V.n_reflections == 2
    assert_close(W.todense(), (left[:, :2] * sigma[:2]) @ right[:2], numpy.float64)


def test_random_layer():  # NumPy only: SVDMatrix.random makes NumPy arrays
    W = ch.SVDMatrix.random(8, 5, rank=3, rng=0)
    again = ch.SVDMatrix.random(8, 5, rank=3, rng=0)
    assert W.shape == (8, 5) and W.rank == 3 and W.U.n_reflections == 3
    assert numpy.all(numpy.abs(W.s - 1) <= 0.1)
    numpy.testing.assert_array_equal(W.todense(), again.todense())
    assert ch.SVDMatrix.random(4, 4, rng=1, dtype=numpy.float32, batch_shape=(2,)).shape == (2, 4, 4)


def test_product_with_a_householder_factor(any_xp):
    (u, s, v), dense = svd_arrays(any_xp, numpy.float64, 5, 4, 4, (2,))
    P = ch.SVDMatrix(u, s, v) @ ch.HouseholderProduct(v)
    product = dense @ dense_reference(v)
    rng = numpy.random.default_rng(9)
    x, y = rng.standard_normal((4, 3)), rng.standard_normal((3, 5))
    assert P.shape == (2, 5, 4)
    assert_close(P @ any_xp.asarray(x), product @ x, numpy.float64)
    assert_close(rmatmul(any_xp.asarray(y), P), y @ product, numpy.float64)
    assert_close(P.todense(), product, numpy.float64)


def test_params_are_the_leaf_arrays(any_xp):
    (u, s, v), _ = svd_arrays(any_xp, numpy.float64, 5, 4, 3)
    U, V = ch.HouseholderProduct(u), ch.HouseholderProduct(v)
    W = ch.SVDMatrix(U, s, V)
    # the caller's own arrays (U.vectors is a read-only view of u, so params name u itself)
    assert all(a is b for a, b in zip(W.params, (u, s, v)))
    assert all(a is b for a, b in zip(W.params, U.params + (s,) + V.params))
    for derived in (W.T, W.pinv().T, W.clip(0.6, 1.5).pinv()):
        assert all(a is b for a, b in zip(derived.params, W.params))
    assert ch.SVDMatrix(u, s, v).params[0] is u


def test_repr_and_lineage(any_xp):
    W = random_svd(any_xp, 4, 4)
    assert W.inv().T.lineage == "W.inv().T"
    assert "lineage='W.clip(0.0, 1.0).T'" in repr(W.clip(0, 1).T)
    assert "shape=(4, 4)" in repr(W) and "rank=4" in repr(W)


def test_inputs_are_not_mutated(any_xp):
    (u, s, v), _ = svd_arrays(any_xp, numpy.float64, 5, 5, 5)
    x_host = numpy.random.default_rng(5).standard_normal((5, 3))
    x, x_rows = any_xp.asarray(x_host), any_xp.asarray(x_host.T)
    before = [to_numpy(a).copy() for a in (u, s, v, x, x_rows)]
    W = ch.SVDMatrix(u, s, v)
    for result in (W @ x, rmatmul(x_rows, W), W.inv() @ x, W.pinv() @ x, W.solve(x), W.clip(0.6, 1.2) @ x, W.slogdet()):
        assert result is not None
    for a, b in zip(before, (u, s, v, x, x_rows)):
        numpy.testing.assert_array_equal(a, to_numpy(b))


# --------------------------------------------------------------- EighMatrix
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", BATCHES)
def test_eigh_matrix_functions_match_scipy(any_xp, dtype, batch):
    (u, w), dense = eigh_arrays(any_xp, dtype, 5, batch)
    E = ch.EighMatrix(u, w)
    eye = numpy.eye(5)
    assert E.T is E and E.shape == batch + (5, 5)
    assert_close(E.todense(), dense, dtype)
    assert_close(E.expm().todense(), per_matrix(scipy.linalg.expm, dense), dtype)
    assert_close(E.logm().todense(), per_matrix(scipy.linalg.logm, dense), dtype, 100)
    assert_close(E.sqrtm().todense(), per_matrix(scipy.linalg.sqrtm, dense), dtype, 100)
    for p in (0.5, -1.5, 3, -2):
        expected = per_matrix(lambda m: scipy.linalg.fractional_matrix_power(m, p), dense)
        assert_close(E.power(p).todense(), expected, dtype, 100)
    assert_close(E.cayley().todense(), (eye - dense) @ numpy.linalg.inv(eye + dense), dtype)
    assert_close(E.inv().todense(), numpy.linalg.inv(dense), dtype)
    sign, logabs = numpy.linalg.slogdet(dense)
    assert_close(E.slogdet()[0], sign, dtype)
    assert_close(E.logdet(), logabs, dtype)
    x = numpy.random.default_rng(6).standard_normal((5, 3)).astype(dtype)
    assert_close(E.expm() @ any_xp.asarray(x), per_matrix(scipy.linalg.expm, dense) @ x, dtype)
    assert_close(rmatmul(any_xp.asarray(x.T), E), x.T @ dense, dtype)


def test_eigh_negative_eigenvalues_and_integer_powers(any_xp):
    rng = numpy.random.default_rng(7)
    u = any_xp.asarray(rng.standard_normal((4, 4)))
    w = any_xp.asarray(numpy.array([-2.0, -0.5, 0.7, 3.0]))
    E = ch.EighMatrix(u, w)
    dense = to_numpy(E.todense())
    assert_close(E.power(3).todense(), numpy.linalg.matrix_power(dense, 3), numpy.float64)
    assert_close(E.power(-2).todense(), numpy.linalg.matrix_power(numpy.linalg.inv(dense), 2), numpy.float64)
    assert_close(E.slogdet()[0], numpy.linalg.slogdet(dense)[0], numpy.float64)
    assert_close(E.cayley().todense(), (numpy.eye(4) - dense) @ numpy.linalg.inv(numpy.eye(4) + dense), numpy.float64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_eigh_from_dense_round_trip(any_xp, dtype):
    a = numpy.random.default_rng(8).standard_normal((2, 6, 6))
    a = a + numpy.swapaxes(a, -1, -2)
    E = ch.EighMatrix.from_dense(any_xp.asarray(a.astype(dtype)))
    assert_close(E.todense(), a, dtype)
    assert_close(numpy.sort(to_numpy(E.w), axis=-1), numpy.linalg.eigvalsh(a), dtype)


# ------------------------------------------------------------ properties
well_conditioned = st.tuples(st.integers(1, 7), st.integers(0, 2**32 - 1))


def test_property_inverse_times_matrix_is_identity(any_xp):
    @settings(max_examples=examples(any_xp, 40), deadline=None)
    @given(well_conditioned)
    def check(case):
        d, seed = case
        (u, s, v), dense = svd_arrays(any_xp, numpy.float64, d, d, d, seed=seed)
        W = ch.SVDMatrix(u, s, v)
        assert_close(W.inv() @ W.todense(), numpy.eye(d), numpy.float64)
        assert_close(W.logdet(), numpy.linalg.slogdet(dense)[1], numpy.float64)
        assert float(W.det()) * numpy.linalg.det(dense) > 0

    check()


def test_property_from_dense_reproduces_and_keeps_singular_values(any_xp):
    @settings(max_examples=examples(any_xp, 40), deadline=None)
    @given(st.integers(1, 7), st.integers(1, 7), st.integers(0, 2**32 - 1))
    def check(d_out, d_in, seed):
        a = numpy.random.default_rng(seed).standard_normal((d_out, d_in))
        W = ch.SVDMatrix.from_dense(any_xp.asarray(a))
        assert_close(W.todense(), a, numpy.float64)
        if d_out == d_in:  # the signs of U, V and s all reach det
            assert_close(W.det(), numpy.linalg.det(a), numpy.float64)
        singular_values = numpy.sort(numpy.abs(to_numpy(W.s)))
        assert_close(singular_values, numpy.sort(numpy.linalg.svd(a, compute_uv=False)), numpy.float64)

    check()


# ------------------------------------------------------------- bad input
# Every refusal on every backend, with the same type and message.
def test_inv_of_singular_matrix_is_a_value_error(any_xp):
    W = ch.SVDMatrix(*arrays(any_xp, numpy.eye(3), [1.0, 0.0, 2.0], numpy.eye(3)))
    with pytest.raises(ValueError, match=r"inv\(\) needs every s nonzero \(W is singular\).*s\[1\] = 0\.0"):
        W.inv()


def test_inv_of_rectangular_or_rank_deficient_matrix_points_to_pinv(any_xp):
    with pytest.raises(ValueError, match=r"inv\(\) needs a square matrix, but W is 4x3"):
        random_svd(any_xp, 4, 3).inv()
    with pytest.raises(ValueError, match=r"full-rank square matrix.*rank r=2; use pinv"):
        random_svd(any_xp, 4, 4, rank=2).inv()


def test_det_of_rectangular_matrix_is_a_value_error(any_xp):
    with pytest.raises(ValueError, match=r"slogdet\(\) needs a square matrix, but W is 3x5"):
        random_svd(any_xp, 3, 5).logdet()


@pytest.mark.parametrize("method", ["logm", "sqrtm"])
def test_logm_and_sqrtm_need_positive_eigenvalues(any_xp, method):
    E = ch.EighMatrix(*arrays(any_xp, numpy.eye(3), [1.0, 2.0, -0.5]))
    with pytest.raises(ValueError, match=r"{}\(\) needs every w > 0.*w\[2\] = -0\.5".format(method)):
        getattr(E, method)()


def test_fractional_power_needs_positive_eigenvalues(any_xp):
    E = ch.EighMatrix(*arrays(any_xp, numpy.eye(2), [0.0, 2.0]))
    with pytest.raises(ValueError, match=r"power\(0\.5\) needs every w > 0 for a fractional power"):
        E.power(0.5)


@pytest.mark.parametrize(
    "p,error,match",
    [
        (numpy.nan, ValueError, r"power\(p\) needs a finite p, got nan"),
        (numpy.inf, ValueError, r"power\(p\) needs a finite p, got inf"),
        (None, TypeError, r"p must be a real number, got None"),
        ("2", TypeError, r"p must be a real number, got '2'"),
    ],
)
def test_power_needs_a_finite_real_exponent(any_xp, p, error, match):
    E = ch.EighMatrix(*arrays(any_xp, numpy.eye(2), [1.0, 2.0]))
    with pytest.raises(error, match=match):
        E.power(p)


def test_clip_bounds_must_be_real_numbers(any_xp):
    W = ch.SVDMatrix(*arrays(any_xp, numpy.eye(2), [1.0, 2.0], numpy.eye(2)))
    with pytest.raises(TypeError, match=r"lo must be a real number, got 'a'"):
        W.clip("a")
    with pytest.raises(TypeError, match=r"hi must be a real number, got None"):
        W.clip(0, None)


def test_cayley_needs_eigenvalues_other_than_minus_one(any_xp):
    E = ch.EighMatrix(*arrays(any_xp, numpy.eye(2), [-1.0, 2.0]))
    with pytest.raises(ValueError, match=r"cayley\(\) needs every w != -1"):
        E.cayley()


def test_batch_shape_mismatch_between_u_s_and_v(any_xp):
    with pytest.raises(ValueError, match=r"batch shapes of U \(2,\), s \(3,\) and V \(\) do not broadcast"):
        ch.SVDMatrix(*arrays(any_xp, numpy.ones((2, 3, 3)), numpy.ones((3, 3)), numpy.eye(3)))


def test_rank_larger_than_dimensions_allow(any_xp):
    with pytest.raises(ValueError, match=r"s has r=4 values but U is 5x5 and V is 3x3.*min\(d_out, d_in\) = 3"):
        ch.SVDMatrix(*arrays(any_xp, numpy.eye(5), numpy.ones(4), numpy.eye(3)))


def test_eigenvalue_count_must_match_u(any_xp):
    with pytest.raises(
        ValueError, match=r"w must have shape \(\.\.\., d\) with d=3 to match U \(3x3\), got shape \(2,\)"
    ):
        ch.EighMatrix(*arrays(any_xp, numpy.eye(3), numpy.ones(2)))


def test_expm_on_svd_matrix_points_to_eigh_matrix(any_xp):
    with pytest.raises(TypeError, match=r"expm\(\) needs a symmetric matrix.*cuhouse\.EighMatrix\(U, w\)"):
        random_svd(any_xp, 3, 3).expm()


def test_factor_must_be_householder_product_or_vectors(any_xp):
    W = random_svd(any_xp, 3, 3)
    with pytest.raises(
        TypeError, match=r"U must be a HouseholderProduct or an array of Householder vectors.*got SVDMatrix"
    ):
        ch.SVDMatrix(W, *arrays(any_xp, numpy.ones(3), numpy.eye(3)))


def test_bad_factor_vectors_name_the_factor(any_xp):
    with pytest.raises(ValueError, match=r"^V: vectors row 1 is a zero vector"):
        ch.SVDMatrix(*arrays(any_xp, numpy.eye(3), numpy.ones(2), [[1.0, 0, 0], [0, 0, 0]]))


def test_spectrum_must_be_finite_real_and_nonempty(any_xp):
    eye = any_xp.asarray(numpy.eye(2))
    with pytest.raises(ValueError, match=r"s must be finite"):
        ch.SVDMatrix(eye, any_xp.asarray(numpy.array([1.0, numpy.nan])), eye)
    if getattr(any_xp, "name", "") != "array_api_strict":  # which has no float16
        with pytest.raises(TypeError, match=r"s has dtype float16"):
            ch.SVDMatrix(eye, any_xp.asarray(numpy.ones(2, dtype=numpy.float16)), eye)
    with pytest.raises(ValueError, match=r"s must have shape \(\.\.\., r\) with r >= 1, got shape \(\)"):
        ch.SVDMatrix(eye, any_xp.asarray(numpy.array(1.0)), eye)


def test_operand_shape_mismatch_names_rectangular_shape(any_xp):
    W = random_svd(any_xp, 4, 6)
    with pytest.raises(ValueError, match=r"X has shape \(4, 2\) but the operator is 4x6: expected .*d=6"):
        W @ any_xp.asarray(numpy.ones((4, 2)))
    with pytest.raises(ValueError, match=r"X has shape \(2, 6\) but the operator is 4x6.*d=4"):
        rmatmul(any_xp.asarray(numpy.ones((2, 6))), W)
    with pytest.raises(ValueError, match=r"batch shapes of W \(2,\) and X \(3,\) do not broadcast"):
        random_svd(any_xp, 4, 4, batch=(2,)) @ any_xp.asarray(numpy.ones((3, 4, 1)))


def test_unknown_norm_and_cond_orders(any_xp):
    W = random_svd(any_xp, 3, 3)
    with pytest.raises(ValueError, match=r"ord must be one of None, 'fro', 'nuc', 2, -2, got 1"):
        W.norm(1)
    with pytest.raises(ValueError, match=r"p must be one of None, 2, -2, 'fro', 'nuc', got 'inf'"):
        W.cond("inf")


def test_clip_bounds_must_be_ordered_and_nonnegative(any_xp):
    with pytest.raises(ValueError, match=r"clip needs 0 <= lo <= hi, got lo=2.0, hi=1.0"):
        random_svd(any_xp, 3, 3).clip(2, 1)


def test_from_dense_errors(any_xp):
    with pytest.raises(ValueError, match=r"A must be symmetric, but max \|A - A\^T\|"):
        ch.EighMatrix.from_dense(any_xp.asarray(numpy.arange(9.0).reshape(3, 3)))
    with pytest.raises(ValueError, match=r"rank must be at most min\(d_out, d_in\) = 2 for A of shape \(2, 3\), got 3"):
        ch.SVDMatrix.from_dense(any_xp.asarray(numpy.ones((2, 3))), rank=3)
    with pytest.raises(ValueError, match=r"A must be finite"):
        ch.SVDMatrix.from_dense(any_xp.asarray(numpy.full((2, 2), numpy.inf)))


# -------------------------------------------------------------- gradients
SVD_STEPS = {
    "T": lambda W: W.T,
    "inv": lambda W: W.inv(),
    "pinv": lambda W: W.pinv(),
    "clip": lambda W: W.clip(0.6, 1.5),
}
EIGH_STEPS = {
    "T": lambda E: E.T,
    "inv": lambda E: E.inv(),
    "expm": lambda E: E.expm(),
    "logm": lambda E: E.logm(),
    "sqrtm": lambda E: E.sqrtm(),
    "power(1.5)": lambda E: E.power(1.5),
    "power(-2)": lambda E: E.power(-2),
    "cayley": lambda E: E.cayley(),
}
# singular values kept at least 0.05 away from the clip bounds, before and after inversion
SVD_VALUES = numpy.array([0.5, -0.9, 1.3, 2.0, -1.1, 0.8])
EIGH_VALUE_SETS = (numpy.array([0.2, 0.35, 0.5, 0.7, 0.9]), numpy.array([1.2, 1.5, 1.8, 2.1, 2.5]))


def chains(steps):
    """Every chain of length 0, 1 and 2 over ``steps``."""
    return [()] + [(a,) for a in steps] + list(itertools.product(steps, repeat=2))


def apply_chain(matrix, chain, steps):
    for name in chain:
        matrix = steps[name](matrix)
    return matrix


def eigh_values_for(chain):
    """The first eigenvalue set on which every step of ``chain`` is defined, else None."""
    for w in EIGH_VALUE_SETS:
        try:
            apply_chain(ch.EighMatrix(numpy.eye(5), w), chain, EIGH_STEPS)
            return w
        except ValueError:
            continue
    return None


def svd_cases():
    """(shape, chain) pairs: square full rank for every chain, tall and wide where no inv() is needed."""
    for shape in [(6, 6, 6), (7, 4, 4), (4, 7, 3)]:
        for chain in chains(SVD_STEPS):
            if shape[0] == shape[1] or "inv" not in chain:
                yield pytest.param(shape, chain, id="{}x{}-W.{}".format(shape[0], shape[1], ".".join(chain)))


def svd_leaves(any_xp, shape, batch=()):
    (u, _, v), _ = svd_arrays(any_xp, numpy.float64, *shape, batch)
    s = numpy.broadcast_to(SVD_VALUES[: shape[2]], batch + (shape[2],)).copy()
    return u, any_xp.asarray(s), v


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("shape, chain", list(svd_cases()))
def test_svd_matmul_gradient_dot_product(any_xp, shape, chain, side):
    rows, cols = apply_chain(ch.SVDMatrix.random(*shape[:2], rank=shape[2], rng=0), chain, SVD_STEPS).shape
    x = numpy.random.default_rng(2).standard_normal((cols, 3) if side == "left" else (3, rows))
    make = lambda u, s, v: apply_chain(ch.SVDMatrix(u, s, v), chain, SVD_STEPS)
    check_matmul_vjp(make, svd_leaves(any_xp, shape), any_xp.asarray(x), side, any_xp)


@pytest.mark.parametrize("chain", [c for c in chains(SVD_STEPS) if len(c) < 2])
@pytest.mark.parametrize("x_shape", [(3, 1, 6, 2), (6,)], ids=["broadcast", "vector"])
def test_svd_matmul_gradient_batched(any_xp, chain, x_shape):
    """U and s carry a batch (2,), V none, X a batch (3, 1): leaf gradients are reduced to each leaf's shape."""
    x = any_xp.asarray(numpy.random.default_rng(3).standard_normal(x_shape))
    make = lambda u, s, v: apply_chain(ch.SVDMatrix(u, s, v), chain, SVD_STEPS)
    check_matmul_vjp(make, svd_leaves(any_xp, (6, 6, 6), batch=(2,)), x, "left", any_xp)


@pytest.mark.parametrize("chain", [c for c in chains(SVD_STEPS)], ids=lambda c: "W." + ".".join(c))
@pytest.mark.parametrize("batch", BATCHES)
def test_svd_logdet_gradient_dot_product(any_xp, chain, batch):
    make = lambda u, s, v: apply_chain(ch.SVDMatrix(u, s, v), chain, SVD_STEPS)
    check_logdet_vjp(make, svd_leaves(any_xp, (6, 6, 6), batch), any_xp)


EIGH_CHAINS = [
    pytest.param(c, eigh_values_for(c), id="E." + ".".join(c))
    for c in chains(EIGH_STEPS)
    if eigh_values_for(c) is not None
]


@pytest.mark.parametrize("chain, w", EIGH_CHAINS)
def test_eigh_matmul_gradient_dot_product(any_xp, chain, w):
    u = any_xp.asarray(numpy.random.default_rng(4).standard_normal((4, 5)))
    x = any_xp.asarray(numpy.random.default_rng(5).standard_normal((5, 3)))
    make = lambda u, w: apply_chain(ch.EighMatrix(u, w), chain, EIGH_STEPS)
    check_matmul_vjp(make, (u, any_xp.asarray(w)), x, "left", any_xp)


@pytest.mark.parametrize("chain, w", EIGH_CHAINS)
def test_eigh_logdet_gradient_dot_product(any_xp, chain, w):
    u = any_xp.asarray(numpy.random.default_rng(6).standard_normal((2, 5, 5)))
    make = lambda u, w: apply_chain(ch.EighMatrix(u, w), chain, EIGH_STEPS)
    check_logdet_vjp(make, (u, any_xp.asarray(w)), any_xp)


def test_every_eigh_chain_of_length_two_is_tested():
    assert len(EIGH_CHAINS) == len(chains(EIGH_STEPS))


def test_vjp_of_a_product_of_two_matrices_is_a_type_error(any_xp):
    W = random_svd(any_xp, 3, 3)
    with pytest.raises(TypeError, match=r"got two cuhouse matrices \(SVDMatrix and EighMatrix\)"):
        ch.vjp(ch.matmul, W, ch.EighMatrix(*arrays(any_xp, numpy.eye(3), numpy.ones(3))))


def test_logdet_gradient_of_singular_matrix_is_a_value_error(any_xp):
    with pytest.raises(ValueError, match=r"the gradient of logdet needs a full-rank square matrix.*rank r=2"):
        ch.vjp(ch.logdet, random_svd(any_xp, 4, 4, rank=2))
