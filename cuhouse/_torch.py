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

* copies the rows (scaled to their binades, or not where :func:`matmul`'s caller read that they
  are in range) and returns the copy as a differentiable output, so that its backward
  multiplies dY by the row factors in place (no autograd node, no d x d array of its own);
* saves tensors only (its own copies, never the caller's: one block the rows, X, S and
  W = S^{-1} Y X, no T; more: the rows, the output, T and S; no closure, no Python object
  holding tensors), with ``setup_context`` and
  ``generate_vmap_rule = True``: it composes with ``torch.func.vmap``,
  ``grad``, ``jacrev``, ``torch.compile(fullgraph=True)`` (whose backward
  graph reuses the forward's T factors: nothing is recomputed) and
  ``torch.export``;
* has a forward-mode rule (``jvp``) for one block, and refuses it loudly for more;
* differentiates to any order: the backward is itself differentiable torch
  operations on the saved rows, output and cotangent; under
  ``create_graph=True`` S (and T, W) are rebuilt from the rows under autograd
  (O(n k d)), otherwise the forward's are used;
* never synchronizes with the host and has no data-dependent Python branch.

:func:`matmul` applies it in one of three forms of the same code: plain eager
calls (:func:`eager`) the older form (``forward(ctx, ...)``, whose ``apply``
costs about 30 us less per call), ``torch.func`` transforms :class:`ForwardModeMatmul`
(``setup_context`` and ``jvp``), ``torch.compile`` and ``torch.export``
:class:`Matmul` itself (Dynamo refuses a Function with a ``jvp``).
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
    """``(H @ x, rows, ...)`` (``H^T @ x`` with ``transpose``) for the rows ``y`` ``(..., n, d)`` and ``x``
    ``(..., d, m)`` of one float dtype (batch shapes broadcast); the first output is the product, the
    second the Function's own copy of the rows (one block: and the third its copy of ``x``), the others
    are saved for the backward (non-differentiable).

    ``Matmul.apply(y, x, factors, transpose, k, algorithm, trapezoidal, mode)``: blocks of
    ``k`` rows, ``algorithm`` one of :data:`cuhouse.algorithms.portable.ALGORITHMS`,
    ``trapezoidal`` as in :func:`cuhouse.algorithms.portable.build`, and ``mode`` one of
    :data:`MODES`: ``"scaled"``, the rows times ``factors`` ``(..., n, 1)``, powers of
    two that bring them to their binades (:func:`cuhouse.algorithms._scaling.column_factors`;
    X's columns are at theirs), and the backward brings the cotangent to its binade first;
    ``"ranged"``, the rows and X as they are, every row nonzero and every intermediate in
    range (:data:`RANGE`; ``factors`` is ``None``), the cotangent to its binade; ``"wide"``,
    float32 inputs computed in float64 as they are, cotangent included (one block;
    ``factors`` is ``None``). One block (``"cwy"`` with ``n <= k``) runs
    :func:`cuhouse.algorithms.portable.one_block` and saves the copies of ``y`` and
    ``x`` with S and ``W`` (triangular solves with S, no T); more blocks save the
    rows' copy, the output, T and S, and the backward rebuilds each block's input
    from the output (:func:`cuhouse.algorithms.portable.backward`).

    The rows' copy (``y * factors``, in the computing dtype) is made inside the
    Function and returned as a differentiable output, so that (i) an in-place change
    of the caller's tensors after the forward cannot reach the backward (it uses the
    copies), (ii) under ``create_graph=True`` the saved copies are on the tape (as
    outputs of this Function: their gradients come back through :meth:`backward`)
    and (iii) the backward multiplies its fresh dY by the factors in place, with no
    node and no d x d array of autograd's own.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(y, x, factors, transpose, k, algorithm, trapezoidal, mode):
        dtype = torch.float64 if mode == "wide" else y.dtype
        rows = y.to(dtype) * factors if factors is not None else y.to(dtype, copy=True)
        if _one_block(y, k, algorithm):
            xs = x.to(dtype, copy=True)
            out, s, w = portable.one_block(rows, xs, transpose, xp, nonzero=mode == "ranged")
            return out.to(x.dtype), rows, xs, s, w
        f = portable.build(rows, k, xp, algorithm, trapezoidal)
        out = portable.apply(f, x, transpose, xp)
        return (out, rows, f.t, f.s) if f.dense is None else (out, rows, f.t, f.s, f.dense)

    @staticmethod
    def setup_context(ctx, inputs, output):
        y, x, factors, transpose, k, algorithm, trapezoidal, mode = inputs
        ctx.one_block = _one_block(y, k, algorithm)
        if ctx.one_block:
            out, rows, xs, s, w = output
            ctx.mark_non_differentiable(s, w)
            ctx.save_for_backward(rows, xs, s, w, factors)
            ctx.save_for_forward(rows, xs, s, w, factors)
        else:
            ctx.mark_non_differentiable(*output[2:])
            ctx.save_for_backward(output[1], output[0], *output[2:], factors)
        ctx.set_materialize_grads(False)  # no zero arrays for the outputs without a gradient (T, S, ...)
        ctx.how = transpose, k, algorithm, trapezoidal, mode
        ctx.shapes = y.shape, x.shape
        ctx.dtypes = y.dtype, x.dtype
        ctx.n = y.shape[-2]

    @staticmethod
    def backward(ctx, dout, drows, *rest):
        transpose, k, algorithm, trapezoidal, mode = ctx.how
        dxs = rest[0] if ctx.one_block else None  # the gradients of the copies (second order only)
        *saved, factors = ctx.saved_tensors
        rows = saved[0]
        # create_graph=True: T (and S, W) as differentiable functions of the saved copies (a compiled graph
        # reuses the forward's: torch.compile refuses double backward itself)
        rebuild = torch.is_grad_enabled() and not torch.compiler.is_compiling()
        dy = dx = None
        if dout is not None:  # None: no gradient of the product (gradcheck's undefined gradient, or second order)
            dout = dout.to(rows.dtype)
            # dout brought to its binade (one power of two per matrix, a constant: exact to every order), so
            # that no intermediate overflows where the gradient does not; dy and dx are linear in it
            factor = None if mode == "wide" else _scaling.matrix_factors(dout.detach(), xp)
            if factor is not None:
                dout = dout * factor
            if ctx.one_block:
                rows, xs, s, w = saved
                if rebuild:
                    s = portable.gram_factor(rows, xp, nonzero=mode == "ranged")
                    w = portable.solve(s, rows @ xs, transpose, xp)
                dy, dx = portable.one_block_backward(rows, xs, s, w, dout, transpose, xp)
            else:
                rows, out, t, s, *dense = saved
                if rebuild:
                    f = portable.build(rows, k, xp, algorithm, trapezoidal)
                else:
                    kb = 1 if algorithm == "sequential" else min(k, rows.shape[-2])
                    f = portable.Form(
                        portable.blocks(rows, kb, xp), t, s, rows.shape[-2], dense[0] if dense else None, trapezoidal
                    )
                dy, dx = portable.backward(f, out, dout.expand_as(out), transpose, xp)
            if factor is not None and rebuild:
                dy, dx = dy / factor, dx / factor
            elif factor is not None:  # fresh tensors, and no graph is recorded: in place (no d x d temporary)
                dy, dx = dy.div_(factor), dx.div_(factor)
        y_shape, x_shape = ctx.shapes
        if dy is not None:  # to the shapes of the inputs (and of the copies) before the copies' gradients join
            dy, dx = dy.sum_to_size(y_shape), dx.sum_to_size(x_shape)
        own = dout is not None and not rebuild  # dy is a fresh tensor of the sweep's, no graph recorded
        dy, dx = _plus(dy, drows), _plus(dx, dxs)
        if dy is not None and factors is not None:  # rows = y * factors
            dy = dy.mul_(factors) if own else dy * factors
        y_dtype, x_dtype = ctx.dtypes
        dy = dy.to(y_dtype) if dy is not None and ctx.needs_input_grad[0] else None
        dx = dx.to(x_dtype) if dx is not None and ctx.needs_input_grad[1] else None
        return dy, dx, None, None, None, None, None, None


def _plus(a, b):
    """``a + b`` where either may be ``None`` (a zero gradient)."""
    if a is None or b is None:
        return b if a is None else a
    return a + b


class ForwardModeMatmul(Matmul):
    """:class:`Matmul` with its forward-mode rule (``jvp``, one block only), for ``torch.func``
    transforms (eager calls outside them take its older form, :class:`_OlderMatmul`): Dynamo
    cannot trace a Function that defines ``jvp``, so :func:`matmul` applies plain
    :class:`Matmul` under ``torch.compile`` and ``torch.export`` (where forward mode is not
    traced either)."""

    @staticmethod
    def jvp(ctx, dy, dx, *_):
        transpose, k, algorithm, trapezoidal, mode = ctx.how
        if not ctx.one_block:
            raise NotImplementedError(
                "forward-mode differentiation (jvp, jacfwd) of cuhouse's product is implemented for one "
                "compact-WY block ({} reflections at most here); this product has {}: use reverse mode "
                "(grad, jacrev)".format(k, ctx.n)
            )
        rows, xs, s, w, factors = ctx.saved_tensors
        if dy is not None:  # the tangent of the rows' copy y * factors, in the computing dtype
            dy = dy.to(rows.dtype) * factors if factors is not None else dy.to(rows.dtype)
        if dx is not None:
            dx = dx.to(rows.dtype)
        tangent = portable.one_block_tangent(rows, xs, s, w, dy, dx, transpose, xp)
        # the copies' tangents: zeros, not None, where an input has none (torch 2.13's forward mode
        # fails an internal assert on a None tangent of a differentiable output)
        dy = torch.zeros_like(rows) if dy is None else dy
        dx = torch.zeros_like(xs) if dx is None else dx
        return tangent.to(ctx.dtypes[1]), dy, dx, None, None


def older_form(function, name):
    """The ``setup_context`` Function ``function`` as class ``name`` in autograd's older form
    (``forward(ctx, ...)``): the same forward, context, backward and ``jvp``, but an ``apply`` that
    skips the newer form's argument binding (``inspect``): 20-30 us less per call (one CPU thread).
    Only where :func:`eager`: ``torch.func`` transforms, ``torch.compile`` and ``torch.export`` need
    the newer form."""

    def forward(ctx, *inputs):
        output = function.forward(*inputs)
        function.setup_context(ctx, inputs, output)
        return output

    members = {"forward": forward, "backward": function.backward, "jvp": function.jvp}
    members = {key: staticmethod(value) for key, value in members.items()}
    members["__doc__"] = ":class:`{}` in autograd's older form (:func:`older_form`).".format(function.__name__)
    return type(name, (torch.autograd.Function,), members)


_OlderMatmul = older_form(ForwardModeMatmul, "_OlderMatmul")


# torch's private probe of torch.func (torch 2.4-2.13; Function.apply itself calls it): where a torch
# has none, eager() is False and the setup_context forms, valid everywhere, run.
_TRANSFORMS_ACTIVE = getattr(torch._C, "_are_functorch_transforms_active", None)


def eager():
    """True outside ``torch.compile``, ``torch.export`` and ``torch.func`` transforms: where an
    ``autograd.Function`` may be applied in its older form (``forward(ctx, ...)``), and where
    :mod:`cuhouse.torch._columns` accumulates its GEMMs in place. A global state, not a tensor's
    (:func:`cuhouse.torch.ops._readable` asks whether a tensor's values may be read for a check);
    False where this torch lacks the private probe (the forms valid everywhere then run)."""
    return (
        not torch.compiler.is_compiling()
        and not torch.compiler.is_exporting()
        and _TRANSFORMS_ACTIVE is not None
        and not _TRANSFORMS_ACTIVE()
    )


def _one_block(y, k, algorithm):
    """Whether :class:`Matmul` applies the rows ``y`` as one compact-WY block of at most ``k``."""
    return algorithm == "cwy" and y.shape[-2] <= k


MODES = ("scaled", "ranged", "wide")
"""How :class:`Matmul` treats the ranges of its inputs (see there)."""

RANGE = 2.0**16
"""Rows whose norm and columns whose largest absolute entry lie in ``[1 / RANGE, RANGE]`` need no
scaling (see :func:`matmul`'s ``ranged``): every intermediate of the forward and backward (with the
cotangent at its binade) then stays within ``RANGE**4`` times a power of ``d`` of 1, far inside
float32's range and above its underflow (2^-102 relative)."""


WIDE = 2**19
"""One float32 block with ``n d (n + m)`` below this is computed in float64 even when ``ranged``
(:func:`matmul`): there the float64 arithmetic costs less than the cotangent's scaling (one CPU
thread, fwd+bwd: d = 32, m = 1 143 us against 166 us; d = 64, m = 64 a tie; d = 128, m = 64
700 us against 496 us)."""


def matmul(y, x, transpose=False, *, block_size=None, trapezoidal=False, algorithm="cwy", ranged=False):
    """``H @ x`` (``H^T @ x`` with ``transpose``) for H the product of the reflections of the rows of
    ``y`` ``(..., n, d)`` and ``x`` ``(..., d, m)`` of one float dtype, differentiable to any order.

    Rows need not be unit; a zero row acts as the identity factor. Batch
    shapes broadcast. ``block_size`` (default :func:`default_block_size`) reflections
    per block; ``trapezoidal=True`` promises that row i is zero before column i
    (LAPACK's layout): the products then skip the rows of x a block cannot
    touch, about half the flops. No validation, no host synchronization.
    Everything goes through :class:`Matmul` (one of its forms), which copies the rows
    (scaled to their binades unless ``ranged``).

    ``ranged=True`` promises (the caller has read it, e.g. :func:`cuhouse.torch.ops.check_rows`)
    that the norm of every row of ``y`` and the largest absolute entry of every column of
    ``x`` lie in ``[1 / RANGE, RANGE]`` (:data:`RANGE`): the rows and X are used as they
    are, in their own dtype (the backward still brings ``dout`` to its binade), except a
    float32 block smaller than :data:`WIDE`. Otherwise one float32 block (n <= k) is
    computed in float64, where no product of float32-range values (nor of the backward's
    few) overflows or underflows: no scaling (at d = 32 the scalings' dozens of small
    torch calls cost more than the float64 arithmetic); and anything else scales each
    row of ``y`` and each column of ``x`` to its binade (exact: huge or tiny rows and
    columns give what float64 would, rounded) and the backward brings ``dout`` to its
    binade first. With many blocks the backward rebuilds each
    block's input from the output instead of storing it.
    Cost: O(n d m) forward in 3 n/k GEMMs plus O(n k d) for the T factors and a copy of
    the rows; backward about three times the forward.
    """
    n, d = y.shape[-2:]
    k = block_size or default_block_size(n, d, x.shape[-1])
    if eager():
        function = _OlderMatmul
    elif torch.compiler.is_compiling() or torch.compiler.is_exporting():
        function = Matmul
    else:  # a torch.func transform
        function = ForwardModeMatmul
    transpose, trapezoidal = bool(transpose), bool(trapezoidal)
    one_block = _one_block(y, k, algorithm)
    single = y.dtype == torch.float32 and x.dtype == torch.float32
    if one_block and ranged and not (single and n * d * (n + x.shape[-1]) < WIDE):
        return function.apply(y, x, None, transpose, k, algorithm, trapezoidal, "ranged")[0]
    if one_block and single:
        # one float32 block computed in float64, where no product of float32-range values (nor of the
        # backward's few) overflows or underflows: no scaling at all
        return function.apply(y, x, None, transpose, k, algorithm, trapezoidal, "wide")[0]
    # each row of y (unless ranged) and each column of x to its binade (powers of two, constants: exact to
    # every order), so that no intermediate of the forward (Y^T x grows as |y| |x|) or of the backward leaves
    # the range where the result and the gradient are in it
    rows = None if ranged else _scaling.column_factors(y.detach().mT, xp).mT
    mode = "ranged" if ranged else "scaled"
    factors = _scaling.column_factors(x.detach(), xp)
    return function.apply(y, x * factors, rows, transpose, k, algorithm, trapezoidal, mode)[0] / factors
