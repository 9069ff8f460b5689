"""The small-size path: one NumPy matrix and a plain NumPy operand, with a fixed-cost budget.

At d = 16..128 a product is a few microseconds of flops, so its time is the
fixed cost of the call: validation, the plan, the Python layers. For the
common case (NumPy, no batch dimensions, float32/float64, an ``ndarray``
operand of H's dtype) the constructors and ``@`` take this path, which does
the same work with fewer calls:

* one validation pass: a row's sum of squares inside ``[tiny/eps, max*eps]``
  says at once that it is finite, nonzero and in the range where no scaling
  is needed (``tau`` of a ``geqrf`` array is checked in the same pass), and
  X's column sizes inside the overflow-safe limits say that X is finite and
  needs no scaling;
* no index arrays, no masks built per call (they are memoized by shape);
* the plan memoized by (shape, dtype, layout), and no layer of the general
  operand protocol between ``@`` and the algorithm;
* what a product ran here (plan, form, limits) is kept for
  :func:`cuhouse._reuse.replay`, which runs before this path in ``@``.

Whatever does not fit (a batch, another dtype or array type, a failed check)
returns ``None`` and the caller takes the general path, which raises the
same errors as before or handles the case (promotion, scaling, NaN with
``check_finite=False``): this path never decides an error itself.
"""

import functools
import math

import numpy

from . import _reuse, calibration
from ._reflections import Reflections, Segment
from ._validate import NormSummary
from .algorithms import PLANS, _layout, _scaling, cwy
from .algorithms._gemm import BLAS_DTYPES
from .algorithms.ormqr import squared_lengths


@functools.lru_cache(maxsize=None)
def _bounds(dtype):
    """``(lo, hi, tau_lo, tau_hi)``: sums of squares in ``[lo, hi]`` (``tiny/eps``, ``max*eps``) are
    finite, nonzero and need no scaling; ``tau (1 + ||v||^2)`` in ``[tau_lo, tau_hi]`` (``2 -+ 3 tol``,
    ``tol = 1e3 eps``) passes the tau check of this path. Python floats, memoized by dtype."""
    info = numpy.finfo(dtype)
    tol = 3e3 * float(info.eps)
    return float(info.tiny / info.eps), float(info.max * info.eps), 2 - tol, 2 + tol


def vectors_reflections(vectors, check_finite):
    """The :class:`~cuhouse._reflections.Reflections` of ``HouseholderProduct(vectors)``, or ``None``
    when anything needs the general path.

    Takes a float32/float64 NumPy matrix ``(n, d)``, 1 <= n <= d, whose rows'
    sums of squares all lie in ``[tiny/eps, max*eps]`` (finite, nonzero, no
    scaling needed: one pass and two reductions over n values say it all).
    The norms, their summary and the safety are cached on the result; the
    layout is settled at once when there is one row (trapezoidal) or row 1 is
    nonzero in entry 0 (full); see :meth:`~cuhouse._reflections.Reflections.layout`.
    """
    if type(vectors) is not numpy.ndarray or vectors.ndim != 2:
        return None
    dtype = vectors.dtype
    if dtype not in BLAS_DTYPES:
        return None
    n, d = vectors.shape
    if not 1 <= n <= d:
        return None
    sumsq = numpy.einsum("...i,...i->...", vectors, vectors)  # as primitives.row_norms: the same bits
    lo, hi = _bounds(dtype)[:2]
    smallest, largest = _reuse.smallest(sumsq), _reuse.largest(sumsq)
    if not (smallest >= lo and largest <= hi):  # NaN fails both comparisons
        return None
    summary = NormSummary(True, False, math.sqrt(largest), math.sqrt(smallest))
    core = Reflections("numpy", (vectors,), _ONE_LEAF, bool(check_finite), dtype, numpy.sqrt(sumsq), summary)
    known = core._cache  # a new object: no other thread reads it yet
    known["safe"] = True
    known["shape"] = (n, d)
    if n == 1:  # one row is zero in its first 0 entries: trapezoidal, as the detection would find
        known["layout"] = _layout.TRAPEZOIDAL
    elif vectors[1, 0] != 0:
        known["layout"] = _layout.FULL
    return core


_ONE_LEAF = (Segment(0, False, None, None),)  # the segments of one vectors leaf


