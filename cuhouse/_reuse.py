"""Products of reflections declared reused: the cost model keeps the form fastest per product.

A fresh ``H @ X`` runs :func:`cuhouse.plan.choose`'s plan, whose prediction
includes building the form; it never depends on what is cached, so the same
H and X give the same plan and the same bits whatever ran before, in any
thread (the tests hold the library to that). A matrix applied many times
would rather run the form that is fastest *per product* once built, even if
building it costs more: the dense H (one GEMM per product instead of three
per block and their Python layers, and half the flops of full-length vectors
when n >= d/2), or compact WY with a larger block. Since that changes the
result's bits, it is the caller's choice, made once with
:meth:`cuhouse.HouseholderProduct.prepare_reuse`; from then on every product
without gradient of those reflections (any view: ``H``, ``H.T``, ``H.H``)
runs :func:`kept`'s plan for its column count, built at its first use. The
choice is a function of (d, n, m, dtype, layout, backend) and the
calibration (:mod:`cuhouse.calibration`) only: deterministic, as the fresh
plan. Products with a gradient run the fresh plan (the dense form's backward
costs O(n d^2)), and so do a pinned ``algorithm`` or ``block_size`` and
arrays of other libraries than NumPy and CuPy.

Memory: the dense H holds ``d * d`` entries per batch entry (4 d^2 bytes in
float32, built in O(n d^2): about one product with d columns); it is kept
only when the whole batch's ``B d^2`` entries are at most ``max(2 B n d,
2**16)`` (twice the reflections' own size, or 256 KiB of float32: the fresh
plan's rule, :func:`cuhouse.plan.dense_fits`) and fit the machine's memory
with its build's workspace, else the next fastest form is kept. A compact WY
form holds its T matrices (``n k`` entries). Every kept form is dropped by
``refresh()`` and none is pickled (the declaration is: a pickled copy makes
the same choices).

The hot path (:func:`matmul`): a NumPy ``H @ X`` or ``X @ H`` whose column
count has the dense H kept runs one GEMM, after one reduction over X whose
bound says that X is finite and that nothing can overflow. Anything else
(NaN, large entries, another dtype, a wrong shape) returns ``None`` and the
general path decides, raising or scaling as it would, with the same plan.
Thread-safe: the kept dense H is stored with one dictionary assignment; two
threads building the same form build it twice and keep one (the same bits),
and a form built while ``refresh()`` ran enters only the table it replaced.

Every cached product (declared or not) has a second hot path, :func:`replay`:
a NumPy ``H @ X`` or ``X @ H`` that the small-size path (:mod:`cuhouse._small`)
ran once for this column count and side (and view's pinned plan) is kept
(:func:`remember_product`; a :class:`Replay` from its first replay on): the plan, the built
form and its limits.
The next such product skips the plan lookup, the form lookup and the Python
layers between ``@`` and the algorithm: one check of X (the small path's own:
its column sizes inside the form's limits), then the algorithm's ``apply`` on
the kept form. Same plan, same function, so the same bits as the first
product, whatever ran before.
The plan depends on the calibration too: a replay kept under another
calibration steps aside. Kept for at most :data:`REPLAYS` keys per
reflections, dropped by ``refresh()`` and by :meth:`prepare_reuse
<cuhouse.HouseholderProduct.prepare_reuse>`, never pickled.
"""

import functools
from collections import namedtuple

import numpy

from . import _memory, calibration, plan
from ._shapes import matrix_count
from .algorithms import _scaling, cwy

HOT_SIZES = 64  # column counts remembered per reflections for the hot path
REPLAYS = 64  # products kept per reflections for replay (column count, side, pinned plan)
largest = numpy.maximum.reduce  # the ufuncs' reductions themselves: no Python layer of ndarray.max/min
smallest = numpy.minimum.reduce

Replay = namedtuple(
    "Replay", "calibration d dtype lo hi unsigned lo_bits span weights module form transpose mode h direct"
)
Replay.__doc__ = """A NumPy product kept for :func:`replay`: the :mod:`cuhouse.calibration` its plan was
chosen under, X's rows ``d`` and ``dtype``, the limits ``[lo, hi]`` of X's column sizes the form takes
unscaled and the same as a test of their bits (``unsigned, lo_bits, span``, see
:func:`cuhouse.algorithms._scaling.bit_bounds`), the ``weights`` of
:func:`cuhouse.algorithms._scaling.column_sizes` (``w @ |X|`` are the sizes), the plan's algorithm
``module`` with its built ``form``, the ``transpose`` it applies (``H^T``) and its apply ``mode``; for
the dense plan ``h``, the matrix it applies (``H``, or ``H^T`` as a view), else ``None``; ``direct``:
whether ``apply`` runs ``cuhouse.algorithms.cwy._apply_numpy`` on the form (compact WY's steps on one
matrix in the full layout), which the replay then calls itself (the same function, no layers)."""


