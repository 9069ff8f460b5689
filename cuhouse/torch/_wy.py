"""H @ X for torch tensors: compact WY in torch ops, one ``torch.autograd.Function`` with the level-3 adjoint.

This is :mod:`cuhouse.algorithms.cwy` (the default algorithm: LAPACK's
``larft`` on raw rows, T factors of blocks of k reflections, and the
block-sweeping backward that rebuilds each block's input from its output)
written with out-of-place torch operations, so that the one function

- runs on any device torch runs on (CPU, CUDA, MPS), with no NumPy or CuPy;
- has no host synchronization and no data-dependent Python branch: it
  composes with ``torch.func.vmap`` (``generate_vmap_rule``), ``grad``,
  ``jacrev``, ``torch.compile(fullgraph=True)`` and ``torch.export``;
- differentiates to any order: the backward is itself differentiable torch
  operations on the saved input ``V``, output and cotangent; with
  ``create_graph=True`` the T factors are rebuilt from ``V`` under autograd
  (O(n k d)), otherwise the forward's are reused.

Shapes: ``v`` ``(..., n, d)`` (rows need not be unit; nonzero), ``x``
``(..., d, m)``, batch dimensions broadcast. Cost: the T factors O(n k d);
the product O(n d m) in 3 n/k GEMMs; the backward about three times the
product, all GEMMs (k x k work batched over the blocks after the sweep).
"""

import torch
from torch import nn

BLOCK = 64
"""Reflections per compact-WY block (the last block is padded with decoupled zero rows); 128 when X
has at least d/2 columns. Measured on one CPU thread: at d = 1024, 64 and 128 tie at m = 32 and 32
is 1.7x slower at m = d."""


def block_size(n, d, m):
    """Reflections per block for ``n`` reflections of length ``d`` applied to ``m`` columns."""
    return min(n, 2 * BLOCK if 2 * m >= d else BLOCK)


_CONSTANTS = {}


