"""The small-size path and the ormqr plan: the same results and the same errors as the general path."""

import numpy
import pytest
from helpers import dense_reference, rtol
from scipy.linalg import lapack

import cuhouse
from cuhouse import _small, plan
from cuhouse._operator import Operator
from cuhouse.algorithms import ormqr


def _geqrf(rng, d, dtype):
    qr, tau, _, info = lapack.dgeqrf(rng.standard_normal((d, d)))
    assert info == 0
    return qr.astype(dtype, order="F"), tau.astype(dtype)


def _lapack_dense(qr, tau):
    d = qr.shape[0]
    full = numpy.zeros((d, d))
    full[:, : qr.shape[1]] = qr
    taus = numpy.zeros(d)
    taus[: tau.shape[0]] = tau
    return lapack.dorgqr(full, taus)[0]


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("shape", [(16,), (16, 1), (16, 5), (5, 16)])
def test_small_path_gives_the_general_path_bits(dtype, shape):
    rng = numpy.random.default_rng(0)
    h = cuhouse.HouseholderProduct(rng.standard_normal((12, 16)).astype(dtype))
    x = rng.standard_normal(shape).astype(dtype)
    for a in (h, h.T):
        if shape[0] == 16:
            fast = _small.matmul(a, x, "left")
            assert fast is not None and fast.flags.c_contiguous
            numpy.testing.assert_array_equal(fast, Operator.__matmul__(a, x))
        if shape[-1] == 16:
            fast = _small.matmul(a, x, "right")
            assert fast is not None and fast.flags.c_contiguous
            numpy.testing.assert_array_equal(fast, Operator.__rmatmul__(a, x))


def test_small_path_steps_aside_for_what_it_does_not_handle():
    h = cuhouse.HouseholderProduct(numpy.random.default_rng(1).standard_normal((4, 6)))
    for x in (
        numpy.ones((6, 2), dtype=numpy.float32),  # another dtype: promotion
        numpy.ones((3, 6, 2)),  # a batch
        numpy.ones((5, 2)),  # a wrong size: the general path raises
        numpy.full((6, 2), numpy.nan),  # NaN: the general path raises
    ):
        assert _small.matmul(h, x, "left") is None
    assert (h @ numpy.ones((6, 2), dtype=numpy.float32)).dtype == numpy.float64
    with pytest.raises(ValueError, match="X must be finite"):
        h @ numpy.full((6, 2), numpy.nan)
    with pytest.raises(ValueError, match=r"X has shape \(5, 2\) but the operator is 6x6"):
        h @ numpy.ones((5, 2))


@pytest.mark.parametrize(
    "vectors, message",
    [
        (numpy.array([[1.0, numpy.nan, 0.0]]), "vectors must be finite"),
        (numpy.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]), "vectors row 1 is a zero vector"),
        (numpy.ones((4, 3)), "n=4 rows of length d=3"),
    ],
)
def test_construction_errors_are_the_general_paths(vectors, message):
    assert _small.vectors_reflections(vectors, True) is None
    with pytest.raises(ValueError, match=message):
        cuhouse.HouseholderProduct(vectors)


