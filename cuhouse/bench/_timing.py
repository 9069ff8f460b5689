"""Round-robin timing with device synchronization."""
import time

import numpy

from .._backend import synchronize


def measure(cases, baseline, rounds, xp):
    """Median seconds of each case and its median per-round ratio to ``baseline``.

    ``cases`` maps names to zero-argument callables. Every round runs each case
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
    base = numpy.array(samples[baseline])
    return {name: (float(numpy.median(s)), float(numpy.median(numpy.array(s) / base)))
            for name, s in samples.items()}
