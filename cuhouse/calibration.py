"""The machine constants of the cost model, measured once per machine and cached on disk.

The cost model (:mod:`cuhouse.plan`) predicts every plan from a few constants
of the machine it runs on: the fixed cost of one array call, the GEMM rate
(a peak and the shape efficiency ``e(s) = s / (s + half)``, fitted to skinny
and square GEMMs), the bandwidth of an element-wise pass, the fixed cost of
one LAPACK call, the rate of LAPACK's triangular inverse ``?trtri`` and the
cost of LAPACK's ``?ormqr``. They move with the machine (CPU, BLAS library
and version, BLAS threads): a plan tuned on one machine does not carry to
the next. So, in the manner of FFTW's wisdom, they are measured the first
time a plan is needed on a machine (about a second, once) and kept in a small
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
import os
import platform
import sys
import time
from collections import namedtuple

import numpy

Machine = namedtuple("Machine", "launch peak half bandwidth lapack_call trtri_rate ormqr_call ormqr_rate")
Machine.__doc__ = """Constants of the cost model (seconds, flop/s at float32, bytes/s):
``launch`` the fixed cost of one array call; a GEMM ``(p x q) @ (q x r)`` costs
``launch + 2 p q r / (peak e(p) e(q) e(r))`` with ``e(s) = s / (s + half)``;
an element-wise pass over ``b`` bytes costs ``launch + b / bandwidth``;
``lapack_call`` is the fixed cost of one LAPACK call through SciPy and
``trtri_rate`` the rate of ``?trtri`` (k^3 / 3 flops for a k x k triangle);
``?ormqr`` applying n reflectors of length d to m columns costs
``ormqr_call + 4 n (d - n/2) m / ormqr_rate`` (``ormqr_rate`` is ``None``
where there is no LAPACK plan)."""

DEFAULTS = {
    # fitted on the project's 2-core machine (single-threaded OpenBLAS, float32); see cuhouse.plan
    "numpy": Machine(
        launch=1.0e-6,
        peak=1.07e11,
        half=1.3,
        bandwidth=2.5e10,
        lapack_call=1.0e-6,
        trtri_rate=1.0e10,
        ormqr_call=4.0e-6,
        ormqr_rate=5.0e10,
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
    ),
}

# the generic path on a CPU (torch, array_api_strict): NumPy's rates, but each array operation
# costs about 10 us through the library and array_api_compat (torch CPU, d = 32..1024: blocks of
# 32-64 measured fastest, against 8-16 under NumPy's 1 us); no LAPACK or ormqr plan
DEFAULTS["generic"] = DEFAULTS["numpy"]._replace(
    launch=1.0e-5, lapack_call=None, trtri_rate=None, ormqr_call=None, ormqr_rate=None
)

FORMAT = 2  # bump when the constants or their measurement change meaning
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

    ``force`` measures even when the file exists. Cost: about a second of
    measurement when it runs; a file read otherwise.
    """
    path = cache_path(backend)
    if not force:
        stored = read(path)
        if stored is not None:
            return Calibration(stored, path)
    measured = measure(backend)
    try:
        write(path, measured, machine_description(backend))
    except OSError as exc:
        return Calibration(measured, "measured (not saved: {})".format(exc))
    return Calibration(measured, path)


def read(path):
    """The :class:`Machine` stored in ``path``, or ``None`` when missing, unreadable or of another format."""
    try:
        with open(path) as f:
            data = json.load(f)
        if data.get("format") != FORMAT:
            return None
        return Machine(**{name: data["machine"][name] for name in Machine._fields})
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


def _seconds(fn, budget=0.002, repeats=3):
    """The fastest of ``repeats`` timings of ``fn``, each over enough calls to last ``budget`` seconds."""
    fn()
    number, elapsed = 1, 0.0
    while True:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= budget or number >= 1 << 20:
            break
        number *= 4 if elapsed < budget / 8 else 2
    best = elapsed / number
    for _ in range(repeats - 1):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - start) / number)
    return best