def test_extreme_vectors_take_the_general_path_and_stay_exact():
    v = numpy.random.default_rng(2).standard_normal((5, 8)) * 1e200  # sums of squares overflow float64
    assert _small.vectors_reflections(v, True) is None
    x = numpy.random.default_rng(3).standard_normal((8, 3))
    numpy.testing.assert_allclose(cuhouse.HouseholderProduct(v) @ x, dense_reference(v / 1e200) @ x, atol=1e-12)


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("order", ["C", "F"])
def test_ormqr_plan_matches_lapack(dtype, order):
    rng = numpy.random.default_rng(4)
    d = 16
    qr, tau = _geqrf(rng, d, dtype)  # the last tau of a square geqrf is 0: an identity factor
    assert tau[-1] == 0
    h = cuhouse.HouseholderProduct.from_lapack(qr, tau)
    assert h.plan_for(8).algorithm == "ormqr" and h.plan_for(8, differentiable=True).algorithm != "ormqr"
    q = _lapack_dense(qr.astype(numpy.float64), tau.astype(numpy.float64))
    x = numpy.asarray(rng.standard_normal((d, 8)).astype(dtype), order=order)
    tol = dict(rtol=0, atol=rtol(dtype, 10))
    numpy.testing.assert_allclose(h @ x, q @ x, **tol)
    numpy.testing.assert_allclose(h.T @ x, q.T @ x, **tol)
    numpy.testing.assert_allclose(x.T @ h, x.T @ q, **tol)
    numpy.testing.assert_allclose(x.T @ h.T, x.T @ q.T, **tol)
    numpy.testing.assert_allclose(h @ x[:, 0], q @ x[:, 0], **tol)
    assert (h @ x).flags.c_contiguous and (x.T @ h).flags.c_contiguous


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("k", [16, 11])
def test_from_lapack_comes_with_its_ormqr_form_as_reflections_form_builds_it(dtype, order, k):
    """The small path's check has the squared lengths the ormqr form needs (tau = 2 / (1 + ||v||^2)), so a
    Fortran-ordered ``a`` (LAPACK's) comes with that form, read in place: the same bits as the form
    ``Reflections.form`` builds after a ``refresh()`` (from the squared lengths read again), and products
    with the same bits. Another order gets no form until a product asks for it (its build copies ``a``)."""
    rng = numpy.random.default_rng(12)
    qr, tau = _geqrf(rng, 16, dtype)
    qr, tau = numpy.asarray(qr, order=order), tau[:k].copy()
    h = cuhouse.HouseholderProduct.from_lapack(qr, tau)
    key = ("ormqr", None, numpy.dtype(dtype), "unit")
    x = rng.standard_normal((16, 3)).astype(dtype)
    if order == "C":
        assert key not in h._core._forms
        return
    form, scaled, _ = h._core._forms[key]
    assert numpy.shares_memory(form.a, qr)
    numpy.testing.assert_array_equal(form.tau, numpy.where(tau == 0, 0, 2 / ormqr.squared_lengths(qr[:, :k])))
    assert h.plan_for(3).algorithm == "ormqr" and scaled is None
    first = h @ x
    h._core.refresh()
    assert key not in h._core._forms
    numpy.testing.assert_array_equal(h @ x, first)
    numpy.testing.assert_array_equal(h._core._forms[key][0].tau, form.tau)


def test_ormqr_plan_of_a_float32_array_with_float64_tau_is_a_float64_product():
    """float32 reflectors with float64 tau make a float64 product (the general path): the ormqr form reads
    tau from the float64 rows, not from the float32 squared lengths of the check, so the product is that
    of the float32 vectors' exact reflections to float64 rounding (it was off by about 1e9 eps)."""
    rng = numpy.random.default_rng(13)
    d = 64
    qr, tau, _, info = lapack.sgeqrf(rng.standard_normal((d, d)).astype(numpy.float32))
    assert info == 0
    h = cuhouse.HouseholderProduct.from_lapack(qr, tau.astype(numpy.float64))
    x = rng.standard_normal((d, 4))
    assert h.dtype == numpy.float64 and h.plan_for(4).algorithm == "ormqr"
    q = _lapack_dense(
        qr.astype(numpy.float64), numpy.where(tau == 0, 0, 2 / ormqr.squared_lengths(qr.astype(numpy.float64)))
    )
    numpy.testing.assert_allclose(h @ x, q @ x, rtol=0, atol=rtol(numpy.float64, 100))


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("m", [1, 4, 8, 32])
def test_ormqr_plan_runs_lapacks_unblocked_path_for_few_columns(dtype, m):
    """For few columns (``ormqr.unblocked``) the plan hands ``?ormqr`` the least workspace, so that LAPACK
    runs its unblocked ``?orm2r`` (2-4x faster there than its blocked path, whose T matrices dominate);
    else the queried optimum. Either way LAPACK's own bits, fresh and replayed."""
    rng = numpy.random.default_rng(5)
    d = 64  # more reflectors than LAPACK's panel of 32: the two paths round differently
    qr, tau = _geqrf(rng, d, dtype)
    h = cuhouse.HouseholderProduct.from_lapack(qr, tau)
    x = numpy.asfortranarray(rng.standard_normal((d, m)).astype(dtype))
    chosen = h.plan_for(m)
    assert chosen.algorithm == "ormqr"
    form = h._core.form(chosen, x.dtype, h._core.layout)[0]
    routine = getattr(lapack, ("s" if dtype == numpy.float32 else "d") + "ormqr")
    optimum = int(routine("L", "N", form.a, form.tau, x, -1)[1][0])
    blocked = routine("L", "N", form.a, form.tau, x, optimum)[0]
    unblocked = routine("L", "N", form.a, form.tau, x, m)[0]
    assert ormqr.unblocked(d, m) == (m <= 8) and not numpy.array_equal(blocked, unblocked)
    expected = unblocked if m <= 8 else blocked
    for _ in range(2):  # fresh, then replayed
        numpy.testing.assert_array_equal(h @ x, expected)
    # the mode a calibrated plan may give instead of the built-in rule
    # X taken from the left (Fortran-ordered): the mode's first word decides, whatever a row-major X would run
    for right in ormqr.RIGHT_WAYS:
        numpy.testing.assert_array_equal(ormqr.apply(form, x, False, numpy, mode="blocked_" + right), blocked)
        numpy.testing.assert_array_equal(ormqr.apply(form, x, False, numpy, mode="unblocked_" + right), unblocked)


