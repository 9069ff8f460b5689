"""``HouseholderProduct``: a d x d orthogonal matrix kept as its reflections.

H = H(v_1) H(v_2) ... H(v_n) with H(v) = I - 2 v v^T / (v^T v); ``H @ X``
applies H(v_n) first. Nothing dense is formed unless asked: products cost
O(d n m) and run as GEMMs, ``.T``/``.inv()`` are free, ``det`` is (-1)^n.

The parameter arrays are treated as immutable: block factors are built once,
lazily, and reused by every later product. After changing ``vectors`` in place
(an optimizer step), call :meth:`HouseholderProduct.refresh`.
"""

from collections import namedtuple

import numpy

from . import _complex, _generic, _small, _validate, layouts, plan
from ._backend import (
    array_module,
    backend_name,
    copy,
    creation_kwargs,
    device_of,
    is_native,
    module_named,
    numpy_dtype,
    read_only,
    result_type,
    swap,
)
from ._gpu import primitives
from ._operator import Operator, reduce_to_shape
from .algorithms import ALGORITHMS, PLANS, _blocks, _scaling, portable

ALGORITHM_CHOICES = ("auto",) + tuple(ALGORITHMS)


Segment = namedtuple("Segment", "leaf reversed k identity conjugated phase", defaults=(False, None))
Segment.__doc__ = """Where a run of reflections comes from: leaf array number ``leaf``, its rows
``reversed`` or not (the adjoint of the run); ``k`` is ``None`` for a vectors leaf ``(..., n, d)``, or the
number of reflectors read in place from a ``geqrf`` array ``a`` ``(..., d, N)``
(LAPACK's layout), whose ``tau == 0`` mask is ``identity`` (or ``None``). Complex runs only:
``conjugated`` takes the entrywise conjugate of the run, and ``phase`` ``(..., k)`` holds the
eigenvalue lambda_i = 1 - tau_i v_i^H v_i of each LAPACK factor (``None``: reflections, lambda = -1)."""