# GEMM shapes (p, q, r) the algorithms issue: skinny (k, d, m), (d, k, m), (k, d, k) and square ones
_GEMM_SHAPES = (
    (16, 16, 16),
    (32, 32, 32),
    (64, 64, 64),
    (128, 128, 128),
    (256, 256, 256),
    (512, 512, 512),
    (32, 512, 32),
    (512, 32, 32),
    (64, 1024, 64),
    (1024, 64, 32),
    (64, 1024, 1),
    (1024, 64, 1),
    (128, 2048, 32),
    (2048, 128, 32),
)


def measure(backend="numpy"):
    """Measure the :class:`Machine` constants of ``backend`` on this machine, float32. About a second."""
    if backend != "numpy":
        raise ValueError("only the numpy backend is calibrated, got backend {!r}".format(backend))
    from scipy.linalg import lapack

    rng = numpy.random.default_rng(0)
    f32 = numpy.float32
    tiny = numpy.ones((2, 2), dtype=f32)
    launch = _seconds(lambda: tiny @ tiny)
    shapes, times = [], []
    for p, q, r in _GEMM_SHAPES:
        a = rng.standard_normal((p, q)).astype(f32)
        b = rng.standard_normal((q, r)).astype(f32)
        shapes.append((p, q, r))
        times.append(_seconds(lambda: a @ b))
    shapes, times = numpy.array(shapes, dtype=float), numpy.array(times)

    # least squares on log-times over a log grid of (peak, half): 1e9..1e13 flop/s, 0.1..1000
    peaks = numpy.logspace(9, 13, 161)
    halves = numpy.logspace(-1, 3, 161)
    eff = numpy.prod(shapes[:, None, :] / (shapes[:, None, :] + halves[None, :, None]), axis=-1)  # (shape, half)
    flops = 2 * shapes.prod(axis=1)
    predicted = launch + flops[:, None, None] / (peaks[None, :, None] * eff[:, None, :])  # (shape, peak, half)
    error = ((numpy.log(predicted) - numpy.log(times)[:, None, None]) ** 2).sum(axis=0)
    i, j = numpy.unravel_index(numpy.argmin(error), error.shape)
    peak, half = float(peaks[i]), float(halves[j])
    big = rng.standard_normal(1 << 20).astype(f32)
    other = big.copy()
    bandwidth = 3 * big.nbytes / _seconds(lambda: numpy.subtract(big, other, out=big))
    lapack_call = _seconds(lambda: lapack.strtri(tiny))
    k = 64
    s = numpy.triu(rng.standard_normal((k, k)).astype(f32)) + k * numpy.eye(k, dtype=f32)
    trtri_rate = (k**3 / 3) / max(_seconds(lambda: lapack.strtri(s)) - lapack_call, 1e-9)
    ormqr_points = []
    for d, m in ((8, 1), (1024, 32)):
        qr, tau, _, _ = lapack.sgeqrf(rng.standard_normal((d, d)).astype(f32))
        x = numpy.asfortranarray(rng.standard_normal((d, m)).astype(f32))
        lwork = int(lapack.sormqr("L", "N", qr, tau, x, -1)[1][0])
        ormqr_points.append((4.0 * d * (d - d / 2) * m, _seconds(lambda: lapack.sormqr("L", "N", qr, tau, x, lwork))))
    # the fixed cost from the smallest size, the rate from a large one (where LAPACK blocks: smaller
    # sizes run below that rate, which the model then slightly favours LAPACK at, as measured)
    (_, ormqr_call), (flops, seconds) = ormqr_points
    ormqr_rate = float(flops / max(seconds - ormqr_call, 1e-9))
    return Machine(launch, peak, half, bandwidth, lapack_call, trtri_rate, ormqr_call, ormqr_rate)