@pytest.mark.parametrize("mode", [None, *ormqr.MODES])
@pytest.mark.parametrize("d, m", [(64, 4), (256, 32)])
def test_ormqr_plan_runs_a_row_major_x_by_its_mode(mode, d, m):
    """A row-major X runs ``side="R"`` on ``X^T`` (its unblocked path there is slow for few columns, measured), or
    copied into Fortran order from the left, the result copied back: LAPACK's own call with that workspace, bit
    for bit, in X's memory order, X untouched. The built-in rule copies where a Fortran-ordered X runs unblocked."""
    rng = numpy.random.default_rng(6)
    qr, tau = _geqrf(rng, d, numpy.float32)
    h = cuhouse.HouseholderProduct.from_lapack(qr, tau)
    form = h._core.form(h.plan_for(m), numpy.float32, h._core.layout)[0]
    x = rng.standard_normal((d, m)).astype(numpy.float32)  # row-major
    before = x.copy()
    right = (mode or ormqr.built_in_mode(d, m)).split("_")[1]
    if right == "copied":
        fortran = numpy.asfortranarray(x)
        expected = lapack.sormqr("L", "N", form.a, form.tau, fortran, m)[0]  # unblocked
    else:
        optimum = int(lapack.sormqr("R", "T", form.a, form.tau, x.T, -1)[1][0])
        expected = lapack.sormqr("R", "T", form.a, form.tau, x.T, m if right == "unblocked" else optimum)[0].T
    out = ormqr.apply(form, x, False, numpy, mode)
    numpy.testing.assert_array_equal(out, expected)
    assert out.flags.c_contiguous and numpy.array_equal(x, before)
    assert ormqr.built_in_mode(64, 16) == "unblocked_copied" and ormqr.built_in_mode(256, 4) == "unblocked_copied"
    assert ormqr.built_in_mode(512, 16) == ormqr.built_in_mode(64, 32) == "blocked_blocked"


def test_ormqr_apply_refuses_an_unknown_mode():
    rng = numpy.random.default_rng(7)
    qr, tau = _geqrf(rng, 16, numpy.float32)
    h = cuhouse.HouseholderProduct.from_lapack(qr, tau)
    form = h._core.form(h.plan_for(2), numpy.float32, h._core.layout)[0]
    x = numpy.ones((16, 2), dtype=numpy.float32)
    with pytest.raises(
        ValueError, match=r"mode must be None or one of 'unblocked_unblocked', .*'blocked_copied', got 'steps'"
    ):
        ormqr.apply(form, x, False, numpy, mode="steps")
    with pytest.raises(ValueError, match=r"mode must be None or one of .*, got \['blocked', 'copied'\]"):
        ormqr.apply(form, x, False, numpy, mode=["blocked", "copied"])  # unhashable: the same error
    assert numpy.array_equal(x, numpy.ones((16, 2), dtype=numpy.float32))  # untouched


def test_describe_names_the_ormqr_path():
    """The bench's plans line says which of ?ormqr's paths a calibrated plan runs."""
    assert plan.describe(plan.Plan("ormqr", None, False, "steps")) == "ormqr (LAPACK)"
    assert plan.describe(plan.Plan("ormqr", None, False, "unblocked_copied")) == "ormqr (LAPACK, unblocked_copied)"
    assert plan.describe(plan.Plan("cwy", 16, False, "steps")) == "cwy k=16"


