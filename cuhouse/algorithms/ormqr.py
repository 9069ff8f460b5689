"""LAPACK's ``?ormqr`` as a plan: the product of a ``geqrf`` array, run by LAPACK itself.

For reflectors in LAPACK's own layout (``from_lapack``) on NumPy, one matrix
and no gradient, ``?ormqr`` does the work of :mod:`.cwy` (``larft``, then
``larfb``) in one call: at small sizes, where a call of cuhouse's own costs
more than the flops, it is the fastest plan. :mod:`cuhouse.plan` races it
against the others with this machine's constants and picks it only where it
measures faster. It is a forward plan only: products under ``vjp`` run
:mod:`.cwy`, whose gradient is cuhouse's.

The reflectors are read in place: ``a`` is the caller's array (a Fortran-ordered
``geqrf`` result needs no copy) and ``tau`` is implied by it, ``2 / (1 + ||v||^2)``
(0 for an identity factor). X keeps its memory order: a row-major ``X`` is
handed to LAPACK as the transposed product (``side="R"``), or, for few columns,
as a Fortran-ordered copy from the left with the result copied back (the mode,
:data:`MODES`: LAPACK's unblocked path from the right is slow there). Cost: one
LAPACK call, LAPACK's flops (about 2 d^2 m for n = d); for a few columns
LAPACK's unblocked ``?orm2r`` (:func:`unblocked`), 2-4x faster there than its
blocked path.
"""

import functools
from collections import namedtuple

import numpy
from numpy.lib.stride_tricks import as_strided

from . import _layout
from ._layout import UNIT

Form = namedtuple("OrmqrForm", "a tau")
Form.__doc__ = """The ``geqrf`` array ``a`` ``(d, n)`` (Fortran-ordered) and ``tau`` ``(n,)``."""


def build(y, block_size, xp, layout=UNIT, identity=None, squared=None):
    """``(a, tau)`` for LAPACK from the rows ``y`` ``(n, d)``, LAPACK's layout read through ``a^T``.

    ``block_size`` is unused (LAPACK blocks by itself). ``squared`` ``(n,)``
    (optional) are the reflectors' squared lengths ``1 + ||v||^2``, as
    :func:`squared_lengths` reads them, when the caller has them: ``tau`` is
    ``2 / squared``. ``ValueError`` for anything LAPACK cannot run: another
    layout or backend, or a batch. O(n) for ``tau`` given ``squared``, else one
    pass over the stored entries; a Fortran copy of ``a`` only when the
    caller's array is not Fortran-ordered.
    """
    if xp is not numpy or layout != UNIT or y.ndim != 2:
        raise ValueError(
            "the ormqr plan runs LAPACK's layout (from_lapack) on NumPy for one matrix, got layout {!r}, "
            "backend {}, {} batch dimensions".format(layout, xp.__name__, y.ndim - 2)
        )
    a = y.T
    tau = 2 / (squared if squared is not None else squared_lengths(a))  # a new array: written below
    if tau.dtype != y.dtype:
        tau = tau.astype(y.dtype)
    if identity is not None:
        tau[identity] = 0
    return Form(a if a.flags.f_contiguous else numpy.asfortranarray(a), tau)