@functools.lru_cache(maxsize=4096)
def kept(fresh, d, n, m, itemsize, backend, layout, mach, batch=1):
    """The plans a product of reused reflections may run for X ``(d, m)`` and ``n`` reflections, fastest
    per product (form built) first, down to ``fresh`` (the plan of a fresh product), which ends
    the tuple.

    Candidates: ``fresh``, compact WY at every block size (in the backend's
    best apply mode, see :func:`cuhouse.plan.apply_mode`), and the dense H
    when :func:`cuhouse.plan.dense_fits` for the ``batch`` matrices one call
    builds, as the fresh plan asks it (built with the block size that builds
    it fastest). Memoized: O(1) after the first call.
    """
    found = {
        fresh: plan.per_product(
            fresh.algorithm, d, n, m, fresh.block_size, itemsize, backend, layout, mach, fresh.apply
        )
    }
    for k in sorted({min(k, n) for k in plan.BLOCK_SIZES}):
        mode = plan.apply_mode(d, n, m, k, itemsize, backend, layout, mach)
        chosen = plan.Plan("cwy", k, fresh.store_inputs, mode)
        found.setdefault(chosen, plan.per_product("cwy", d, n, m, k, itemsize, backend, layout, mach, mode))
    if plan.dense_fits(d, n, batch):
        builds = {
            min(k, n): plan.predict("dense", d, n, m, k, itemsize, backend, False, layout, mach)
            for k in plan.BLOCK_SIZES
        }
        found[plan.Plan("dense", min(builds, key=builds.get), False)] = plan.predict(
            "dense", d, n, m, 1, itemsize, backend, True, layout, mach
        )
    ranked = sorted(found, key=lambda p: (found[p], p != fresh))
    return tuple(ranked[: ranked.index(fresh) + 1])


def choose(core, fresh, m, dtype, layout, backend):
    """The plan a product without gradient runs on reflections declared reused (``core``, a
    :class:`cuhouse._reflections.Reflections`, the realified one of a unitary product): the first
    plan of :func:`kept` whose form fits the memory (``fresh``, the plan of
    :func:`cuhouse.plan.choose`, at the latest). O(1) after the first call for these arguments."""
    shape = core.shape
    n, d = shape[-2:]
    batch = matrix_count(shape)  # as the fresh plan
    for chosen in kept(fresh, d, n, m, dtype.itemsize, backend, layout, calibration.machine(backend), batch):
        if chosen.algorithm != "dense" or _dense_memory_fits(core, d, dtype):
            return chosen
    return fresh


def _dense_memory_fits(core, d, dtype):
    """Whether the dense H and its build's workspace fit the machine's memory (no error: the next
    plan is then kept instead)."""
    try:
        _memory.dense_memory(core.shape[:-2] + (d, d), dtype, "the kept dense H", core.xp, _memory.DENSE_WORKSPACE)
    except MemoryError:
        return False
    return True


def remember(kept, core, m, form):
    """Keep the dense ``form``'s matrix for the hot path of products with ``m >= 1`` columns in ``kept``,
    the table of ``core`` (the reflections) read before the form was built (a ``refresh()`` meanwhile
    gives ``core`` a new table, which the old form never enters): one NumPy matrix of the reflections'
    own dtype, at most :data:`HOT_SIZES` column counts, as ``(H, H^T, bound, d)`` with
    ``bound = max / (2 d)`` the dtype's largest value over 2d."""
    if core.small is None or not m or (m not in kept and len(kept) >= HOT_SIZES):
        return
    h = form.h
    if h.dtype == core.dtype:
        d = h.shape[-1]
        kept[m] = (h, h.T, float(numpy.finfo(h.dtype).max) / (2 * d), d)


def matmul(op, x, left):
    """``op @ x`` (``x @ op`` when not ``left``) for a NumPy ``x`` by the kept dense H, or ``None``.

    ``x``: an ``ndarray`` ``(d,)`` or ``(d, m)`` (``(m, d)`` on the right) of the
    reflections' dtype, whose column count has the dense H kept, with every
    entry of size below ``bound`` (:func:`remember`): then X is finite and
    no entry of the result, at most ``d max|x| < max / 2`` in size (an
    orthogonal H's entries are at most 1), overflows, so no floating-point
    warning either. Underflow needs no scaling here: with gradual underflow
    the GEMM's error stays ``O(d eps)`` times the column's norm for a column
    of normal size. Anything else returns ``None`` (the general path decides,
    raising or scaling as it would). Cost: one pass over X (its largest
    entry in size, through a temporary ``|X|``) and one GEMM of ``2 d^2 m``
    flops; the result is a new C-contiguous array.
    """
    shape = x.shape
    if len(shape) == 2:
        m, rows = (shape[1], shape[0]) if left else shape
    elif len(shape) == 1:
        m, rows = 1, shape[0]
    else:
        return None
    kept = op._core._hot.get(m)
    if kept is None or op.algorithm != "auto" or op.block_size is not None:  # pinned on this view: not kept
        return None
    h, ht, bound, d = kept
    if rows != d or x.dtype != h.dtype or not largest(abs(x), None) < bound:  # NaN fails too
        return None
    if op._transpose:
        h = ht
    return h @ x if left else x @ h


