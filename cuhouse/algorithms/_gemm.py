"""The GEMMs of a block of reflectors (a :class:`._layout.Block`): one per stored part.

A structured layout's block is a small dense head and a tail view; each
product below runs one GEMM on each, so a block touches only X's rows from
its first reflector on.
"""


def swap(a, xp):
    """Transpose of the last two axes (a view; the array method, which skips NumPy's function dispatch)."""
    return a.swapaxes(-1, -2)


def rows_times(block, x, xp):
    """``Y_b @ x[start:]`` ``(..., kb, m)`` for ``x`` ``(..., d, m)``: one GEMM per stored part."""
    if block.head is None:
        return block.tail @ x
    kb = block.last - block.first
    top = x[..., block.start : block.start + kb, :]
    out = block.tail @ x[..., block.start + kb :, :]
    out += block.head @ top
    return out


def subtract_rows_transposed(block, u, x, xp, work=None):
    """``x[start:] -= Y_b^T @ u`` in place, for ``u`` ``(..., kb, m)``.

    ``work`` (optional, shaped like ``x``) receives the product first, so that
    no temporary of ``x``'s size is allocated per block.
    """
    kb = block.last - block.first
    parts = [(block.tail, x[..., block.start + (kb if block.head is not None else 0) :, :])]
    if block.head is not None:
        parts.append((block.head, x[..., block.start : block.start + kb, :]))
    for rows, target in parts:
        if work is None:
            target -= swap(rows, xp) @ u
        else:
            product = work[..., : target.shape[-2], :]
            xp.matmul(swap(rows, xp), u, out=product)
            target -= product


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
