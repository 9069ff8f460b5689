"""Counts the CuPy calls, launches, GEMMs, operand copies and host syncs of the GPU path on
the CPU stand-in of CuPy, at d = n = 4096, m = 32 (float32), and prints them as JSON.

Run by tests/test_gpu_budget.py under ``tools/sanitizer_driver.py``'s environment
(the stand-in on PYTHONPATH); by hand:

    python tools/sanitizer_driver.py --on-cpu plain -- python tests/cuda_cpu/budget.py [d] [m]
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import cupy  # noqa: E402
import numpy  # noqa: E402
from cupy import _trace  # noqa: E402

import cuhouse as ch  # noqa: E402
from cuhouse import plan  # noqa: E402


def _forms(names):
    """Let the cost model pick among ``names`` only on the GPU."""
    plan.APPLY_FORMS["cupy"] = tuple(names)
    plan._choose.cache_clear()


def counted(function):
    with _trace.counting() as counts:
        result = function()
    return result, counts.as_dict()


def main(d=4096, m=32):
    rng = numpy.random.default_rng(0)
    v = cupy.asarray(rng.standard_normal((d, d), dtype=numpy.float32))
    x = cupy.asarray(rng.standard_normal((d, m), dtype=numpy.float32))
    trapezoidal = cupy.asarray(numpy.triu(rng.standard_normal((d, d), dtype=numpy.float32)))
    report = {"d": d, "m": m}
    reference = None
    for forms in (("steps",), ("gemm",), ("graph",), plan.APPLY_FORMS["cupy"]):
        _forms(forms)
        chosen = ch.HouseholderProduct(v).plan_for(m)
        name = "default" if len(forms) > 1 else forms[0]
        for check_finite in (False, True):
            h = ch.HouseholderProduct(v, check_finite=check_finite)
            first = h @ x  # builds and caches the factors (and the form's W, a graph)
            out, counts = counted(lambda: h @ x)
            if reference is None:
                reference = first.get()
            error = float(numpy.abs(out.get() - reference).max() / numpy.abs(reference).max())
            report["cached {} check_finite={}".format(name, check_finite)] = dict(
                counts, blocks=-(-d // chosen.block_size), plan=list(chosen), error=error
            )
        h = ch.HouseholderProduct(trapezoidal, check_finite=False)
        h @ x
        _, counts = counted(lambda: h @ x)
        report["cached {} trapezoidal".format(name)] = dict(counts, plan=list(h.plan_for(m)))
        h = ch.HouseholderProduct(v)
        (out, back), counts = counted(lambda: ch.vjp(ch.matmul, h, x))
        report["fresh vjp forward {}".format(name)] = dict(counts, plan=list(h.plan_for(m, differentiable=True)))
        if name == "default":
            _, counts = counted(lambda: back(out))
            report["vjp backward {}".format(name)] = counts
    json.dump(report, sys.stdout, indent=1)


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
