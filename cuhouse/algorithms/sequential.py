"""Zhang et al. 2018: one rank-1 update per reflection, the baseline.

``H @ X`` runs ``X <- X - 2 y (y^T X)`` over the unit rows from last to first:
n sequential level-2 steps of O(d m) each, O(n d m) in all. For a structured
layout reflection i touches X's rows i.. only (half the flops).
"""

from collections import namedtuple

import numpy

from ._gemm import matmul, swap
from ._layout import FULL, UNIT
from ._normalize import raw_gradient, unit_rows
from ._steps import application_order, writable

Form = namedtuple("SequentialForm", "unit norms layout")
Form.__doc__ = "Unit rows ``(..., n, d)`` (identity factors zero), their raw ``norms`` and the ``layout``."


def build(y, block_size, xp, layout=FULL, identity=None, norms=None):
    """The unit rows (a normalized copy; identity factors as zero rows). O(n d). ``norms``
    (optional, nonzero): the full rows' norms when the caller has them (see
    :func:`._normalize.unit_rows`)."""
    unit, norms = unit_rows(y, layout, identity, xp, norms)
    return Form(unit, norms, layout)


def _start(f, i):
    """First row of X that reflection ``i`` touches."""
    return 0 if f.layout == FULL else i


def apply(f, x, transpose, xp):
    """``H @ X`` (``H.T @ X`` when ``transpose``) by n rank-1 updates, in X's memory order. O(n d m)."""
    batch = x.shape[:-2] if f.unit.ndim == 2 else numpy.broadcast_shapes(f.unit.shape[:-2], x.shape[:-2])
    out = writable(x, batch, xp)
    for i in application_order(f.unit.shape[-2], transpose):
        s = _start(f, i)
        yi = f.unit[..., i : i + 1, s:]  # (..., 1, d - s)
        rows = out[..., s:, :]
        rows -= 2 * matmul(swap(yi, xp), matmul(yi, rows, xp), xp)
    return out


def backward(f, out, dout, transpose, xp, store_inputs=False):
    """Adjoint of :func:`apply`: recompute each input from the output. O(n d m).

    ``store_inputs`` is unused (nothing is stored).
    """
    n = f.unit.shape[-2]
    a = writable(out, out.shape[:-2], xp)  # copies in the operands' own memory order
    g = writable(dout, dout.shape[:-2], xp)
    dy = xp.zeros(numpy.broadcast_shapes(f.unit.shape[:-2], out.shape[:-2]) + f.unit.shape[-2:], dtype=out.dtype)
    for i in reversed(application_order(n, transpose)):
        s = _start(f, i)
        yi = f.unit[..., i : i + 1, s:]
        ai, gi = a[..., s:, :], g[..., s:, :]
        ai -= 2 * matmul(swap(yi, xp), matmul(yi, ai, xp), xp)  # input of this reflection
        ya = matmul(yi, ai, xp)  # (..., 1, m)
        yg = matmul(yi, gi, xp)
        # out = a - 2 y (y^T a): d/dy <g, out> = -2 (a g^T + g a^T) y
        dy[..., i : i + 1, s:] = -2 * (yg @ swap(ai, xp) + ya @ swap(gi, xp))
        gi -= 2 * matmul(swap(yi, xp), yg, xp)
    dy = raw_gradient(dy, f.unit.astype(dy.dtype, copy=False), f.norms.astype(dy.dtype, copy=False), xp)
    if f.layout == UNIT:  # the implicit 1 is no parameter; nothing left of it was written
        idx = xp.arange(n)
        dy[..., idx, idx] = 0
    return dy, g
