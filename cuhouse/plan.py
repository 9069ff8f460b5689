"""Cost model: which algorithm and block size for (d, n, m, dtype, backend).

Every algorithm is a sequence of GEMMs and element-wise passes, so its time is
predicted from two machine models:

* a GEMM ``(p x q) @ (q x r)`` costs ``launch + 2 p q r / (peak e(p) e(q) e(r))``
  with the shape efficiency ``e(s) = s / (s + half)``;
* an element-wise pass over ``b`` bytes costs ``launch + b / bandwidth``.

The CPU constants were fitted (``scipy.optimize.least_squares`` on log-times)
to 191 single-threaded OpenBLAS float32 GEMMs of the shapes the algorithms
issue ((k, d, m), (d, k, m), (k, k, m), (k, d, k) for d = 256..2048,
k = 8..512, m = 1..256) on the project's 2-core machine: median error 1.08x,
worst 1.9x; the bandwidth is that of the normalization pass (16 MB in about
0.6 ms per pass). The GPU constants are H100 figures (cuBLAS FP32 without
TF32, a ~10 us launch through CuPy), not yet checked on a device. float64
halves the peak. ``python -m cuhouse bench --sections plan`` prints the
model's prediction beside the measured time of every plan: on the CPU it
ranks the block sizes correctly to within about 10% of the best measured.
"""

import functools
from collections import namedtuple

import numpy

from ._gpu.primitives import KERNEL_INVERSE_MAX_K

Plan = namedtuple("Plan", "algorithm block_size store_inputs apply", defaults=("steps",))
Plan.__doc__ = """An algorithm name, a block size (``None`` for ``sequential``), whether
the backward stores every block's input (``store_inputs``, cwy only; see
:func:`store_block_inputs`) instead of recomputing it, and the form of a cwy
product once its factors are built (``apply``, see :func:`apply_form`):
``"steps"`` (three GEMMs a block, no extra memory), ``"gemm"`` (two GEMMs a
block with ``W = T V`` cached) or ``"graph"`` (that sweep replayed as one
CUDA graph: three launches a product)."""

Machine = namedtuple("Machine", "launch peak half bandwidth")
MACHINES = {
    "numpy": Machine(launch=1.0e-6, peak=1.07e11, half=1.3, bandwidth=2.5e10),
    "cupy": Machine(launch=1.0e-5, peak=5.0e13, half=64.0, bandwidth=2.5e12),
}

ALGORITHM_NAMES = ("sequential", "fasth", "cwy", "dense")
# "auto" never picks fasth: its forward matches cwy's GEMM for GEMM, but its
# build is k level-2 steps and its backward an O(k) loop per block (measured:
# 5.9 s against cwy's 0.21 s for forward+backward at d = m = 1024). It stays
# as the paper's baseline, selectable by name.
AUTO_CANDIDATES = ("sequential", "cwy", "dense")
BLOCK_SIZES = (8, 16, 32, 64, 128, 256, 512)


def _gemm(mach, p, q, r, itemsize, count=1, calls=1):
    if not p * q * r:  # an empty operand (m = 0): launches only
        return calls * mach.launch
    eff = (p / (p + mach.half)) * (q / (q + mach.half)) * (r / (r + mach.half))
    flops = 2.0 * p * q * r * count
    peak = mach.peak * (4 / itemsize)
    return calls * mach.launch + flops / (peak * eff)


def _pass(mach, elements, itemsize, calls=1):
    return calls * mach.launch + elements * itemsize / mach.bandwidth


# The raw triangular-inverse kernel (cuhouse/_gpu, k <= KERNEL_INVERSE_MAX_K): one thread per
# column runs a serial loop of about k^2 / 2 dependent multiply-adds; estimated at ~10 cycles
# (1.8 GHz) a step with about 1024 matrices in flight on an H100-class GPU. Not yet measured.
KERNEL_STEP_SECONDS = 5.5e-9
KERNEL_MATRICES_AT_ONCE = 1024


