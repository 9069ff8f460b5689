"""Q = H[:, :k] for trapezoidal Householder vectors: what :func:`cuhouse.torch.orthogonal` materializes.

``columns(v, k)`` for ``v`` ``(..., n, d)`` whose row i is zero before column i
(LAPACK's layout), n <= k <= d, is the first k columns of H = H(v_1) ... H(v_n),
differentiable to any order with respect to ``v``. It is one
``torch.autograd.Function`` with two level-3 passes in blocks of b reflections
(P_j = I - V_j^T T_j V_j, T_j from :func:`cuhouse.algorithms.portable.build`):

- **forward** as LAPACK's ``orgqr``: the blocks are applied to I[:, :k] last
  first, and block j (rows j b ..) touches only the window [j b:, j b:k] of
  it, the rest being still the identity, in place on one buffer. Cost: sum
  over blocks of 4 b (d - j b)(k - j b), (4/3) d^3 for a square Q, against
  2 d^3 for a product that reads all k columns.
- **backward** from the skew matrix K = (G Q^T - Q G^T) / 2 (G = dL/dQ),
  2 d^2 k flops: the gradient of block j is <K_j, dP_j P_j^T> with the
  congruence K_j = L_j^T K L_j (L_j the product of the blocks before j),
  and only the window [j b:, j b:] of K_j is read. One block's step is
  W = K_j V_j^T (2 b r^2 for the window size r) and the skew rank-2b update
  K_{j+1} = K_j - Z V_j + (Z V_j)^T on the next window (2 b r^2); the
  gradient itself costs O(b^2 r). In all (4/3) d^3 + 2 d^2 k, about 3.3 d^3
  for a square Q, against about 6 d^3 for the backward of the compact-WY
  product, which carries Q and G through every block. Saved: ``v``, Q and
  the T factors.

Why only K's skew part: P_j is orthogonal for every V_j, so dP_j P_j^T is skew
and <M, dP_j P_j^T> = <skew(M), dP_j P_j^T> for the full M_j = L_j^T G Q^T L_j.

:func:`cheaper` is the cost rule between this and
the compact-WY product (``ops._left``, trapezoidal) on I[:, :k]. The backward is
differentiable torch operations on ``v`` and the saved output (T rebuilt
from ``v`` under ``create_graph=True``), so double backward,
``torch.func.vmap`` (``generate_vmap_rule``), ``torch.compile`` and
``torch.export`` see plain torch operations.
"""

import array_api_compat.torch as xp
import torch
from torch import nn

from ..algorithms import portable

BLOCK = 64
"""Reflections per block (32 and 128 were no faster at d = 256 and 1024 on one CPU thread)."""

MIN_REFLECTIONS = 129
""":func:`cheaper` is False below this many reflections: up to 128 (one block of 128 in
the compact-WY product) that path's training step was faster on one CPU thread (d = 128:
1.8 ms against 2.3 ms here, measured when one block ran on autograd's own tape; the
compact-WY product now always goes through :class:`cuhouse._torch.Matmul`: not re-measured)."""