def squared_lengths(a, nan_safe=False):
    """``1 + ||v_i||^2`` of each reflector of a NumPy ``geqrf`` array ``a`` ``(d, k)``, d >= k (its
    implicit 1 included). One pass over the stored entries.

    Up to ``_WHOLE`` entries: one (or two) einsum over ``a`` times a memoized mask. Above, an ``a``
    in another order than Fortran's is read in blocks of rows of ``a^T``
    (:func:`~cuhouse.algorithms._layout.squared_norms`), and a Fortran-ordered one (LAPACK's) in
    panels of ``_PANEL`` columns: the panels' diagonal corners in one masked copy (d x ``_PANEL``
    entries), the rectangles below them by one batched dot per panel (BLAS over each contiguous
    column), so only the d k - k^2 / 2 stored entries and the corners are read and nothing of size
    d k is written (measured at d = 1024 / 2048 / 4096, float32: 0.16 / 0.56 / 1.8 ms against
    0.65 / 2.6 / 23 ms for the masked copy of the whole array).

    The mask multiplies (fast), so NaN or Inf on or above the diagonal gives a non-finite sum;
    ``nan_safe`` selects the entries instead (``where``, about 4x slower), so that nothing there is
    read. Both give the same bits wherever the first is finite (the same einsum over the same
    values: a masked entry is 0 either way).
    """
    rows, k = a.shape
    size, fortran = rows * k, a.flags.f_contiguous
    if size <= _WHOLE:  # the small case first: at d = 16 the reader's own steps cost as much as its einsum
        mask = _strict_lower(rows, k, a.dtype, fortran)
        if size <= _ONE_CALL:  # one einsum over (a, a, mask): no temporary, one call fewer
            kept = _select(a, mask) if nan_safe else a
            return 1 + numpy.einsum("ij,ij,ij->j", kept, kept, mask)
        stored = _select(a, mask) if nan_safe else a * mask
        return 1 + numpy.einsum("ij,ij->j", stored, stored)
    if not fortran:  # another order: row blocks, no mask of a's size
        return 1 + _layout.squared_norms(a.T, UNIT, numpy)
    b = _PANEL
    full = k // b
    heads = []
    if full:  # the full b x b corners, each read column by column (a strided view of a), masked at once
        step = b * (a.strides[0] + a.strides[1])
        corners = as_strided(a, (full, b, b), (step, a.strides[1], a.strides[0]))
        mask = _strict_upper(b, a.dtype)
        kept = _select(corners, mask) if nan_safe else corners * mask
        heads.append((kept.reshape(full * b, 1, b) @ kept.reshape(full * b, b, 1)).reshape(full * b))
    if full * b < k:
        corner, mask = a[full * b : k, full * b : k].T, _strict_upper(b, a.dtype)[: k - full * b, : k - full * b]
        kept = _select(corner, mask) if nan_safe else corner * mask
        heads.append(numpy.einsum("ij,ij->i", kept, kept))
    tails = []
    for first in range(0, k, b):
        last = min(first + b, k)
        columns = a[last:, first:last].T  # (last - first, d - last): contiguous rows
        tails.append((columns[:, None, :] @ columns[:, :, None]).reshape(columns.shape[0]))
    return (1 + numpy.concatenate(heads)) + numpy.concatenate(tails)


def _select(x, mask):
    """``x`` where ``mask`` (ones and zeros) is 1, else 0: no product, so NaN or Inf outside stays out."""
    return numpy.where(mask != 0, x, numpy.zeros((), dtype=x.dtype))


# up to this many entries one three-operand einsum is faster (1.8 against 3.1 us at 16 x 16); above,
# its unvectorized loop loses to a masked copy and a two-operand einsum (48 against 23 us at 256 x 256)
_ONE_CALL = 32 * 32
# up to this many entries the masked copy of the whole array is faster than the panels (20 against
# 25 us at 256 x 256; 135 against 50 us at 512 x 512), whose calls cost more than the copy saves
_WHOLE = 256 * 256
_PANEL = 64


@functools.lru_cache(maxsize=8)
def _strict_upper(b, dtype):
    """The read-only ``(b, b)`` C-ordered matrix with ones strictly above the diagonal: a corner's
    stored entries read column by column."""
    mask = numpy.triu(numpy.ones((b, b), dtype=dtype), 1)
    mask.flags.writeable = False
    return mask


@functools.lru_cache(maxsize=64)
def _strict_lower(rows, cols, dtype, fortran):
    """The read-only ``(rows, cols)`` matrix with ones strictly below the diagonal, in Fortran order
    when ``fortran`` (the product with a ``geqrf`` array then runs in its memory order: a mixed
    order is about 5x slower at d = 1024)."""
    mask = numpy.tril(numpy.ones((rows, cols), dtype=dtype), -1)
    mask = numpy.asfortranarray(mask) if fortran else mask
    mask.flags.writeable = False
    return mask