def _triangular_inverse(mach, k, count, itemsize, backend="numpy"):
    """What :func:`cuhouse._gpu.primitives.upper_triangular_inverse` runs for ``count`` k x k triangles.

    NumPy: doubling from 1 x 1 blocks. CuPy: the raw kernel on diagonal blocks of
    ``b = min(k, KERNEL_INVERSE_MAX_K)`` (one launch, waves of serial loops), then
    doubling from b. Doubling level b costs two GEMMs of b x b x b per pair plus
    about six element-wise launches (gathers, the joined blocks).
    """
    if backend == "cupy":
        b = min(k, KERNEL_INVERSE_MAX_K)
        blocks = count * -(-k // b)
        seconds = mach.launch + -(-blocks // KERNEL_MATRICES_AT_ONCE) * (b * b / 2) * KERNEL_STEP_SECONDS
    else:
        seconds, b = 0.0, 1
    while b < k:
        seconds += 6 * mach.launch + 2 * _gemm(mach, b, b, b, itemsize, count=count * k / (2 * b))
        b *= 2
    return seconds


def predict(algorithm, d, n, m, block_size, itemsize=4, backend="numpy", built=False, layout="full"):
    """Predicted seconds of one ``H @ X`` with X ``(d, m)``.

    ``built`` leaves out the one-off cost of building the block factors (they
    are cached on the operator). A structured ``layout`` ("trapezoidal",
    "unit") has block j of k reflections touch rows jk..d only: every GEMM
    runs on ``d - (n - k) / 2`` rows on average.
    """
    mach = MACHINES[backend]
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
    # raw vectors: no normalization pass; one Gram GEMM per block
    cwy_build = _gemm(mach, k, d, k, itemsize, count=nb, calls=nb) + _triangular_inverse(mach, k, nb, itemsize, backend)
    build = 0.0
    if algorithm == "cwy":
        if not built:
            build += cwy_build
        step = (
            _gemm(mach, k, d, m, itemsize)
            + _gemm(mach, k, k, m, itemsize)
            + _gemm(mach, d, k, m, itemsize)
            + _pass(mach, 3 * d * m, itemsize)
        )
        return build + nb * step
    if algorithm == "dense":
        if not built:
            build += cwy_build + predict("cwy", full_d, n, full_d, k, itemsize, backend, built=True, layout=layout)
        return build + _gemm(mach, full_d, full_d, m, itemsize)
    raise ValueError("unknown algorithm {!r}".format(algorithm))


# A CUDA graph's replay costs about this much per captured node beyond the work itself (an
# estimate for cuBLAS GEMM nodes on an H100-class GPU, against a ~10 us launch through CuPy).
GRAPH_NODE_SECONDS = 1.5e-6
# The forms the cost model may pick for a cwy product on each backend: NumPy has no launch
# overhead to save, so it keeps the steps form (no extra memory).
APPLY_FORMS = {"numpy": ("steps",), "cupy": ("steps", "gemm", "graph")}


def predict_apply(form, d, n, m, block_size, itemsize=4, backend="numpy", layout="full"):
    """Predicted seconds of one cwy ``H @ X`` (X ``(d, m)``) in ``form`` once the factors (and
    the form's cache: ``W``, a captured graph) exist. See :class:`Plan` for the forms."""
    if form == "steps":
        return predict("cwy", d, n, m, block_size, itemsize, backend, built=True, layout=layout)
    mach = MACHINES[backend]
    if layout != "full":
        d = max(d - (n - min(block_size, n)) / 2, 1)
    k = min(block_size, n)
    nb = -(-n // k)
    block = _gemm(mach, k, d, m, itemsize) + _gemm(mach, d, k, m, itemsize)
    copy = _pass(mach, 2 * d * m, itemsize)
    if form == "gemm":
        return copy + nb * block
    if form == "graph":  # X in, the replay, the result out; the nodes without their launches
        return 2 * copy + mach.launch + nb * (block - 2 * mach.launch + 2 * GRAPH_NODE_SECONDS)
    raise ValueError("unknown apply form {!r}".format(form))


def apply_form(d, n, m, block_size, itemsize=4, backend="numpy", layout="full"):
    """The fastest form of a cached cwy product among ``APPLY_FORMS[backend]`` by
    :func:`predict_apply`. The forms' one-off costs (``W``: about one batched GEMM of
    O(n k d); a graph capture: one sweep's host time) are left out: the forms exist for
    the products that reuse the factors. Cost: O(1)."""
    return min(
        APPLY_FORMS[backend], key=lambda form: predict_apply(form, d, n, m, block_size, itemsize, backend, layout)
    )


def choose(d, n, m, dtype, backend="numpy", algorithm="auto", block_size=None, layout="full"):
    """The fastest :class:`Plan` for ``H @ X`` by the cost model, build included.

    ``algorithm`` and ``block_size`` pin what the caller fixed; ``layout`` is
    the reflections' (see :mod:`cuhouse.algorithms._blocks`). The choice
    depends on these arguments only, never on which factors happen to be
    cached, so the same H and X always run the same plan (and give the same
    bits). Memoized: a dictionary lookup after the first call.
    """
    return _choose(d, n, m, numpy.dtype(dtype).itemsize, backend, algorithm, block_size, layout)


@functools.lru_cache(maxsize=4096)
def _choose(d, n, m, itemsize, backend, algorithm, block_size, layout):
    names = AUTO_CANDIDATES if algorithm == "auto" else (algorithm,)
    best = None
    for name in names:
        if name == "sequential":
            sizes = (None,)
        elif block_size is not None:
            sizes = (min(block_size, n),)
        else:
            sizes = sorted({min(k, n) for k in BLOCK_SIZES})
        for k in sizes:
            seconds = predict(name, d, n, m, k or 1, itemsize, backend, layout=layout)
            if best is None or seconds < best[0]:
                best = (seconds, name, k)
    _, name, k = best
    store = name == "cwy" and layout == "full" and store_block_inputs(d, n, m, k, itemsize, backend)
    form = apply_form(d, n, m, k, itemsize, backend, layout) if name == "cwy" else "steps"
    return Plan(name, k, store, form)


def store_block_inputs(d, n, m, block_size, itemsize=4, backend="numpy"):
    """Whether the CWY backward stores every block's input instead of recomputing it.

    Storing keeps ``n/k * d * 2m`` values (a block's output and its gradient)
    and turns the n/k per-block dY GEMMs into one batched GEMM, at the price of
    one copy per block. It is chosen only when the cost model predicts it
    faster and the stored values fit in ``n * d`` (the size of dY itself), so
    the extra memory stays O(d m + n d) either way. Cost: O(1).
    """
    mach = MACHINES[backend]
    k = min(block_size, n)
    n_blocks = -(-n // k)
    stored = n_blocks * d * 2 * m
    if stored > n * d:
        return False
    per_block = n_blocks * _gemm(mach, k, 2 * m, d, itemsize)
    batched = _gemm(mach, k, 2 * m, d, itemsize, count=n_blocks) + _pass(mach, 2 * stored, itemsize, n_blocks)
    return batched < per_block
