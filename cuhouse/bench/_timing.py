"""Round-robin timing with device synchronization."""
import time

import numpy

from .._backend import synchronize


def measure(cases, baseline, rounds, xp):
    """Median seconds of each case and its median per-round ratio to ``baseline``.

    ``cases`` maps names to zero-argument callables; ``baseline`` is one case
    name, or a dict giving each case the name of its own baseline (a section
    that compares several operations). Every round runs each case
    once, in order, after one untimed warm-up round. Device work is synchronized
    before the clock starts and before it stops.
    """
    for fn in cases.values():
        fn()
    samples = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            synchronize(xp)
            start = time.perf_counter()
            fn()
            synchronize(xp)
            samples[name].append(time.perf_counter() - start)
    baseline_of = baseline if isinstance(baseline, dict) else dict.fromkeys(cases, baseline)
    times = {name: numpy.array(s) for name, s in samples.items()}
    return {name: (float(numpy.median(t)), float(numpy.median(t / times[baseline_of[name]])))
            for name, t in times.items()}
