"""The machine constants of the cost model, measured once per machine and cached on disk.

The cost model (:mod:`cuhouse.plan`) predicts every plan from a few constants
of the machine it runs on: the fixed cost of one array call, the GEMM rate
(a peak and the shape efficiency ``e(s) = s / (s + half)``, fitted to skinny
and square GEMMs), the bandwidth of an element-wise pass, the fixed cost of
one LAPACK call, the rate of LAPACK's triangular inverse ``?trtri``, the
cost of LAPACK's ``?ormqr`` and the rates of a block of reflectors' skinny
GEMMs by block size and depth (a BLAS may run small products with faster
kernels, and every call streams X once, which small blocks pay most often:
together they decide the block size at large d). They move with the machine (CPU, BLAS library
and version, BLAS threads): a plan tuned on one machine does not carry to
the next. So, in the manner of FFTW's wisdom, they are measured the first
time a plan is needed on a machine (about two seconds, once; the timings of
each table in interleaved passes, the fastest of five kept, so that a burst of
load on a shared machine reads no entry low) and kept in a small
JSON file; every later process on that machine reads the file, so plans are
deterministic given the file.

Where:
    ``$CUHOUSE_CALIBRATION_DIR`` if set, else the user cache directory:
    ``$XDG_CACHE_HOME/cuhouse`` (default ``~/.cache/cuhouse``) on Linux,
    ``~/Library/Caches/cuhouse`` on macOS, ``%LOCALAPPDATA%\\cuhouse`` on
    Windows. The file is ``calibration-<backend>-<machine key>.json``; the key
    hashes what the constants depend on (:func:`machine_description`), so a
    new BLAS or another thread count measures afresh. Delete the file (or
    call :func:`calibrate` with ``force=True``) to measure again.
Opt-out:
    ``CUHOUSE_CALIBRATION=off`` uses the built-in constants (:data:`DEFAULTS`)
    and never measures nor writes. A directory that cannot be written is no
    error: the measured constants are then used for this process only.

Only the NumPy backend is measured so far; CuPy uses its built-in constants
(H100 figures) until the measurement is run on a device.
"""

import hashlib
import json
import math
import os
import platform
import sys
import time
from collections import namedtuple

import numpy

_MachineFields = namedtuple(
    "Machine",
    "launch peak half bandwidth lapack_call trtri_rate ormqr_call ormqr_rate gemv_rate block_rates gram_rates",
    defaults=(None, None, None),
)


class Machine(_MachineFields):
    # a plan cache key (cuhouse.plan._choose, cuhouse._reuse.kept) on every product: its hash (about
    # 170 floats with block_rates and gram_rates, 3 us) is computed once per object
    def __hash__(self):
        found = self.__dict__.get("_hash")
        if found is None:
            found = self.__dict__["_hash"] = tuple.__hash__(self)
        return found

    def __getstate__(self):  # the fields only (hash(None) differs between processes before Python 3.12)
        return None


Machine.__doc__ = """Constants of the cost model (seconds, flop/s at float32, bytes/s):
``launch`` the fixed cost of one array call; a GEMM ``(p x q) @ (q x r)`` costs
``launch + 2 p q r / (peak e(p) e(q) e(r))`` with ``e(s) = s / (s + half)``, fitted
to matrix-matrix shapes only; a matrix-vector product (a dimension of 1, bound by
memory rather than flops) costs ``launch + 2 p q r / gemv_rate`` (``gemv_rate``
``None``: the GEMM formula);
an element-wise pass over ``b`` bytes costs ``launch + b / bandwidth``;
``lapack_call`` is the fixed cost of one LAPACK call through SciPy and
``trtri_rate`` the rate of ``?trtri`` (k^3 / 3 flops for a k x k triangle);
``?ormqr`` applying n reflectors of length d to m columns costs
``ormqr_call + 4 n (d - n/2) m / ormqr_rate`` (``ormqr_rate`` is ``None``
where there is no LAPACK plan); ``block_rates`` ``((k, size, flop/s), ...)`` (or
``None``) the rates of the skinny GEMMs of a block of reflectors, ``(k x d) @
(d x 32)`` for k = 8, 16, 32, 64 and d = 64..4096, by block size k and the
size ``32 d`` of the operand each call streams (sorted by k, then size): a BLAS
may run small products with other kernels (OpenBLAS: below about 1e6
multiply-adds, at 1.3-1.6x the rate of the packed kernels above), and each
call streams X (``d x m``) once whatever k, so the rate depends on k as well
as on the volume (``cuhouse.plan._block_rate``); both decide the best block
size at d >= 1024. ``gram_rates`` ``((k, d, flop/s), ...)`` (or ``None``) the
rates of a block's Gram matrix ``(k x d) @ (d x k)`` as one ``?gemm`` (the
build's call, through SciPy), for the same k and d, its fixed cost
included (the call's time is its flops over the rate): another shape and
another call, measured 1.3-1.8x slower than ``block_rates``' product of the
same volume at d <= 256, where they decide between k = 32 and 64."""