# Few columns run LAPACK's unblocked ?orm2r (?ormqr given lwork = the columns of X, too little for its blocks):
# the blocked path builds a T matrix per panel of 32 reflectors (?larft, O(k^2 d)), which for a few columns
# costs more than the product. Where it wins depends on the machine and on X's memory order, so the calibration
# measures it (cuhouse.calibration.Machine.orm2r_columns; the plan then hands apply its mode). The built-in rule
# below, used without a calibration, was measured on one machine (2-core Xeon, OpenBLAS 0.3.30's LAPACK through
# SciPy, one thread, n = d reflectors), unblocked / blocked time for a Fortran-ordered X (side="L"):
#   float32  d:  64    128   256   512   1024  2048  4096
#   m = 1       0.25  0.24  0.27  0.28  0.44  0.35  0.39
#   m = 4       0.34  0.39  0.40  0.53  0.56  0.57  0.61
#   m = 8       0.46  0.52  0.61  0.73  1.02  0.97  1.11
#   m = 16      0.68  0.78  0.90  1.13  1.42  1.57
#   m = 32      1.04  1.13  1.35        2.0
#   float64: m = 1 0.22 / 0.26 / 0.36 / 0.54 and m = 4 0.29 / 0.38 / 0.52 / 0.81 at d = 64 / 256 / 1024 / 4096.
# A row-major X runs side="R" on X^T, where the unblocked path (one ?larf a reflector on a short, wide X^T) is
# slower from d = 256 on: 0.53 / 0.64 / 0.76 / 1.10 at d = 64, m = 1 / 4 / 8 / 16; 1.43 / 1.79 / 3.29 at d = 256,
# m = 1 / 4 / 16; 2.6-6.0 at d = 1024 (float32, same machine). A Fortran-ordered copy of such an X, run from the
# left (unblocked), and the result copied back to row-major order measured faster still for few columns (2-core
# AMD EPYC, OpenBLAS 0.3.30, float32, against side="R" blocked; side="R" unblocked in brackets):
#   d:        64            128           256           1024          2048
#   m = 4    0.31 (0.55)   0.26 (0.73)   0.22 (0.94)   0.16 (1.28)   0.19 (1.35)
#   m = 16   0.55 (0.75)   0.51 (1.05)   0.50 (1.44)   0.59 (2.03)   0.56 (2.14)
#   m = 32   0.80 (0.49)   0.77 (0.68)   0.78 (0.90)   0.92 (1.31)   0.88 (1.40)
#   m = 64   1.07 (0.54)   1.17 (0.65)   1.34 (0.93)   1.39 (1.41)   1.39 (1.67)
# (the copies: 2 d m entries, against the unblocked path's 4 d^2 m flops). So the built-in rule copies a row-major
# X wherever it runs a Fortran-ordered one unblocked, and runs it from the right (blocked) elsewhere. At d <= 32
# (k <= 32 reflectors) LAPACK runs ?orm2r either way. Which path runs is a plan choice, as a block size is: it
# changes the bits of those products (LAPACK's two paths round differently; a copied X has the bits of a
# Fortran-ordered one), and it depends on the shapes, X's memory order and the calibration only, so fresh,
# replayed and pickled products agree.
UNBLOCKED_COLUMNS = 4  # a Fortran-ordered X: always up to this many columns
UNBLOCKED_ENTRIES = 4096  # and up to 16 columns while d * m is at most this


# the apply modes a plan may give (cuhouse.plan.ormqr_mode), "<left>_<right>": how an X LAPACK takes from the left
# runs (Fortran-ordered, one column, or neither order: "unblocked" or "blocked"), and how a row-major X runs (from
# the right "unblocked" or "blocked", or "copied" into Fortran order and run unblocked from the left)
LEFT_WAYS = ("unblocked", "blocked")
RIGHT_WAYS = ("unblocked", "blocked", "copied")
# apply's reading of each mode: (whether the left runs unblocked, the right's way)
_WAYS = {"{}_{}".format(left, right): (left == "unblocked", right) for left in LEFT_WAYS for right in RIGHT_WAYS}
MODES = tuple(_WAYS)


def unblocked(d, m):
    """Whether a product with an X ``(d, m)`` taken from the left (``side="L"``) runs LAPACK's unblocked
    ``?orm2r`` by the built-in rule (see above). O(1)."""
    return m <= UNBLOCKED_COLUMNS or (m <= 16 and d * m <= UNBLOCKED_ENTRIES)


