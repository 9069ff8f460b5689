"""Round-robin timing: CUDA events on CuPy, a host clock on NumPy."""
import time

import numpy

from .._backend import synchronize


def measure(cases, baseline, rounds, xp):
    """Median seconds of each case and its median per-round ratio to ``baseline``.

    ``cases`` maps names to zero-argument callables; ``baseline`` is one case
    name, or a dict giving each case the name of its own baseline (a section
    that compares several operations). Every round runs each case
    once, in order, after one untimed warm-up round. Device work is synchronized
    before every call; on CuPy the time is the span between two CUDA events
    recorded around the call on the current stream (host launch gaps included),
    waited for before the next case.
    """
    for fn in cases.values():
        fn()
    clock = _event_clock(xp) if xp is not numpy else _host_clock
    samples = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            synchronize(xp)
            samples[name].append(clock(fn))
    baseline_of = baseline if isinstance(baseline, dict) else dict.fromkeys(cases, baseline)
    times = {name: numpy.array(s) for name, s in samples.items()}
    return {name: (float(numpy.median(t)), float(numpy.median(t / times[baseline_of[name]])))
            for name, t in times.items()}


def _host_clock(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _event_clock(cupy):
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()

    def clock(fn):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        return cupy.cuda.get_elapsed_time(start, stop) * 1e-3     # milliseconds to seconds

    return clock
