"""Power-of-two scaling of X's columns, so that no intermediate of a product overflows or underflows.

An orthogonal H keeps every column's norm, so ``H @ X`` is representable
whenever X is; but the algorithms' intermediates are not. CWY on raw rows
forms ``Z = V X`` (of size ``||v|| ||x||``) and ``T Z`` (of size
``||x|| / ||v||``); the algorithms on unit rows still form ``y^T x``, up to
``||x||``, which overflows for a column whose entries are representable but
whose norm is not. Where a column is tiny the same products underflow, and
H's action on it is silently lost.

As LAPACK's ``nrm2`` and ``larfg`` do, the remedy is a scaling: the rows were
already brought into a safe range when the factors were built (see
:meth:`cuhouse.householder.Reflections.factors`); here each column of X whose
size leaves the range that the rows allow is multiplied by a power of two
(exact: no rounding) to a largest entry in [1/2, 1), and the result is
scaled back. The test is one cheap pass: the columns' sums of absolute
values ``s_j`` (one GEMV), with ``||x_j|| <= s_j <= sqrt(d) ||x_j||``; only
when some column fails it is X copied, scaled, and the result scaled back
(three more passes). A column that is zero or non-finite is left as it is.

Bounds, for rows of norms in ``[v_min, v_max]`` (unit rows: both 1) and a
column of norm ``r``: every intermediate is at most ``r max(v_max, 1/v_min, 1)``
times a factor of the block size (at most ``16 d`` here), and the rounding of
an underflowing product costs about ``d tiny max(v_max, 1/v_min, 1)``, which
must stay below ``eps r``. The scaled columns (largest entry in [1/2, 1)) meet
both bounds for every row norm inside the rows' safe range.

The generic path (any other Array API library: torch, array_api_strict, ...)
has no ``frexp`` or ``ldexp`` and must not read data on the host, so it scales
every column, always (:func:`column_factors`): by ``2**-floor(log2(largest))``,
computed with ``log2`` and ``floor`` and clipped so that the factor and its
inverse are normal numbers; exact, so a column already in range gives the same
bits.
"""

import functools
import math
import struct
from collections import namedtuple

import numpy

Limits = namedtuple("Limits", "lo hi gradient_lo gradient_hi")
Limits.__doc__ = """Sizes that need no scaling: a column of X (or of the output, or of the
output's gradient) whose :func:`column_sizes` entry lies in ``[lo, hi]`` (or is
zero); the product of the largest such sizes of the output and its gradient
(the size of the gradient w.r.t. the rows) in ``[gradient_lo, gradient_hi]``."""


def limits(v_min, v_max, d, dtype):
    """The :class:`Limits` of rows whose nonzero norms lie in ``[v_min, v_max]`` (unit rows: 1, 1), for
    X ``(d, m)`` in ``dtype``. The backward's k x k products carry ``||v||^2`` and ``1/||v||^2``
    (``R = T^T N T^T`` with ``T ~ 1/||v||^2``, ``N ~ ||v||^2``), hence the squared spread. The
    bounds are values of ``dtype`` (rounded to nearest): a size compares with them alike in ``dtype``
    and in float64, so every check agrees on every NumPy (NumPy < 2 compares a float32 scalar with a
    Python float in float64, an array in float32). O(1)."""
    spread = max(float(v_max), 1.0 / float(v_min), 1.0)
    lo, hi, hi_d, gradient_lo, gradient_hi, gradient_hi_d, rounded = _limit_terms(d, dtype)
    # the terms' products in the order the formulas read, left to right: the same bits as unfactored
    return Limits._make(
        rounded(
            lo * spread,
            hi / (hi_d * spread),
            gradient_lo * spread * spread,
            gradient_hi / (gradient_hi_d * spread * spread),
        )
    )


_FLOAT32S = struct.Struct("<4f")


def _float32s(*values):
    """``values`` (four Python floats) rounded to the nearest float32s, as Python floats (one ``struct``
    round trip, 0.2 us; infinity beyond float32's range)."""
    try:
        return _FLOAT32S.unpack(_FLOAT32S.pack(*values))
    except OverflowError:  # struct refuses what rounds to infinity: NumPy's conversion gives it
        with numpy.errstate(over="ignore"):
            return tuple(float(numpy.float32(v)) for v in values)