def built_in_mode(d, m):
    """The built-in rule's mode (:data:`MODES`) for X ``(d, m)``: where a Fortran-ordered X runs unblocked
    (:func:`unblocked`), a row-major one is copied and runs the same; elsewhere both run blocked. O(1)."""
    return "unblocked_copied" if unblocked(d, m) else "blocked_blocked"


@functools.lru_cache(maxsize=256)
def _routine(char, side, trans, rows, cols, k, fast):
    """``(?ormqr, lwork)`` for this shape: with ``fast`` the least workspace, with which ``?ormqr`` runs its
    unblocked ``?orm2r``; else the optimum, queried once."""
    from scipy.linalg import lapack

    ormqr = getattr(lapack, char + "ormqr")
    if fast:
        return ormqr, max(1, rows if side == "R" else cols)  # the columns of X (X^T's rows on the right)
    a = numpy.zeros((rows if side == "L" else cols, k), dtype=char_dtype(char), order="F")
    c = numpy.zeros((rows, cols), dtype=a.dtype, order="F")
    work, info = ormqr(side, trans, a, numpy.zeros(k, dtype=a.dtype), c, -1)[1:]
    return ormqr, max(1, int(work[0]))


def char_dtype(char):
    return numpy.float32 if char == "s" else numpy.float64


def apply(f, x, transpose, xp, mode=None):
    """``Q @ X`` (``Q.T @ X``) for ``x`` ``(d, m)`` by one ``?ormqr`` call, in ``x``'s memory order:
    a C-ordered ``x`` runs as ``(X^T Q^T)^T`` (``side="R"``) on the Fortran-ordered ``X^T``, or, where
    ``mode`` says ``"copied"``, as a Fortran-ordered copy from the left (unblocked), its result copied
    back (two copies of X's size). A batch of X ``(..., d, m)`` (Q has none here) runs as one ``(d, batch * m)``
    product, a copy; an empty X is returned as a copy (LAPACK refuses a zero dimension). ``mode``: one
    of :data:`MODES`, as the plan chose it from the calibration for m columns (a batch of more runs by
    the built-in rule), or ``None``: the built-in rule :func:`built_in_mode`. ``ValueError`` for
    another ``mode``."""
    ways = _WAYS.get(mode) if isinstance(mode, str) else None
    if ways is None and mode is not None:
        raise ValueError("mode must be None or one of {}, got {!r}".format(", ".join(map(repr, MODES)), mode))
    if x.size == 0:
        return x.copy()
    if x.ndim > 2:
        d, m = x.shape[-2:]
        columns = numpy.moveaxis(x, -2, 0).reshape(d, -1)
        # the plan's mode was chosen for m columns: more run by the built-in rule on their own count
        out = apply(f, columns, transpose, xp, mode if columns.shape[1] == m else None)
        return numpy.moveaxis(out.reshape((d,) + x.shape[:-2] + (m,)), 0, -2)
    left_fast, right = ways or _WAYS[built_in_mode(*x.shape)]
    char = "s" if f.a.dtype == numpy.float32 else "d"
    k = f.tau.shape[0]
    trans = "T" if transpose else "N"
    flags = x.flags
    if flags.f_contiguous or not flags.c_contiguous:  # from the left; SciPy copies X into Fortran order
        ormqr, lwork = _routine(char, "L", trans, x.shape[0], x.shape[1], k, left_fast)
        out, _, info = ormqr("L", trans, f.a, f.tau, x, lwork)
    elif right == "copied":  # our own Fortran copy, which LAPACK may overwrite; the result back in X's order
        ormqr, lwork = _routine(char, "L", trans, x.shape[0], x.shape[1], k, True)
        out, _, info = ormqr("L", trans, f.a, f.tau, numpy.asfortranarray(x), lwork, overwrite_c=1)
        out = numpy.ascontiguousarray(out)
    else:
        xt = x.T
        ormqr, lwork = _routine(char, "R", "N" if transpose else "T", xt.shape[0], xt.shape[1], k, right == "unblocked")
        out, _, info = ormqr("R", "N" if transpose else "T", f.a, f.tau, xt, lwork)
        out = out.T
    if info:
        raise ValueError("LAPACK {}ormqr failed with info = {}".format(char, info))
    return out
