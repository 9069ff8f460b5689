"""The examples in examples/ (the torch training examples are in test_examples_torch.py): each runs
at a tiny size and reaches what it claims."""

import pathlib
import runpy
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def test_procrustes_example_reaches_the_closed_form_optimum(capsys):
    module = runpy.run_path(str(EXAMPLES / "procrustes.py"))
    gap = module["main"](steps=3000)
    assert -1e-9 < gap < 1e-6
    assert "closed-form optimum" in capsys.readouterr().out


def test_rotate_example_smoke(tmp_path):
    """The demonstration script end to end at a tiny size, on an in-process cluster."""
    pytest.importorskip("distributed", reason="the Dask example needs dask.distributed")
    result = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "dask_rotate.py"),
            "--rows",
            "3000",
            "--dim",
            "16",
            "--chunk-rows",
            "500",
            "--workers",
            "1",
            "--in-process",
            "--directory",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "rows/s" in result.stdout and "peak RSS" in result.stdout
    assert list(tmp_path.iterdir()) == []  # the on-disk array is deleted


@pytest.mark.slow
def test_bench_script_runs_on_a_tiny_size():
    pytest.importorskip("torch", reason="the torch bench needs PyTorch")
    script = EXAMPLES / "bench_torch.py"
    out = subprocess.run(
        [sys.executable, str(script), "--d", "8", "--m", "2", "--rounds", "1"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "torch householder_product + matmul" in out and "parametrizations.orthogonal matrix_exp" in out