class Reflections:
    """The shared state behind one or more ``HouseholderProduct`` views.

    It holds the reflections as the leaf arrays the user passed in
    (``segments``, see :class:`Segment`), plus every cache derived from them.
    A single leaf is used in place, in its layout (``rows``, ``layout``,
    ``identity``); several leaves (``H1 @ H2``) are joined into full rows once.
    ``H`` and ``H.T`` share one ``Reflections``; ``H1 @ H2`` makes a new one.
    It pickles without its caches, and with its backend as a name.
    """

    def __init__(self, backend, leaves, segments, check_finite, dtype, norms=None):
        self.backend = backend
        self.leaves = leaves
        self.segments = segments
        self.check_finite = check_finite
        self.dtype = numpy.dtype(dtype) if is_native(module_named(backend)) else dtype
        self.refresh()
        self._norms = norms

    def refresh(self):
        """Drop every cache; the next use rebuilds from the leaf arrays."""
        self._vectors = None
        self._norms = None
        self._layout = None
        self._safe = None
        self._shape = None
        self._factors = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        for cache in ("_vectors", "_norms", "_layout", "_safe", "_shape", "_factors"):
            del state[cache]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.refresh()

    @property
    def xp(self):
        return module_named(self.backend)

    @property
    def native(self):
        """True on NumPy and CuPy (layouts read in place); False on the generic path (:mod:`cuhouse._generic`)."""
        return is_native(self.xp)

    @property
    def device(self):
        """The device of the leaves (``None`` on NumPy and CuPy)."""
        return device_of(self.leaves[0])

    @property
    def small(self):
        """``(n, d)`` for one NumPy matrix (no batch dimensions): the small-size path applies
        (:mod:`cuhouse._small`); else ``None``."""
        shape = self.shape
        return tuple(shape) if self.backend == "numpy" and len(shape) == 2 else None

    @property
    def safe(self):
        """Whether every reflection's sum of squares is inside ``dtype``'s safe range, so that its
        form needs no normalization pass (see :meth:`factors`). Cached."""
        if self._safe is None:
            info = numpy.finfo(self.dtype)
            norms = self.norms
            safe = ((norms >= numpy.sqrt(info.tiny / info.eps)) | (norms == 0)) & (
                norms <= numpy.sqrt(info.max * info.eps)
            )
            self._safe = bool(safe.all())
        return self._safe

    def lapack_ready(self, differentiable):
        """Whether LAPACK's ``?ormqr`` can run a product itself (:mod:`cuhouse.algorithms.ormqr`): one
        ``geqrf`` array on NumPy with no batch, in the safe range, and no gradient to take."""
        return not differentiable and self.layout == _blocks.UNIT and self.small is not None and self.safe

    def _stored(self, segment):
        """The stored rows of one segment (a view), in product order; broadcast to the batch shape
        of its ``tau == 0`` mask where ``tau`` had batch dimensions that ``a`` lacks."""
        leaf = self.leaves[segment.leaf]
        rows = leaf if segment.k is None else _lapack_rows(leaf, segment, self.xp)
        if not segment.reversed:
            return rows
        return rows[..., ::-1, :] if self.native else self.xp.flip(rows, axis=-2)

    @property
    def layout(self):
        """The layout of :attr:`rows` (see :mod:`cuhouse.algorithms._blocks`): ``"unit"`` for a
        ``geqrf`` array, ``"trapezoidal"`` for one vectors array whose row i is zero in its first i
        entries (checked once, see :func:`~cuhouse.algorithms._blocks.is_trapezoidal`), else ``"full"``."""
        if self._layout is None:
            (segment, *more) = self.segments
            if not self.native:  # the generic path runs on full rows: no structure to detect
                self._layout = (
                    _blocks.UNIT if segment.k is not None and not (more or segment.reversed) else _blocks.FULL
                )
            elif more or segment.reversed:
                self._layout = _blocks.FULL
            elif segment.k is not None:
                self._layout = _blocks.UNIT
            else:
                trapezoidal = _blocks.is_trapezoidal(self.leaves[segment.leaf], self.xp)
                self._layout = _blocks.TRAPEZOIDAL if trapezoidal else _blocks.FULL
        return self._layout

    def layout_for(self, differentiable):
        """The layout products run in. A gradient w.r.t. a vectors array covers every entry, the zeros
        of a trapezoidal array included, so differentiable products use its full rows."""
        layout = self.layout
        return _blocks.FULL if differentiable and layout == _blocks.TRAPEZOIDAL else layout

    @property
    def identity(self):
        """The identity-factor mask ``(..., n)`` of :attr:`rows`, or ``None``."""
        return self.segments[0].identity if self.layout == _blocks.UNIT else None

    @property
    def rows(self):
        """The rows the algorithms run on, in :attr:`layout`: the caller's array itself for one leaf."""
        if len(self.segments) == 1:
            return self._stored(self.segments[0])
        return self.vectors

    @property
    def shape(self):
        """``(..., n, d)`` of the reflections. Cached."""
        if self._shape is None:
            self._shape = tuple(self._stored(self.segments[0]).shape if len(self.segments) == 1 else self.vectors.shape)
        return self._shape

    @property
    def vectors(self):
        """All reflections as full rows ``(..., n, d)`` in product order (identity factors as zero
        rows): a read-only view (NumPy) of a vectors leaf, else a copy made once. Cached."""
        if self._vectors is None and not self.native:
            parts = [_generic.full_rows(self.leaves[s.leaf], s, self.dtype, self.xp) for s in self.segments]
            self._vectors = _generic.joined(parts, self.xp)
        if self._vectors is None:
            xp = self.xp
            parts = []
            for segment in self.segments:
                rows = self._stored(segment._replace(reversed=False))
                if segment.k is not None:
                    rows = _blocks.full_rows(rows, _blocks.UNIT, xp)
                    if segment.identity is not None:
                        rows = xp.where(segment.identity[..., None], 0, rows)
                if segment.reversed:
                    rows = rows[..., ::-1, :]
                parts.append(rows.astype(self.dtype, copy=False))
            if len(parts) == 1:
                self._vectors = read_only(parts[0])
            else:
                batch = numpy.broadcast_shapes(*(p.shape[:-2] for p in parts))
                parts = [xp.broadcast_to(p, batch + p.shape[-2:]) for p in parts]
                self._vectors = read_only(xp.concatenate(parts, axis=-2))
        return self._vectors

    @property
    def norms(self):
        """Euclidean norms ``(..., n)`` of the reflections (as stored, the implicit 1 included). Cached."""
        if self._norms is None:
            if not self.native:
                self._norms = _generic.row_norms(self.vectors, self.xp)
            elif self.layout == _blocks.UNIT:
                self._norms = self.xp.sqrt(1 + _blocks.squared_norms(self.rows, _blocks.UNIT, self.xp))
            else:
                self._norms = primitives.row_norms(self.vectors, self.xp)
        return self._norms

    def identity_count(self):
        """Identity factors (``tau == 0``) per batch entry, or ``None`` when there are none. O(n)."""
        masks = [segment.identity for segment in self.segments if segment.identity is not None]
        if not masks:
            return None
        xp = self.xp
        if not self.native:  # count_nonzero is Array API 2024.12
            return sum(xp.sum(xp.astype(mask, xp.int64), axis=-1) for mask in masks)
        return sum(xp.count_nonzero(mask, axis=-1) for mask in masks)

    def factors(self, chosen, dtype, layout):
        """``(factors, scaled, limits)``: the block factors of ``chosen`` (a :class:`plan.Plan`) in
        ``dtype``, for :attr:`rows` read in ``layout`` (:meth:`layout_for`). Cached.

        Built from the raw rows in place (converted only when ``dtype`` differs),
        with no normalization pass. Only when some row's sum of squares would
        leave ``dtype``'s safe range are the rows normalized first (full rows,
        a copy); ``scaled`` is then ``(unit, norms)`` for the gradient, else
        ``None``. ``limits`` is the range of X's column sizes the factors take
        without overflow or underflow (:class:`~cuhouse.algorithms._scaling.Limits`,
        from the norms of the rows they were built from: unit rows for every
        algorithm but CWY on raw rows). The dense plan's d x d matrix is checked
        against the machine's memory first. On the generic path (neither NumPy
        nor CuPy) every row is brought into range by :func:`cuhouse._generic.factors`
        without a host synchronization, ``scaled`` is that per-row scale and
        ``limits`` is ``None``: X's columns are not scaled (that decision reads
        the data on the host), so a column whose norm is near the dtype's
        overflow or underflow threshold is not guarded there.
        """
        key = (chosen.algorithm, chosen.block_size, dtype, layout)
        if key not in self._factors:
            xp = self.xp
            if chosen.algorithm == "dense":
                d = self.shape[-1]
                _validate.dense_memory(
                    self.shape[:-2] + (d, d),
                    dtype,
                    'algorithm="dense"',
                    xp,
                    HouseholderProduct._TODENSE_WORKSPACE,
                    self.device,
                )
            if not self.native:  # rows scaled into range without a host synchronization; no column limits
                built, scale = _generic.factors(self, chosen.algorithm, chosen.block_size or 1, dtype)
                self._factors[key] = built, scale, None
                return self._factors[key]
            module = PLANS[chosen.algorithm]
            rows, identity, scaled = self.rows.astype(dtype, copy=False), self.identity, None
            if not self.safe:
                scaled = _blocks.unit_rows(rows, layout, identity, xp)
                rows, layout, identity = scaled[0], _blocks.FULL, None
            norms = self.norms
            v_min = v_max = 1.0  # unit rows: FastH and the sequential loop normalize their own copy
            if scaled is None and chosen.algorithm in ("cwy", "dense") and bool(xp.any(norms > 0)):
                # dense: CWY builds H and its adjoint; all-zero rows (identity factors only) act as unit rows
                v_max = float(xp.max(norms))
                v_min = float(xp.min(xp.where(norms > 0, norms, v_max)))
            limits = _scaling.limits(v_min, v_max, self.shape[-1], dtype)
            extra = {"norms": norms} if module is PLANS["ormqr"] else {}
            form = module.build(rows, chosen.block_size, xp, layout, identity, **extra)
            self._factors[key] = form, scaled, limits
        return self._factors[key]

    def leaf_contributions(self, dv, scaled):
        """``(leaf, gradient)`` pairs from ``dv``, the gradient w.r.t. the rows the factors were built
        from (``(..., n, d)``; see :meth:`factors` for ``scaled``).

        Each segment goes back to its leaf, reversed if it appears reversed; a
        ``geqrf`` leaf gets its strictly lower part (zero on and above the
        diagonal and for ``tau == 0``). ``dv`` may be overwritten. Cost: O(n d).
        """
        if not self.native:
            return _generic.contributions(self, dv, scaled)
        xp = self.xp
        if scaled is not None:
            unit, norms = scaled
            dv = _blocks.raw_gradient(dv, unit.astype(dv.dtype, copy=False), norms.astype(dv.dtype, copy=False), xp)
        contributions, start = [], 0
        for segment in self.segments:
            leaf = self.leaves[segment.leaf]
            n = leaf.shape[-2] if segment.k is None else segment.k
            part = dv[..., start : start + n, :]
            start += n
            if segment.reversed:
                part = part[..., ::-1, :]
            if segment.k is not None:
                if scaled is not None or len(self.segments) > 1:  # full rows: keep the stored entries only
                    part = _blocks.structured(part.copy(), _blocks.UNIT, xp)
                    if segment.identity is not None:
                        part *= ~segment.identity[..., None]
                grad = xp.zeros(part.shape[:-2] + leaf.shape[-2:], dtype=part.dtype)
                _blocks.transpose_into(grad[..., : segment.k], part, xp)
                part = grad
            contributions.append((leaf, part))
        return contributions


