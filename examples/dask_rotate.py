"""Rotate an on-disk array larger than memory by a Householder product, on a dask.distributed cluster.

    python examples/dask_rotate.py                      # N = 3*10^7 rows of d = 256 float32 (~30 GB)
    python examples/dask_rotate.py --rows 1000000 --workers 1,2 --contracted

Writes X (N, d) float32 chunk by chunk to ``X.npy`` in a temporary directory
(after checking the free disk space; if the array does not fit, the largest
N that does is used and said so), then computes ``Y = X @ H`` with H a
HouseholderProduct of d reflections, and the same with the dense
``H.todense()`` through Dask, on a LocalCluster of 1 and then 2 worker
processes (one thread each, single-threaded BLAS). Y is written to ``Y.npy``
(``--no-store``: reduced to its column sums of squares instead). Both files
are deleted at the end.

Printed per run: rows per second, the peak resident memory (RSS) of the
worker processes (sampled with psutil every 0.1 s; chunks are read with
plain file reads, not a memory map, so RSS counts the worker's own memory
only), and a check of sampled rows against the in-memory product. Then
the speed-up from 1 to 2 workers and the cuhouse/dense ratio. ``--contracted``
adds an in-memory comparison of the two ways to handle chunks along the
contracted axis: rechunk then one operator product per chunk (what cuhouse
does) against a block-wise reduction over dense column blocks of H.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before NumPy loads BLAS; workers inherit it

import numpy  # noqa: E402

import cuhouse as ch  # noqa: E402

DTYPE = numpy.dtype(numpy.float32)
SAMPLE_ROWS = 2048


class NpyRows:
    """Row blocks of a C-ordered 2-D ``.npy`` file, read with ``numpy.fromfile`` (no memory map).

    Dask's ``from_array`` slices it; only the row range is read. Pickles as its path.
    """

    def __init__(self, path, shape, offset):
        self.path, self.shape, self.offset = path, shape, offset
        self.dtype, self.ndim = DTYPE, 2

    def __getitem__(self, index):
        rows, cols = index
        start, stop, _ = rows.indices(self.shape[0])
        block = numpy.fromfile(
            self.path,
            dtype=DTYPE,
            count=(stop - start) * self.shape[1],
            offset=self.offset + start * self.shape[1] * DTYPE.itemsize,
        )
        return block.reshape(stop - start, self.shape[1])[:, cols]


class NpyRowWriter:
    """``da.store`` target: writes row blocks into a ``.npy`` file with ``os.pwrite`` (no memory map)."""

    def __init__(self, path, shape, offset):
        self.path, self.shape, self.offset = path, shape, offset

    def __setitem__(self, index, block):
        rows, _ = index
        start = rows.indices(self.shape[0])[0]
        fd = os.open(self.path, os.O_WRONLY)
        try:
            os.pwrite(
                fd,
                numpy.ascontiguousarray(block, dtype=DTYPE).tobytes(),
                self.offset + start * self.shape[1] * DTYPE.itemsize,
            )
        finally:
            os.close(fd)


def create_npy(path, shape):
    """An empty C-ordered float32 ``.npy`` of ``shape`` (sparse until written); returns the data offset."""
    with open(path, "wb") as f:
        numpy.lib.format.write_array_header_2_0(
            f, {"descr": numpy.lib.format.dtype_to_descr(DTYPE), "fortran_order": False, "shape": shape}
        )
        offset = f.tell()
        f.truncate(offset + shape[0] * shape[1] * DTYPE.itemsize)
    return offset


def write_random(path, rows, dim, chunk_rows, seed):
    """``X.npy``: standard normal float32, written one chunk at a time. Returns its offset and the seconds taken."""
    started = time.perf_counter()
    offset = create_npy(path, (rows, dim))
    rng = numpy.random.default_rng(seed)
    with open(path, "r+b") as f:
        f.seek(offset)
        for start in range(0, rows, chunk_rows):
            f.write(rng.standard_normal((min(chunk_rows, rows - start), dim), dtype=DTYPE).tobytes())
    return offset, time.perf_counter() - started


class PeakRSS:
    """The largest resident set size of some processes, sampled every ``interval`` seconds in a thread."""

    def __init__(self, pids, interval=0.1):
        import psutil

        self.processes = [psutil.Process(pid) for pid in pids]
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max([self.peak] + [p.memory_info().rss for p in self.processes])
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_job(x, matrix, store, pids):
    """``x @ matrix`` over the cluster: stored to ``store`` or reduced. Returns (seconds, peak RSS bytes, result)."""
    import dask.array as da

    y = x @ matrix
    with PeakRSS(pids) as rss:
        started = time.perf_counter()
        if store is None:
            result = (y.astype(numpy.float64) ** 2).sum(axis=0).compute()
        else:
            da.store(y, store, lock=False)
            result = None
        seconds = time.perf_counter() - started
    return seconds, rss.peak, result


def check_rows(path, offset, shape, h, y_path, y_offset):
    """The largest deviation of sampled stored rows of Y from the float64 in-memory ``X @ H`` (relative)."""
    rows = NpyRows(path, shape, offset)
    y_rows = NpyRows(y_path, shape, y_offset)
    dense = h.todense().astype(numpy.float64)
    worst = 0.0
    for start in (0, shape[0] // 2, max(shape[0] - SAMPLE_ROWS, 0)):
        block = slice(start, min(start + SAMPLE_ROWS, shape[0]))
        expected = rows[block, slice(None)].astype(numpy.float64) @ dense
        worst = max(worst, float(numpy.abs(y_rows[block, slice(None)] - expected).max() / numpy.abs(expected).max()))
    return worst


def compare_contracted(dim, rounds):
    """Chunks along the contracted axis: rechunk + operator against a block-wise reduction over dense blocks.

    For H of d and of d/16 reflections, X (d, 2^16) float64 in 4 chunks along d.
    """
    import dask.array as da

    rng = numpy.random.default_rng(1)
    x = rng.standard_normal((dim, 1 << 16))
    xd = da.from_array(x, chunks=(dim // 4, 1 << 13))
    whole = xd.rechunk((-1, 1 << 13))
    print(
        "\nchunks along the contracted axis: X ({}, {}) float64 in 4 x 8 chunks, threaded scheduler, median of "
        "{} interleaved rounds".format(dim, 1 << 16, rounds)
    )
    for n in (dim, max(dim // 16, 1)):
        h = ch.HouseholderProduct(rng.standard_normal((n, dim)))
        columns = da.from_array(h.todense(), chunks=(-1, dim // 4))  # H's dense column blocks
        jobs = {
            "rechunk + cuhouse": lambda: h @ xd,
            "block-wise reduction, dense blocks": lambda: columns @ xd,
            "cuhouse, X already one chunk along d": lambda: h @ whole,
        }
        times = {name: [] for name in jobs}
        for _ in range(rounds):
            for name, job in jobs.items():  # interleaved: A, B, C, A, B, C, ...
                started = time.perf_counter()
                result = job().compute(scheduler="threads")
                times[name].append(time.perf_counter() - started)
                assert numpy.abs(result - h @ x).max() < 1e-9
        base = statistics.median(times["rechunk + cuhouse"])
        for name, values in times.items():
            print(
                "  n = {:4d}  {:38s} {:7.3f} s   {:.2f}x the rechunk route".format(
                    n, name, statistics.median(values), statistics.median(values) / base
                )
            )


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=30_000_000, help="N, the rows of X (default 3*10^7)")
    parser.add_argument("--dim", type=int, default=256, help="d, the columns of X and the size of H")
    parser.add_argument("--chunk-rows", type=int, default=1 << 16, help="rows per Dask chunk (default 65536)")
    parser.add_argument("--workers", default="1,2", help="worker counts to run, comma-separated")
    parser.add_argument("--no-store", action="store_true", help="reduce Y to column sums instead of writing Y.npy")
    parser.add_argument("--in-process", action="store_true", help="workers as threads of this process (a smoke test)")
    parser.add_argument("--directory", default=None, help="where the temporary files go (default: the system's)")
    parser.add_argument("--contracted", action="store_true", help="also compare the contracted-axis strategies")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the --contracted comparison")
    return parser.parse_args(argv)


def fit_rows(args, directory):
    """N as asked, or the largest N whose files fit in 90% of the free disk space (said so)."""
    bytes_per_row = args.dim * DTYPE.itemsize * (1 if args.no_store else 2)
    free = shutil.disk_usage(directory).free
    fits = int(0.9 * free) // bytes_per_row
    print(
        "free disk in {}: {:.1f} GB; X{} needs {:.1f} GB".format(
            directory, free / 1e9, "" if args.no_store else " and Y", args.rows * bytes_per_row / 1e9
        )
    )
    if args.rows > fits:
        print("N = {} does not fit: using N = {}, the largest that does".format(args.rows, fits))
        return fits
    return args.rows


def main(argv=None):
    import dask
    import dask.array as da
    import distributed

    args = parse(argv)
    workdir = tempfile.mkdtemp(prefix="cuhouse-dask-", dir=args.directory)
    try:
        rows = fit_rows(args, workdir)
        shape = (rows, args.dim)
        x_path, y_path = os.path.join(workdir, "X.npy"), os.path.join(workdir, "Y.npy")
        x_offset, seconds = write_random(x_path, rows, args.dim, args.chunk_rows, seed=0)
        print("wrote X {} float32 ({:.1f} GB) in {:.0f} s".format(shape, rows * args.dim * 4 / 1e9, seconds))
        y_offset = None if args.no_store else create_npy(y_path, shape)
        store = None if args.no_store else NpyRowWriter(y_path, shape, y_offset)
        x = da.from_array(
            NpyRows(x_path, shape, x_offset),
            chunks=(args.chunk_rows, args.dim),
            meta=numpy.empty((0, 0), DTYPE),
            asarray=False,
            lock=False,
        )
        h = ch.HouseholderProduct(numpy.random.default_rng(1).standard_normal((args.dim, args.dim)).astype(DTYPE))
        matrices = {"cuhouse X @ H": h, "dense X @ H.todense()": h.todense()}
        results = {}
        for workers in [int(w) for w in args.workers.split(",")]:
            with (
                distributed.LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=not args.in_process,
                    dashboard_address=None,
                    worker_dashboard_address=None,
                ) as cluster,
                distributed.Client(cluster) as client,
            ):
                pids = [os.getpid()] if args.in_process else list(client.run(os.getpid).values())
                with dask.config.set(scheduler=client):
                    for name, matrix in matrices.items():  # interleaved: cuhouse, dense per cluster
                        seconds, peak, reduced = run_job(x, matrix, store, pids)
                        check = (
                            "max rel. deviation of sampled rows {:.1e}".format(
                                check_rows(x_path, x_offset, shape, h, y_path, y_offset)
                            )
                            if store
                            else "sum of squares {:.6e}".format(reduced.sum())
                        )
                        results[name, workers] = rows / seconds
                        print(
                            "{} worker{}  {:22s} {:10.0f} rows/s  {:6.1f} s  peak RSS per worker {:.2f} GiB  {}".format(
                                workers, "s" if workers > 1 else " ", name, rows / seconds, seconds, peak / 2**30, check
                            )
                        )
        counts = sorted({w for _, w in results})
        for name in matrices:
            if len(counts) > 1:
                print(
                    "speed-up {}: {} -> {} workers {:.2f}x".format(
                        name, counts[0], counts[-1], results[name, counts[-1]] / results[name, counts[0]]
                    )
                )
        for workers in counts:
            print(
                "{} worker(s): cuhouse / dense throughput {:.2f}".format(
                    workers, results["cuhouse X @ H", workers] / results["dense X @ H.todense()", workers]
                )
            )
        if args.contracted:
            compare_contracted(args.dim, args.rounds)
    finally:
        shutil.rmtree(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
