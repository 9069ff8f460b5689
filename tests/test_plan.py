"""The plan (cuhouse.plan): pinned arguments are respected, the choice is deterministic, and the
names of algorithms agree everywhere they are listed. (The cost model's accuracy is the bench's
``plan`` section; the calibration cache is tests/test_calibration.py.)"""

import inspect
import itertools
import re

import numpy
import pytest
from helpers import dense_reference

import cuhouse as ch
from cuhouse import _memory, calibration, householder, plan
from cuhouse.algorithms import ALGORITHMS, PLANS

GRID = list(itertools.product((1, 7, 64, 512), (1, 5, 64, 512), (1, 32, 1024)))  # (d, n, m) with n <= d below


def _grid():
    return [(d, n, m) for d, n, m in GRID if n <= d]


# ------------------------------------------------------------------ names
def test_algorithm_names_agree_everywhere():
    assert plan.ALGORITHM_NAMES == tuple(ALGORITHMS)
    assert householder.ALGORITHM_CHOICES == ("auto",) + plan.ALGORITHM_NAMES
    assert set(PLANS) == set(plan.ALGORITHM_NAMES) | {plan.LAPACK_PLAN}
    assert set(plan.AUTO_CANDIDATES) < set(plan.ALGORITHM_NAMES)
    documented = re.search(r"algorithm : \{(.*?)\}", inspect.getdoc(ch.HouseholderProduct)).group(1)
    assert set(re.findall(r'"(\w+)"', documented)) == set(householder.ALGORITHM_CHOICES)


def test_every_plan_name_has_a_cost_and_a_module_with_the_three_functions():
    for name in PLANS:
        assert plan.predict(name, 64, 64, 8, 8, layout="unit" if name == plan.LAPACK_PLAN else "full") > 0
        assert all(callable(getattr(PLANS[name], f, None)) for f in ("build", "apply"))
    assert all(callable(ALGORITHMS[name].backward) for name in ALGORITHMS)


# ------------------------------------------------------- pinned arguments
@pytest.mark.parametrize("algorithm", plan.ALGORITHM_NAMES)
@pytest.mark.parametrize("d, n, m", _grid())
def test_a_pinned_algorithm_is_the_one_chosen(algorithm, d, n, m):
    chosen = plan.choose(d, n, m, numpy.float32, algorithm=algorithm)
    assert chosen.algorithm == algorithm
    assert (chosen.block_size is None) == (algorithm == "sequential")
    assert chosen.block_size is None or 1 <= chosen.block_size <= n


@pytest.mark.parametrize("algorithm", ["auto", "cwy", "fasth", "dense"])
@pytest.mark.parametrize("block_size", [1, 3, 16, 10_000])
def test_a_pinned_block_size_is_the_one_chosen(algorithm, block_size):
    d, n, m = 64, 40, 8
    chosen = plan.choose(d, n, m, numpy.float64, algorithm=algorithm, block_size=block_size)
    if chosen.algorithm != "sequential":  # "auto" may still pick the unblocked loop
        assert chosen.block_size == min(block_size, n)


@pytest.mark.parametrize("algorithm", plan.ALGORITHM_NAMES)
def test_the_matrix_runs_the_plan_its_arguments_pin(algorithm, monkeypatch):
    """Not only plan_for: the product itself builds the pinned algorithm's form, at the pinned block size."""
    rng = numpy.random.default_rng(0)
    h = ch.HouseholderProduct(rng.standard_normal((9, 12)), algorithm=algorithm, block_size=4)
    x = rng.standard_normal((12, 3))
    expected = dense_reference(h.vectors) @ x
    built = []
    module = ALGORITHMS[algorithm]
    original = module.build
    monkeypatch.setattr(module, "build", lambda y, k, *rest, **kw: built.append(k) or original(y, k, *rest, **kw))
    numpy.testing.assert_allclose(h @ x, expected, atol=1e-12)
    assert built == [None if algorithm == "sequential" else 4]
    assert h.plan_for(3).algorithm == algorithm


