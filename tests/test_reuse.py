"""Reflections declared reused (:meth:`cuhouse.HouseholderProduct.prepare_reuse`, :mod:`cuhouse._reuse`): the
kept form (the dense H at small d, or compact WY with another block) gives the fresh product to rounding in
every layout, direction and side; the NumPy hot path steps aside for what it does not handle; the choice is
deterministic, dropped by ``refresh()`` where the vectors changed, kept by pickling, and within its memory
budget; gradients and fresh products are untouched."""

import copy
import pickle
import threading

import numpy
import pytest
import scipy.linalg
from helpers import dense_reference, rtol, to_numpy

import cuhouse as ch
from cuhouse import _reuse, _small, calibration, plan


def _lapack(rng, d, k, dtype=numpy.float64):
    (qr, tau), _ = scipy.linalg.qr(rng.standard_normal((d, k)), mode="raw")
    return qr.astype(dtype), tau.astype(dtype)


def _pairs(rng, d, n, dtype, xp):
    """``(fresh, reused)`` pairs of products over the same arrays, one of each layout."""
    v = rng.standard_normal((n, d)).astype(dtype)
    trapezoidal = numpy.triu(v)
    qr, tau = _lapack(rng, d, n, dtype)
    tau[1] = 0  # an identity factor
    qr[2:, 1] = 0  # whose stored entries are zero, as geqrf leaves them (tau == 0 keeps them anyway)
    makes = (
        lambda: ch.HouseholderProduct(xp.asarray(v)),
        lambda: ch.HouseholderProduct(xp.asarray(trapezoidal)),
        lambda: ch.HouseholderProduct.from_lapack(xp.asarray(qr), xp.asarray(tau)),
    )
    return [(make(), make().prepare_reuse()) for make in makes]


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("d, n", [(16, 16), (24, 7), (64, 64)])
def test_the_kept_form_gives_the_fresh_product(xp, dtype, d, n):
    rng = numpy.random.default_rng(d + n)
    for fresh, reused in _pairs(rng, d, n, dtype, xp):
        reference = dense_reference(to_numpy(fresh.vectors))
        for m in (1, 5):
            x = rng.standard_normal((d, m)).astype(dtype)
            for _ in range(2):  # built, then kept (the NumPy hot path the second time)
                for a, b, h in ((fresh, reused, reference), (fresh.T, reused.T, reference.T)):
                    pairs = (
                        (b @ xp.asarray(x), a @ xp.asarray(x)),
                        (xp.asarray(x.T) @ b, xp.asarray(x.T) @ a),
                        (b @ xp.asarray(x[:, 0]), a @ xp.asarray(x[:, 0])),
                        (xp.asarray(x[:, 0]) @ b, xp.asarray(x[:, 0]) @ a),
                    )
                    for got, want in pairs:
                        got, want = to_numpy(got), to_numpy(want)
                        assert got.dtype == dtype and got.shape == want.shape
                        numpy.testing.assert_allclose(got, want, rtol=0, atol=rtol(dtype, 10 * d))
                    numpy.testing.assert_allclose(to_numpy(b @ xp.asarray(x)), h @ x, atol=rtol(dtype, 10 * d))
        assert reused.plan_for(5).algorithm == "dense"


