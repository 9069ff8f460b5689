"""The operator protocol shared by every cuhouse matrix.

In the manner of ``scipy.sparse.linalg.LinearOperator``, one abstract base
class owns the protocol: ``@`` on both sides, ``numpy.asarray``, NumPy's
function protocol (``numpy.dot`` is the product; ``__array_ufunc__ = None``
opts out of ufuncs, which lets ndarray, Dask and CuPy operands defer to
``A.__rmatmul__``), the SciPy
duck-typing methods (``matvec``, ``rmatvec``, ``matmat``, ``rmatmat``,
``dot``), ``todense``, ``matmul``, ``det`` and ``logdet`` (from ``slogdet``),
one ``__repr__``, pickling, Dask tokens, the validation of the outer operand
(once per user call), the cotangent check and the dtype rules.

A subclass supplies (abstract here: a class that leaves one out cannot be
instantiated, and ``TypeError`` names what is missing)

- the properties ``shape`` ``(..., d_out, d_in)``, ``dtype``, ``params`` (the
  leaf arrays gradients are taken with respect to), ``backend`` (a name),
  ``check_finite``, ``T`` and ``H``;
- the methods ``conj()``, ``inv()`` and ``slogdet()``;
- three hooks that work on already-validated arrays in the columns form
  (:mod:`cuhouse._shapes`) and call their parents' hooks, never the public path:

``_matmat(columns, transpose) -> out``
    ``A @ columns`` (``A^H @ columns``, the adjoint, when ``transpose``; the
    transpose for a real A) for float or complex ``columns`` ``(..., d, m)`` in
    the result dtype. Builds nothing for a backward. ``X @ A`` runs as
    ``(conj(A)^H X^T)^T`` through ``A.conj()``'s hook.
``_vjp_matmat(columns, transpose) -> (out, back)``
    the same product and ``back(dout) -> (contributions, dcolumns)``:
    ``dout`` is shaped like ``out``; ``dcolumns`` like ``columns``;
    ``contributions`` is a list of ``(leaf, gradient)`` pairs, a gradient
    possibly carrying batch dimensions that broadcasting added.
``_vjp_logabsdet() -> (value, back)``
    ``log|det A|`` per batch entry and ``back(dvalue) -> contributions``.

and optionally ``_NAME`` (the matrix in messages), ``_TODENSE_WORKSPACE``
(peak memory of ``todense`` in units of its result) and ``_describe()`` (the
fields ``__repr__`` shows after shape, dtype and backend).

``A @ B`` for any two cuhouse matrices is a cuhouse matrix: two
``HouseholderProduct``s compose into one; every other pair gives a
:class:`Product` (defined here, as SciPy's ``_ProductLinearOperator`` sits
beside ``LinearOperator``, so that the base needs no module above it).

Contributions become gradients in one place, :func:`accumulate`: summed
over broadcast dimensions and over repeated uses of a leaf, matched to
``params`` by identity.

Complex gradients follow torch's convention: for a cotangent ``G`` of ``out``,
the gradient of a complex array ``z`` is ``dL/dRe(z) + i dL/dIm(z)`` with
``L = Re(sum(conj(G) * out))``, what ``z -= lr * grad`` needs; a real array
gets the real part of that (see :mod:`cuhouse._complex`).

Pickling (and ``copy.copy``/``copy.deepcopy``) is Python's default for plain
objects: no matrix holds a module (the backend is a name) and the one class
with caches, :class:`cuhouse._reflections.Reflections`, drops them in its
``__getstate__``. Leaves shared inside one pickle stay shared, so the
gradients of a copy reach the copy's leaves.
"""

from __future__ import annotations

import abc
import functools
import operator
import sys
from typing import Any, Tuple

import numpy

from . import _complex, _memory, _validate
from ._backend import (
    array_api_compat,
    astype,
    contiguous,
    copy,
    creation_kwargs,
    device_of,
    is_dask_array,
    is_native,
    library_dtype,
    module_named,
    numpy_dtype,
    result_type,
    swap,
)
from ._shapes import batch_shape, from_columns, reduce_to_shape, to_columns
from ._typing import Array


