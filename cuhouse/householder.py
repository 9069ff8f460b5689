"""``HouseholderProduct``: a d x d orthogonal matrix kept as its reflections.

H = H(v_1) H(v_2) ... H(v_n) with H(v) = I - 2 v v^T / (v^T v); ``H @ X``
applies H(v_n) first. Nothing dense is formed unless asked: products cost
O(d n m) and run as GEMMs, ``.T``/``.inv()`` are free, ``det`` is (-1)^n.

The parameter arrays are treated as immutable: block factors are built once,
lazily, and reused by every later product. After changing ``vectors`` in place
(an optimizer step), call :meth:`HouseholderProduct.refresh`.
"""
import numpy

from . import _dask, _validate, plan  # _dask: TEMPORARY hook
from ._gpu import primitives as _primitives
from ._backend import array_module, backend_name
from .autodiff import accumulate, is_operator as _is_operator, reduce_to_shape
from .algorithms import ALGORITHMS

ALGORITHM_CHOICES = ("auto",) + tuple(ALGORITHMS)


class Reflections:
    """The shared state behind one or more ``HouseholderProduct`` views.

    It holds the reflections ``vectors`` ``(..., n, d)`` as slices of the leaf
    arrays the user passed in (``segments``: leaf index and whether the leaf's
    rows appear reversed), plus every cache derived from them. ``H`` and
    ``H.T`` share one ``Reflections``; ``H1 @ H2`` makes a new one.
    """

    def __init__(self, xp, leaves, segments, check_finite, may_have_identity_rows=False):
        self.xp = xp
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

    @property
    def vectors(self):
        if self._vectors is None:
            xp = self.xp
            parts = [self.leaves[i][..., ::-1, :] if rev else self.leaves[i] for i, rev in self.segments]
            if len(parts) == 1:
                self._vectors = parts[0]
            else:
                batch = numpy.broadcast_shapes(*(p.shape[:-2] for p in parts))
                parts = [xp.broadcast_to(p, batch + p.shape[-2:]) for p in parts]
                self._vectors = xp.concatenate(parts, axis=-2)
        return self._vectors

    @property
    def norms(self):
        if self._norms is None:
            self._norms = _primitives.row_norms(self.vectors, self.xp)
        return self._norms

    def unit(self, dtype):
        """Unit rows in ``dtype`` (zero rows stay zero). Cached. O(n d).

        The norms are those of the rows in ``dtype``: float32 vectors used
        with float64 data are normalized to float64 precision.
        """
        if dtype not in self._unit:
            v = self.vectors.astype(dtype, copy=False)
            if self._norms is not None and self._norms.dtype == dtype:
                self._unit[dtype] = _primitives.normalize_rows(v, self._norms, self.xp)
            else:
                # one fused pass on the GPU; the norms of the vectors' own dtype are kept
                self._unit[dtype], norms = _primitives.unit_rows(v, self.xp)
                if v.dtype == self.vectors.dtype:
                    self._norms = norms
        return self._unit[dtype]

    def factors(self, chosen, dtype):
        """The block factors of ``chosen`` (a :class:`plan.Plan`) in ``dtype``. Cached."""
        key = (chosen.algorithm, chosen.block_size, dtype)
        if key not in self._factors:
            module = ALGORITHMS[chosen.algorithm]
            self._factors[key] = module.build(self.unit(dtype), chosen.block_size, self.xp)
        return self._factors[key]