def _float64s(*values):
    """``values``, already float64s."""
    return values


@functools.lru_cache(maxsize=256)
def _limit_terms(d, dtype):
    """The factors of :func:`limits` that do not depend on the rows, for X ``(d, m)`` in ``dtype``: the
    left-to-right products ``w sqrt(d) d tiny/eps``, ``w max``, ``16 d``, ``w^2 d^2 tiny/eps``,
    ``w^2 max``, ``16 d^2`` (w: :func:`_weight`; column_sizes are w times the sums of absolute
    values), and the function that rounds the four bounds to ``dtype``. Memoized: at d = 16 the
    formulas cost more than a small product's check of X."""
    big, small = _range(dtype)
    w = _weight(d)
    rounded = _float32s if numpy.dtype(dtype).itemsize == 4 else _float64s
    return w * math.sqrt(d) * d * small, w * big, 16.0 * d, w * w * d * d * small, w * w * big, 16.0 * d * d, rounded


@functools.lru_cache(maxsize=None)
def _range(dtype):
    """``(max, tiny / eps)`` of ``dtype`` as Python floats (memoized: ``finfo`` costs a microsecond a call)."""
    info = numpy.finfo(dtype)
    return float(info.max), float(info.tiny) / float(info.eps)


def _weight(d):
    """``2^-(ceil(log2 d) + 1)``, in (1/(4d), 1/(2d)]: a sum of d absolute values times it cannot overflow."""
    return 2.0 ** -(int(d - 1).bit_length() + 1)


def column_sizes(x, xp):
    """``w`` times the sums of absolute values of the columns of ``x`` ``(..., d, m)``: ``(..., m)``, with
    ``w = 2^-(ceil(log2 d) + 1)`` (so that no sum overflows), 0 only for a zero column; between
    ``w ||x_j||`` and ``w sqrt(d) ||x_j||``. One GEMV: ``weights(d, dtype, xp) @ |x|`` (for one NumPy
    matrix ``numpy.dot``, the same BLAS call with a third of ``@``'s overhead: 0.95 against 1.5 us at
    d = 16, m = 32)."""
    if xp is numpy and x.ndim == 2:
        return numpy.dot(weights(x.shape[0], x.dtype, numpy), abs(x))
    return weights(x.shape[-2], x.dtype, xp) @ xp.abs(x)


@functools.lru_cache(maxsize=32)
def _numpy_weights(d, dtype):
    weights = numpy.full(d, _weight(d), dtype=dtype)
    weights.flags.writeable = False
    return weights


def weights(d, dtype, xp):
    """The vector of d weights w of :func:`column_sizes` (read-only and cached on NumPy, where
    allocating it costs as much as the GEMV at small d)."""
    return _numpy_weights(d, dtype) if xp is numpy else xp.full(d, _weight(d), dtype=dtype)


def bit_bounds(lo, hi, dtype):
    """``(unsigned, lo_bits, span)`` with which one reduction tests column sizes against ``[lo, hi]``:
    for sizes ``s`` of ``dtype`` (float32 or float64, NumPy) that are ``>= 0`` or NaN (what
    :func:`column_sizes` gives), ``max(s.view(unsigned) - lo_bits) <= span`` (the subtraction wraps
    around) exactly when every ``s`` is in ``[lo, hi]`` (``lo`` and ``hi`` finite values of ``dtype``,
    as :func:`limits` gives; ``span`` is of the type ``unsigned``: NumPy < 2 compares a uint64 with a
    Python int in float64, which loses the last bits): nonnegative floats order as their
    bit patterns, a size below ``lo`` wraps to more than ``span``, and NaN's pattern is above
    infinity's. One subtraction and one reduction instead of two reductions (0.3 us less at m = 32;
    ``lo_bits`` is a 0-d array, which NumPy subtracts faster than a scalar). The patterns come from
    ``struct`` (round to nearest, as NumPy's conversion): 0.1 us each against 0.7 us through arrays."""
    pack, unpack, unsigned = _BIT_FORMATS[numpy.dtype(dtype).itemsize]
    lo_bits = unpack(pack(lo))[0]
    return unsigned, numpy.array(lo_bits, dtype=unsigned), unsigned(unpack(pack(hi))[0] - lo_bits)


