"""``HouseholderProduct``: a d x d orthogonal matrix kept as its reflections.

H = H(v_1) H(v_2) ... H(v_n) with H(v) = I - 2 v v^T / (v^T v); ``H @ X``
applies H(v_n) first. Nothing dense is formed unless asked: products cost
O(d n m) and run as GEMMs, ``.T``/``.inv()`` are free, ``det`` is (-1)^n.

The parameter arrays are treated as immutable: block factors are built once,
lazily, and reused by every later product. After changing ``vectors`` in place
(an optimizer step), call :meth:`HouseholderProduct.refresh`.
"""
import numpy

from . import _validate, layouts, plan
from ._backend import array_module, backend_name, module_named, read_only
from ._gpu import primitives
from ._operator import Operator, reduce_to_shape
from .algorithms import ALGORITHMS

ALGORITHM_CHOICES = ("auto",) + tuple(ALGORITHMS)


class Reflections:
    """The shared state behind one or more ``HouseholderProduct`` views.

    It holds the reflections ``vectors`` ``(..., n, d)`` as slices of the leaf
    arrays the user passed in (``segments``: leaf index and whether the leaf's
    rows appear reversed), plus every cache derived from them. ``H`` and
    ``H.T`` share one ``Reflections``; ``H1 @ H2`` makes a new one. It pickles
    without its caches, and with its backend as a name.
    """

    def __init__(self, backend, leaves, segments, check_finite, may_have_identity_rows=False):
        self.backend = backend
        self.leaves = leaves
        self.segments = segments
        self.check_finite = check_finite
        self.may_have_identity_rows = may_have_identity_rows
        self.refresh()

    def refresh(self):
        """Drop every cache; the next use rebuilds from the leaf arrays."""
        self._vectors = None
        self._norms = None
        self._unit = {}
        self._factors = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        for cache in ("_vectors", "_norms", "_unit", "_factors"):
            del state[cache]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.refresh()

    @property
    def xp(self):
        return module_named(self.backend)

    @property
    def vectors(self):
        """All reflections ``(..., n, d)`` in product order: a read-only view (NumPy). Cached."""
        if self._vectors is None:
            xp = self.xp
            parts = [self.leaves[i][..., ::-1, :] if rev else self.leaves[i] for i, rev in self.segments]
            if len(parts) == 1:
                self._vectors = read_only(parts[0])
            else:
                batch = numpy.broadcast_shapes(*(p.shape[:-2] for p in parts))
                parts = [xp.broadcast_to(p, batch + p.shape[-2:]) for p in parts]
                self._vectors = read_only(xp.concatenate(parts, axis=-2))
        return self._vectors

    @property
    def norms(self):
        if self._norms is None:
            self._norms = primitives.row_norms(self.vectors, self.xp)
        return self._norms

    def unit(self, dtype):
        """Unit rows in ``dtype`` (zero rows stay zero). Cached. O(n d).

        The norms are those of the rows in ``dtype``: float32 vectors used
        with float64 data are normalized to float64 precision.
        """
        if dtype not in self._unit:
            v = self.vectors.astype(dtype, copy=False)
            if self._norms is not None and self._norms.dtype == dtype:
                self._unit[dtype] = primitives.normalize_rows(v, self._norms, self.xp)
            else:
                # one fused pass on the GPU; the norms of the vectors' own dtype are kept
                self._unit[dtype], norms = primitives.unit_rows(v, self.xp)
                if v.dtype == self.vectors.dtype:
                    self._norms = norms
        return self._unit[dtype]

    def factors(self, chosen, dtype):
        """The block factors of ``chosen`` (a :class:`plan.Plan`) in ``dtype``. Cached.

        The dense plan's d x d matrix is checked against the machine's memory first.
        """
        key = (chosen.algorithm, chosen.block_size, dtype)
        if key not in self._factors:
            if chosen.algorithm == "dense":
                d = self.vectors.shape[-1]
                _validate.dense_memory(self.vectors.shape[:-2] + (d, d), dtype, 'algorithm="dense"', self.xp)
            module = ALGORITHMS[chosen.algorithm]
            self._factors[key] = module.build(self.unit(dtype), chosen.block_size, self.xp)
        return self._factors[key]

    def leaf_contributions(self, dy):
        """``(leaf, gradient)`` pairs from ``dy``, the gradient w.r.t. the unit rows ``(..., n, d)``.

        A raw row v gets ``(I - y y^T) g / ||v||`` (zero rows, identity factors,
        get zero); each segment then goes back to its leaf, reversed if it
        appears reversed. ``dy`` is overwritten. Cost: O(n d).
        """
        xp = self.xp
        unit = self.unit(dy.dtype)
        norms = self.norms.astype(dy.dtype, copy=False)
        radial = xp.einsum("...i,...i->...", unit, dy)
        dy -= unit * radial[..., None]
        dy /= xp.where(norms == 0, 1, norms)[..., None]
        contributions, start = [], 0
        for leaf_index, reversed_rows in self.segments:
            leaf = self.leaves[leaf_index]
            part = dy[..., start:start + leaf.shape[-2], :]
            start += leaf.shape[-2]
            contributions.append((leaf, part[..., ::-1, :] if reversed_rows else part))
        return contributions


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

    def __init__(self, vectors, algorithm="auto", block_size=None, *, check_finite=True):
        xp = array_module(vectors)
        algorithm = _validate.choice(algorithm, "algorithm", ALGORITHM_CHOICES)
        block_size = _validate.positive_int_or_none(block_size, "block_size")
        v = _validate.vectors(vectors, xp)
        norms = primitives.row_norms(v, xp)
        _validate.vector_norms(norms, xp, bool(check_finite))
        core = Reflections(backend_name(xp), (v,), ((0, False),), bool(check_finite))
        core._norms = norms
        self._init(core, False, algorithm, block_size)

    def _init(self, core, transposed, algorithm, block_size):
        self._core = core
        self._transposed = transposed
        self.algorithm = algorithm
        self.block_size = block_size

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
        and ``torch.geqrf`` return. A factor with ``tau == 0`` is the identity.
        The result is the M x M matrix Q of LAPACK ``orgqr``/``ormqr``.
        Cost: O(k M) to copy the vectors out of ``a``.
        """
        xp = array_module(a, tau)
        algorithm = _validate.choice(algorithm, "algorithm", ALGORITHM_CHOICES)
        block_size = _validate.positive_int_or_none(block_size, "block_size")
        v, norms = layouts.lapack_vectors(a, tau, xp, bool(check_finite))
        core = Reflections(backend_name(xp), (v,), ((0, False),), bool(check_finite), may_have_identity_rows=True)
        core._norms = norms
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
            raise ValueError("Q must have shape (..., d, r) with r <= d (orthonormal columns), got shape {}".format(
                tuple(q.shape)))
        a, tau = layouts.orthogonal_to_reflectors(q, xp)
        return cls.from_lapack(a, tau, algorithm, block_size, check_finite=check_finite)

    # ------------------------------------------------------------ attributes
    @property
    def vectors(self):
        """The reflections ``(..., n, d)`` in product order: a read-only view (NumPy) of the caller's array."""
        v = self._core.vectors
        return v[..., ::-1, :] if self._transposed else v

    @property
    def params(self):
        """The leaf arrays that gradients are taken with respect to (the caller's own arrays)."""
        return tuple(self._core.leaves)

    @property
    def dtype(self):
        return self._core.vectors.dtype

    @property
    def shape(self):
        v = self._core.vectors
        return tuple(v.shape[:-2]) + (v.shape[-1], v.shape[-1])

    @property
    def n_reflections(self):
        return self._core.vectors.shape[-2]

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
            self.shape, self.dtype, self.n_reflections, self.backend, self.algorithm)

    def refresh(self):
        """Rebuild from the parameter arrays after they were updated in place.

        Re-validates the vectors and drops every cached block factor. Returns
        ``self``. Cost: O(n d) now, the build again at the next product.
        """
        core = self._core
        xp = core.xp
        for leaf in core.leaves:
            norms = primitives.row_norms(_validate.vectors(leaf, xp), xp)
            _validate.vector_norms(norms, xp, core.check_finite, allow_zero_rows=core.may_have_identity_rows)
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
        if self._core.may_have_identity_rows:
            count = xp.count_nonzero(self._core.norms > 0, axis=-1)
            return xp.where(count % 2 == 0, 1, -1).astype(self.dtype)
        return xp.full(batch, (-1.0) ** self.n_reflections, dtype=self.dtype)

    def slogdet(self):
        """``(sign, log|det|) = (det, 0)`` per batch entry."""
        sign = self.det()
        return sign, self._xp.zeros_like(sign)

    def logdet(self):
        """``log|det H| = 0`` per batch entry."""
        return self.slogdet()[1]

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
        if a.backend != b.backend:
            array_module(a.vectors, b.vectors)          # raises the mixed-backend TypeError
        if self.shape[-1] != other.shape[-1]:
            raise ValueError("cannot compose HouseholderProducts of sizes {0}x{0} and {1}x{1}".format(
                self.shape[-1], other.shape[-1]))
        _validate.batch_shape(("H1", self.shape[:-2]), ("H2", other.shape[:-2]))
        leaves, segments = [], []
        for op in (self, other):
            core = op._core
            order = reversed(core.segments) if op._transposed else core.segments
            for leaf_index, rev in order:
                leaf = core.leaves[leaf_index]
                matches = [i for i, existing in enumerate(leaves) if existing is leaf]
                if not matches:
                    leaves.append(leaf)
                segments.append((matches[0] if matches else len(leaves) - 1, rev != op._transposed))
        core = Reflections(a.backend, tuple(leaves), tuple(segments), a.check_finite and b.check_finite,
                           a.may_have_identity_rows or b.may_have_identity_rows)
        return self._view(core, False, self.algorithm, self.block_size)

    # ------------------------------------------------------------- products
    def plan_for(self, m, dtype=None):
        """The :class:`cuhouse.plan.Plan` used for an ``X`` with ``m`` columns."""
        dtype = numpy.dtype(dtype or self.dtype)
        return plan.choose(self.shape[-1], self.n_reflections, m, dtype, self.backend,
                           self.algorithm, self.block_size)

    def _run(self, columns, transpose):
        """``(algorithm module, plan, factors, flip)`` for ``columns`` ``(..., d, m)``."""
        chosen = self.plan_for(columns.shape[-1], columns.dtype)
        factors = self._core.factors(chosen, columns.dtype)
        return ALGORITHMS[chosen.algorithm], chosen, factors, transpose != self._transposed

    def _matmat(self, columns, transpose):
        module, _, factors, flip = self._run(columns, transpose)
        return module.apply(factors, columns, flip, self._xp)

    def _vjp_matmat(self, columns, transpose):
        xp = self._xp
        module, chosen, factors, flip = self._run(columns, transpose)
        out = module.apply(factors, columns, flip, xp)
        n = self.n_reflections

        def back(dout):
            dy, dx = module.backward(factors, out, dout, flip, xp, chosen.store_inputs)
            return self._core.leaf_contributions(dy[..., :n, :]), reduce_to_shape(dx, columns.shape)

        return out, back

    def _vjp_logabsdet(self):
        return self.logdet(), lambda dvalue: []
