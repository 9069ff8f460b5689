"""Shapes and the columns form: the bottom layer, metadata only, no array library.

:func:`matmul_shape` is the one shape rule of ``A @ X`` and ``X @ A``; the
in-memory check (:func:`cuhouse._validate.product_operand`), the Dask chunking
(:mod:`cuhouse._dask`) and the torch adapter's shape rule
(:func:`cuhouse.torch.ops.check`, also its fake implementation) all call it
with plain shape tuples, so they raise the same errors with the same words.

The *columns form* of an operand is ``(..., d, m)``: a vector is one column
and ``X @ A`` is ``(A^T X^T)^T``; the hooks of :class:`cuhouse.Operator` work
on it. :func:`to_columns` and :func:`from_columns` convert, as views.
"""

import math

import numpy

from ._backend import array_module, swap


def batch_shape(*named):
    """The broadcast of batch shapes given as ``(name, shape)`` pairs.

    ``ValueError`` naming every argument and its batch shape when they do not
    broadcast, e.g. "the batch shapes of H (2,) and X (3,) do not broadcast".
    """
    try:
        return numpy.broadcast_shapes(*(tuple(shape) for _, shape in named))
    except ValueError:
        parts = ["{} {}".format(name, tuple(shape)) for name, shape in named]
        listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        raise ValueError("the batch shapes of {} do not broadcast".format(listed)) from None


def matrix_count(shape):
    """How many matrices a stack of ``shape`` ``(..., p, q)`` holds, at least 1 (an empty batch counts as
    one: what a plan prices). O(len(shape))."""
    return max(math.prod(shape[:-2]), 1)


def geqrf_shape(a_shape, tau_shape):
    """The number of reflectors k of a ``geqrf`` pair: ``a`` ``(..., M, N)``, ``tau`` ``(..., k)``
    with 1 <= k <= min(M, N) and batch shapes that broadcast. ``ValueError`` naming ``a`` or
    ``tau`` otherwise. Cost: O(number of dimensions)."""
    if len(a_shape) < 2:
        raise ValueError("a must have shape (..., M, N) as returned by geqrf, got shape {}".format(tuple(a_shape)))
    rows, cols = a_shape[-2:]
    k = tau_shape[-1] if len(tau_shape) else 0
    if len(tau_shape) < 1 or k == 0 or k > min(rows, cols):
        raise ValueError(
            "tau must have shape (..., k) with 1 <= k <= min(M, N) = {}, got shape {}".format(
                min(rows, cols), tuple(tau_shape)
            )
        )
    batch_shape(("a", a_shape[:-2]), ("tau", tau_shape[:-1]))
    return k


def matmul_shape(op_shape, x_shape, side, op_name="A", x_name="X"):
    """The shape of ``A @ X`` (``side == "left"``) or ``X @ A`` (``"right"``).

    ``op_shape`` is A's ``(..., rows, cols)``; ``x_shape`` is X's: ``(d,)``,
    or ``(..., d, m)`` for ``A @ X``, ``(..., m, d)`` for ``X @ A``, with d
    A's contracted size. ``ValueError`` naming ``x_name`` (and ``op_name``
    for batch shapes) for a scalar X, a wrong d, or batch shapes that do not
    broadcast. Cost: O(number of dimensions).
    """
    x_shape = tuple(x_shape)
    rows, cols = op_shape[-2:]
    d, out = (cols, rows) if side == "left" else (rows, cols)
    if not x_shape:
        raise ValueError("{} must have at least one dimension for matmul, got a scalar".format(x_name))
    if len(x_shape) == 1:
        if x_shape[0] != d:
            _wrong_size(x_shape, rows, cols, d, side, x_name)
        return tuple(op_shape[:-2]) + (out,)
    axis = -2 if side == "left" else -1
    if x_shape[axis] != d:
        _wrong_size(x_shape, rows, cols, d, side, x_name)
    batch = batch_shape((op_name, tuple(op_shape[:-2])), (x_name, x_shape[:-2]))
    return batch + ((out, x_shape[-1]) if side == "left" else (x_shape[-2], out))


def _wrong_size(x_shape, rows, cols, d, side, x_name):
    expected = "(d,) or (..., d, m)" if side == "left" else "(d,) or (..., m, d)"
    raise ValueError(
        "{} has shape {} but the operator is {}x{}: expected {} with d={}".format(
            x_name, tuple(x_shape), rows, cols, expected, d
        )
    )


def to_columns(a, vector, side, xp):
    """The columns form ``(..., d, m)`` of an operand (or output) of ``A @ X`` / ``X @ A``: a view."""
    if vector:
        return a[..., None]
    return swap(a, xp) if side == "right" else a


def from_columns(c, vector, side, xp):
    """Inverse of :func:`to_columns`: a view."""
    if vector:
        return c[..., 0]
    return swap(c, xp) if side == "right" else c


def reduce_to_shape(g, shape):
    """Sum ``g`` over the dimensions that broadcasting added to reach it from ``shape``."""
    shape = tuple(shape)
    extra = g.ndim - len(shape)
    xp = namespace(g)
    if extra:
        g = xp.sum(g, axis=tuple(range(extra)))
    axes = tuple(i for i, (gs, s) in enumerate(zip(g.shape, shape)) if s == 1 and gs != 1)
    if axes:
        g = xp.sum(g, axis=axes, keepdims=True)
    return g


def namespace(a):
    """The module to call functions of array ``a`` from: NumPy or CuPy natively, else its Array API
    namespace (torch, array_api_strict, ...)."""
    return numpy if isinstance(a, numpy.ndarray) else array_module(a)
