"""The cost model against measurement: every algorithm and block size, predicted and timed."""

import cuhouse

from .. import plan
from .forward import data

TITLE = "cost model check: H @ X on a fresh H, each (algorithm, block size) with the model's prediction"
EXPLAIN = {
    "<algorithm> k=<block> (model t ms)": "H @ X on a fresh H with that plan pinned; t is the cost model's "
    "prediction, '<- auto' the plan auto picks (the reference)",
}


def cases(d, m, dtype, xp):
    """One case per plan; the name carries the predicted time."""
    v, x = data(d, d, m, dtype, xp)
    backend = "numpy" if xp.__name__ == "numpy" else "cupy"
    chosen = cuhouse.HouseholderProduct(v).plan_for(m)
    out = {}
    for name in plan.ALGORITHM_NAMES:
        if name == "dense" and d > 1024:
            continue
        for k in (None,) if name == "sequential" else sorted({min(k, d) for k in plan.BLOCK_SIZES}):
            predicted = plan.predict(name, d, d, m, k or 1, dtype.itemsize, backend)
            label = "{} k={} (model {:.2f} ms){}".format(
                name, k, predicted * 1e3, " <- auto" if (chosen.algorithm, chosen.block_size) == (name, k) else ""
            )
            out[label] = (lambda name, k: lambda: cuhouse.HouseholderProduct(v, algorithm=name, block_size=k) @ x)(
                name, k
            )
    baseline = next(label for label in out if label.endswith("<- auto"))
    return baseline, out