def test_batched_complex_and_promoted_products_run_the_kept_form(xp):
    rng = numpy.random.default_rng(3)
    v = rng.standard_normal((2, 40, 96))  # sizes where the fresh plan is not the dense H (see plan.FRESH_SLACK)
    fresh, reused = ch.HouseholderProduct(xp.asarray(v)), ch.HouseholderProduct(xp.asarray(v)).prepare_reuse()
    x = rng.standard_normal((96, 3)) + 1j * rng.standard_normal((96, 3))
    for operand in (x, x.real.astype(numpy.float32), rng.standard_normal((2, 96, 3))):
        numpy.testing.assert_allclose(
            to_numpy(reused @ xp.asarray(operand)), to_numpy(fresh @ xp.asarray(operand)), atol=1e-12
        )
    assert reused.plan_for(3).algorithm == "dense" and fresh.plan_for(3).algorithm != "dense"
    u = numpy.linalg.qr(rng.standard_normal((8, 8)) + 1j * rng.standard_normal((8, 8)))[0]
    unitary = ch.HouseholderProduct.from_dense(xp.asarray(u))
    twin = ch.HouseholderProduct.from_dense(xp.asarray(u)).prepare_reuse()
    y = rng.standard_normal((8, 2)) + 1j * rng.standard_normal((8, 2))
    for a, b in ((unitary, twin), (unitary.H, twin.H), (unitary.conj(), twin.conj())):
        for _ in range(2):
            numpy.testing.assert_allclose(to_numpy(b @ xp.asarray(y)), to_numpy(a @ xp.asarray(y)), atol=1e-12)


def test_the_hot_path_steps_aside_and_the_general_path_decides():
    rng = numpy.random.default_rng(4)
    v = rng.standard_normal((12, 12))
    h = ch.HouseholderProduct(v).prepare_reuse()
    x = rng.standard_normal((12, 3))
    h @ x  # the dense H is kept for 3 columns
    assert _reuse.matmul(h, x, True) is not None
    bad = x.copy()
    bad[4, 1] = numpy.nan
    assert _reuse.matmul(h, bad, True) is None
    with pytest.raises(ValueError, match="X must be finite; found NaN or Inf"):
        h @ bad
    lenient = ch.HouseholderProduct(v, check_finite=False).prepare_reuse()
    lenient @ x
    out = lenient @ bad
    assert numpy.isnan(out[:, 1]).all() and numpy.isfinite(out[:, [0, 2]]).all()
    with pytest.raises(ValueError, match=r"X has shape \(5, 3\) but the operator is 12x12"):
        h @ numpy.ones((5, 3))
    # X whose product's entries near overflow: the sum over the result is infinite, the general path scales
    huge = x / numpy.abs(x).max() * numpy.finfo(numpy.float64).max / 4
    got = h @ huge
    assert numpy.isfinite(got).all()
    numpy.testing.assert_allclose(got / huge.max(), (dense_reference(v) @ huge) / huge.max(), atol=1e-12)
    tiny = x * 1e-300
    numpy.testing.assert_allclose(h @ tiny / 1e-300, dense_reference(v) @ x, atol=1e-12)
    # another dtype promotes on the general path; a pinned algorithm on a view skips the kept form
    numpy.testing.assert_allclose(h @ x.astype(numpy.float32), dense_reference(v) @ x, atol=1e-5)
    pinned = ch.HouseholderProduct(v).prepare_reuse()
    pinned @ x
    pinned.algorithm = "sequential"
    assert _reuse.matmul(pinned, x, True) is None
    numpy.testing.assert_array_equal(pinned @ x, ch.HouseholderProduct(v, algorithm="sequential") @ x)


