"""The bench command: ``python -m cuhouse bench``.

Each section (one module here) returns, for one size d, each case's baseline
and a dict of named callables; every callable is one complete, synchronized
operation. The runner times them round-robin (A, B, C, A, B, C, ...) after a
warm-up round, so that drift on a shared machine hits all of them alike, and
reports the median time of each, the median of the per-round ratios to its
baseline, and marks rows whose rounds disagree by more than 25%.

On the CPU the command re-runs itself with single-threaded BLAS
(``OPENBLAS_NUM_THREADS=1`` and friends), the setting in which ratios on a
shared machine are repeatable; ``--threads N`` opts into N threads.
"""

import argparse
import importlib.util
import os
import sys

import numpy

from .. import calibration
from .._backend import backend_name, cupy_module, gpu_available
from . import forward, gradients, layout, plan_check, plot, small, spectral, torch_layer
from ._timing import DISAGREEMENT, MIN_SAMPLE, measure

SECTIONS = {
    "small": small,
    "forward": forward,
    "gradients": gradients,
    "spectral": spectral,
    "layout": layout,
    "plan": plan_check,
    "torch": torch_layer,
}
DEFAULT_SECTIONS = ("small", "forward", "gradients", "spectral", "layout")
DEFAULT_SIZES = (256, 512, 1024, 2048)
QUICK_SIZES = (256, 512)
_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _parser():
    p = argparse.ArgumentParser(
        prog="python -m cuhouse bench",
        description="Time cuhouse against its peers; ratios are measured in one run, "
        "interleaved, with single-threaded BLAS unless --threads says otherwise.",
    )
    p.add_argument("--quick", action="store_true", help="sizes 256 and 512 (the small-size section: 64), 5 rounds")
    p.add_argument(
        "--sizes",
        type=lambda s: tuple(int(x) for x in s.split(",")),
        help="comma-separated d values (default 256,512,1024,2048; the small-size section 16,64,128; "
        "the layout section 256)",
    )
    p.add_argument("--m", type=int, default=32, help="columns of X (default 32)")
    p.add_argument("--dtype", choices=("float32", "float64", "complex64", "complex128"), default="float32")
    p.add_argument(
        "--backend", choices=("auto", "numpy", "cupy"), default="auto", help="auto: cupy when a GPU answers, else numpy"
    )
    p.add_argument("--rounds", type=int, help="timing rounds per case (default 9, 5 with --quick)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="BLAS threads (default 1: the setting in which ratios repeat on a shared machine)",
    )
    p.add_argument(
        "--methods",
        type=lambda s: tuple(x for x in s.split(",") if x),
        help="comma-separated substrings: time only the rows whose name contains one of them "
        "(and the rows they are compared with)",
    )
    p.add_argument(
        "--sections",
        default=",".join(DEFAULT_SECTIONS),
        help="comma-separated subset of: {} (default: {})".format(", ".join(SECTIONS), ", ".join(DEFAULT_SECTIONS)),
    )
    p.add_argument(
        "--plot",
        metavar="PNG",
        help="draw the seed paper's Figure 3 (forward + backward time against d) to PNG; "
        "needs matplotlib: pip install 'cuhouse[plot]'",
    )
    p.add_argument(
        "--pairs", action="store_true", help="kept for old command lines: the default mode already measures this way"
    )
    return p


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "bench":
        print(
            "usage: python -m cuhouse bench [--quick] [--sizes ...] [--m M] [--dtype ...] [--threads N]",
            file=sys.stderr,
        )
        return 2
    args = _parser().parse_args(argv[1:])
    if args.threads < 1:
        print("--threads must be a positive integer, got {}".format(args.threads), file=sys.stderr)
        return 2
    threads = str(args.threads)
    if any(os.environ.get(v) != threads for v in _THREAD_VARS):
        env = dict(os.environ, **{v: threads for v in _THREAD_VARS})
        os.execve(sys.executable, [sys.executable, "-m", "cuhouse"] + argv, env)
    xp = _backend(args.backend)
    rounds = args.rounds or (5 if args.quick else 9)
    names = [s for s in args.sections.split(",") if s]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown:
        print("unknown section(s): {}; choose from {}".format(", ".join(unknown), ", ".join(SECTIONS)), file=sys.stderr)
        return 2
    if "torch" in names and importlib.util.find_spec("torch") is None:
        print('the torch section needs PyTorch: pip install "cuhouse[torch]"', file=sys.stderr)
        return 2
    dtype = numpy.dtype(args.dtype)
    cpu_clock = xp is numpy and args.threads == 1
    if args.plot:
        sizes = args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES)
        return plot.draw(args.plot, sizes, args.m, dtype, xp, rounds, cpu_clock)
    print("cuhouse bench: backend={} dtype={} m={} (columns of X)".format(backend_name(xp), dtype, args.m))
    clock = (
        "the calling thread's CPU time (single-threaded BLAS runs there; the time waiting for a core on a "
        "shared machine is left out)"
        if cpu_clock
        else "CUDA events"
        if xp is not numpy
        else "the wall clock"
    )
    print("how: BLAS threads = {} (OPENBLAS/OMP/MKL_NUM_THREADS), timed by {}.".format(threads, clock))
    print(
        "     One warm-up round, then {} rounds that run every case of a size once each, interleaved "
        "(each round starting one case later); a case under {:.0f} ms repeats within its sample, "
        "which is the mean of those calls.".format(rounds, MIN_SAMPLE * 1e3)
    )
    print(
        "     'median ms' is the median time; 'ratio' the median over rounds of time / time of the row named "
        "in 'vs', measured in the same round."
    )
    print(
        "     'spread' is how far the per-round ratios disagree (largest - smallest over the median, the extreme "
        "round on each side left out); '!' marks more than {:.0%}: re-run before quoting.".format(DISAGREEMENT)
    )
    print("plans: {}".format(_calibration_line(backend_name(xp))))
    for name in names:
        section = SECTIONS[name]
        sizes = args.sizes or (
            getattr(section, "QUICK_SIZES", QUICK_SIZES) if args.quick else getattr(section, "SIZES", DEFAULT_SIZES)
        )
        print("\n## {}: {}".format(name, section.TITLE))
        for label, text in getattr(section, "EXPLAIN", {}).items():
            print("   {:<34} {}".format(label + ":", text))
        print("{:>6}  {:<38} {:>10} {:>7} {:>6}  {}".format("d", "method", "median ms", "ratio", "spread", "vs"))
        for d in sizes:
            baselines, cases = section.cases(d, args.m, dtype, xp)
            if not isinstance(baselines, dict):
                baselines = dict.fromkeys(cases, baselines)
            if args.methods:
                chosen = {c for c in cases if any(part in c for part in args.methods)}
                while not {baselines[c] for c in chosen} <= chosen:  # baselines have baselines: all of the chain
                    chosen |= {baselines[c] for c in chosen}
                cases = {c: fn for c, fn in cases.items() if c in chosen}
            for case, result in measure(cases, baselines, rounds, xp, cpu_clock).items():
                vs = baselines[case]
                print(
                    "{:>6}  {:<38} {:>10.3f} {:>7.2f} {:>5.0%}{} {}".format(
                        d,
                        case,
                        result.seconds * 1e3,
                        result.ratio,
                        result.spread,
                        "!" if result.spread > DISAGREEMENT else " ",
                        "(itself)" if vs == case else vs,
                    )
                )
            note = section.report(d, args.m, dtype, xp) if hasattr(section, "report") else None
            if note:
                print("{:>6}  {}".format(d, note))
    return 0