class Operator(abc.ABC):
    """Base of every cuhouse matrix; ``isinstance(A, Operator)`` is "A is a cuhouse matrix".

    See the module docstring for what a subclass supplies and what the base owns.
    """

    # NEP 13 opt-out: ndarray @ A, Xd @ A (Dask) and cupy_array @ A (CuPy defers only to None here)
    # return NotImplemented, so that A.__rmatmul__ runs; numpy.matmul(A, X) is NumPy's TypeError
    __array_ufunc__ = None
    __array_priority__ = 1000
    _NAME = "A"  # the matrix in messages
    _CUHOUSE_MATRIX = True  # what cuhouse._validate.as_array refuses to densify

    # ------------------------------------------------------- NumPy protocols
    def __array_function__(self, func, types, args, kwargs):
        """NumPy's function protocol (NEP 18). ``numpy.dot(A, X)`` and ``numpy.dot(X, A)`` with a
        2-D (or 1-D) X are the product, without forming A; any other NumPy function gets the
        dense arrays (``numpy.asarray``, NumPy backend only), as before the protocol."""
        if func is numpy.dot and len(args) == 2 and not kwargs:
            left, right = args
            other = right if left is self else left
            if self.ndim > 2 or numpy.ndim(other) > 2:
                raise TypeError(
                    "numpy.dot does not broadcast batch dimensions (it pairs every matrix with every "
                    "other); for a batched cuhouse {} use A @ X, which broadcasts as "
                    "numpy.matmul".format(type(self).__name__)
                )
            return self @ right if left is self else left @ self
        return func(*_dense_arguments(args), **dict(zip(kwargs, _dense_arguments(kwargs.values()))))

    # ------------------------------------------------- supplied by a subclass
    @property
    @abc.abstractmethod
    def shape(self) -> Tuple[int, ...]:
        """``(..., d_out, d_in)``."""

    @property
    @abc.abstractmethod
    def dtype(self) -> numpy.dtype:
        """The float or complex dtype of the matrix (``numpy.dtype``)."""

    @property
    @abc.abstractmethod
    def params(self) -> Tuple[Array, ...]:
        """The leaf arrays gradients are taken with respect to: a tuple, distinct by identity."""

    @property
    @abc.abstractmethod
    def backend(self) -> str:
        """The array library's name, e.g. ``"numpy"`` or ``"cupy"``."""

    @property
    def device(self) -> Any:
        """The device of the parameters as their library names it (``array_api_compat.device``):
        ``"cpu"`` for NumPy, a ``cupy.cuda.Device``, a ``torch.device``. Products come back there."""
        return array_api_compat().device(self.params[0])

    @property
    @abc.abstractmethod
    def check_finite(self) -> bool:
        """Whether NaN/Inf in every operand is rejected."""

    @property
    @abc.abstractmethod
    def T(self) -> Operator:
        """The transpose, again a cuhouse matrix."""

    @property
    @abc.abstractmethod
    def H(self) -> Operator:
        """The adjoint (conjugate transpose), again a cuhouse matrix; ``T`` for a real matrix."""

    @abc.abstractmethod
    def conj(self) -> Operator:
        """The entrywise conjugate, again a cuhouse matrix (``self`` when real)."""

    @abc.abstractmethod
    def inv(self) -> Operator:
        """The inverse, again a cuhouse matrix."""

    @abc.abstractmethod
    def slogdet(self) -> Tuple[Array, Array]:
        """``(sign, log|det|)`` per batch entry, as ``numpy.linalg.slogdet``."""

    @abc.abstractmethod
    def _matmat(self, columns, transpose):
        """``A @ columns`` (``A^H @ columns``); see the module docstring."""

    @abc.abstractmethod
    def _vjp_matmat(self, columns, transpose):
        """``(out, back)`` for ``A @ columns``; see the module docstring."""

    @abc.abstractmethod
    def _vjp_logabsdet(self):
        """``(log|det A|, back)``; see the module docstring."""

    # ------------------------------------------------------------ attributes
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def _xp(self):
        return module_named(self.backend)

    @property
    def _device(self):
        """The device of the parameters (``None`` on NumPy and CuPy)."""
        return device_of(self.params[0])

    def _gradients(self, contributions):
        """Gradients matching :attr:`params` from ``(leaf, gradient)`` pairs (:func:`accumulate`)."""
        return accumulate(self.params, contributions, self._xp)

    def _describe(self):
        """``(name, value)`` pairs ``__repr__`` shows after shape, dtype and backend."""
        return ()

    def __repr__(self):
        fields = [("shape", self.shape), ("dtype", self.dtype), ("backend", self.backend)]
        fields += list(self._describe())
        return "{}({})".format(type(self).__name__, ", ".join("{}={}".format(k, v) for k, v in fields))

    def __dask_tokenize__(self):
        """A deterministic token (``dask.base.tokenize``) from the class and the whole state,
        arrays hashed by content, so that equal matrices share one key in Dask graphs."""
        from dask.base import normalize_token

        return type(self).__qualname__, normalize_token(sorted(vars(self).items()))

    # -------------------------------------------------------- determinants
    def det(self) -> Array:
        """``det`` per batch entry, ``sign * exp(log|det|)`` from :meth:`slogdet`.

        Returns
        -------
        array
            Of shape ``A.shape[:-2]``.

        Examples
        --------
        >>> import numpy as np
        >>> import cuhouse as ch
        >>> W = ch.SVDMatrix.random(3, 3, rng=0)
        >>> bool(np.isclose(W.det(), np.linalg.det(W.todense())))
        True
        """
        sign, logabs = self.slogdet()
        return sign * self._xp.exp(logabs)

    def logdet(self) -> Array:
        """``log|det|`` per batch entry (``-inf`` when singular), from :meth:`slogdet`. On torch, when
        a gradient is recorded, differentiable by torch autograd (after the checks of
        ``cuhouse.vjp`` of ``logdet``: a spectrum without zeros).

        Returns
        -------
        array
            Real, of shape ``A.shape[:-2]``.

        Examples
        --------
        >>> import numpy as np
        >>> import cuhouse as ch
        >>> E = ch.EighMatrix(np.eye(3)[:1], np.array([1.0, 2.0, 4.0]))
        >>> bool(np.isclose(E.logdet(), np.log(8.0)))
        True
        """
        if self.backend == "torch":
            from . import _torch

            if _torch.records_gradient(self.params):
                return _torch.on_tape(self._vjp_logabsdet()[0], self.params)  # its checks: a nonzero spectrum
        return self.slogdet()[1]

    def matmul(self, x: Any) -> Any:
        """``A @ X``; see :func:`cuhouse.matmul`.

        Returns
        -------
        array or cuhouse matrix
            ``A @ X``.

        Examples
        --------
        >>> import numpy as np
        >>> import cuhouse as ch
        >>> ch.HouseholderProduct(np.eye(2)[1:]).matmul(np.array([1.0, 1.0]))
        array([ 1., -1.])
        """
        return self @ x

    # --------------------------------------------------------------- algebra
    def __matmul__(self, other):
        if isinstance(other, Operator):
            return self._compose(other)
        if _is_scipy_linear_operator(other):  # stay lazy: SciPy composes the two operators
            from scipy.sparse.linalg import aslinearoperator

            return aslinearoperator(self) @ other
        return self._product(other, "left")

    def __rmatmul__(self, other):
        return self._product(other, "right")

    def _compose(self, other):
        """``self @ other`` for two cuhouse matrices: a lazy :class:`Product`."""
        return Product(self, other)

    def dot(self, x: Any) -> Any:
        """``A @ x``, as ``LinearOperator.dot``: an array, or a cuhouse matrix for a cuhouse matrix."""
        return self @ x

    def matvec(self, x: Array) -> Array:
        """``A x`` for ``x`` ``(d_in,)`` or ``(d_in, 1)``, as ``LinearOperator.matvec``. O(cost of A @ x).

        Returns
        -------
        array
            ``(d_out,)`` or ``(d_out, 1)``, as ``x``.

        Examples
        --------
        >>> import numpy as np
        >>> import cuhouse as ch
        >>> ch.HouseholderProduct(np.eye(2)[:1]).matvec(np.array([3.0, 4.0]))
        array([-3.,  4.])
        """
        return self._product(x, "left")

    def rmatvec(self, x: Array) -> Array:
        """``A^H x`` (the adjoint) for ``x`` ``(d_out,)`` or ``(d_out, 1)``, as ``LinearOperator.rmatvec``."""
        return self._product(x, "left", transpose=True)

    def matmat(self, x: Array) -> Array:
        """``A X`` for ``X`` ``(d_in, m)``, as ``LinearOperator.matmat``."""
        return self._product(x, "left")

    def rmatmat(self, x: Array) -> Array:
        """``A^H X`` (the adjoint) for ``X`` ``(d_out, m)``, as ``LinearOperator.rmatmat``.

        Returns
        -------
        array
            ``(d_in, m)``.

        Examples
        --------
        >>> import numpy as np
        >>> import scipy.sparse.linalg as sla
        >>> import cuhouse as ch
        >>> W = ch.SVDMatrix.random(4, 3, rng=0)
        >>> L = sla.aslinearoperator(W)  # matvec, rmatvec, matmat, rmatmat
        >>> np.allclose(L.rmatmat(np.eye(4)), W.todense().T)
        True
        """
        return self._product(x, "left", transpose=True)

    # Peak memory of todense() in units of its result (tracemalloc at d = 2000:
    # 4.06 for a HouseholderProduct, 6.06 for an SVDMatrix); see _memory.dense_memory.
    _TODENSE_WORKSPACE = 6

    def todense(self) -> Array:
        """The dense matrix ``(..., d_out, d_in)``: ``A`` (or ``A^T``, for a wide
        matrix) applied to the smaller identity, so a wide result is a
        transposed view. ``MemoryError`` up front when the result and its
        intermediates cannot fit. Cost: one product with min(d_out, d_in) columns.

        Returns
        -------
        array
            ``(..., d_out, d_in)``, the matrix's dtype and library.

        Examples
        --------
        >>> import numpy as np
        >>> import cuhouse as ch
        >>> ch.HouseholderProduct(np.eye(2)[:1]).todense()
        array([[-1.,  0.],
               [ 0.,  1.]])
        """
        xp = self._xp
        rows, cols = self.shape[-2:]
        _memory.dense_memory(self.shape, self.dtype, "todense()", xp, self._TODENSE_WORKSPACE, self._device)
        like = creation_kwargs(self.params[0])
        if cols <= rows:
            return self._matmat(xp.eye(cols, dtype=self.dtype, **like), False)
        return swap(self._conjugated()._matmat(xp.eye(rows, dtype=self.dtype, **like), True), xp)

    def __array__(self, dtype=None, copy=None):
        """``numpy.asarray(A)``: the dense form, a new array. NumPy backend only.

        A CuPy matrix would need a silent device-to-host copy: ``TypeError``.
        ``copy=False`` is a ``ValueError``, as NumPy 2 asks of objects that
        cannot be viewed without a copy. Cost: :meth:`todense`.
        """
        if self.backend != "numpy":
            raise TypeError(
                "a {} on the {} backend cannot become a NumPy array implicitly: cuhouse copies nothing between "
                "libraries or devices; convert A.todense() explicitly (cupy.asnumpy, DLPack, .cpu().numpy())".format(
                    type(self).__name__, self.backend
                )
            )
        if copy is False:
            raise ValueError(
                "a {} has no array to view: numpy.asarray(..., copy=False) is impossible; use todense()".format(
                    type(self).__name__
                )
            )
        if self.ndim > 2 and sys._getframe(1).f_globals.get("__name__", "").startswith("scipy.sparse"):
            # S @ A with S sparse: SciPy converts A and takes 2-D operands only ("could not interpret dimensions")
            raise TypeError(
                "a SciPy sparse matrix times a batched cuhouse {} (shape {}): SciPy's sparse products take "
                "2-D operands only; use S.toarray() @ A, which broadcasts as numpy.matmul, or multiply by "
                "each matrix of the batch".format(type(self).__name__, self.shape)
            )
        dense = self.todense()
        return dense if dtype is None else dense.astype(dtype, copy=False)

    # ------------------------------------------------------------- products
    def _conjugated(self):
        """``conj(A)``, whose adjoint hook gives ``A^T``: ``A`` itself when real."""
        return self.conj() if _complex.is_complex(self.dtype) else self

    def _operand(self, x, side, transpose=False, name="X"):
        """Validate ``X`` of ``A @ X`` (``side == "left"``) or ``X @ A`` (``"right"``), once.

        With ``transpose``, ``A^T`` takes A's place; ``name`` is X's name in
        messages. Returns ``(x, columns, transpose)``: ``x`` as validated (its
        own dtype), ``columns`` its columns form ``(..., d, m)`` in the result
        dtype (a vector is one column, ``X @ A`` is ``(A^T X^T)^T``), and
        whether the hook applies the adjoint. For ``side == "right"`` the hook is that of
        :meth:`_conjugated` (``X @ A = (conj(A)^H X^T)^T``).
        """
        shape = self.shape[:-2] + self.shape[-2:][::-1] if transpose else self.shape
        x, cast = _validate.product_operand(
            x, self._xp, self._NAME, shape, self.dtype, side, self.check_finite, name, self._device
        )
        return x, to_columns(cast, x.ndim == 1, side, self._xp), (side == "right") != transpose

    def _product(self, x, side, transpose=False, name="X"):
        """``A @ X`` (``X @ A``; ``A^T`` in place of A with ``transpose``): validate once, run the hook.

        A Dask array ``X`` gives a lazy Dask array, one product per chunk (:mod:`cuhouse._dask`).
        """
        if is_dask_array(x):
            from . import _dask

            return _dask.matmul(self.H if transpose else self, x, side)
        x, columns, transpose = self._operand(x, side, transpose, name)
        op = self._conjugated() if side == "right" else self
        out = op._matmat(columns, transpose)
        return contiguous(from_columns(out, x.ndim == 1, side, self._xp), self._xp)

    # ------------------------------------------------------------ gradients
    def _vjp_matmul(self, x, side):
        """``A @ X`` (``X @ A``) and ``back(dout) -> (dparams, dX)``, for :func:`cuhouse.vjp`.

        ``dparams`` matches :attr:`params` (each in its leaf's float dtype),
        ``dX`` has X's shape and float dtype. The returned ``out`` is the
        caller's to modify: the backward keeps its own. Cost: the product now,
        about twice it in ``back``. A Dask array ``X`` gives a lazy ``out`` and
        lazy gradients (:func:`cuhouse._dask.vjp_matmul`).
        """
        if is_dask_array(x):
            from . import _dask

            return _dask.vjp_matmul(self, x, side)
        xp = self._xp
        if isinstance(x, Operator):
            raise TypeError(
                "vjp(matmul, A, X) differentiates a matrix times an array; got two cuhouse "
                "matrices ({} and {}): differentiate (A1 @ A2) @ X instead".format(
                    type(self).__name__, type(x).__name__
                )
            )
        x, columns, transpose = self._operand(x, side)
        vector = x.ndim == 1
        op = self._conjugated() if side == "right" else self
        out_columns, back_columns = op._vjp_matmat(columns, transpose)
        out = from_columns(out_columns, vector, side, xp)
        out = xp.array(out, order="C", copy=True) if is_native(xp) else contiguous(copy(out, xp), xp)
        device = self._device

        def back(dout):
            dout = _validate.cotangent(dout, "dout", out.shape, xp, self.check_finite, device)
            if _complex.is_complex(dout.dtype) and not _complex.is_complex(out.dtype):
                dout = xp.real(dout)  # L = Re(sum(conj(G) * out)) only sees Re(G) for a real out
            dout = astype(dout, out.dtype, xp)
            contributions, dcolumns = back_columns(to_columns(dout, vector, side, xp))
            dx = from_columns(dcolumns, vector, side, xp)
            if _complex.is_complex(dx.dtype) and not _complex.is_complex(x.dtype):
                dx = xp.real(dx)  # a real X: the real part of the complex gradient
            dx = contiguous(astype(dx, _validate.float_dtype(x.dtype, xp), xp), xp)
            return accumulate(self.params, contributions, xp), dx

        return out, back

    def _vjp_logdet(self):
        """``log|det A|`` and ``back(dvalue) -> dparams``, for :func:`cuhouse.vjp`."""
        xp = self._xp
        value, back_contributions = self._vjp_logabsdet()
        device = self._device

        def back(dvalue):
            dvalue = _validate.cotangent(dvalue, "dvalue", value.shape, xp, self.check_finite, device)
            return accumulate(self.params, back_contributions(dvalue), xp)

        return value, back