class HouseholderProduct:
    """The orthogonal matrix H = H(v_1) ... H(v_n), stored as its vectors.

    Parameters
    ----------
    vectors : array_like, shape ``(..., n, d)``
        One Householder vector per row, ``1 <= n <= d``; need not be
        normalized. Leading dimensions are a batch of matrices. NumPy or CuPy:
        the backend follows the array type.
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

    __array_ufunc__ = None          # ndarray @ H defers to H.__rmatmul__
    __array_priority__ = 1000

    def __init__(self, vectors, algorithm="auto", block_size=None, *, check_finite=True):
        xp = array_module(vectors)
        algorithm = _validate.choice(algorithm, "algorithm", ALGORITHM_CHOICES)
        block_size = _validate.positive_int_or_none(block_size, "block_size")
        v = _validate.vectors(vectors, xp)
        norms = _primitives.row_norms(v, xp)
        _validate.vector_norms(norms, xp, bool(check_finite))
        core = Reflections(xp, (v,), ((0, False),), bool(check_finite))
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
        a = _validate.as_array(a, "a", xp)
        tau = _validate.as_array(tau, "tau", xp)
        if a.ndim < 2:
            raise ValueError("a must have shape (..., M, N) as returned by geqrf, got shape {}".format(
                tuple(a.shape)))
        rows, cols = a.shape[-2:]
        k = tau.shape[-1] if tau.ndim else 0
        if tau.ndim < 1 or k == 0 or k > min(rows, cols):
            raise ValueError("tau must have shape (..., k) with 1 <= k <= min(M, N) = {}, got shape {}".format(
                min(rows, cols), tuple(tau.shape)))
        batch = _validate.batch_shape(("a", a.shape[:-2]), ("tau", tau.shape[:-1]))
        dtype = _validate.float_dtype(numpy.result_type(a.dtype, tau.dtype))
        below = xp.triu(xp.ones((k, rows), dtype=bool), 1)             # reflector i lives at rows > i
        v = xp.where(below, xp.swapaxes(a[..., :k], -1, -2), 0).astype(dtype)
        v = xp.broadcast_to(v, batch + (k, rows)).copy()
        idx = xp.arange(k)
        v[..., idx, idx] = 1
        identity = tau == 0
        v = xp.where(identity[..., None], 0, v)
        if check_finite and not (bool(xp.isfinite(v).all()) and bool(xp.isfinite(tau).all())):
            raise ValueError("a and tau must be finite; found NaN or Inf")
        norms = _primitives.row_norms(v, xp)
        expected = xp.where(identity, 0, 2 / xp.where(identity, 1, norms ** 2))
        # as accurate as the less precise of a and tau (float32 geqrf output may come with float64 tau)
        tol = 1e3 * max(numpy.finfo(_validate.float_dtype(t)).eps for t in (a.dtype, tau.dtype))
        if not bool((xp.abs(tau - expected) <= tol * xp.abs(expected) + tol).all()):
            raise ValueError("tau must be 0 or 2 / (v^T v) for each reflector v of a, as LAPACK's real "
                             "geqrf returns; got values that do not make orthogonal reflectors")
        core = Reflections(xp, (v,), ((0, False),), bool(check_finite), may_have_identity_rows=True)
        core._norms = norms
        return cls._view(core, False, _validate.choice(algorithm, "algorithm", ALGORITHM_CHOICES),
                         _validate.positive_int_or_none(block_size, "block_size"))

    # ------------------------------------------------------------ attributes
    @property
    def vectors(self):
        """The reflections ``(..., n, d)`` in product order (a view where possible)."""
        v = self._core.vectors
        return v[..., ::-1, :] if self._transposed else v

    @property
    def params(self):
        """The leaf arrays that gradients are taken with respect to."""
        return tuple(self._core.leaves)

    @property
    def dtype(self):
        return self._core.vectors.dtype

    @property
    def shape(self):
        v = self._core.vectors
        return tuple(v.shape[:-2]) + (v.shape[-1], v.shape[-1])

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def n_reflections(self):
        return self._core.vectors.shape[-2]

    @property
    def backend(self):
        """``"numpy"`` or ``"cupy"``."""
        return backend_name(self._core.xp)

    def __repr__(self):
        return "HouseholderProduct(shape={}, dtype={}, n_reflections={}, backend={}, algorithm={!r})".format(
            self.shape, self.dtype, self.n_reflections, self.backend, self.algorithm)

    def refresh(self):
        """Rebuild from the parameter arrays after they were updated in place.

        Re-validates the vectors and drops every cached block factor. Returns
        ``self``. Cost: O(n d) now, the build again at the next product.
        """
        core = self._core
        for leaf in core.leaves:
            _validate.vector_norms(_primitives.row_norms(_validate.vectors(leaf, core.xp), core.xp), core.xp,
                                   core.check_finite, allow_zero_rows=core.may_have_identity_rows)
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
        xp = self._core.xp
        batch = self.shape[:-2]
        if self._core.may_have_identity_rows:
            count = xp.count_nonzero(self._core.norms > 0, axis=-1)
            return xp.where(count % 2 == 0, 1, -1).astype(self.dtype)
        return xp.full(batch, (-1.0) ** self.n_reflections, dtype=self.dtype)

    def slogdet(self):
        """``(sign, log|det|) = (det, 0)`` per batch entry."""
        sign = self.det()
        return sign, self._core.xp.zeros_like(sign)

    def logdet(self):
        """``log|det H| = 0`` per batch entry."""
        return self.slogdet()[1]

    def todense(self):
        """The dense matrix ``(..., d, d)``. O(n d^2)."""
        d = self.shape[-1]
        return self._apply_matrix(self._core.xp.eye(d, dtype=self.dtype), False)

    def __array__(self, dtype=None, copy=None):
        return dense_array(self, dtype, copy)

    def __matmul__(self, other):
        if isinstance(other, HouseholderProduct):
            return self._compose(other)
        if _is_operator(other):
            return NotImplemented
        if _dask.is_dask_array(other):      # TEMPORARY dask hook, until the operator base owns dispatch
            return _dask.matmul(self, other, "left")
        return self._apply(other, "left")

    def __rmatmul__(self, other):
        if _is_operator(other):
            return NotImplemented
        if _dask.is_dask_array(other):      # TEMPORARY dask hook, until the operator base owns dispatch
            return _dask.matmul(self, other, "right")
        return self._apply(other, "right")

    def matmul(self, x):
        """``H @ X``; see :func:`cuhouse.matmul`."""
        return self @ x

    def _compose(self, other):
        """``H1 @ H2`` as one product of n1 + n2 reflections. O(1) until used."""
        a, b = self._core, other._core
        if a.xp is not b.xp:
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
        core = Reflections(a.xp, tuple(leaves), tuple(segments), a.check_finite and b.check_finite,
                           a.may_have_identity_rows or b.may_have_identity_rows)
        return self._view(core, False, self.algorithm, self.block_size)

    # ------------------------------------------------------------- products
    def plan_for(self, m, dtype=None):
        """The :class:`cuhouse.plan.Plan` used for an ``X`` with ``m`` columns."""
        dtype = numpy.dtype(dtype or self.dtype)
        core = self._core
        return plan.choose(self.shape[-1], self.n_reflections, m, dtype, self.backend,
                           self.algorithm, self.block_size)

    def _algorithm_for(self, x, transpose):
        """The plan, its cached factors and the core's orientation for ``x`` ``(..., d, m)``."""
        chosen = self.plan_for(x.shape[-1], x.dtype)
        return chosen, self._core.factors(chosen, x.dtype), transpose != self._transposed

    def _apply_matrix(self, x, transpose):
        """``H @ x`` (``H.T @ x``) for a validated float ``x`` ``(..., d, m)``."""
        chosen, factors, transpose = self._algorithm_for(x, transpose)
        return ALGORITHMS[chosen.algorithm].apply(factors, x, transpose, self._core.xp)

    def _operand(self, x, side):
        """Validate ``X`` of ``H @ X`` (``side == "left"``) or ``X @ H`` (``"right"``).

        Returns ``(x, columns, transpose)``: ``x`` as validated (its own dtype),
        ``columns`` its ``(..., d, m)`` form in the result dtype, and whether H
        acts transposed on it (``X @ H = (H^T X^T)^T``; a vector is one column).
        """
        xp = self._core.xp
        x, cast = _validate.product_operand(x, xp, "H", self.shape, self.dtype, side, self._core.check_finite)
        return x, _to_columns(cast, x.ndim == 1, side, xp), side == "right"

    def _apply(self, x, side):
        return self._product(x, side)[1]

    def _product(self, x, side):
        """``H @ X`` (``X @ H``) with its adjoint: ``(x, out, adjoint)``.

        ``x`` is X as validated; ``adjoint(dout) -> (dy, dx)`` gives the
        gradient w.r.t. the core's unit rows ``(..., n, d)`` and w.r.t. X, both
        unreduced over broadcast batch dimensions. Cost: the product now.
        """
        xp = self._core.xp
        x, columns, transpose = self._operand(x, side)
        chosen, factors, transpose = self._algorithm_for(columns, transpose)
        module = ALGORITHMS[chosen.algorithm]
        out_columns = module.apply(factors, columns, transpose, xp)
        vector = x.ndim == 1

        def adjoint(dout):
            dy, dx = module.backward(factors, out_columns, _to_columns(dout, vector, side, xp), transpose, xp,
                                     chosen.store_inputs)
            return dy[..., :self.n_reflections, :], _from_columns(dx, vector, side, xp)

        return x, xp.ascontiguousarray(_from_columns(out_columns, vector, side, xp)), adjoint

    # ------------------------------------------------------------ gradients
    def _vjp_matmul(self, x, side):
        """``H @ X`` (``X @ H``) and its adjoint ``dout -> ((dvectors, ...), dX)``.

        The gradients are with respect to the leaf arrays of :attr:`params` (in
        their dtypes) and to ``X`` (its shape; a float dtype). Cost: the
        product now; the algorithm's backward, about 2-3 products, later.
        The returned ``out`` is the caller's to modify: the backward, which
        recomputes from the output, keeps its own copy (O(d m) more memory).
        """
        xp = self._core.xp
        if _is_operator(x):
            raise TypeError("vjp(matmul, A, X) differentiates a matrix times an array; got two cuhouse "
                            "matrices ({} and {}): differentiate (A1 @ A2) @ X instead".format(
                                type(self).__name__, type(x).__name__))
        x, out, adjoint = self._product(x, side)

        def back(dout):
            dout = _validate.cotangent(dout, "dout", out.shape, xp).astype(out.dtype, copy=False)
            dy, dx = adjoint(dout)
            dx = xp.ascontiguousarray(reduce_to_shape(dx, x.shape, xp), dtype=_validate.float_dtype(x.dtype))
            return self._leaf_gradients(dy), dx

        return out.copy(), back

    def _vjp_logdet(self):
        """``logdet`` (zeros of the batch shape) and its adjoint: zero gradients for :attr:`params`."""
        value = self.logdet()
        xp = self._core.xp

        def back(dvalue):
            _validate.cotangent(dvalue, "dvalue", value.shape, xp)
            return tuple(xp.zeros(leaf.shape, dtype=leaf.dtype) for leaf in self._core.leaves)

        return value, back

    def _leaf_gradients(self, dy):
        """Gradients for the leaf arrays from ``dy``, the gradient w.r.t. the core's unit rows.

        A raw row v gets ``(I - y y^T) g / ||v||`` (zero rows, identity factors,
        get zero); each core segment then goes back to its leaf, reversed if it
        appears reversed, summed over broadcast batch dimensions and over
        repeated uses of the leaf. ``dy`` is overwritten. Cost: O(n d).
        """
        core = self._core
        xp = core.xp
        unit = core.unit(dy.dtype)
        norms = core.norms.astype(dy.dtype, copy=False)
        radial = xp.einsum("...i,...i->...", unit, dy)
        dy -= unit * radial[..., None]
        dy /= xp.where(norms == 0, 1, norms)[..., None]
        contributions, start = [], 0
        for leaf_index, reversed_rows in core.segments:
            leaf = core.leaves[leaf_index]
            part = dy[..., start:start + leaf.shape[-2], :]
            start += leaf.shape[-2]
            contributions.append(((leaf,), (part[..., ::-1, :] if reversed_rows else part,)))
        grads = accumulate(core.leaves, contributions, xp)
        return tuple(xp.ascontiguousarray(g) for g in grads)