_BIT_FORMATS = {  # by itemsize (float32, float64): pack a float, unpack its bits, their NumPy type
    4: (struct.Struct("<f").pack, struct.Struct("<I").unpack, numpy.uint32),
    8: (struct.Struct("<d").pack, struct.Struct("<Q").unpack, numpy.uint64),
}


def inside(sizes, lo, hi):
    """Whether every size is in ``[lo, hi]`` (NaN is not): one size compared as a float, more by two
    reductions (array methods: no function dispatch) and one test; False for zero columns, which
    :func:`_any_column_out` then looks at. O(m)."""
    if sizes.size == 1:
        return lo <= sizes.item() <= hi
    return sizes.size == 0 or bool((sizes.min() >= lo) & (sizes.max() <= hi))


def _largest(x, xp):
    """The largest absolute value of each column of ``x`` ``(..., d, m)``: ``(..., 1, m)``. O(d m)."""
    return xp.max(xp.abs(x), axis=-2, keepdims=True)


def _any_column_out(largest, sizes, lo, hi, xp):
    """Whether a nonzero finite column (by its exact ``largest`` entry) has its size out of ``[lo, hi]``."""
    sizes = sizes[..., None, :]
    out = xp.isfinite(largest) & (largest > 0) & ~((sizes >= lo) & (sizes <= hi))
    return bool(xp.any(out))


def column_exponents(x, limits, xp):
    """The exponents ``e`` ``(..., 1, m)`` that bring each column of ``x`` ``(..., d, m)`` to a
    largest entry in [1/2, 1) (``x * 2**-e``), or ``None`` when every nonzero finite column is
    already within ``limits`` (:class:`Limits`). Zero and non-finite columns get ``e = 0``.

    Cost: one GEMV over ``|x|`` (``d m``); a per-column maximum only when some column is out of
    range, zero, or not finite (with ``check_finite=False``).
    """
    sizes = column_sizes(x, xp)
    if inside(sizes, limits.lo, limits.hi):
        return None
    largest = _largest(x, xp)
    if not _any_column_out(largest, sizes, limits.lo, limits.hi, xp):
        return None
    usable = xp.isfinite(largest) & (largest > 0)
    _, exponent = xp.frexp(xp.where(usable, largest, 1))
    return exponent


def column_binades(x, xp):
    """The exponents ``e`` ``(..., 1, m)`` that bring each column of ``x`` ``(..., d, m)`` to a largest
    entry in [1/2, 1), for every column and without a test (so without a host sync: the GPU's
    form of :func:`column_exponents`). Scaling by a power of two is exact, and rounding is the
    same in every binade, so a column already in range gives the same bits; zero and non-finite
    columns get ``e = 0``. Cost: one pass over ``|x|``, a column maximum, O(m) more.
    """
    _, exponent = xp.frexp(xp.max(xp.abs(x), axis=-2, keepdims=True))
    return exponent


def gradient_needs_scaling(out, dout, limits, xp):
    """Whether the adjoint of a product needs ``out`` and ``dout`` ``(..., d, m)`` scaled: a nonzero
    column of either out of ``[lo, hi]``, or the product of their largest column sizes (the size of
    the gradient w.r.t. the rows) out of ``[gradient_lo, gradient_hi]`` (:class:`Limits`).
    Cost: two GEMVs; per-column maxima only when a column is out of range, zero, or not finite."""
    if 0 in out.shape:
        return False
    sizes = [column_sizes(a, xp) for a in (out, dout)]  # (..., m) each
    if not all(inside(s, limits.lo, limits.hi) for s in sizes) and any(
        _any_column_out(_largest(a, xp), s, limits.lo, limits.hi, xp) for a, s in zip((out, dout), sizes)
    ):
        return True
    first, second = (s.max(axis=-1) for s in sizes)
    with numpy.errstate(over="ignore", under="ignore"):
        size = first * second
    ok = (first == 0) | (second == 0) | ((size >= limits.gradient_lo) & (size <= limits.gradient_hi))
    return not bool(xp.all(ok))


