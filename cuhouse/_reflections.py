"""``Reflections``: the reflections behind ``HouseholderProduct`` views, and every cache built from them.

A :class:`cuhouse.HouseholderProduct` is a view (transposed, conjugated or not)
of one ``Reflections`` (real) or ``ComplexReflections`` (unitary, run realified
on a ``Reflections``); this module holds the state and the caches (full rows,
norms, the layout, each algorithm's form), the way gradients go back to the
leaf arrays, and nothing of the public class.
"""

from collections import namedtuple
from types import MappingProxyType

import numpy

from . import _complex, _generic, _geqrf, _memory, _validate
from ._backend import (
    astype,
    creation_kwargs,
    device_of,
    is_native,
    is_torch,
    library_dtype,
    module_named,
    read_only,
    swap,
)
from ._gpu import primitives
from .algorithms import PLANS, _layout, _normalize, _scaling

Segment = namedtuple("Segment", "param transpose k identity conjugate phase", defaults=(False, None))
Segment.__doc__ = """Where a run of reflections comes from: leaf number ``param`` of ``params``, its rows
in reverse order (``transpose``: the adjoint of the run) or not; ``k`` is ``None`` for a vectors
leaf ``(..., n, d)``, or the number of reflectors read in place from a ``geqrf`` array ``a``
``(..., d, N)`` (LAPACK's layout), whose ``tau == 0`` mask is ``identity`` (or ``None``). Complex
runs only: ``conjugate`` takes the entrywise conjugate of the run, and ``phase`` ``(..., k)`` holds the
eigenvalue lambda_i = 1 - tau_i v_i^H v_i of each LAPACK factor (``None``: reflections, lambda = -1)."""


class _Cached:
    """What both reflection states share: the leaf arrays ``params`` read through ``segments``,
    pickling without the caches named in ``_CACHES`` (``refresh`` rebuilds them lazily after
    unpickling), a Dask token of the same state, and the array module of the backend name.

    Thread-safe refresh without a lock: every cache lives in a dictionary of the current
    generation, ``_cache`` (values computed from the leaves: norms, layout, ...) and each
    subclass's tables of built forms (:meth:`_new_tables`); :meth:`refresh` replaces them with new
    empty ones, ``_cache`` first. A value is stored into the dictionary read before its computation
    began, so a value of the old leaves (another thread may update them in place and refresh
    meanwhile) serves the product that computed it and never enters the refreshed dictionaries;
    and a product that read a new form table reads the new values too."""

    _CACHES = ("_cache",)
    _hot = MappingProxyType({})  # no kept dense H for the hot path of cuhouse._reuse (Reflections keeps its own)
    _replay = MappingProxyType({})  # no kept products to replay (cuhouse._reuse.replay; Reflections keeps its own)
    reuse = False  # HouseholderProduct.prepare_reuse(): products run the form fastest per product (cuhouse._reuse)

    def __init__(self, backend, params, segments, check_finite, dtype, known=None):
        self.backend = backend
        self.params = params
        self.segments = segments
        self.check_finite = check_finite
        self.dtype = numpy.dtype(dtype) if backend == "numpy" or is_native(module_named(backend)) else dtype
        self._cache = {} if known is None else known  # the first generation: what the caller knew
        self._new_tables()

    def refresh(self):
        """Drop every cache; the next use rebuilds from the leaf arrays."""
        self._cache = {}
        self._new_tables()

    def _new_tables(self):
        """New empty tables of built forms (each subclass's; none here)."""

    @property
    def native(self):
        """True on NumPy and CuPy (layouts read in place); False on the generic path (:mod:`cuhouse._generic`)."""
        return self.backend == "numpy" or is_native(self.xp)

    def _leaf(self, param):
        """Leaf number ``param`` as the algorithms read it: the caller's array, or, for a NumPy or CuPy
        array in neither C nor Fortran order (a strided view), a read-only C-contiguous copy made once
        per generation. Pickling stores such a leaf C-contiguous and NumPy sums a strided operand in
        another order, so the algorithms read what a pickled copy reads (the same bits fresh and
        pickled); BLAS takes it in place too. O(1), or one copy of the leaf."""
        leaf = self.params[param]
        flags = getattr(leaf, "flags", None)
        if flags is None or flags.c_contiguous or flags.f_contiguous or not self.native:
            return leaf
        cache = self._cache
        key = ("leaf", param)
        copy = cache.get(key)
        if copy is None:
            copy = cache[key] = read_only(self.xp.ascontiguousarray(leaf))
        return copy

    def __getstate__(self):
        return {key: value for key, value in self.__dict__.items() if key not in self._CACHES}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.refresh()

    def __dask_tokenize__(self):
        """The class and the state that pickles, arrays by content; see :mod:`cuhouse._dask`."""
        from dask.base import normalize_token

        return type(self).__qualname__, normalize_token(sorted(self.__getstate__().items()))

    @property
    def xp(self):
        return module_named(self.backend)


