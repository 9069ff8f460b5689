"""The machine constants of the cost model, measured once per machine and cached on disk.

The cost model (:mod:`cuhouse.plan`) predicts every plan from a few constants
of the machine it runs on: the fixed cost of one array call, the GEMM rate
(a peak and the shape efficiency ``e(s) = s / (s + half)``, fitted to skinny
and square GEMMs), the bandwidth of an element-wise pass, the fixed cost of
one LAPACK call, the cost of LAPACK's ``?ormqr``, and tables of the calls
compact WY makes on NumPy (:mod:`cuhouse.algorithms.cwy`: a block's Gram
``?gemm``, its three ``?gemm`` calls of a product, its ``?gemv``/``?trsv``/``?gemv``
of a one-column product, ``?trtri``) timed exactly as it makes them, in sweeps
over the blocks, by block size and depth: they decide the block size (a BLAS
may run small products with faster kernels, and every call streams X once,
which small blocks pay most often). They move with the machine (CPU, BLAS library
and version, BLAS threads): a plan tuned on one machine does not carry to
the next. So, in the manner of FFTW's wisdom, they are measured the first
time a plan is needed on a machine (once: about 1.7 seconds on a 2-core
Xeon, 2.4-2.9 on a 2-core AMD EPYC, whose LAPACK calls are slower; the
timings of each table in interleaved passes, the fastest of five kept, so
that a burst of load on a shared machine reads no entry low) and kept in a
small JSON file; every later process on that machine reads the file, so plans are
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
    "launch peak half bandwidth lapack_call trtri_rate ormqr_call ormqr_rate gemv_rate gram_rates step_rates "
    "column_rates trtri_rates orm2r_columns",
    defaults=(None, None, None, None, None, None),
)


class Machine(_MachineFields):
    # a plan cache key (cuhouse.plan._choose, cuhouse._reuse.kept) on every product: its hash (about
    # 260 floats with the tables, 3 us) is computed once per object
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
``trtri_rate`` the rate of ``?trtri`` (k^3 / 3 flops for a k x k triangle; measured:
the rate at k = 64 of ``trtri_rates``);
``?ormqr`` applying n reflectors of length d to m columns costs
``ormqr_call + 4 n (d - n/2) m / ormqr_rate`` (``ormqr_rate`` is ``None``
where there is no LAPACK plan).

The tables (``None`` in the built-in constants) time the calls compact WY makes
on NumPy in the full layout (:mod:`cuhouse.algorithms.cwy`) exactly as it
makes them (the same SciPy wrappers, positional arguments, Fortran views and
buffers), in sweeps over the blocks of up to 2^21 entries of reflections (a
block's rows come from memory or the last-level cache, as in a product), for
block sizes k = 8, 16, 32, 64 and depths d = 64..4096 (sorted by k, then
size); each rate is of whole calls, their fixed cost included (a block's time
is its flops over the rate), interpolated by ``cuhouse.plan._block_rate``:
``gram_rates`` ``((k, d, flop/s), ...)`` the Gram matrix ``(k x d) @ (d x k)`` of a
block by one ``?gemm`` (``2 k^2 d`` flops; 18-130 GFLOP/s here, slow at small
k and d); ``step_rates`` ``((k, 32 d, flop/s), ...)`` a block of the apply to a
row-major X of 32 columns, ``Z = V X``, ``U = T Z`` and ``X -= V^T U`` with
beta = 1 (``4 k d m + 2 k^2 m`` flops), by k and the size ``d m`` of X: a BLAS
may run small products with other kernels (OpenBLAS: below about 1e6
multiply-adds, 1.3-1.6x faster than the packed kernels above) and every call
streams X once whatever k, so the rate depends on k as well as on the volume;
``column_rates`` ``((k, d, flop/s), ...)`` a block of the apply to one column,
``?gemv``, ``?trsv`` with S, ``?gemv`` (``4 k d + k^2`` flops; memory-bound: 2-30
GFLOP/s); ``trtri_rates`` ``((k, flop/s), ...)`` one ``?trtri`` of a k x k
triangle in a build's stack, k = 8..128 (0.4-10 GFLOP/s here: one rate
measured at k = 64 put k = 16's call at a third of its time);
``orm2r_columns`` ``((d, m, left, right), ...)`` whether LAPACK's unblocked ``?orm2r``
(``?ormqr`` given lwork = the columns of X) measured faster (1.0, else 0.0) than
its blocked path with the queried lwork (:mod:`cuhouse.algorithms.ormqr`) for a
Fortran-ordered X ``(d, m)`` (``left``), and which way a row-major one measured
fastest (``right``: 0.0 blocked, 1.0 unblocked from the right, 2.0 copied into
Fortran order and run as ``left`` says), at d = 64, 256, 1024 and m = 1, 4, 16,
32 (sorted by d, then m; read by :func:`cuhouse.plan.ormqr_mode`). ``None`` (the built-in constants, or a cache
written before it was measured): the ormqr plan's built-in
shape rule (:func:`cuhouse.algorithms.ormqr.unblocked`) decides."""

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