def lapack_reflections(a, tau, check_finite):
    """The :class:`~cuhouse._reflections.Reflections` of ``from_lapack(a, tau)`` in one pass over the
    reflectors, or ``None`` when anything needs the general path.

    Takes float32/float64 ``a`` ``(M, N)`` and ``tau`` ``(k,)`` of one dtype,
    1 <= k <= min(M, N), every ``tau`` 0 (an identity factor) or equal to
    ``2 / (1 + ||v||^2)`` within a tolerance tighter than the general check's,
    and norms (their implicit 1 included) in the safe range. Cost: one pass
    over the reflectors' stored entries and about eight calls over k values.
    """
    if type(a) is not numpy.ndarray or type(tau) is not numpy.ndarray or a.ndim != 2 or tau.ndim != 1:
        return None
    dtype = a.dtype
    if dtype not in BLAS_DTYPES or tau.dtype != dtype:
        return None
    rows, cols = a.shape
    k = tau.shape[0]
    if not 1 <= k <= min(rows, cols):
        return None
    sumsq = squared_lengths(a if k == cols else a[:, :k])
    # |tau (1 + ||v||^2) - 2| <= 3 tol implies the general check |tau - e| <= tol e + tol; NaN fails it.
    # e - 2 is exact for e in [1, 4] (Sterbenz), so comparing e itself with 2 -+ 3 tol is that test.
    # Identity factors (tau == 0: the last one of a square geqrf) count as e = 2.
    _, hi, tau_lo, tau_hi = _bounds(dtype)
    product = tau * sumsq
    identity = None
    if numpy.count_nonzero(tau) != k:  # identity factors: no mask made when there are none
        identity = tau == 0
        product[identity] = 2
    largest = _reuse.largest(sumsq)
    if not (_reuse.largest(product) <= tau_hi and _reuse.smallest(product) >= tau_lo and largest <= hi):
        return None
    summary = NormSummary(True, False, math.sqrt(largest), math.sqrt(_reuse.smallest(sumsq)))
    # the norms follow from the squared lengths when asked for (Reflections.norms)
    segments = (Segment(0, False, k, identity),)
    core = Reflections("numpy", (a,), segments, bool(check_finite), dtype, None, summary, squared_lengths=sumsq)
    known = core._cache  # a new object: no other thread reads it yet
    known["safe"] = True
    known["shape"], known["layout"] = (k, rows), _layout.UNIT  # what the first product asks for, known here
    if a.flags.f_contiguous:  # the ormqr plan's form, read in place: tau = 2 / sumsq, one division
        core.build_ormqr_form()
    return core


def matmul(h, x, side):
    """``h @ x`` (``x @ h``) on the small-size path, or ``None`` when it does not apply.

    ``x`` must be a 1-D or 2-D ``ndarray`` of ``h``'s (real, float32/float64)
    dtype and size, and ``h`` one NumPy matrix. The algorithms take the
    ``(d, m)`` columns view of ``x`` (no copy: a row-major ``X @ H`` operand
    is a column-major view), and ``X @ H`` runs ``H^T``.
    The plan is :func:`fresh_plan`'s (the product's own ``_plan``, memoized by
    shape, dtype, layout and calibration), or for reflections declared reused
    the kept plan of the product's ``_run``; the form is the reflections' cached
    one. X is validated in the pass that the overflow-safe product makes
    anyway (:func:`cuhouse.algorithms._scaling.column_sizes`, one GEMV over
    ``|X|``): every column size inside the limits says at once that X is
    finite and needs no scaling. Anything else (NaN, a zero column, a size
    out of range) takes the general path, which raises or scales. At d = 64
    the call's own steps cost about as much as its flops, so they are inline:
    one function from ``@`` to the algorithm's ``apply``.
    """
    core = h._core
    dtype = x.dtype
    if core.backend != "numpy" or dtype != core.dtype or dtype not in BLAS_DTYPES:
        return None
    shape = core.shape
    ndim = x.ndim
    right = side == "right"
    if ndim == 2:
        columns = x.T if right else x
    elif ndim == 1:
        columns = x[:, None]
    else:
        return None
    d, m = columns.shape
    if len(shape) != 2 or d != shape[1]:
        return None
    kept = core._replay  # before the form is built: a refresh() meanwhile gives h a new table
    if core.reuse:  # the kept plan of reflections declared reused (cuhouse._reuse)
        module, chosen, (form, _, limits), transpose = h._run(columns, right, False)
    else:
        layout = core.layout
        chosen, module = fresh_plan(h, core, m, dtype, layout)
        form, _, limits = core.form(chosen, dtype, layout)
        transpose = right != h._transpose
    if m and not _scaling.inside(_scaling.column_sizes(columns, numpy), limits.lo, limits.hi):
        return None
    if m and module is cwy and chosen.apply == "steps" and cwy.direct_form(form):  # what cwy.apply runs (cwy.direct)
        out = _reuse.shaped(cwy._apply_numpy(form, columns, transpose), ndim, not right)
    else:
        out = _reuse.apply_plan(module, form, columns, transpose, chosen.apply, ndim, not right)
    # the next such product replays it
    _reuse.remember_product(kept, h, columns, transpose, module, chosen, form, limits)
    return out


_PLANS = {}  # fresh_plan's memo: (n, d, m, dtype, layout, lapack, algorithm, block size, calibration) -> plan
_PLANS_KEPT = 4096  # then the memo starts over (a calibration replaced keeps its entries until then)


def fresh_plan(h, core, m, dtype, layout=None):
    """``(plan, module)``: the plan of a fresh product without gradient of ``h`` (reflections ``core``, one
    NumPy matrix) for X ``(d, m)`` of ``dtype``, as ``h._plan`` chooses it, and its algorithm's
    module. Memoized by everything the plan depends on (shape, dtype, layout, whether LAPACK can
    run it, the pinned algorithm and block size, the calibration in use): a dictionary lookup
    instead of the layers of arguments ``plan.choose`` takes. ``layout``: ``core.layout``, when the
    caller has read it."""
    if layout is None:
        layout = core.layout
    key = (
        core.shape,
        m,
        dtype,
        layout,
        layout == _layout.UNIT and core.safe,  # core.lapack_ready(False) of one NumPy matrix
        h.algorithm,
        h.block_size,
        calibration.current("numpy"),
    )
    found = _PLANS.get(key)
    if found is None:
        chosen = h._plan(m, dtype, False)
        if len(_PLANS) >= _PLANS_KEPT:
            _PLANS.clear()
        found = _PLANS[key] = chosen, PLANS[chosen.algorithm]
    return found
