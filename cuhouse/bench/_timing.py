"""Round-robin timing: CUDA events on CuPy, a host clock on NumPy."""

import time
from collections import namedtuple

import numpy

from .._backend import synchronize

DISAGREEMENT = 0.25
"""A row is marked when its per-round ratios disagree by more than this (see :func:`measure`)."""

MIN_SAMPLE = 1e-3
"""Seconds a timed sample lasts at least: faster cases repeat within a sample (see :func:`measure`)."""

Result = namedtuple("Result", "seconds ratio spread")
Result.__doc__ = """Median seconds, median per-round ratio to the case's baseline, and the
spread of the per-round ratios: (largest - smallest) / median, the single most
extreme round on each side left out when there are 5 rounds or more."""


def measure(cases, baseline, rounds, xp, cpu_clock=False, min_seconds=MIN_SAMPLE):
    """A :class:`Result` per case.

    ``cases`` maps names to zero-argument callables; ``baseline`` is one case
    name, or a dict giving each case the name of its own baseline (a section
    that compares several operations). Every round runs each case once
    (interleaved: drift on a shared machine hits all cases alike; each round
    starts one case later than the last), after one untimed warm-up round.
    A case faster than ``min_seconds`` runs as many times in a row as
    reach it, and its sample is the mean of those calls (as ``timeit`` does):
    a single call of a few microseconds is below what the clock resolves.
    Device work is synchronized before every sample; on CuPy the time is the
    span between two CUDA events recorded around the calls on the current
    stream (host launch gaps included), waited for before the next case.
    ``cpu_clock`` (NumPy with single-threaded BLAS) times the calling thread's
    CPU time instead of the wall clock: on a shared machine it leaves out the
    time the thread waits for a core (and the spinning of other threads, such
    as an OpenMP pool that a previous case left busy-waiting).
    """
    clock = _event_clock(xp) if xp is not numpy else (_cpu_clock if cpu_clock else _host_clock)
    repeats = {}
    for name, fn in cases.items():
        fn()
        number = 1
        while True:
            synchronize(xp)
            if clock(_repeated(fn, number)) >= min_seconds or number >= 1 << 16:
                break
            number *= 4
        repeats[name] = number
    samples = {name: [] for name in cases}
    names = list(cases)
    for round_index in range(rounds):
        # each round starts one case later, so that no case always follows the same one (a case that
        # leaves the caches cold would otherwise slow down its successor in every round)
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            synchronize(xp)
            samples[name].append(clock(_repeated(cases[name], repeats[name])) / repeats[name])
    baseline_of = baseline if isinstance(baseline, dict) else dict.fromkeys(cases, baseline)
    times = {name: numpy.array(s) for name, s in samples.items()}
    results = {}
    for name, t in times.items():
        ratios = numpy.sort(t / times[baseline_of[name]])
        trimmed = ratios[1:-1] if len(ratios) >= 5 else ratios
        median = float(numpy.median(ratios))
        spread = float((trimmed[-1] - trimmed[0]) / median) if median > 0 else 0.0
        results[name] = Result(float(numpy.median(t)), median, spread)
    return results


def _repeated(fn, number):
    if number == 1:
        return fn

    def run():
        for _ in range(number):
            fn()

    return run


def _host_clock(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _cpu_clock(fn):
    start = time.thread_time()
    fn()
    return time.thread_time() - start


def _event_clock(cupy):
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()

    def clock(fn):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        return cupy.cuda.get_elapsed_time(start, stop) * 1e-3  # milliseconds to seconds

    return clock
