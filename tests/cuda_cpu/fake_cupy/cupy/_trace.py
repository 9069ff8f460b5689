"""What the stand-in counts, and its stream-capture state.

The CPU stand-in of CuPy counts, per :func:`counting` block:

``calls``
    CuPy API calls: module functions, ``ndarray`` methods and operators
    (attribute reads such as ``shape`` are free, as in CuPy);
``launches``
    device work a call enqueues: every call that writes device memory (a
    new array computed, an in-place operator, ``a[...] = b``, a copy, a raw
    kernel, a cuBLAS call, a graph launch counts as one; views, ``empty``
    and metadata count none);
``gemms``
    the launches that are matrix products (``matmul``, ``@``, ``dot``,
    ``einsum`` and ``cupy.cublas.gemm``);
``operand_copies``
    GEMM operands that are neither C- nor F-contiguous, which CuPy copies
    before calling cuBLAS (each also counted as a launch);
``syncs``
    device-to-host synchronizations: ``get``, ``asnumpy``, ``bool``/``int``/
    ``float``/``item``/``tolist`` of an array, ``synchronize``.

``CUDA_CPU_TRACE_SYNCS=1`` prints the stack of every sync (to find where a budget goes).

``capture`` holds the graph being recorded by ``Stream.begin_capture``
(see :mod:`.cuda`): while it is set, every launch is recorded for replay
(and still executed, so later host code sees the values), a sync is an
error as in CUDA, and so is a new allocation (the stand-in is stricter than
CuPy there: every buffer a graph touches must exist before the capture and
outlive the graph).
"""

import contextlib
import os
import sys
import threading
import traceback

FIELDS = ("calls", "launches", "gemms", "operand_copies", "syncs")


class Counts:
    def __init__(self):
        for field in FIELDS:
            setattr(self, field, 0)

    def as_dict(self):
        return {field: getattr(self, field) for field in FIELDS}

    def __repr__(self):
        return "Counts({})".format(", ".join("{}={}".format(k, v) for k, v in self.as_dict().items()))


_state = threading.local()


def _active():
    if not hasattr(_state, "stack"):
        _state.stack = []
    return _state.stack


@contextlib.contextmanager
def counting():
    """``with counting() as counts:`` counts what the block does (nested blocks each count)."""
    counts = Counts()
    _active().append(counts)
    try:
        yield counts
    finally:
        _active().remove(counts)


def add(field, n=1):
    for counts in _active():
        setattr(counts, field, getattr(counts, field) + n)


class CaptureError(RuntimeError):
    """An operation CUDA refuses during stream capture."""


capture = None  # the cuda.Graph being recorded, or None


def call():
    add("calls")


def launch(replay=None, gemm=False):
    """One launch; ``replay`` (a callable redoing it) is recorded while capturing."""
    add("launches")
    if gemm:
        add("gemms")
    if capture is not None:
        if replay is None:
            raise CaptureError("the stand-in cannot record this operation in a CUDA graph")
        capture._record(replay)


def sync(what):
    if capture is not None:
        raise CaptureError("{} synchronizes with the host: not permitted during stream capture".format(what))
    add("syncs")
    if os.environ.get("CUDA_CPU_TRACE_SYNCS") == "1":  # where each sync comes from, for budget work
        traceback.print_stack(limit=8, file=sys.stderr)
        print("-- {}".format(what), file=sys.stderr)


def allocation():
    if capture is not None:
        raise CaptureError(
            "a new device array during stream capture: the stand-in requires every buffer a graph "
            "touches to be allocated before the capture"
        )
