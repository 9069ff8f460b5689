"""torch autograd through cuhouse's own adjoint: ONE ``torch.autograd.Function``, :class:`Matmul`.

``H @ X`` for the Householder product H of the rows of ``y`` runs
:mod:`cuhouse.algorithms.portable` (compact WY) in torch operations, and its
backward is portable's level-3 adjoint, not autograd's tape of the forward.
Every torch-differentiable product in cuhouse goes through it (the one other
Function, :mod:`cuhouse.torch._columns`, forms ``orthogonal()``'s weight
H[:, :k] in LAPACK's orgqr order):

* :mod:`cuhouse.torch` (``householder_matmul``, the layers, ``orthogonal()``)
  calls :func:`matmul` on the raw vectors;
* the core's matrices on torch tensors (``HouseholderProduct``, ``SVDMatrix``,
  ``EighMatrix``, ``Product``, derived matrices, ``logdet``) compose their
  products of plain differentiable torch operations (a spectrum's scaling,
  the rows built from a ``geqrf`` array) around :func:`matmul`, which
  ``HouseholderProduct`` calls when torch records a gradient.

The Function:

* saves tensors only (the rows, the output, T and S; no closure, no Python
  object holding tensors), with ``setup_context`` and
  ``generate_vmap_rule = True``: it composes with ``torch.func.vmap``,
  ``grad``, ``jacrev``, ``torch.compile(fullgraph=True)`` (whose backward
  graph reuses the forward's T factors: nothing is recomputed) and
  ``torch.export``;
* differentiates to any order: the backward is itself differentiable torch
  operations on the saved rows, output and cotangent; under
  ``create_graph=True`` T and S are rebuilt from the rows under autograd
  (O(n k d)), otherwise the forward's are used;
* never synchronizes with the host and has no data-dependent Python branch.
"""

import array_api_compat.torch as xp
import torch

from .algorithms import _scaling, portable

BLOCK = 64
"""Reflections per compact-WY block when the caller gives none; 128 when X has at least d/2
columns. Measured on one CPU thread: at d = 1024, 64 and 128 tie at m = 32 and 32 is 1.7x
slower at m = d."""


def default_block_size(n, d, m):
    """Reflections per block for ``n`` reflections of length ``d`` applied to ``m`` columns."""
    return min(n, 2 * BLOCK if 2 * m >= d else BLOCK)


def records_gradient(params, columns=None):
    """True when torch records a gradient through a function of ``params`` (tensors) and ``columns``."""
    if not torch.is_grad_enabled():
        return False
    return (columns is not None and columns.requires_grad) or any(p.requires_grad for p in params)


def on_tape(value, params):
    """``value`` with every tensor of ``params`` that requires grad in its graph, each with a zero
    gradient unless ``value`` already depends on it (``torch.where``'s backward passes zeros, never
    ``0 * inf``): as torch does, a function of tensors that require grad returns one, e.g. the
    log-determinant of a product of reflections (zero). O(size of params)."""
    false = torch.zeros((), dtype=torch.bool, device=value.device)
    for p in params:
        if p.requires_grad:
            value = value + torch.where(false, p.sum().real, 0).to(value.dtype)
    return value


