"""The storage layouts of reflectors, and their split into blocks of k rows.

A layout says which entries of reflector i (row i of ``y`` ``(..., n, d)``) are
stored:

``"full"``
    every entry; reflector i may touch all d rows of X.
``"trapezoidal"``
    reflector i is zero in its first i entries (unit upper trapezoidal rows:
    the minimal d(d-1)/2-parameter map); those entries are never read, so the
    block of reflectors i0..i1 touches rows i0..d of X only.
``"unit"``
    LAPACK's ``geqrf`` layout read through ``a^T``: reflector i has implicit
    zeros in its first i entries and an implicit 1 at entry i; only the entries
    after i are read (anything stored on or before entry i is ignored).

The GEMMs on a :class:`Block` are in :mod:`._gemm`.
"""

import functools
from collections import namedtuple

import numpy

FULL, TRAPEZOIDAL, UNIT = "full", "trapezoidal", "unit"
LAYOUTS = (FULL, TRAPEZOIDAL, UNIT)

Block = namedtuple("Block", "first last start head tail")
Block.__doc__ = """Reflectors ``first .. last - 1`` acting on rows ``start ..`` of X.

``head`` ``(..., kb, kb)`` is the block's leading triangle with the layout's
implicit zeros (and ones) written in (a small copy; ``None`` for ``"full"``);
``tail`` is a view of the stored rows for X's rows ``start + (kb if head) ..``."""


def blocks(y, block_size, layout, xp):
    """``y`` ``(..., n, d)`` as a list of :class:`Block` of at most k reflectors, in product order.

    No copy of ``y``: the tails are views; the heads are k x k copies (structured layouts only),
    made by one ``where`` over all of them.
    """
    n = y.shape[-2]
    k = min(block_size, n)
    starts = range(0, n, k)
    if layout == FULL:
        if y.ndim == 2:  # one matrix: plain row slices (an Ellipsis index costs twice as much)
            return [Block(first, min(first + k, n), 0, None, y[first : first + k]) for first in starts]
        return [Block(first, min(first + k, n), 0, None, y[..., first : min(first + k, n), :]) for first in starts]
    heads = _heads(y, k, layout, xp)
    return [
        Block(first, min(first + k, n), first, heads[j], y[..., first : min(first + k, n), min(first + k, n) :])
        for j, first in enumerate(starts)
    ]


def _heads(y, k, layout, xp):
    """The diagonal corners of ``y`` (k x k, the last one smaller when k does not divide n) with the
    layout's implicit entries written in: one ``where`` on a strided view of the full-size ones.

    ``where`` takes the stored entries and writes the implicit ones, so NaN stored there never gets in.
    """
    stored, implicit = _corner_masks(k, layout, y.dtype, xp)
    heads = []
    for corners in _corners(y, k, xp):
        size = corners.shape[-1]
        stacked = xp.where(stored[:size, :size], corners, implicit[:size, :size])
        heads.extend(stacked[..., j, :, :] for j in range(stacked.shape[-3]))
    return heads


def mask_heads(dy, block_size, layout, xp):
    """Zero, in place, the entries of ``dy`` ``(..., n, d)``'s diagonal k x k corners that
    ``layout`` does not store (a structured backward writes nothing left of them). O(n k)."""
    stored, _ = _corner_masks(min(block_size, dy.shape[-2]), layout, dy.dtype, xp)
    for corners in _corners(dy, min(block_size, dy.shape[-2]), xp):
        size = corners.shape[-1]
        corners[...] = xp.where(stored[:size, :size], corners, 0)


def _corner_masks(k, layout, dtype, xp):
    """``(stored, implicit)``: which entries of a k x k corner the layout stores, and the values of the others."""
    stored = xp.triu(xp.ones((k, k), dtype=bool), 1 if layout == UNIT else 0)
    implicit = xp.eye(k, dtype=dtype) if layout == UNIT else xp.zeros((k, k), dtype=dtype)
    return stored, implicit