def test_auto_never_picks_fasth_and_only_ormqr_where_lapack_can_run():
    for d, n, m in _grid():
        for layout in ("full", "trapezoidal", "unit"):
            assert plan.choose(d, n, m, numpy.float32, layout=layout).algorithm in plan.AUTO_CANDIDATES
    assert plan.choose(16, 16, 1, numpy.float32, layout="full", lapack=True).algorithm != plan.LAPACK_PLAN


def test_stored_block_inputs_only_for_cwy_on_full_rows():
    for d, n, m in _grid():
        for layout in ("full", "trapezoidal", "unit"):
            chosen = plan.choose(d, n, m, numpy.float32, layout=layout)
            assert not chosen.store_inputs or (chosen.algorithm == "cwy" and layout == "full")


# ------------------------------------------------------------ the objective
def _costs(name, k, d, n, m, layout):
    """``(fresh, built)`` predicted seconds of plan ``name`` at block size ``k`` (a cwy form in its apply mode)."""
    fresh = plan.predict(name, d, n, m, k or 1, layout=layout)
    if name == "cwy":
        mode = plan.apply_mode(d, n, m, k, layout=layout)
        return fresh, plan.predict_apply(mode, d, n, m, k, layout=layout)
    return fresh, plan.predict(name, d, n, m, k or 1, built=True, layout=layout)


@pytest.mark.parametrize("batch", [1, 3, 20000])
@pytest.mark.parametrize("layout, lapack", [("full", False), ("trapezoidal", False), ("unit", True)])
def test_without_a_gradient_the_plan_is_the_fastest_built_within_the_fresh_slack(layout, lapack, batch):
    """Every candidate predicted (brute force): each algorithm at its fastest fresh block size; the plan's
    fresh call (``batch`` matrices, plan.call_seconds of layers added once) is within FRESH_SLACK of the
    fastest's, no such candidate is faster once built; the dense H only within its memory budget
    (plan.dense_fits) and the machine's memory; with a gradient (no dense H), or where LAPACK's ormqr
    races, the fastest fresh."""
    cases = _grid() + [(16, 16, 1), (16, 16, 32), (64, 64, 32), (128, 128, 1), (256, 256, 1), (64, 2, 1), (64, 8, 1)]
    for d, n, m in cases:
        names = plan.AUTO_CANDIDATES + ((plan.LAPACK_PLAN,) if lapack else ())
        if not plan.dense_fits(d, n, batch) or not _memory.host_fits(_memory.DENSE_WORKSPACE * batch * d * d * 4):
            names = tuple(name for name in names if name != "dense")
        own, fastest_own = {}, {}  # fastest_own: each algorithm at its fastest fresh block size
        for name in names:
            sizes = (
                (None,) if name in ("sequential", plan.LAPACK_PLAN) else sorted({min(k, n) for k in plan.BLOCK_SIZES})
            )
            every = [(k, _costs(name, k, d, n, m, layout)) for k in sizes]
            for k, costs in every:
                if name not in fastest_own or costs[0] < fastest_own[name][1][0]:
                    fastest_own[name] = (k, costs)
            # without a gradient (and no LAPACK race): of the near ties of that (plan.BLOCK_TIE), the fastest built
            tie = 0.0 if lapack else plan.BLOCK_TIE
            near = [(k, c) for k, c in every if c[0] <= (1 + tie) * fastest_own[name][1][0]]
            own[name] = min(near, key=lambda item: (item[1][1], item[1][0]))
        fastest = min(fresh for _, (fresh, _) in fastest_own.values())  # over every block size, as _choose
        training = plan.choose(d, n, m, numpy.float32, layout=layout, lapack=lapack, gradient=True, batch=batch)
        assert training.algorithm != "dense"  # its backward is not priced
        k, costs = fastest_own[training.algorithm]
        assert training.block_size == k and _costs(training.algorithm, k, d, n, m, layout) == costs
        assert costs[0] == min(f for name, (_, (f, _)) in fastest_own.items() if name != "dense")
        chosen = plan.choose(d, n, m, numpy.float32, layout=layout, lapack=lapack, batch=batch)
        k, (fresh, built) = own[chosen.algorithm]
        assert chosen.block_size == k
        if lapack:  # the race with LAPACK on its own factorization: the fastest fresh
            assert fresh == fastest
            continue
        layers = plan.call_seconds(calibration.machine("numpy"))
        bound = (1 + plan.FRESH_SLACK) * (batch * fastest + layers) - layers
        assert batch * fresh <= bound
        assert built == min(b for _, (f, b) in own.values() if batch * f <= bound)
        if batch != 1:
            continue
        # other backends: the fastest fresh (their constants were not measured against the objective)
        on_cupy = plan.choose(d, n, m, numpy.float32, "cupy", layout=layout)
        assert plan.predict(on_cupy.algorithm, d, n, m, on_cupy.block_size or 1, backend="cupy", layout=layout) == min(
            plan.predict(name, d, n, m, k or 1, backend="cupy", layout=layout)
            for name in plan.AUTO_CANDIDATES
            for k in ((None,) if name == "sequential" else {min(k, n) for k in plan.BLOCK_SIZES})
        )


