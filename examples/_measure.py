"""Timing and peak-memory helpers shared by the torch examples.

Peak memory: PyTorch's CPU allocator is invisible to ``tracemalloc`` and has no
``torch.cuda.max_memory_allocated`` counterpart, so each variant runs in its own
subprocess and reports the growth of the process's peak resident set (Linux
``VmHWM``) over its resident set after warm-up steps: the peak is reset by
writing 5 to ``/proc/self/clear_refs``. So that memory freed by the warm-up
stays out of the baseline instead of being reused unseen, the child runs with
glibc's mmap threshold fixed at 64 KiB (a freed large buffer goes back to the
OS) and ``malloc_trim(0)`` returns the free heap before the reset.
"""

import ctypes
import ctypes.util
import gc
import json
import os
import statistics
import subprocess
import sys
import time

import torch

MMAP_THRESHOLD = "65536"


def single_threaded():
    """One thread for torch and for the BLAS under NumPy (cuhouse's CPU backend), for the rest of the process."""
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(1)


def _status_kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError("/proc/self/status has no {} line".format(field))


def peak_growth_mib(step, warmup=1, steps=2):
    """Peak RSS growth in MiB over ``steps`` calls of ``step()``, after ``warmup`` calls. Linux only."""
    for _ in range(warmup):
        step()
    gc.collect()
    ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    baseline = _status_kib("VmRSS")
    for _ in range(steps):
        step()
    return (_status_kib("VmHWM") - baseline) / 1024


def memory_supported():
    """True where the /proc peak-RSS reset works (Linux)."""
    return os.path.exists("/proc/self/clear_refs")


def run_child(script, args):
    """Run ``python script *args`` single-threaded with a fixed mmap threshold; its last stdout line, as JSON."""
    env = dict(
        os.environ,
        MALLOC_MMAP_THRESHOLD_=MMAP_THRESHOLD,
        OMP_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    done = subprocess.run(
        [sys.executable, script] + [str(a) for a in args], env=env, check=True, capture_output=True, text=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def report_to_parent(value):
    """What a child prints last, for ``run_child``."""
    print(json.dumps(value))


def interleaved_times(steps, rounds):
    """Seconds per call of each ``steps[name]()``, round-robin over ``rounds``: {name: [seconds, ...]}."""
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return times


def median_ms(seconds):
    return 1e3 * statistics.median(seconds)


def print_table(header, rows):
    """A plain text table: ``header`` names, ``rows`` lists of already formatted cells."""
    cells = [list(map(str, header))] + [list(map(str, row)) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for k, row in enumerate(cells):
        print(
            "  ".join(
                cell.ljust(width) if i == 0 else cell.rjust(width) for i, (cell, width) in enumerate(zip(row, widths))
            )
        )
        if k == 0:
            print("  ".join("-" * width for width in widths))