class Reflections(_Cached):
    """The shared state behind one or more ``HouseholderProduct`` views.

    It holds the reflections as the leaf arrays the user passed in
    (``params``, read through ``segments``, see :class:`Segment`), plus every
    cache derived from them. A single segment is used in place, in its layout
    (``rows``, ``layout``, ``identity``); several (``H1 @ H2``) are joined into
    full rows once.
    ``H`` and ``H.T`` share one ``Reflections``; ``H1 @ H2`` makes a new one.
    It pickles without its caches, and with its backend as a name.
    """

    _CACHES = _Cached._CACHES + ("_forms", "_hot", "_replay")

    def __init__(self, backend, params, segments, check_finite, dtype, norms=None, summary=None, squared_lengths=None):
        """``norms``, ``summary`` and (one ``geqrf`` leaf) ``squared_lengths``: the caller's, computed from
        the leaves (``None``: not known). The small-size path (:mod:`cuhouse._small`) writes what else
        it knows into ``_cache`` itself."""
        known = {"norms": norms, "summary": summary, "squared_lengths": squared_lengths}
        super().__init__(backend, params, segments, check_finite, dtype, known)

    def _new_tables(self):
        self._forms = {}  # built forms by (algorithm, block size, dtype, layout)
        self._hot = {}  # the kept dense H by column count, for the NumPy hot path (cuhouse._reuse)
        self._replay = {}  # products kept for replay (cuhouse._reuse.replay)

    @property
    def device(self):
        """The device of the leaves (``None`` on NumPy and CuPy)."""
        return device_of(self.params[0])

    @property
    def small(self):
        """``(n, d)`` for one NumPy matrix (no batch dimensions): the small-size path applies
        (:mod:`cuhouse._small`); else ``None``."""
        shape = self.shape
        return tuple(shape) if self.backend == "numpy" and len(shape) == 2 else None

    @property
    def safe(self):
        """Whether every reflection's sum of squares is inside ``dtype``'s safe range, so that its
        form needs no normalization pass (see :meth:`form`). Cached."""
        cache = self._cache
        safe = cache.get("safe")
        if safe is None:
            info = numpy.finfo(self.dtype)
            summary = self.norm_summary()  # host facts: no sync when the constructor had them
            safe = bool(
                (summary.smallest == numpy.inf or summary.smallest >= numpy.sqrt(info.tiny / info.eps))
                and summary.largest <= numpy.sqrt(info.max * info.eps)
            )
            cache["safe"] = safe
        return safe

    def norm_summary(self):
        """The :class:`~cuhouse._validate.NormSummary` of :attr:`norms`: one device-to-host transfer,
        usually made by the constructor's validation. Cached."""
        cache = self._cache
        summary = cache.get("summary")
        if summary is None:
            summary = cache["summary"] = _validate.norm_summary(self.norms, self.xp)
        return summary

    def lapack_ready(self, differentiable):
        """Whether LAPACK's ``?ormqr`` can run a product itself (:mod:`cuhouse.algorithms.ormqr`): one
        ``geqrf`` array on NumPy with no batch, in the safe range, and no gradient to take."""
        return not differentiable and self.layout == _layout.UNIT and self.small is not None and self.safe

    def _stored(self, segment):
        """The stored rows of one segment (a view), in product order; broadcast to the batch shape
        of its ``tau == 0`` mask where ``tau`` had batch dimensions that ``a`` lacks."""
        leaf = self._leaf(segment.param)
        rows = leaf if segment.k is None else _lapack_rows(leaf, segment, self.xp)
        if not segment.transpose:
            return rows
        return rows[..., ::-1, :] if self.native else self.xp.flip(rows, axis=-2)

    @property
    def layout(self):
        """The layout of :attr:`rows` (see :mod:`cuhouse.algorithms._layout`): ``"unit"`` for a
        ``geqrf`` array, ``"trapezoidal"`` for one vectors array whose row i is zero in its first i
        entries (checked once, see :func:`~cuhouse.algorithms._layout.is_trapezoidal`), else ``"full"``."""
        cache = self._cache
        layout = cache.get("layout")
        if layout is None:
            (segment, *more) = self.segments
            if not self.native:  # the generic path runs on full rows: no structure to detect
                simple = segment.k is not None and not (more or segment.transpose)
                layout = _layout.UNIT if simple else _layout.FULL
            elif more or segment.transpose:
                layout = _layout.FULL
            elif segment.k is not None:
                layout = _layout.UNIT
            else:
                trapezoidal = _layout.is_trapezoidal(self.params[segment.param], self.xp)
                layout = _layout.TRAPEZOIDAL if trapezoidal else _layout.FULL
            cache["layout"] = layout
        return layout

    def layout_for(self, differentiable):
        """The layout products run in. A gradient w.r.t. a vectors array covers every entry, the zeros
        of a trapezoidal array included, so differentiable products use its full rows (decided
        without looking at the entries: no host sync)."""
        if differentiable and self._cache.get("layout") is None and self.segments[0].k is None:
            return _layout.FULL
        layout = self.layout
        return _layout.FULL if differentiable and layout == _layout.TRAPEZOIDAL else layout

    @property
    def identity(self):
        """The identity-factor mask ``(..., n)`` of :attr:`rows` (one ``geqrf`` leaf), or ``None``."""
        segments = self.segments
        segment = segments[0]
        return segment.identity if len(segments) == 1 and not segment.transpose and segment.k is not None else None

    @property
    def rows(self):
        """The rows the algorithms run on, in :attr:`layout`: the caller's array itself for one leaf
        (a C-contiguous copy of a strided one, see :meth:`_leaf`)."""
        if len(self.segments) == 1:
            return self._stored(self.segments[0])
        return self.vectors

    @property
    def shape(self):
        """``(..., n, d)`` of the reflections. Cached."""
        cache = self._cache
        shape = cache.get("shape")
        if shape is None:
            shape = tuple(self._stored(self.segments[0]).shape if len(self.segments) == 1 else self.vectors.shape)
            cache["shape"] = shape
        return shape

    @property
    def vectors(self):
        """All reflections as full rows ``(..., n, d)`` in product order (identity factors as zero
        rows): a read-only view (NumPy) of a vectors leaf, else a copy made once. Cached."""
        cache = self._cache
        vectors = cache.get("vectors")
        if vectors is not None:
            return vectors
        if not self.native:
            parts = [_generic.full_rows(self.params[s.param], s, self.dtype, self.xp) for s in self.segments]
            vectors = _generic.joined(parts, self.xp)
        else:
            xp = self.xp
            parts = []
            for segment in self.segments:
                rows = self._stored(segment._replace(transpose=False))
                if segment.k is not None:
                    rows = _layout.full_rows(rows, _layout.UNIT, xp)
                    if segment.identity is not None:
                        rows = xp.where(segment.identity[..., None], 0, rows)
                if segment.transpose:
                    rows = rows[..., ::-1, :]
                parts.append(rows.astype(self.dtype, copy=False))
            vectors = read_only(_generic.joined(parts, xp))
        cache["vectors"] = vectors
        return vectors

    @property
    def norms(self):
        """Euclidean norms ``(..., n)`` of the reflections (as stored, the implicit 1 included). Cached."""
        cache = self._cache
        norms = cache.get("norms")
        if norms is None:
            if not self.native:
                norms = _generic.row_norms(self.vectors, self.xp)
            elif self.layout == _layout.UNIT:  # one geqrf leaf, read as from_lapack read it
                norms = self.xp.broadcast_to(self.xp.sqrt(self.squared_lengths), self.shape[:-1])
            else:
                norms = primitives.row_norms(self.vectors, self.xp)
            cache["norms"] = norms
        return norms

    @property
    def squared_lengths(self):
        """``1 + ||v_i||^2`` ``(..., k)`` of the reflectors of one ``geqrf`` leaf (layout ``"unit"``), read
        from the leaf itself as ``from_lapack`` read them (:func:`cuhouse._geqrf.squared_lengths`), so that
        they have the same bits fresh, pickled and refreshed. Cached."""
        cache = self._cache
        squared = cache.get("squared_lengths")
        if squared is None:
            (segment,) = self.segments
            squared = cache["squared_lengths"] = _geqrf.squared_lengths(self._leaf(segment.param), segment.k, self.xp)
        return squared

    def identity_count(self):
        """Identity factors (``tau == 0``) per batch entry, or ``None`` when there are none. O(n)."""
        masks = [segment.identity for segment in self.segments if segment.identity is not None]
        if not masks:
            return None
        xp = self.xp
        if not self.native:  # count_nonzero is Array API 2024.12
            return sum(xp.sum(xp.astype(mask, xp.int64), axis=-1) for mask in masks)
        return sum(xp.count_nonzero(mask, axis=-1) for mask in masks)

    def form(self, chosen, dtype, layout):
        """``(form, scaled, limits)``: the form of H that algorithm ``chosen`` (a :class:`plan.Plan`)
        builds, in ``dtype``, for :attr:`rows` read in ``layout`` (:meth:`layout_for`). Cached.

        Handed the raw rows in place (converted only when ``dtype`` differs):
        ``cwy`` and ``dense`` build from them directly, ``sequential`` and
        ``fasth`` normalize a copy inside their ``build``. Only when some
        row's sum of squares would leave ``dtype``'s safe range are the rows
        normalized here first (full rows, a copy); ``scaled`` is then
        ``(unit, norms)`` for the gradient, else ``None``. ``limits`` is the
        range of X's column sizes the form takes without overflow or underflow
        (:class:`~cuhouse.algorithms._scaling.Limits`, from the norms of the
        rows it was built from: unit rows for every algorithm but CWY on raw
        rows). The dense plan's d x d matrix is checked against the machine's
        memory first. On the generic path (neither NumPy nor CuPy) every row is
        brought into range by :func:`cuhouse._generic.form` without a host
        synchronization, ``scaled`` is that per-row scale and ``limits`` is
        ``None``: with no test on the host, every column of X is scaled to its
        binade instead (see ``householder._apply_scaled``).
        """
        key = (chosen.algorithm, chosen.block_size, dtype, layout)
        forms = self._forms  # read once: a refresh() meanwhile gives a new table, which this form never enters
        found = forms.get(key)
        if found is None:
            xp = self.xp
            if chosen.algorithm == "dense":
                d = self.shape[-1]
                _memory.dense_memory(
                    self.shape[:-2] + (d, d), dtype, 'algorithm="dense"', xp, _memory.DENSE_WORKSPACE, self.device
                )
            if not self.native:  # rows scaled into range without a host synchronization; no column limits
                form, scale = _generic.form(self, chosen.algorithm, chosen.block_size or 1, dtype)
                found = forms[key] = form, scale, None
                return found
            module = PLANS[chosen.algorithm]
            rows, identity, scaled = self.rows, self.identity, None
            if rows.dtype != dtype:  # converted only then (astype with copy=False: a call more)
                rows = rows.astype(dtype)
            if not self.safe:
                scaled = _normalize.unit_rows(rows, layout, identity, xp)
                rows, layout, identity = scaled[0], _layout.FULL, None
            # dense: CWY builds H and its adjoint; ormqr: LAPACK on the raw rows, as CWY. FastH and the
            # sequential loop normalize their own copy, and normalized rows are unit rows
            raw = scaled is None and chosen.algorithm in ("cwy", "dense", "ormqr")
            limits = self._limits(dtype, raw)
            if chosen.algorithm == "ormqr":  # tau from the squared lengths, unless rows were converted to dtype
                squared = self.squared_lengths
                form = module.build(rows, None, xp, layout, identity, squared if squared.dtype == dtype else None)
            elif chosen.algorithm == "sequential" and scaled is None and identity is None and layout != _layout.UNIT:
                # the norms of the rows the loop normalizes (the same bits: not again) when none is zero,
                # unless they were computed from a strided leaf, which the rows read through a copy (_leaf)
                segment, *more = self.segments
                in_place = self._leaf(segment.param) is self.params[segment.param]
                norms = None
                if xp is numpy and dtype == self.dtype and not self.norm_summary().zero and (more or in_place):
                    norms = self.norms
                form = module.build(rows, chosen.block_size, xp, layout, identity, norms=norms)
            else:
                form = module.build(rows, chosen.block_size, xp, layout, identity)
            found = forms[key] = form, scaled, limits
        return found

    def _limits(self, dtype, raw):
        """The :class:`~cuhouse.algorithms._scaling.Limits` of a form in ``dtype`` built on the rows as
        stored (``raw``: from their norm summary, a host fact) or on unit rows. Rows all zero (identity
        factors only) act as unit rows. O(1)."""
        summary = self.norm_summary() if raw else None
        if summary is None or summary.smallest == numpy.inf:
            return _scaling.limits(1.0, 1.0, self.shape[-1], dtype)
        return _scaling.limits(summary.smallest, summary.largest, self.shape[-1], dtype)

    def build_ormqr_form(self):
        """Build now the ``"ormqr"`` plan's form (:mod:`cuhouse.algorithms.ormqr`) of one Fortran-ordered
        NumPy ``geqrf`` leaf in the safe range, from the squared lengths its check read: what
        :meth:`form` builds for it, without its general steps (the small path, :mod:`cuhouse._small`,
        calls it with the check: 0.93x the instructions of a fresh product at d = 16 and 64). O(k)."""
        (segment,) = self.segments
        rows = self.params[segment.param][:, : segment.k].T
        form = PLANS["ormqr"].build(rows, None, numpy, _layout.UNIT, segment.identity, self.squared_lengths)
        self._forms["ormqr", None, self.dtype, _layout.UNIT] = form, None, self._limits(self.dtype, True)

    def contributions(self, dv, scaled):
        """``(leaf, gradient)`` pairs from ``dv``, the gradient w.r.t. the rows the form was built
        from (``(..., n, d)``; see :meth:`form` for ``scaled``).

        Each segment goes back to its leaf, reversed if it appears transposed; a
        ``geqrf`` leaf gets its strictly lower part (zero on and above the
        diagonal and for ``tau == 0``). ``dv`` may be overwritten. Cost: O(n d).
        """
        if not self.native:
            return _generic.contributions(self, dv, scaled)
        xp = self.xp
        if scaled is not None:
            unit, norms = scaled
            dv = _normalize.raw_gradient(dv, unit.astype(dv.dtype, copy=False), norms.astype(dv.dtype, copy=False), xp)
        contributions = []
        for segment, leaf, part in _generic.segment_parts(dv, self.segments, self.params, xp):
            if segment.k is not None:
                if scaled is not None or len(self.segments) > 1:  # full rows: keep the stored entries only
                    part = _layout.structured(part.copy(), _layout.UNIT, xp)
                    if segment.identity is not None:
                        part *= ~segment.identity[..., None]
                grad = xp.zeros(part.shape[:-2] + leaf.shape[-2:], dtype=part.dtype)
                transpose_into(grad[..., : segment.k], part, xp)
                part = grad
            contributions.append((leaf, part))
        return contributions


