"""Zhang et al. 2018: one rank-1 update per reflection, the baseline.

``H @ X`` runs ``X <- X - 2 y (y^T X)`` over the rows from last to first: n
sequential level-2 steps of O(d m) each, O(n d m) in all, no precomputation.
"""
import numpy

from ._blocks import application_order, chain, swap


def build(y, block_size, xp):
    """Nothing to precompute: the factors are the unit vectors themselves."""
    return y


def apply(y, x, transpose, xp):
    """``H @ X`` (``H.T @ X`` when ``transpose``) by n rank-1 updates. O(n d m)."""
    def update(i, out):
        yi = y[..., i:i + 1, :]                       # (..., 1, d)
        return 2 * (swap(yi, xp) @ (yi @ out))

    return chain(x, application_order(y.shape[-2], transpose), update)


def backward(y, out, dout, transpose, xp, store_inputs=False):
    """Adjoint of :func:`apply`: recompute each input from the output. O(n d m).

    ``store_inputs`` is unused (nothing is stored).
    """
    n = y.shape[-2]
    order = reversed(application_order(n, transpose))
    a = out.copy()
    g = dout.copy()
    dy = xp.zeros(numpy.broadcast_shapes(y.shape[:-2], out.shape[:-2]) + y.shape[-2:], dtype=out.dtype)
    for i in order:
        yi = y[..., i:i + 1, :]
        a -= 2 * (swap(yi, xp) @ (yi @ a))            # input of this reflection
        ya = yi @ a                                    # (..., 1, m)
        yg = yi @ g
        # out = a - 2 y (y^T a): d/dy <g, out> = -2 (a g^T + g a^T) y
        dy[..., i:i + 1, :] = -2 * (yg @ swap(a, xp) + ya @ swap(g, xp))
        g -= 2 * (swap(yi, xp) @ yg)
    return dy, g
