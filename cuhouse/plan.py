"""Cost model: which plan (algorithm and block size) for (d, n, m, dtype, backend, layout).

Every algorithm is a sequence of GEMMs, LAPACK calls and element-wise passes,
so its time is predicted from a few constants of the machine
(:class:`cuhouse.calibration.Machine`):

* a GEMM ``(p x q) @ (q x r)`` costs ``launch + 2 p q r / (peak e(p) e(q) e(r))``
  with the shape efficiency ``e(s) = s / (s + half)``;
* a matrix-vector product (a dimension of 1) costs ``launch + 2 p q r / gemv_rate``:
  it is bound by memory, and fitting it with the GEMMs misplaced ``half``;
* on NumPy, compact WY in the full layout (one matrix, a 2-D X) makes direct
  SciPy BLAS calls, which the calibration times exactly as they are made, in
  sweeps over the blocks (FORMAT 8): a block's Gram ``?gemm`` (``gram_rates``),
  a block of a product, ``Z = V X``, ``U = T Z``, ``X -= V^T U`` (``step_rates``,
  by block size k and the size ``d m`` of X), a block of a one-column product,
  ``?gemv``, ``?trsv`` with S, ``?gemv`` (``column_rates``: no T matrices), each
  at the rate measured for its k and size (:func:`_block_rate`): every call
  streams its large operand once, which a block of k reflections shares k
  ways, and OpenBLAS's small-matrix kernels make products below about 1e6
  multiply-adds 1.3-1.6x faster; hence, for m = 32 on a 2-core Xeon (OpenBLAS 0.3.31),
  k = 16 at d = 64..1024, k = 8 at d = 2048 and k = 32 at d = 4096 (k = 16
  within 0.1%). Plus what the sweeps leave out (``MEASURED_OVERHEAD``,
  ``MEASURED_BUILD``). Without the tables (built-in constants) the GEMM
  formula with the block dimension at ``e(DIRECT_BLOCK)`` and products past
  ``SMALL_KERNEL_MACS`` ``PACKED_SLOWDOWN`` times slower. float64 calls keep
  their fixed cost and take twice the rest;
* an element-wise pass over ``b`` bytes costs ``launch + b / bandwidth``;
* on NumPy the T matrices come from LAPACK ``?trtri``, one call per block: at
  the calibration's ``trtri_rates`` for its k (0.4-9.6 GFLOP/s from k = 8 to
  128 on a 2-core Xeon), or ``lapack_call + k^3 / 3 / trtri_rate`` (on CuPy, the batched
  doubling inverse: two batched GEMMs per level);
* LAPACK ``?ormqr`` (the ``"ormqr"`` plan: NumPy, LAPACK's layout, one
  matrix, no gradient) costs ``ormqr_call + 4 n (d - n/2) m / ormqr_rate``.

On NumPy the constants are measured on the machine the first time a plan is
needed and cached on disk (:mod:`cuhouse.calibration`, in the manner of FFTW's
wisdom; ``CUHOUSE_CALIBRATION=off`` uses built-in constants), so the race
between cuhouse's own algorithms and LAPACK is run with this machine's
figures, and plans are deterministic given the cache. The CuPy constants are
H100 figures (cuBLAS FP32 without TF32, a ~10 us launch through CuPy), not
yet checked on a device. float64 halves the peak. ``python -m cuhouse bench
--sections plan`` prints the model's prediction beside the measured time of
every plan.
"""

import functools
import math
from collections import namedtuple

import numpy

from . import _memory, calibration
from ._gpu.primitives import KERNEL_INVERSE_MAX_K

Plan = namedtuple("Plan", "algorithm block_size store_inputs apply", defaults=("steps",))
Plan.__doc__ = """An algorithm name, a block size (``None`` for ``sequential``), whether
the backward stores every block's input (``store_inputs``, cwy only; see
:func:`store_block_inputs`) instead of recomputing it, and the mode of a cwy
product once its form is built (``apply``, see :func:`apply_mode`):
``"steps"`` (three GEMMs a block, no extra memory), ``"gemm"`` (two GEMMs a
block with ``W = T V`` cached) or ``"graph"`` (that sweep replayed as one
CUDA graph: three launches a product)."""

ALGORITHM_NAMES = ("sequential", "fasth", "cwy", "dense")
# "auto" never picks fasth: its forward matches cwy's GEMM for GEMM, but its
# build is k level-2 steps and its backward an O(k) loop per block (measured:
# 5.9 s against cwy's 0.21 s for forward+backward at d = m = 1024). It stays
# as the paper's baseline, selectable by name.
AUTO_CANDIDATES = ("sequential", "cwy", "dense")
# LAPACK ?ormqr on the caller's geqrf array: a forward-only plan, raced against the others where it can run
LAPACK_PLAN = "ormqr"
BLOCK_SIZES = (8, 16, 32, 64, 128, 256, 512)


def _gemm(mach, p, q, r, itemsize, count=1, calls=1):
    if not p * q * r:  # an empty operand (m = 0): launches only
        return calls * mach.launch
    flops = 2.0 * p * q * r * count
    if min(p, q, r) <= 1 and mach.gemv_rate is not None:  # a matrix-vector product: its own (memory) rate
        return calls * mach.launch + flops / (mach.gemv_rate * (4 / itemsize))
    eff = (p / (p + mach.half)) * (q / (q + mach.half)) * (r / (r + mach.half))
    peak = mach.peak * (4 / itemsize)
    return calls * mach.launch + flops / (peak * eff)