def remember_product(kept, op, columns, transpose, module, chosen, form, limits):
    """Keep the product ``op`` just ran on the small-size path for :func:`replay` in ``kept``, the
    replay table ``op`` had before the product ran (a ``refresh()`` meanwhile gives the operator a new
    table, which the old form never enters): X's ``columns`` ``(d, m)`` (m >= 1, inside ``limits``),
    the ``transpose`` the plan applied (the side's and the view's), the plan ``chosen`` with its
    ``module`` and built ``form``. One plain tuple and one dictionary assignment (the first replay
    completes it into a :class:`Replay`, so that a product of reflections used once pays for none of
    it); nothing once :data:`REPLAYS` keys are kept."""
    m = columns.shape[1]
    if not m or len(kept) >= REPLAYS:
        return
    key = (m, transpose, op.algorithm, op.block_size)
    if key not in kept:
        d, dense = columns.shape[0], chosen.algorithm == "dense"
        kept[key] = (
            calibration.current("numpy"),
            d,
            columns.dtype,
            limits,
            module,
            form,
            transpose,
            chosen.apply,
            dense,
        )


def _completed(pending):
    """The :class:`Replay` of a product :func:`remember_product` kept. O(1)."""
    chosen_under, d, dtype, limits, module, form, transpose, mode, dense = pending
    return Replay(
        chosen_under,
        d,
        dtype,
        limits.lo,
        limits.hi,
        *_scaling.bit_bounds(limits.lo, limits.hi, dtype),
        _scaling.weights(d, dtype, numpy),
        module,
        form,
        transpose,
        mode,
        (form.h.T if transpose else form.h) if dense else None,
        module is cwy and mode == "steps" and cwy.direct_form(form),
    )


def replay(op, x, left):
    """``op @ x`` (``x @ op`` when not ``left``) for a NumPy ``x`` as the kept :class:`Replay` of this
    column count and side runs it, or ``None`` (nothing kept, another dtype or size, a
    calibration changed since, or X's column sizes outside the limits: the small path and the general
    path decide, raising or scaling as they would). Cost: the check of the small path (one GEMV over
    ``|X|``) and the algorithm's ``apply``; the result is a new C-contiguous array, as there. At d = 16
    the call is a few microseconds, so everything is inline: one tuple unpacking, no function layers
    around the check or the dense plan's GEMM."""
    kept = op._core._replay
    if not kept:
        return None
    ndim = x.ndim
    if ndim == 2:
        columns = x if left else x.T
    elif ndim == 1:
        columns = x[:, None]
    else:
        return None
    rows, m = columns.shape
    key = (m, left == op._transpose, op.algorithm, op.block_size)
    entry = kept.get(key)
    if entry is None:
        return None
    if type(entry) is not Replay:  # the first replay of a product kept by remember_product
        entry = kept[key] = _completed(entry)
    chosen_under, d, dtype, lo, hi, unsigned, lo_bits, span, weights, module, form, transpose, mode, h, direct = entry
    if rows != d or x.dtype is not dtype or calibration.current("numpy") is not chosen_under:
        return None
    sizes = numpy.dot(weights, abs(columns))  # _scaling.column_sizes, inline
    if m == 1:  # one size: a float, no reductions
        if not lo <= sizes.item() <= hi:  # NaN fails too
            return None
    elif not largest(sizes.view(unsigned) - lo_bits) <= span:  # every size in [lo, hi]: one reduction
        return None
    if direct:  # what cwy.apply runs for this form and X (2-D, its dtype, m >= 1), without its layers
        return shaped(cwy._apply_numpy(form, columns, transpose), ndim, left)
    if h is None:
        return apply_plan(module, form, columns, transpose, mode, ndim, left)
    # dense.apply's one GEMM, inline: in X's memory order, as there
    if columns.strides[0] < columns.strides[1]:
        out = columns.T @ h.T  # the result transposed, C-ordered (X @ H itself on the right)
        if ndim == 1:
            return out[0]
        return out.T.copy() if left else out
    out = h @ columns  # C-ordered
    if ndim == 1:
        return out[:, 0]
    return out if left else out.T.copy()


def apply_plan(module, form, columns, transpose, mode, ndim, left):
    """``module.apply`` of a built ``form`` to NumPy ``columns`` ``(d, m)`` in the plan's apply ``mode``
    (``"steps"`` takes no mode argument), returned as the product of a ``ndim``-D operand on the
    ``left`` side or the right (:func:`shaped`)."""
    if mode == "steps":
        out = module.apply(form, columns, transpose, numpy)
    else:
        out = module.apply(form, columns, transpose, numpy, mode=mode)
    return shaped(out, ndim, left)


def shaped(out, ndim, left):
    """The result ``(d, m)`` of the algorithms as the product of a ``ndim``-D operand on the ``left``
    side or the right: a new C-contiguous array (``X @ H`` transposed back), a vector for
    ``ndim == 1``."""
    if ndim == 1:
        return out[:, 0]
    out = out if left else out.T
    return out if out.flags.c_contiguous else numpy.ascontiguousarray(out)
