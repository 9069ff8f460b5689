"""``Reflections``: the reflections behind ``HouseholderProduct`` views, and every cache built from them.

A :class:`cuhouse.HouseholderProduct` is a view (transposed or not) of one
``Reflections``; this module holds the state and the caches (full rows,
norms, the layout, each algorithm's form), the way gradients go back to the
parameter arrays, and nothing of the public class.
"""

from collections import namedtuple

import numpy

from . import _memory
from ._backend import module_named, read_only
from ._gpu import primitives
from .algorithms import ALGORITHMS, _layout, _normalize

# Peak memory of the dense plan and of todense() in units of the d x d result: measured
# 4.06x at d = 2000 (cwy), 2.0x (dense).
DENSE_WORKSPACE = 4

Segment = namedtuple("Segment", "param transpose k identity")
Segment.__doc__ = """Where a run of reflections comes from: parameter array number ``param``, its
rows in reverse order (``transpose``: the segment appears transposed) or not;
``k`` is ``None`` for a vectors array ``(..., n, d)``, or the number of
reflectors read in place from a ``geqrf`` array ``a`` ``(..., d, N)``
(LAPACK's layout), whose ``tau == 0`` mask is ``identity`` (or ``None``)."""


class Reflections:
    """The shared state behind one or more ``HouseholderProduct`` views.

    It holds the reflections as the parameter arrays the user passed in
    (``params``, read through ``segments``, see :class:`Segment`), plus every
    cache derived from them. A single segment is used in place, in its layout
    (``rows``, ``layout``, ``identity``); several (``H1 @ H2``) are joined into
    full rows once.
    ``H`` and ``H.T`` share one ``Reflections``; ``H1 @ H2`` makes a new one.
    It pickles without its caches, and with its backend as a name.
    """

    def __init__(self, backend, params, segments, check_finite, dtype, norms=None):
        self.backend = backend
        self.params = params
        self.segments = segments
        self.check_finite = check_finite
        self.dtype = numpy.dtype(dtype)
        self.refresh()
        self._norms = norms

    def refresh(self):
        """Drop every cache; the next use rebuilds from the parameter arrays."""
        self._vectors = None
        self._norms = None
        self._layout = None
        self._forms = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        for cache in ("_vectors", "_norms", "_layout", "_forms"):
            del state[cache]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.refresh()

    def __dask_tokenize__(self):
        """The token of the state that pickles (caches excluded), arrays by content; see :mod:`cuhouse._dask`."""
        from dask.base import normalize_token

        return type(self).__qualname__, normalize_token(sorted(self.__getstate__().items()))

    @property
    def xp(self):
        return module_named(self.backend)

    def _stored(self, segment):
        """The stored rows of one segment (a view), in product order."""
        param = self.params[segment.param]
        rows = param if segment.k is None else self.xp.swapaxes(param[..., : segment.k], -1, -2)
        return rows[..., ::-1, :] if segment.transpose else rows

    @property
    def layout(self):
        """The layout of :attr:`rows` (see :mod:`cuhouse.algorithms._layout`): ``"unit"`` for a
        ``geqrf`` array, ``"trapezoidal"`` for one vectors array whose row i is zero in its first i
        entries (checked once, see :func:`~cuhouse.algorithms._layout.is_trapezoidal`), else ``"full"``."""
        if self._layout is None:
            (segment, *more) = self.segments
            if more or segment.transpose:
                self._layout = _layout.FULL
            elif segment.k is not None:
                self._layout = _layout.UNIT
            else:
                trapezoidal = _layout.is_trapezoidal(self.params[segment.param], self.xp)
                self._layout = _layout.TRAPEZOIDAL if trapezoidal else _layout.FULL
        return self._layout

    def layout_for(self, differentiable):
        """The layout products run in. A gradient w.r.t. a vectors array covers every entry, the zeros
        of a trapezoidal array included, so differentiable products use its full rows."""
        layout = self.layout
        return _layout.FULL if differentiable and layout == _layout.TRAPEZOIDAL else layout

    @property
    def identity(self):
        """The identity-factor mask ``(..., n)`` of :attr:`rows`, or ``None``."""
        return self.segments[0].identity if self.layout == _layout.UNIT else None

    @property
    def rows(self):
        """The rows the algorithms run on, in :attr:`layout`: the caller's array itself for one segment."""
        if len(self.segments) == 1:
            return self._stored(self.segments[0])
        return self.vectors

    @property
    def shape(self):
        """``(..., n, d)`` of the reflections."""
        if len(self.segments) == 1:
            return self._stored(self.segments[0]).shape
        return self.vectors.shape

    @property
    def vectors(self):
        """All reflections as full rows ``(..., n, d)`` in product order (identity factors as zero
        rows): a read-only view (NumPy) of a vectors array, else a copy made once. Cached."""
        if self._vectors is None:
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
            if self.layout == _layout.UNIT:
                self._norms = self.xp.sqrt(1 + _layout.squared_norms(self.rows, _layout.UNIT, self.xp))
            else:
                self._norms = primitives.row_norms(self.vectors, self.xp)
        return self._norms

    def identity_count(self):
        """Identity factors (``tau == 0``) per batch entry, or ``None`` when there are none. O(n)."""
        masks = [segment.identity for segment in self.segments if segment.identity is not None]
        if not masks:
            return None
        return sum(self.xp.count_nonzero(mask, axis=-1) for mask in masks)

    def form(self, chosen, dtype, layout):
        """``(form, scaled)``: the form of H that algorithm ``chosen`` (a :class:`plan.Plan`) builds,
        in ``dtype``, for :attr:`rows` read in ``layout`` (:meth:`layout_for`). Cached.

        Handed the raw rows in place (converted only when ``dtype`` differs):
        ``cwy`` and ``dense`` build from them directly, ``sequential`` and
        ``fasth`` normalize a copy inside their ``build``. Only when some
        row's sum of squares would leave ``dtype``'s safe range are the rows
        normalized here first (full rows, a copy); ``scaled`` is then
        ``(unit, norms)`` for the gradient, else ``None``. The dense plan's
        d x d matrix is checked against the machine's memory first.
        """
        key = (chosen.algorithm, chosen.block_size, dtype, layout)
        if key not in self._forms:
            xp = self.xp
            if chosen.algorithm == "dense":
                d = self.shape[-1]
                _memory.dense_memory(self.shape[:-2] + (d, d), dtype, 'algorithm="dense"', xp, DENSE_WORKSPACE)
            module = ALGORITHMS[chosen.algorithm]
            rows, identity, scaled = self.rows.astype(dtype, copy=False), self.identity, None
            info = numpy.finfo(dtype)
            norms = self.norms
            safe = ((norms >= numpy.sqrt(info.tiny / info.eps)) | (norms == 0)) & (
                norms <= numpy.sqrt(info.max * info.eps)
            )
            if not bool(safe.all()):
                scaled = _normalize.unit_rows(rows, layout, identity, xp)
                rows, layout, identity = scaled[0], _layout.FULL, None
            self._forms[key] = module.build(rows, chosen.block_size, xp, layout, identity), scaled
        return self._forms[key]

    def contributions(self, dv, scaled):
        """``(param, gradient)`` pairs from ``dv``, the gradient w.r.t. the rows the form was built
        from (``(..., n, d)``; see :meth:`form` for ``scaled``).

        Each segment goes back to its parameter array, reversed if it appears transposed; a
        ``geqrf`` leaf gets its strictly lower part (zero on and above the
        diagonal and for ``tau == 0``). ``dv`` may be overwritten. Cost: O(n d).
        """
        xp = self.xp
        if scaled is not None:
            unit, norms = scaled
            dv = _normalize.raw_gradient(dv, unit.astype(dv.dtype, copy=False), norms.astype(dv.dtype, copy=False), xp)
        contributions, start = [], 0
        for segment in self.segments:
            param = self.params[segment.param]
            n = param.shape[-2] if segment.k is None else segment.k
            part = dv[..., start : start + n, :]
            start += n
            if segment.transpose:
                part = part[..., ::-1, :]
            if segment.k is not None:
                if scaled is not None or len(self.segments) > 1:  # full rows: keep the stored entries only
                    part = _layout.structured(part.copy(), _layout.UNIT, xp)
                    if segment.identity is not None:
                        part *= ~segment.identity[..., None]
                grad = xp.zeros(part.shape[:-2] + param.shape[-2:], dtype=part.dtype)
                transpose_into(grad[..., : segment.k], part, xp)
                part = grad
            contributions.append((param, part))
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