DEFAULTS = {
    # fitted on the project's 2-core machine (single-threaded OpenBLAS, float32); see cuhouse.plan
    "numpy": Machine(
        launch=1.0e-6,
        peak=1.3e11,
        half=10.0,
        bandwidth=2.5e10,
        lapack_call=1.0e-6,
        trtri_rate=5.0e9,
        ormqr_call=2.0e-6,
        ormqr_rate=4.5e10,
        gemv_rate=2.5e10,
    ),
    # H100 figures (cuBLAS FP32 without TF32, a ~10 us launch through CuPy), not yet checked on a device
    "cupy": Machine(
        launch=1.0e-5,
        peak=5.0e13,
        half=64.0,
        bandwidth=2.5e12,
        lapack_call=None,
        trtri_rate=None,
        ormqr_call=None,
        ormqr_rate=None,
        gemv_rate=None,
    ),
}

# the generic path on a CPU (torch, array_api_strict): NumPy's rates, but each array operation
# costs about 10 us through the library and array_api_compat (torch CPU, d = 32..1024: blocks of
# 32-64 measured fastest, against 8-16 under NumPy's 1 us); no LAPACK or ormqr plan
DEFAULTS["generic"] = DEFAULTS["numpy"]._replace(
    launch=1.0e-5, lapack_call=None, trtri_rate=None, ormqr_call=None, ormqr_rate=None
)

FORMAT = 7  # bump when the constants or their measurement change meaning (7: the tables timed in interleaved passes)
_ENV_DIR = "CUHOUSE_CALIBRATION_DIR"
_ENV_SWITCH = "CUHOUSE_CALIBRATION"

Calibration = namedtuple("Calibration", "machine source")
Calibration.__doc__ = """The :class:`Machine` constants in use and where they came from: a file path
(read or just written), ``"measured (not saved: <reason>)"``, or ``"built-in"``."""

_loaded = {}


def enabled():
    """False when ``CUHOUSE_CALIBRATION`` is ``off`` (or ``0``, ``false``, ``no``)."""
    return os.environ.get(_ENV_SWITCH, "").strip().lower() not in ("off", "0", "false", "no")


def cache_dir():
    """The directory of the calibration files (see the module docstring)."""
    if os.environ.get(_ENV_DIR):
        return os.environ[_ENV_DIR]
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or os.path.expanduser("~")
    elif sys.platform == "darwin":
        base = os.path.expanduser("~/Library/Caches")
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "cuhouse")


