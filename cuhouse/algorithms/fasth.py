"""FastH, the algorithm of "What if Neural Networks had SVDs?" (NeurIPS 2020).

The reflections are split into blocks of k. Block j is
``P_j = H(y_1) ... H(y_k) = I - 2 W_j^T Y_j`` with W built row by row,
``w_i = y_i - 2 (y_i Y_{<i}^T) W_{<i}``; all blocks are built together (k
sequential steps, each batched over the blocks). The blocks are then applied
in sequence by two GEMMs each: ``X <- X - 2 W_j^T (Y_j X)``, and for the
transpose ``X <- X - 2 Y_j^T (W_j X)``.

Cost: build O(n k d) in k steps; apply O(n d m) in 2 n/k GEMMs.
"""
from collections import namedtuple

from . import _blocks
from ._blocks import application_order, chain, swap

Factors = namedtuple("FastHFactors", "y w")
Factors.__doc__ = "Blocks ``y`` and ``w``, both ``(..., n/k, k, d)``."


def build(y, block_size, xp):
    """The per-block W of every block, built row by row. O(n k d)."""
    yb = _blocks.split(y, block_size, xp)
    w = xp.empty_like(yb)
    for i in range(yb.shape[-2]):
        yi = yb[..., i, :]                                      # (..., nb, d)
        if i == 0:
            w[..., 0, :] = yi
            continue
        coeff = (yb[..., :i, :] @ yi[..., None])[..., 0]         # (..., nb, i)
        w[..., i, :] = yi - 2 * (coeff[..., None, :] @ w[..., :i, :])[..., 0, :]
    return Factors(yb, w)


def apply(f, x, transpose, xp):
    """``H @ X`` (``H.T @ X``) by two GEMMs per block. O(n d m)."""
    def update(j, out):
        yj, wj = f.y[..., j, :, :], f.w[..., j, :, :]
        first, second = (yj, wj) if transpose else (wj, yj)
        return 2 * (swap(first, xp) @ (second @ out))

    return chain(x, application_order(f.y.shape[-3], transpose), update)
