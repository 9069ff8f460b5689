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
handed to LAPACK as the transposed product (``side="R"``), so neither operand
is copied into Fortran order. Cost: one LAPACK call, LAPACK's flops
(about 2 d^2 m for n = d).
"""

import functools
from collections import namedtuple

import numpy

from ._layout import UNIT

Form = namedtuple("OrmqrForm", "a tau")
Form.__doc__ = """The ``geqrf`` array ``a`` ``(d, n)`` (Fortran-ordered) and ``tau`` ``(n,)``."""


def build(y, block_size, xp, layout=UNIT, identity=None, norms=None):
    """``(a, tau)`` for LAPACK from the rows ``y`` ``(n, d)``, LAPACK's layout read through ``a^T``.

    ``block_size`` is unused (LAPACK blocks by itself). ``norms`` ``(n,)``
    (optional) are the reflectors' norms, their implicit 1 included, when the
    caller has them. ``ValueError`` for anything LAPACK cannot run: another
    layout or backend, or a batch. O(n) for ``tau`` given ``norms``, else one
    pass over the stored entries; a Fortran copy of ``a`` only when the
    caller's array is not Fortran-ordered.
    """
    if xp is not numpy or layout != UNIT or y.ndim != 2:
        raise ValueError(
            "the ormqr plan runs LAPACK's layout (from_lapack) on NumPy for one matrix, got layout {!r}, "
            "backend {}, {} batch dimensions".format(layout, xp.__name__, y.ndim - 2)
        )
    a = y.T
    tau = (2 / (norms * norms if norms is not None else squared_lengths(a))).astype(y.dtype, copy=False)
    if identity is not None:
        tau = numpy.where(identity, 0, tau).astype(y.dtype, copy=False)
    return Form(a if a.flags.f_contiguous else numpy.asfortranarray(a), tau)


def squared_lengths(a):
    """``1 + ||v_i||^2`` of each reflector of a NumPy ``geqrf`` array ``a`` ``(d, k)`` (its implicit 1
    included; nothing on or above the diagonal read). One pass, with a memoized mask."""
    mask = _strict_lower(*a.shape, a.dtype, a.flags.f_contiguous)
    if a.size <= _ONE_CALL:  # one einsum over (a, a, mask): no temporary, one call fewer
        return 1 + numpy.einsum("ij,ij,ij->j", a, a, mask)
    stored = a * mask
    return 1 + numpy.einsum("ij,ij->j", stored, stored)


# up to this many entries one three-operand einsum is faster (1.8 against 3.1 us at 16 x 16); above,
# its unvectorized loop loses to a masked copy and a two-operand einsum (48 against 23 us at 256 x 256)
_ONE_CALL = 32 * 32


@functools.lru_cache(maxsize=64)
def _strict_lower(rows, cols, dtype, fortran):
    """The read-only ``(rows, cols)`` matrix with ones strictly below the diagonal, in Fortran order
    when ``fortran`` (the product with a ``geqrf`` array then runs in its memory order: a mixed
    order is about 5x slower at d = 1024)."""
    mask = numpy.tril(numpy.ones((rows, cols), dtype=dtype), -1)
    mask = numpy.asfortranarray(mask) if fortran else mask
    mask.flags.writeable = False
    return mask


@functools.lru_cache(maxsize=256)
def _routine(char, side, trans, rows, cols, k):
    """``(?ormqr, lwork)`` for this shape: the workspace size queried once."""
    from scipy.linalg import lapack

    ormqr = getattr(lapack, char + "ormqr")
    a = numpy.zeros((rows if side == "L" else cols, k), dtype=char_dtype(char), order="F")
    c = numpy.zeros((rows, cols), dtype=a.dtype, order="F")
    work, info = ormqr(side, trans, a, numpy.zeros(k, dtype=a.dtype), c, -1)[1:]
    return ormqr, max(1, int(work[0]))


def char_dtype(char):
    return numpy.float32 if char == "s" else numpy.float64


def apply(f, x, transpose, xp):
    """``Q @ X`` (``Q.T @ X``) for ``x`` ``(d, m)`` by one ``?ormqr`` call, in ``x``'s memory order:
    a C-ordered ``x`` runs as ``(X^T Q^T)^T`` (``side="R"``) on the Fortran-ordered ``X^T``.
    A batch of X ``(..., d, m)`` (Q has none here) runs as one ``(d, batch * m)`` product, a copy;
    an empty X is returned as a copy (LAPACK refuses a zero dimension)."""
    if x.size == 0:
        return x.copy()
    if x.ndim > 2:
        d, m = x.shape[-2:]
        columns = numpy.moveaxis(x, -2, 0).reshape(d, -1)
        out = apply(f, columns, transpose, xp)
        return numpy.moveaxis(out.reshape((d,) + x.shape[:-2] + (m,)), 0, -2)
    char = "s" if f.a.dtype == numpy.float32 else "d"
    k = f.tau.shape[0]
    if x.flags.f_contiguous or not x.flags.c_contiguous:
        ormqr, lwork = _routine(char, "L", "T" if transpose else "N", x.shape[0], x.shape[1], k)
        out, _, info = ormqr("L", "T" if transpose else "N", f.a, f.tau, x, lwork)
    else:
        xt = x.T
        ormqr, lwork = _routine(char, "R", "N" if transpose else "T", xt.shape[0], xt.shape[1], k)
        out, _, info = ormqr("R", "N" if transpose else "T", f.a, f.tau, xt, lwork)
        out = out.T
    if info:
        raise ValueError("LAPACK {}ormqr failed with info = {}".format(char, info))
    return out
