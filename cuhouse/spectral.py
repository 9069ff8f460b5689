"""SVD- and eigen-parameterized matrices: ``SVDMatrix`` and ``EighMatrix``.

``SVDMatrix(U, s, V)`` is W = U[:, :r] diag(s) V[:, :r]^H and
``EighMatrix(U, w)`` the symmetric (Hermitian) W = U diag(w) U^H, with U and V kept as
``HouseholderProduct``s, real (orthogonal) or complex (unitary), and s, w real.
Products cost two Householder applications, O(d n m); inverse, pseudo-inverse, Cayley map, powers, ``expm``, ``logm``,
clipping and the transpose are O(r) maps on the spectrum; determinants and
norms are O(r) reductions. Only ``from_dense`` (an SVD or eigendecomposition)
and ``todense`` cost O(d^3).

A derived matrix (``W.inv()``, ``W.T``, ``E.expm()``, ...) is the same kind of
object with a lineage: its parent, the element-wise map applied to the
parent's spectrum and that map's derivative. Gradients follow the lineage back
to the leaf arrays the user passed in (``params``). The spectrum of a derived
matrix is computed when it is derived; derive again after an optimizer step
changes ``s`` or ``w`` in place (and call ``refresh()`` on U and V).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Optional, Tuple, Union

import numpy

from . import _complex, _geqrf, _validate
from ._backend import (
    array_module,
    astype,
    backend_name,
    concat,
    copy,
    creation_kwargs,
    is_native,
    library_dtype,
    numpy_dtype,
    read_only,
    result_type,
    swap,
    to_host,
)
from ._operator import Operator
from ._shapes import batch_shape, namespace, reduce_to_shape
from ._typing import Array
from .householder import HouseholderProduct


class _SpectralMatrix(Operator):
    """W = L[:, :r] diag(values) R[:, :r]^H with Householder products L, R and real values.

    The shared algebra of :class:`SVDMatrix` and :class:`EighMatrix`. A root
    (made by the constructor) holds the user's arrays, its leaves; a derived
    matrix holds its root and its parent, the name of
    the step that made it and the derivative of its values with respect to
    the parent's values (``None`` for a transpose).
    """

    _SPECTRUM = "s"  # the name of the spectrum in messages and ``params``
    _NAME = "W"

    def _init(self, left, values, right, root=None, parent=None, step=None, derivative=None, how=None):
        self._left, self._values, self._right = left, values, right
        if parent is None:  # a root: the caller's spectrum for the gradient, computed in the matrix's precision
            self._given = values
            xp = array_module(values)
            precision = _complex.real_dtype(result_type(xp, left.dtype, values.dtype, right.dtype))
            self._values = astype(values, precision, xp)
        self._root_matrix = root  # None for a root itself: no reference to self, so reference counting frees it
        self._parent, self._step, self._derivative = parent, step, derivative
        self._how = how  # (map, transpose, conjugate) that made this matrix from its parent
        self._backend = backend_name(array_module(values))

    def _root(self):
        """The root matrix this one derives from (itself for a root): it holds ``params``."""
        return self if self._root_matrix is None else self._root_matrix

    def _derive(self, step, spectral_map, transpose=False, conjugate=False):
        """A child with ``(values, derivative) = spectral_map(self.values)`` (element-wise: the new
        values and their derivative; ``None`` for the identity map); its sides swapped
        (``transpose``, for W^H) and/or conjugated (``conjugate``). O(r)."""
        left, right = (self._right, self._left) if transpose else (self._left, self._right)
        if conjugate:
            left, right = (left.conj(),) * 2 if left is right else (left.conj(), right.conj())
        values, derivative = (self._values, None) if spectral_map is None else spectral_map(self._values)
        child = type(self).__new__(type(self))
        child._init(left, values, right, self._root(), self, step, derivative, (spectral_map, transpose, conjugate))
        return child

    # ------------------------------------------------------------ attributes
    @property
    def params(self) -> Tuple[Array, ...]:
        """The leaf arrays gradients are taken with respect to (shared by every derived matrix)."""
        return self._root()._params

    @property
    def rank(self) -> int:
        """r, the number of stored singular values (eigenvalues)."""
        return self._values.shape[-1]

    @property
    def shape(self) -> Tuple[int, ...]:
        batch = numpy.broadcast_shapes(self._left.shape[:-2], self._values.shape[:-1], self._right.shape[:-2])
        return batch + (self._left.shape[-1], self._right.shape[-1])

    @property
    def dtype(self) -> numpy.dtype:
        return result_type(self._xp, self._left.dtype, self._values.dtype, self._right.dtype)

    @property
    def backend(self) -> str:
        """``"numpy"`` or ``"cupy"``."""
        return self._backend

    @property
    def check_finite(self) -> bool:
        """Whether NaN/Inf in every ``X`` is rejected (as the root was built)."""
        return self._root()._check_finite

    @property
    def lineage(self) -> str:
        """How this matrix was derived from its root, e.g. ``"W.inv().T"``."""
        node, steps = self, []
        while node._parent is not None:
            steps.append(node._step)
            node = node._parent
        return ".".join([self._NAME] + steps[::-1])

    def _describe(self):
        return (("rank", self.rank), ("lineage", repr(self.lineage)))

    # --------------------------------------------------------------- algebra
    @property
    def H(self) -> _SpectralMatrix:
        """The adjoint (conjugate transpose) R diag(values) L^H (the matrix itself when symmetric or
        Hermitian); :attr:`T` when real. O(1)."""
        if self._left is self._right:
            return self
        return self._derive("H", None, transpose=True)

    @property
    def T(self) -> _SpectralMatrix:
        """The transpose conj(R) diag(values) conj(L)^H (the matrix itself when real symmetric). O(1)."""
        unitary = _complex.is_complex(self.dtype)
        if self._left is self._right and not unitary:
            return self
        return self._derive("T", None, transpose=self._left is not self._right, conjugate=unitary)

    def conj(self) -> _SpectralMatrix:
        """The entrywise conjugate conj(L) diag(values) conj(R)^H (``self`` when real). O(1)."""
        if not _complex.is_complex(self.dtype):
            return self
        return self._derive("conj()", None, conjugate=True)

    def inv(self) -> _SpectralMatrix:
        """W^{-1} = R diag(1/values) L^T; square, full rank, every value nonzero. O(r).

        Returns
        -------
        SVDMatrix or EighMatrix
            Lazy, of W's type; gradients reach W's leaves.

        Examples
        --------
        >>> import numpy as np
        >>> import cuhouse as ch
        >>> W = ch.SVDMatrix.random(4, 4, rng=0)
        >>> np.allclose(W.inv().todense(), np.linalg.inv(W.todense()))
        True
        """
        self._require_full_rank("inv()", "use pinv() for a pseudo-inverse")
        self._require_values("inv()", self._values != 0, "every {} nonzero (W is singular); use pinv()")
        with numpy.errstate(over="ignore"):
            values = 1 / self._values
        self._require_values("inv()", self._xp.isfinite(values), "every 1/{} finite (W is numerically singular)")
        return self._derive("inv()", _reciprocal, transpose=True)

    def pinv(self, rcond: float = 1e-15) -> _SpectralMatrix:
        """Moore-Penrose pseudo-inverse, shape ``(..., d_in, d_out)``. O(r).

        As ``numpy.linalg.pinv``: values with ``|v| <= rcond * max|v|`` count
        as zero. The cut-off is held fixed in the gradient.

        Returns
        -------
        SVDMatrix or EighMatrix
            Lazy, of W's type.

        Examples
        --------
        >>> import numpy as np
        >>> import cuhouse as ch
        >>> W = ch.SVDMatrix.random(5, 3, rng=0)
        >>> np.allclose(W.pinv().todense(), np.linalg.pinv(W.todense()))
        True
        """
        rcond = _validate.non_negative_real(rcond, "rcond")
        return self._derive("pinv()", functools.partial(_pseudo_reciprocal, rcond), transpose=True)

    def solve(self, b: Array) -> Array:
        """X with W X = B, as ``numpy.linalg.solve``: B ``(d,)`` or ``(..., d, m)``. O(d n m).

        Returns
        -------
        array
            Shaped like ``B`` (with W's batch dimensions in front).

        Examples
        --------
        >>> import numpy as np
        >>> import cuhouse as ch
        >>> W = ch.SVDMatrix.random(4, 4, rng=0)
        >>> b = np.arange(4.0)
        >>> np.allclose(W @ W.solve(b), b)
        True
        """
        self._require_full_rank("solve()", "use pinv() @ B for least squares")
        return self.inv()._product(b, "left", name="B")

    def _sides_det(self):
        """det L conj(det R): the determinant of the unitary part. O(n)."""
        right = self._right.det()
        return self._left.det() * (self._xp.conj(right) if _complex.is_complex(right.dtype) else right)

    def det(self) -> Array:
        """det W per batch entry: det U conj(det V) prod(s) (0 when r < d). Square W. O(r)."""
        self._require_square("det()")
        xp = self._xp
        if self.rank < self.shape[-1]:
            return xp.zeros(self.shape[:-2], dtype=self.dtype, **creation_kwargs(self._values))
        det = self._sides_det() * xp.prod(self._values, axis=-1)
        return _batch_array(det, self.shape[:-2], self.dtype, xp)

    def slogdet(self) -> Tuple[Array, Array]:
        """``(sign, log|det W|)`` per batch entry, as ``numpy.linalg.slogdet``: for complex W the sign
        is complex of modulus 1 (0 when singular) and the logarithm real. Square W. O(r)."""
        self._require_square("slogdet()")
        xp = self._xp
        batch = self.shape[:-2]
        real = library_dtype(_complex.real_dtype(numpy_dtype(self.dtype)), xp)
        if self.rank < self.shape[-1]:
            like = creation_kwargs(self._values)
            return xp.zeros(batch, dtype=self.dtype, **like), xp.full(batch, -numpy.inf, dtype=real, **like)
        sign = self._sides_det() * xp.prod(xp.sign(self._values), axis=-1)
        with numpy.errstate(divide="ignore"):
            logabs = xp.sum(xp.log(xp.abs(self._values)), axis=-1)
        return _batch_array(sign, batch, self.dtype, xp), _batch_array(logabs, batch, real, xp)

    def singular_values(self) -> Array:
        """All min(d_out, d_in) singular values ``(..., min(d_out, d_in))``, unsorted: ``|values|``, zero-padded.

        Returns
        -------
        array
            ``(..., min(d_out, d_in))``, real.

        Examples
        --------
        >>> import numpy as np
        >>> import cuhouse as ch
        >>> W = ch.SVDMatrix(np.eye(3)[:1], np.array([-2.0, 1.0]), np.eye(2)[:1])  # 3 x 2
        >>> W.singular_values()
        array([2., 1.])
        """
        xp = self._xp
        magnitude = xp.abs(self._values)
        missing = min(self.shape[-2:]) - self.rank
        if missing:
            zeros = xp.zeros(magnitude.shape[:-1] + (missing,), dtype=magnitude.dtype, **creation_kwargs(magnitude))
            magnitude = concat([magnitude, zeros], -1, xp)
        return xp.broadcast_to(magnitude, self.shape[:-2] + magnitude.shape[-1:])

    def norm(self, ord: Union[int, str, None] = None) -> Array:
        """Matrix norm per batch entry, as ``numpy.linalg.norm``: ord in None/"fro", "nuc", 2, -2. O(r).

        Returns
        -------
        array
            Real, of shape ``W.shape[:-2]``.

        Examples
        --------
        >>> import numpy as np
        >>> import cuhouse as ch
        >>> W = ch.SVDMatrix.random(4, 4, rng=0)
        >>> bool(np.isclose(W.norm("nuc"), np.linalg.norm(W.todense(), "nuc")))
        True
        """
        sigma = self.singular_values()
        if ord is None or ord == "fro":
            return self._xp.sqrt(self._xp.sum(sigma * sigma, axis=-1))
        if ord == "nuc":
            return self._xp.sum(sigma, axis=-1)
        if ord == 2:
            return self._xp.max(sigma, axis=-1)
        if ord == -2:
            return self._xp.min(sigma, axis=-1)
        raise ValueError("ord must be one of None, 'fro', 'nuc', 2, -2, got {!r}".format(ord))

    def cond(self, p: Union[int, str, None] = None) -> Array:
        """Condition number per batch entry, as ``numpy.linalg.cond``: p in None/2, -2, "fro", "nuc". O(r).

        ``inf`` for a singular matrix (the zero matrix included); "fro" and
        "nuc" need a square W.

        Returns
        -------
        array
            Real, of shape ``W.shape[:-2]``.

        Examples
        --------
        >>> import numpy as np
        >>> import cuhouse as ch
        >>> W = ch.SVDMatrix.random(4, 4, rng=0)
        >>> bool(np.isclose(W.cond(), np.linalg.cond(W.todense())))
        True
        """
        xp = self._xp
        if p in ("fro", "nuc"):
            self._require_square("cond(p={!r})".format(p))
            sigma = self.singular_values()
            with numpy.errstate(divide="ignore"):
                inverse = xp.where(
                    sigma > 0, 1 / xp.where(sigma > 0, sigma, xp.ones_like(sigma)), xp.full_like(sigma, numpy.inf)
                )
            power = 2 if p == "fro" else 1
            with numpy.errstate(invalid="ignore"):
                result = (xp.sum(sigma**power, axis=-1) * xp.sum(inverse**power, axis=-1)) ** (1 / power)
        elif p is None or p in (2, -2):
            with numpy.errstate(divide="ignore", invalid="ignore"):
                ratio = self.norm(2) / self.norm(-2)
                result = ratio if p != -2 else 1 / ratio
        else:
            raise ValueError("p must be one of None, 2, -2, 'fro', 'nuc', got {!r}".format(p))
        return xp.where(xp.isnan(result), xp.full_like(result, numpy.inf), result)  # 0 * inf or 0 / 0: the zero matrix

    # ------------------------------------------------------------- products
    def _sides(self, transpose):
        """``(outer, inner)``: W x = outer (values * inner^H x); W^H swaps L and R."""
        return (self._right, self._left) if transpose else (self._left, self._right)

    def _matmat(self, columns, transpose):
        """``W @ x`` (``W^H @ x``): inner^H, scale, outer. O(d n m)."""
        outer, inner = self._sides(transpose)
        y = inner._matmat(columns, True)
        return outer._matmat(self._scale(y, outer.shape[-1]), False)

    def _scale(self, y, rows):
        """``diag(values) y[:r]`` zero-padded to ``rows`` rows: ``(..., d, m) -> (..., rows, m)``. O(r m)."""
        r, xp = self.rank, self._xp
        scaled = astype(self._values, y.dtype, xp)[..., :, None] * y[..., :r, :]
        if rows == r:
            return scaled
        if not is_native(xp):  # no writes into a view on the generic path
            zeros = xp.zeros(scaled.shape[:-2] + (rows - r, y.shape[-1]), dtype=scaled.dtype, **creation_kwargs(y))
            return xp.concat([scaled, zeros], axis=-2)
        out = xp.zeros(scaled.shape[:-2] + (rows, y.shape[-1]), dtype=scaled.dtype)
        out[..., :r, :] = scaled
        return out

    # ------------------------------------------------------------ gradients
    def _vjp_matmat(self, columns, transpose):
        """``W @ x`` (``W^H @ x``) through the factors' own hooks; the spectrum's gradient chained to its
        leaf (real: ``Re(sum(conj(dz) * y))`` for complex data)."""
        xp = self._xp
        outer, inner = self._sides(transpose)
        y, back_inner = inner._vjp_matmat(columns, True)
        out, back_outer = outer._vjp_matmat(self._scale(y, outer.shape[-1]), False)
        r = self.rank

        def back(dout):
            outer_contributions, dz = back_outer(dout)
            unitary = _complex.is_complex(dz.dtype)
            product = xp.conj(dz[..., :r, :]) * y[..., :r, :] if unitary else dz[..., :r, :] * y[..., :r, :]
            dvalues = xp.real(xp.sum(product, axis=-1)) if unitary else xp.sum(product, axis=-1)
            dy = reduce_to_shape(self._scale(dz, inner.shape[-1]), y.shape)
            inner_contributions, dx = back_inner(dy)
            return outer_contributions + [self._to_leaf_values(dvalues)] + inner_contributions, dx

        return out, back

    def _vjp_logabsdet(self):
        """``log|det W|`` and its adjoint: only the spectrum gets a gradient. Every value nonzero."""
        self._require_full_rank("the gradient of logdet", "log|det W| is -inf")
        if self.check_finite or is_native(self._xp):  # no host synchronization on the generic path otherwise
            self._require_values(
                "the gradient of logdet",
                self._values != 0,
                "every {} nonzero (log|det W| is -inf at a singular matrix)",
            )
        values = self._values
        return self.slogdet()[1], lambda dvalue: [self._to_leaf_values(dvalue[..., None] / values)]

    def _to_leaf_values(self, dvalues):
        """``(leaf spectrum, gradient)``: ``dvalues`` chained back along the lineage."""
        node = self
        while node._parent is not None:
            if node._derivative is not None:
                dvalues = dvalues * node._derivative
            node = node._parent
        return node._given, dvalues

    # ---------------------------------------------------------------- checks
    def _require_square(self, operation):
        rows, cols = self.shape[-2:]
        if rows != cols:
            raise ValueError("{} needs a square matrix, but {} is {}x{}".format(operation, self.lineage, rows, cols))

    def _require_full_rank(self, operation, hint):
        self._require_square(operation)
        if self.rank < self.shape[-1]:
            raise ValueError(
                "{} needs a full-rank square matrix, but {} is {}x{} with rank r={}; {}".format(
                    operation, self.lineage, self.shape[-2], self.shape[-1], self.rank, hint
                )
            )

    def _require_values(self, operation, ok, expected):
        """``ValueError`` naming the first value where the mask ``ok`` is False."""
        if not bool(self._xp.all(ok)):
            where = tuple(int(i) for i in numpy.argwhere(to_host(~ok))[0])
            bad = float(self._values[where])
            raise ValueError(
                "{} needs {}, got {}{} = {!r}".format(
                    operation, expected.format(self._SPECTRUM), self._SPECTRUM, list(where), bad
                )
            )


# ------------------------------------------------ element-wise spectral maps: v -> (f(v), f'(v))
def _reciprocal(v):
    values = 1 / v
    return values, -values * values


def _pseudo_reciprocal(rcond, v):
    """1/v where ``|v| > rcond max|v|``, else 0 (the cut-off held fixed in the derivative)."""
    xp = namespace(v)
    magnitude = xp.abs(v)
    kept = magnitude > rcond * xp.max(magnitude, axis=-1, keepdims=True)
    values = xp.where(kept, 1 / xp.where(kept, v, xp.ones_like(v)), xp.zeros_like(v))
    return values, -values * values


def _clipped(lo, hi, v):
    """|v| clipped to ``[lo, hi]``, signs kept; derivative 1 inside, 0 outside."""
    xp = namespace(v)
    magnitude = xp.abs(v)
    kept = xp.clip(magnitude, lo, hi)
    inside = astype((magnitude >= lo) & (magnitude <= hi), v.dtype, xp)
    return astype(xp.where(v < 0, -kept, kept), v.dtype, xp), inside


def _power(p, v):
    return v**p, (p * v ** (p - 1) if p else namespace(v).zeros_like(v))


def _exp(v):
    values = namespace(v).exp(v)
    return values, values


def _log(v):
    return namespace(v).log(v), 1 / v


def _sqrt(v):
    values = namespace(v).sqrt(v)
    return values, 0.5 / values


def _cayley(v):
    plus = 1 + v
    return (1 - v) / plus, -2 / (plus * plus)


def _batch_array(a, batch, dtype, xp):
    """``a`` broadcast to the batch shape as a new writable array of ``dtype``. O(batch size)."""
    if not is_native(xp):
        return copy(astype(xp.broadcast_to(a, batch), dtype, xp), xp)
    return xp.broadcast_to(a, batch).astype(dtype)


def _householder(obj, name, check_finite):
    """``obj`` if it is a ``HouseholderProduct``, else one built from its vectors."""
    if isinstance(obj, HouseholderProduct):
        return obj
    if isinstance(obj, Operator):
        raise TypeError(
            "{} must be a HouseholderProduct or an array of Householder vectors (..., n, d), got {}".format(
                name, type(obj).__name__
            )
        )
    try:
        return HouseholderProduct(obj, check_finite=check_finite)
    except (TypeError, ValueError) as exc:
        raise type(exc)("{}: {}".format(name, exc)) from None


def _spectrum(values, name, xp, check_finite):
    """The spectrum ``(..., r)`` as a real float array (the caller's array when already float)."""
    values = _validate.as_array(values, name, xp)
    if _complex.is_complex(values.dtype):
        raise TypeError(
            "{} must be real (the {} of a unitary decomposition are real), got dtype {}; "
            "move a phase into U or V instead".format(
                name, "singular values" if name == "s" else "eigenvalues", values.dtype
            )
        )
    if values.ndim < 1 or values.shape[-1] == 0:
        raise ValueError("{} must have shape (..., r) with r >= 1, got shape {}".format(name, tuple(values.shape)))
    values = astype(values, _validate.float_dtype(values.dtype, xp), xp)
    if check_finite and not bool(xp.all(xp.isfinite(values))):
        raise ValueError("{} must be finite; found NaN or Inf".format(name))
    return values


def _householder_from_orthonormal(q, xp):
    """``(H, signs)`` with ``H[:, :r] = q diag(signs)`` for orthonormal columns ``q`` ``(..., d, r)``. O(d r^2).

    Complex ``q``: the phases of a QR's R could not move into a real spectrum,
    so the reflectors are LAPACK's complex ones with R the identity
    (:func:`cuhouse._geqrf.geqrf_exact`) and ``signs`` is 1.
    """
    if _complex.is_complex(q.dtype):
        a, tau = _geqrf.geqrf_exact(q, xp)
        return HouseholderProduct.from_lapack(a, tau), 1
    a, tau, signs = _geqrf.geqrf_signed(q, xp)
    return HouseholderProduct.from_lapack(a, tau), signs


class SVDMatrix(_SpectralMatrix):
    """W = U[:, :r] diag(s) V[:, :r]^H, shape ``(..., d_out, d_in)``.

    Parameters
    ----------
    U, V : HouseholderProduct or array of Householder vectors
        U is d_out x d_out, V is d_in x d_in (vectors ``(..., n, d)``); real
        (orthogonal) or complex (unitary: W is complex).
    s : array_like, shape ``(..., r)``
        The singular values, ``1 <= r <= min(d_out, d_in)``, real (complex s is
        a ``TypeError``). They may carry signs: the singular values of W are ``|s|``.
    check_finite : bool
        Reject NaN/Inf in ``s`` and in every operand.

    Notes
    -----
    ``params`` is ``U.params + (s,) + V.params``, that is
    ``(U.vectors, s, V.vectors)`` for products built from one vector array.
    Batch dimensions of U, s and V broadcast. Cost: ``W @ X`` with X
    ``(d_in, m)`` is O((d_in n_V + d_out n_U) m), so O(d r m) when U and V
    have r reflections; the spectral operations are O(r).

    Examples
    --------
    >>> import numpy as np
    >>> import cuhouse as ch
    >>> rng = np.random.default_rng(0)
    >>> U = ch.HouseholderProduct(rng.standard_normal((4, 4)))
    >>> V = ch.HouseholderProduct(rng.standard_normal((3, 3)))
    >>> W = ch.SVDMatrix(U, np.array([3.0, 2.0, 1.0]), V)
    >>> W.shape
    (4, 3)
    >>> np.allclose(np.linalg.svd(W.todense(), compute_uv=False), [3.0, 2.0, 1.0])
    True
    """

    def __init__(
        self,
        U: Union[HouseholderProduct, Array],
        s: Array,
        V: Union[HouseholderProduct, Array],
        *,
        check_finite: bool = True,
    ) -> None:
        U, V = _householder(U, "U", check_finite), _householder(V, "V", check_finite)
        xp = array_module(*U.params, s, *V.params)
        s = _spectrum(s, "s", xp, check_finite)
        r, d_out, d_in = s.shape[-1], U.shape[-1], V.shape[-1]
        if r > min(d_out, d_in):
            raise ValueError(
                "s has r={} values but U is {}x{} and V is {}x{}: "
                "W = U[:, :r] diag(s) V[:, :r]^T needs r <= min(d_out, d_in) = {}".format(
                    r, d_out, d_out, d_in, d_in, min(d_out, d_in)
                )
            )
        batch_shape(("U", U.shape[:-2]), ("s", s.shape[:-1]), ("V", V.shape[:-2]))
        self._init(U, s, V)
        self._params = U.params + (s,) + V.params
        self._check_finite = bool(check_finite)

    @property
    def U(self) -> HouseholderProduct:
        """The left Householder product (d_out x d_out)."""
        return self._left

    @property
    def s(self) -> Array:
        """The singular values ``(..., r)`` (signed; derived for a derived matrix); read-only (NumPy)."""
        return read_only(self._values)

    @property
    def V(self) -> HouseholderProduct:
        """The right Householder product (d_in x d_in)."""
        return self._right

    def clip(self, lo: float = 0.0, hi: float = numpy.inf) -> SVDMatrix:
        """Spectral clipping: singular values ``|s|`` clipped to ``[lo, hi]``, signs kept. O(r).

        The gradient passes where ``lo <= |s| <= hi`` and is zero elsewhere.

        Returns
        -------
        SVDMatrix
            Lazy; gradients reach U, s and V.

        Examples
        --------
        >>> import numpy as np
        >>> import cuhouse as ch
        >>> W = ch.SVDMatrix(np.eye(3)[:1], np.array([0.5, 1.0, 3.0]), np.eye(3)[:1])
        >>> np.sort(W.clip(0.9, 1.1).singular_values())
        array([0.9, 1. , 1.1])
        """
        lo, hi = _validate.real_number(lo, "lo"), _validate.real_number(hi, "hi")
        if not 0 <= lo <= hi:
            raise ValueError("clip needs 0 <= lo <= hi, got lo={!r}, hi={!r}".format(lo, hi))
        return self._derive("clip({!r}, {!r})".format(lo, hi), functools.partial(_clipped, lo, hi))

    def expm(self) -> _SpectralMatrix:
        """Not defined for U diag(s) V^T; a matrix function needs ``EighMatrix``."""
        raise TypeError(
            "expm() needs a symmetric matrix U diag(w) U^T, but an SVDMatrix has independent U and "
            "V; build it as cuhouse.EighMatrix(U, w) to use expm, logm, sqrtm, power or cayley"
        )

    @classmethod
    def from_dense(cls, a: Array, rank: Optional[int] = None, *, check_finite: bool = True) -> SVDMatrix:
        """The SVD of ``a`` ``(..., d_out, d_in)`` with Householder singular vectors.

        ``rank`` keeps the r largest singular values (the best rank-r
        approximation); the default keeps min(d_out, d_in). U and V get at
        most r reflections each; the signs of the QR that turns the singular
        vectors into reflections move into ``s``. Cost: O(d^3) once.

        Returns
        -------
        SVDMatrix
            ``(..., d_out, d_in)`` of rank r.

        Examples
        --------
        >>> import numpy as np
        >>> import cuhouse as ch
        >>> A = np.random.default_rng(0).standard_normal((4, 3))
        >>> np.allclose(ch.SVDMatrix.from_dense(A).todense(), A)
        True
        >>> ch.SVDMatrix.from_dense(A, rank=1).rank
        1
        """
        xp = array_module(a)
        a = _validate.dense_matrix(a, "A", xp)
        full = min(a.shape[-2:])
        r = full if rank is None else _validate.positive_int_or_none(rank, "rank")
        if r > full:
            raise ValueError(
                "rank must be at most min(d_out, d_in) = {} for A of shape {}, got {}".format(full, tuple(a.shape), r)
            )
        left, sigma, right_h = xp.linalg.svd(a, full_matrices=False)
        right = swap(right_h, xp)
        U, u_signs = _householder_from_orthonormal(left[..., :r], xp)
        V, v_signs = _householder_from_orthonormal(
            xp.conj(right[..., :r]) if _complex.is_complex(right.dtype) else right[..., :r], xp
        )
        return cls(U, sigma[..., :r] * u_signs * v_signs, V, check_finite=check_finite)

    @classmethod
    def random(
        cls,
        d_out: int,
        d_in: int,
        rank: Optional[int] = None,
        rng: Any = None,
        *,
        dtype: Any = numpy.float64,
        batch_shape: Tuple[int, ...] = (),
        spread: float = 0.1,
    ) -> SVDMatrix:
        """A random layer: Gaussian Householder vectors (r per side) and s uniform in 1 +- spread.

        ``rng`` is anything ``numpy.random.default_rng`` accepts. NumPy arrays.
        A complex ``dtype`` gives complex Gaussian vectors (a unitary U and V) and real s.

        Returns
        -------
        SVDMatrix
            ``(*batch_shape, d_out, d_in)`` of rank ``min(d_out, d_in)`` unless given.

        Examples
        --------
        >>> import cuhouse as ch
        >>> W = ch.SVDMatrix.random(6, 4, rng=0, batch_shape=(2,))
        >>> W.shape, W.rank
        ((2, 6, 4), 4)
        """
        d_out, d_in = _validate.positive_int(d_out, "d_out"), _validate.positive_int(d_in, "d_in")
        rng = numpy.random.default_rng(rng)
        full = min(d_out, d_in)
        r = full if rank is None else _validate.positive_int_or_none(rank, "rank")
        if r > full:
            raise ValueError("rank must be at most min(d_out, d_in) = {}, got {}".format(full, r))
        batch_shape = tuple(batch_shape)
        dtype = numpy.dtype(dtype)

        def gaussian(shape):
            g = rng.standard_normal(shape)
            return (g + 1j * rng.standard_normal(shape) if dtype.kind == "c" else g).astype(dtype)

        u = gaussian(batch_shape + (r, d_out))
        v = gaussian(batch_shape + (r, d_in))
        s = rng.uniform(1 - spread, 1 + spread, batch_shape + (r,)).astype(_complex.real_dtype(dtype))
        return cls(u, s, v)


class EighMatrix(_SpectralMatrix):
    """The symmetric W = U diag(w) U^T, shape ``(..., d, d)``; Hermitian U diag(w) U^H for a complex (unitary) U.

    Parameters
    ----------
    U : HouseholderProduct or array of Householder vectors ``(..., n, d)``
    w : array_like, shape ``(..., d)``
        The eigenvalues (real; complex w is a ``TypeError``).

    Notes
    -----
    ``params`` is ``U.params + (w,)``. Matrix functions (``expm``, ``logm``,
    ``sqrtm``, ``power``, ``cayley``, ``inv``) map w element-wise: O(d), and
    the result is again an ``EighMatrix``. ``W @ X`` costs O(d n m).

    Examples
    --------
    >>> import numpy as np
    >>> import cuhouse as ch
    >>> U = ch.HouseholderProduct(np.random.default_rng(0).standard_normal((3, 3)))
    >>> E = ch.EighMatrix(U, np.array([1.0, 2.0, 3.0]))
    >>> np.allclose(np.linalg.eigvalsh(E.todense()), [1.0, 2.0, 3.0])
    True
    """

    _SPECTRUM = "w"
    _NAME = "E"

    def __init__(self, U: Union[HouseholderProduct, Array], w: Array, *, check_finite: bool = True) -> None:
        U = _householder(U, "U", check_finite)
        xp = array_module(*U.params, w)
        w = _spectrum(w, "w", xp, check_finite)
        d = U.shape[-1]
        if w.shape[-1] != d:
            raise ValueError(
                "w must have shape (..., d) with d={} to match U ({}x{}), got shape {}".format(d, d, d, tuple(w.shape))
            )
        batch_shape(("U", U.shape[:-2]), ("w", w.shape[:-1]))
        self._init(U, w, U)
        self._params = U.params + (w,)
        self._check_finite = bool(check_finite)

    @property
    def U(self) -> HouseholderProduct:
        """The eigenvectors as a Householder product (d x d)."""
        return self._left

    @property
    def w(self) -> Array:
        """The eigenvalues ``(..., d)`` (derived for a derived matrix); read-only (NumPy)."""
        return read_only(self._values)

    def expm(self) -> _SpectralMatrix:
        """The matrix exponential U diag(exp w) U^T. O(d).

        Returns
        -------
        EighMatrix
            Lazy; gradients reach U and w.

        Examples
        --------
        >>> import numpy as np
        >>> import scipy.linalg
        >>> import cuhouse as ch
        >>> E = ch.EighMatrix(np.ones((1, 3)), np.array([0.0, 1.0, 2.0]))
        >>> np.allclose(E.expm().todense(), scipy.linalg.expm(E.todense()))
        True
        """
        return self._derive("expm()", _exp)

    def logm(self) -> EighMatrix:
        """The principal logarithm U diag(log w) U^T; every w > 0. O(d)."""
        self._require_values("logm()", self._values > 0, "every {} > 0 (a positive definite matrix)")
        return self._derive("logm()", _log)

    def sqrtm(self) -> EighMatrix:
        """The principal square root U diag(sqrt w) U^T; every w > 0. O(d).

        Returns
        -------
        EighMatrix

        Examples
        --------
        >>> import numpy as np
        >>> import cuhouse as ch
        >>> E = ch.EighMatrix(np.eye(3)[:1], np.array([1.0, 4.0, 9.0]))
        >>> np.allclose(E.sqrtm().todense(), np.diag([1.0, 2.0, 3.0]))
        True
        """
        self._require_values("sqrtm()", self._values > 0, "every {} > 0 (a positive definite matrix)")
        return self._derive("sqrtm()", _sqrt)

    def power(self, p: float) -> EighMatrix:
        """W**p = U diag(w**p) U^T, as ``scipy.linalg.fractional_matrix_power``. O(d).

        An integer p allows any w (nonzero when p < 0); a fractional p needs every w > 0.

        Returns
        -------
        EighMatrix

        Examples
        --------
        >>> import numpy as np
        >>> import cuhouse as ch
        >>> E = ch.EighMatrix(np.eye(3)[:1], np.array([1.0, 4.0, 9.0]))
        >>> np.allclose(E.power(-0.5).todense(), np.diag([1.0, 0.5, 1.0 / 3.0]))
        True
        """
        p = _validate.real_number(p, "p")
        if not numpy.isfinite(p):
            raise ValueError("power(p) needs a finite p, got {!r}".format(p))
        if not p.is_integer():
            self._require_values("power({!r})".format(p), self._values > 0, "every {} > 0 for a fractional power")
        elif p < 0:
            self._require_values("power({!r})".format(p), self._values != 0, "every {} nonzero for a negative power")
        return self._derive("power({!r})".format(p), functools.partial(_power, p))

    def cayley(self) -> EighMatrix:
        """The Cayley map (I - W)(I + W)^{-1} = U diag((1 - w)/(1 + w)) U^T; every w != -1. O(d).

        Returns
        -------
        EighMatrix

        Examples
        --------
        >>> import numpy as np
        >>> import cuhouse as ch
        >>> E = ch.EighMatrix(np.eye(3)[:1], np.array([1.0, 4.0, 9.0]))
        >>> I = np.eye(3)
        >>> np.allclose(E.cayley().todense(), (I - E.todense()) @ np.linalg.inv(I + E.todense()))
        True
        """
        self._require_values("cayley()", self._values != -1, "every {} != -1 (I + W invertible)")
        return self._derive("cayley()", _cayley)

    @classmethod
    def from_dense(cls, a: Array, *, check_finite: bool = True) -> EighMatrix:
        """The eigendecomposition of a symmetric (Hermitian) ``a`` ``(..., d, d)``, eigenvectors as reflections.

        ``a`` must be symmetric (Hermitian: ``A == A^H``) to within 100 eps of its largest entry.
        Cost: O(d^3) once.

        Returns
        -------
        EighMatrix
            ``(..., d, d)``.

        Examples
        --------
        >>> import numpy as np
        >>> import cuhouse as ch
        >>> A = np.array([[2.0, 1.0], [1.0, 2.0]])
        >>> E = ch.EighMatrix.from_dense(A)
        >>> np.allclose(E.todense(), A), np.allclose(np.sort(E.w), [1.0, 3.0])
        (True, True)
        """
        xp = array_module(a)
        a = _validate.dense_matrix(a, "A", xp)
        if a.shape[-1] != a.shape[-2]:
            raise ValueError("A must be square and symmetric, got shape {}".format(tuple(a.shape)))
        unitary = _complex.is_complex(a.dtype)
        adjoint = xp.conj(swap(a, xp)) if unitary else swap(a, xp)
        empty = not math.prod(a.shape)  # an empty batch
        asymmetry = 0.0 if empty else float(xp.max(xp.abs(a - adjoint)))
        scale = 0.0 if empty else float(xp.max(xp.abs(a)))
        if asymmetry > 100 * numpy.finfo(numpy_dtype(a.dtype)).eps * scale:
            raise ValueError(
                "A must be {}, but max |A - A^{}| = {:.3g} (max |A| = {:.3g}); "
                "use SVDMatrix.from_dense for a general matrix".format(
                    "Hermitian" if unitary else "symmetric", "H" if unitary else "T", asymmetry, scale
                )
            )
        w, vectors = xp.linalg.eigh(a)
        U, _ = _householder_from_orthonormal(vectors, xp)
        return cls(U, w, check_finite=check_finite)