def test_the_choice_is_deterministic_whatever_ran_before_in_any_thread():
    rng = numpy.random.default_rng(5)
    v = rng.standard_normal((20, 32)).astype(numpy.float32)
    xs = [rng.standard_normal((32, m)).astype(numpy.float32) for m in (1, 4, 40)]
    first = ch.HouseholderProduct(v).prepare_reuse()
    expected = [first @ x for x in xs]
    other = ch.HouseholderProduct(v).prepare_reuse()
    for x in reversed(xs):  # another history
        other.T @ x
        x.T @ other
    numpy.testing.assert_array_equal(numpy.concatenate([other @ x for x in xs], axis=1), numpy.hstack(expected))
    shared = ch.HouseholderProduct(v).prepare_reuse()
    results = [None] * 4
    barrier = threading.Barrier(4)

    def run(t):
        barrier.wait()
        results[t] = [shared @ x for x in (xs[t % 3 :] + xs[: t % 3])]

    threads = [threading.Thread(target=run, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for t, got in enumerate(results):
        for a, x in zip(got, xs[t % 3 :] + xs[: t % 3]):
            numpy.testing.assert_array_equal(a, expected[[id(y) for y in xs].index(id(x))])


def test_refresh_drops_the_kept_form_and_pickling_keeps_the_declaration():
    rng = numpy.random.default_rng(6)
    v = rng.standard_normal((10, 10))
    h = ch.HouseholderProduct(v).prepare_reuse()
    x = rng.standard_normal((10, 2))
    h @ x
    v[3] = rng.standard_normal(10)  # an optimizer step, in place
    numpy.testing.assert_allclose(h.refresh() @ x, dense_reference(v) @ x, atol=1e-12)
    assert h.plan_for(2).algorithm == "dense"
    for twin in (pickle.loads(pickle.dumps(h)), copy.deepcopy(h)):
        assert not twin._core._hot  # the dense H is not pickled ...
        assert twin.plan_for(2) == h.plan_for(2)  # ... the declaration is
        numpy.testing.assert_array_equal(twin @ x, h @ x)
    state = ch.HouseholderProduct(v).prepare_reuse(False)._core.__getstate__()
    assert set(state) == set(ch.HouseholderProduct(v)._core.__getstate__()) | {"reuse"}
    fresh = ch.HouseholderProduct(v)
    back = h.prepare_reuse(False)
    assert back is h and not h._core._hot and h.plan_for(2) == fresh.plan_for(2)
    numpy.testing.assert_array_equal(h @ x, fresh @ x)


def test_gradients_and_fresh_products_are_untouched():
    rng = numpy.random.default_rng(7)
    v = rng.standard_normal((9, 9))
    x, dout = rng.standard_normal((9, 3)), rng.standard_normal((9, 3))
    fresh, reused = ch.HouseholderProduct(v), ch.HouseholderProduct(v).prepare_reuse()
    reused @ x
    for a in (fresh, reused):
        out, back = ch.vjp(ch.matmul, a, x)
        (dv,), dx = back(dout)
        if a is fresh:
            expected = out, dv, dx
    numpy.testing.assert_array_equal(out, expected[0])
    numpy.testing.assert_array_equal(dv, expected[1])
    numpy.testing.assert_array_equal(dx, expected[2])
    assert reused.plan_for(3, differentiable=True) == fresh.plan_for(3, differentiable=True)
    pinned = ch.HouseholderProduct(v, block_size=4)
    assert ch.HouseholderProduct(v, block_size=4).prepare_reuse().plan_for(3) == pinned.plan_for(3)


def test_the_dense_form_is_kept_only_within_its_memory_budget():
    mach = calibration.DEFAULTS["numpy"]
    assert plan.dense_fits(256, 1) and plan.dense_fits(1024, 512) and not plan.dense_fits(1024, 511)
    for d, n in ((512, 16), (1024, 64)):
        fresh = plan.choose(d, n, 32, numpy.float32)
        ranked = _reuse.kept(fresh, d, n, 32, 4, "numpy", "full", mach)
        assert ranked[-1] == fresh and all(p.algorithm != "dense" for p in ranked)
    ranked = _reuse.kept(plan.choose(1024, 1024, 32, numpy.float32), 1024, 1024, 32, 4, "numpy", "full", mach)
    assert ranked[0].algorithm == "dense"
    seconds = [
        plan.per_product(p.algorithm, 1024, 1024, 32, p.block_size, 4, "numpy", "full", mach, p.apply) for p in ranked
    ]
    assert seconds == sorted(seconds)
    rng = numpy.random.default_rng(8)
    h = ch.HouseholderProduct(rng.standard_normal((4, 300))).prepare_reuse()  # 300^2 > max(2 * 4 * 300, 2^16)
    h @ rng.standard_normal((300, 2))
    assert h.plan_for(2).algorithm == "cwy" and not h._core._hot
    small = ch.HouseholderProduct(rng.standard_normal((4, 64))).prepare_reuse()
    for m in (1, 2, 3):
        small @ rng.standard_normal((64, m))
    kept = small._core._hot
    assert sorted(kept) == [1, 2, 3] and len({id(h) for h, _, _, _ in kept.values()}) == 1  # one d x d array
    assert next(iter(kept.values()))[0].nbytes == 64 * 64 * 8


@pytest.mark.parametrize("batch", [8, 512])
def test_the_dense_form_of_a_batch_is_kept_within_the_batchs_budget(batch):
    """The declared reuse asks :func:`plan.dense_fits` for the whole batch, as the fresh plan does:
    512 matrices of d = 16 from n = 4 reflections hold 2^17 entries, over max(2 B n d, 2^16), though
    each one's 256 fits (before: the budget was asked per batch entry, and the dense H was kept)."""
    d, n = 16, 4
    v = numpy.random.default_rng(23).standard_normal((batch, n, d))
    fits = plan.dense_fits(d, n, batch)
    assert fits == (batch == 8) and plan.dense_fits(d, n)
    h = ch.HouseholderProduct(v).prepare_reuse()
    x = numpy.random.default_rng(24).standard_normal((batch, d, 4))
    for m in (1, 4):
        assert (h.plan_for(m).algorithm == "dense") == fits
    numpy.testing.assert_allclose(h @ x, dense_reference(v) @ x, atol=1e-13)


def test_prepare_reuse_takes_a_boolean():
    h = ch.HouseholderProduct(numpy.eye(3)[:1])
    with pytest.raises(TypeError, match="reuse must be True or False, got 'yes' of type str"):
        h.prepare_reuse("yes")


def test_without_the_declaration_nothing_is_kept():
    rng = numpy.random.default_rng(9)
    v, x = rng.standard_normal((8, 8)), rng.standard_normal((8, 2))
    first = ch.HouseholderProduct(v) @ x
    for algorithm in ("dense", "auto"):
        h = ch.HouseholderProduct(v, algorithm=algorithm)
        for _ in range(3):
            h @ x
        assert not h._core._hot and h._core.reuse is False
    h.algorithm = "auto"
    numpy.testing.assert_array_equal(h @ x, first)


# ------------------------------------------------------------ replays of cached products (no declaration)
def _replayed(make, product):
    """``(first, later)``: a new operator's first product (the small path, which keeps it) and two
    more (replays), checking that the second one did replay."""
    h = make()
    first = product(h)
    assert h._core._replay, "the small path kept nothing to replay"
    return first, [product(h) for _ in range(2)]


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("d, n", [(1, 1), (16, 16), (24, 7), (70, 70), (130, 45)])
def test_a_replayed_product_has_the_bits_of_the_first(dtype, d, n):
    rng = numpy.random.default_rng(10 + d + n)
    v = rng.standard_normal((n, d)).astype(dtype)
    qr, tau = _lapack(rng, d, n, dtype)
    if n > 2:
        tau[1] = 0  # an identity factor (the steps' mask of active rows)
        qr[2:, 1] = 0
    makes = (
        lambda: ch.HouseholderProduct(v),
        lambda: ch.HouseholderProduct(numpy.triu(v)),
        lambda: ch.HouseholderProduct.from_lapack(qr, tau),
        lambda: ch.HouseholderProduct.from_lapack(qr, tau, algorithm="cwy", block_size=4),
        lambda: ch.HouseholderProduct(numpy.triu(v), algorithm="cwy", block_size=3),
        lambda: ch.HouseholderProduct(v, algorithm="cwy", block_size=5),
        lambda: ch.HouseholderProduct(v, algorithm="dense"),
        lambda: ch.HouseholderProduct(v, algorithm="sequential"),
    )
    for m in (1, 3, 40):
        x = rng.standard_normal((d, m)).astype(dtype)
        products = (
            lambda h: h @ x,
            lambda h: x.T @ h,
            lambda h: h.T @ numpy.asfortranarray(x),
            lambda h: numpy.asfortranarray(x.T) @ h.T,
            lambda h: h @ x[:, 0],
            lambda h: x[:, 0] @ h.T,
            lambda h: h @ x[::-1][::-1],  # a negative-stride view
        )
        for make in makes:
            for product in products:
                first, later = _replayed(make, product)
                want = product(make())
                for got in [first] + later:
                    assert got.dtype == want.dtype and got.flags.c_contiguous and got.shape == want.shape
                    numpy.testing.assert_array_equal(got, want)
        reference = dense_reference(v)
        numpy.testing.assert_allclose(
            _replayed(makes[0], lambda h: h @ x)[1][1], reference @ x, atol=rtol(dtype, 10 * d)
        )


def test_a_replay_steps_aside_and_the_general_path_decides():
    rng = numpy.random.default_rng(11)
    v = rng.standard_normal((12, 12))
    h = ch.HouseholderProduct(v)
    x = rng.standard_normal((12, 3))
    h @ x
    assert _reuse.replay(h, x, True) is not None
    assert _reuse.replay(h, x.T, False) is None  # another side: not kept yet
    assert _reuse.replay(h, rng.standard_normal((12, 4)), True) is None  # another column count
    bad = x.copy()
    bad[4, 1] = numpy.nan
    assert _reuse.replay(h, bad, True) is None
    with pytest.raises(ValueError, match="X must be finite; found NaN or Inf"):
        h @ bad
    with pytest.raises(ValueError, match=r"X has shape \(5, 3\) but the operator is 12x12"):
        h @ numpy.ones((5, 3))
    for scale in (1e-300, 1e306):  # columns out of the form's limits: the general path scales them
        assert _reuse.replay(h, x * scale, True) is None
        numpy.testing.assert_allclose(h @ (x * scale) / scale, dense_reference(v) @ x, atol=1e-12)
    assert _reuse.replay(h, x.astype(numpy.float32), True) is None  # promotes on the general path
    numpy.testing.assert_allclose(h @ x.astype(numpy.float32), dense_reference(v) @ x, atol=1e-5)
    h.algorithm = "sequential"  # a view pinned otherwise runs its own plan
    assert _reuse.replay(h, x, True) is None
    numpy.testing.assert_array_equal(h @ x, ch.HouseholderProduct(v, algorithm="sequential") @ x)


def test_a_replay_kept_under_another_calibration_steps_aside():
    rng = numpy.random.default_rng(12)
    h = ch.HouseholderProduct(rng.standard_normal((20, 20)))
    x = rng.standard_normal((20, 2))
    h @ x
    assert _reuse.replay(h, x, True) is not None
    calibration.forget()  # the next plan reads the calibration again: a new one
    try:
        assert _reuse.replay(h, x, True) is None
        numpy.testing.assert_array_equal(h @ x, ch.HouseholderProduct(h.vectors) @ x)
    finally:
        calibration.forget()


def test_replays_are_dropped_by_refresh_prepare_reuse_and_pickling():
    rng = numpy.random.default_rng(13)
    v = rng.standard_normal((10, 10))
    x = rng.standard_normal((10, 2))
    h = ch.HouseholderProduct(v)
    h @ x
    assert h._core._replay
    for twin in (pickle.loads(pickle.dumps(h)), copy.deepcopy(h)):
        assert not twin._core._replay
        numpy.testing.assert_array_equal(twin @ x, h @ x)
    v[3] = rng.standard_normal(10)  # an optimizer step, in place
    assert not h.refresh()._core._replay
    numpy.testing.assert_allclose(h @ x, dense_reference(v) @ x, atol=1e-12)
    assert h._core._replay
    h.prepare_reuse()  # the plans change: what was kept is not replayed
    assert not h._core._replay
    numpy.testing.assert_array_equal(h @ x, ch.HouseholderProduct(v).prepare_reuse() @ x)
    h @ x
    h.prepare_reuse(False)
    assert not h._core._replay
    numpy.testing.assert_array_equal(h @ x, ch.HouseholderProduct(v) @ x)


def _product_with_a_refresh(monkeypatch, h, x, change, owner, name):
    """``h @ x`` during which, once the call ``owner.name`` (one the product makes) first returned,
    ``change()`` updated the leaves in place and ``h.refresh()`` ran, as another thread would."""
    call = getattr(owner, name)
    done = []

    def call_then_refresh(*args, **kwargs):
        found = call(*args, **kwargs)
        if not done:  # once (refresh() itself may make the call)
            done.append(True)
            change()
            h.refresh()
        return found

    monkeypatch.setattr(owner, name, call_then_refresh)
    h @ x
    monkeypatch.undo()


def _changing(seed):
    """``(v, x, change)``: vectors ``(10, 10)``, X ``(10, 2)`` and an in-place update of one vector."""
    rng = numpy.random.default_rng(seed)
    v, x = rng.standard_normal((10, 10)), rng.standard_normal((10, 2))

    def change():
        v[3] = rng.standard_normal(10)

    return v, x, change


def test_a_refresh_during_a_product_keeps_nothing_stale(monkeypatch):
    """Vectors updated in place and ``refresh()`` called (another thread) while a product builds its
    form: the form of the old vectors is not kept in the refreshed table, so the next product follows
    the new vectors."""
    v, x, change = _changing(14)
    h = ch.HouseholderProduct(v)
    _product_with_a_refresh(monkeypatch, h, x, change, _small, "fresh_plan")  # the small path's plan
    assert not h._core._replay
    numpy.testing.assert_allclose(h @ x, dense_reference(v) @ x, atol=1e-12)


@pytest.mark.parametrize("declared, inside", [(True, "form"), (False, "build"), (True, "build")])
def test_a_refresh_while_a_form_is_built_or_kept_keeps_nothing_stale(monkeypatch, declared, inside):
    """Vectors updated in place and ``refresh()`` called (another thread) once the algorithm's
    ``build`` returned (before the form cache took it) or once ``form`` returned (before the hot path
    of reflections declared reused kept their dense H): the form of the old vectors enters no
    refreshed cache (forms, replays, the dense H), so the next product follows the new vectors."""
    v, x, change = _changing(15)
    h = ch.HouseholderProduct(v).prepare_reuse(declared)
    if inside == "form":
        assert h.plan_for(2).algorithm == "dense"  # the form the hot path keeps
        owner = h._core
    else:
        owner = ch.algorithms.PLANS[h.plan_for(2).algorithm]
    _product_with_a_refresh(monkeypatch, h, x, change, owner, inside)
    assert not h._core._forms and not h._core._replay and not h._core._hot
    numpy.testing.assert_allclose(h @ x, dense_reference(v) @ x, atol=1e-12)


def test_a_refresh_while_the_norms_or_the_layout_are_read_keeps_neither_stale(monkeypatch):
    """The norms (from which LAPACK's plan takes tau) and the layout (trapezoidal or not: what a
    structured product skips) read from the old leaves while ``refresh()`` ran (another thread) are
    not kept: the next product follows the new leaves."""
    rng = numpy.random.default_rng(17)
    qr, _ = _lapack(rng, 10, 10)
    x = rng.standard_normal((10, 2))
    h = ch.HouseholderProduct.from_lapack(qr, 2 / (1 + (numpy.tril(qr, -1) ** 2).sum(axis=0))).refresh()

    def longer():
        qr[4:, 3] *= 2

    _product_with_a_refresh(monkeypatch, h, x, longer, ch._geqrf, "squared_lengths")
    norms = numpy.sqrt(1 + (numpy.tril(qr, -1) ** 2).sum(axis=0))
    kept = h._core._cache.get("norms")
    assert kept is None or numpy.allclose(kept, norms, rtol=1e-14)
    numpy.testing.assert_allclose(h @ x, dense_reference((numpy.tril(qr, -1) + numpy.eye(10)).T) @ x, atol=1e-12)
    v = numpy.triu(rng.standard_normal((10, 10)))
    h = ch.HouseholderProduct(v)
    assert h._core.layout == "trapezoidal"

    def full():
        v[5, 0] = 1.0

    _product_with_a_refresh(monkeypatch, h.refresh(), x, full, ch.algorithms._layout, "is_trapezoidal")
    assert h._core._cache.get("layout") in (None, "full")
    numpy.testing.assert_allclose(h @ x, dense_reference(v) @ x, atol=1e-12)


def test_replays_give_the_same_bits_in_any_thread():
    rng = numpy.random.default_rng(14)
    v = rng.standard_normal((40, 96)).astype(numpy.float32)
    xs = [rng.standard_normal((96, m)).astype(numpy.float32) for m in (1, 5, 33)]
    expected = [ch.HouseholderProduct(v) @ x for x in xs]
    shared = ch.HouseholderProduct(v)
    results = [None] * 4
    barrier = threading.Barrier(4)

    def run(t):
        barrier.wait()
        results[t] = [[shared @ x for x in xs] for _ in range(3)]

    threads = [threading.Thread(target=run, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for rounds in results:
        for got in rounds:
            for a, b in zip(got, expected):
                numpy.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_the_replays_one_reduction_test_of_the_sizes_is_the_two_comparisons(dtype):
    """``_scaling.bit_bounds``: one subtraction of bit patterns and one reduction decide as
    ``min >= lo and max <= hi`` (NumPy's comparison of a ``dtype`` value with a Python float) for
    sizes at and next to both bounds, zero, infinity and NaN of either sign, with bounds that are
    values of ``dtype`` (as :func:`~cuhouse.algorithms._scaling.limits` gives: then the comparison is
    the same in ``dtype`` and in float64, on every NumPy)."""
    from cuhouse.algorithms import _scaling

    rng = numpy.random.default_rng(18)
    info = numpy.finfo(dtype)
    for _ in range(2000):
        lo = float(dtype(10 ** rng.uniform(numpy.log10(info.tiny) - 5, 0)))
        hi = float(dtype(10 ** rng.uniform(0, numpy.log10(info.max))))
        unsigned, lo_bits, span = _scaling.bit_bounds(lo, hi, dtype)
        near = [numpy.nextafter(dtype(b), dtype(t)) for b in (lo, hi) for t in (0, numpy.inf)]
        values = numpy.array([0.0, numpy.inf, numpy.nan, -numpy.nan, lo, hi, 1.0] + near, dtype=dtype)
        sizes = values[rng.integers(0, values.size, rng.integers(1, 5))]
        expected = bool(_reuse.smallest(sizes) >= lo and _reuse.largest(sizes) <= hi)
        assert bool(_reuse.largest(sizes.view(unsigned) - lo_bits) <= span) == expected, (lo, hi, sizes)
        assert bool(numpy.all(sizes.astype(numpy.float64) >= lo) and numpy.all(sizes <= hi)) == expected


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_the_limits_are_values_of_the_dtype(dtype):
    """``_scaling.limits`` rounds its bounds to ``dtype``, so that a size is inside them alike when
    compared in ``dtype`` (NumPy >= 2, arrays) and in float64 (NumPy < 2 scalars, ``.item()``): the
    small path, the general path and the replay decide the same on every NumPy."""
    from cuhouse.algorithms import _scaling

    for d in (1, 16, 64, 1000):
        for v_min, v_max in ((1.0, 1.0), (0.3, 7.0), (1e-9, 3e4)):
            for bound in _scaling.limits(v_min, v_max, d, dtype):
                assert 0 < bound < numpy.inf and float(dtype(bound)) == bound, (d, v_min, v_max, bound)
