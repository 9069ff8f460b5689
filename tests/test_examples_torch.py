"""Smoke runs of the torch examples (examples/torch_*.py) at tiny sizes: each trains and its loss decreases."""

import importlib
import pathlib
import sys

import pytest

pytest.importorskip("torch", reason="the torch examples need PyTorch: pip install 'cuhouse[torch]'")
pytest.importorskip("sklearn", reason="the torch examples need scikit-learn: pip install 'cuhouse[examples]'")

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def example(monkeypatch):
    """Import ``examples/<name>.py`` as a module (with examples/ on sys.path for ``_measure``)."""
    monkeypatch.syspath_prepend(str(EXAMPLES))

    def load(name):
        return importlib.import_module(name)

    yield load
    for name in [n for n in sys.modules if n.startswith("torch_") or n == "_measure"]:
        if (getattr(sys.modules[name], "__file__", None) or "").startswith(str(EXAMPLES)):
            del sys.modules[name]


def test_copy_task_losses_decrease(example, capsys):
    results = example("torch_copy_task").main(["--tiny"])
    out, err = capsys.readouterr()
    assert err == ""
    assert "memoryless baseline" in out
    assert set(results) == {
        "cuhouse Orthogonal",
        "cuhouse orthogonal()",
        "torch matrix_exp",
        "torch householder",
        "nn.Linear",
    }
    for variant, (losses, seconds, recall) in results.items():
        assert len(losses) == len(seconds) == 30
        assert 0 <= recall <= 1
        assert sum(losses[-5:]) / 5 < 0.8 * losses[0], variant
    # every variant starts from the same recurrent matrix, embedding and read-out
    assert len({round(losses[0], 4) for losses, _, _ in results.values()}) == 1


def test_svd_flow_fits_and_both_flows_agree_at_the_start(example, capsys):
    fitted, timings = example("torch_svd_flow").main(["--tiny"])
    out, err = capsys.readouterr()
    assert err == ""
    svd_losses, svd_ll = fitted["SVDLinear + logdet()"]
    dense_losses, dense_ll = fitted["nn.Linear + slogdet"]
    assert svd_losses[0] == pytest.approx(dense_losses[0], rel=1e-5)  # same weights, logdet() == slogdet
    assert sum(svd_losses[-10:]) / 10 < 0.8 * svd_losses[0]
    assert svd_ll > -svd_losses[0] and dense_ll > -dense_losses[0]
    assert set(timings) == {(32, 16)}


def test_hra_fit_decreases_and_matches_the_dense_product(example, capsys):
    results = example("torch_hra").main(["--tiny"])
    out, err = capsys.readouterr()
    assert err == ""
    assert results["fit"][-1] < 0.8 * results["fit"][0]
    row = results[128, 8]
    assert row["y_error"] < 1e-5 and row["grad_error"] < 1e-5
    memory = row["memory"]
    if memory["matrix-free"] is not None:  # Linux: peak RSS of each variant in a subprocess
        assert memory["dense (PEFT)"] > memory["matrix-free"] >= 0


def test_digits_mlp_trains_and_clipping_bounds_lipschitz(example, capsys):
    results = example("torch_digits_mlp").main(["--tiny", "--clips", "0.8"])
    out, err = capsys.readouterr()
    assert err == ""
    for name, result in results.items():
        assert result["losses"][-1] < result["losses"][0], name
        assert result["accuracy"] > 0.3, name
    assert results["SVDLinear MLP"]["losses"][-1] < 0.8 * results["SVDLinear MLP"]["losses"][0]
    assert results["SVDLinear MLP, |s| <= 0.8"]["lipschitz"] <= 0.8**3 * (1 + 1e-5)


def test_glow_digits_trains_and_the_flows_agree_at_the_start(example, capsys):
    fitted, timings = example("torch_glow_digits").main(["--tiny"])
    out, err = capsys.readouterr()
    assert err == ""
    assert "test bits/dim" in out and "LU/SVD" in out
    assert set(fitted) == {"SVDConv1x1 (cuhouse)", "dense 1x1 + slogdet", "LU 1x1 (Glow)"}
    first = [losses[0] for losses, _ in fitted.values()]
    assert max(first) - min(first) < 1e-4  # same weights: logdet() == slogdet == sum(log_s)
    for name, (losses, test_bpd) in fitted.items():
        assert sum(losses[-5:]) / 5 < losses[0], name
        assert 0 < test_bpd < losses[0], name
    assert set(timings) == {16} and len(timings[16]) == 3