def _pass(mach, elements, itemsize, calls=1):
    return calls * mach.launch + elements * itemsize / mach.bandwidth


# The raw triangular-inverse kernel (cuhouse/_gpu, k <= KERNEL_INVERSE_MAX_K): one thread per
# column runs a serial loop of about k^2 / 2 dependent multiply-adds; estimated at ~10 cycles
# (1.8 GHz) a step with about 1024 matrices in flight on an H100-class GPU. Not yet measured.
KERNEL_STEP_SECONDS = 5.5e-9
KERNEL_MATRICES_AT_ONCE = 1024


# What the counted calls above leave out of a cwy product, in units of ``launch`` (so that it scales
# with the machine as the fixed cost of a call does): the Python work of a block and the calls the
# terms do not list (slices, the Gram matrix as SYRK, masks of identity factors and, in a structured
# layout, the heads of the blocks: one more GEMM per block and part). Fitted to cwy.build and
# cwy.apply timed against predict() on the project's machine (d = 64..1024, k = 16..64, m = 1, 32;
# single-threaded OpenBLAS): the build left out about 0.6 launches per reflection (full) and
# 100 + 1.6 per reflection (structured), a step about 7 (full) and 18 (structured) launches. Without
# them the model put a fresh cwy product from LAPACK's layout at a third of its time (d = 1024, m =
# 32: 1.4 ms predicted, 3.3 ms measured), below LAPACK's ormqr (1.25 ms), which it then never chose.
BUILD_OVERHEAD = {False: (0.0, 0.6), True: (100.0, 1.6)}  # (per build, per reflection), by structured layout
STEP_OVERHEAD = {False: 7.0, True: 18.0}  # per block of a product


# NumPy, full layout: cwy calls BLAS ?gemm on each block directly (cwy._build_numpy, cwy._apply_numpy:
# the Gram matrix as a GEMM, X -= V^T U with beta = 1, no element-wise pass). A calibration times these
# calls as made (the tables of FORMAT 8, see MEASURED_OVERHEAD). Without it (built-in constants): single-threaded
# OpenBLAS runs them within about 1.5x of one rate for k = 8..64 at d <= 2048 (measured 60-70 GFLOP/s
# effective for every k at d = 2048, m = 32), which the shape efficiency e(k) would put 1.6x apart
# and so favour large blocks, whose Gram matrices cost n k d: the block dimension is costed at
# e(DIRECT_BLOCK) instead. The calls
# a block makes beyond those counted (Python, slices, the in-place checks) are DIRECT_OVERHEAD
# launches (build, step, step of one column), fitted to cwy timed against predict() at d = 64..2048,
# m = 1, 32 (a 2-core machine; the one-column step, three bare SciPy/NumPy calls on 1-D views,
# d = 64..512, where 5 launches put it 2.5 us a block above its measured time and so favoured
# k = 64 at d = 128, measured 1.94x sormqr against 1.86x for k = 32).
DIRECT_BLOCK = 16
DIRECT_OVERHEAD = (3.0, 5.0, 1.0)
# Without a calibration: single-threaded OpenBLAS runs a float32 GEMM of at most about 1e6 multiply-adds with
# its small-matrix kernels, without packing, and larger ones 1.3-1.6x slower a flop (SkylakeX, 0.3.31). The
# formula above knows no such threshold and so took k = 32 at d = 1024, m = 32 (measured 1.67x k = 16's fresh
# call on a 2-core Xeon) and k = 16 at d = 2048 (1.5x k = 8's); with the block GEMMs beyond it priced
# PACKED_SLOWDOWN times slower, the built-in constants take k = 16 and 8 there, as measured fastest. (A
# calibration's tables time compact WY's calls themselves; with one, this prices only what no table times:
# the dense H's one-block update, see _block_gemm.)
SMALL_KERNEL_MACS = 1e6
PACKED_SLOWDOWN = 1.4
# The same with a calibration that times the calls as cwy makes them, in sweeps over the blocks (FORMAT 8:
# gram_rates, step_rates, column_rates, trtri_rates): what those sweeps leave out, in launches, per block of a
# build, of a step (m > 1) and of a one-column step (the loop's lines), and per build (MEASURED_BUILD: the
# blocks' views, S = G * W in one pass, the zero-diagonal test, the form). Fitted to cwy.build and cwy.apply
# timed against predict() (d = 128 and 1024, k = 8..64, m = 1 and 32, single-threaded OpenBLAS 0.3.31): the
# sweeps leave out 0.1-0.3 us a block of a build, 7-9 us a build at d = 128, 0.2-1.3 us a step. Fitted before
# cwy's loop lost about 0.9 us a block (its per-form step lists) and without a product's fixed part (X's copy,
# buffers: about 4 us), so a step is priced up to about 0.9 us high; a refit must move MEASURED_DENSE_OVERHEAD
# with it (docs/development.rst, "Cost model, what FORMAT 8 leaves").
MEASURED_OVERHEAD = (0.25, 1.0, 0.5)
MEASURED_BUILD = 12.0
# NumPy, full layout: what a fresh dense H costs beyond the calls counted for dense.build (the
# identity it is written into, the d x d GEMMs with k = d outside the measured block tables, the
# memory check, the form): (launches, passes over the d x d matrix). Fitted to fresh products
# timed against fresh cwy products (a 2-core machine, single-threaded OpenBLAS, interleaved, d = 16..128,
# m = 1, 2, 32, float32 and float64): without it the model put the dense H's first call at 1.00x
# cwy's at d = 16 (measured 1.15x), 0.98x at d = 64, m = 2, float64 (1.22x), 1.07x at d = 96, m = 32
# (1.25x), so the slack of the objective (FRESH_SLACK) took the dense H where its first call cost
# 1.2-1.35x; the measured excess, 5.5-23 us, is about 7 launches and 16 passes over d^2 entries.
DENSE_BUILD_OVERHEAD = (7.0, 16.0)
# The same with a calibration of cwy's calls as made (FORMAT 8; cwy's build then carries MEASURED_BUILD, which the
# dense build pays too): least squares over fresh dense H minus fresh cwy products (each at the plan's block size
# for it) against predict() without it, d = 16..96, m = 1, 2, 32, float32 and float64 (one thread, interleaved,
# 7 rounds, idle; 36 shapes): 10.1 launches and 5.2 passes, residuals within 7.4 us (most within 4 us), where the
# built-in constants' (7, 16) left -23.6..+2.4 us (the dense H priced up to 24 us too high at d = 80, 96).
MEASURED_DENSE_OVERHEAD = (10.0, 5.0)


