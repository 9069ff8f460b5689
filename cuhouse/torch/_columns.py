"""Q = H[:, :k] for trapezoidal Householder vectors: what :func:`cuhouse.torch.orthogonal` materializes.

``columns(v, k)`` for ``v`` ``(..., n, d)`` read from row i's column i on
(LAPACK's layout: the entries before are not used and get a zero gradient),
n <= k <= d, is the first k columns of H = H(v_1) ... H(v_n),
differentiable to any order with respect to ``v``. It is one
``torch.autograd.Function`` with two level-3 passes in blocks of b reflections
(P_j = I - V_j^T T_j V_j with the T of :mod:`cuhouse.algorithms.portable`,
kept as U_j = V_j^T T_j from one triangular solve; one block up to
:data:`ONE_BLOCK` reflections, see :func:`block_size`):

- **forward** as LAPACK's ``orgqr``: the blocks are applied to I[:, :k] last
  first, and block j (rows j b ..) touches only the window [j b:, j b:k] of
  it, the rest being still the identity, in place on one buffer (the first
  block applied reads its window, a diagonal, by a scaling). Cost: sum
  over blocks of 4 b (d - j b)(k - j b); for a square Q in nb blocks (d a
  multiple of b) (4/3) d^3 (1 + 1/nb)(1 + 1/(2 nb)): 4 d^3 in one block
  (d <= :data:`ONE_BLOCK`), 1.88 d^3 at d = 256, towards (4/3) d^3, against
  2 d^3 (1 + 1/nb) for a product that reads all k columns (4 d^3 in one block).
- **backward** from the skew matrix K = (G Q^T - Q G^T) / 2 (G = dL/dQ),
  2 d^2 k flops: the gradient of block j is <K_j, dP_j P_j^T> with the
  congruence K_j = L_j^T K L_j (L_j the product of the blocks before j),
  and only the window [j b:, j b:] of K_j is read. One block's step is
  W = K_j U_j (2 b r^2 for the window size r) and the skew rank-2b update
  K_{j+1} = K_j - Z V_j + (Z V_j)^T on the next window, as two GEMMs of
  rank b accumulating into K (4 b r^2: twice the flops of one product and
  a transposed sum, and faster, the strided pass being slow); the gradient
  itself costs O(b^2 r). In one block K2 itself is formed (a transposed
  pass) and W = K2 U is the only GEMM: 4 d^3 in all for a square Q. In nb
  blocks (d a multiple of b), 2 d^3 + (4/3) d^3 (1 + 1/nb)(1 + 1/(2 nb)) +
  (2/3) d^3 (1 - 1/nb)(1 - 1/(2 nb)): 4.31 d^3 at d = 256, towards 4 d^3;
  against 6 d^3 (1 + 1/nb) for the backward of the compact-WY product, which
  carries Q and G through every block (12 d^3 in one block). :func:`flops`
  counts both for any shape. Saved: ``v``, its masked copy, Q and U.

Why only K's skew part: P_j is orthogonal for every V_j, so dP_j P_j^T is skew
and <M, dP_j P_j^T> = <skew(M), dP_j P_j^T> for the full M_j = L_j^T G Q^T L_j.

In eager mode (:func:`cuhouse._torch.eager`: outside ``torch.func``, whose vmap
has no batching rule for them and would loop over the batch, and outside
``torch.compile`` and ``torch.export``, which fuse the plain operations
themselves) both passes accumulate GEMMs in place (``addmm_``, ``baddbmm_``)
into their buffers; that is also where the Function runs in autograd's older
form (``_OlderColumns``, see :func:`cuhouse._torch.older_form`). :func:`cheaper` is the cost rule
between this and the compact-WY product (``ops._left``, trapezoidal) on I[:, :k].
The backward under ``create_graph=True`` is differentiable torch operations on
``v`` and the saved output (U rebuilt from ``v``), so double backward,
``torch.func.vmap`` (``generate_vmap_rule``), ``torch.compile`` and
``torch.export`` see plain torch operations.
"""

import array_api_compat.torch as xp
import torch
from torch import nn

from .._torch import eager, older_form
from ..algorithms import portable

BLOCK = 64
"""Reflections per block when there are more than :data:`ONE_BLOCK` (32 and 128 were no faster at
d = 256 and 1024 on one CPU thread)."""

ONE_BLOCK = 128
"""Up to this many reflections run as one block: fewer torch calls (the training step of
``examples/bench_torch.py`` at d = 128 was 1.2 ms in one block against 1.4 ms in two, one CPU thread)."""


def block_size(n):
    """Reflections per block for n reflections: n up to :data:`ONE_BLOCK`, else :data:`BLOCK`."""
    return n if n <= ONE_BLOCK else BLOCK


