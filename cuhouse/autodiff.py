"""``vjp``: manual adjoints in the style of ``jax.vjp``.

Every cuhouse matrix is a :class:`cuhouse._operator.Operator`, whose private
hooks carry the adjoint rule of each operation (see that module); derived
matrices chain their parents' hooks and the gradients reach the leaf arrays
in one place, :func:`cuhouse._operator.accumulate`. This is a small closed
algebra, not a general autodiff engine: the functions that can be
differentiated are :func:`cuhouse.matmul` and :func:`cuhouse.logdet`.
"""

from typing import Any, Callable, Tuple

from ._operator import Operator
from ._typing import Array


def matmul(a: Any, x: Any) -> Any:
    """``a @ x`` where either side is a cuhouse matrix.

    ``matmul(X, A)`` is the right product ``X @ A`` even where the array
    library's own ``@`` refuses a foreign operand (array_api_strict).

    Parameters
    ----------
    a, x : cuhouse matrix or array
        At least one of them a cuhouse matrix (:class:`Operator`).

    Returns
    -------
    array or cuhouse matrix
        ``a @ x``: an array of the operands' library, or a cuhouse matrix when
        both are matrices. Cost: that of the product.

    Examples
    --------
    >>> import numpy as np
    >>> import cuhouse as ch
    >>> H = ch.HouseholderProduct(np.eye(3)[:1])  # H(e_1): flips the first coordinate
    >>> ch.matmul(H, np.array([1.0, 2.0, 3.0]))
    array([-1.,  2.,  3.])
    """
    if isinstance(x, Operator) and not isinstance(a, Operator):
        return x.__rmatmul__(a)
    return a @ x


def logdet(a: Operator) -> Array:
    """``a.logdet()``: ``log|det a|`` per batch entry.

    Parameters
    ----------
    a : cuhouse matrix
        A square matrix ``(..., d, d)``.

    Returns
    -------
    array
        ``log|det a|`` of shape ``a.shape[:-2]``. Cost: that of ``a.logdet()``.

    Examples
    --------
    >>> import numpy as np
    >>> import cuhouse as ch
    >>> E = ch.EighMatrix(ch.HouseholderProduct(np.eye(2)), np.array([2.0, 3.0]))
    >>> bool(np.isclose(ch.logdet(E), np.log(6.0)))
    True
    """
    return a.logdet()


def vjp(fun: Callable[..., Any], *args: Any) -> Tuple[Any, Callable[[Any], tuple]]:
    """``(out, vjp_fn)`` for ``fun`` in ``{matmul, logdet}``, as ``jax.vjp``.

    ``vjp(matmul, A, X)`` gives ``vjp_fn(dout) -> (dA, dX)`` (and
    ``vjp(matmul, X, A)`` gives ``(dX, dA)``), where ``dA`` is a tuple matching
    ``A.params``: gradients with respect to the leaf arrays the user passed in.
    ``vjp(logdet, A)`` gives ``vjp_fn(dval) -> (dA,)``.

    Parameters
    ----------
    fun : {cuhouse.matmul, cuhouse.logdet}
        The function to differentiate.
    *args
        Its arguments: ``(A, X)`` or ``(X, A)`` for ``matmul`` (A a cuhouse
        matrix, X an array, or a lazy Dask array), ``(A,)`` for ``logdet``.

    Returns
    -------
    out : array
        ``fun(*args)``; the caller may modify it.
    vjp_fn : callable
        Maps the cotangent of ``out`` (its shape) to the gradients, one entry
        per argument: a tuple of arrays matching ``A.params`` for a matrix, an
        array shaped like ``X`` for an array.

    Notes
    -----
    Complex data follows torch's convention: for a cotangent ``G`` of ``out``,
    the gradient of a complex array ``z`` is ``dL/dRe(z) + i dL/dIm(z)`` with
    ``L = Re(sum(conj(G) * out))`` (what ``z -= lr * grad`` needs; ``X``'s
    gradient for ``A @ X`` is ``A^H G``), and a real array that met complex
    data gets the real part of that.

    Cost: the forward pass now, and about twice it when ``vjp_fn`` runs.

    Examples
    --------
    >>> import numpy as np
    >>> import cuhouse as ch
    >>> rng = np.random.default_rng(0)
    >>> V = rng.standard_normal((3, 4))
    >>> X = rng.standard_normal((4, 2))
    >>> out, vjp_fn = ch.vjp(ch.matmul, ch.HouseholderProduct(V), X)
    >>> (dV,), dX = vjp_fn(np.ones_like(out))
    >>> dV.shape, dX.shape
    ((3, 4), (4, 2))
    >>> value, vjp_fn = ch.vjp(ch.logdet, ch.HouseholderProduct(V))
    >>> float(value), vjp_fn(np.ones(()))[0][0].shape
    (0.0, (3, 4))
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
