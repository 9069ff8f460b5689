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

from . import _generic, _validate, layouts, plan
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
from .algorithms import ALGORITHMS, _blocks, portable

ALGORITHM_CHOICES = ("auto",) + tuple(ALGORITHMS)


Segment = namedtuple("Segment", "leaf reversed k identity")
Segment.__doc__ = """Where a run of reflections comes from: leaf array number ``leaf``, its rows
``reversed`` or not; ``k`` is ``None`` for a vectors leaf ``(..., n, d)``, or the
number of reflectors read in place from a ``geqrf`` array ``a`` ``(..., d, N)``
(LAPACK's layout), whose ``tau == 0`` mask is ``identity`` (or ``None``)."""


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
        self._factors = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        for cache in ("_vectors", "_norms", "_layout", "_factors"):
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

    def _stored(self, segment):
        """The stored rows of one segment (a view), in product order."""
        leaf = self.leaves[segment.leaf]
        rows = leaf if segment.k is None else swap(leaf[..., : segment.k], self.xp)
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
        """``(..., n, d)`` of the reflections."""
        if len(self.segments) == 1:
            return self._stored(self.segments[0]).shape
        return self.vectors.shape

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
        return sum(self.xp.count_nonzero(mask, axis=-1) for mask in masks)

    def factors(self, chosen, dtype, layout):
        """``(factors, scaled)``: the block factors of ``chosen`` (a :class:`plan.Plan`) in ``dtype``,
        for :attr:`rows` read in ``layout`` (:meth:`layout_for`). Cached.

        Built from the raw rows in place (converted only when ``dtype`` differs),
        with no normalization pass. Only when some row's sum of squares would
        leave ``dtype``'s safe range are the rows normalized first (full rows,
        a copy); ``scaled`` is then ``(unit, norms)`` for the gradient, else
        ``None``. The dense plan's d x d matrix is checked against the
        machine's memory first.
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
            if not self.native:
                self._factors[key] = _generic.factors(self, chosen.algorithm, chosen.block_size or 1, dtype)
                return self._factors[key]
            module = ALGORITHMS[chosen.algorithm]
            rows, identity, scaled = self.rows.astype(dtype, copy=False), self.identity, None
            info = numpy.finfo(dtype)
            norms = self.norms
            safe = ((norms >= numpy.sqrt(info.tiny / info.eps)) | (norms == 0)) & (
                norms <= numpy.sqrt(info.max * info.eps)
            )
            if not bool(safe.all()):
                scaled = _blocks.unit_rows(rows, layout, identity, xp)
                rows, layout, identity = scaled[0], _blocks.FULL, None
            self._factors[key] = module.build(rows, chosen.block_size, xp, layout, identity), scaled
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
        xp = array_module(vectors)
        algorithm = _validate.choice(algorithm, "algorithm", ALGORITHM_CHOICES)
        block_size = _validate.positive_int_or_none(block_size, "block_size")
        v = _validate.vectors(vectors, xp)
        if is_native(xp):
            norms = primitives.row_norms(v, xp)
            _validate.vector_norms(norms, xp, bool(check_finite))
        else:
            _generic_algorithm(algorithm)
            norms = None
            if check_finite:  # on the generic path, check_finite=False means no host synchronization at all
                _validate.vector_norms(_generic.row_norms(v, xp), xp, True)
        core = Reflections(backend_name(xp), (v,), (Segment(0, False, None, None),), bool(check_finite), v.dtype, norms)
        self._init(core, False, algorithm, block_size)

    def _init(self, core, transposed, algorithm, block_size):
        self._core = core
        self._transposed = transposed
        self.algorithm = algorithm
        self.block_size = block_size

    def _substitute(self, mapping):
        """This product on other leaf arrays: ``mapping`` takes ``id(leaf)`` to its replacement
        (same shape and layout); leaves not in it stay. Nothing is validated or copied. O(1)."""
        core = self._core
        leaves = tuple(mapping.get(id(leaf), leaf) for leaf in core.leaves)
        new = Reflections(core.backend, leaves, core.segments, core.check_finite, core.dtype)
        return self._view(new, self._transposed, self.algorithm, self.block_size)

    @classmethod
    def _view(cls, core, transposed, algorithm, block_size):
        obj = cls.__new__(cls)
        obj._init(core, transposed, algorithm, block_size)
        return obj

    @classmethod
    def from_lapack(cls, a, tau, algorithm="auto", block_size=None, *, check_finite=True):
        """Q = H(1) ... H(k) from the ``geqrf`` layout.

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
        """
        xp = array_module(a, tau)
        algorithm = _validate.choice(algorithm, "algorithm", ALGORITHM_CHOICES)
        block_size = _validate.positive_int_or_none(block_size, "block_size")
        if is_native(xp):
            a, k, identity, dtype, norms = layouts.lapack_reflectors(a, tau, xp, bool(check_finite))
        else:
            _generic_algorithm(algorithm)
            (a, k, identity, dtype), norms = _generic.lapack_reflectors(a, tau, xp, bool(check_finite)), None
        core = Reflections(backend_name(xp), (a,), (Segment(0, False, k, identity),), bool(check_finite), dtype, norms)
        return cls._view(core, False, algorithm, block_size)

    @classmethod
    def from_dense(cls, q, algorithm="auto", block_size=None, *, check_finite=True):
        """The Householder product equal to an orthogonal ``q``.

        ``q`` ``(..., d, d)`` orthogonal: at most d reflections and
        ``todense()`` equal to ``q`` to within 50 eps d. ``q`` ``(..., d, r)``
        with orthonormal columns: at most r reflections whose product's first
        r columns equal ``q``. Each reflector is chosen so that the QR's R is
        the identity; an identity factor (as ``tau == 0``) stands where a
        column needs no reflection (``q = I`` gives identity factors only).
        Input that is not orthogonal to 50 eps d is a ``ValueError``.
        Cost: O(d r^2) once.
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
        (from :meth:`from_lapack` or ``H1 @ H2``: full rows, a copy made once)."""
        v = self._core.vectors
        return v[..., ::-1, :] if self._transposed else v

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
            if not core.native:
                norms = _generic.row_norms(_generic.full_rows(leaf, segment, core.dtype, xp), xp)
                _validate.vector_norms(norms, xp, core.check_finite, allow_zero_rows=segment.k is not None)
                continue
            if segment.k is None:
                norms = primitives.row_norms(_validate.vectors(leaf, xp), xp)
            else:  # a geqrf array: tau is implied by the stored entries
                norms = xp.sqrt(
                    1 + _blocks.squared_norms(xp.swapaxes(leaf[..., : segment.k], -1, -2), _blocks.UNIT, xp)
                )
            _validate.vector_norms(norms, xp, core.check_finite)
        core.refresh()
        return self

    # --------------------------------------------------------------- algebra
    @property
    def T(self):
        """The transpose, which is the reversed product (shares all caches). O(1)."""
        return self._view(self._core, not self._transposed, self.algorithm, self.block_size)

    def inv(self):
        """The inverse, equal to :attr:`T` since H is orthogonal. O(1)."""
        return self.T

    def det(self):
        """``(-1)**n`` per batch entry (identity factors from ``tau == 0`` excluded)."""
        xp = self._xp
        batch = self.shape[:-2]
        identities = self._core.identity_count()
        if identities is not None:
            count = self.n_reflections - identities
            if not is_native(xp):
                sign = 1 - 2 * _validate.astype(count % 2, self.dtype, xp)
                return copy(xp.broadcast_to(sign, batch), xp)
            return xp.broadcast_to(xp.where(count % 2 == 0, 1, -1).astype(self.dtype), batch).copy()
        return xp.full(batch, (-1.0) ** self.n_reflections, dtype=self.dtype, **creation_kwargs(self._core.leaves[0]))

    def slogdet(self):
        """``(sign, log|det|) = (det, 0)`` per batch entry."""
        sign = self.det()
        return sign, self._xp.zeros_like(sign)

    def logdet(self):
        """``log|det H| = 0`` per batch entry."""
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
                        leaf=matches[0] if matches else len(leaves) - 1, reversed=segment.reversed != op._transposed
                    )
                )
        core = Reflections(
            a.backend,
            tuple(leaves),
            tuple(segments),
            a.check_finite and b.check_finite,
            result_type(a.xp, a.dtype, b.dtype),
        )
        return self._view(core, False, self.algorithm, self.block_size)

    # ------------------------------------------------------------- products
    def plan_for(self, m, dtype=None, differentiable=False):
        """The :class:`cuhouse.plan.Plan` used for an ``X`` with ``m`` columns (in ``vjp`` when
        ``differentiable``)."""
        dtype = numpy_dtype(dtype or self.dtype)
        return plan.choose(
            self.shape[-1],
            self.n_reflections,
            m,
            dtype,
            self._plan_backend(),
            self.algorithm,
            self.block_size,
            self._core.layout_for(differentiable),
        )

    def _plan_backend(self):
        """The machine model of :mod:`cuhouse.plan`: the backend's, or on the generic path
        ``"numpy"`` for a CPU and ``"cupy"`` for any other device."""
        core = self._core
        if core.native:
            return core.backend
        return "numpy" if getattr(core.device, "type", "cpu") == "cpu" or "CPU" in str(core.device) else "cupy"

    def _run(self, columns, transpose, differentiable):
        """``(algorithm module, plan, (factors, scaled), flip)`` for ``columns`` ``(..., d, m)``."""
        chosen = self.plan_for(columns.shape[-1], columns.dtype, differentiable)
        built = self._core.factors(chosen, columns.dtype, self._core.layout_for(differentiable))
        module = ALGORITHMS[chosen.algorithm] if self._core.native else portable
        return module, chosen, built, transpose != self._transposed

    def _matmat(self, columns, transpose):
        module, _, (factors, _), flip = self._run(columns, transpose, False)
        return module.apply(factors, columns, flip, self._xp)

    def _vjp_matmat(self, columns, transpose):
        xp = self._xp
        module, chosen, (factors, scaled), flip = self._run(columns, transpose, True)
        out = module.apply(factors, columns, flip, xp)

        def back(dout):
            dv, dx = module.backward(factors, out, dout, flip, xp, chosen.store_inputs)
            return self._core.leaf_contributions(dv, scaled), reduce_to_shape(dx, columns.shape)

        return out, back

    def _vjp_logabsdet(self):
        return self.logdet(), lambda dvalue: []