class Product(Operator):
    """The lazy product of its arguments, left to right (``args[0] @ args[1] @ ...``), shape ``(..., d_out, d_in)``.

    Nested products are flattened. ``params`` are the distinct leaf arrays of
    the factors, by identity, in order of first appearance; a leaf used twice
    gets the sum of its gradients. Cost: ``P @ X`` is the sum of the factors'
    costs; ``.T`` and ``.inv()`` are O(k).

    Parameters
    ----------
    *args : cuhouse matrices
        At least two, with matching inner sizes; their batch shapes broadcast.

    Examples
    --------
    >>> import numpy as np
    >>> import cuhouse as ch
    >>> S = ch.SVDMatrix.random(4, 4, rng=0)
    >>> H = ch.HouseholderProduct(np.ones((1, 4)))
    >>> P = S @ H  # a Product: nothing is multiplied yet
    >>> type(P).__name__, len(P.params)
    ('Product', 4)
    >>> np.allclose(P.todense(), S.todense() @ H.todense())
    True
    """

    def __init__(self, *args: Operator) -> None:
        factors = []
        for a in args:
            if not isinstance(a, Operator):
                raise TypeError("Product takes cuhouse matrices, got {}".format(type(a).__name__))
            factors.extend(a.args if isinstance(a, Product) else (a,))
        if len(factors) < 2:
            raise ValueError("Product needs at least two factors, got {}".format(len(factors)))
        backends = {f.backend for f in factors}
        if len(backends) > 1:
            raise TypeError(
                "cannot multiply cuhouse matrices on different backends: {}".format(" and ".join(sorted(backends)))
            )
        devices = {str(f._device) for f in factors}
        if len(devices) > 1:
            raise TypeError(
                "cannot multiply cuhouse matrices on different devices: {}; cuhouse copies nothing between "
                "devices".format(" and ".join(sorted(devices)))
            )
        for left, right in zip(factors, factors[1:]):
            if left.shape[-1] != right.shape[-2]:
                raise ValueError(
                    "cannot multiply a {}x{} {} by a {}x{} {}: inner sizes differ".format(
                        left.shape[-2],
                        left.shape[-1],
                        type(left).__name__,
                        right.shape[-2],
                        right.shape[-1],
                        type(right).__name__,
                    )
                )
        batch_shape(*(("factor {}".format(i), f.shape[:-2]) for i, f in enumerate(factors)))
        self.args = tuple(factors)

    @property
    def shape(self) -> Tuple[int, ...]:
        batch = numpy.broadcast_shapes(*(f.shape[:-2] for f in self.args))
        return batch + (self.args[0].shape[-2], self.args[-1].shape[-1])

    @property
    def dtype(self) -> numpy.dtype:
        return result_type(self._xp, *(f.dtype for f in self.args))

    @property
    def backend(self) -> str:
        return self.args[0].backend

    @property
    def check_finite(self) -> bool:
        return all(f.check_finite for f in self.args)

    @property
    def params(self) -> Tuple[Array, ...]:
        """The distinct leaf arrays of the factors, by identity, first appearance first."""
        leaves = []
        for f in self.args:
            for leaf in f.params:
                if not any(leaf is seen for seen in leaves):
                    leaves.append(leaf)
        return tuple(leaves)

    def _describe(self):
        return (("factors", "[{}]".format(", ".join(type(f).__name__ for f in self.args))),)

    # --------------------------------------------------------------- algebra
    @property
    def T(self) -> Operator:
        """``Ak^T @ ... @ A1^T``. O(k)."""
        return Product(*(f.T for f in reversed(self.args)))

    @property
    def H(self) -> Operator:
        """The adjoint ``Ak^H @ ... @ A1^H``. O(k)."""
        return Product(*(f.H for f in reversed(self.args)))

    def conj(self) -> Operator:
        """The entrywise conjugate ``conj(A1) @ ... @ conj(Ak)`` (``self`` when real). O(k)."""
        return Product(*(f.conj() for f in self.args)) if _complex.is_complex(self.dtype) else self

    def inv(self) -> Operator:
        """``Ak^-1 @ ... @ A1^-1``; every factor must be square and have ``inv()``. O(k)."""
        for i, f in enumerate(self.args):
            self._square(i, f, "inv()")
        return Product(*(f.inv() for f in reversed(self.args)))

    def slogdet(self) -> Tuple[Array, Array]:
        """``(sign, log|det|)`` per batch entry: the factors' products and sums. Square factors. O(k r).

        As ``numpy.linalg.slogdet``: a complex sign and a real logarithm for complex factors."""
        signs, logs = zip(*(self._square(i, f, "slogdet()").slogdet() for i, f in enumerate(self.args)))
        batch = self.shape[:-2]
        xp = self._xp
        sign = xp.broadcast_to(functools.reduce(operator.mul, signs), batch)
        real = _real_dtype(self.dtype, xp)
        return copy(astype(sign, self.dtype, xp), xp), copy(astype(xp.broadcast_to(sum(logs), batch), real, xp), xp)

    def _square(self, i, f, operation):
        """``f``, factor ``i``; ``ValueError`` naming it unless it is square."""
        if self.shape[-2] != self.shape[-1]:
            raise ValueError("{} needs a square matrix, but the Product is {}x{}".format(operation, *self.shape[-2:]))
        rows, cols = f.shape[-2:]
        if rows != cols:
            raise ValueError(
                "{} of a Product works factor by factor and needs square factors, but factor {} of {} "
                "({}) is {}x{} (the product is {}x{}); use the dense product, e.g. numpy.linalg on "
                "P.todense()".format(
                    operation, i, len(self.args), _factor_name(f), rows, cols, self.shape[-2], self.shape[-1]
                )
            )
        return f

    # ------------------------------------------------------------- products
    def _order(self, transpose):
        """The factors in the order they act on X: last first (first first, transposed, for ``P^T``)."""
        return self.args if transpose else self.args[::-1]

    def _matmat(self, columns, transpose):
        for f in self._order(transpose):
            columns = f._matmat(columns, transpose)
        return columns

    def _vjp_matmat(self, columns, transpose):
        backs = []
        for f in self._order(transpose):
            columns, back = f._vjp_matmat(columns, transpose)
            backs.append(back)

        def back(dout):
            contributions = []
            for step in reversed(backs):
                more, dout = step(dout)
                contributions.extend(more)
            return contributions, dout

        return columns, back

    def _vjp_logabsdet(self):
        parts = [self._square(i, f, "logdet()")._vjp_logabsdet() for i, f in enumerate(self.args)]
        xp = self._xp
        value = astype(xp.broadcast_to(sum(v for v, _ in parts), self.shape[:-2]), _real_dtype(self.dtype, xp), xp)

        def back(dvalue):
            return [pair for _, b in parts for pair in b(dvalue)]

        return value, back


