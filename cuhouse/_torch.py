"""torch autograd through cuhouse's own adjoints: one ``torch.autograd.Function``.

A cuhouse matrix on torch tensors (any device) computes on the generic path
(:mod:`cuhouse.algorithms.portable`). When torch records a gradient (grad mode
on and the operand or a leaf of the matrix requires grad), ``A @ X`` and
``A.logdet()`` run as :class:`Adjoint`, whose backward is cuhouse's level-3
adjoint in torch ops rather than autograd's tape of the forward:

* ``forward`` rebuilds the matrix on the leaves it is given (a
  structure-preserving substitution, :meth:`cuhouse.Operator._substitute`),
  runs the operator's ``_vjp_matmat`` (``_vjp_logabsdet``) without a graph
  and keeps its backward closure: a first-order backward recomputes nothing.
* ``backward`` under ``create_graph=True`` (grad mode on in the backward, as
  ``torch.autograd.grad(..., create_graph=True)``, ``torch.func.grad`` and
  ``jacrev`` run it) recomputes the adjoint from the saved leaves and operand
  with differentiable torch ops, so the gradient of the gradient is exact to
  any order; otherwise it calls the kept closure.
* ``setup_context`` with ``generate_vmap_rule = True``: ``torch.func.vmap``
  batches it (pass ``check_finite=False`` under vmap: a finiteness check reads
  the data on the host).

Nothing here synchronizes with the host; the one check that does, the
finiteness of X, runs before and is skipped with ``check_finite=False``.
"""

import torch


def records_gradient(op, columns=None):
    """True when torch would record a gradient through ``op @ columns`` (or ``op.logdet()``)."""
    if not torch.is_grad_enabled():
        return False
    return (columns is not None and columns.requires_grad) or any(p.requires_grad for p in op.params)


class _Kept:
    """The forward's backward closure and rebuilt matrix, handed from ``forward`` to ``backward``."""

    __slots__ = ("back", "op")


def _rebuilt(template, leaves):
    """``template`` on ``leaves`` in place of its own parameters (same order)."""
    return template._substitute({id(p): leaf for p, leaf in zip(template.params, leaves)})


class Adjoint(torch.autograd.Function):
    """``A @ columns`` (``how == ("matmat", flip)``) or ``log|det A|`` (``how == ("logdet",)``).

    ``Adjoint.apply(template, how, kept, columns, *leaves)``: ``template`` is
    the cuhouse matrix (only its structure is used), ``kept`` a fresh
    :class:`_Kept`, ``columns`` ``(..., d, m)`` in the result dtype (``None``
    for logdet) and ``leaves`` the tensors of ``template.params``.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(template, how, kept, columns, *leaves):
        op = _rebuilt(template, leaves)
        kept.op = op
        if how[0] == "logdet":
            value, kept.back = op._vjp_logabsdet()
            return value
        out, kept.back = op._vjp_matmat(columns, how[1])
        return out

    @staticmethod
    def setup_context(ctx, inputs, output):
        template, how, kept, columns, *leaves = inputs
        ctx.template, ctx.how, ctx.kept = template, how, kept
        ctx.save_for_backward(columns, *leaves)

    @staticmethod
    def backward(ctx, dout):
        columns, *leaves = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: the adjoint itself in differentiable torch ops
            op = _rebuilt(ctx.template, leaves)
            if ctx.how[0] == "logdet":
                back = op._vjp_logabsdet()[1]
            else:
                back = op._vjp_matmat(columns, ctx.how[1])[1]
        else:
            op, back = ctx.kept.op, ctx.kept.back
        if ctx.how[0] == "logdet":
            contributions, dcolumns = back(dout), None
        else:
            contributions, dcolumns = back(dout)
        grads = op._gradients(contributions)
        return (None, None, None, dcolumns) + tuple(grads)


def matmat(op, columns, flip):
    """``op @ columns`` (``op.T @ columns`` when ``flip``), differentiable through :class:`Adjoint`."""
    return Adjoint.apply(op, ("matmat", flip), _Kept(), columns, *op.params)


def logabsdet(op):
    """``log|det op|`` per batch entry, differentiable through :class:`Adjoint`."""
    return Adjoint.apply(op, ("logdet",), _Kept(), None, *op.params)