def array_exponent(x, xp):
    """One exponent per matrix of ``x`` ``(..., d, m)``, shaped ``(..., 1, 1)``, that brings its
    largest finite entry into [1/2, 1) (0 for a zero matrix). O(d m)."""
    magnitude = xp.abs(x)
    largest = xp.max(xp.where(xp.isfinite(magnitude), magnitude, 0), axis=(-2, -1), keepdims=True)
    _, exponent = xp.frexp(xp.where(largest > 0, largest, 1))
    return exponent


def scaled(x, exponent, xp):
    """``x * 2**-exponent`` as a new array (exact: a power of two; entries far below their
    column's largest may round into the subnormal range, below eps of the column). O(d m)."""
    return xp.ldexp(x, -exponent)


def unscale(out, exponent, xp):
    """``out * 2**exponent`` in place (exact unless it overflows, where the true result does); a
    complex ``out`` (a gradient w.r.t. complex vectors) part by part. O(size)."""
    for part in (out.real, out.imag) if out.dtype.kind == "c" else (out,):
        xp.ldexp(part, exponent, out=part)
    return out


# ---------------------------------------------------------------- the generic path (Array API only)


def exponent_bound(dtype, xp):
    """``maxexp - 2`` of a real floating ``dtype`` of ``xp``, as a float: ``2**+-bound`` are normal
    numbers, and so is their product with a number of one binade. From ``xp.finfo``: no cache,
    which torch.compile would trace. O(1)."""
    return math.floor(math.log2(float(xp.finfo(dtype).max))) - 1.0


def binade_factors(largest, xp):
    """The powers of two ``f = 2**-e`` (of ``largest``'s shape and real dtype) that bring each
    nonnegative ``largest`` into [1, 2) as ``largest * f``, with ``e = floor(log2(largest))``
    clipped to ``[-(maxexp - 2), maxexp - 2]`` so that ``f`` and ``1 / f`` are normal numbers: a
    subnormal ``largest`` comes to at least ``2**-(mantissa bits)``, a zero one stays zero and
    a non-finite one stays non-finite (its column is NaN or infinite whatever is done). Array API
    operations only, no host synchronization, no data-dependent branch; exact. O(size)."""
    bound = exponent_bound(largest.dtype, xp)
    # zero (and NaN) sizes get the factor 1: log2(0) is a divide-by-zero warning on NumPy-backed libraries
    positive = xp.where(largest > 0, largest, xp.ones_like(largest))
    exponent = xp.clip(xp.floor(xp.log2(positive)), -bound, bound)  # positional: CuPy names them a_min, a_max
    return xp.full_like(exponent, 0.5) ** exponent  # an array base: torch's scalar ** tensor costs 8x more


def largest_magnitudes(x, axis, xp):
    """The largest absolute value of a real ``x`` over ``axis`` (kept, size 1), from its maximum and
    minimum: two reading passes, no temporary of x's size. NaN where a NaN is among them (as
    ``max(abs(x))``). O(size)."""
    return xp.maximum(xp.max(x, axis=axis, keepdims=True), -xp.min(x, axis=axis, keepdims=True))


def column_factors(x, xp):
    """:func:`binade_factors` of the largest absolute value of each column of a real ``x`` ``(..., d, m)``:
    ``(..., 1, m)``, real. O(d m)."""
    return binade_factors(largest_magnitudes(x, -2, xp), xp)


def matrix_factors(x, xp):
    """:func:`binade_factors` of the largest absolute value of each matrix of ``x`` ``(..., d, m)``:
    ``(..., 1, 1)``, real (1 for a matrix with no entries). O(d m)."""
    magnitude = xp.abs(x)
    if 0 in magnitude.shape[-2:]:
        return xp.ones(magnitude.shape[:-2] + (1, 1), dtype=magnitude.dtype, device=magnitude.device)
    return binade_factors(xp.max(magnitude, axis=(-2, -1), keepdims=True), xp)