def _generic_algorithm(algorithm):
    """``ValueError`` for an algorithm the generic path does not have."""
    if algorithm not in ("auto",) + portable.ALGORITHMS:
        raise ValueError(
            "algorithm={!r} runs on NumPy and CuPy only; arrays of other libraries run the generic path, "
            "which has {}".format(algorithm, ", ".join(map(repr, ("auto",) + portable.ALGORITHMS)))
        )


def _lapack_rows(leaf, segment, xp):
    """The reflectors of a ``geqrf`` leaf ``(..., d, N)`` as rows ``(..., k, d)`` (a view), broadcast to
    the batch shape of the segment's ``tau == 0`` mask when ``tau`` has batch dimensions ``a`` lacks."""
    rows = swap(leaf[..., : segment.k], xp)
    if segment.identity is not None and segment.identity.shape[:-1] != rows.shape[:-2]:
        rows = xp.broadcast_to(rows, segment.identity.shape[:-1] + rows.shape[-2:])
    return rows


class ComplexReflections:
    """The shared state of a unitary product (any complex leaf or segment), on the real algorithms.

    Same interface as :class:`Reflections` for :class:`HouseholderProduct`. The
    factors are realified once, lazily (:mod:`cuhouse._complex`): each complex
    factor becomes two real reflections in 2d dimensions, and :attr:`real`, a
    :class:`Reflections` over those ``(..., 2n, 2d)`` rows, runs every product,
    plan and cache. Gradients w.r.t. the real rows go back to the complex leaves
    in :meth:`leaf_contributions`. Pickles without its caches.
    """

    def __init__(self, backend, leaves, segments, check_finite, dtype):
        self.backend = backend
        self.leaves = leaves
        self.segments = segments
        self.check_finite = check_finite
        self.dtype = numpy.dtype(dtype)
        self.refresh()

    def refresh(self):
        """Drop every cache; the next use realifies the leaf arrays again."""
        self._real = None
        self._pairs = None
        self._vectors = None

    def __getstate__(self):
        state = dict(self.__dict__)
        for cache in ("_real", "_pairs", "_vectors"):
            del state[cache]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.refresh()

    @property
    def xp(self):
        return module_named(self.backend)

    def _factors_of(self, segment):
        """The complex full rows ``(..., k, d)`` of one segment in stored order (identity factors
        zero, conjugated if the segment is), and their eigenvalues (``None``: reflections)."""
        xp = self.xp
        leaf = self.leaves[segment.leaf]
        if segment.k is None:
            rows = leaf
        else:
            rows = _blocks.full_rows(_lapack_rows(leaf, segment, xp), _blocks.UNIT, xp)
            if segment.identity is not None:
                rows = xp.where(segment.identity[..., None], 0, rows)
        phase = segment.phase
        if segment.conjugated:
            rows = xp.conj(rows)
            phase = None if phase is None else xp.conj(phase)
        return rows.astype(self.dtype, copy=False), phase

    @property
    def shape(self):
        """``(..., n, d)`` of the complex factors."""
        shapes = [self._factors_shape(segment) for segment in self.segments]
        batch = numpy.broadcast_shapes(*(shape[:-2] for shape in shapes))
        return batch + (sum(shape[-2] for shape in shapes), shapes[0][-1])

    def _factors_shape(self, segment):
        leaf = self.leaves[segment.leaf]
        if segment.k is None:
            return tuple(leaf.shape)
        masks = [m.shape[:-1] for m in (segment.identity, segment.phase) if m is not None]
        return numpy.broadcast_shapes(leaf.shape[:-2], *masks) + (segment.k, leaf.shape[-2])

    @property
    def vectors(self):
        """All factors' vectors as complex full rows ``(..., n, d)`` in product order (identity
        factors as zero rows; an adjoint run reversed, a conjugated one conjugated). Cached."""
        if self._vectors is None:
            xp = self.xp
            parts = []
            for segment in self.segments:
                rows, _ = self._factors_of(segment)
                parts.append(rows[..., ::-1, :] if segment.reversed else rows)
            batch = numpy.broadcast_shapes(*(p.shape[:-2] for p in parts))
            parts = [xp.broadcast_to(p, batch + p.shape[-2:]) for p in parts]
            self._vectors = read_only(parts[0].copy() if len(parts) == 1 else xp.concatenate(parts, axis=-2))
        return self._vectors

    @property
    def real(self):
        """The :class:`Reflections` of the realified rows ``(..., 2n, 2d)``. Built once."""
        if self._real is None:
            xp = self.xp
            parts, pairs = [], []
            for segment in self.segments:
                rows, phase = self._factors_of(segment)
                paired, p, q = _complex.pair_rows(rows, phase, xp)
                pairs.append((p, q))
                parts.append(paired[..., ::-1, :] if segment.reversed else paired)
            batch = numpy.broadcast_shapes(*(p.shape[:-2] for p in parts))
            parts = [xp.broadcast_to(p, batch + p.shape[-2:]) for p in parts]
            rows = parts[0] if len(parts) == 1 else xp.concatenate(parts, axis=-2)
            rows = xp.ascontiguousarray(rows)
            real = Reflections(self.backend, (rows,), (Segment(0, False, None, None),), self.check_finite, rows.dtype)
            self._real, self._pairs = real, pairs
        return self._real

    def layout_for(self, differentiable):
        return self.real.layout_for(differentiable)

    def factors(self, chosen, dtype, layout):
        return self.real.factors(chosen, dtype, layout)

    def leaf_contributions(self, dv, scaled):
        """``(leaf, gradient)`` pairs from ``dv`` ``(..., 2n, 2d)``, the gradient w.r.t. the real rows
        (see :meth:`Reflections.leaf_contributions`): each pair of rows back to its complex factor
        (:func:`cuhouse._complex.pair_gradient`), conjugated for a conjugated run, to the strictly
        lower part of a ``geqrf`` leaf; a real leaf gets the real part. Cost: O(n d)."""
        xp = self.xp
        ((_, dv),) = self.real.leaf_contributions(dv, scaled)
        contributions, start = [], 0
        for segment, (p, q) in zip(self.segments, self._pairs):
            leaf = self.leaves[segment.leaf]
            n = self._factors_shape(segment)[-2]
            part = dv[..., start : start + 2 * n, :]
            start += 2 * n
            if segment.reversed:
                part = part[..., ::-1, :]
            grad = _complex.pair_gradient(part, p, q, xp)
            if segment.conjugated:
                grad = xp.conj(grad)
            if segment.k is not None:
                grad = _blocks.structured(grad, _blocks.UNIT, xp)
                if segment.identity is not None:
                    grad = xp.where(segment.identity[..., None], 0, grad)
                full = xp.zeros(grad.shape[:-2] + leaf.shape[-2:], dtype=grad.dtype)
                _blocks.transpose_into(full[..., : segment.k], grad, xp)
                grad = full
            contributions.append((leaf, grad if _complex.is_complex(leaf.dtype) else xp.real(grad)))
        return contributions

    def det(self):
        """``det`` of the product per batch entry of the factors' shape: the product of every
        factor's eigenvalue (conjugated for an adjoint or conjugated run, not for both). O(n)."""
        xp = self.xp
        total = xp.ones((), dtype=self.dtype)
        for segment in self.segments:
            n = self._factors_shape(segment)[-2]
            if segment.phase is not None:
                value = xp.prod(segment.phase, axis=-1)
                total = total * (xp.conj(value) if segment.conjugated != segment.reversed else value)
            elif segment.identity is not None:
                count = n - xp.count_nonzero(segment.identity, axis=-1)
                total = total * xp.where(count % 2 == 0, 1, -1)
            else:
                total = total * (-1.0) ** n
        return total


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

    Cost: construction validates in O(n d); ``H @ X`` with X ``(d, m)`` is
    O(d n m) (plus an O(n k d) one-off build of the block factors); ``.T``,
    ``.inv()``, ``det``, ``slogdet`` and ``logdet`` are O(1) per batch entry.
    """

    _NAME = "H"
    _TODENSE_WORKSPACE = 4  # measured peak 4.06x the result at d = 2000 (cwy), 2.0x (dense)

    def __init__(self, vectors, algorithm="auto", block_size=None, *, check_finite=True):
        algorithm = _validate.choice(algorithm, "algorithm", ALGORITHM_CHOICES)
        block_size = _validate.positive_int_or_none(block_size, "block_size")
        v = _small.plain_vectors(vectors)
        norms = None if v is None else _small.vector_norms(v)
        if norms is not None:  # the small-size path: one validation pass found nothing to handle
            core = Reflections("numpy", (v,), (Segment(0, False, None, None),), bool(check_finite), v.dtype, norms)
            core._safe = True
            if _small.first_row_breaks_trapezoid(v):
                core._layout = _blocks.FULL
            self._init(core, False, algorithm, block_size)
            return
        xp = array_module(vectors)
        v = _validate.vectors(vectors, xp)
        segments = (Segment(0, False, None, None),)
        if _complex.is_complex(v.dtype):  # NumPy and CuPy only: the generic path refuses complex input
            _validate.vector_norms(primitives.row_norms(xp.abs(v), xp), xp, bool(check_finite))
            core = ComplexReflections(backend_name(xp), (v,), segments, bool(check_finite), v.dtype)
        elif is_native(xp):
            norms = primitives.row_norms(v, xp)
            _validate.vector_norms(norms, xp, bool(check_finite))
            core = Reflections(backend_name(xp), (v,), segments, bool(check_finite), v.dtype, norms)
        else:
            _generic_algorithm(algorithm)
            if check_finite:  # on the generic path, check_finite=False means no host synchronization at all
                _validate.vector_norms(_generic.row_norms(v, xp), xp, True)
            core = Reflections(backend_name(xp), (v,), segments, bool(check_finite), v.dtype)
        self._init(core, False, algorithm, block_size)

    def _init(self, core, transposed, algorithm, block_size, conjugated=False):
        self._core = core
        self._transposed = transposed  # the adjoint: the reversed product
        self._conjugated = conjugated  # the entrywise conjugate (complex only)
        self.algorithm = algorithm
        self.block_size = block_size

    def _substitute(self, mapping):
        """This product on other leaf arrays: ``mapping`` takes ``id(leaf)`` to its replacement
        (same shape and layout); leaves not in it stay. Nothing is validated or copied. O(1)."""
        core = self._core
        leaves = tuple(mapping.get(id(leaf), leaf) for leaf in core.leaves)
        new = Reflections(core.backend, leaves, core.segments, core.check_finite, core.dtype)
        return self._view(new, self._transposed, self.algorithm, self.block_size, self._conjugated)

    @classmethod
    def _view(cls, core, transposed, algorithm, block_size, conjugated=False):
        obj = cls.__new__(cls)
        obj._init(core, transposed, algorithm, block_size, conjugated)
        return obj

    @classmethod
    def from_lapack(cls, a, tau, algorithm="auto", block_size=None, *, check_finite=True):
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
        """
        algorithm = _validate.choice(algorithm, "algorithm", ALGORITHM_CHOICES)
        block_size = _validate.positive_int_or_none(block_size, "block_size")
        found = _small.lapack_norms(a, tau)
        if found is not None:  # the small-size path: one validation pass found nothing to handle
            k, identity, norms = found
            core = Reflections("numpy", (a,), (Segment(0, False, k, identity),), bool(check_finite), a.dtype, norms)
            core._safe = True
            return cls._view(core, False, algorithm, block_size)
        xp = array_module(a, tau)
        if is_native(xp):
            a, k, identity, dtype, norms, phase = layouts.lapack_reflectors(a, tau, xp, bool(check_finite))
        else:
            _generic_algorithm(algorithm)
            (a, k, identity, dtype), norms, phase = (
                _generic.lapack_reflectors(a, tau, xp, bool(check_finite)),
                None,
                None,
            )
        if phase is not None:
            segment = Segment(0, False, k, identity, False, phase)
            core = ComplexReflections(backend_name(xp), (a,), (segment,), bool(check_finite), dtype)
        else:
            core = Reflections(
                backend_name(xp), (a,), (Segment(0, False, k, identity),), bool(check_finite), dtype, norms
            )
        return cls._view(core, False, algorithm, block_size)

    @classmethod
    def from_dense(cls, q, algorithm="auto", block_size=None, *, check_finite=True):
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
        """
        xp = array_module(q)
        q = _validate.dense_matrix(q, "Q", xp)
        if q.shape[-1] > q.shape[-2]:
            raise ValueError(
                "Q must have shape (..., d, r) with r <= d (orthonormal columns), got shape {}".format(tuple(q.shape))
            )
        a, tau = layouts.orthogonal_to_reflectors(q, xp)
        return cls.from_lapack(a, tau, algorithm, block_size, check_finite=check_finite)

    # ------------------------------------------------------------ attributes
    @property
    def vectors(self):
        """The reflections ``(..., n, d)`` in product order: a read-only view (NumPy) of the caller's array
        (from :meth:`from_lapack` or ``H1 @ H2``, or complex: full rows, a copy made once). For
        LAPACK's complex factors the vectors alone do not give the product: each factor's
        eigenvalue is kept too (see :meth:`from_lapack`)."""
        v = self._core.vectors
        v = v[..., ::-1, :] if self._transposed else v
        return read_only(self._xp.conj(v)) if self._conjugated else v

    @property
    def params(self):
        """The leaf arrays that gradients are taken with respect to (the caller's own arrays)."""
        return tuple(self._core.leaves)

    @property
    def dtype(self):
        return self._core.dtype

    @property
    def shape(self):
        shape = self._core.shape
        return tuple(shape[:-2]) + (shape[-1], shape[-1])

    @property
    def n_reflections(self):
        return self._core.shape[-2]

    @property
    def backend(self):
        """``"numpy"`` or ``"cupy"``."""
        return self._core.backend

    @property
    def check_finite(self):
        """Whether NaN/Inf in the vectors and in every ``X`` is rejected."""
        return self._core.check_finite

    def __repr__(self):
        return "HouseholderProduct(shape={}, dtype={}, n_reflections={}, backend={}, algorithm={!r})".format(
            self.shape, self.dtype, self.n_reflections, self.backend, self.algorithm
        )

    def refresh(self):
        """Rebuild from the parameter arrays after they were updated in place.

        Re-validates the vectors and drops every cached block factor. Returns
        ``self``. Cost: O(n d) now, the build again at the next product.
        """
        core = self._core
        xp = core.xp
        for segment in core.segments:
            leaf = core.leaves[segment.leaf]
            if isinstance(core, Reflections) and not core.native:
                norms = _generic.row_norms(_generic.full_rows(leaf, segment, core.dtype, xp), xp)
                _validate.vector_norms(norms, xp, core.check_finite, allow_zero_rows=segment.k is not None)
                continue
            if segment.k is None:
                norms = primitives.row_norms(xp.abs(_validate.vectors(leaf, xp)), xp)
            else:  # a geqrf array: tau is implied by the stored entries (and lambda)
                reflectors = xp.swapaxes(leaf[..., : segment.k], -1, -2)
                if _complex.is_complex(leaf.dtype):
                    sumsq = _complex.squared_norms(_blocks.structured(reflectors.copy(), _blocks.UNIT, xp), xp)
                else:
                    sumsq = _blocks.squared_norms(reflectors, _blocks.UNIT, xp)
                norms = xp.sqrt(1 + sumsq)
            _validate.vector_norms(norms, xp, core.check_finite)
        core.refresh()
        return self

    # --------------------------------------------------------------- algebra
    @property
    def _unitary(self):
        return isinstance(self._core, ComplexReflections)

    @property
    def T(self):
        """The transpose: the reversed product, conjugated when complex (shares all caches). O(1)."""
        return self._view(
            self._core, not self._transposed, self.algorithm, self.block_size, self._conjugated != self._unitary
        )

    @property
    def H(self):
        """The adjoint (conjugate transpose), the reversed product; equal to :meth:`inv`, and to
        :attr:`T` when real (shares all caches). O(1)."""
        return self._view(self._core, not self._transposed, self.algorithm, self.block_size, self._conjugated)

    def conj(self):
        """The entrywise conjugate (``self`` when real; shares all caches). O(1)."""
        if not self._unitary:
            return self
        return self._view(self._core, self._transposed, self.algorithm, self.block_size, not self._conjugated)

    def inv(self):
        """The inverse, equal to :attr:`H` since H is unitary (orthogonal when real). O(1)."""
        return self.H

    def det(self):
        """``(-1)**n`` per batch entry (identity factors from ``tau == 0`` excluded); for LAPACK's
        complex factors the product of their eigenvalues ``1 - tau_i v_i^H v_i``. O(n)."""
        xp = self._xp
        batch = self.shape[:-2]
        if self._unitary:
            det = self._core.det()
            det = xp.conj(det) if self._transposed != self._conjugated else det
            return xp.broadcast_to(xp.asarray(det, dtype=self.dtype), batch).copy()
        identities = self._core.identity_count()
        if identities is not None:
            count = self.n_reflections - identities
            if not is_native(xp):
                sign = 1 - 2 * _validate.astype(count % 2, self.dtype, xp)
                return copy(xp.broadcast_to(sign, batch), xp)
            return xp.broadcast_to(xp.where(count % 2 == 0, 1, -1).astype(self.dtype), batch).copy()
        return xp.full(batch, (-1.0) ** self.n_reflections, dtype=self.dtype, **creation_kwargs(self._core.leaves[0]))

    def slogdet(self):
        """``(sign, log|det|) = (det, 0)`` per batch entry; as ``numpy.linalg.slogdet``, a complex
        sign of modulus 1 and a real logarithm for a unitary product."""
        sign = self.det()
        return sign, self._xp.zeros_like(sign, dtype=_complex.real_dtype(sign.dtype))

    def logdet(self):
        """``log|det H| = 0`` per batch entry (real)."""
        return self._logdet(lambda: self.slogdet()[1])

    def matmul(self, x):
        """``H @ X``; see :func:`cuhouse.matmul`."""
        return self @ x

    def _compose(self, other):
        """``H1 @ H2`` as one product of n1 + n2 reflections. O(1) until used.

        Any other cuhouse matrix gives the lazy product of the base class.
        """
        if not isinstance(other, HouseholderProduct):
            return super()._compose(other)
        a, b = self._core, other._core
        array_module(a.leaves[0], b.leaves[0])  # a TypeError naming both when libraries or devices differ
        if self.shape[-1] != other.shape[-1]:
            raise ValueError(
                "cannot compose HouseholderProducts of sizes {0}x{0} and {1}x{1}".format(
                    self.shape[-1], other.shape[-1]
                )
            )
        _validate.batch_shape(("H1", self.shape[:-2]), ("H2", other.shape[:-2]))
        leaves, segments = [], []
        for op in (self, other):
            core = op._core
            order = reversed(core.segments) if op._transposed else core.segments
            for segment in order:
                leaf = core.leaves[segment.leaf]
                matches = [i for i, existing in enumerate(leaves) if existing is leaf]
                if not matches:
                    leaves.append(leaf)
                segments.append(
                    segment._replace(
                        leaf=matches[0] if matches else len(leaves) - 1,
                        reversed=segment.reversed != op._transposed,
                        conjugated=segment.conjugated != op._conjugated,
                    )
                )
        dtype = result_type(a.xp, a.dtype, b.dtype)
        if _complex.is_complex(dtype):
            core = ComplexReflections(
                a.backend, tuple(leaves), tuple(segments), a.check_finite and b.check_finite, dtype
            )
            return self._view(core, False, self.algorithm, self.block_size)
        core = Reflections(
            a.backend,
            tuple(leaves),
            tuple(segments),
            a.check_finite and b.check_finite,
            result_type(a.xp, a.dtype, b.dtype),
        )
        return self._view(core, False, self.algorithm, self.block_size)

    # ------------------------------------------------------------- products
    def __matmul__(self, other):
        if type(other) is numpy.ndarray:
            out = _small.matmul(self, other, "left")
            if out is not None:
                return out
        return super().__matmul__(other)

    def __rmatmul__(self, other):
        if type(other) is numpy.ndarray:
            out = _small.matmul(self, other, "right")
            if out is not None:
                return out
        return super().__rmatmul__(other)

    def _real_core(self):
        """The :class:`Reflections` products run on: the realified one of a unitary product."""
        return self._core.real if self._unitary else self._core

    def plan_for(self, m, dtype=None, differentiable=False):
        """The :class:`cuhouse.plan.Plan` used for an ``X`` with ``m`` columns of ``dtype`` (in ``vjp``
        when ``differentiable``). A unitary product plans for its realified form (2n reflections of
        length 2d); a real one with complex ``X`` for 2m real columns."""
        dtype = numpy_dtype(dtype or self.dtype)
        if _complex.is_complex(dtype) and not self._unitary:
            m *= 2
        return self._plan(m, _complex.real_dtype(dtype), differentiable)

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
        )

    def _plan_backend(self):
        """The machine model of :mod:`cuhouse.plan`: the backend's, or on the generic path
        ``"numpy"`` for a CPU and ``"cupy"`` for any other device."""
        core = self._real_core()
        if core.native:
            return core.backend
        return "numpy" if getattr(core.device, "type", "cpu") == "cpu" or "CPU" in str(core.device) else "cupy"

    def _run(self, columns, transpose, differentiable):
        """``(plan module, plan, (factors, scaled, limits), flip)`` for real ``columns`` ``(..., d, m)``
        (``(..., 2d, m)`` realified for a unitary product)."""
        chosen = self._plan(columns.shape[-1], columns.dtype, differentiable)
        core = self._real_core()
        built = core.factors(chosen, columns.dtype, self._core.layout_for(differentiable))
        module = PLANS[chosen.algorithm] if core.native else portable
        return module, chosen, built, transpose != self._transposed

    def _real_form(self, columns):
        """``(real, back)``: ``columns`` as the real array the algorithms take, and the map from a real
        result (or gradient) back; both are real-linear isometries (:mod:`cuhouse._complex`).

        A unitary product realifies ``(..., d, m)`` to ``(..., 2d, m)`` (conjugating
        first and after for a conjugated view: conj(H) X = conj(H conj(X))); a real
        product splits complex columns into ``(..., d, 2m)``; real columns pass."""
        xp = self._xp
        if self._unitary:
            if self._conjugated:
                columns = xp.conj(columns)

            def back(real):
                out = _complex.complexify_columns(real, xp)
                return xp.conj(out) if self._conjugated else out

            return _complex.realify_columns(columns, xp), back
        if _complex.is_complex(columns.dtype):
            return _complex.split_columns(columns, xp), lambda real: _complex.join_columns(real, xp)
        return columns, lambda real: real

    def _matmat(self, columns, transpose):
        real, back = self._real_form(columns)
        module, _, (factors, _, limits), flip = self._run(real, transpose, False)
        return back(_apply_scaled(module, factors, real, flip, limits, self._xp))

    def _vjp_matmat(self, columns, transpose):
        xp = self._xp
        real, to_columns = self._real_form(columns)
        module, chosen, (factors, scaled, limits), flip = self._run(real, transpose, True)
        out = _apply_scaled(module, factors, real, flip, limits, xp)

        def back(dout):
            dv, dx, exponent = _backward_scaled(
                module, factors, out, self._real_form(dout)[0], flip, limits, chosen.store_inputs, xp
            )
            contributions = self._core.leaf_contributions(dv, scaled)
            if exponent is not None:  # scaled back only now: the unit rows' gradient is divided by their norms
                contributions = [(leaf, _scaling.unscale(g, exponent, xp)) for leaf, g in contributions]
            return contributions, reduce_to_shape(to_columns(dx), columns.shape)

        return to_columns(out), back

    def _vjp_logabsdet(self):
        return self.logdet(), lambda dvalue: []


