"""The bench command and its peers: what they compute agrees, and the table says how it measured."""

import numpy
import pytest

import cuhouse
from cuhouse.bench import SECTIONS, main, peers
from cuhouse.bench._timing import DISAGREEMENT, measure
from cuhouse.bench.forward import data


def test_peers_compute_the_product_cuhouse_computes():
    v, x = data(24, 24, 3, numpy.float64, numpy)
    qr, tau = peers.geqrf(v, numpy)
    expected = cuhouse.HouseholderProduct.from_lapack(qr, tau) @ x
    numpy.testing.assert_allclose(peers.lapack_ormqr(qr, tau, x)(), expected, atol=1e-12)
    numpy.testing.assert_allclose(peers.lapack_orgqr_gemm(qr, tau, x)(), expected, atol=1e-12)
    dense = cuhouse.HouseholderProduct.from_lapack(qr, tau).todense()
    numpy.testing.assert_allclose(peers.dense_gemm(dense, x)(), expected, atol=1e-12)


def test_torch_peers_agree_with_from_lapack():
    pytest.importorskip("torch")
    v, x = data(12, 12, 2, numpy.float64, numpy)
    dout = numpy.random.default_rng(1).standard_normal((12, 2))
    qr, tau = peers.geqrf(v, numpy)
    h = cuhouse.HouseholderProduct.from_lapack(qr, tau)
    numpy.testing.assert_allclose(peers.torch_forward(qr, tau, x, numpy)().numpy(), h @ x, atol=1e-12)
    (dqr,), _ = cuhouse.vjp(cuhouse.matmul, h, x)[1](dout)
    # torch holds tau fixed, cuhouse implies it from qr: the same work, gradients of the same shape
    torch_dqr = peers.torch_forward_backward(qr, tau, x, dout, numpy)().numpy()
    assert torch_dqr.shape == dqr.shape and numpy.isfinite(torch_dqr).all()


def test_measure_reports_the_spread_of_the_per_round_ratios():
    steady = measure({"a": lambda: None, "b": lambda: None}, "a", 3, numpy)
    assert steady["a"].ratio == 1.0 and steady["a"].spread == 0.0
    assert set(steady["b"]._fields) == {"seconds", "ratio", "spread"}


@pytest.mark.parametrize("section", ["forward", "gradients"])
def test_every_case_names_a_reference_among_the_cases(section):
    baselines, cases = SECTIONS[section].cases(16, 2, numpy.dtype(numpy.float32), numpy)
    assert set(baselines) == set(cases) and set(baselines.values()) <= set(cases)
    assert "cuhouse from_lapack" in " ".join(cases)


def test_bench_table_says_how_it_measured(capsys, monkeypatch):
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(name, "1")  # already single-threaded: no re-exec
    assert main(["bench", "--sizes", "16", "--sections", "forward", "--rounds", "1", "--backend", "numpy"]) == 0
    out = capsys.readouterr().out
    assert "BLAS threads = 1" in out and "interleaved" in out and "{:.0%}".format(DISAGREEMENT) in out
    assert "LAPACK dormqr" not in out and "LAPACK sormqr" in out and "(itself)" in out
    assert "cuhouse from_lapack" in out and "orgqr then GEMM" in out


@pytest.mark.parametrize("dtype", [numpy.complex64, numpy.complex128])
def test_complex_peers_are_lapacks_unitary_routines(dtype):
    """``--dtype complex64/complex128``: complex data, LAPACK's ?unmqr/?ungqr on complex ?geqrf output."""
    v, x = data(20, 20, 3, dtype, numpy)
    assert v.dtype == dtype and x.dtype == dtype and numpy.abs(v.imag).max() > 0
    qr, tau = peers.geqrf(v, numpy)
    expected = cuhouse.HouseholderProduct.from_lapack(qr, tau) @ x
    tol = 1e-4 if dtype == numpy.complex64 else 1e-12
    numpy.testing.assert_allclose(peers.lapack_ormqr(qr, tau, x)(), expected, atol=tol)
    numpy.testing.assert_allclose(peers.lapack_orgqr_gemm(qr, tau, x)(), expected, atol=tol)
    label, _ = peers.ormqr(qr, tau, x, numpy)
    assert label == "LAPACK {}unmqr".format("c" if dtype == numpy.complex64 else "z")


def test_bench_runs_on_complex_data(capsys, monkeypatch):
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(name, "1")
    argv = ["bench", "--sizes", "16", "--rounds", "1", "--backend", "numpy", "--dtype", "complex64"]
    assert main(argv + ["--sections", "forward,gradients,spectral"]) == 0
    out = capsys.readouterr().out
    assert "dtype=complex64" in out and "LAPACK cunmqr" in out and "expm @ X: cuhouse" in out


def test_bench_rejects_zero_threads(capsys):
    assert main(["bench", "--threads", "0"]) == 2
    assert "--threads must be a positive integer" in capsys.readouterr().err


def test_methods_keep_the_chosen_rows_and_their_references(capsys, monkeypatch):
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(name, "1")
    assert (
        main(
            [
                "bench",
                "--sizes",
                "16",
                "--sections",
                "forward",
                "--rounds",
                "1",
                "--backend",
                "numpy",
                "--methods",
                "from_lapack",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    rows = [line[8:46].strip() for line in lines if line.startswith("    16") and "plans:" not in line]
    assert rows == ["cuhouse from_lapack", "LAPACK sormqr"]


def test_plot_draws_every_case_and_the_floor(capsys, monkeypatch, tmp_path):
    pytest.importorskip("matplotlib", reason="--plot needs the plot extra (matplotlib)")
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(name, "1")
    path = tmp_path / "fig3.png"
    argv = ["bench", "--plot", str(path), "--sizes", "8,16", "--rounds", "1", "--backend", "numpy"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "clock=thread CPU time" in out and "dense GEMM floor fwd+bwd" in out and "cuhouse cwy fwd+bwd" in out
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_section_runs_and_pairs_each_case_with_its_operation():
    baseline, cases = SECTIONS["spectral"].cases(16, 4, numpy.dtype(numpy.float32), numpy)
    assert set(baseline) == set(cases) and set(baseline.values()) <= set(cases)
    result = measure(cases, baseline, 1, numpy)
    assert all(result[name][1] == 1.0 for name in set(baseline.values()))


def test_methods_keep_the_chain_of_references(capsys, monkeypatch):
    """A reused row is compared with the dense GEMM, which is compared with LAPACK: --methods keeps the
    whole chain (it raised KeyError 'LAPACK sormqr' with only the first link)."""
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(name, "1")
    argv = ["bench", "--sizes", "16", "--sections", "forward", "--rounds", "1", "--backend", "numpy"]
    assert main(argv + ["--methods", "reused"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line[8:46].strip() for line in lines if line.startswith("    16") and "plans:" not in line]
    assert sorted(rows) == ["LAPACK sormqr", "cuhouse auto, reused", "dense GEMM"]