def _windows(n, d, k, b):
    """``(rows, cols)`` of each block's window: block j acts on rows ``j b ..`` and columns ``j b .. k``."""
    return [(d - j * b, k - j * b) for j in range(-(-n // b))]


def flops(n, d, k):
    """``(this, wy)``: flops of forward + backward of Q = H[:, :k] here and by the compact-WY product
    (``ops._left``, trapezoidal, on I[:, :k]), both in blocks of :func:`block_size` ``(n)``."""
    b = block_size(n)
    windows = _windows(n, d, k, b)
    # here: K (2 d^2 k); per block the forward's 4 b r c and the backward's W and update (one block:
    # W = K2 U, 2 b r^2; more: W = A U - A^T U and A's update, 4 b r^2 + 2 b (r - b)^2)
    one_sided = len(windows) > 1
    this = 2 * d * d * k
    this += sum(
        4 * b * r * c + (4 * b * r * r + 2 * b * (r - b) ** 2 if one_sided else 2 * b * r * r) for r, c in windows
    )
    # the product: forward 4 b r k per block, the backward's sweep over [Q | G] 8 b r k and its explicit term 4 b r k
    wy = sum(16 * b * r * k for r, _ in windows)
    return this, wy


def cheaper(n, d, k):
    """True when :func:`columns` is the faster way to Q = H[:, :k] (n reflections, rows of length d):
    fewer :func:`flops` than the compact-WY product (a square Q at every size; not k << d, where
    the d x d K costs more than carrying Q and G through the blocks)."""
    this, wy = flops(n, d, k)
    return this < wy


def _blocks(v, b):
    """``v`` ``(..., n, d)`` padded with zero rows to whole blocks of ``b`` and split ``(..., nb, b, d)``
    (no copy when none are needed)."""
    pad = -v.shape[-2] % b
    return (nn.functional.pad(v, (0, 0, 0, pad)) if pad else v).unflatten(-2, (-1, b))


def _factors(vb):
    """U = V^T T of every block ``(..., nb, d, b)`` for ``vb`` ``(..., nb, b, d)``: T = S^{-1} with the S
    of :func:`cuhouse.algorithms.portable.gram_factor` (a zero row, as padding, acts as nothing), by
    one triangular solve U S = V^T. O(nb b^2 d)."""
    return torch.linalg.solve_triangular(portable.gram_factor(vb, xp), vb.mT, upper=True, left=False)


def _plus_product(c, a, b, alpha, in_place):
    """``c + alpha (a @ b)`` for stacks of one batch shape: one fused GEMM (``addmm``/``baddbmm``, on
    ``c`` itself when ``in_place``) for matrices and 3-d stacks, else the product and an addition."""
    if c.ndim == a.ndim == b.ndim == 2:
        return c.addmm_(a, b, alpha=alpha) if in_place else torch.addmm(c, a, b, alpha=alpha)
    if c.ndim == a.ndim == b.ndim == 3 and c.shape[0] == a.shape[0] == b.shape[0]:
        return c.baddbmm_(a, b, alpha=alpha) if in_place else torch.baddbmm(c, a, b, alpha=alpha)
    return c.add_(a @ b, alpha=alpha) if in_place else torch.add(c, a @ b, alpha=alpha)


def _forward(vb, u, d, k, signs):
    """Q diag(signs) = H I[:, :k] diag(signs) in orgqr's order, in place on one ``(..., d, k)`` buffer
    (the Function's forward is not recorded): block j (last first) maps the window [j b:, j b:k], the
    rest of P_{j+1} ... I[:, :k] diag(signs) being still that diagonal. Per block the window is read
    by one GEMM (by a scaling for the first block applied, whose window is the diagonal) and updated
    by another, accumulating into it."""
    b, nb = vb.shape[-2], vb.shape[-3]
    in_place = eager()
    if in_place:
        q = vb.new_zeros(vb.shape[:-3] + (d, k))
        q.diagonal(dim1=-2, dim2=-1).copy_(signs)
    else:  # batched as vb is under torch.func.vmap, in fresh memory that may be written
        q = (
            torch.zeros_like(vb[..., 0, :1, :1])
            + torch.eye(d, k, dtype=vb.dtype, device=vb.device) * signs[..., None, :]
        )
    vbs, us = vb.unbind(-3), u.unbind(-3)
    for j in range(nb - 1, -1, -1):
        first = j * b
        v, uj, window = vbs[j][..., first:], us[j][..., first:, :], q[..., first:, first:]
        x = v[..., : k - first] * signs[..., None, first:] if j == nb - 1 else v @ window
        if in_place:
            _plus_product(window, uj, x, -1, True)
        else:  # torch.func has no batching rule for addmm_/baddbmm_
            window.sub_(uj @ x)
    return q


def _backward(vb, u, q, g, in_place):
    """dL/dv ``(..., nb b, d)`` for Q = H I[:, :k] diag(signs) and G = dL/dQ (see the module docstring;
    the signs drop out of K, G diag(s) (Q diag(s))^T = G Q^T for s = +-1).

    With K2 = 2 K = G Q^T - Q G^T, per block, V (b x r) the block's window of the vectors, T its
    factor and K2 the window of 2 K_j: W = K2 V^T, C = T^T V W T = U^T K2 U with U = V^T T
    (skew, b x b), and
    dL/dV^T = W T - V^T triu(C, 1); then 2 K_{j+1} = K2 - Y + Y^T on rows and columns b.. with
    Y = Z V and Z = W T - V^T C / 2.
    (From <K P, dP> with P = I - V^T T V, dT = -T dS T,
    dS = mask * (dV V^T + V dV^T), simplified by V V^T = S + S^T, so that T V V^T T^T = T + T^T.)
    With more than one block K2 is kept one-sided, K2 = A - A^T with A = G Q^T: no transposed pass over
    it; W T = A U - A^T U (two GEMMs, one reading A transposed) and A_{j+1} = A - Y, one GEMM of rank b
    accumulating into A. Cost per block 4 b r^2 + 2 b (r - b)^2 + O(b^2 r). ``in_place``: A is updated in its own buffer
    and W and the gradient are written into the gradient's place (not differentiable: only without
    ``create_graph``). The gradient is assembled transposed, ``(..., d, nb b)``, and returned as
    its transpose (a view): the layout of the raw tensor orthogonal() stores.
    """
    b, nb = vb.shape[-2], vb.shape[-3]
    a = g @ q.mT
    one_sided = nb > 1  # one block: K2 itself (one transposed pass) costs less than a second d x d x b GEMM
    if not one_sided:
        a = a - a.mT.contiguous()  # a blocked transposed copy: a strided read is slow at d = 2^p
    if in_place:  # block j writes rows j b.. of its columns: the rows above are zero
        out = a.new_empty(a.shape[:-1] + (nb * b,))
    grads = []
    vbs, us = vb.unbind(-3), u.unbind(-3)
    for j in range(nb):
        first = j * b
        v, uj = vbs[j][..., first:], us[j][..., first:, :]
        if in_place and first:
            out[..., :first, first : first + b].zero_()
        w = torch.matmul(a, uj, out=out[..., first:, first : first + b]) if in_place else a @ uj
        if one_sided:
            w = _plus_product(w, a.mT, uj, -1, in_place)
        c = uj.mT @ w
        if j + 1 < nb:
            rest = v[..., b:]
            z = _plus_product(w[..., b:, :], rest.mT, c, -0.5, False)
        grads.append(_plus_product(w, v.mT, torch.triu(c, 1), -1, in_place))
        if in_place:  # zero above the diagonal: vector i's entries before column i are not read
            w[..., :b, :].tril_()
        if j + 1 < nb:
            a = _plus_product(a[..., b:, b:], z, rest, -1, in_place)
    if in_place:
        return out.mT
    if nb == 1:
        return torch.triu(grads[0].mT)
    pads = [nn.functional.pad(grad, (0, 0, j * b, 0)) for j, grad in enumerate(grads)]
    return torch.triu(torch.cat(pads, dim=-1).mT)


class Columns(torch.autograd.Function):
    """Q = H[:, :k] diag(signs) for ``v`` ``(..., n, d)`` read from each row's diagonal on, n <= k <= d,
    in blocks of ``b``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(v, signs, k, b):
        trapezoidal = torch.triu(v)
        vb = _blocks(trapezoidal, b)
        u = _factors(vb)
        return _forward(vb, u, v.shape[-1], k, signs), u, trapezoidal

    @staticmethod
    def setup_context(ctx, inputs, output):
        v, _, k, b = inputs
        q, u, trapezoidal = output
        ctx.mark_non_differentiable(u, trapezoidal)
        ctx.save_for_backward(v, q, u, trapezoidal)
        ctx.b = b

    @staticmethod
    def backward(ctx, dq, _du, _dtrapezoidal):
        v, q, u, trapezoidal = ctx.saved_tensors
        # create_graph=True: the masked rows and U as differentiable functions of v (a compiled graph
        # reuses the forward's: torch.compile refuses double backward itself)
        if torch.is_grad_enabled() and not torch.compiler.is_compiling():
            vb = _blocks(torch.triu(v), ctx.b)
            u = _factors(vb)
        else:
            vb = _blocks(trapezoidal, ctx.b)
        dv = _backward(vb, u, q, dq, not torch.is_grad_enabled() and eager())
        return dv[..., : v.shape[-2], :], None, None, None


_OlderColumns = older_form(Columns, "_OlderColumns")


def columns(v, k, signs=None):
    """The first k columns of H(v_1) ... H(v_n) ``(..., d, k)``, times ``signs`` ``(..., k)`` (+-1, not
    differentiated; default all 1), for ``v`` ``(..., n, d)`` whose row i is read from column i on
    (LAPACK's layout: the entries before it are not used, and their gradient is zero),
    1 <= n <= k <= d, one float dtype; differentiable to any order in ``v``. Cost (:func:`flops`, the
    module docstring): forward + backward for a square Q, 8 d^3 flops against 16 d^3 through the product
    in one block (d <= :data:`ONE_BLOCK`), 6.2 d^3 against 10 d^3 at d = 256, 5.5 against 8.5 at d = 1024,
    towards (16/3) d^3 against 8 d^3."""
    signs = torch.ones(k, dtype=v.dtype, device=v.device) if signs is None else signs
    return (_OlderColumns if eager() else Columns).apply(v, signs, k, block_size(v.shape[-2]))[0]