def _windows(n, d, k, b):
    """``(rows, cols)`` of each block's window: block j acts on rows ``j b ..`` and columns ``j b .. k``."""
    return [(d - j * b, k - j * b) for j in range(-(-n // b))]


def flops(n, d, k):
    """``(this, wy)``: flops of forward + backward of Q = H[:, :k] here and by the compact-WY product
    (``ops._left``, trapezoidal, on I[:, :k]), both in blocks of :data:`BLOCK`."""
    b = BLOCK
    windows = _windows(n, d, k, b)
    # here: K (2 d^2 k); per block the forward's 4 b r c, the backward's W and update (2 b r^2 each)
    this = 2 * d * d * k + sum(4 * b * r * c + 4 * b * r * r for r, c in windows)
    # the product: forward 4 b r k per block, the backward's sweep over [Q | G] 8 b r k and its explicit term 4 b r k
    wy = sum(16 * b * r * k for r, _ in windows)
    return this, wy


def cheaper(n, d, k):
    """True when :func:`columns` is the faster way to Q = H[:, :k] (n reflections, rows of length d):
    at least :data:`MIN_REFLECTIONS` and fewer :func:`flops` than the compact-WY product."""
    this, wy = flops(n, d, k)
    return n >= MIN_REFLECTIONS and this < wy


def _factors(v, b):
    """``(vb, u)``: ``v`` padded with zero rows to whole blocks of ``b`` and split ``(..., nb, b, d)``,
    and U = V^T T of every block ``(..., nb, d, b)`` (T from :func:`cuhouse.algorithms.portable.build`).
    O(n b d)."""
    form = portable.build(v, b, xp)
    return form.y, form.y.mT @ form.t


def _forward(vb, u, d, k, signs):
    """Q diag(signs) = H I[:, :k] diag(signs) in orgqr's order, in place on one ``(..., d, k)`` buffer
    (the Function's forward is not recorded): block j (last first) maps the window [j b:, j b:k], the
    rest of P_{j+1} ... I[:, :k] diag(signs) being still that diagonal. Per block the window is read by
    one GEMM and updated by another."""
    b = vb.shape[-2]
    # diag(signs), batched as vb is (under torch.func.vmap too), in fresh memory that may be written
    q = torch.zeros_like(vb[..., 0, :1, :1]) + torch.eye(d, k, dtype=vb.dtype, device=vb.device) * signs[..., None, :]
    for j in range(vb.shape[-3] - 1, -1, -1):
        first = j * b
        v, window = vb[..., j, :, first:], q[..., first:, first:]
        window.sub_(u[..., j, first:, :] @ (v @ window))
    return q


def _backward(vb, u, q, g):
    """dL/dv ``(..., nb b, d)`` for Q = H I[:, :k] diag(signs) and G = dL/dQ (see the module docstring;
    the signs drop out of K, G diag(s) (Q diag(s))^T = G Q^T for s = +-1).

    With K2 = 2 K = G Q^T - Q G^T, per block, V (b x r) the block's window of the vectors, T its
    factor and K2 the window of 2 K_j: W = K2 V^T, C = T^T V W T = U^T K2 U with U = V^T T
    (skew, b x b), and
    dL/dV^T = W T - V^T triu(C, 1); then 2 K_{j+1} = K2 - Y + Y^T on rows and columns b.. with
    Y = Z V and Z = W T - V^T C / 2. (From <K P, dP> with P = I - V^T T V, dT = -T dS T,
    dS = mask * (dV V^T + V dV^T), simplified by V V^T = S + S^T, so that T V V^T T^T = T + T^T.)
    Cost per block 4 b r^2 + O(b^2 r). The gradient is assembled transposed, ``(..., d, nb b)``,
    and returned as its transpose (a view): the layout of the raw tensor orthogonal() stores.
    """
    b = vb.shape[-2]
    kk = g @ q.mT
    kk = kk - kk.mT.contiguous()  # a blocked transposed copy: a strided read is slow at d = 2^p
    grads = []
    for j in range(vb.shape[-3]):
        first = j * b
        v, uj = vb[..., j, :, first:], u[..., j, first:, :]
        wt = kk @ uj
        c = uj.mT @ wt
        p = v.mT @ torch.cat([torch.triu(c, 1), c / 2], dim=-1)
        grads.append(nn.functional.pad(wt - p[..., :b], (0, 0, first, 0)))
        if j + 1 < vb.shape[-3]:
            y = (wt[..., b:, :] - p[..., b:, b:]) @ v[..., :, b:]
            kk = kk[..., b:, b:] - y + y.mT.contiguous()
    return torch.cat(grads, dim=-1).mT


class Columns(torch.autograd.Function):
    """Q = H[:, :k] diag(signs) for trapezoidal ``v`` ``(..., n, d)``, n <= k <= d, in blocks of ``b``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(v, signs, k, b):
        vb, u = _factors(v, b)
        return _forward(vb, u, v.shape[-1], k, signs), u

    @staticmethod
    def setup_context(ctx, inputs, output):
        v, _, k, b = inputs
        q, u = output
        ctx.mark_non_differentiable(u)
        ctx.save_for_backward(v, q, u)
        ctx.b = b

    @staticmethod
    def backward(ctx, dq, _du):
        v, q, u = ctx.saved_tensors
        # create_graph=True: U as a differentiable function of v (a compiled graph reuses the
        # forward's: torch.compile refuses double backward itself)
        if torch.is_grad_enabled() and not torch.compiler.is_compiling():
            vb, u = _factors(v, ctx.b)
        else:  # v padded with zero rows to whole blocks, as build does (no copy when none are needed)
            pad = -v.shape[-2] % ctx.b
            vb = (nn.functional.pad(v, (0, 0, 0, pad)) if pad else v).unflatten(-2, (-1, ctx.b))
        dv = _backward(vb, u, q, dq)
        return dv[..., : v.shape[-2], :], None, None, None


def columns(v, k, signs=None):
    """The first k columns of H(v_1) ... H(v_n) ``(..., d, k)``, times ``signs`` ``(..., k)`` (+-1, not
    differentiated; default all 1), for ``v`` ``(..., n, d)`` whose row i is zero before column i,
    1 <= n <= k <= d, one float dtype; differentiable to any order in ``v``. Cost: see the
    module docstring (about 4.7 d^3 flops forward + backward for a square Q, against 8 d^3 through the product)."""
    signs = torch.ones(k, dtype=v.dtype, device=v.device) if signs is None else signs
    return Columns.apply(v, signs, k, min(BLOCK, v.shape[-2]))[0]
