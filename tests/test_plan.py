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
from cuhouse import calibration, householder, plan
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


@pytest.mark.parametrize("layout, lapack", [("full", False), ("trapezoidal", False), ("unit", True)])
def test_without_a_gradient_the_plan_is_the_fastest_built_within_the_fresh_slack(layout, lapack):
    """Every candidate predicted (brute force): each algorithm at its fastest fresh block size; the plan's
    fresh call (plan.call_seconds of layers added) is within FRESH_SLACK of the fastest, no such candidate is
    faster once built; with a gradient (no dense H), or where LAPACK's ormqr races, the fastest fresh."""
    for d, n, m in _grid() + [(16, 16, 1), (16, 16, 32), (64, 64, 32), (128, 128, 1), (256, 256, 1)]:
        names = plan.AUTO_CANDIDATES + ((plan.LAPACK_PLAN,) if lapack else ())
        own = {}
        for name in names:
            sizes = (
                (None,) if name in ("sequential", plan.LAPACK_PLAN) else sorted({min(k, n) for k in plan.BLOCK_SIZES})
            )
            for k in sizes:
                costs = _costs(name, k, d, n, m, layout)
                if name not in own or costs[0] < own[name][1][0]:
                    own[name] = (k, costs)
        fastest = min(fresh for _, (fresh, _) in own.values())
        training = plan.choose(d, n, m, numpy.float32, layout=layout, lapack=lapack, gradient=True)
        assert training.algorithm != "dense"  # its backward is not priced
        k, costs = own[training.algorithm]
        assert training.block_size == k and _costs(training.algorithm, k, d, n, m, layout) == costs
        assert costs[0] == min(f for name, (_, (f, _)) in own.items() if name != "dense")
        chosen = plan.choose(d, n, m, numpy.float32, layout=layout, lapack=lapack)
        k, (fresh, built) = own[chosen.algorithm]
        assert chosen.block_size == k
        if lapack:  # the race with LAPACK on its own factorization: the fastest fresh
            assert fresh == fastest
            continue
        layers = plan.call_seconds(calibration.machine("numpy"))
        bound = (1 + plan.FRESH_SLACK) * (fastest + layers) - layers
        assert fresh <= bound
        assert built == min(b for _, (f, b) in own.values() if f <= bound)
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
