"""``vjp``: manual adjoints in the style of ``jax.vjp``.

Every cuhouse matrix implements two hooks:

``A._vjp_matmul(x, side) -> (out, back)``
    ``out`` is ``A @ x`` (``side == "left"``) or ``x @ A`` (``"right"``), and
    ``back(dout) -> (dparams, dx)`` with ``dparams`` a tuple matching
    ``A.params`` and ``dx`` shaped like ``x``;
``A._vjp_logdet() -> (value, back)``
    with ``back(dvalue) -> dparams``.

Derived matrices call their parents' hooks and add the results into their
own leaves with :func:`accumulate`. This is a small closed algebra, not a
general autodiff engine: the functions that can be differentiated are
:func:`cuhouse.matmul` and :func:`cuhouse.logdet`.
"""
import numpy


def matmul(a, x):
    """``a @ x`` where either side is a cuhouse matrix."""
    return a @ x


def logdet(a):
    """``a.logdet()``: log |det a| per batch entry."""
    return a.logdet()


def is_operator(obj):
    """True for cuhouse's matrix types."""
    return getattr(obj, "_cuhouse_operator", False)


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
        from . import _dask                 # TEMPORARY dask hook, until the operator base owns dispatch
        if is_operator(a) and _dask.is_dask_array(x):
            return _dask.vjp_matmul(a, x, "left")
        if is_operator(x) and _dask.is_dask_array(a):
            out, back = _dask.vjp_matmul(x, a, "right")
            return out, lambda dout: tuple(reversed(back(dout)))
        if is_operator(a):
            out, back = a._vjp_matmul(x, "left")
            return out, back
        if is_operator(x):
            out, back = x._vjp_matmul(a, "right")
            return out, lambda dout: tuple(reversed(back(dout)))
        raise TypeError("vjp(matmul, A, X) needs a cuhouse matrix on one side, got {} and {}".format(
            type(a).__name__, type(x).__name__))
    if fun is logdet:
        if len(args) != 1 or not is_operator(args[0]):
            raise TypeError("vjp(logdet, A) takes one cuhouse matrix, got {}".format(
                ", ".join(type(a).__name__ for a in args)))
        value, back = args[0]._vjp_logdet()
        return value, lambda dvalue: (back(dvalue),)
    raise TypeError("vjp supports cuhouse.matmul and cuhouse.logdet, got {!r}".format(fun))


def reduce_to_shape(g, shape, xp):
    """Sum ``g`` over the dimensions that broadcasting added to reach it from ``shape``."""
    shape = tuple(shape)
    extra = g.ndim - len(shape)
    if extra:
        g = g.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, (gs, s) in enumerate(zip(g.shape, shape)) if s == 1 and gs != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g


def accumulate(params, contributions, xp):
    """Gradients for ``params`` from ``(child_params, child_grads)`` pairs.

    Each child gradient is added to the leaf it belongs to, matched by
    identity, and reduced over broadcast batch dimensions. Every gradient has
    its leaf's (float) dtype; leaves no child touches get zeros.
    """
    total = [None] * len(params)
    for child_params, child_grads in contributions:
        for leaf, grad in zip(child_params, child_grads):
            i = next(i for i, p in enumerate(params) if p is leaf)
            grad = reduce_to_shape(grad, leaf.shape, xp)
            total[i] = grad if total[i] is None else total[i] + grad
    dtypes = [numpy.result_type(p.dtype, numpy.float32) for p in params]
    return tuple(xp.zeros(p.shape, dtype=dt) if g is None else g.astype(dt, copy=False)
                 for p, g, dt in zip(params, total, dtypes))