def test_small_products_without_gradient_run_the_dense_h_and_match_the_reference():
    """At d = 12 (built-in constants) a product without gradient runs the dense H (one GEMM once built),
    a product with a gradient compact WY: both sides, vectors, transposes, a batch, fresh and again
    (the replay), against float64."""
    rng = numpy.random.default_rng(12)
    v = rng.standard_normal((2, 12, 12))
    reference = dense_reference(v)
    x = rng.standard_normal((12, 3))
    for dtype in (numpy.float32, numpy.float64):
        one, batch = ch.HouseholderProduct(v[0].astype(dtype)), ch.HouseholderProduct(v.astype(dtype))
        assert one.plan_for(3).algorithm == "dense" and batch.plan_for(3).algorithm == "dense"
        assert one.plan_for(3, differentiable=True).algorithm == "cwy"
        xd, tol = x.astype(dtype), (1e-5 if dtype == numpy.float32 else 1e-13)
        cases = (
            (lambda: one @ xd, reference[0] @ x),
            (lambda: xd.T @ one, x.T @ reference[0]),
            (lambda: one.T @ xd, reference[0].T @ x),
            (lambda: one @ numpy.asfortranarray(xd), reference[0] @ x),
            (lambda: one @ xd[:, 0], reference[0] @ x[:, 0]),
            (lambda: xd[:, 0] @ one, x[:, 0] @ reference[0]),
            (lambda: batch @ xd, reference @ x),
            (lambda: xd.T @ batch.T, x.T @ reference.swapaxes(-1, -2)),
        )
        for product, want in cases:
            for _ in range(2):
                got = product()
                assert got.dtype == dtype
                numpy.testing.assert_allclose(got, want, rtol=0, atol=tol)
        out, _ = ch.vjp(ch.matmul, one, xd)
        numpy.testing.assert_allclose(out, reference[0] @ x, rtol=0, atol=tol)


# ------------------------------------------------------------ batches
# The shapes of a review of session 12 (float64): with the batch unseen, the slack of one call's
# layers went to every matrix and the dense H ran (0.07 -> 0.50 s, 198 MB -> 1.6 GB for the first;
# a MemoryError naming algorithm="dense" for the last).
BATCHES = [(20000, 8, 64), (20000, 4, 32), (5000, 48, 48), (400000, 2, 64)]


@pytest.mark.parametrize("batch, n, d", BATCHES)
def test_a_batch_of_few_reflections_runs_compact_wy(batch, n, d):
    """The plan of a batch of ``batch`` sets of ``n`` reflections, one column: compact WY, as the plan of
    each set alone with the call's layers priced once per call."""
    chosen = plan.choose(d, n, 1, numpy.float64, batch=batch)
    assert chosen.algorithm == "cwy"
    assert chosen == plan.choose(d, n, 1, numpy.float64, gradient=True, batch=batch)


