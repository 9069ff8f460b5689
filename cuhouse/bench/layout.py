"""The operand's memory order: ``X @ H`` with a row-major X against the same product on columns.

A layer's forward (``SVDLinear``, ``cht.orthogonal``) and Dask's row chunks
multiply a row-major batch ``X`` ``(m, d)`` from the right. cuhouse computes
``X @ H`` as ``(H^T X^T)^T`` on the transposed view, which is column-major: a
product that keeps the operand's order runs the same GEMMs as ``H.T @ X^T``
on a row-major ``X^T`` ``(d, m)`` and returns a row-major result with no
transposing copy. n = 64 reflections, m = 65536 rows (the issue's case).
"""

import numpy

import cuhouse

from ..plan import describe

TITLE = "X @ H with a row-major X (m = 65536 rows, n = 64 reflections) against the same product on columns"
SIZES = (256,)
QUICK_SIZES = (256,)
ROWS, REFLECTIONS = 65536, 64
EXPLAIN = {
    "X @ H, row-major X": "X (m, d) C-ordered times H: the result (m, d) C-ordered",
    "H.T @ X^T, columns": "the same product on X^T (d, m) C-ordered (the column layout): the reference",
    "vjp X @ H, row-major X": "vjp(matmul, X, H) and its pullback (dX, dV), X row-major",
    "vjp H.T @ X^T, columns": "the same on the column layout: the reference of the vjp row",
}


def _operands(d, dtype, xp):
    rng = numpy.random.default_rng(0)
    v = xp.asarray(rng.standard_normal((REFLECTIONS, d)).astype(dtype))
    rows = xp.asarray(rng.standard_normal((ROWS, d)).astype(dtype))
    return v, rows, xp.ascontiguousarray(rows.T)


def cases(d, m, dtype, xp):
    """``(baselines, callables)``; ``--m`` does not apply (m = 65536)."""
    v, rows, columns = _operands(d, dtype, xp)
    h = cuhouse.HouseholderProduct(v)
    h @ columns[:, :1]
    dout_rows = xp.ones_like(rows)
    dout_columns = xp.ones_like(columns)

    def vjp_rows():
        _, back = cuhouse.vjp(cuhouse.matmul, rows, h)
        return back(dout_rows)

    def vjp_columns():
        _, back = cuhouse.vjp(cuhouse.matmul, h.T, columns)
        return back(dout_columns)

    out = {
        "X @ H, row-major X": lambda: rows @ h,
        "H.T @ X^T, columns": lambda: h.T @ columns,
        "vjp X @ H, row-major X": vjp_rows,
        "vjp H.T @ X^T, columns": vjp_columns,
    }
    baselines = {
        "X @ H, row-major X": "H.T @ X^T, columns",
        "H.T @ X^T, columns": "H.T @ X^T, columns",
        "vjp X @ H, row-major X": "vjp H.T @ X^T, columns",
        "vjp H.T @ X^T, columns": "vjp H.T @ X^T, columns",
    }
    return baselines, out


def report(d, m, dtype, xp):
    v, _, _ = _operands(d, dtype, xp)
    h = cuhouse.HouseholderProduct(v)
    return "plans: product {}, vjp {}".format(
        describe(h.plan_for(ROWS)), describe(h.plan_for(ROWS, differentiable=True))
    )
