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
    plan.APPLY_MODES["cupy"] = tuple(names)
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
    # one H per case: the factors do not depend on the form, so each is built once and every
    # form reuses them (its own W and graph are cached beside them)
    cases = {
        "check_finite=False": ch.HouseholderProduct(v, check_finite=False),
        "check_finite=True": ch.HouseholderProduct(v, check_finite=True),
        "trapezoidal": ch.HouseholderProduct(trapezoidal, check_finite=False),
    }
    reference = (cases["check_finite=False"] @ x).get()  # the default form
    default = plan.APPLY_MODES["cupy"]
    for forms in (("steps",), ("gemm",), ("graph",), default):
        _forms(forms)
        name = "default" if len(forms) > 1 else forms[0]
        for case, h in cases.items():
            chosen = h.plan_for(m)
            h @ x  # builds and caches what this form needs (W, a captured graph)
            out, counts = counted(lambda: h @ x)
            entry = dict(counts, blocks=-(-d // chosen.block_size), plan=list(chosen))
            if case != "trapezoidal":
                entry["error"] = float(numpy.abs(out.get() - reference).max() / numpy.abs(reference).max())
            report["cached {} {}".format(name, case)] = entry
    h = ch.HouseholderProduct(v)
    (out, back), counts = counted(lambda: ch.vjp(ch.matmul, h, x))
    report["fresh vjp forward"] = dict(counts, plan=list(h.plan_for(m, differentiable=True)))
    json.dump(report, sys.stdout, indent=1)


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