def _apply_scaled(module, factors, columns, transpose, limits, xp):
    """``module.apply`` with the columns of X out of ``limits`` scaled by powers of two (exact) and the
    result scaled back, so that no intermediate overflows or underflows where the result does not
    (:mod:`cuhouse.algorithms._scaling`). Cost: one GEMV over ``|X|``; three passes over X more
    only when some column is out of range."""
    if limits is None:  # the generic path: no host-side decision (see Reflections.factors)
        return module.apply(factors, columns, transpose, xp)
    exponent = _scaling.column_exponents(columns, limits, xp)
    if exponent is None:
        return module.apply(factors, columns, transpose, xp)
    return _scaling.unscale(module.apply(factors, _scaling.scaled(columns, exponent, xp), transpose, xp), exponent, xp)


def _backward_scaled(module, factors, out, dout, transpose, limits, store_inputs, xp):
    """``(dV, dX, exponent)``: ``module.backward`` with ``out`` and ``dout`` each scaled by one power
    of two per batch entry when either is out of ``limits``
    (:func:`~cuhouse.algorithms._scaling.gradient_needs_scaling`). The gradient w.r.t. the rows is
    bilinear in the two and sums over columns, hence one factor per array, not per column. dX is
    scaled back here; ``dV`` is returned scaled, to be multiplied by ``2**exponent`` (``None``: no
    scaling) after its last step (unit rows' gradients are divided by their norms). Cost: two GEMVs
    over ``|out|`` and ``|dout|``; four passes more only when scaling."""
    if limits is None or not _scaling.gradient_needs_scaling(out, dout, limits, xp):
        return (*module.backward(factors, out, dout, transpose, xp, store_inputs), None)
    e_out, e_dout = (_scaling.array_exponent(a, xp) for a in (out, dout))
    dv, dx = module.backward(
        factors, _scaling.scaled(out, e_out, xp), _scaling.scaled(dout, e_dout, xp), transpose, xp, store_inputs
    )
    return dv, _scaling.unscale(dx, e_dout, xp), e_out + e_dout
