"""The launch and sync budget of the GPU path, counted on the CPU stand-in of CuPy
(``tests/cuda_cpu/budget.py``, run in a subprocess with the stand-in on ``PYTHONPATH``) at
d = n = 4096, m = 32, float32:

* a cached ``H @ X`` makes no host sync with ``check_finite=False`` and one otherwise (X's
  finiteness), and at most two launches a block in the two-GEMM form (plus a constant per
  product: X's copy and its exact column scaling), a constant number in the graph form;
* no GEMM operand is copied by CuPy for being non-contiguous, trapezoidal layouts included;
* a fresh ``vjp`` forward (factors not yet built) makes at most one host sync.

Not a GPU test: it runs wherever g++ is (the stand-in compiles the raw kernels); a real CuPy
installed here keeps the stand-in out, and then it is skipped with that reason."""

import json
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PER_PRODUCT = 8  # launches outside the blocks: X's copy, its column scaling (7), at most


@pytest.fixture(scope="module")
def counts():
    if shutil.which("g++") is None:
        pytest.skip("needs g++: the CPU stand-in of CuPy compiles the raw kernels")
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import sanitizer_driver
    finally:
        sys.path.pop(0)
    env, _ = sanitizer_driver.cpu_environment("plain")
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "cuda_cpu" / "budget.py")], env=env, capture_output=True, text=True
    )
    if "refuses to shadow the real CuPy" in result.stderr:
        pytest.skip("a real CuPy is installed: the budget is counted on the stand-in, which stays out of its way")
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.mark.parametrize("form", ["gemm", "graph", "default"])
def test_a_cached_product_makes_no_sync_without_and_one_with_check_finite(counts, form):
    assert counts["cached {} check_finite=False".format(form)]["syncs"] == 0
    assert counts["cached {} check_finite=True".format(form)]["syncs"] == 1


def test_the_two_gemm_form_makes_two_launches_a_block(counts):
    cached = counts["cached gemm check_finite=False"]
    assert cached["blocks"] >= 8 and cached["gemms"] == 2 * cached["blocks"]
    assert cached["launches"] <= 2 * cached["blocks"] + PER_PRODUCT


def test_the_graph_form_makes_a_constant_number_of_launches(counts):
    cached = counts["cached graph check_finite=False"]
    assert cached["launches"] <= 3 + PER_PRODUCT - 1 and cached["gemms"] == 0  # X in, the replay, the result out
    assert counts["cached default check_finite=False"]["plan"][3] == "graph"  # the model's pick at this size


@pytest.mark.parametrize("form", ["steps", "gemm", "graph"])
def test_every_form_gives_the_same_product(counts, form):
    for case in ("check_finite=False", "check_finite=True"):
        assert counts["cached {} {}".format(form, case)]["error"] < 1e-5  # float32, d = 4096


@pytest.mark.parametrize("form", ["gemm", "graph", "default"])
def test_no_gemm_operand_is_copied_for_its_layout(counts, form):
    for case in ("check_finite=False", "trapezoidal"):
        assert counts["cached {} {}".format(form, case)]["operand_copies"] == 0


def test_a_fresh_vjp_forward_makes_at_most_one_sync(counts):
    assert counts["fresh vjp forward"]["syncs"] <= 1
