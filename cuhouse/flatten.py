"""Optimizer adapters: a params tuple as one flat vector and back.

For ``scipy.optimize.minimize(fun, x0, jac=True)`` or any optimizer that
works on a single vector::

    x0 = flatten_params(H.params)
    def fun(flat):
        H = HouseholderProduct(*unflatten_params(flat, like=params))
        out, back = vjp(matmul, H, X)
        ...
        return loss, flatten_params(back(dout)[0])
"""

import numpy

from . import _complex, _validate
from ._backend import array_module


def flatten_params(params):
    """One real 1-D array holding every array of ``params`` (a tuple), raveled in order.

    The dtype is the common real float dtype of the arrays. A complex array
    enters as its real and imaginary parts, interleaved (two entries per
    element), so real optimizers work on it; a complex gradient (torch's
    convention, dL/dRe + i dL/dIm) flattened the same way is the gradient
    w.r.t. those real entries. Cost: one copy, O(total size).
    """
    params = _as_tuple(params, "params")
    xp = array_module(*params)
    arrays = [_validate.as_array(p, "params[{}]".format(i), xp) for i, p in enumerate(params)]
    dtype = _complex.real_dtype(_validate.float_dtype(numpy.result_type(*arrays)))
    parts = [_complex.realify_rows(a.reshape(-1, 1), xp) if _complex.is_complex(a.dtype) else a for a in arrays]
    return xp.concatenate([a.reshape(-1).astype(dtype, copy=False) for a in parts])


def unflatten_params(vector, like):
    """Inverse of :func:`flatten_params`: a tuple of arrays shaped and typed like ``like``.

    ``vector`` must be 1-D with as many elements as ``like`` holds in all
    (two per complex element). The pieces are copies, never views of
    ``vector``. Cost: O(total size).
    """
    like = _as_tuple(like, "like")
    xp = array_module(vector, *like)
    vector = _validate.as_array(vector, "vector", xp)
    sizes = [int(numpy.prod(p.shape)) * (2 if _complex.is_complex(p.dtype) else 1) for p in like]
    if vector.ndim != 1 or vector.shape[0] != sum(sizes):
        raise ValueError(
            "vector must be 1-D with {} elements (the sizes of like: {}), got shape {}".format(
                sum(sizes), [tuple(p.shape) for p in like], tuple(vector.shape)
            )
        )
    out, start = [], 0
    for p, size in zip(like, sizes):
        piece = vector[start : start + size]
        if _complex.is_complex(p.dtype):
            piece = _complex.complexify_rows(piece.reshape(1, size), xp)
        out.append(piece.reshape(p.shape).astype(p.dtype, copy=True))
        start += size
    return tuple(out)


def _as_tuple(params, name):
    if not isinstance(params, (tuple, list)) or not params:
        raise TypeError(
            "{} must be a non-empty tuple of arrays such as H.params, got {}".format(name, type(params).__name__)
        )
    return tuple(params)
