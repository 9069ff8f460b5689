"""The bench command: ``python -m cuhouse bench``.

Each section (one module here) returns, for one size d, a baseline name and a
dict of named callables; every callable is one complete, synchronized
operation. The runner times them round-robin (A, B, C, A, B, C, ...) so that
drift on a shared machine hits all of them alike, and reports the median time
of each and the median of the per-round ratios to the baseline.

``--pairs`` re-runs the command with single-threaded BLAS
(``OPENBLAS_NUM_THREADS=1`` and friends), the setting in which ratios on a
2-core machine are repeatable.
"""
import argparse
import os
import sys

import numpy

from .._backend import backend_name, cupy_module, gpu_available
from . import forward, gradients, plan_check, plot, spectral
from ._timing import measure

SECTIONS = {
    "forward": forward,
    "gradients": gradients,
    "spectral": spectral,
    "plan": plan_check,
}
DEFAULT_SECTIONS = ("forward", "gradients", "spectral")
DEFAULT_SIZES = (256, 512, 1024, 2048)
QUICK_SIZES = (256, 512)
_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _parser():
    p = argparse.ArgumentParser(prog="python -m cuhouse bench",
                                description="Time cuhouse against its peers; ratios are measured in one run.")
    p.add_argument("--quick", action="store_true", help="sizes 256 and 512, 3 rounds")
    p.add_argument("--sizes", type=lambda s: tuple(int(x) for x in s.split(",")),
                   help="comma-separated d values (default 256,512,1024,2048)")
    p.add_argument("--m", type=int, default=32, help="columns of X (default 32)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--backend", choices=("auto", "numpy", "cupy"), default="auto",
                   help="auto: cupy when a GPU answers, else numpy")
    p.add_argument("--rounds", type=int, help="timing rounds per case (default 7, 3 with --quick)")
    p.add_argument("--sections", default=",".join(DEFAULT_SECTIONS),
                   help="comma-separated subset of: {} (default: {})".format(
                       ", ".join(SECTIONS), ", ".join(DEFAULT_SECTIONS)))
    p.add_argument("--plot", metavar="PNG",
                   help="draw the seed paper's Figure 3 (forward + backward time against d) to PNG; "
                        "needs matplotlib: pip install 'cuhouse[plot]'")
    p.add_argument("--pairs", action="store_true",
                   help="single-threaded BLAS and interleaved rounds: the setting for quoting CPU ratios")
    return p


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "bench":
        print("usage: python -m cuhouse bench [--quick] [--sizes ...] [--m M] [--dtype ...] [--pairs]",
              file=sys.stderr)
        return 2
    args = _parser().parse_args(argv[1:])
    if args.pairs and any(os.environ.get(v) != "1" for v in _THREAD_VARS):
        env = dict(os.environ, **{v: "1" for v in _THREAD_VARS})
        os.execve(sys.executable, [sys.executable, "-m", "cuhouse"] + argv, env)
    xp = _backend(args.backend)
    sizes = args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES)
    rounds = args.rounds or (3 if args.quick else 7)
    names = [s for s in args.sections.split(",") if s]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown:
        print("unknown section(s): {}; choose from {}".format(", ".join(unknown), ", ".join(SECTIONS)),
              file=sys.stderr)
        return 2
    dtype = numpy.dtype(args.dtype)
    if args.plot:
        return plot.draw(args.plot, sizes, args.m, dtype, xp, rounds)
    threads = os.environ.get("OPENBLAS_NUM_THREADS", "default")
    print("cuhouse bench: backend={} dtype={} m={} rounds={} BLAS threads={}".format(
        backend_name(xp), dtype, args.m, rounds, threads))
    for name in names:
        section = SECTIONS[name]
        print("\n## {}: {}".format(name, section.TITLE))
        print("{:>6}  {:<44} {:>11} {:>9}".format("d", "method", "median ms", "ratio"))
        for d in sizes:
            baseline, cases = section.cases(d, args.m, dtype, xp)
            result = measure(cases, baseline, rounds, xp)
            for case, (seconds, ratio) in result.items():
                print("{:>6}  {:<44} {:>11.3f} {:>9.2f}".format(d, case, seconds * 1e3, ratio))
            note = section.report(d, args.m, dtype, xp) if hasattr(section, "report") else None
            if note:
                print("{:>6}  {}".format(d, note))
        print("ratio = time / time of '{}', the median over rounds of the paired ratio".format(
            section.BASELINE_LABEL))
    return 0


def _backend(choice):
    if choice == "numpy" or (choice == "auto" and not gpu_available()):
        return numpy
    if not gpu_available():
        raise SystemExit("--backend cupy needs CuPy and a CUDA device")
    return cupy_module()