def _lapack_rows(leaf, segment, xp):
    """The reflectors of a ``geqrf`` leaf ``(..., d, N)`` as rows ``(..., k, d)`` (a view), broadcast to
    the batch shape of the segment's ``tau == 0`` mask when ``tau`` has batch dimensions ``a`` lacks."""
    rows = swap(leaf[..., : segment.k], xp)
    identity = segment.identity  # a 1-D mask goes with an ``a`` of no batch (the mask has the joint batch shape)
    if identity is not None and identity.ndim > 1 and identity.shape[:-1] != rows.shape[:-2]:
        rows = xp.broadcast_to(rows, segment.identity.shape[:-1] + rows.shape[-2:])
    return rows


class ComplexReflections(_Cached):
    """The shared state of a unitary product (any complex leaf or segment), on the real algorithms.

    Same interface as :class:`Reflections` for :class:`HouseholderProduct`. The
    factors are realified once, lazily (:mod:`cuhouse._complex`): each complex
    factor becomes two real reflections in 2d dimensions, and :attr:`real`, a
    :class:`Reflections` over those ``(..., 2n, 2d)`` rows, runs every product,
    plan and cache; gradients w.r.t. the real rows go back to the complex leaves
    through it too (:class:`Realified`). Pickles without its caches.
    """

    def _rows_of(self, segment):
        """The complex full rows ``(..., k, d)`` of one segment in stored order (identity factors
        zero, conjugated if the segment is), and their eigenvalues (``None``: reflections)."""
        xp = self.xp
        leaf = self._leaf(segment.param)
        if not self.native:
            rows = _generic.full_rows(leaf, segment._replace(transpose=False), self.dtype, xp)
        elif segment.k is None:
            rows = leaf
        else:
            rows = _layout.full_rows(_lapack_rows(leaf, segment, xp), _layout.UNIT, xp)
            if segment.identity is not None:
                rows = xp.where(segment.identity[..., None], 0, rows)
        phase = segment.phase
        if segment.conjugate:
            rows = xp.conj(rows)
            phase = None if phase is None else xp.conj(phase)
        return astype(rows, self.dtype, xp), phase

    @property
    def shape(self):
        """``(..., n, d)`` of the complex factors."""
        shapes = [self._rows_shape(segment) for segment in self.segments]
        batch = numpy.broadcast_shapes(*(shape[:-2] for shape in shapes))
        return batch + (sum(shape[-2] for shape in shapes), shapes[0][-1])

    def _rows_shape(self, segment):
        leaf = self.params[segment.param]
        if segment.k is None:
            return tuple(leaf.shape)
        masks = [m.shape[:-1] for m in (segment.identity, segment.phase) if m is not None]
        return numpy.broadcast_shapes(leaf.shape[:-2], *masks) + (segment.k, leaf.shape[-2])

    @property
    def vectors(self):
        """All factors' vectors as complex full rows ``(..., n, d)`` in product order (identity
        factors as zero rows; an adjoint run reversed, a conjugated one conjugated). Cached."""
        cache = self._cache
        joined = cache.get("vectors")
        if joined is None:
            xp = self.xp
            parts = []
            for segment in self.segments:
                rows, _ = self._rows_of(segment)
                parts.append(xp.flip(rows, axis=-2) if segment.transpose else rows)
            joined = _generic.joined(parts, xp)
            if self.native:  # a read-only array of its own (one segment's rows may be a view of a leaf)
                joined = read_only(joined.copy() if len(parts) == 1 else joined)
            cache["vectors"] = joined
        return joined

    def paired_rows(self):
        """``(rows, pairs)``: the realified rows ``(..., 2n, 2d)`` in product order
        (:func:`cuhouse._complex.pair_rows` of every segment) and each segment's units ``(p, q)``,
        computed now from the leaves (differentiable on torch). O(n d)."""
        xp = self.xp
        parts, pairs = [], []
        for segment in self.segments:
            rows, phase = self._rows_of(segment)
            paired, p, q = _complex.pair_rows(rows, phase, xp)
            pairs.append((p, q))
            parts.append(xp.flip(paired, axis=-2) if segment.transpose else paired)
        rows = _generic.joined(parts, xp)
        return (xp.ascontiguousarray(rows) if self.native else rows), pairs

    @property
    def real(self):
        """The :class:`Realified` reflections of the realified rows ``(..., 2n, 2d)``. Built once (on
        torch without a graph: a product that records a gradient realifies afresh, see
        ``HouseholderProduct._autograd``)."""
        cache = self._cache
        real = cache.get("real")
        if real is None:
            rows, pairs = self.paired_rows()
            if is_torch(self.xp):
                rows, pairs = rows.detach(), [(p.detach(), q.detach()) for p, q in pairs]
            real = cache["real"] = Realified(self, rows, pairs)
        return real

    def layout_for(self, differentiable):
        return self.real.layout_for(differentiable)

    def det(self):
        """``det`` of the product per batch entry of the factors' shape: the product of every
        factor's eigenvalue (conjugated for an adjoint or conjugated run, not for both). O(n)."""
        xp = self.xp
        total = xp.ones((), dtype=self.dtype, **creation_kwargs(self.params[0]))
        for segment in self.segments:
            n = self._rows_shape(segment)[-2]
            if segment.phase is not None:
                value = xp.prod(segment.phase, axis=-1)
                total = total * (xp.conj(value) if segment.conjugate != segment.transpose else value)
            elif segment.identity is not None:
                count = n - xp.sum(astype(segment.identity, library_dtype("int64", xp), xp), axis=-1)
                total = total * astype(1 - 2 * (count % 2), self.dtype, xp)
            else:
                total = total * (-1.0) ** n
        return total


