"""The GEMMs of a block of reflectors (a :class:`._layout.Block`): one per stored part.

A structured layout's block is a small dense head and a tail view; each
product below runs one GEMM on each, so a block touches only X's rows from
its first reflector on. Every product keeps the memory order of its operand
(:func:`matmul`).
"""

import functools

import numpy

from ._steps import column_major

BLAS_DTYPES = (numpy.dtype(numpy.float32), numpy.dtype(numpy.float64))


def swap(a, xp):
    """Transpose of the last two axes (a view; the array method, which skips NumPy's function dispatch)."""
    return a.swapaxes(-1, -2)


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


# NumPy: BLAS ?gemm called directly (SciPy's wrappers), for what numpy.matmul cannot say: a Gram
# matrix as a GEMM (matmul runs ``a @ a.T`` as SYRK, measured 1.6x slower at k = 16, d = 1024 on
# single-threaded OpenBLAS) and a product subtracted in place (beta = 1: no temporary, no pass).
# The operands are passed as Fortran-ordered views (a row-major matrix's transpose), so the
# wrappers copy nothing.


@functools.lru_cache(maxsize=None)
def blas(routine, dtype):
    """SciPy's BLAS ``routine`` ("gemm", "gemv", "trsv", "trsm") for a real ``dtype`` of
    :data:`BLAS_DTYPES` (``?gemm``: ``sgemm`` or ``dgemm``), looked up once."""
    from scipy.linalg import blas as scipy_blas

    return getattr(scipy_blas, ("s" if dtype == numpy.float32 else "d") + routine)


def _fortran(a):
    """``(array, trans)``: ``a`` as a Fortran-ordered matrix and the BLAS flag that gives ``a`` back
    (``a`` itself if it is Fortran-ordered, else its transpose with ``trans = 1``)."""
    return (a, 0) if a.flags.f_contiguous else (a.T, 1)


def gram_gemm(rows, out=None):
    """``rows @ rows.T`` ``(k, k)`` for a NumPy matrix ``rows`` ``(k, d)`` as one ``?gemm``, into the
    C-ordered ``out`` if given (BLAS writes through its transpose, a Fortran-ordered view: entry
    ``(i, j)`` is computed as ``(j, i)``, the same number up to rounding). O(k^2 d)."""
    a, trans = _fortran(rows)
    gemm = blas("gemm", rows.dtype)
    if out is None:
        return gemm(1.0, a, a, 0.0, None, trans, 1 - trans)
    c = out.T
    # positional: (alpha, a, b, beta, c, trans_a, trans_b, overwrite_c); keywords cost 0.3 us a call
    if gemm(1.0, a, a, 0.0, c, trans, 1 - trans, 1) is not c:
        raise ValueError("gram_gemm needs a C-contiguous out of the rows' dtype")
    return out


def subtract_gemm(rows, u, out):
    """``out -= rows.T @ u`` in place, as one ``?gemm`` with beta = 1, for NumPy matrices ``rows``
    ``(k, d)``, ``u`` ``(k, m)`` and ``out`` ``(d, m)``: in BLAS's own memory when ``out`` is contiguous
    in either order, else through the copy the wrapper makes, written back. O(k d m)."""
    if out.flags.f_contiguous:  # out = out - rows^T u, column-major
        (a, trans_a), (b, trans_b), c = _fortran(rows.T), _fortran(u), out
    else:  # out^T = out^T - u^T rows, out^T column-major
        (a, trans_a), (b, trans_b), c = _fortran(u.T), _fortran(rows), out.T
    result = blas("gemm", out.dtype)(-1.0, a, b, 1.0, c, trans_a, trans_b, 1)  # beta = 1, overwrite_c (positional)
    if result is not c:  # the wrapper copied a non-contiguous c
        c[...] = result