def _dense_arguments(args):
    """``args`` with every cuhouse matrix, at the top level or in a list or tuple, as its dense array."""
    return [
        numpy.asarray(a)
        if isinstance(a, Operator)
        else type(a)(_dense_arguments(a))
        if isinstance(a, (list, tuple))
        else a
        for a in args
    ]


def _factor_name(f):
    """A factor in messages: its type, and its lineage when it has one (e.g. ``SVDMatrix W.T``)."""
    lineage = getattr(f, "lineage", None)
    return type(f).__name__ + (" " + lineage if lineage else "")


def _is_scipy_linear_operator(x):
    return any(
        c.__module__.startswith("scipy.sparse.linalg") and c.__name__ == "LinearOperator" for c in type(x).__mro__
    )


def accumulate(params, contributions, xp):
    """Gradients for ``params`` from ``(leaf, gradient)`` pairs.

    Each gradient is reduced over broadcast batch dimensions and added to the
    leaf it belongs to, matched by identity (the first slot of a leaf listed
    twice). Every gradient has its leaf's float (or complex) dtype and is
    C-contiguous; a real leaf gets the real part of a complex gradient; leaves
    no pair touches get zeros.
    """
    total = [None] * len(params)
    for leaf, grad in contributions:
        i = next(i for i, p in enumerate(params) if p is leaf)
        if _complex.is_complex(grad.dtype) and not _complex.is_complex(leaf.dtype):
            grad = xp.real(grad)
        grad = reduce_to_shape(grad, leaf.shape)
        total[i] = grad if total[i] is None else total[i] + grad
    if not is_native(xp):
        dtypes = [_validate.float_dtype(p.dtype, xp) for p in params]
        return tuple(
            xp.zeros(p.shape, dtype=dt, **creation_kwargs(p)) if g is None else contiguous(astype(g, dt, xp), xp)
            for p, g, dt in zip(params, total, dtypes)
        )
    dtypes = [numpy.result_type(p.dtype, numpy.float32) for p in params]
    return tuple(
        xp.zeros(p.shape, dtype=dt) if g is None else xp.ascontiguousarray(g, dtype=dt)
        for p, g, dt in zip(params, total, dtypes)
    )


def _real_dtype(dtype, xp):
    """The real dtype of ``dtype``'s parts, as a dtype of ``xp``."""
    return library_dtype(_complex.real_dtype(numpy_dtype(dtype)), xp)