def machine_description(backend="numpy"):
    """What the constants depend on: CPU, core count, NumPy and SciPy versions, the BLAS
    library, its version and its thread count (a dict of strings)."""
    if backend != "numpy":
        raise ValueError("only the numpy backend is calibrated, got backend {!r}".format(backend))
    import scipy

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    blas, threads = "unknown", "unknown"
    try:
        import scipy.linalg  # noqa: F401  (loads SciPy's BLAS, which LAPACK calls run on)
        from threadpoolctl import threadpool_info

        # sorted: the order threadpoolctl lists the libraries in follows the order they were loaded,
        # which varies between processes, and the key must not
        pools = sorted(
            (p for p in threadpool_info() if p.get("user_api") == "blas"), key=lambda p: os.path.basename(p["filepath"])
        )
        if pools:
            blas = "; ".join(
                "{} {} {} ({})".format(
                    p.get("internal_api"), p.get("version"), p.get("architecture"), os.path.basename(p["filepath"])
                )
                for p in pools
            )
            threads = ",".join(str(p.get("num_threads")) for p in pools)
    except ImportError:  # threadpoolctl is optional: the environment variables say the thread count
        threads = next(
            (os.environ[v] for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS") if v in os.environ),
            "unknown",
        )
    return {
        "backend": backend,
        "cpu": cpu,
        "cpus": str(os.cpu_count()),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "blas": blas,
        "blas_threads": threads,
        "format": str(FORMAT),
    }


def cache_path(backend="numpy"):
    """The file that holds (or will hold) this machine's constants for ``backend``."""
    description = machine_description(backend)
    key = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(cache_dir(), "calibration-{}-{}.json".format(backend, key))


def current(backend="numpy"):
    """The :class:`Calibration` in use for ``backend`` in this process (memoized).

    Built-in constants when calibration is off or the backend is not measured;
    else the cached file, measured and written first if missing or unreadable.
    """
    if backend not in _loaded:
        if backend != "numpy" or not enabled():
            _loaded[backend] = Calibration(DEFAULTS[backend], "built-in")
        else:
            _loaded[backend] = calibrate(backend)
    return _loaded[backend]


def machine(backend="numpy"):
    """The :class:`Machine` constants the cost model uses for ``backend``."""
    return current(backend).machine


def forget():
    """Drop this process's memo, so that the next plan reads the file (or the switch) again."""
    _loaded.clear()


def calibrate(backend="numpy", force=False):
    """Read this machine's constants from the cache, or measure and save them: a :class:`Calibration`.

    ``force`` measures even when the file exists. A file whose constants fail
    :func:`problems` is measured again; a measurement that still fails after
    its retries (a machine too loaded to time) is not saved, and this process
    uses the built-in constants (the source says why). Cost: about two seconds of
    measurement when it runs; a file read otherwise.
    """
    path = cache_path(backend)
    if not force:
        stored = read(path)
        if stored is not None and not problems(stored):
            return Calibration(stored, path)
    try:
        measured = measure(backend)
    except CalibrationError as exc:
        return Calibration(DEFAULTS[backend], "built-in (measurement rejected: {})".format(exc))
    try:
        write(path, measured, machine_description(backend))
    except OSError as exc:
        return Calibration(measured, "measured (not saved: {})".format(exc))
    return Calibration(measured, path)


class CalibrationError(RuntimeError):
    """A measurement whose constants fail :func:`problems` on every try."""


def read(path):
    """The :class:`Machine` stored in ``path``, or ``None`` when missing, unreadable or of another format."""
    try:
        with open(path) as f:
            data = json.load(f)
        if data.get("format") != FORMAT:
            return None
        stored = {name: data["machine"][name] for name in Machine._fields}
        for name in ("block_rates", "gram_rates"):  # JSON lists: tuples, so that a Machine stays hashable
            if stored[name] is not None:
                stored[name] = tuple((float(k), float(q), float(r)) for k, q, r in stored[name])
        return Machine(**stored)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write(path, machine, description):
    """Save ``machine`` with the ``description`` it was measured on (atomically: a whole file or none)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = {
        "format": FORMAT,
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "on": description,
        "machine": machine._asdict(),
    }
    temporary = "{}.{}.tmp".format(path, os.getpid())
    with open(temporary, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(temporary, path)


# Plausible ranges of the constants on a CPU (seconds, flop/s, bytes/s). A timing that a loaded
# machine distorted (a process descheduled inside a sample, a cache flushed by a neighbour) shows
# as a constant outside them, or as rates that contradict each other: LAPACK's ormqr, trtri and a
# matrix-vector product run on the same BLAS, so none of them beats the GEMM peak by more than
# a factor of two, and no call is cheaper than the bare array call it contains.
_RANGES = {
    "launch": (1e-8, 1e-4),
    "peak": (1e8, 1e14),
    "half": (0.1, 1000.0),
    "bandwidth": (1e8, 1e13),
    "lapack_call": (1e-8, 1e-3),
    "trtri_rate": (1e6, 1e14),
    "ormqr_call": (1e-8, 1e-3),
    "ormqr_rate": (1e7, 1e14),
    "gemv_rate": (1e6, 1e14),
}


def problems(machine):
    """What is implausible about ``machine``'s constants (a list of sentences; empty when sane).

    Each constant must be finite and inside its plausible range, the GEMM fit
    must not sit on an edge of its grid (``half`` 0.1 or 1000: no fit), and
    the LAPACK and matrix-vector rates must not exceed twice the GEMM peak.
    ``None`` entries (no LAPACK plan) are not checked. O(1).
    """
    found = []
    for name, (lo, hi) in _RANGES.items():
        value = getattr(machine, name)
        if value is None:
            continue
        number = isinstance(value, (int, float))
        if not (number and math.isfinite(value) and lo <= value <= hi):
            shown = "{:g}".format(value) if number else repr(value)
            found.append("{} = {} is outside [{:g}, {:g}]".format(name, shown, lo, hi))
    if found:
        return found
    if machine.half <= _HALVES[0] or machine.half >= _HALVES[-1]:
        found.append("the GEMM fit ran onto the edge of its grid (half = {:g})".format(machine.half))
    for name in ("trtri_rate", "ormqr_rate", "gemv_rate"):
        value = getattr(machine, name)
        if value is not None and value > 2 * machine.peak:
            found.append("{} = {:.3g} flop/s exceeds twice the GEMM peak {:.3g}".format(name, value, machine.peak))
    for name, table in (("block GEMM", machine.block_rates), ("Gram GEMM", machine.gram_rates)):
        points = [(k, size) for k, size, _ in table or ()]
        if any(not (math.isfinite(k) and k > 0 and math.isfinite(q) and q > 0) for k, q in points) or any(
            a >= b for a, b in zip(points, points[1:])
        ):
            found.append("the {} points (k, size) {} are not positive and increasing".format(name, points))
        for k, size, rate in table or ():
            if not (math.isfinite(rate) and 1e6 <= rate <= 2 * machine.peak):
                found.append(
                    "the {} rate {:.3g} flop/s at k = {:g}, size {:g} is outside [1e6, twice the GEMM peak "
                    "{:.3g}]".format(name, rate, k, size, machine.peak)
                )
    return found


def _clock():
    """Thread CPU time when BLAS runs single-threaded (it all runs in the calling thread, and the time
    spent waiting for a core on a loaded machine is left out), else wall time (other threads' work counts)."""
    try:
        from threadpoolctl import threadpool_info

        threads = [p.get("num_threads") for p in threadpool_info() if p.get("user_api") == "blas"]
    except ImportError:
        threads = [
            os.environ.get(v) for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS") if v in os.environ
        ]
    single = bool(threads) and all(str(t) == "1" for t in threads)
    return time.thread_time if single else time.perf_counter


def _seconds(fn, clock=time.perf_counter, budget=0.002, repeats=5):
    """The fastest of ``repeats`` timings of ``fn`` by ``clock``, each over enough calls to last ``budget`` seconds."""
    return _best_seconds((fn,), clock, budget, repeats)[0]


def _best_seconds(fns, clock=time.perf_counter, budget=0.002, repeats=5):
    """The fastest of ``repeats`` timings of each of ``fns`` by ``clock``, each timing over enough
    calls to last ``budget`` seconds (their number found once per function), in interleaved passes:
    pass p times every function once, so that a function's timings are spread over the whole
    measurement (about ``len(fns) * repeats * budget`` seconds) rather than taken back to back.

    Why: on a loaded machine a burst of work on the other cores (a neighbour's BLAS, a test run)
    slows what runs meanwhile through the shared caches and memory, which a thread's CPU time does
    not leave out. Back to back, all the timings of one table entry can fall into one burst and the
    entry reads 2-3x low (measured: single block rates at d = 4096 that flipped near-tie block sizes
    between two calibrations); spread over the table, a burst hits one timing of each entry it
    overlaps, and the fastest of the others stands. Cost: the same calls as timing each function
    back to back."""
    numbers, best = [], []
    for fn in fns:
        fn()
        number = 1
        while True:
            start = clock()
            for _ in range(number):
                fn()
            elapsed = clock() - start
            if elapsed >= budget or number >= 1 << 20:
                break
            number *= 4 if elapsed < budget / 8 else 2
        numbers.append(number)
        best.append(elapsed / number)
    for _ in range(repeats - 1):
        for i, (fn, number) in enumerate(zip(fns, numbers)):
            start = clock()
            for _ in range(number):
                fn()
            best[i] = min(best[i], (clock() - start) / number)
    return best


# matrix-matrix shapes (p, q, r) the algorithms issue: skinny (k, d, m), (d, k, m), (k, d, k) and
# square ones; the fit of (peak, half) uses these only
_GEMM_SHAPES = (
    (16, 16, 16),
    (32, 32, 32),
    (64, 64, 64),
    (128, 128, 128),
    (256, 256, 256),
    (512, 512, 512),
    (32, 512, 32),
    (512, 32, 32),
    (32, 2048, 32),
    (2048, 32, 32),
    (64, 1024, 64),
    (1024, 64, 32),
    (128, 2048, 32),
    (2048, 128, 32),
)
# matrix-vector shapes (m = 1): bound by memory, not flops, so they get their own rate (fitted together
# with the shapes above, they pulled ``half`` down to about 2 and the model then put skinny GEMMs with
# a dimension of 32 at 1.4-1.8x their measured speed: cwy at d = 2048 predicted 4.5 ms, measured 12)
_GEMV_SHAPES = ((64, 1024, 1), (1024, 64, 1), (32, 2048, 1), (2048, 32, 1))
# the skinny GEMMs of a block of reflectors, (k x d) @ (d x 32), and its Gram matrix (k x d) @ (d x k)
# by one ?gemm, by block size k and depth d: Machine.block_rates and gram_rates (56 GEMMs, about a
# third of the measurement's time)
_BLOCK_SIZES = (8, 16, 32, 64)
_BLOCK_DEPTHS = (64, 128, 256, 512, 1024, 2048, 4096)
_BLOCK_COLUMNS = 32
_PEAKS = numpy.logspace(9, 13, 161)
_HALVES = numpy.logspace(-1, 3, 161)
ATTEMPTS = 3  # measurements tried before a loaded machine's constants are rejected


def measure(backend="numpy"):
    """Measure the :class:`Machine` constants of ``backend`` on this machine, float32: about two seconds
    a try. A try whose constants fail :func:`problems` is repeated, up to :data:`ATTEMPTS` tries;
    then :class:`CalibrationError`."""
    if backend != "numpy":
        raise ValueError("only the numpy backend is calibrated, got backend {!r}".format(backend))
    clock = _clock()
    found = []
    for _ in range(ATTEMPTS):
        machine = _measure_once(clock)
        found = problems(machine)
        if not found:
            return machine
    raise CalibrationError("; ".join(found))


def _measure_once(clock):
    from scipy.linalg import blas, lapack

    rng = numpy.random.default_rng(0)
    f32 = numpy.float32
    tiny = numpy.ones((2, 2), dtype=f32)
    launch = _seconds(lambda: tiny @ tiny, clock)

    def products(shapes):  # a @ b of each shape (p, q, r), the operands made once
        operands = [
            (rng.standard_normal((p, q)).astype(f32), rng.standard_normal((q, r)).astype(f32)) for p, q, r in shapes
        ]
        return [(lambda a, b: lambda: a @ b)(a, b) for a, b in operands]

    def gemm_seconds(shapes):
        return numpy.array(shapes, dtype=float), numpy.array(_best_seconds(products(shapes), clock))

    shapes, times = gemm_seconds(_GEMM_SHAPES)
    # least squares on log-times over a log grid of (peak, half): 1e9..1e13 flop/s, 0.1..1000
    eff = numpy.prod(shapes[:, None, :] / (shapes[:, None, :] + _HALVES[None, :, None]), axis=-1)  # (shape, half)
    flops = 2 * shapes.prod(axis=1)
    predicted = launch + flops[:, None, None] / (_PEAKS[None, :, None] * eff[:, None, :])  # (shape, peak, half)
    error = ((numpy.log(predicted) - numpy.log(times)[:, None, None]) ** 2).sum(axis=0)
    i, j = numpy.unravel_index(numpy.argmin(error), error.shape)
    peak, half = float(_PEAKS[i]), float(_HALVES[j])
    shapes, times = gemm_seconds(_GEMV_SHAPES)
    gemv_rate = float(numpy.median(2 * shapes.prod(axis=1) / numpy.maximum(times - launch, 1e-9)))
    shapes = tuple((k, d, _BLOCK_COLUMNS) for k in _BLOCK_SIZES for d in _BLOCK_DEPTHS)
    grams = []
    for k, d, _ in shapes:
        rows, out = rng.standard_normal((k, d)).astype(f32), numpy.empty((k, k), dtype=f32)
        # the call of cuhouse.algorithms.cwy._build_numpy: rows^T as a Fortran matrix, transposed once
        grams.append((lambda rows, out: lambda: blas.sgemm(1.0, rows.T, rows.T, 0.0, out.T, 1, 0, 1))(rows, out))
    # both tables in one interleaved measurement (_best_seconds): a burst of load reads no entry low
    times = _best_seconds(products(shapes) + grams, clock)
    block_rates = tuple(
        (float(k), float(d * r), float(2 * k * d * r / max(t - launch, 1e-9))) for (k, d, r), t in zip(shapes, times)
    )
    gram_rates = tuple(
        (float(k), float(d), float(2 * k * k * d / t)) for (k, d, _), t in zip(shapes, times[len(shapes) :])
    )  # the whole call
    big = rng.standard_normal(1 << 20).astype(f32)
    other = big.copy()
    bandwidth = 3 * big.nbytes / _seconds(lambda: numpy.subtract(big, other, out=big), clock)
    lapack_call = _seconds(lambda: lapack.strtri(tiny), clock)
    k = 64
    s = numpy.triu(rng.standard_normal((k, k)).astype(f32)) + k * numpy.eye(k, dtype=f32)
    trtri_rate = (k**3 / 3) / max(_seconds(lambda: lapack.strtri(s), clock) - lapack_call, 1e-9)
    ormqr_points = []
    for d, m in ((8, 1), (1024, 32)):
        qr, tau, _, _ = lapack.sgeqrf(rng.standard_normal((d, d)).astype(f32))
        x = numpy.asfortranarray(rng.standard_normal((d, m)).astype(f32))
        lwork = int(lapack.sormqr("L", "N", qr, tau, x, -1)[1][0])
        ormqr_points.append(
            (4.0 * d * (d - d / 2) * m, _seconds(lambda: lapack.sormqr("L", "N", qr, tau, x, lwork), clock))
        )
    # the fixed cost from the smallest size, the rate from a large one (where LAPACK blocks: smaller
    # sizes run below that rate, which the model then slightly favours LAPACK at, as measured)
    (_, ormqr_call), (flops, seconds) = ormqr_points
    ormqr_rate = float(flops / max(seconds - ormqr_call, 1e-9))
    return Machine(
        launch,
        peak,
        half,
        bandwidth,
        lapack_call,
        trtri_rate,
        ormqr_call,
        ormqr_rate,
        gemv_rate,
        block_rates,
        gram_rates,
    )
