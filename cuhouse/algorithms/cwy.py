"""Compact WY with level-3 T factors, the default algorithm.

For a block Y of k unit rows, ``S = I/2 + striu(Y Y^T)``, ``T = S^{-1}`` and
``P = I - Y^T T Y``. The Gram matrices of all blocks come from one batched
GEMM and all T factors from one batched triangular inverse; each block is then
applied by two skinny GEMMs and one k x k product. Merging adjacent blocks is
the same formula with a larger k, so the block size the plan picks is also the
merge depth.

Cost: build O(n k d) in O(log k) batched steps; apply O(n d m + n k m) in
3 n/k GEMMs; backward about three times apply, all GEMMs.
"""
from collections import namedtuple

from .._gpu import primitives as _primitives
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


def backward(f, out, dout, transpose, xp, store_inputs=False):
    """Adjoint of :func:`apply` given its output: ``(dY, dX)``, all GEMMs, no per-vector loop.

    The applied block is ``Q = I - Y^T M Y`` (``M = T``, or ``T^T`` when
    ``transpose``). The blocks are swept from the last applied to the first,
    carrying ``B = [A | G]`` ``(..., d, 2m)``, a block's output and the gradient
    there; per block ``Z = Y B`` and ``U = M^T Z``, then ``B <- B - Y^T U``
    undoes the block (``Q^T = Q^{-1}``). With ``Y A_in = -M^{-1} U_A`` the
    DESIGN.md gradient becomes ``dY = [-U_G, U_A] B^T + (C + U_G U_A^T) Y``,
    ``C`` from :func:`cuhouse._gpu.primitives.cwy_gradient_coefficients`; all the
    k x k work and the ``C Y`` products run batched over blocks after the sweep.

    ``store_inputs`` keeps every block's ``B`` (extra ``n/k * d * 2m`` values)
    and forms the ``[-U_G, U_A] B^T`` products as one batched GEMM; otherwise
    they run inside the sweep and the extra memory is O(d m + n d); the plan
    chooses (:func:`cuhouse.plan.store_block_inputs`). dY has one row per
    block row (padding rows past n are zero). Cost: 3 GEMMs of O(k d m) per
    block plus O(n k d) for ``C Y``.
    """
    n_blocks, k, d = f.y.shape[-3:]
    m = out.shape[-1]
    m_factor = swap(f.t, xp) if transpose else f.t
    b = xp.concatenate([out, dout], axis=-1)                      # out's batch already includes Y's
    batch = b.shape[:-2]
    z = xp.empty(batch + (n_blocks, k, 2 * m), dtype=b.dtype)
    u = xp.empty_like(z)
    stored = xp.empty(batch + (n_blocks, d, 2 * m), dtype=b.dtype) if store_inputs else None
    dy = xp.empty(batch + (n_blocks, k, d), dtype=b.dtype)
    for j in reversed(application_order(n_blocks, transpose)):
        yj = f.y[..., j, :, :]
        zj = z[..., j, :, :]
        uj = u[..., j, :, :]
        xp.matmul(yj, b, out=zj)
        xp.matmul(swap(m_factor[..., j, :, :], xp), zj, out=uj)
        if store_inputs:
            stored[..., j, :, :] = b
        else:
            xp.matmul(_explicit_coefficients(uj, m, xp), swap(b, xp), out=dy[..., j, :, :])
        b -= swap(yj, xp) @ uj
    if store_inputs:
        xp.matmul(_explicit_coefficients(u, m, xp), swap(stored, xp), out=dy)
    u_a, u_g = u[..., :m], u[..., m:]
    s = _primitives.upper_triangular_inverse(f.t, xp)            # S = T^{-1}, O(n k^2)
    y_a_in = -((swap(s, xp) if transpose else s) @ u_a)           # Y A_in = -M^{-1} U_A
    y_g = z[..., m:]
    n_mat = y_a_in @ swap(y_g, xp) if transpose else y_g @ swap(y_a_in, xp)
    coefficients = _primitives.cwy_gradient_coefficients(f.t, n_mat, xp) + u_g @ swap(u_a, xp)
    dy += coefficients @ f.y
    return dy.reshape(batch + (n_blocks * k, d)), b[..., m:]


def _explicit_coefficients(u, m, xp):
    """``[-U_G, U_A]`` ``(..., k, 2m)`` from ``U = [U_A | U_G]``."""
    return xp.concatenate([-u[..., m:], u[..., :m]], axis=-1)
