"""The operator protocol shared by every cuhouse matrix.

In the manner of ``scipy.sparse.linalg.LinearOperator``, one base class owns
the protocol: ``@`` on both sides, ``numpy.asarray``, the SciPy duck-typing
methods (``matvec``, ``rmatvec``, ``matmat``, ``rmatmat``, ``dot``),
``todense``, pickling, the validation of the outer operand (once per user
call), the cotangent check, the dtype rules and the columns layout. A
subclass provides ``shape``, ``dtype``, ``params``, ``backend``,
``check_finite``, ``T``, ``H``, ``conj()`` and three hooks that work on
already-validated arrays and call their parents' hooks, never the public path:

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

Contributions become gradients in one place, :func:`accumulate`: summed
over broadcast dimensions and over repeated uses of a leaf, matched to
``params`` by identity.

Complex gradients follow torch's convention: for a cotangent ``G`` of ``out``,
the gradient of a complex array ``z`` is ``dL/dRe(z) + i dL/dIm(z)`` with
``L = Re(sum(conj(G) * out))``, what ``z -= lr * grad`` needs; a real array
gets the real part of that (see :mod:`cuhouse._complex`).

Pickling (and ``copy.copy``/``copy.deepcopy``) is Python's default for plain
objects: no matrix holds a module (the backend is a name) and the one class
with caches, :class:`cuhouse.householder.Reflections`, drops them in its
``__getstate__``. Leaves shared inside one pickle stay shared, so the
gradients of a copy reach the copy's leaves.
"""

import numpy

from . import _dask, _validate
from ._backend import astype, contiguous, copy, creation_kwargs, device_of, is_complex, is_native, module_named, swap


