"""The layouts reflections are stored in, and splitting them into blocks of k rows.

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
"""

from collections import namedtuple

from .._gpu import primitives as _primitives

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


def rows_times(block, x, xp):
    """``Y_b @ x[start:]`` ``(..., kb, m)`` for ``x`` ``(..., d, m)``: one GEMM per stored part, in
    ``x``'s memory order."""
    if block.head is None:
        return matmul(block.tail, x, xp)
    kb = block.last - block.first
    top = x[..., block.start : block.start + kb, :]
    out = matmul(block.tail, x[..., block.start + kb :, :], xp)
    out += matmul(block.head, top, xp)
    return out


def subtract_rows_transposed(block, u, x, xp, work=None):
    """``x[start:] -= Y_b^T @ u`` in place, for ``u`` ``(..., kb, m)``.

    ``work`` (optional, shaped like ``x`` and in its memory order) receives
    the product first, so that no temporary of ``x``'s size is allocated per
    block. ``u`` and ``x`` share their memory order (see :func:`matmul`).
    """
    kb = block.last - block.first
    parts = [(block.tail, x[..., block.start + (kb if block.head is not None else 0) :, :])]
    if block.head is not None:
        parts.append((block.head, x[..., block.start : block.start + kb, :]))
    for rows, target in parts:
        if work is None:
            target -= matmul(swap(rows, xp), u, xp)
        else:
            product = work[..., : target.shape[-2], :]
            target -= matmul(swap(rows, xp), u, xp, out=product)


def add_coefficients_times_rows(block, c, dy, xp):
    """``dy[first:last, start:] += c @ Y_b`` for ``c`` ``(..., kb, kb)``."""
    target = dy[..., block.first : block.last, block.start :]
    if block.head is None:
        target += c @ block.tail
        return
    kb = block.last - block.first
    target[..., :kb] += c @ block.head
    target[..., kb:] += c @ block.tail


def gram(block, xp):
    """``Y_b Y_b^T`` ``(..., kb, kb)``: O(kb^2 (d - start))."""
    g = block.tail @ swap(block.tail, xp)
    if block.head is not None:
        g += block.head @ swap(block.head, xp)
    return g


def is_trapezoidal(y, xp, block_size=64):
    """Whether every row i of ``y`` ``(..., n, d)`` is zero in its first i entries (NaN is not zero).

    Checked block by block, the cheapest parts first, stopping at the first
    block that fails: full-length rows cost O(block_size^2), trapezoidal ones a
    pass over the n^2/2 entries that must be zero.
    """
    n, d = y.shape[-2:]
    if n > d:
        return False
    lower = xp.tril(xp.ones((block_size, block_size), dtype=bool), -1)
    for first in range(0, n, block_size):
        last = min(first + block_size, n)
        corner = y[..., first:last, first:last]
        if bool(xp.any(corner[..., lower[: last - first, : last - first]] != 0)):
            return False
    return not any(
        bool(xp.any(y[..., first : first + block_size, :first] != 0)) for first in range(block_size, n, block_size)
    )


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
    tails = xp.concatenate(
        [
            xp.einsum(
                "...ij,...ij->...i", y[..., first : first + k, first + k :], y[..., first : first + k, first + k :]
            )
            for first in range(0, n, k)
        ],
        axis=-1,
    )
    return heads + tails


def full_rows(y, layout, xp):
    """The reflectors as full rows ``(..., n, d)``: ``y`` itself for ``"full"``, else a copy."""
    if layout == FULL:
        return y
    if layout == TRAPEZOIDAL:
        return xp.triu(y)
    return xp.triu(y, 1) + xp.eye(*y.shape[-2:], dtype=y.dtype)


def transpose_into(target, source, xp, strip=16):
    """``target[...] = swapaxes(source)`` for ``source`` ``(..., p, q)``, by strips of rows on NumPy
    (a whole transposed copy of a large power-of-two array thrashes the cache: about 8x slower)."""
    if xp.__name__ != "numpy":
        target[...] = xp.swapaxes(source, -1, -2)
        return target
    for first in range(0, source.shape[-2], strip):
        target[..., first : first + strip] = xp.swapaxes(source[..., first : first + strip, :], -1, -2)
    return target


