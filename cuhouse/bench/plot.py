"""``python -m cuhouse bench --plot out.png``: the seed paper's Figure 3.

Time of forward plus backward of ``H @ X`` (gradients with respect to the
vectors and X, from a fresh H) against d, for every algorithm and peer (the
cases of the ``gradients`` section, torch included when it is installed, and
the forward pass of ``auto`` for reference) and for the dense GEMM floor, on
log axes. With single-threaded BLAS (the bench's own mode, as for quoted
ratios) every case is timed by the calling thread's CPU time.
"""

import cuhouse

from .._backend import backend_name
from . import forward, gradients
from ._timing import measure


def draw(path, sizes, m, dtype, xp, rounds, cpu_clock=False):
    """Time every case at every d, print the table, and save the figure to ``path``.

    ``cpu_clock`` times by the calling thread's CPU time, as the bench does with single-threaded BLAS.
    """
    pyplot = _pyplot()
    times = {}
    print(
        "cuhouse bench --plot: backend={} dtype={} m={} rounds={} clock={}".format(
            backend_name(xp), dtype, m, rounds, "thread CPU time" if cpu_clock else "wall or CUDA events"
        )
    )
    print("{:>6}  {:<34} {:>11}".format("d", "method", "median ms"))
    for d in sizes:
        baselines, callables = gradients.cases(d, m, dtype, xp)
        callables["dense GEMM floor fwd+bwd"] = dense_gemm_floor(d, m, dtype, xp)
        baselines["dense GEMM floor fwd+bwd"] = "dense GEMM floor fwd+bwd"  # the figure plots times, not ratios
        for name, result in measure(callables, baselines, rounds, xp, cpu_clock).items():
            times.setdefault(name, {})[d] = result.seconds
            print("{:>6}  {:<34} {:>11.3f}".format(d, name, result.seconds * 1e3))
    figure, axes = pyplot.subplots(figsize=(7, 5))
    for name, by_size in times.items():
        ds = sorted(by_size)
        axes.plot(ds, [by_size[d] for d in ds], marker="o", label=name)
    axes.set_xscale("log", base=2)
    axes.set_xticks(sizes, [str(d) for d in sizes])
    axes.minorticks_off()
    axes.set_yscale("log")
    axes.set_xlabel("d (n = d reflections)")
    axes.set_ylabel("median seconds")
    axes.set_title("H @ X, forward + backward\nm = {}, {}, {}".format(m, dtype, backend_name(xp)))
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    print("wrote {}".format(path))
    return 0


def dense_gemm_floor(d, m, dtype, xp):
    """``H @ X`` and its two backward GEMMs (dH = dout X^T, dX = H^T dout) with H precomputed."""
    v, x = forward.data(d, d, m, dtype, xp)
    _, dout = forward.data(d, 1, m, dtype, xp, seed=1)
    dense = cuhouse.HouseholderProduct(v).todense()
    return lambda: (dense @ x, dout @ x.T, dense.T @ dout)


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install 'cuhouse[plot]'") from None
    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot
