"""FastH, the algorithm of "What if Neural Networks had SVDs?" (NeurIPS 2020).

The reflections are split into blocks of k. Block j is
``P_j = H(y_1) ... H(y_k) = I - 2 W_j^T Y_j`` with W built row by row,
``w_i = y_i - 2 (y_i Y_{<i}^T) W_{<i}``; all blocks are built together (k
sequential steps, each batched over the blocks). The blocks are then applied
in sequence by two GEMMs each: ``X <- X - 2 W_j^T (Y_j X)``, and for the
transpose ``X <- X - 2 Y_j^T (W_j X)``.

FastH does not exploit a structured layout: it normalizes full-length copies
of the rows first (the gradient is taken back to the stored entries).

Cost: build O(n k d) in k steps; apply O(n d m) in 2 n/k GEMMs; backward
O(n d m) in 2 n/k GEMMs plus k level-2 steps batched over the blocks.
"""

from collections import namedtuple

import numpy

from . import sequential
from ._gemm import matmul, swap
from ._layout import FULL, structured
from ._normalize import raw_gradient, unit_rows
from ._steps import application_order, empty_in_order, split, sweep_buffer, writable

Form = namedtuple("FastHForm", "y w unit norms layout")
Form.__doc__ = """Blocks ``y`` and ``w``, both ``(..., n/k, k, d)``, and the unit rows
``unit`` ``(..., n, d)``, raw ``norms`` and ``layout`` they came from."""


def build(y, block_size, xp, layout=FULL, identity=None):
    """The per-block W of every block, built row by row, from full unit rows. O(n k d)."""
    unit, norms = unit_rows(y, layout, identity, xp)
    yb = split(unit, block_size, xp)
    w = xp.empty_like(yb)
    for i in range(yb.shape[-2]):
        yi = yb[..., i, :]  # (..., nb, d)
        if i == 0:
            w[..., 0, :] = yi
            continue
        coeff = (yb[..., :i, :] @ yi[..., None])[..., 0]  # (..., nb, i)
        w[..., i, :] = yi - 2 * (coeff[..., None, :] @ w[..., :i, :])[..., 0, :]
    return Form(yb, w, unit, norms, layout)


def _apply_block(f, j, x, transpose, xp):
    """``2 W_j^T (Y_j x)`` (``2 Y_j^T (W_j x)`` when ``transpose``): ``x - P_j x``. Two GEMMs."""
    yj, wj = f.y[..., j, :, :], f.w[..., j, :, :]
    first, second = (yj, wj) if transpose else (wj, yj)
    return matmul(swap(first, xp), 2 * matmul(second, x, xp), xp)


def apply(f, x, transpose, xp):
    """``H @ X`` (``H.T @ X``) by two GEMMs per block, in X's memory order. O(n d m)."""
    out = writable(x, numpy.broadcast_shapes(f.y.shape[:-3], x.shape[:-2]), xp)
    for j in application_order(f.y.shape[-3], transpose):
        out -= _apply_block(f, j, out, transpose, xp)
    return out


def backward(f, out, dout, transpose, xp, store_inputs=False):
    """The paper's backward: ``(dV, dX)`` for ``out = H @ X`` (``H.T @ X``) given ``dout``.

    A sweep from the last applied block to the first recomputes each block's
    input from its output with ``P_j^T = P_j^{-1}`` (two GEMMs, applied to the
    activation and the gradient together) and keeps every block's output and
    output gradient (``2 n/k * d * m`` values). The in-block loop of rank-1
    adjoints (:func:`sequential.backward`) then runs for all blocks at once:
    the blocks are independent; the gradients are then taken from the unit
    rows back to the stored ones. Cost: O(n d m). ``store_inputs`` is unused: the
    paper's backward always keeps every block's output.
    """
    n_blocks, k, d = f.y.shape[-3:]
    m = out.shape[-1]
    b = sweep_buffer(out, dout, xp)  # [A | G] at a block's output, in out's memory order
    outputs = empty_in_order(b.shape[:-2] + (n_blocks,) + b.shape[-2:], b.dtype, b, xp)
    for j in reversed(application_order(n_blocks, transpose)):
        outputs[..., j, :, :] = b
        b -= _apply_block(f, j, b, not transpose, xp)
    per_block = sequential.Form(f.y, xp.ones(f.y.shape[:-1], dtype=f.y.dtype), FULL)
    dy, _ = sequential.backward(per_block, outputs[..., :m], outputs[..., m:], transpose, xp)
    n = f.unit.shape[-2]
    dy = dy.reshape(dy.shape[:-3] + (n_blocks * k, d))[..., :n, :]
    dy = raw_gradient(dy, f.unit.astype(dy.dtype, copy=False), f.norms.astype(dy.dtype, copy=False), xp)
    return structured(dy, f.layout, xp), b[..., m:]
