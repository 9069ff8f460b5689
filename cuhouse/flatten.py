"""Optimizer adapters: a params tuple as one flat vector and back.

For ``scipy.optimize.minimize(fun, x0, jac=True)`` or any optimizer that
works on a single vector::

    params = H.params
    x0 = flatten_params(params)
    def fun(flat):
        H = HouseholderProduct(*unflatten_params(flat, like=params))
        out, back = vjp(matmul, H, X)
        ...
        return loss, flatten_params(back(dout)[0])
"""

from typing import Sequence, Tuple

import numpy

from . import _complex, _validate
from ._backend import array_module, astype, concat, copy, result_type
from ._typing import Array


def flatten_params(params: Sequence[Array]) -> Array:
    """One real 1-D array holding every array of ``params`` (a tuple), raveled in order.

    A complex array enters as its real and imaginary parts, interleaved (two
    entries per element), so real optimizers work on it; a complex gradient
    (torch's convention, dL/dRe + i dL/dIm) flattened the same way is the
    gradient w.r.t. those real entries.

    Parameters
    ----------
    params : tuple of arrays
        For example ``A.params``, or the gradients ``vjp_fn`` returns for them.

    Returns
    -------
    array, shape ``(total size,)``
        The arrays raveled and concatenated, in the common real float dtype of
        the arrays. Cost: one copy, O(total size).

    Examples
    --------
    >>> import numpy as np
    >>> import cuhouse as ch
    >>> ch.flatten_params((np.ones((2, 2)), np.zeros(3)))
    array([1., 1., 1., 1., 0., 0., 0.])
    >>> ch.flatten_params((np.array([1 + 2j, 3 - 4j]),))
    array([ 1.,  2.,  3., -4.])
    """
    params = _as_tuple(params, "params")
    xp = array_module(*params)
    arrays = [_validate.as_array(p, "params[{}]".format(i), xp) for i, p in enumerate(params)]
    dtype = _complex.real_dtype(_validate.float_dtype(result_type(xp, *(a.dtype for a in arrays)), xp))
    parts = [_complex.realify_rows(xp.reshape(a, (-1, 1)), xp) if _complex.is_complex(a.dtype) else a for a in arrays]
    return concat([astype(xp.reshape(a, (-1,)), dtype, xp) for a in parts], 0, xp)


def unflatten_params(vector: Array, like: Sequence[Array]) -> Tuple[Array, ...]:
    """Inverse of :func:`flatten_params`: a tuple of arrays shaped and typed like ``like``.

    Parameters
    ----------
    vector : array, shape ``(total size,)``
        1-D, with as many elements as ``like`` holds in all (two per complex element).
    like : tuple of arrays
        The arrays whose shapes and dtypes the pieces take, such as ``A.params``.

    Returns
    -------
    tuple of arrays
        One per entry of ``like``: copies, never views of ``vector``.
        Cost: O(total size).

    Examples
    --------
    >>> import numpy as np
    >>> import cuhouse as ch
    >>> a, b = ch.unflatten_params(np.arange(7.0), (np.ones((2, 2)), np.zeros(3, dtype=np.float32)))
    >>> a
    array([[0., 1.],
           [2., 3.]])
    >>> b
    array([4., 5., 6.], dtype=float32)
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
            piece = _complex.complexify_rows(xp.reshape(piece, (1, size)), xp)
        piece = xp.reshape(piece, tuple(p.shape))
        out.append(copy(piece, xp) if piece.dtype == p.dtype else astype(piece, p.dtype, xp))
        start += size
    return tuple(out)


def _as_tuple(params, name):
    if not isinstance(params, (tuple, list)) or not params:
        raise TypeError(
            "{} must be a non-empty tuple of arrays such as H.params, got {}".format(name, type(params).__name__)
        )
    return tuple(params)
