"""``vjp``: manual adjoints in the style of ``jax.vjp``.

Every cuhouse matrix is a :class:`cuhouse._operator.Operator`, whose private
hooks carry the adjoint rule of each operation (see that module); derived
matrices chain their parents' hooks and the gradients reach the leaf arrays
in one place, :func:`cuhouse._operator.accumulate`. This is a small closed
algebra, not a general autodiff engine: the functions that can be
differentiated are :func:`cuhouse.matmul` and :func:`cuhouse.logdet`.
"""

from ._operator import Operator


def matmul(a, x):
    """``a @ x`` where either side is a cuhouse matrix."""
    return a @ x


def logdet(a):
    """``a.logdet()``: ``log|det a|`` per batch entry."""
    return a.logdet()


def vjp(fun, *args):
    """``(out, vjp_fn)`` for ``fun`` in ``{matmul, logdet}``.

    ``vjp(matmul, A, X)`` gives ``vjp_fn(dout) -> (dA, dX)`` (and
    ``vjp(matmul, X, A)`` gives ``(dX, dA)``), where ``dA`` is a tuple matching
    ``A.params``: gradients with respect to the leaf arrays the user passed in.
    ``vjp(logdet, A)`` gives ``vjp_fn(dval) -> (dA,)``.
    Cost: the forward pass now, and about twice it when ``vjp_fn`` runs.
    """
    if fun is matmul:
        if len(args) != 2:
            raise TypeError("vjp(matmul, A, X) takes two operands, got {}".format(len(args)))
        a, x = args
        if isinstance(a, Operator):
            return a._vjp_matmul(x, "left")
        if isinstance(x, Operator):
            out, back = x._vjp_matmul(a, "right")
            return out, lambda dout: tuple(reversed(back(dout)))
        raise TypeError(
            "vjp(matmul, A, X) needs a cuhouse matrix on one side, got {} and {}".format(
                type(a).__name__, type(x).__name__
            )
        )
    if fun is logdet:
        if len(args) != 1 or not isinstance(args[0], Operator):
            raise TypeError(
                "vjp(logdet, A) takes one cuhouse matrix, got {}".format(", ".join(type(a).__name__ for a in args))
            )
        value, back = args[0]._vjp_logdet()
        return value, lambda dvalue: (back(dvalue),)
    raise TypeError("vjp supports cuhouse.matmul and cuhouse.logdet, got {!r}".format(fun))
