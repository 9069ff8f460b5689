"""Compact WY with level-3 T factors, the default algorithm.

For a block Y of k unit rows, ``S = I/2 + striu(Y Y^T)``, ``T = S^{-1}`` and
``P = I - Y^T T Y``. The Gram matrices of all blocks come from one batched
GEMM and all T factors from one batched triangular inverse; each block is then
applied by two skinny GEMMs and one k x k product. Merging adjacent blocks is
the same formula with a larger k, so the block size the plan picks is also the
merge depth.

Cost: build O(n k d) in O(log k) batched steps; apply O(n d m + n k m) in
3 n/k GEMMs.
"""
from collections import namedtuple

from .. import _primitives
from . import _blocks
from ._blocks import application_order, chain, swap

Factors = namedtuple("CWYFactors", "y t")
Factors.__doc__ = "Blocks ``y`` ``(..., n/k, k, d)`` and T factors ``t`` ``(..., n/k, k, k)``."


def build(y, block_size, xp):
    """T factors of every block: one batched Gram GEMM, one batched inverse. O(n k d)."""
    yb = _blocks.split(y, block_size, xp)
    k = yb.shape[-2]
    gram = yb @ swap(yb, xp)
    s = gram * xp.triu(xp.ones((k, k), dtype=y.dtype), 1) + 0.5 * xp.eye(k, dtype=y.dtype)
    return Factors(yb, _primitives.upper_triangular_inverse(s, xp))


def apply(f, x, transpose, xp):
    """``H @ X`` (``H.T @ X``): per block ``X <- X - Y^T (T (Y X))``. O(n d m)."""
    def update(j, out):
        yj, tj = f.y[..., j, :, :], f.t[..., j, :, :]
        if transpose:
            tj = swap(tj, xp)
        return swap(yj, xp) @ (tj @ (yj @ out))

    return chain(x, application_order(f.y.shape[-3], transpose), update)
