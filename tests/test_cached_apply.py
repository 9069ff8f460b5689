"""The cached apply forms of compact WY (:mod:`cuhouse.algorithms._cached`): two GEMMs a block with
``W = M V`` cached, or the sweep replayed as a CUDA graph, give the steps form's product for every
layout, direction, batch and identity factor; the plan picks a form per backend.

NumPy and CuPy only (the ``xp`` fixture): these are the native compact WY's cached forms and apply
modes; the generic path (``algorithms.portable``) has one apply form, tested in every other file."""

import numpy
import pytest
from helpers import rtol, to_numpy

import cuhouse as ch
from cuhouse import plan
from cuhouse._backend import cupy_module, gpu_available
from cuhouse.algorithms import _cached, _layout, cwy

FORMS = ("gemm", "graph")


def _rows(rng, batch, n, d, layout):
    y = rng.standard_normal(batch + (n, d))
    if layout != "full":  # NaN where the layout stores nothing: never read
        y = numpy.where(numpy.tril(numpy.ones((n, d), dtype=bool), 0 if layout == "unit" else -1), numpy.nan, y)
    return y


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("layout", _layout.LAYOUTS)
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize(
    "batch, xbatch, n, d, k", [((), (), 7, 9, 3), ((), (), 8, 8, 8), ((2,), (), 5, 9, 2), ((), (3,), 9, 11, 4)]
)
def test_cached_forms_equal_the_steps_form(xp, form, layout, transpose, batch, xbatch, n, d, k):
    rng = numpy.random.default_rng(n * d + k)
    y = xp.asarray(_rows(rng, batch, n, d, layout))
    identity = xp.asarray(rng.random(batch + (n,)) < 0.3) if layout == "unit" else None
    f = cwy.build(y, k, xp, layout, identity)
    x = xp.asarray(rng.standard_normal(xbatch + (d, 4)))
    expected = to_numpy(cwy.apply(f, x, transpose, xp))
    for _ in range(2):  # built, then cached (W, a captured graph)
        got = cwy.apply(f, x, transpose, xp, mode=form)
        assert got.shape == expected.shape
        numpy.testing.assert_allclose(to_numpy(got), expected, rtol=0, atol=rtol(numpy.float64, 100))
    assert numpy.isfinite(to_numpy(got)).all()


def test_the_cached_forms_are_built_once_per_direction(xp):
    rng = numpy.random.default_rng(1)
    f = cwy.build(xp.asarray(rng.standard_normal((6, 8))), 3, xp)
    first = _cached.w_blocks(f, False, xp)
    assert _cached.w_blocks(f, False, xp) is first and _cached.w_blocks(f, True, xp) is not first
    assert all(form.w.flags.c_contiguous and form.v.flags.c_contiguous for form in first)


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA device")
def test_a_graph_replay_reads_each_new_x():
    xp = cupy_module()
    rng = numpy.random.default_rng(2)
    f = cwy.build(xp.asarray(rng.standard_normal((12, 12))), 4, xp)
    for seed in range(3):
        x = xp.asarray(numpy.random.default_rng(seed).standard_normal((12, 5)))
        numpy.testing.assert_allclose(
            to_numpy(cwy.apply(f, x, False, xp, mode="graph")), to_numpy(cwy.apply(f, x, False, xp)), atol=1e-13
        )
    (graphs,) = [v for key, v in f.cache.items() if key[0] == "graphs"]
    assert len(graphs) == 1  # one shape, one stream: one capture


def test_numpy_keeps_the_steps_form_and_the_gpu_model_prefers_fewer_launches():
    assert plan.choose(4096, 4096, 32, numpy.float32, "numpy").apply == "steps"
    chosen = plan.choose(4096, 4096, 32, numpy.float32, "cupy")
    assert chosen.algorithm == "cwy" and chosen.apply == "graph"
    assert plan.predict_apply("gemm", 4096, 4096, 32, chosen.block_size, 4, "cupy") < plan.predict_apply(
        "steps", 4096, 4096, 32, chosen.block_size, 4, "cupy"
    )
    assert plan.choose(64, 8, 1, numpy.float64, "cupy", algorithm="sequential").apply == "steps"
    with pytest.raises(ValueError, match="unknown apply mode 'fast'"):
        plan.predict_apply("fast", 64, 64, 1, 8)


@pytest.mark.parametrize("forms", [("gemm",), ("graph",), ("steps", "gemm", "graph")])
def test_products_and_gradients_through_each_form_of_the_plan(xp, forms, monkeypatch):
    monkeypatch.setitem(plan.APPLY_MODES, "cupy", forms)
    monkeypatch.setitem(plan.APPLY_MODES, "numpy", forms)
    plan._choose.cache_clear()
    try:
        rng = numpy.random.default_rng(3)
        v = xp.asarray(rng.standard_normal((20, 24)))
        x = xp.asarray(rng.standard_normal((24, 3)))
        h = ch.HouseholderProduct(v, algorithm="cwy", block_size=8)
        assert h.plan_for(3).apply in forms
        dense = to_numpy(h.todense())
        numpy.testing.assert_allclose(to_numpy(h @ x), dense @ to_numpy(x), atol=1e-12)
        numpy.testing.assert_allclose(to_numpy(h.T @ x), dense.T @ to_numpy(x), atol=1e-12)
        out, back = ch.vjp(ch.matmul, h, x)
        (dv,), dx = back(xp.ones_like(out))
        reference = ch.HouseholderProduct(to_numpy(v), block_size=8)
        _, back_ref = ch.vjp(ch.matmul, reference, to_numpy(x))
        (dv_ref,), dx_ref = back_ref(numpy.ones(out.shape))
        numpy.testing.assert_allclose(to_numpy(dv), dv_ref, atol=1e-11)
        numpy.testing.assert_allclose(to_numpy(dx), dx_ref, atol=1e-11)
    finally:
        plan._choose.cache_clear()
