"""``Product``: the lazy product of cuhouse matrices, ``A1 @ A2 @ ... @ Ak``.

``A @ B`` for any two cuhouse matrices is a cuhouse matrix: two
``HouseholderProduct``s compose into one; every other pair gives a
``Product``, which keeps its factors as ``args`` (as SciPy's composite
operators do) and applies them right to left through their private hooks.
"""

import functools
import operator

import numpy

from . import _complex, _validate
from ._backend import astype, copy, library_dtype, numpy_dtype, result_type
from ._operator import Operator


class Product(Operator):
    """The lazy product of its arguments, left to right (``args[0] @ args[1] @ ...``), shape ``(..., d_out, d_in)``.

    Nested products are flattened. ``params`` are the distinct leaf arrays of
    the factors, by identity, in order of first appearance; a leaf used twice
    gets the sum of its gradients. Cost: ``P @ X`` is the sum of the factors'
    costs; ``.T`` and ``.inv()`` are O(k).
    """

    def __init__(self, *args):
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
        _validate.batch_shape(*(("factor {}".format(i), f.shape[:-2]) for i, f in enumerate(factors)))
        self.args = tuple(factors)

    def _substitute(self, mapping):
        """The product of the factors on other leaf arrays (see ``HouseholderProduct._substitute``). O(k)."""
        return Product(*(f._substitute(mapping) for f in self.args))

    @property
    def shape(self):
        batch = numpy.broadcast_shapes(*(f.shape[:-2] for f in self.args))
        return batch + (self.args[0].shape[-2], self.args[-1].shape[-1])

    @property
    def dtype(self):
        return result_type(self._xp, *(f.dtype for f in self.args))

    @property
    def backend(self):
        return self.args[0].backend

    @property
    def check_finite(self):
        return all(f.check_finite for f in self.args)

    @property
    def params(self):
        """The distinct leaf arrays of the factors, by identity, first appearance first."""
        leaves = []
        for f in self.args:
            for leaf in f.params:
                if not any(leaf is seen for seen in leaves):
                    leaves.append(leaf)
        return tuple(leaves)

    def __repr__(self):
        return "Product(shape={}, dtype={}, factors=[{}])".format(
            self.shape, self.dtype, ", ".join(type(f).__name__ for f in self.args)
        )

    # --------------------------------------------------------------- algebra
    @property
    def T(self):
        """``Ak^T @ ... @ A1^T``. O(k)."""
        return Product(*(f.T for f in reversed(self.args)))

    @property
    def H(self):
        """The adjoint ``Ak^H @ ... @ A1^H``. O(k)."""
        return Product(*(f.H for f in reversed(self.args)))

    def conj(self):
        """The entrywise conjugate ``conj(A1) @ ... @ conj(Ak)`` (``self`` when real). O(k)."""
        return Product(*(f.conj() for f in self.args)) if _complex.is_complex(self.dtype) else self

    def inv(self):
        """``Ak^-1 @ ... @ A1^-1``; every factor must have ``inv()``. O(k)."""
        return Product(*(f.inv() for f in reversed(self.args)))

    def slogdet(self):
        """``(sign, log|det|)`` per batch entry: the factors' products and sums. Square factors. O(k r).

        As ``numpy.linalg.slogdet``: a complex sign and a real logarithm for complex factors."""
        signs, logs = zip(*(self._square(f, "slogdet()").slogdet() for f in self.args))
        batch = self.shape[:-2]
        xp = self._xp
        sign = xp.broadcast_to(functools.reduce(operator.mul, signs), batch)
        real = _real_dtype(self.dtype, xp)
        return copy(astype(sign, self.dtype, xp), xp), copy(astype(xp.broadcast_to(sum(logs), batch), real, xp), xp)

    def det(self):
        """``det`` per batch entry: the product of the factors' determinants. Square factors."""
        sign, logabs = self.slogdet()
        return sign * self._xp.exp(logabs)

    def logdet(self):
        """``log|det|`` per batch entry: the sum of the factors' ``logdet``. Square factors."""
        return self._logdet(lambda: self.slogdet()[1])

    def matmul(self, x):
        """``P @ X``; see :func:`cuhouse.matmul`."""
        return self @ x

    @staticmethod
    def _square(f, operation):
        rows, cols = f.shape[-2:]
        if rows != cols:
            raise ValueError(
                "{} of a Product needs square factors, but a factor is {}x{}".format(operation, rows, cols)
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
        parts = [self._square(f, "logdet()")._vjp_logabsdet() for f in self.args]
        value = astype(
            self._xp.broadcast_to(sum(v for v, _ in parts), self.shape[:-2]),
            _real_dtype(self.dtype, self._xp),
            self._xp,
        )

        def back(dvalue):
            return [pair for _, b in parts for pair in b(dvalue)]

        return value, back


def _real_dtype(dtype, xp):
    """The real dtype of ``dtype``'s parts, as a dtype of ``xp``."""
    return library_dtype(_complex.real_dtype(numpy_dtype(dtype)), xp)