class Realified(Reflections):
    """The :class:`Reflections` of a unitary product's realified rows ``(..., 2n, 2d)``
    (:meth:`ComplexReflections.paired_rows`), which also takes gradients back to the complex leaves.

    It keeps the complex state's ``complex_segments`` and ``complex_params``
    and each segment's units ``(p, q)`` (``pairs``) it was realified with: a
    gradient goes back with the units of the rows its form was built from,
    though another thread updated the leaves in place and refreshed the
    complex state meanwhile (which then realifies them anew).
    """

    def __init__(self, owner, rows, pairs):
        super().__init__(owner.backend, (rows,), (Segment(0, False, None, None),), owner.check_finite, rows.dtype)
        self.complex_segments = owner.segments
        self.complex_params = owner.params
        self.pairs = pairs

    def contributions(self, dv, scaled):
        """``(leaf, gradient)`` pairs for the complex leaves from ``dv`` ``(..., 2n, 2d)``, the gradient
        w.r.t. the real rows (see :meth:`Reflections.contributions` for ``scaled``): each pair of rows
        back to its complex factor (:func:`cuhouse._complex.pair_gradient` with this realification's
        units), conjugated for a conjugated run, to the strictly lower part of a ``geqrf`` leaf; a real
        leaf gets the real part. Cost: O(n d)."""
        xp = self.xp
        ((_, dv),) = super().contributions(dv, scaled)
        contributions = []
        parts = _generic.segment_parts(dv, self.complex_segments, self.complex_params, xp, per_factor=2)
        for (segment, leaf, part), (p, q) in zip(parts, self.pairs):
            grad = _complex.pair_gradient(part, p, q, xp)
            if segment.conjugate:
                grad = xp.conj(grad)
            if not self.native:
                grad = _generic.to_leaf(grad, segment, leaf, xp)
            elif segment.k is not None:
                grad = _layout.structured(grad, _layout.UNIT, xp)
                if segment.identity is not None:
                    grad = xp.where(segment.identity[..., None], 0, grad)
                full = xp.zeros(grad.shape[:-2] + leaf.shape[-2:], dtype=grad.dtype)
                transpose_into(full[..., : segment.k], grad, xp)
                grad = full
            contributions.append((leaf, grad if _complex.is_complex(leaf.dtype) else xp.real(grad)))
        return contributions


def transpose_into(target, source, xp, strip=16):
    """``target[...] = swapaxes(source)`` for ``source`` ``(..., p, q)``, by strips of rows on NumPy
    (a whole transposed copy of a large power-of-two array thrashes the cache: about 8x slower)."""
    if xp.__name__ != "numpy":
        target[...] = xp.swapaxes(source, -1, -2)
        return target
    for first in range(0, source.shape[-2], strip):
        target[..., first : first + strip] = xp.swapaxes(source[..., first : first + strip, :], -1, -2)
    return target