def dense_array(op, dtype=None, copy=None):
    """``numpy.asarray(op)`` for a cuhouse matrix: its dense form, a new array.

    NumPy backend only (a CuPy matrix would need a silent device-to-host copy:
    ``TypeError``). ``copy=False`` is a ``ValueError``, as NumPy 2 asks of
    objects that cannot be viewed without a copy. Cost: ``op.todense()``.
    """
    if op.backend != "numpy":
        raise TypeError("a {} on the CuPy backend cannot become a NumPy array implicitly; "
                        "use cupy.asnumpy(A.todense())".format(type(op).__name__))
    if copy is False:
        raise ValueError("a {} has no array to view: numpy.asarray(..., copy=False) is impossible; "
                         "use todense()".format(type(op).__name__))
    dense = op.todense()
    return dense if dtype is None else dense.astype(dtype, copy=False)


def _to_columns(a, vector, side, xp):
    """The ``(..., d, m)`` form of an operand (or output) of ``H @ X`` / ``X @ H``: a view."""
    if vector:
        return a[..., None]
    return xp.swapaxes(a, -1, -2) if side == "right" else a


def _from_columns(c, vector, side, xp):
    """Inverse of :func:`_to_columns`: a view."""
    if vector:
        return c[..., 0]
    return xp.swapaxes(c, -1, -2) if side == "right" else c


HouseholderProduct._cuhouse_operator = True