def _block_gemm(mach, p, q, r, itemsize):
    """A GEMM of :func:`_gemm`'s cost whose smallest dimension is the block size k, the block dimension
    costed at ``DIRECT_BLOCK`` (see there): the built-in constants' cost of cwy's direct calls, and
    the dense H's ``X -= V^T U`` of one block; matrix-vector products keep their own rate."""
    small, middle, large = sorted((p, q, r))
    if small <= 1 or mach.gemv_rate is None:
        return _gemm(mach, p, q, r, itemsize)
    eff = (DIRECT_BLOCK / (DIRECT_BLOCK + mach.half)) * (middle / (middle + mach.half)) * (large / (large + mach.half))
    packed = PACKED_SLOWDOWN if p * q * r > SMALL_KERNEL_MACS else 1.0
    return mach.launch + packed * 2.0 * p * q * r / (mach.peak * (4 / itemsize) * eff)


def _block_rate(rates, k, size):
    """The rate of the calls of a block of block size ``k`` streaming an operand of ``size`` entries,
    from a calibration table ``rates`` ``((k, size, flop/s), ...)`` (sorted: ``gram_rates``,
    ``step_rates``, ``column_rates``): linear in log size between the sizes measured at each k, then
    linear in log k between the two measured block sizes around ``k``; held at the measured ends.

    Why the block size is a dimension of its own (not only the volume ``k * size``): every call
    streams its large operand (X ``d x m`` in ``V X`` and ``X -= V^T U``, the block ``k x d`` in a
    Gram matrix) through the BLAS once, whatever k (OpenBLAS's packed kernels copy it into their
    buffers; beyond the cache it comes from memory), so a block of k reflections pays one stream
    per k reflections: small blocks pay it most often. Products small enough for the BLAS's
    small-matrix kernels skip the packing (OpenBLAS: below about 1e6 multiply-adds), so which
    block size is fastest depends on both. Measured on a 2-core machine (single-threaded
    OpenBLAS, d = 4096, m = 32): 61 / 88 / 102 / 118 GFLOP/s at k = 8 / 16 / 32 / 64, where the
    volume alone put k = 8 at the 92 GFLOP/s of k = 16 at d = 2048 and so picked it (35 ms an
    apply against 26 ms at k = 16). O(len(rates))."""
    levels = _rate_levels(rates)
    ks = sorted(levels)
    if k <= ks[0] or len(ks) == 1:
        return _volume_rate(levels[ks[0]], size)
    if k >= ks[-1]:
        return _volume_rate(levels[ks[-1]], size)
    for k0, k1 in zip(ks, ks[1:]):
        if k <= k1:
            r0, r1 = _volume_rate(levels[k0], size), _volume_rate(levels[k1], size)
            return r0 + math.log(k / k0) / math.log(k1 / k0) * (r1 - r0)
    raise AssertionError("unreachable")


@functools.lru_cache(maxsize=16)
def _rate_levels(rates):
    """``{k: ((size, flop/s), ...)}`` of a table of :func:`_block_rate`."""
    levels = {}
    for k, size, rate in rates:
        levels.setdefault(k, []).append((size, rate))
    return {k: tuple(points) for k, points in levels.items()}


def _volume_rate(rates, volume):
    """The rate of ``rates`` ``((volume, flop/s), ...)`` (increasing volumes) at ``volume``: linear in
    log volume between the measured points, the end points' beyond them."""
    if volume <= rates[0][0]:
        return rates[0][1]
    for (v0, r0), (v1, r1) in zip(rates, rates[1:]):
        if volume <= v1:
            w = math.log(volume / v0) / math.log(v1 / v0)
            return r0 + w * (r1 - r0)
    return rates[-1][1]