def _corners(y, k, xp):
    """Views of the diagonal corners of ``y`` ``(..., n, d)``, ``n <= d``: the full k x k ones stacked
    ``(..., n // k, k, k)`` (a strided view), then the smaller last one ``(..., 1, r, r)`` if any."""
    n = y.shape[-2]
    full = n // k
    row, col = y.strides[-2:]
    views = [_as_strided(xp)(y, y.shape[:-2] + (full, k, k), y.strides[:-2] + (k * (row + col), row, col))]
    if full * k < n:
        views.append(y[..., None, full * k :, full * k : n])
    return views


def _as_strided(xp):
    if xp.__name__ == "numpy":
        from numpy.lib.stride_tricks import as_strided
    else:
        from cupy.lib.stride_tricks import as_strided
    return as_strided


def is_trapezoidal(y, xp, block_size=64):
    """Whether every row i of ``y`` ``(..., n, d)`` is zero in its first i entries (NaN is not zero).

    Checked block by block, the cheapest parts first, stopping at the first
    block that fails: full-length rows cost O(block_size^2), trapezoidal ones a
    pass over the n^2/2 entries that must be zero.
    """
    n, d = y.shape[-2:]
    if n > d:
        return False
    lower = _strictly_lower(block_size) if xp is numpy else xp.tril(xp.ones((block_size, block_size), dtype=bool), -1)
    for first in range(0, n, block_size):
        last = min(first + block_size, n)
        corner = y[..., first:last, first:last]
        if bool(xp.any(corner[..., lower[: last - first, : last - first]] != 0)):
            return False
    return not any(
        bool(xp.any(y[..., first : first + block_size, :first] != 0)) for first in range(block_size, n, block_size)
    )


@functools.lru_cache(maxsize=8)
def _strictly_lower(block_size):
    """The read-only NumPy mask ``(block_size, block_size)`` of the entries strictly below the diagonal."""
    lower = numpy.tril(numpy.ones((block_size, block_size), dtype=bool), -1)
    lower.flags.writeable = False
    return lower


def squared_norms(y, layout, xp, block_size=64):
    """Sums of squares of the stored entries of each row ``(..., n)`` (the implicit 1 of
    ``"unit"`` not included): one pass over them, no copy. O(n d)."""
    n = y.shape[-2]
    k = min(block_size, n)
    stored, _ = _corner_masks(k, layout, y.dtype, xp)
    sums = []
    for corners in _corners(y, k, xp):
        size = corners.shape[-1]
        kept = xp.where(stored[:size, :size], corners, 0)
        per_row = xp.einsum("...bij,...bij->...bi", kept, kept)
        sums.append(per_row.reshape(per_row.shape[:-2] + (per_row.shape[-2] * per_row.shape[-1],)))
    heads = xp.concatenate(sums, axis=-1)
    # the tail of a block starts after its last row (a short last block: before first + k)
    tails = xp.concatenate(
        [
            xp.einsum("...ij,...ij->...i", y[..., first:last, last:], y[..., first:last, last:])
            for first, last in ((first, min(first + k, n)) for first in range(0, n, k))
        ],
        axis=-1,
    )
    return heads + tails


def full_rows(y, layout, xp):
    """The reflectors as full rows ``(..., n, d)``: ``y`` itself for ``"full"``, else a copy."""
    if layout == FULL:
        return y
    if layout == TRAPEZOIDAL:
        return y.copy() if y.shape[-2] == 1 else xp.triu(y)  # one row: nothing below its diagonal
    return xp.triu(y, 1) + xp.eye(*y.shape[-2:], dtype=y.dtype)


def structured(dy, layout, xp):
    """``dy`` ``(..., n, d)`` with the entries the layout does not store set to zero (in place)."""
    if layout != FULL:
        dy[...] = xp.triu(dy, 1 if layout == UNIT else 0)
    return dy