def _calibration_line(backend):
    """Where the cost model's constants came from (see :mod:`cuhouse.calibration`)."""
    current = calibration.current(backend)
    m = current.machine
    if current.source == "built-in":
        why = "calibration off (CUHOUSE_CALIBRATION)" if backend == "numpy" else "not measured on this backend"
        return "the cost model's built-in constants ({})".format(why)
    if current.source.startswith("built-in"):  # a measurement rejected as implausible: the reason follows
        return "the cost model's {}".format(current.source)
    blocks = ""
    if m.step_rates:  # a block of cwy's direct product (Z = V X, U = T Z, X -= V^T U), 32 columns, and ?trtri by k
        levels = {}
        for k, size, rate in m.step_rates:
            levels.setdefault(k, []).append((size, rate))
        sizes = levels[min(levels)]
        blocks = ", cwy block steps (32 columns) GFLOP/s at d = {}: {}; trtri by k: {}".format(
            "/".join("{:.0f}".format(size / 32) for size, _ in sizes),
            ", ".join(
                "k={:.0f} {}".format(k, "/".join("{:.0f}".format(rate / 1e9) for _, rate in points))
                for k, points in sorted(levels.items())
            ),
            ", ".join("k={:.0f} {:.2g}".format(k, rate / 1e9) for k, rate in m.trtri_rates),
        )
    return (
        "the cost model calibrated on this machine ({}): GEMM peak {:.3g} GFLOP/s, half {:.3g}, call {:.2g} us, "
        "GEMV {:.3g} GFLOP/s, trtri {:.3g} GFLOP/s, ormqr {:.2g} us + {:.3g} GFLOP/s{}".format(
            current.source,
            m.peak / 1e9,
            m.half,
            m.launch * 1e6,
            m.gemv_rate / 1e9,
            m.trtri_rate / 1e9,
            m.ormqr_call * 1e6,
            m.ormqr_rate / 1e9,
            blocks,
        )
    )


def _backend(choice):
    if choice == "numpy" or (choice == "auto" and not gpu_available()):
        return numpy
    if not gpu_available():
        raise SystemExit("--backend cupy needs CuPy and a CUDA device")
    return cupy_module()