FORMAT = 9  # bump when the constants or their measurement change meaning (8: the tables of the calls as cwy makes
# them; 9: orm2r_columns' right entry may say 2.0, a row-major X copied into Fortran order)
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
    uses the built-in constants (the source says why). Cost: about 2 seconds of
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
        stored = {name: data["machine"][name] for name in Machine._fields if name not in _OPTIONAL}
        stored.update({name: data["machine"].get(name) for name in _OPTIONAL})
        for name in (*_TABLES, *_OPTIONAL):  # JSON lists: tuples of floats, so that a Machine stays hashable
            if stored[name] is not None:
                stored[name] = tuple(tuple(float(value) for value in entry) for entry in stored[name])
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
    the LAPACK and matrix-vector rates must not exceed twice the GEMM peak; the
    four tables are there together or not at all, each entry of its arity
    (``(k, size, flop/s)``, ``?trtri``'s ``(k, flop/s)``) at increasing points.
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
    present = [field for field in _TABLES if getattr(machine, field) is not None]
    if present and len(present) < len(_TABLES):
        missing = [field for field in _TABLES if field not in present]
        return found + [
            "the tables come together: {} present, {} missing".format(", ".join(present), ", ".join(missing))
        ]
    for field, name in _TABLES.items():
        table = getattr(machine, field) or ()
        arity = 2 if field == "trtri_rates" else 3
        if any(not isinstance(entry, (tuple, list)) or len(entry) != arity for entry in table):
            found.append(
                "the {} entries must be {} tuples, got {!r}".format(
                    name, "(k, flop/s)" if arity == 2 else "(k, size, flop/s)", table
                )
            )
            continue
        points = [entry[:-1] for entry in table]
        if any(not all(math.isfinite(q) and q > 0 for q in point) for point in points) or any(
            a >= b for a, b in zip(points, points[1:])
        ):
            shown = [point[0] if len(point) == 1 else point for point in points]
            found.append(
                "the {} points {} {} are not positive and increasing".format(
                    name, "k" if field == "trtri_rates" else "(k, size)", shown
                )
            )
        for entry in table:
            rate = entry[-1]
            if not (math.isfinite(rate) and 1e6 <= rate <= 2 * machine.peak):
                at = "k = {:g}".format(entry[0]) + ("" if len(entry) == 2 else ", size {:g}".format(entry[1]))
                found.append(
                    "the {} rate {:.3g} flop/s at {} is outside [1e6, twice the GEMM peak {:.3g}]".format(
                        name, rate, at, machine.peak
                    )
                )
    columns = machine.orm2r_columns
    if columns is not None:
        points = [entry[:2] for entry in columns]
        if not (
            columns
            and all(len(entry) == 4 and entry[0] > 0 and entry[1] > 0 for entry in columns)
            and all(entry[2] in (0.0, 1.0) and entry[3] in (0.0, 1.0, 2.0) for entry in columns)
            and all(a < b for a, b in zip(points, points[1:]))
        ):
            found.append(
                "orm2r_columns {!r} is not (d, m, left, right) entries with increasing (d, m), left 0 or 1 and "
                "right 0, 1 or 2".format(columns)
            )
    return found


# the tables of a Machine (field: name in problems' sentences); entries (k, size, flop/s), trtri_rates' (k, flop/s)
_TABLES = {
    "gram_rates": "Gram GEMM",
    "step_rates": "block step",
    "column_rates": "column step",
    "trtri_rates": "?trtri",
}
# fields a file may lack (one of FORMAT 8 was written before orm2r_columns was measured): read as None, their
# built-in rule decides
_OPTIONAL = ("orm2r_columns",)


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
# the block sizes and depths of the tables of compact WY's calls (Machine.gram_rates, step_rates, column_rates:
# 84 sweeps, about two thirds of the measurement's time) and the columns of X in step_rates' sweeps
_BLOCK_SIZES = (8, 16, 32, 64)
_BLOCK_DEPTHS = (64, 128, 256, 512, 1024, 2048, 4096)
STEP_COLUMNS = 32
# the time of each timing of the tables (a sweep of the larger blocks lasts longer): two idle measurements, with
# 1 ms and with 2 ms, differed from a third alike (median entry 2%, largest 15-19%); 1 ms takes 0.8 s less
_TABLE_BUDGET = 0.001
# the block sizes of Machine.trtri_rates (each timed on a stack of _TRTRI_STACK triangles, as a build inverts its
# blocks' S in one call of cuhouse._gpu.primitives.upper_triangular_inverse_in_place)
_TRTRI_SIZES = (8, 16, 32, 64, 128)
_TRTRI_STACK = 8
# cuhouse.algorithms.cwy.NUMPY_PRODUCT_FROM (a layer above: a test holds the two equal): from this many entries
# of a row-major X on, cwy's Z = V X runs through NumPy's matmul
_NUMPY_PRODUCT_FROM = 4096 * 32
# the timed sweeps run over min(d, _SWEEP_ENTRIES / d) reflections of length d (all of a square V up to d = 1024,
# 8 MB of float32 beyond, four times a core's L2 cache here): a block's rows come from memory or the last-level
# cache, as in a product, not from the core's own cache as when one block is timed alone (at d = 1024 one block
# timed alone ran the apply's steps 1.1-1.5x and its one-column steps 1.5-2.2x faster than they run in a product)
_SWEEP_ENTRIES = 1 << 21
_SWEEP_PERIOD = 64  # the reflections repeat with this period (their T and S computed once a period)
# Machine.orm2r_columns: the depths and column counts at which ?ormqr's unblocked call (lwork = m) is timed against
# its blocked one (the queried lwork), n = d reflections, float32, for a Fortran-ordered and a row-major X (the
# latter from 4 columns: one column is both orders and runs side="L"); each timing over _ORM2R_BUDGET seconds
_ORM2R_BUDGET = 0.0005
_ORM2R_DEPTHS = (64, 256, 1024)
_ORM2R_COLUMNS = (1, 4, 16, 32)


def _sweep_vectors(d, rng, dtype=numpy.float32):
    """The reflections ``(n, d)`` the sweeps of :func:`_direct_calls` run over at depth ``d``: a row-major
    stack of ``n = min(d, _SWEEP_ENTRIES // d)`` rows (a multiple of ``_SWEEP_PERIOD``), ``_SWEEP_PERIOD``
    random rows repeated (distinct memory, so the BLAS reads them as distinct blocks)."""
    n = max(_SWEEP_PERIOD, min(d, _SWEEP_ENTRIES // d) // _SWEEP_PERIOD * _SWEEP_PERIOD)
    return numpy.tile(rng.standard_normal((_SWEEP_PERIOD, d)).astype(dtype), (n // _SWEEP_PERIOD, 1))


def _direct_calls(k, y, m, rng):
    """Zero-argument functions that each run one sweep over the blocks of ``k`` reflections of ``y``
    (:func:`_sweep_vectors`) making the calls of compact WY on NumPy in the full layout exactly as
    :mod:`cuhouse.algorithms.cwy` makes them, block after block (the same SciPy wrappers, positional
    arguments, Fortran views and buffers; a test records both and compares): ``"gram"`` the Gram
    ``?gemm`` of ``_build_numpy``; ``"step"`` the steps of ``_apply_numpy`` on a row-major X ``(d, m)``:
    ``Z = V X`` (NumPy's matmul from ``_NUMPY_PRODUCT_FROM`` entries of X on), ``U = T Z`` and
    ``X -= V^T U`` (beta = 1); ``"column"`` those of ``_apply_numpy_column`` on X ``(d, 1)``: ``?gemv``,
    ``?trsv``, ``?gemv``; and ``"trtri"``, ``?trtri`` on a stack of ``_TRTRI_STACK`` k x k triangles
    (:func:`cuhouse._gpu.primitives.upper_triangular_inverse_in_place`). A sweep makes ``len(y) // k``
    blocks' calls (``"trtri"``: ``_TRTRI_STACK``). They run in place on real reflections (the products
    stay orthogonal: the operands keep their size however often they run). The BLAS calls are cwy's
    exactly; the loop's Python around them follows cwy's within about 0.1 us a block (what differs
    falls to ``cuhouse.plan.MEASURED_OVERHEAD``)."""
    from scipy.linalg import blas

    from ._gpu import primitives

    dtype = y.dtype
    prefix = "s" if dtype == numpy.float32 else "d"
    gemm, gemv, trsv = (getattr(blas, prefix + name) for name in ("gemm", "gemv", "trsv"))
    n, d = y.shape
    nb = n // k
    period = max(1, min(_SWEEP_PERIOD, n) // k)  # distinct blocks
    distinct = y[: period * k].reshape(period, k, d).astype(float)
    g = distinct @ distinct.transpose(0, 2, 1)  # float64 Gram matrices: S = striu(G) + diag(G) / 2, T = S^-1
    s_distinct = numpy.triu(g, 1) + g.diagonal(axis1=1, axis2=2)[..., None] * numpy.eye(k) / 2
    s_all = numpy.ascontiguousarray(numpy.resize(s_distinct.astype(dtype), (nb, k, k)))
    t = numpy.ascontiguousarray(numpy.resize(numpy.linalg.inv(s_distinct).astype(dtype), (nb, k, k)))
    columns = list(y[: nb * k].reshape(nb, k, d).transpose(0, 2, 1))  # V_j^T (d, k), as _build_numpy's
    s_out = numpy.empty((nb, k, k), dtype=dtype)
    x = rng.standard_normal((d, m)).astype(dtype)  # row-major, as the copy of a NumPy X
    xt = x.T
    zt, ut = numpy.empty((m, k), dtype=dtype, order="F"), numpy.empty((m, k), dtype=dtype, order="F")
    streamed = x.size >= _NUMPY_PRODUCT_FROM
    column = rng.standard_normal((d, 1)).astype(dtype)[:, 0]
    buffer = numpy.empty(k, dtype=dtype)
    triangles = numpy.ascontiguousarray(numpy.resize(s_all[0], (_TRTRI_STACK, k, k)))

    def gram():
        for rows, sj in zip(columns, s_out.transpose(0, 2, 1)):
            gemm(1.0, rows, rows, 0.0, sj, 1, 0, 1)

    t_steps = list(zip(columns, t.transpose(0, 2, 1)))  # (V_j^T, T_j^T), as cwy._steps(f, "t")
    s_steps = list(zip(columns, s_all.transpose(0, 2, 1)))  # (V_j^T, S_j^T), as cwy._steps(f, "s")

    def step():
        for vt, tjt in reversed(t_steps):  # application_order of H
            kb = vt.shape[1]
            zj, uj = (zt, ut) if kb == k else (zt[:, :kb], ut[:, :kb])
            if streamed:
                numpy.matmul(vt.T, x, out=zj.T)
            else:
                zj = gemm(1.0, xt, vt, 0.0, zj, 0, 0, 1)
            uj = gemm(1.0, zj, tjt, 0.0, uj, 0, 0, 1)
            result = gemm(-1.0, uj, vt, 1.0, xt, 0, 1, 1)
            if result is not xt:
                xt[...] = result

    def column_step():
        for vt, st in reversed(s_steps):
            kb = vt.shape[1]
            z = buffer if kb == k else buffer[:kb]
            z = gemv(1.0, vt, column, 0.0, z, 0, 1, 0, 1, 1, 1)
            z = trsv(st, z, 1, 0, 1, 1, 0, 1)
            result = gemv(-1.0, vt, z, 1.0, column, 0, 1, 0, 1, 0, 1)
            if result is not column:
                column[...] = result

    return {
        "gram": gram,
        "step": step,
        "column": column_step,
        "trtri": lambda: primitives.upper_triangular_inverse_in_place(triangles),
    }


_PEAKS = numpy.logspace(9, 13, 161)
_HALVES = numpy.logspace(-1, 3, 161)
ATTEMPTS = 3  # measurements tried before a loaded machine's constants are rejected


def measure(backend="numpy"):
    """Measure the :class:`Machine` constants of ``backend`` on this machine, float32: about 2 seconds
    a try (1.7-2.9 measured on 2-core machines). A try whose constants fail :func:`problems` is
    repeated, up to :data:`ATTEMPTS` tries; then :class:`CalibrationError`."""
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
    from scipy.linalg import lapack

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
    shapes = tuple((k, d) for k in _BLOCK_SIZES for d in _BLOCK_DEPTHS)
    vectors = {d: _sweep_vectors(d, rng) for d in _BLOCK_DEPTHS}
    calls = [_direct_calls(k, vectors[d], STEP_COLUMNS, rng) for k, d in shapes]
    trtris = [_direct_calls(k, _sweep_vectors(k, rng), 1, rng)["trtri"] for k in _TRTRI_SIZES]
    # the tables in one interleaved measurement (_best_seconds): a burst of load reads no entry low
    count = len(shapes)
    times = _best_seconds(
        [c["gram"] for c in calls] + [c["step"] for c in calls] + [c["column"] for c in calls] + trtris,
        clock,
        _TABLE_BUDGET,
    )
    # rates of whole calls (their fixed cost included: a call's time is its flops over the rate), each sweep's
    # time over its blocks' flops
    blocks = [len(vectors[d]) // k for k, d in shapes]
    m = STEP_COLUMNS
    gram_rates = tuple((float(k), float(d), 2.0 * k * k * d * b / t) for (k, d), b, t in zip(shapes, blocks, times))
    step_rates = tuple(
        (float(k), float(d * m), (4.0 * k * d * m + 2.0 * k * k * m) * b / t)
        for (k, d), b, t in zip(shapes, blocks, times[count:])
    )
    column_rates = tuple(
        (float(k), float(d), (4.0 * k * d + k * k) * b / t) for (k, d), b, t in zip(shapes, blocks, times[2 * count :])
    )
    trtri_rates = tuple((float(k), k**3 / 3 * _TRTRI_STACK / t) for k, t in zip(_TRTRI_SIZES, times[3 * count :]))
    trtri_rate = dict(trtri_rates)[64.0]
    big = rng.standard_normal(1 << 20).astype(f32)
    other = big.copy()
    bandwidth = 3 * big.nbytes / _seconds(lambda: numpy.subtract(big, other, out=big), clock)
    lapack_call = _seconds(lambda: lapack.strtri(tiny), clock)
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
    orm2r_columns = _orm2r_columns(rng, clock)
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
        gram_rates,
        step_rates,
        column_rates,
        trtri_rates,
        orm2r_columns,
    )


def _orm2r_columns(rng, clock):
    """``Machine.orm2r_columns``: ``(d, m, left, right)`` for each of ``_ORM2R_DEPTHS`` and ``_ORM2R_COLUMNS``:
    ``left`` whether the ormqr plan's unblocked call (``?ormqr`` with lwork = m: LAPACK's ``?orm2r``) measured
    faster (1.0, else 0.0) than its blocked one (the queried lwork) for a Fortran-ordered X ``(d, m)``
    (``side="L"``), and ``right`` which way a row-major one measured fastest: 0.0 blocked or 1.0 unblocked
    from the right (``side="R"`` on the Fortran-ordered ``X^T``), 2.0 a Fortran-ordered copy run unblocked
    from the left, the result copied back (one column is both orders and runs from the left: ``right``
    there is 2.0 where ``left`` is 1.0, else 0.0); each call made as :func:`cuhouse.algorithms.ormqr.apply`
    makes it on a ``geqrf`` array of d reflections, in one interleaved measurement (:func:`_best_seconds`,
    budget ``_ORM2R_BUDGET``): about 0.5 s on a 2-core AMD EPYC."""
    from scipy.linalg import lapack

    def sormqr(*args, **kwargs):  # a call LAPACK refused would time as the fastest
        out, _, info = lapack.sormqr(*args, **kwargs)
        if info:
            raise RuntimeError("sormqr refused the calibration's call: info = {}".format(info))
        return out

    calls = {}  # (d, m, way, unblocked): a zero-argument call
    entries = numpy.asfortranarray(rng.standard_normal((max(_ORM2R_DEPTHS),) * 2).astype(numpy.float32))
    for d in _ORM2R_DEPTHS:
        # reflectors in LAPACK's layout (no ?geqrf: 0.1 s at d = 1024): the strictly lower entries of a, tau
        # 2 / (1 + ||v||^2) as cuhouse.algorithms.ormqr.build makes it
        qr = numpy.asfortranarray(entries[:d, :d] / numpy.float32(math.sqrt(d)))
        tau = (2 / (1 + (numpy.tril(qr, -1) ** 2).sum(axis=0))).astype(numpy.float32)
        for m in _ORM2R_COLUMNS:
            x = rng.standard_normal((d, m)).astype(numpy.float32)  # row-major
            for side, trans, c in (("L", "N", numpy.asfortranarray(x)), ("R", "T", x.T))[: 2 if m > 1 else 1]:
                queried = int(lapack.sormqr(side, trans, qr, tau, c, -1)[1][0])
                for lwork in (m, max(1, queried)):
                    calls[d, m, side, lwork == m] = (lambda *a: lambda: sormqr(*a))(side, trans, qr, tau, c, lwork)
            if m > 1:  # as ormqr.apply copies a row-major X
                calls[d, m, "copied", True] = (
                    lambda qr, tau, x, m: (
                        lambda: numpy.ascontiguousarray(
                            sormqr("L", "N", qr, tau, numpy.asfortranarray(x), m, overwrite_c=1)
                        )
                    )
                )(qr, tau, x, m)
    timed = dict(zip(calls, _best_seconds(list(calls.values()), clock, _ORM2R_BUDGET)))
    found = []
    for d in _ORM2R_DEPTHS:
        for m in _ORM2R_COLUMNS:
            left = timed[d, m, "L", True] < timed[d, m, "L", False]
            if m == 1:
                right = 2.0 if left else 0.0
            else:
                ways = (
                    (timed[d, m, "R", False], 0.0),
                    (timed[d, m, "R", True], 1.0),
                    (timed[d, m, "copied", True], 2.0),
                )
                right = min(ways)[1]
            found.append((float(d), float(m), float(left), right))
    return tuple(found)