def structured(dy, layout, xp):
    """``dy`` ``(..., n, d)`` with the entries the layout does not store set to zero (in place)."""
    if layout != FULL:
        dy[...] = xp.triu(dy, 1 if layout == UNIT else 0)
    return dy


def unit_rows(y, layout, identity, xp):
    """``(unit, norms)``: the full rows normalized, identity factors as zero rows. O(n d)."""
    v = full_rows(y, layout, xp)
    if identity is not None:
        v = xp.where(identity[..., None], 0, v)
    unit, norms = _primitives.unit_rows(v, xp)
    return unit, norms


def raw_gradient(dunit, unit, norms, xp):
    """The gradient w.r.t. raw rows from the one w.r.t. their unit rows: ``(I - y y^T) g / ||v||``.

    Zero rows (identity factors) get zero. ``dunit`` is overwritten. O(n d).
    """
    radial = xp.einsum("...i,...i->...", unit, dunit)
    dunit -= unit * radial[..., None]
    dunit /= xp.where(norms == 0, 1, norms)[..., None]
    return dunit


def column_major(x):
    """Whether the last two axes of ``x`` are laid out column by column, as the columns view
    ``X^T`` of a row-major ``X @ H`` operand is. O(1)."""
    return x.strides[-2] < x.strides[-1]


def empty_in_order(shape, dtype, like, xp):
    """An uninitialized array of ``shape`` whose last two axes have ``like``'s memory order
    (column-major when ``like`` is: a transposed view of a row-major array)."""
    shape = tuple(shape)
    if column_major(like):
        return swap(xp.empty(shape[:-2] + (shape[-1], shape[-2]), dtype=dtype), xp)
    return xp.empty(shape, dtype=dtype)


def writable(x, batch, xp):
    """A new array of shape ``batch + x.shape[-2:]`` holding ``x`` (broadcast), in ``x``'s memory
    order: no transposing copy of a row-major ``X @ H`` operand. O(size)."""
    out = empty_in_order(tuple(batch) + x.shape[-2:], x.dtype, x, xp)
    out[...] = x
    return out


def sweep_buffer(out, dout, xp):
    """``[out | dout]`` ``(..., d, 2m)`` in ``out``'s memory order, the buffer a backward sweep
    overwrites: for the columns of a row-major ``X @ H`` the gradient w.r.t. X is then a row-major
    slice of it, returned with no copy. O(d m)."""
    m = out.shape[-1]
    b = empty_in_order(out.shape[:-1] + (2 * m,), out.dtype, out, xp)
    b[..., :m] = out
    b[..., m:] = dout
    return b


def matmul(a, b, xp, out=None):
    """``a @ b`` (into ``out``) in ``b``'s memory order: for a column-major ``b`` it runs as
    ``(b^T a^T)^T``, so that BLAS reads ``b`` in its own order and the result (``out`` must then be
    column-major too) keeps it: a row-major ``X @ H`` stays row-major through every GEMM."""
    if column_major(b):
        if out is None:
            return swap(swap(b, xp) @ swap(a, xp), xp)
        xp.matmul(swap(b, xp), swap(a, xp), out=swap(out, xp))
        return out
    if out is None:
        return a @ b
    return xp.matmul(a, b, out=out)


def split(y, block_size, xp):
    """``(..., n, d)`` rows as ``(..., ceil(n/k), k, d)`` blocks.

    The last block is padded with zero rows, which are identity factors in
    every blocked form used here, so padding changes no result. Cost: a copy
    only when ``k`` does not divide ``n``.
    """
    n, d = y.shape[-2:]
    k = min(block_size, n)
    n_blocks = -(-n // k)
    pad = n_blocks * k - n
    if pad:
        padded = xp.zeros(y.shape[:-2] + (n_blocks * k, d), dtype=y.dtype)
        padded[..., :n, :] = y
        y = padded
    return y.reshape(y.shape[:-2] + (n_blocks, k, d))


def swap(a, xp):
    """Transpose of the last two axes (a view; the array method, which skips NumPy's function dispatch)."""
    return a.swapaxes(-1, -2)


def application_order(n_steps, transpose):
    """Indices in the order they act on X: H = P_1 ... P_N applies P_N first."""
    return range(n_steps) if transpose else range(n_steps - 1, -1, -1)
