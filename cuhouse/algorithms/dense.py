"""Materialize H once with the compact WY form, then one GEMM per product.

Pays O(n d^2) once per H (cached) and O(d^2 m) per product: the fastest route
once m, summed over the products that reuse H, is comparable to d.
"""

import functools
from collections import namedtuple

import numpy

from . import _gemm, cwy
from ._gemm import swap
from ._steps import application_order

Form = namedtuple("DenseForm", "h wy")
Form.__doc__ = "The dense matrix ``h`` ``(..., d, d)`` and the CWY form ``wy`` it was built from."


def build(y, block_size, xp, layout="full", identity=None):
    """The dense d x d matrix H (batched), via CWY applied to the identity. O(n d^2)
    (half for a structured layout)."""
    d = y.shape[-1]
    wy = cwy.build(y, block_size, xp, layout, identity)
    if xp is numpy:
        eye = _identity(d, y.dtype).copy()  # numpy.eye costs 1.5 us at d = 16, a copy 0.3
        if cwy.direct(wy, eye):
            return Form(_identity_applied(wy, eye), wy)
    else:
        eye = xp.eye(d, dtype=y.dtype)
    return Form(cwy.apply(wy, eye, False, xp), wy)


@functools.lru_cache(maxsize=16)
def _identity(d, dtype):
    """The read-only NumPy identity ``(d, d)`` of ``dtype`` (memoized: :func:`build` writes into a copy)."""
    eye = numpy.eye(d, dtype=dtype)
    eye.flags.writeable = False
    return eye


def _identity_applied(wy, out):
    """``H`` from the NumPy form ``wy`` of :func:`cwy.direct`, written into ``out`` (the identity).

    One block: ``H = I - V^T (S^{-1} V)``, one ``?trsm`` and one ``?gemm`` with beta = 1 (no T:
    :class:`cwy.Form` makes it only when read). More blocks: the steps of ``cwy.apply``
    (``out -= V^T (T (V out))`` a block, the last block first), except that the first block's
    ``V I`` is ``V`` itself (no GEMM: the same numbers). Cost: ``4 n d^2`` flops (one block:
    ``n^2 d + 2 n d^2``) in 2 calls, or 3 calls a block."""
    blocks = wy.blocks
    if len(blocks) == 1:
        rows = blocks[0].tail
        kb = rows.shape[0]
        _gemm.subtract_gemm(rows, _solved(wy.s[0, :kb, :kb], rows), out)
        return out
    for step, j in enumerate(application_order(len(blocks), False)):
        rows = blocks[j].tail
        kb = rows.shape[0]
        _gemm.subtract_gemm(rows, wy.t[j, :kb, :kb] @ (rows @ out if step else rows), out)
    return out


def _solved(s, rows):
    """``S^{-1} rows`` ``(k, d)`` for the upper-triangular NumPy ``s`` ``(k, k)``: one BLAS ``?trsm``
    on the rows' transpose from the right (``X S^T = V^T``), which a row-major ``rows`` and ``s``
    give as column-major views (no copy; ``s^T`` is lower triangular). O(k^2 d)."""
    # positional: (alpha, a, b, side, lower); keywords cost 0.3 us a call
    return _gemm.blas("trsm", rows.dtype)(1.0, s.T, rows.T, 1, 1).T


def apply(f, x, transpose, xp):
    """``H @ X`` (``H.T @ X``) as one GEMM. O(d^2 m).

    The result keeps X's memory order: for X the transposed view of a
    row-major array (the columns of ``X @ H``), the GEMM runs as
    ``(X^T H^T)^T``, so the caller's row-major result needs no transposing copy.
    """
    h = swap(f.h, xp) if transpose else f.h
    if x.strides[-2] < x.strides[-1]:
        return swap(swap(x, xp) @ swap(h, xp), xp)
    return h @ x


def backward(f, out, dout, transpose, xp, store_inputs=False):
    """Adjoint of :func:`apply` via the WY form: ``(dY, dX)``.

    ``dX = H^T dout`` (``H dout``) is one GEMM. The gradient with respect to
    the dense matrix, ``dH = dout X^T`` (``X dout^T``) with ``X`` recovered from
    ``out``, is taken back to the vectors by the CWY adjoint of ``H = P I``.
    Cost: O(d^2 m) plus O(n d^2). ``store_inputs`` is unused: the CWY
    adjoint here always recomputes (storing d x 2d per block never pays).
    """
    x = apply(f, out, not transpose, xp)
    dh = x @ swap(dout, xp) if transpose else dout @ swap(x, xp)
    dy, _ = cwy.backward(f.wy, xp.broadcast_to(f.h, dh.shape), dh, False, xp)
    return dy, apply(f, dout, not transpose, xp)