def test_ormqr_plan_reads_the_callers_array_and_keeps_cuhouses_gradient():
    rng = numpy.random.default_rng(5)
    qr, tau = _geqrf(rng, 12, numpy.float64)
    qr = qr[:, :7]  # a thin geqrf array: k < d
    h = cuhouse.HouseholderProduct.from_lapack(qr, tau[:7])
    assert h.params[0] is qr and h.plan_for(4).algorithm == "ormqr"
    x = rng.standard_normal((12, 4))
    pinned = cuhouse.HouseholderProduct.from_lapack(qr, tau[:7], algorithm="cwy")
    numpy.testing.assert_allclose(h @ x, pinned @ x, rtol=0, atol=1e-13)
    out, back = cuhouse.vjp(cuhouse.matmul, h, x)
    numpy.testing.assert_allclose(out, pinned @ x, rtol=0, atol=1e-13)
    (dqr,), dx = back(numpy.ones_like(out))
    (expected,), _ = cuhouse.vjp(cuhouse.matmul, pinned, x)[1](numpy.ones_like(out))
    numpy.testing.assert_allclose(dqr, expected, rtol=0, atol=1e-12)


def test_ormqr_plan_only_where_lapack_can_run():
    rng = numpy.random.default_rng(6)
    qr, tau = _geqrf(rng, 8, numpy.float64)
    batched = cuhouse.HouseholderProduct.from_lapack(numpy.stack([qr, qr]), numpy.stack([tau, tau]))
    assert batched.plan_for(2).algorithm != "ormqr"
    assert cuhouse.HouseholderProduct(rng.standard_normal((8, 8))).plan_for(2).algorithm != "ormqr"
    with pytest.raises(ValueError, match="the ormqr plan needs LAPACK's layout"):
        plan.predict("ormqr", 8, 8, 2, 8, layout="full")
    assert plan.choose(16, 16, 1, numpy.float32, layout="unit", lapack=True).algorithm == "ormqr"
    assert plan.choose(16, 16, 1, numpy.float32, layout="unit").algorithm != "ormqr"


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("order", ["F", "C"])
@pytest.mark.parametrize("shape", [(5, 3), (40, 40), (300, 300), (600, 130), (520, 257), (700, 64), (330, 63)])
def test_squared_lengths_reads_the_stored_entries_only(dtype, order, shape):
    """The reader of from_lapack's tau check (whole-array masks up to 256 x 256, panels above, row blocks
    for a large array in another order) against float64: NaN and Inf on and above the diagonal never
    reach it with nan_safe, and nan_safe gives the fast reader's bits on a clean array."""
    rng = numpy.random.default_rng(7)
    a = numpy.asarray(rng.standard_normal(shape), dtype=dtype, order=order)
    lower = numpy.tril(a.astype(numpy.float64), -1)
    expected = 1 + numpy.einsum("ij,ij->j", lower, lower)
    fast = ormqr.squared_lengths(a)
    assert fast.dtype == dtype and fast.shape == (shape[1],)
    numpy.testing.assert_allclose(fast, expected, rtol=rtol(dtype, 10), atol=0)
    numpy.testing.assert_array_equal(ormqr.squared_lengths(a, nan_safe=True), fast)
    poisoned = a.copy(order=order)
    poisoned[numpy.triu_indices(shape[0], 0, shape[1])] = numpy.nan
    poisoned[0, -1] = numpy.inf
    numpy.testing.assert_array_equal(ormqr.squared_lengths(poisoned, nan_safe=True), fast)


