"""``HouseholderProduct``: a d x d orthogonal matrix kept as its reflections.

H = H(v_1) H(v_2) ... H(v_n) with H(v) = I - 2 v v^T / (v^T v); ``H @ X``
applies H(v_n) first. Nothing dense is formed unless asked: products cost
O(d n m) and run as GEMMs, ``.T``/``.inv()`` are free, ``det`` is (-1)^n.

The parameter arrays are treated as immutable: each algorithm's form of H (its
blocks' T matrices, W blocks, or the dense H) is built once, lazily, and reused
by every later product (the caches live in :class:`cuhouse._reflections.Reflections`).
After changing ``vectors`` in place (an optimizer step), call
:meth:`HouseholderProduct.refresh`.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy

from . import _complex, _generic, _geqrf, _memory, _reuse, _small, _validate, plan
from ._backend import (
    array_module,
    astype,
    backend_name,
    copy,
    creation_kwargs,
    is_native,
    numpy_dtype,
    read_only,
    result_type,
    swap,
)
from ._gpu import primitives
from ._operator import Operator
from ._reflections import ComplexReflections, Reflections, Segment
from ._shapes import batch_shape, matrix_count, reduce_to_shape
from ._typing import Array
from .algorithms import ALGORITHMS, PLANS, _layout, _scaling, portable

ALGORITHM_CHOICES = ("auto",) + tuple(ALGORITHMS)


def _generic_algorithm(algorithm):
    """``ValueError`` for an algorithm the generic path does not have."""
    if algorithm not in ("auto",) + portable.ALGORITHMS:
        raise ValueError(
            "algorithm={!r} runs on NumPy and CuPy only; arrays of other libraries run the generic path, "
            "which has {}".format(algorithm, ", ".join(map(repr, ("auto",) + portable.ALGORITHMS)))
        )


class HouseholderProduct(Operator):
    """The orthogonal matrix H = H(v_1) ... H(v_n), stored as its vectors.

    Parameters
    ----------
    vectors : array_like, shape ``(..., n, d)``
        One Householder vector per row, ``1 <= n <= d``; need not be
        normalized. Leading dimensions are a batch of matrices. NumPy or CuPy:
        the backend follows the array type. The array is kept, not copied.
    algorithm : {"auto", "cwy", "fasth", "sequential", "dense"}
        How products are computed; ``"auto"`` lets :mod:`cuhouse.plan` pick
        the algorithm and block size per call from (d, n, m, dtype, backend).
    block_size : int, optional
        Reflections per block for the blocked algorithms.
    check_finite : bool, optional
        Reject NaN/Inf in ``vectors`` and in every ``X``. Defaults to True on
        NumPy; on CuPy the check synchronizes, and defaults to True as well.

    Notes
    -----
    Cost: construction validates in O(n d); ``H @ X`` with X ``(d, m)`` is
    O(d n m) (plus an O(n k d) one-off build of the algorithm's form); ``.T``,
    ``.inv()``, ``det``, ``slogdet`` and ``logdet`` are O(1) per batch entry.

    Examples
    --------
    >>> import numpy as np
    >>> import cuhouse as ch
    >>> rng = np.random.default_rng(0)
    >>> H = ch.HouseholderProduct(rng.standard_normal((3, 5)))  # 3 reflections in 5 dimensions
    >>> H.shape, H.n_reflections
    ((5, 5), 3)
    >>> X = rng.standard_normal((5, 2))
    >>> np.allclose(H.T @ (H @ X), X)
    True
    >>> np.allclose(H.todense() @ X, H @ X)
    True
    """

    _NAME = "H"
    _TODENSE_WORKSPACE = _memory.DENSE_WORKSPACE

    def __init__(
        self, vectors: Array, algorithm: str = "auto", block_size: Optional[int] = None, *, check_finite: bool = True
    ) -> None:
        algorithm = _validate.choice(algorithm, "algorithm", ALGORITHM_CHOICES)
        block_size = _validate.positive_int_or_none(block_size, "block_size")
        core = _small.vectors_reflections(vectors, check_finite)
        if core is not None:  # the small-size path: one validation pass found nothing to handle
            self._init(core, False, algorithm, block_size)
            return
        xp = array_module(vectors)
        v = _validate.vectors(vectors, xp)
        segments = (Segment(0, False, None, None),)
        if _complex.is_complex(v.dtype):  # unitary: run realified (cuhouse._complex)
            if is_native(xp):
                _validate.vector_norms(primitives.row_norms(xp.abs(v), xp), xp, bool(check_finite))
            else:
                _generic_algorithm(algorithm)
                if check_finite:  # the generic path: no host synchronization with check_finite=False
                    _validate.vector_norms(_generic.row_norms(xp.abs(v), xp), xp, True)
            core = ComplexReflections(backend_name(xp), (v,), segments, bool(check_finite), v.dtype)
        elif is_native(xp):
            norms = primitives.row_norms(v, xp)
            summary = _validate.norm_summary(norms, xp)  # the one sync: validation and the build's facts
            _validate.vector_norms(norms, xp, bool(check_finite), summary=summary)
            core = Reflections(backend_name(xp), (v,), segments, bool(check_finite), v.dtype, norms, summary)
        else:
            _generic_algorithm(algorithm)
            if check_finite:  # on the generic path, check_finite=False means no host synchronization at all
                _validate.vector_norms(_generic.row_norms(v, xp), xp, True)
            core = Reflections(backend_name(xp), (v,), segments, bool(check_finite), v.dtype)
        self._init(core, False, algorithm, block_size)

    def _init(self, core, transpose, algorithm, block_size, conjugate=False):
        self._core = core
        self._transpose = transpose  # the adjoint: the reversed product
        self._conjugate = conjugate  # the entrywise conjugate (complex only)
        self.algorithm = algorithm
        self.block_size = block_size

    @classmethod
    def _view(cls, core, transpose, algorithm, block_size, conjugate=False):
        obj = cls.__new__(cls)
        obj._init(core, transpose, algorithm, block_size, conjugate)
        return obj

    @classmethod
    def from_lapack(
        cls,
        a: Array,
        tau: Array,
        algorithm: str = "auto",
        block_size: Optional[int] = None,
        *,
        check_finite: bool = True,
    ) -> HouseholderProduct:
        """Q = H(1) ... H(k) from the ``geqrf`` layout, real or complex.

        ``a`` ``(..., M, N)`` holds reflector i below the diagonal of column i
        (with an implicit 1 on the diagonal); ``tau`` ``(..., k)``, k <= min(M, N).
        This is what ``scipy.linalg.lapack.?geqrf``, ``scipy.linalg.qr(mode="raw")``
        and ``torch.geqrf`` return. The result is the M x M matrix Q of LAPACK
        ``orgqr``/``ormqr``.

        The reflectors are read from ``a`` in place (any memory order; nothing
        on or above the diagonal is read) and kept in their trapezoidal layout,
        so every product does LAPACK's flops. :attr:`params` is ``(a,)``: the
        caller's array (converted only when its dtype requires it), whose
        gradient is zero on and above the diagonal; ``tau`` is implied by ``a``
        (``tau_i = 2 / (1 + ||a[i+1:, i]||^2)``). A factor with ``tau == 0`` is
        the identity and gets zero gradient. Cost: one pass over the
        reflectors to check ``tau``, no copy.

        Complex ``a`` or ``tau`` (``?geqrf``, ``scipy.linalg.qr(mode="raw")`` and
        ``torch.geqrf`` of complex input): H_i = I - tau_i v_i v_i^H with complex
        tau_i, unitary but not Hermitian, and the result is ``?ungqr``'s Q. Each
        factor multiplies its vector by the unit number
        lambda_i = 1 - tau_i v_i^H v_i (-1 for a Hermitian reflection, 1 for
        ``tau == 0``), which is checked to modulus 1 and kept: tau is then implied
        by ``a`` and lambda (``tau_i = (1 - lambda_i) / v_i^H v_i``), and the
        gradient w.r.t. ``a`` holds every lambda_i fixed. ``det`` is the product of
        the lambda_i. The product runs realified (:mod:`cuhouse._complex`), with a
        copy of the reflectors.

        Returns
        -------
        HouseholderProduct
            ``Q`` ``(..., M, M)``, whose ``params`` are ``(a,)``.

        Examples
        --------
        >>> import numpy as np
        >>> import scipy.linalg
        >>> import cuhouse as ch
        >>> A = np.random.default_rng(0).standard_normal((5, 3))
        >>> (qr, tau), _ = scipy.linalg.qr(A, mode="raw")
        >>> Q = ch.HouseholderProduct.from_lapack(qr, tau)
        >>> np.allclose(Q.todense(), scipy.linalg.qr(A)[0])
        True
        """
        algorithm = _validate.choice(algorithm, "algorithm", ALGORITHM_CHOICES)
        block_size = _validate.positive_int_or_none(block_size, "block_size")
        core = _small.lapack_reflections(a, tau, check_finite)
        if core is not None:  # the small-size path: one validation pass found nothing to handle
            return cls._view(core, False, algorithm, block_size)
        xp = array_module(a, tau)
        if is_native(xp):
            a, k, identity, dtype, squared, phase = _geqrf.read_geqrf(a, tau, xp, bool(check_finite))
        else:
            _generic_algorithm(algorithm)
            a, k, identity, dtype, phase = _generic.read_geqrf(a, tau, xp, bool(check_finite))
            squared = None
        if phase is not None:
            segment = Segment(0, False, k, identity, False, phase)
            core = ComplexReflections(backend_name(xp), (a,), (segment,), bool(check_finite), dtype)
        else:
            segments = (Segment(0, False, k, identity),)
            core = Reflections(backend_name(xp), (a,), segments, bool(check_finite), dtype, squared_lengths=squared)
        return cls._view(core, False, algorithm, block_size)

    @classmethod
    def from_dense(
        cls, q: Array, algorithm: str = "auto", block_size: Optional[int] = None, *, check_finite: bool = True
    ) -> HouseholderProduct:
        """The Householder product equal to an orthogonal (or unitary) ``q``.

        ``q`` ``(..., d, d)`` orthogonal: at most d reflections and
        ``todense()`` equal to ``q`` to within 50 eps d. ``q`` ``(..., d, r)``
        with orthonormal columns: at most r reflections whose product's first
        r columns equal ``q``. Each reflector is chosen so that the QR's R is
        the identity; an identity factor (as ``tau == 0``) stands where a
        column needs no reflection (``q = I`` gives identity factors only).
        Input that is not orthogonal to 50 eps d is a ``ValueError``. A
        unitary (complex) ``q`` gives LAPACK's complex factors, see
        :meth:`from_lapack`: with only Hermitian reflections R could not be the
        identity. Cost: O(d r^2) once.

        Returns
        -------
        HouseholderProduct
            ``(..., d, d)``, of at most r reflections.

        Examples
        --------
        >>> import numpy as np
        >>> import cuhouse as ch
        >>> Q = np.linalg.qr(np.random.default_rng(0).standard_normal((4, 4)))[0]
        >>> H = ch.HouseholderProduct.from_dense(Q)
        >>> H.n_reflections <= 4, np.allclose(H.todense(), Q)
        (True, True)
        """
        xp = array_module(q)
        q = _validate.dense_matrix(q, "Q", xp)
        if q.shape[-1] > q.shape[-2]:
            raise ValueError(
                "Q must have shape (..., d, r) with r <= d (orthonormal columns), got shape {}".format(tuple(q.shape))
            )
        a, tau = _geqrf.geqrf_exact(q, xp)
        return cls.from_lapack(a, tau, algorithm, block_size, check_finite=check_finite)

    # ------------------------------------------------------------ attributes
    @property
    def vectors(self) -> Array:
        """The reflections ``(..., n, d)`` in product order: a read-only view (NumPy) of the caller's array
        (from :meth:`from_lapack` or ``H1 @ H2``, or complex: full rows, a copy made once). For
        LAPACK's complex factors the vectors alone do not give the product: each factor's
        eigenvalue is kept too (see :meth:`from_lapack`)."""
        v = self._core.vectors
        v = self._xp.flip(v, axis=-2) if self._transpose else v  # a view on NumPy and CuPy, a copy on torch
        return read_only(self._xp.conj(v)) if self._conjugate else v

    @property
    def params(self) -> Tuple[Array, ...]:
        """The leaf arrays that gradients are taken with respect to (the caller's own arrays)."""
        return tuple(self._core.params)

    @property
    def dtype(self) -> numpy.dtype:
        return self._core.dtype

    @property
    def shape(self) -> Tuple[int, ...]:
        shape = self._core.shape
        return tuple(shape[:-2]) + (shape[-1], shape[-1])

    @property
    def n_reflections(self) -> int:
        return self._core.shape[-2]

    @property
    def backend(self) -> str:
        """``"numpy"`` or ``"cupy"``."""
        return self._core.backend

    @property
    def check_finite(self) -> bool:
        """Whether NaN/Inf in the vectors and in every ``X`` is rejected."""
        return self._core.check_finite

    def _describe(self):
        return (("n_reflections", self.n_reflections), ("algorithm", repr(self.algorithm)))

    def refresh(self) -> HouseholderProduct:
        """Rebuild from the parameter arrays after they were updated in place.

        Re-validates the vectors and drops every cached form of H. Returns
        ``self``. Cost: O(n d) now, the build again at the next product.

        Returns
        -------
        HouseholderProduct
            ``self``, rebuilt.

        Examples
        --------
        >>> import numpy as np
        >>> import cuhouse as ch
        >>> V = np.eye(3)[:1].copy()
        >>> H = ch.HouseholderProduct(V)  # H(e_1)
        >>> V[0] = [0.0, 1.0, 0.0]  # an optimizer step, in place
        >>> H.refresh() @ np.array([1.0, 2.0, 3.0])  # H(e_2) now
        array([ 1., -2.,  3.])
        """
        core = self._core
        xp = core.xp
        for segment in core.segments:
            param = core.params[segment.param]
            if not is_native(xp):
                norms = _generic.row_norms(xp.abs(_generic.full_rows(param, segment, core.dtype, xp)), xp)
                _validate.vector_norms(norms, xp, core.check_finite, allow_zero_rows=segment.k is not None)
                continue
            if segment.k is None:
                norms = primitives.row_norms(xp.abs(_validate.vectors(param, xp)), xp)
            elif _complex.is_complex(param.dtype):  # a geqrf array: tau is implied by the stored entries (and lambda)
                reflectors = swap(param[..., : segment.k], xp)
                norms = xp.sqrt(1 + _complex.squared_norms(_layout.structured(reflectors.copy(), _layout.UNIT, xp), xp))
            else:  # read as from_lapack read them
                norms = xp.sqrt(_geqrf.squared_lengths(param, segment.k, xp))
            _validate.vector_norms(norms, xp, core.check_finite)
        core.refresh()
        return self

    # --------------------------------------------------------------- algebra
    @property
    def _unitary(self):
        return isinstance(self._core, ComplexReflections)

    @property
    def T(self) -> HouseholderProduct:
        """The transpose: the reversed product, conjugated when complex (shares all caches). O(1)."""
        return self._view(
            self._core, not self._transpose, self.algorithm, self.block_size, self._conjugate != self._unitary
        )

    @property
    def H(self) -> HouseholderProduct:
        """The adjoint (conjugate transpose), the reversed product; equal to :meth:`inv`, and to
        :attr:`T` when real (shares all caches). O(1)."""
        return self._view(self._core, not self._transpose, self.algorithm, self.block_size, self._conjugate)

    def conj(self) -> HouseholderProduct:
        """The entrywise conjugate (``self`` when real; shares all caches). O(1)."""
        if not self._unitary:
            return self
        return self._view(self._core, self._transpose, self.algorithm, self.block_size, not self._conjugate)

    def inv(self) -> HouseholderProduct:
        """The inverse, equal to :attr:`H` since H is unitary (orthogonal when real). O(1).

        Returns
        -------
        HouseholderProduct
            ``H.H``: a view sharing every cache.

        Examples
        --------
        >>> import numpy as np
        >>> import cuhouse as ch
        >>> H = ch.HouseholderProduct(np.random.default_rng(0).standard_normal((2, 3)))
        >>> np.allclose((H.inv() @ H).todense(), np.eye(3))
        True
        """
        return self.H

    def det(self) -> Array:
        """``(-1)**n`` per batch entry (identity factors from ``tau == 0`` excluded); for LAPACK's
        complex factors the product of their eigenvalues ``1 - tau_i v_i^H v_i``. O(n).

        Returns
        -------
        array
            Of shape ``H.shape[:-2]`` and H's dtype.

        Examples
        --------
        >>> import numpy as np
        >>> import cuhouse as ch
        >>> float(ch.HouseholderProduct(np.ones((3, 4))).det())
        -1.0
        """
        xp = self._xp
        batch = self.shape[:-2]
        if self._unitary:
            det = self._core.det()
            det = xp.conj(det) if self._transpose != self._conjugate else det
            return copy(xp.broadcast_to(astype(det, self.dtype, xp), batch), xp)
        identities = self._core.identity_count()
        if identities is not None:
            count = self.n_reflections - identities
            if not is_native(xp):
                return copy(xp.broadcast_to(1 - 2 * astype(count % 2, self.dtype, xp), batch), xp)
            return xp.broadcast_to(xp.where(count % 2 == 0, 1, -1).astype(self.dtype), batch).copy()
        return xp.full(batch, (-1.0) ** self.n_reflections, dtype=self.dtype, **creation_kwargs(self._core.params[0]))

    def slogdet(self) -> Tuple[Array, Array]:
        """``(sign, log|det|) = (det, 0)`` per batch entry; as ``numpy.linalg.slogdet``, a complex
        sign of modulus 1 and a real logarithm for a unitary product.

        Returns
        -------
        sign, logabsdet : arrays
            Each of shape ``H.shape[:-2]``: ``det`` and zeros.

        Examples
        --------
        >>> import numpy as np
        >>> import cuhouse as ch
        >>> sign, logabs = ch.HouseholderProduct(np.ones((2, 4))).slogdet()
        >>> float(sign), float(logabs)
        (1.0, 0.0)
        """
        sign = self.det()
        return sign, self._xp.zeros_like(sign, dtype=_complex.real_dtype(sign.dtype))

    def _compose(self, other):
        """``H1 @ H2`` as one product of n1 + n2 reflections. O(1) until used.

        Any other cuhouse matrix gives the lazy product of the base class.
        """
        if not isinstance(other, HouseholderProduct):
            return super()._compose(other)
        a, b = self._core, other._core
        array_module(a.params[0], b.params[0])  # a TypeError naming both when libraries or devices differ
        if self.shape[-1] != other.shape[-1]:
            raise ValueError(
                "cannot compose HouseholderProducts of sizes {0}x{0} and {1}x{1}".format(
                    self.shape[-1], other.shape[-1]
                )
            )
        batch_shape(("H1", self.shape[:-2]), ("H2", other.shape[:-2]))
        params, segments = [], []
        for op in (self, other):
            core = op._core
            order = reversed(core.segments) if op._transpose else core.segments
            for segment in order:
                param = core.params[segment.param]
                matches = [i for i, existing in enumerate(params) if existing is param]
                if not matches:
                    params.append(param)
                segments.append(
                    segment._replace(
                        param=matches[0] if matches else len(params) - 1,
                        transpose=segment.transpose != op._transpose,
                        conjugate=segment.conjugate != op._conjugate,
                    )
                )
        dtype = result_type(a.xp, a.dtype, b.dtype)
        if _complex.is_complex(dtype):
            core = ComplexReflections(
                a.backend, tuple(params), tuple(segments), a.check_finite and b.check_finite, dtype
            )
            return self._view(core, False, self.algorithm, self.block_size)
        core = Reflections(
            a.backend,
            tuple(params),
            tuple(segments),
            a.check_finite and b.check_finite,
            result_type(a.xp, a.dtype, b.dtype),
        )
        return self._view(core, False, self.algorithm, self.block_size)

    # ------------------------------------------------------------- products
    def __matmul__(self, other):
        if type(other) is numpy.ndarray:
            out = self._numpy_fast_path(other, True)
            if out is not None:
                return out
        return super().__matmul__(other)

    def __rmatmul__(self, other):
        if type(other) is numpy.ndarray:
            out = self._numpy_fast_path(other, False)
            if out is not None:
                return out
        return super().__rmatmul__(other)

    def _numpy_fast_path(self, x, left):
        """``self @ x`` (``x @ self`` when not ``left``) for a NumPy ``x`` by the first fast path that
        takes it: the declared reuse's kept form, a kept product's replay (:mod:`cuhouse._reuse`),
        the small-size path (:mod:`cuhouse._small`); ``None`` when none does."""
        if not self._core.reuse:  # the common case first: a kept product's replay, else the small path
            out = _reuse.replay(self, x, left)
            return _small.matmul(self, x, "left" if left else "right") if out is None else out
        out = _reuse.matmul(self, x, left)
        if out is None:
            out = _reuse.replay(self, x, left)
        if out is None:
            out = _small.matmul(self, x, "left" if left else "right")
        return out

    def prepare_reuse(self, reuse: bool = True) -> HouseholderProduct:
        """Declare that these reflections will run many products: from the next product on, each runs
        the form the cost model predicts fastest per product once built (built at its first use),
        instead of the fresh plan, whose prediction includes the build.

        The form may be the dense H (``d x d`` per batch entry, kept only when the
        batch's ``B d^2`` entries are at most ``max(2 B n d, 2**16)`` and within
        the machine's memory): at
        small d one GEMM instead of several per block and their Python layers,
        and for n >= d/2 half the flops; or compact WY with a larger block. See
        :mod:`cuhouse._reuse`. The result's bits then differ from a fresh
        product's (by rounding); which form runs depends on (d, n, m, dtype,
        layout, backend) and the calibration only, as the fresh plan does.
        Products with a gradient, a pinned ``algorithm`` or ``block_size``, and
        arrays of other libraries than NumPy and CuPy are unaffected. Shared
        with every view of these reflections (``.T``, ``.H``), kept by
        :meth:`refresh` and by pickling; ``reuse=False`` goes back to fresh
        plans. Cost: O(1) now; the form's build at the next product (the dense
        H: O(n d^2), about one product with d columns).

        Returns
        -------
        HouseholderProduct
            ``self``.

        Examples
        --------
        >>> import numpy as np
        >>> import cuhouse as ch
        >>> rng = np.random.default_rng(0)
        >>> H = ch.HouseholderProduct(rng.standard_normal((16, 16))).prepare_reuse()
        >>> H.plan_for(4).algorithm
        'dense'
        >>> X = rng.standard_normal((16, 4))
        >>> np.allclose(H @ X, H.todense() @ X)
        True
        """
        if not isinstance(reuse, (bool, numpy.bool_)):
            raise TypeError("reuse must be True or False, got {!r} of type {}".format(reuse, type(reuse).__name__))
        self._core.reuse = bool(reuse)
        if not self._unitary:  # plans change: nothing kept is replayed (a unitary product keeps none)
            self._core._replay = {}
            if not reuse:
                self._core._hot = {}
        return self

    def _real_core(self):
        """The :class:`Reflections` products run on: the realified one of a unitary product."""
        return self._core.real if self._unitary else self._core

    def plan_for(self, m: int, dtype: Any = None, differentiable: bool = False) -> plan.Plan:
        """The :class:`cuhouse.plan.Plan` used for an ``X`` with ``m`` columns of ``dtype`` (in ``vjp``
        when ``differentiable``): the fresh plan, or after :meth:`prepare_reuse` the plan fastest
        per product once built. A unitary product plans for its realified form (2n reflections of
        length 2d); a real one with complex ``X`` for 2m real columns.

        Returns
        -------
        cuhouse.plan.Plan
            ``(algorithm, block_size, store_inputs, apply)``: deterministic for
            these arguments on one machine (the cost model's constants are
            measured once per machine) and :meth:`prepare_reuse`.

        Raises
        ------
        TypeError
            ``differentiable`` is not a bool.

        Examples
        --------
        >>> import numpy as np
        >>> import cuhouse as ch
        >>> H = ch.HouseholderProduct(np.ones((64, 64)), algorithm="cwy", block_size=16)
        >>> H.plan_for(32)
        Plan(algorithm='cwy', block_size=16, store_inputs=...)
        """
        if not isinstance(differentiable, (bool, numpy.bool_)):
            raise TypeError(
                "differentiable must be a bool, got {!r} ({})".format(differentiable, type(differentiable).__name__)
            )
        dtype = numpy_dtype(dtype or self.dtype)
        if _complex.is_complex(dtype) and not self._unitary:
            m *= 2
        real = numpy_dtype(_complex.real_dtype(dtype))
        chosen = self._plan(m, real, differentiable)
        if self._reused(differentiable):
            layout = self._core.layout_for(differentiable)
            return _reuse.choose(self._real_core(), chosen, m, real, layout, self._plan_backend())
        return chosen

    def _reused(self, differentiable):
        """Whether a product runs a kept plan (:mod:`cuhouse._reuse`): declared reused, no gradient,
        nothing pinned, NumPy or CuPy."""
        return (
            self._core.reuse
            and not differentiable
            and self.algorithm == "auto"
            and self.block_size is None
            and is_native(self._xp)
        )

    def _plan(self, m, dtype, differentiable):
        core = self._real_core()
        return plan.choose(
            core.shape[-1],
            core.shape[-2],
            m,
            numpy_dtype(dtype or core.dtype),
            self._plan_backend(),
            self.algorithm,
            self.block_size,
            core.layout_for(differentiable),
            core.lapack_ready(differentiable),
            bool(differentiable),
            matrix_count(core.shape),  # the matrices one call builds and applies
        )

    def _plan_backend(self):
        """The machine model of :mod:`cuhouse.plan`: the backend's, or on the generic path
        ``"generic"`` for a CPU and ``"cupy"`` for any other device."""
        core = self._real_core()
        if core.native:
            return core.backend
        return "generic" if getattr(core.device, "type", "cpu") == "cpu" or "CPU" in str(core.device) else "cupy"

    def _run(self, columns, transpose, differentiable, core=None):
        """``(plan module, plan, (form, scaled, limits), transpose)`` for real ``columns``
        ``(..., d, m)`` (``(..., 2d, m)`` realified for a unitary product): the transpose the plan
        applies is the hook's combined with this view's. The form is ``core``'s (default:
        :meth:`_real_core`, read now)."""
        chosen = self._plan(columns.shape[-1], columns.dtype, differentiable)
        if core is None:
            core = self._real_core()
        layout = core.layout_for(differentiable)
        reused = self._reused(differentiable)
        if reused:
            chosen = _reuse.choose(core, chosen, columns.shape[-1], columns.dtype, layout, self._plan_backend())
        kept = core._hot  # before the form is built: a refresh() meanwhile gives core a new table
        built = core.form(chosen, columns.dtype, layout)
        if reused and chosen.algorithm == "dense" and core is self._core:
            _reuse.remember(kept, core, columns.shape[-1], built[0])
        module = PLANS[chosen.algorithm] if core.native else portable
        return module, chosen, built, transpose != self._transpose

    def _real_form(self, columns):
        """``(real, back)``: ``columns`` as the real array the algorithms take, and the map from a real
        result (or gradient) back; both are real-linear isometries (:mod:`cuhouse._complex`).

        A unitary product realifies ``(..., d, m)`` to ``(..., 2d, m)`` (conjugating
        first and after for a conjugated view: conj(H) X = conj(H conj(X))); a real
        product splits complex columns into ``(..., d, 2m)``; real columns pass."""
        xp = self._xp
        if self._unitary:
            if self._conjugate:
                columns = xp.conj(columns)

            def back(real):
                out = _complex.complexify_columns(real, xp)
                return xp.conj(out) if self._conjugate else out

            return _complex.realify_columns(columns, xp), back
        if _complex.is_complex(columns.dtype):
            return _complex.split_columns(columns, xp), lambda real: _complex.join_columns(real, xp)
        return columns, lambda real: real

    def _matmat(self, columns, transpose):
        real, back = self._real_form(columns)
        core = self._real_core()
        if core.backend == "torch":
            from . import _torch

            if _torch.records_gradient(self._core.params, real):  # the leaves (a unitary product's complex ones)
                return back(self._autograd(real, transpose))
        module, chosen, (form, _, limits), transpose = self._run(real, transpose, False)
        return back(_apply_scaled(module, chosen, form, real, transpose, limits, self._xp))

    def _autograd(self, real, transpose):
        """``H @ real`` (``H^T @ real``) on torch, differentiable by torch autograd to any order: the
        full rows built from the leaves by differentiable torch operations, through the one
        Function :func:`cuhouse._torch.matmul` (which scales the rows and X's columns, and dout
        in its backward, to their binades: exact, and in range wherever the result and the
        gradient are). Cost: the product's, plus O(n d + d m) for the rows, the columns and their scales."""
        from . import _torch

        core, xp = self._real_core(), self._xp
        chosen = self._plan(real.shape[-1], real.dtype, True)
        if self._unitary:  # realified afresh from the complex leaves (the cached rows carry no graph)
            rows = astype(self._core.paired_rows()[0], real.dtype, xp)
        else:
            rows = _generic.rows(core, real.dtype)
        return _torch.matmul(
            rows, real, transpose != self._transpose, block_size=chosen.block_size or 1, algorithm=chosen.algorithm
        )

    def _vjp_matmat(self, columns, transpose):
        xp = self._xp
        real, to_columns = self._real_form(columns)
        core = self._real_core()  # read once: the gradient goes back through the rows its form was built from
        module, chosen, (form, scaled, limits), transpose = self._run(real, transpose, True, core)
        out = _apply_scaled(module, chosen, form, real, transpose, limits, xp)

        def back(dout):
            dv, dx, exponent = _backward_scaled(
                module, form, out, self._real_form(dout)[0], transpose, limits, chosen.store_inputs, xp
            )
            row_scale = scaled
            if limits is None:  # the generic path: the rows' scale and out's and dout's, as two halves
                dv, row_scale = _generic_unscale(dv, scaled, exponent, xp)
            contributions = core.contributions(dv, row_scale)
            if exponent is not None and limits is not None:  # only now: unit rows' gradients are divided by norms
                contributions = [(leaf, _scaling.unscale(g, exponent, xp)) for leaf, g in contributions]
            return contributions, reduce_to_shape(to_columns(dx), columns.shape)

        return to_columns(out), back

    def _vjp_logabsdet(self):
        return self.slogdet()[1], lambda dvalue: []


def _apply_scaled(module, chosen, form, columns, transpose, limits, xp):
    """``module.apply`` (in the plan's apply mode) with the columns of X out of ``limits`` scaled by
    powers of two (exact) and the result scaled back, so that no intermediate overflows or
    underflows where the result does not (:mod:`cuhouse.algorithms._scaling`). Cost: one GEMV
    over ``|X|``; three passes over X more only when some column is out of range. On the GPU the
    test would be a host sync on every product: there every column is scaled to its binade
    (:func:`~cuhouse.algorithms._scaling.column_binades`; exact, the same bits in range). ``limits``
    is ``None`` on the generic path, which has no frexp and no host test: every column is scaled
    to its binade with Array API operations (:func:`~cuhouse.algorithms._scaling.column_factors`;
    three passes over X and the result, no synchronization, no data-dependent branch)."""
    if limits is None:
        factors = _scaling.column_factors(columns, xp)
        return _apply(module, chosen, form, columns * factors, transpose, xp) / factors
    if xp is numpy:
        exponent = _scaling.column_exponents(columns, limits, xp)
    else:
        exponent = _scaling.column_binades(columns, xp)
    if exponent is None:
        return _apply(module, chosen, form, columns, transpose, xp)
    scaled = _apply(module, chosen, form, _scaling.scaled(columns, exponent, xp), transpose, xp)
    return _scaling.unscale(scaled, exponent, xp)


def _apply(module, chosen, form, columns, transpose, xp):
    """``module.apply`` in the plan's apply mode (cwy's modes, ormqr's calibrated path; ``"steps"``
    passes none)."""
    if chosen.apply == "steps" or module is portable:  # the generic path has the steps only
        return module.apply(form, columns, transpose, xp)
    return module.apply(form, columns, transpose, xp, mode=chosen.apply)


def _backward_scaled(module, form, out, dout, transpose, limits, store_inputs, xp):
    """``(dV, dX, exponent)``: ``module.backward`` with ``out`` and ``dout`` each scaled by one power
    of two per batch entry when either is out of ``limits``
    (:func:`~cuhouse.algorithms._scaling.gradient_needs_scaling`). The gradient w.r.t. the rows is
    bilinear in the two and sums over columns, hence one factor per array, not per column. dX is
    scaled back here; ``dV`` is returned scaled, to be multiplied by ``2**exponent`` (``None``: no
    scaling) after its last step (unit rows' gradients are divided by their norms; see
    :func:`_generic_unscale`). Cost: two GEMVs over ``|out|`` and ``|dout|``; four passes more only when
    scaling. The generic path (``limits`` ``None``) always scales, with Array API operations
    (:func:`~cuhouse.algorithms._scaling.matrix_factors`), without a host synchronization:
    ``exponent`` is then the pair of factors that ``out`` and ``dout`` were multiplied by."""
    if limits is None:
        f_out, f_dout = (_scaling.matrix_factors(a, xp) for a in (out, dout))
        dv, dx = module.backward(form, out * f_out, dout * f_dout, transpose, xp, store_inputs)
        return dv, dx / f_dout, (f_out, f_dout)
    if not _scaling.gradient_needs_scaling(out, dout, limits, xp):
        return (*module.backward(form, out, dout, transpose, xp, store_inputs), None)
    e_out, e_dout = (_scaling.array_exponent(a, xp) for a in (out, dout))
    dv, dx = module.backward(
        form, _scaling.scaled(out, e_out, xp), _scaling.scaled(dout, e_dout, xp), transpose, xp, store_inputs
    )
    return dv, _scaling.unscale(dx, e_dout, xp), e_out + e_dout


def _generic_unscale(dv, scale, factors, xp):
    """``(dv', scale')`` with ``dv' * scale'[..., None] == dv * scale[..., None] / (f_out f_dout)``: the
    generic path's gradient w.r.t. the rows ``dv`` ``(..., n, d)``, computed from rows multiplied by
    ``scale`` ``(..., n)`` and out, dout multiplied by the powers of two ``factors``
    (:func:`_backward_scaled`). The power of two of the whole factor is split into two halves, the
    scale's mantissa kept with the second, so that no intermediate overflows or underflows where the
    gradient does not (rows at 2^-99 with X at 2^33 and dout at 2^-27 gave inf in float32 when the
    three were applied in turn); exact but for the one rounding of the mantissa's product. O(n d)."""
    f_out, f_dout = factors
    k = xp.floor(xp.log2(scale))
    mantissa = scale / xp.full_like(scale, 2.0) ** k  # exact: a division by a power of two
    exponent = k[..., :, None] - xp.log2(f_out) - xp.log2(f_dout)  # (..., n, 1), integers
    bound = _scaling.exponent_bound(dv.dtype, xp)
    half = xp.clip(xp.floor(exponent / 2), -bound, bound)
    rest = xp.clip(exponent - half, -bound, bound)
    two = xp.full_like(exponent, 2.0)
    return dv * two**half, mantissa * (two**rest)[..., 0]