def _direct_build(mach, d, n, k, itemsize, inverses):
    """cwy's build on NumPy in the full layout: per block one Gram ``?gemm``, ``S = G * W``, and with
    ``inverses`` one ``?trtri`` (T = S^-1; a product of one column, or the dense H of one block,
    solves with S instead and builds no T). The Gram call at the calibration's ``gram_rates`` (the
    call as cwy makes it, its fixed cost included)."""
    nb = -(-n // k)
    if mach.gram_rates:  # the Gram matrix's own call, measured whole (``?gemm`` of (k x d) by its transpose)
        k0, d0, _ = mach.gram_rates[0]
        gram = _measured_seconds(mach.gram_rates, k, d, 2.0 * k * k * d, 2.0 * k0 * k0 * d0, itemsize, mach.lapack_call)
    else:
        gram = _block_gemm(mach, k, d, k, itemsize)
    if mach.step_rates:  # a FORMAT 8 calibration: the Gram call timed as cwy makes it, in a sweep over blocks
        build = nb * (gram + mach.launch * MEASURED_OVERHEAD[0]) + mach.launch * MEASURED_BUILD
    else:
        build = nb * (gram + mach.launch * (1 + DIRECT_OVERHEAD[0]))
    return build + (_triangular_inverse(mach, k, nb, itemsize) if inverses else 0.0)


def _direct_step(mach, d, m, k, itemsize):
    """One block of cwy's apply on NumPy in the full layout: ``V X``, ``T (V X)``, ``X -= V^T U`` (beta = 1);
    for one column ``S U = V X`` by ``?trsv`` (a LAPACK-like call: k^2 flops at the matrix-vector rate)
    in place of the product with T, and ``?gemv``. With the calibration's ``step_rates`` (m > 1) and
    ``column_rates`` (m = 1), the block's calls as cwy makes them, timed together: ``4 k d m + 2 k^2 m``
    (``4 k d + k^2``) flops at the rate measured for k and ``d m`` (d), and ``MEASURED_OVERHEAD``."""
    if m == 1 and mach.column_rates:
        k0, d0, _ = mach.column_rates[0]
        flops, first = 4.0 * k * d + k * k, 4.0 * k0 * d0 + k0 * k0
        seconds = _measured_seconds(mach.column_rates, k, d, flops, first, itemsize, 3 * mach.lapack_call)
        return seconds + mach.launch * MEASURED_OVERHEAD[2]
    if m != 1 and mach.step_rates:
        k0, size0, _ = mach.step_rates[0]  # the table's calls have calibration.STEP_COLUMNS columns
        first = 4.0 * k0 * size0 + 2.0 * k0 * k0 * calibration.STEP_COLUMNS
        flops = 4.0 * k * d * m + 2.0 * k * k * m
        seconds = _measured_seconds(mach.step_rates, k, d * m, flops, first, itemsize, 3 * mach.lapack_call)
        return seconds + mach.launch * MEASURED_OVERHEAD[1]
    if m == 1:
        small = mach.lapack_call + _gemm(mach, k, k, 1, itemsize) - mach.launch
    else:
        small = _gemm(mach, k, k, m, itemsize)
    return (
        _block_gemm(mach, k, d, m, itemsize)
        + small
        + _block_gemm(mach, d, k, m, itemsize)
        + mach.launch * DIRECT_OVERHEAD[1 if m != 1 else 2]
    )


def _measured_seconds(rates, k, size, flops, first_flops, itemsize, fixed):
    """Seconds of a call of ``flops`` at block size ``k`` and ``size`` from a table ``rates`` ``((k, size,
    flop/s), ...)`` of whole float32 calls (their fixed cost included; :func:`_block_rate`'s
    interpolation), and no less than the table's first (smallest) call, of ``first_flops``: below the
    measured sizes a call's time is mostly its fixed cost. float64: :func:`_wider`, with the calls'
    ``fixed`` seconds. O(len(rates))."""
    _, _, first_rate = rates[0]
    return _wider(max(flops / _block_rate(rates, k, size), first_flops / first_rate), fixed, itemsize)


def _wider(seconds, fixed, itemsize):
    """``seconds`` of float32 calls at ``itemsize``: their ``fixed`` part (the calls' own cost, at most
    ``seconds``) as it is, the rest scaled by ``itemsize / 4`` (float64: half the rate). Measured (cwy
    build + apply, d = 64..1024, k = 16 and 32, m = 1 and 32, one thread, 2-core AMD EPYC): float64
    predictions 0.92-1.30x the measured time, against 0.94-1.43x with the whole scaled (float32:
    0.84-1.06x)."""
    if itemsize == 4:
        return seconds
    fixed = min(fixed, seconds)
    return fixed + (seconds - fixed) * (itemsize / 4)


def _triangular_inverse(mach, k, count, itemsize):
    """What :func:`cuhouse._gpu.primitives.upper_triangular_inverse` runs for ``count`` k x k triangles:
    one LAPACK ``?trtri`` each where the machine has LAPACK (NumPy: at the calibration's
    ``trtri_rates`` for block size k, the call as cwy makes it, its fixed cost included: linear in
    log k between the measured sizes, the rate held beyond the largest and the time beyond the
    smallest; without them ``lapack_call + k^3 / 3 / trtri_rate``); on the GPU the raw kernel on
    the diagonal blocks of ``b = min(k, KERNEL_INVERSE_MAX_K)`` (one launch, waves of serial
    loops), then the doubling from b (at level b, two GEMMs of b x b x b per pair and about six
    element-wise launches: gathers, the joined blocks)."""
    if mach.trtri_rates:
        return count * _wider(_trtri_seconds(mach.trtri_rates, k), mach.lapack_call, itemsize)
    if mach.trtri_rate is not None:
        return count * (mach.lapack_call + k**3 / 3 / (mach.trtri_rate * 4 / itemsize))
    b = min(k, KERNEL_INVERSE_MAX_K)
    blocks = count * -(-k // b)
    seconds = mach.launch + -(-blocks // KERNEL_MATRICES_AT_ONCE) * (b * b / 2) * KERNEL_STEP_SECONDS
    while b < k:
        seconds += 6 * mach.launch + 2 * _gemm(mach, b, b, b, itemsize, count=count * k / (2 * b))
        b *= 2
    return seconds


def _trtri_seconds(rates, k):
    """Seconds of one ``?trtri`` of a k x k triangle from ``rates`` ``((k, flop/s), ...)`` (increasing k)."""
    k0, rate0 = rates[0]
    if k <= k0:
        return k0**3 / 3 / rate0
    return k**3 / 3 / _volume_rate(rates, k)


def predict(algorithm, d, n, m, block_size, itemsize=4, backend="numpy", built=False, layout="full", machine=None):
    """Predicted seconds of one ``H @ X`` with X ``(d, m)``, on ``machine`` (default: this
    machine's :func:`cuhouse.calibration.machine` for ``backend``).

    ``built`` leaves out the one-off cost of building the algorithm's form (cached
    on the operator). A structured ``layout`` ("trapezoidal",
    "unit") has block j of k reflections touch rows jk..d only: every GEMM
    runs on ``d - (n - k) / 2`` rows on average.
    """
    mach = machine or calibration.machine(backend)
    if algorithm == LAPACK_PLAN:
        if layout != "unit" or mach.ormqr_rate is None:
            raise ValueError("the ormqr plan needs LAPACK's layout (from_lapack) on the NumPy backend")
        return mach.ormqr_call + 4.0 * n * (d - n / 2) * m / (mach.ormqr_rate * 4 / itemsize)
    full_d = d
    if layout != "full":
        d = max(d - (n - min(block_size, n)) / 2, 1)
    if algorithm == "sequential":
        build = 0.0 if built else _pass(mach, 3 * n * full_d, itemsize, calls=3)  # norms, normalize
        step = _gemm(mach, 1, d, m, itemsize) + _gemm(mach, d, 1, m, itemsize) + _pass(mach, 6 * d * m, itemsize, 4)
        return build + n * step
    k = min(block_size, n)
    nb = -(-n // k)
    if algorithm == "fasth":
        d = full_d  # normalizes full-length copies
        build = 0.0 if built else _pass(mach, 3 * n * d, itemsize, calls=3)
        if not built:
            # k sequential steps, each two batched matrix-vector products over all blocks.
            build += k * 2 * _gemm(mach, k / 2, d, 1, itemsize, count=nb)
        step = _gemm(mach, k, d, m, itemsize) + _gemm(mach, d, k, m, itemsize) + _pass(mach, 3 * d * m, itemsize)
        return build + nb * step
    if algorithm in ("cwy", "dense") and layout == "full" and backend == "numpy" and mach.trtri_rate is not None:
        if algorithm == "cwy":
            return (0.0 if built else _direct_build(mach, d, n, k, itemsize, m != 1)) + nb * _direct_step(
                mach, d, m, k, itemsize
            )
        if built:
            return _gemm(mach, d, d, m, itemsize)
        # what dense.build does beyond its counted calls (DENSE_BUILD_OVERHEAD, MEASURED_DENSE_OVERHEAD)
        launches, passes = MEASURED_DENSE_OVERHEAD if mach.step_rates else DENSE_BUILD_OVERHEAD
        build = mach.launch * launches + _pass(mach, passes * d * d, itemsize, 0)
        if nb == 1:  # dense.build's one block: H = I - V^T (S^-1 V), one ?trsm and one ?gemm, no T (as m = 1)
            solve = mach.lapack_call + _gemm(mach, k, k, d, itemsize)
            build += _direct_build(mach, d, n, k, itemsize, False) + solve + _block_gemm(mach, d, k, d, itemsize)
        else:
            build += _direct_build(mach, d, n, k, itemsize, True) + nb * _direct_step(mach, d, d, k, itemsize)
        return build + _gemm(mach, d, d, m, itemsize)
    # raw vectors: no normalization pass; one Gram GEMM per block, S = G * W in one pass
    structured = layout != "full"
    cwy_build = (
        _gemm(mach, k, d, k, itemsize, count=nb, calls=nb)
        + _pass(mach, 2 * nb * k * k, itemsize)
        + _triangular_inverse(mach, k, nb, itemsize)
        + mach.launch * (BUILD_OVERHEAD[structured][0] + BUILD_OVERHEAD[structured][1] * n)
    )
    build = 0.0
    if algorithm == "cwy":
        if not built:
            build += cwy_build
        step = (
            _gemm(mach, k, d, m, itemsize)
            + _gemm(mach, k, k, m, itemsize)
            + _gemm(mach, d, k, m, itemsize)
            + _pass(mach, 3 * d * m, itemsize)
            + mach.launch * STEP_OVERHEAD[structured]
        )
        return build + nb * step
    if algorithm == "dense":
        if not built:
            build += cwy_build + predict("cwy", full_d, n, full_d, k, itemsize, backend, True, layout, mach)
        return build + _gemm(mach, full_d, full_d, m, itemsize)
    raise ValueError("unknown algorithm {!r}".format(algorithm))


# A CUDA graph's replay costs about this much per captured node beyond the work itself (an
# estimate for cuBLAS GEMM nodes on an H100-class GPU, against a ~10 us launch through CuPy).
GRAPH_NODE_SECONDS = 1.5e-6
# The apply modes the cost model may pick for a cwy product on each backend: NumPy has no
# launch overhead to save, so it keeps the steps (no extra memory).
APPLY_MODES = {"numpy": ("steps",), "cupy": ("steps", "gemm", "graph")}


def predict_apply(mode, d, n, m, block_size, itemsize=4, backend="numpy", layout="full", machine=None):
    """Predicted seconds of one cwy ``H @ X`` (X ``(d, m)``) in apply ``mode`` once the form (and
    the mode's cache: ``W``, a captured graph) exists. See :class:`Plan` for the modes."""
    mach = machine or calibration.machine(backend)
    if mode == "steps":
        return predict("cwy", d, n, m, block_size, itemsize, backend, built=True, layout=layout, machine=mach)
    if layout != "full":
        d = max(d - (n - min(block_size, n)) / 2, 1)
    k = min(block_size, n)
    nb = -(-n // k)
    block = _gemm(mach, k, d, m, itemsize) + _gemm(mach, d, k, m, itemsize)
    copy = _pass(mach, 2 * d * m, itemsize)
    if mode == "gemm":
        return copy + nb * block
    if mode == "graph":  # X in, the replay, the result out; the nodes without their launches
        return 2 * copy + mach.launch + nb * (block - 2 * mach.launch + 2 * GRAPH_NODE_SECONDS)
    raise ValueError("unknown apply mode {!r}".format(mode))


def apply_mode(d, n, m, block_size, itemsize=4, backend="numpy", layout="full", machine=None):
    """The fastest mode of a cached cwy product among ``APPLY_MODES[backend]`` by
    :func:`predict_apply`. The modes' one-off costs (``W``: about one batched GEMM of
    O(n k d); a graph capture: one sweep's host time) are left out: the modes exist for
    the products that reuse the form. Cost: O(1)."""
    modes = APPLY_MODES.get(backend, ("steps",))
    return min(modes, key=lambda mode: predict_apply(mode, d, n, m, block_size, itemsize, backend, layout, machine))


# The objective of a product without gradient (docs/design.rst, "The objective", has the measured
# figures): each algorithm at its fastest fresh block size; among those whose predicted fresh call
# costs at most (1 + FRESH_SLACK) times the fastest's, the one fastest once its form is built (ties:
# the faster fresh). A plan is a function of the shapes and the calibration, never of what is
# cached, so one plan serves an H used once (it loses at most the slack, as predicted) and an H used
# a thousand times. The call is the batch's B matrices (each built and applied once) plus the layers
# outside the plan that predict() leaves out, paid once a call (validation, lookups, X's check):
# CALL_LAUNCHES times the machine's measured array-call cost (``launch``; 50 x 0.6 us against the
# 34-56 us measured on a 2-core machine). The dense H is raced only within its memory budget
# (dense_fits) and the machine's memory. Block sizes keep their fresh optimum (within one algorithm
# the trade is inside the model's error) but for near ties (BLOCK_TIE): of those, the faster built.
# A gradient, LAPACK's ormqr (from_lapack: the race is on LAPACK's own factorization) and backends
# other than NumPy (their constants were not measured against this objective) take the fastest fresh plan.
# FRESH_SLACK is a policy (how much of a first call a reused H may cost), not a machine constant. It was 0.15
# (the dense H's first call measured 1.12-1.16x compact WY's at d = 16, m = 1, "on the bound");
# with the calibration of the calls as made (FORMAT 8) the model prices the dense H within a few us, and the
# same call measured 1.245x (d = 64, m = 32: 1.164x) against a cached product 2-2.5x faster: at 0.15 the plan
# took compact WY there, the cached product measured 6.8x (d = 16, m = 1) and 5.7x (d = 64, m = 32) a dense
# GEMM instead of 3.3x and 2.6x (targets 5 and 3), for fresh calls 0.80x and 0.84x (targets missed either way).
# At 0.20 a first call there costs what the dense H costs: 1.245x and 1.164x compact WY's, measured.
FRESH_SLACK = 0.20
CALL_LAUNCHES = 50
# Block sizes of one algorithm whose predicted fresh calls lie within this fraction of its fastest are a
# near tie: the one fastest once built is taken (ties: the faster fresh). The fastest fresh block size
# alone flipped between calibration caches where two sizes tie (d = 4096, m = 32: k = 16 and 32
# predicted 51.32 and 51.33 ms with one cache; k = 32, 16 or 8 with others), and the cached product with
# it (k = 16 measured 2.40x the GEMM, k = 32 1.75x in the bench). Kept below the 2% at which the
# model misjudges the fresh trade (design.rst: k = 64 at d = 128, m = 1, predicted 1.02x k = 32's fresh
# call, measured 1.12-1.16x). A gradient, LAPACK's race and other backends keep the fastest fresh.
BLOCK_TIE = 0.01


def call_seconds(mach):
    """Predicted seconds of a product's layers outside its plan (see ``CALL_LAUNCHES``) on ``mach``."""
    return CALL_LAUNCHES * mach.launch


def choose(
    d,
    n,
    m,
    dtype,
    backend="numpy",
    algorithm="auto",
    block_size=None,
    layout="full",
    lapack=False,
    gradient=False,
    batch=1,
):
    """The :class:`Plan` for ``H @ X`` by the cost model: each algorithm at its fastest fresh block
    size (of the sizes within ``BLOCK_TIE`` of that, the one fastest once built), and of those
    whose fresh call (``batch`` products of one matrix each, build included, and
    :func:`call_seconds` of layers once) costs at most ``1 + FRESH_SLACK`` times the fastest's, the
    one fastest once built (a product with a ``gradient``, whose reflections change at the next
    step, one LAPACK's ``?ormqr`` can run, or one on another backend than NumPy: the fastest fresh;
    with a gradient ``"auto"`` does not race the dense H, whose backward costs O(n d^2)).

    ``batch`` is the number of matrices (H's batch entries, each built and applied once by the
    call): the layers' cost is per call while the predictions are per matrix, so a large batch
    leaves the slack to the matrices alone. ``"auto"`` races the dense H only where ``batch``
    matrices of d x d entries fit :func:`dense_fits`'s budget and, on NumPy, the machine's memory
    with the dense build's workspace (:data:`cuhouse._memory.DENSE_WORKSPACE`).

    ``algorithm`` and ``block_size`` pin what the caller fixed; ``layout`` is
    the reflections' (see :mod:`cuhouse.algorithms._layout`); ``lapack`` says
    that LAPACK's ``?ormqr`` can run the product itself (NumPy, a single
    ``geqrf`` array, no gradient), which adds the ``"ormqr"`` plan to the race
    of ``"auto"``. The choice depends on these arguments and on the machine's
    constants only (:func:`cuhouse.calibration.machine`, read from the
    calibration cache), never on which forms happen to be cached, so the same
    H and X always run the same plan (and give the same bits) for a given
    calibration. Memoized: a dictionary lookup after the first call.
    """
    if not isinstance(gradient, (bool, numpy.bool_)):
        raise TypeError("gradient must be a bool, got {!r} ({})".format(gradient, type(gradient).__name__))
    if isinstance(batch, (bool, numpy.bool_)) or not isinstance(batch, (int, numpy.integer)):
        raise TypeError("batch must be an int, got {!r} ({})".format(batch, type(batch).__name__))
    if batch < 1:
        raise ValueError("batch must be at least 1 (the number of matrices), got {}".format(batch))
    mach = calibration.machine(backend)
    itemsize = numpy.dtype(dtype).itemsize
    return _choose(d, n, m, itemsize, backend, algorithm, block_size, layout, lapack, bool(gradient), mach, int(batch))


# The dense H's memory budget in "auto" (and for a form kept by prepare_reuse, cuhouse._reuse): its
# batch * d * d entries at most KEEP_FACTOR times the reflections' batch * n * d, or KEEP_MIN
# entries (256 KiB of float32) in all, whichever is larger.
KEEP_FACTOR = 2
KEEP_MIN = 1 << 16


def dense_fits(d, n, batch=1):
    """Whether ``batch`` dense matrices H ``(d, d)`` fit the memory budget of a dense form
    (``KEEP_FACTOR``, ``KEEP_MIN``) for ``batch`` sets of ``n`` reflections of length ``d``. O(1)."""
    return batch * d * d <= max(KEEP_FACTOR * batch * n * d, KEEP_MIN)


def _dense_allowed(d, n, itemsize, backend, batch):
    """Whether ``"auto"`` may race the dense H: :func:`dense_fits`, and on NumPy the ``batch`` matrices
    with the dense build's workspace fit this machine's memory (:func:`cuhouse._memory.host_fits`)."""
    if not dense_fits(d, n, batch):
        return False
    return backend != "numpy" or _memory.host_fits(_memory.DENSE_WORKSPACE * batch * d * d * itemsize)


@functools.lru_cache(maxsize=4096)
def _choose(d, n, m, itemsize, backend, algorithm, block_size, layout, lapack, gradient, mach, batch=1):
    names = AUTO_CANDIDATES if algorithm == "auto" else (algorithm,)
    if algorithm == "auto" and (gradient or not _dense_allowed(d, n, itemsize, backend, batch)):
        # the dense H's backward, O(n d^2), is not priced; its memory is over the budget: not raced
        names = tuple(name for name in names if name != "dense")
    if algorithm == "auto" and lapack and layout == "unit" and mach.ormqr_rate is not None:
        names += (LAPACK_PLAN,)
    fresh_only = gradient or LAPACK_PLAN in names or backend != "numpy"
    found = []  # (fresh seconds, built seconds, name, block size), in a fixed order
    for name in names:
        if name in ("sequential", LAPACK_PLAN):
            sizes = (None,)
        elif block_size is not None:
            sizes = (min(block_size, n),)
        else:
            sizes = sorted({min(k, n) for k in BLOCK_SIZES})
        for k in sizes:
            fresh = predict(name, d, n, m, k or 1, itemsize, backend, layout=layout, machine=mach)
            built = fresh if fresh_only else per_product(name, d, n, m, k, itemsize, backend, layout, mach)
            found.append((fresh, built, name, k))
    fastest = min(f[0] for f in found)
    layers = call_seconds(mach)
    # the whole call: batch matrices, the layers once
    bound = batch * fastest if fresh_only else (1.0 + FRESH_SLACK) * (batch * fastest + layers) - layers
    quickest = {}  # each algorithm's fastest fresh call
    for f in found:
        quickest[f[2]] = min(quickest.get(f[2], f[0]), f[0])
    own = {}  # each algorithm at its fastest fresh block size, or a near tie of it faster once built
    for f in found:
        tie = f[0] <= (1.0 + (0.0 if fresh_only else BLOCK_TIE)) * quickest[f[2]]
        if tie and (f[2] not in own or (f[1], f[0]) < (own[f[2]][1], own[f[2]][0])):
            own[f[2]] = f
    _, _, name, k = min((f for f in own.values() if batch * f[0] <= bound), key=lambda f: (f[1], f[0]))
    store = name == "cwy" and layout == "full" and store_block_inputs(d, n, m, k, itemsize, backend, mach)
    if name == "cwy":
        mode = apply_mode(d, n, m, k, itemsize, backend, layout, mach)
    else:
        mode = ormqr_mode(d, m, mach) if name == LAPACK_PLAN else "steps"
    return Plan(name, k, store, mode)


def ormqr_mode(d, m, mach):
    """The apply mode of the ``"ormqr"`` plan for X ``(d, m)`` from ``mach.orm2r_columns`` (see
    :class:`cuhouse.calibration.Machine`): whether LAPACK's unblocked ``?orm2r`` runs for an X taken from
    the left (Fortran-ordered), and how a row-major one runs (from the right, blocked or unblocked, or
    copied into Fortran order), as measured at the largest measured depth at most ``d`` (the smallest
    one below it) and the fewest measured columns at least ``m`` (more columns than measured: blocked
    from either side): ``"<left>_<right>"``, a name of :data:`cuhouse.algorithms.ormqr.MODES`.
    ``"steps"`` when the calibration has no such entry (the built-in constants, or a cache written
    before it was measured): the built-in rule :func:`cuhouse.algorithms.ormqr.built_in_mode` decides
    when the product runs. O(len(orm2r_columns))."""
    entries = mach.orm2r_columns
    if entries is None:
        return "steps"
    depth = max((e[0] for e in entries if e[0] <= d), default=entries[0][0])
    found = [e for e in entries if e[0] == depth and e[1] >= m]
    if not found:
        return "blocked_blocked"
    return "{}_{}".format("unblocked" if found[0][2] == 1.0 else "blocked", _RIGHT_WAYS[found[0][3]])


# Machine.orm2r_columns's right entry: how a row-major X ran fastest (cuhouse.algorithms.ormqr.RIGHT_WAYS)
_RIGHT_WAYS = {0.0: "blocked", 1.0: "unblocked", 2.0: "copied"}


def per_product(name, d, n, m, k, itemsize, backend, layout, mach, mode=None):
    """Predicted seconds of one product by plan ``name`` at block size ``k`` once its form is built (a
    cwy form in apply ``mode``, by default its fastest, :func:`apply_mode`). Cost: O(1) (a few
    :func:`predict` calls)."""
    if name == "cwy":
        mode = mode or apply_mode(d, n, m, k, itemsize, backend, layout, mach)
        return predict_apply(mode, d, n, m, k, itemsize, backend, layout, mach)
    return predict(name, d, n, m, k or 1, itemsize, backend, built=True, layout=layout, machine=mach)


def describe(plan):
    """A plan in a few words: ``cwy k=64``, ``sequential``, ``ormqr (LAPACK)`` (its path by the built-in
    rule), ``ormqr (LAPACK, unblocked_copied)`` (a calibrated apply mode, :func:`ormqr_mode`)."""
    if plan.algorithm == LAPACK_PLAN:
        return "ormqr (LAPACK)" if plan.apply == "steps" else "ormqr (LAPACK, {})".format(plan.apply)
    return plan.algorithm if plan.block_size is None else "{} k={}".format(plan.algorithm, plan.block_size)


def store_block_inputs(d, n, m, block_size, itemsize=4, backend="numpy", machine=None):
    """Whether the CWY backward stores every block's input instead of recomputing it.

    Storing keeps ``n/k * d * 2m`` values (a block's output and its gradient)
    and turns the n/k per-block dY GEMMs into one batched GEMM, at the price of
    one copy per block. It is chosen only when the cost model predicts it
    faster and the stored values fit in ``n * d`` (the size of dY itself), so
    the extra memory stays O(d m + n d) either way. Cost: O(1).
    """
    mach = machine or calibration.machine(backend)
    k = min(block_size, n)
    n_blocks = -(-n // k)
    stored = n_blocks * d * 2 * m
    if stored > n * d:
        return False
    per_block = n_blocks * _gemm(mach, k, 2 * m, d, itemsize)
    batched = _gemm(mach, k, 2 * m, d, itemsize, count=n_blocks) + _pass(mach, 2 * stored, itemsize, n_blocks)
    return batched < per_block