@pytest.mark.parametrize("d", [300, 520])
def test_from_lapack_above_the_whole_array_masks(d):
    """Past the whole-array masks (panels): the ormqr plan and cwy agree with LAPACK's Q, NaN above the
    diagonal stays out (the general reader), a bad tau is refused, and a pickled product keeps its bits."""
    import pickle

    rng = numpy.random.default_rng(8)
    qr, tau = _geqrf(rng, d, numpy.float64)
    h = cuhouse.HouseholderProduct.from_lapack(qr, tau)
    assert h.plan_for(3).algorithm == "ormqr"
    x = rng.standard_normal((d, 3))
    expected = _lapack_dense(qr, tau) @ x
    numpy.testing.assert_allclose(h @ x, expected, rtol=0, atol=1e-12)
    pinned = cuhouse.HouseholderProduct.from_lapack(qr, tau, algorithm="cwy")
    numpy.testing.assert_allclose(pinned @ x, expected, rtol=0, atol=1e-12)
    numpy.testing.assert_array_equal(pickle.loads(pickle.dumps(h)) @ x, h @ x)
    poisoned = qr.copy(order="F")
    poisoned[numpy.triu_indices(d)] = numpy.nan
    numpy.testing.assert_array_equal(cuhouse.HouseholderProduct.from_lapack(poisoned, tau) @ x, h @ x)
    bad = tau.copy()
    bad[d // 2] *= 1.5
    with pytest.raises(ValueError, match=r"tau must be 0 or 2 / \(v\^T v\) for each reflector v of a"):
        cuhouse.HouseholderProduct.from_lapack(qr, bad)


def test_from_lapack_of_a_tall_array_with_a_short_last_block():
    """A tall geqrf array whose reflector count is not a multiple of the reader's block of 64 (the batched
    reader missed the rows between the short last block and the next multiple of 64, and refused it)."""
    rng = numpy.random.default_rng(9)
    qr, tau, _, info = lapack.dgeqrf(rng.standard_normal((3000, 130)))
    x = rng.standard_normal((3000, 2))
    expected = lapack.dormqr("L", "N", qr, tau, x, 64 * 130)[0]
    for a, t in ((qr, tau), (numpy.ascontiguousarray(qr), tau), (numpy.stack([qr, qr]), numpy.stack([tau, tau]))):
        out = cuhouse.HouseholderProduct.from_lapack(a, t) @ x
        numpy.testing.assert_allclose(out, numpy.broadcast_to(expected, out.shape), rtol=0, atol=1e-12)


def test_the_fresh_plan_memo_gives_the_products_own_plan():
    """``_small.fresh_plan`` returns what ``plan_for`` chooses, for vectors, LAPACK's layout and pinned
    plans, keyed by the calibration in use (equal constants: the same plan), also once reloaded."""
    from cuhouse import calibration

    rng = numpy.random.default_rng(12)
    qr, tau = _geqrf(rng, 24, numpy.float64)
    for h in (
        cuhouse.HouseholderProduct(rng.standard_normal((24, 24))),
        cuhouse.HouseholderProduct(rng.standard_normal((5, 24))),
        cuhouse.HouseholderProduct(rng.standard_normal((24, 24)), algorithm="cwy", block_size=8),
        cuhouse.HouseholderProduct.from_lapack(qr, tau),
    ):
        for m in (1, 7, 32):
            chosen, module = _small.fresh_plan(h, h._core, m, numpy.dtype(numpy.float64))
            assert chosen == h.plan_for(m) and module is cuhouse.algorithms.PLANS[chosen.algorithm]
    calibration.forget()  # the next plan reads the calibration again
    try:
        chosen, _ = _small.fresh_plan(h, h._core, 7, numpy.dtype(numpy.float64))
        assert chosen == h.plan_for(7)
        assert any(key[-1] == calibration.current("numpy") for key in _small._PLANS)
    finally:
        calibration.forget()


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("n", [1, 3])
def test_one_reflection_knows_its_layout_and_the_sequential_plan_keeps_its_bits(dtype, order, n):
    """One row is trapezoidal (zero in its first 0 entries) without a look at its entries; the
    sequential plan, which takes the reflections' norms, gives the same bits fresh, pickled and
    refreshed, and H(v) x = x - 2 v (v^T x) / (v^T v) to rounding."""
    import pickle

    rng = numpy.random.default_rng(13 + n)
    v = numpy.asarray(rng.standard_normal((n, 16)), dtype=dtype, order=order)
    x = rng.standard_normal((16, 5)).astype(dtype)
    h = cuhouse.HouseholderProduct(v)
    if n == 1:
        assert h._core._cache["layout"] == "trapezoidal" and h.plan_for(5).algorithm == "sequential"
    pinned = cuhouse.HouseholderProduct(v, algorithm="sequential")
    for a in (h, pinned):
        first = a @ x
        numpy.testing.assert_array_equal(pickle.loads(pickle.dumps(a)) @ x, first)
        numpy.testing.assert_array_equal(a.refresh() @ x, first)
        numpy.testing.assert_allclose(first, dense_reference(v) @ x, rtol=0, atol=rtol(dtype, 30))