class Matmul(torch.autograd.Function):
    """``(H @ x, T, S)`` (``H^T @ x`` with ``transpose``) for rows ``y`` ``(..., n, d)`` and ``x``
    ``(..., d, m)`` of one float dtype (batch shapes broadcast); T and S are not differentiable
    (saved for the backward; the dense algorithm returns its d x d matrix fourth).

    ``Matmul.apply(y, x, transpose, k, algorithm, trapezoidal)``: blocks of ``k``
    rows, ``algorithm`` one of :data:`cuhouse.algorithms.portable.ALGORITHMS`,
    ``trapezoidal`` as in :func:`cuhouse.algorithms.portable.build`. The backward
    scales the cotangent to its binade; the rows and X's columns must already be
    at theirs (:func:`matmul` does it), which keeps the output in range.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(y, x, transpose, k, algorithm, trapezoidal):
        f = portable.build(y, k, xp, algorithm, trapezoidal)
        out = portable.apply(f, x, transpose, xp)
        return (out, f.t, f.s) if f.dense is None else (out, f.t, f.s, f.dense)

    @staticmethod
    def setup_context(ctx, inputs, output):
        y, x, transpose, k, algorithm, trapezoidal = inputs
        ctx.mark_non_differentiable(*output[1:])
        ctx.save_for_backward(y, *output)
        ctx.how = transpose, k, algorithm, trapezoidal
        ctx.x_shape = x.shape

    @staticmethod
    def backward(ctx, dout, *_):
        y, out, t, s, *dense = ctx.saved_tensors
        transpose, k, algorithm, trapezoidal = ctx.how
        # create_graph=True: T and S as differentiable functions of y (a compiled graph reuses the
        # forward's: torch.compile refuses double backward itself)
        if torch.is_grad_enabled() and not torch.compiler.is_compiling():
            f = portable.build(y, k, xp, algorithm, trapezoidal)
        else:
            kb = 1 if algorithm == "sequential" else min(k, y.shape[-2])
            f = portable.Form(portable.blocks(y, kb, xp), t, s, y.shape[-2], dense[0] if dense else None, trapezoidal)
        # dout brought to its binade (one power of two per matrix, a constant: exact to every order), so
        # that no intermediate overflows where the gradient does not (out is in range: matmul() scales the
        # rows and X's columns); dy and dx are linear in it
        factor = _scaling.matrix_factors(dout.detach(), xp)
        dy, dx = portable.backward(f, out, (dout * factor).expand_as(out), transpose, xp)
        dy = (dy / factor).sum_to_size(y.shape) if ctx.needs_input_grad[0] else None
        dx = (dx / factor).sum_to_size(ctx.x_shape) if ctx.needs_input_grad[1] else None
        return dy, dx, None, None, None, None


def matmul(y, x, transpose=False, *, block_size=None, trapezoidal=False, algorithm="cwy"):
    """``H @ x`` (``H^T @ x`` with ``transpose``) for H the product of the reflections of the rows of
    ``y`` ``(..., n, d)`` and ``x`` ``(..., d, m)`` of one float dtype, differentiable to any order.

    Rows need not be unit; a zero row acts as the identity factor. Batch
    shapes broadcast. ``block_size`` (default :func:`default_block_size`) reflections
    per block; ``trapezoidal=True`` promises that row i is zero before column i
    (LAPACK's layout): the products then skip the rows of x a block cannot
    touch, about half the flops. No validation, no host synchronization.
    One float32 block (n <= k) is differentiated by autograd's tape of its few
    operations computed in float64: its backward's intermediates (the k x k
    gradient of T grows as the gradient times m |y|^2) overflowed in float32
    near the largest float, and in float64 no product of float32-range values
    can. Everything else goes through :class:`Matmul` with each row of ``y`` and
    each column of ``x`` scaled to its binade (exact: huge or tiny rows and
    columns give what float64 would, rounded); its backward rebuilds each
    block's input from the output instead of storing it and brings ``dout`` to
    its binade first.
    Cost: O(n d m) forward in 3 n/k GEMMs plus O(n k d) for the T factors;
    backward about three times the forward.
    """
    n, d = y.shape[-2:]
    k = block_size or default_block_size(n, d, x.shape[-1])
    if algorithm == "cwy" and n <= k and y.dtype == torch.float32 and x.dtype == torch.float32:
        # one float32 block: autograd's tape of its few operations, in float64, where no product of
        # float32-range values overflows or underflows (1.16x the float32 tape at d = 32, half the
        # Function's time there; the float32 tape overflowed near the largest float)
        wide = torch.float64
        return portable.apply(portable.build(y.to(wide), k, xp), x.to(wide), bool(transpose), xp).to(x.dtype)
    # each row of y and each column of x to its binade (powers of two, constants: exact to every order), so
    # that no intermediate of the forward (Y^T x grows as |y| |x|) or of the backward leaves the range
    # where the result and the gradient are in it
    rows = y * _scaling.column_factors(y.detach().mT, xp).mT
    factors = _scaling.column_factors(x.detach(), xp)
    return Matmul.apply(rows, x * factors, bool(transpose), k, algorithm, bool(trapezoidal))[0] / factors