@pytest.mark.parametrize("batch, n, d", BATCHES[:3])
def test_a_batch_of_few_reflections_runs_its_plan_and_matches_the_reference(batch, n, d):
    rng = numpy.random.default_rng(batch + n + d)
    v, x = rng.standard_normal((batch, n, d)), rng.standard_normal((batch, d, 1))
    h = ch.HouseholderProduct(v)
    assert h.plan_for(1).algorithm == "cwy"
    y = h @ x
    some = numpy.r_[0:3, batch // 2, batch - 3 : batch]
    numpy.testing.assert_allclose(y[some], dense_reference(v[some]) @ x[some], rtol=0, atol=1e-13)


def test_a_batch_never_runs_a_dense_h_over_the_machine_memory(monkeypatch):
    """Where the dense H of every batch entry (with its build's workspace) is over the machine's memory,
    "auto" runs compact WY (which fits) instead of raising MemoryError; with the memory, the dense H."""
    rng = numpy.random.default_rng(5)
    batch, d = 50, 32
    v, x = rng.standard_normal((batch, d, d)), rng.standard_normal((batch, d, 32))
    want = dense_reference(v) @ x
    plan._choose.cache_clear()
    assert ch.HouseholderProduct(v).plan_for(32).algorithm == "dense"  # the budget holds: raced, chosen here
    try:
        dense_bytes = _memory.DENSE_WORKSPACE * batch * d * d * 8
        monkeypatch.setattr(_memory, "host_memory", lambda: dense_bytes - 1)
        plan._choose.cache_clear()
        h = ch.HouseholderProduct(v)
        assert h.plan_for(32).algorithm == "cwy"
        numpy.testing.assert_allclose(h @ x, want, rtol=0, atol=1e-13)
        with pytest.raises(MemoryError, match='algorithm="dense"'):  # pinned, it still says why
            ch.HouseholderProduct(v, algorithm="dense") @ x
    finally:
        monkeypatch.undo()
        plan._choose.cache_clear()


def test_the_batch_and_gradient_arguments_are_checked():
    with pytest.raises(TypeError, match=r"gradient must be a bool, got 'no' \(str\)"):
        plan.choose(64, 2, 1, numpy.float64, gradient="no")
    with pytest.raises(TypeError, match=r"batch must be an int, got 2.0 \(float\)"):
        plan.choose(64, 2, 1, numpy.float64, batch=2.0)
    with pytest.raises(ValueError, match="batch must be at least 1 .*got 0"):
        plan.choose(64, 2, 1, numpy.float64, batch=0)
    h = ch.HouseholderProduct(numpy.ones((2, 8)))
    with pytest.raises(TypeError, match=r"differentiable must be a bool, got 'yes' \(str\)"):
        h.plan_for(1, differentiable="yes")
    assert plan.choose(64, 2, 1, numpy.float64, gradient=numpy.bool_(True), batch=numpy.int64(3)) == plan.choose(
        64, 2, 1, numpy.float64, gradient=True, batch=3
    )


# ------------------------------------------------------------ determinism
def test_the_choice_is_a_function_of_its_arguments():
    """The same arguments give the same plan, memoized or computed afresh, whatever is cached."""
    first = {args: plan.choose(*args, numpy.float32) for args in _grid()}
    plan._choose.cache_clear()
    assert {args: plan.choose(*args, numpy.float32) for args in _grid()} == first


def test_the_plan_does_not_depend_on_what_is_cached():
    rng = numpy.random.default_rng(1)
    h = ch.HouseholderProduct(rng.standard_normal((48, 64)).astype(numpy.float32))
    before = [h.plan_for(m) for m in (1, 8, 64)]
    for m in (64, 8, 1):
        h @ rng.standard_normal((64, m)).astype(numpy.float32)
    assert [h.plan_for(m) for m in (1, 8, 64)] == before
    assert h.T.plan_for(8) == h.plan_for(8)  # H and H.T share the reflections and the plan


def test_the_same_product_gives_the_same_bits():
    rng = numpy.random.default_rng(2)
    v, x = rng.standard_normal((30, 40)), rng.standard_normal((40, 5))
    first = ch.HouseholderProduct(v) @ x
    h = ch.HouseholderProduct(v)
    h @ rng.standard_normal((40, 200))  # another plan's form cached first
    numpy.testing.assert_array_equal(h @ x, first)