class Operator:
    """Base of every cuhouse matrix; ``isinstance(A, Operator)`` is "A is a cuhouse matrix"."""

    __array_ufunc__ = None  # ndarray @ A (and dask, and NumPy ufuncs) defer to A
    __array_priority__ = 1000
    _NAME = "A"  # the matrix in messages

    # ------------------------------------------------------------ attributes
    @property
    def ndim(self):
        return len(self.shape)

    @property
    def _xp(self):
        return module_named(self.backend)

    @property
    def _device(self):
        """The device of the parameters (``None`` on NumPy and CuPy)."""
        return device_of(self.params[0])

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
        """``self @ other`` for two cuhouse matrices: a lazy :class:`cuhouse.product.Product`."""
        from .product import Product

        return Product(self, other)

    def dot(self, x):
        """``A @ x``, as ``LinearOperator.dot``: an array, or a cuhouse matrix for a cuhouse matrix."""
        return self @ x

    def matvec(self, x):
        """``A x`` for ``x`` ``(d_in,)`` or ``(d_in, 1)``, as ``LinearOperator.matvec``. O(cost of A @ x)."""
        return self._product(x, "left")

    def rmatvec(self, x):
        """``A^H x`` (the adjoint) for ``x`` ``(d_out,)`` or ``(d_out, 1)``, as ``LinearOperator.rmatvec``."""
        return self._product(x, "left", transpose=True)

    def matmat(self, x):
        """``A X`` for ``X`` ``(d_in, m)``, as ``LinearOperator.matmat``."""
        return self._product(x, "left")

    def rmatmat(self, x):
        """``A^H X`` (the adjoint) for ``X`` ``(d_out, m)``, as ``LinearOperator.rmatmat``."""
        return self._product(x, "left", transpose=True)

    # Peak memory of todense() in units of its result (tracemalloc at d = 2000:
    # 4.06 for a HouseholderProduct, 6.06 for an SVDMatrix); see _validate.dense_memory.
    _TODENSE_WORKSPACE = 6

    def todense(self):
        """The dense matrix ``(..., d_out, d_in)``: ``A`` (or ``A^T``, for a wide
        matrix) applied to the smaller identity, so a wide result is a
        transposed view. ``MemoryError`` up front when the result and its
        intermediates cannot fit. Cost: one product with min(d_out, d_in) columns.
        """
        xp = self._xp
        rows, cols = self.shape[-2:]
        _validate.dense_memory(self.shape, self.dtype, "todense()", xp, self._TODENSE_WORKSPACE, self._device)
        like = creation_kwargs(self.params[0])
        if cols <= rows:
            return self._apply(xp.eye(cols, dtype=self.dtype, **like), False)
        return swap(self._conjugate()._apply(xp.eye(rows, dtype=self.dtype, **like), True), xp)

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
        dense = self.todense()
        return dense if dtype is None else dense.astype(dtype, copy=False)

    # ------------------------------------------------------------- products
    def _conjugate(self):
        """``conj(A)``, whose adjoint hook gives ``A^T``: ``A`` itself when real."""
        return self.conj() if is_complex(self.dtype) else self

    def _operand(self, x, side, transpose=False, name="X"):
        """Validate ``X`` of ``A @ X`` (``side == "left"``) or ``X @ A`` (``"right"``), once.

        With ``transpose``, ``A^T`` takes A's place; ``name`` is X's name in
        messages. Returns ``(x, columns, flip)``: ``x`` as validated (its own
        dtype), ``columns`` its ``(..., d, m)`` form in the result dtype (a
        vector is one column, ``X @ A`` is ``(A^T X^T)^T``), and whether the
        hook applies the adjoint. For ``side == "right"`` the hook is that of
        :meth:`_conjugate` (``X @ A = (conj(A)^H X^T)^T``).
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
        if _dask.is_dask_array(x):
            return _dask.matmul(self.H if transpose else self, x, side)
        x, columns, flip = self._operand(x, side, transpose, name)
        op = self._conjugate() if side == "right" else self
        out = op._apply(columns, flip)
        return contiguous(from_columns(out, x.ndim == 1, side, self._xp), self._xp)

    def _apply(self, columns, flip):
        """:meth:`_matmat`, or on torch, when a gradient is recorded, the differentiable
        :func:`cuhouse._torch.matmat` through cuhouse's adjoints."""
        if self.backend == "torch":
            from . import _torch

            if _torch.records_gradient(self, columns):
                return _torch.matmat(self, columns, flip)
        return self._matmat(columns, flip)

    def _logdet(self, value):
        """``value()``, the ``logdet`` of a subclass; on torch, when a gradient is recorded,
        the differentiable :func:`cuhouse._torch.logabsdet` through cuhouse's adjoint."""
        if self.backend == "torch":
            from . import _torch

            if _torch.records_gradient(self):
                return _torch.logabsdet(self)
        return value()

    # ------------------------------------------------------------ gradients
    def _vjp_matmul(self, x, side):
        """``A @ X`` (``X @ A``) and ``back(dout) -> (dparams, dX)``, for :func:`cuhouse.vjp`.

        ``dparams`` matches :attr:`params` (each in its leaf's float dtype),
        ``dX`` has X's shape and float dtype. The returned ``out`` is the
        caller's to modify: the backward keeps its own. Cost: the product now,
        about twice it in ``back``. A Dask array ``X`` gives a lazy ``out`` and
        lazy gradients (:func:`cuhouse._dask.vjp_matmul`).
        """
        if _dask.is_dask_array(x):
            return _dask.vjp_matmul(self, x, side)
        xp = self._xp
        if isinstance(x, Operator):
            raise TypeError(
                "vjp(matmul, A, X) differentiates a matrix times an array; got two cuhouse "
                "matrices ({} and {}): differentiate (A1 @ A2) @ X instead".format(
                    type(self).__name__, type(x).__name__
                )
            )
        x, columns, flip = self._operand(x, side)
        vector = x.ndim == 1
        op = self._conjugate() if side == "right" else self
        out_columns, back_columns = op._vjp_matmat(columns, flip)
        out = from_columns(out_columns, vector, side, xp)
        out = xp.array(out, order="C", copy=True) if is_native(xp) else contiguous(copy(out, xp), xp)
        device = self._device

        def back(dout):
            dout = _validate.cotangent(dout, "dout", out.shape, xp, self.check_finite, device)
            if is_complex(dout.dtype) and not is_complex(out.dtype):
                dout = xp.real(dout)  # L = Re(sum(conj(G) * out)) only sees Re(G) for a real out
            dout = astype(dout, out.dtype, xp)
            contributions, dcolumns = back_columns(to_columns(dout, vector, side, xp))
            dx = from_columns(dcolumns, vector, side, xp)
            if is_complex(dx.dtype) and not is_complex(x.dtype):
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


def _is_scipy_linear_operator(x):
    return any(
        c.__module__.startswith("scipy.sparse.linalg") and c.__name__ == "LinearOperator" for c in type(x).__mro__
    )


def to_columns(a, vector, side, xp):
    """The ``(..., d, m)`` form of an operand (or output) of ``A @ X`` / ``X @ A``: a view."""
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
    xp = _namespace(g)
    if extra:
        g = xp.sum(g, axis=tuple(range(extra)))
    axes = tuple(i for i, (gs, s) in enumerate(zip(g.shape, shape)) if s == 1 and gs != 1)
    if axes:
        g = xp.sum(g, axis=axes, keepdims=True)
    return g


def _namespace(a):
    """The module to call functions of ``a`` from: NumPy or CuPy natively, else its Array API namespace."""
    if isinstance(a, numpy.ndarray):
        return numpy
    from ._backend import array_module

    return array_module(a)


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
        if is_complex(grad.dtype) and not is_complex(leaf.dtype):
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