def constants(n, k, like):
    """``(mask, pad, eye)`` for n reflections in blocks of k, in ``like``'s dtype and device.

    ``S = G * mask + pad``: ``mask`` ``(k, k)`` is 1 above the diagonal and 1/2 on it, so that
    ``S = diag(G)/2 + striu(G)``; ``pad`` ``(nb, k, k)`` (``None`` when k divides n) puts ``S_ii = 1/2``
    on the padding rows, which then act as nothing. Kept per (n, k, dtype, device) for eager calls;
    built afresh while torch.compile or torch.export traces.
    """
    key = (n, k, like.dtype, like.device)
    cached = _CONSTANTS.get(key)
    if cached is not None and not (torch.compiler.is_compiling() or torch.compiler.is_exporting()):
        return cached
    eye = torch.eye(k, dtype=like.dtype, device=like.device)
    mask = torch.ones(k, k, dtype=like.dtype, device=like.device).triu(1) + eye / 2
    pad = None
    if n % k:
        padding = torch.arange(-(-n // k) * k, device=like.device) >= n
        pad = torch.diag_embed(padding.to(like.dtype).view(-1, k) / 2)
    result = (mask, pad, eye)
    if type(like) in (torch.Tensor, torch.nn.Parameter) and not (
        torch.compiler.is_compiling() or torch.compiler.is_exporting() or like.device.type == "meta"
    ):
        _CONSTANTS[key] = result
    return result


def gram_factor(vb, mask, pad):
    """``S = diag(G)/2 + striu(G)`` with ``G = V_j V_j^T`` per block, for blocks ``vb`` ``(..., k, d)``."""
    s = (vb @ vb.mT) * mask
    return s if pad is None else s + pad


def factors(v, k):
    """``(vb, t, s)``: ``v`` padded to a multiple of k rows and split ``(..., nb, k, d)``, the T factors
    ``(..., nb, k, k)`` and their inverses ``S``. O(n k d) + O(n k^2)."""
    mask, pad, eye = constants(v.shape[-2], k, v)
    vb = blocks(v, k)
    s = gram_factor(vb, mask, pad)
    return vb, torch.linalg.solve_triangular(s, eye, upper=True), s


def one_block(v, x, transpose):
    """``H @ x`` (``H^T @ x``) for one block of n reflections: ``x - V^T S^{-1} V x``, by a triangular
    solve (``S^{-T}`` for the transpose), no T formed; differentiated by autograd. O(n d m + n^2 d)."""
    mask, _, _ = constants(v.shape[-2], v.shape[-2], v)
    s = gram_factor(v, mask, None)
    z = torch.linalg.solve_triangular(s.mT if transpose else s, v @ x, upper=not transpose)
    return x - v.mT @ z


def order(n_blocks, transpose):
    """Blocks in application order: H = P_1 ... P_nb applies the last first; H^T the first first."""
    return range(n_blocks) if transpose else range(n_blocks - 1, -1, -1)


def _rows_from(x, first, rest):
    """``x`` with its rows from ``first`` on replaced by ``rest`` (batch shapes broadcast)."""
    if first == 0:
        return rest
    return torch.cat([x[..., :first, :].expand(rest.shape[:-2] + (first, x.shape[-1])), rest], dim=-2)


def apply(vb, t, x, transpose, trapezoidal=False):
    """``H @ x`` (``H^T @ x``): per block ``x <- x - V_j^T (M_j (V_j x))``, ``M = T`` (``T^T``).

    ``trapezoidal``: the vectors of block j are zero before column ``j k`` (as when row i is zero
    before column i, LAPACK's layout), so the block touches only rows ``j k ..`` of x: half the flops.
    """
    k = vb.shape[-2]
    for j in order(vb.shape[-3], transpose):
        first = j * k if trapezoidal else 0
        vj, tj = vb[..., j, :, first:], t[..., j, :, :]
        rest = x[..., first:, :]
        x = _rows_from(x, first, rest - vj.mT @ ((tj.mT if transpose else tj) @ (vj @ rest)))
    return x


def backward(vb, t, s, out, dout, transpose, trapezoidal=False):
    """``(dV (..., nb*k, d), dX)`` of ``<dout, H @ X>`` from the output ``out``: the adjoint of
    :func:`cuhouse.algorithms.cwy.backward` (see its docstring for the derivation), in torch ops.

    Blocks are swept from the last applied to the first carrying ``B = [A | G]``;
    ``B <- B - V_j^T U_j`` undoes a block. dV and dX have the broadcast batch shape.
    ``trapezoidal`` as in :func:`apply`: block j works on rows ``j k ..`` of B only, and its dV
    is zero before column ``j k``.
    """
    m = out.shape[-1]
    n_blocks, k = vb.shape[-3], vb.shape[-2]
    mt = t.mT if transpose else t
    b = torch.cat([out, dout.expand_as(out)], dim=-1)
    z, u, explicit = [None] * n_blocks, [None] * n_blocks, [None] * n_blocks
    for j in reversed(order(n_blocks, transpose)):
        first = j * k if trapezoidal else 0
        vj, rest = vb[..., j, :, first:], b[..., first:, :]
        z[j] = vj @ rest
        u[j] = mt[..., j, :, :].mT @ z[j]
        explicit[j] = nn.functional.pad(torch.cat([-u[j][..., m:], u[j][..., :m]], dim=-1) @ rest.mT, (first, 0))
        b = _rows_from(b, first, rest - vj.mT @ u[j])
    z, u, explicit = torch.stack(z, -3), torch.stack(u, -3), torch.stack(explicit, -3)
    u_a, u_g = u[..., :m], u[..., m:]
    y_a_in = -((s.mT if transpose else s) @ u_a)  # V A_in = -M^{-1} U_A
    y_g = z[..., m:]
    n_mat = y_a_in @ y_g.mT if transpose else y_g @ y_a_in.mT
    tt_n = t.mT @ n_mat
    r_upper = torch.triu(tt_n @ t.mT, 1)
    coefficients = r_upper + r_upper.mT + u_g @ u_a.mT + torch.diag_embed((tt_n * t).sum(-1))
    dv = explicit + coefficients @ vb
    return dv.flatten(-3, -2), b[..., m:]


class Matmul(torch.autograd.Function):
    """``H @ x`` (``H^T @ x`` with ``transpose``) for ``v`` ``(..., n, d)`` and ``x`` ``(..., d, m)``, same dtype."""

    generate_vmap_rule = True

    @staticmethod
    def forward(v, x, transpose, k, trapezoidal):
        vb, t, s = factors(v, k)
        return apply(vb, t, x, transpose, trapezoidal), t, s

    @staticmethod
    def setup_context(ctx, inputs, output):
        v, x, transpose, k, trapezoidal = inputs
        out, t, s = output
        ctx.mark_non_differentiable(t, s)
        ctx.save_for_backward(v, x, out, t, s)
        ctx.transpose, ctx.k, ctx.trapezoidal = transpose, k, trapezoidal

    @staticmethod
    def backward(ctx, dout, _dt, _ds):
        v, x, out, t, s = ctx.saved_tensors
        n = v.shape[-2]
        # create_graph=True: T and S as differentiable functions of v (a compiled graph reuses the
        # forward's: torch.compile refuses double backward itself)
        if torch.is_grad_enabled() and not torch.compiler.is_compiling():
            vb, t, s = factors(v, ctx.k)
        else:
            vb = blocks(v, ctx.k)
        dv, dx = backward(vb, t, s, out, dout, ctx.transpose, ctx.trapezoidal)
        dv = dv[..., :n, :].sum_to_size(v.shape) if ctx.needs_input_grad[0] else None
        dx = dx.sum_to_size(x.shape) if ctx.needs_input_grad[1] else None
        return dv, dx, None, None, None


def blocks(v, k):
    """``v`` ``(..., n, d)`` padded with zero rows to a multiple of k and split ``(..., nb, k, d)``."""
    n, d = v.shape[-2:]
    pad = -n % k
    if pad:
        v = torch.cat([v, v.new_zeros(v.shape[:-2] + (pad, d))], dim=-2)
    return v.unflatten(-2, (-1, k))


def matmul(v, x, transpose=False, trapezoidal=False):
    """``H @ x`` for ``v`` ``(..., n, d)`` and ``x`` ``(..., d, m)`` of one float dtype, differentiable to any order.

    ``trapezoidal=True`` promises that row i of ``v`` is zero before column i (LAPACK's layout):
    the products then skip the rows of x a block cannot touch, about half the flops.

    One block (n <= k) is differentiated by autograd's tape of its seven operations
    (:func:`one_block`), which stores what the level-3 backward would (x, V x, S) and costs fewer
    dispatches than a Function; more blocks go
    through :class:`Matmul`, whose backward rebuilds each block's input instead of storing it.
    """
    n, d = v.shape[-2:]
    k = block_size(n, d, x.shape[-1])
    if n <= k:
        return one_block(v, x, transpose)
    return Matmul.apply(v, x, bool(transpose), k, bool(trapezoidal))[0]
