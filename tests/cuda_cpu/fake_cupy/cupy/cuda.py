"""``cupy.cuda`` of the CPU stand-in: fake devices, synchronous streams, graph capture.

Devices: ``CUDA_CPU_DEVICES`` of them (default 2), so that code can be
tested for launching on its arrays' device: every allocation remembers the
device current when it was made (``ndarray.device``), and a raw kernel
launched on another device than its arrays' is refused (a ``KernelError``),
as a real launch would fault or read another GPU's memory.

Streams run synchronously. ``Stream.begin_capture``/``end_capture`` record
every launch made meanwhile into a :class:`Graph` (see :mod:`._trace`);
``Graph.launch`` replays them in order on the same buffers.
"""

import os
import threading
import types

from . import _trace

_local = threading.local()


def _device_count():
    return int(os.environ.get("CUDA_CPU_DEVICES", "2"))


def current_device_id():
    return getattr(_local, "device", 0)


class Device:
    def __init__(self, device=None):
        self.id = current_device_id() if device is None else int(device)
        if not 0 <= self.id < _device_count():
            raise RuntimeError(
                "cudaErrorInvalidDevice: invalid device ordinal {} ({} devices)".format(self.id, _device_count())
            )
        self._previous = []

    def synchronize(self):
        """Launches are synchronous on the CPU."""
        _trace.call()
        _trace.sync("Device.synchronize()")

    def use(self):
        _local.device = self.id

    @property
    def mem_info(self):
        """``(free, total)`` bytes: the host's memory stands in for the device's."""
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        return free, total

    def __enter__(self):
        self._previous.append(current_device_id())
        _local.device = self.id
        return self

    def __exit__(self, *exc):
        _local.device = self._previous.pop()
        return False

    def __eq__(self, other):
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self):
        return hash(self.id)

    def __repr__(self):
        return "<CUDA Device {}>".format(self.id)


class Stream:
    """A stream; ``with stream:`` makes it current. Work runs at once (synchronously)."""

    def __init__(self, null=False, non_blocking=False, ptds=False):
        self.ptr = 0 if null else id(self)
        self.device_id = current_device_id()
        self._previous = []
        self._capturing = None

    @classmethod
    def from_external(cls, ptr, device_id=-1):
        stream = cls.__new__(cls)
        stream.ptr = int(ptr)
        stream.device_id = device_id
        stream._previous = []
        stream._capturing = None
        return stream

    def synchronize(self):
        """Launches are synchronous on the CPU."""
        _trace.call()
        _trace.sync("Stream.synchronize()")

    def use(self):
        _local.stream = self
        return self

    def __enter__(self):
        self._previous.append(getattr(_local, "stream", None))
        _local.stream = self
        return self

    def __exit__(self, *exc):
        _local.stream = self._previous.pop()
        return False

    def begin_capture(self, mode=None):
        """Start recording launches into a graph (not on the null stream, as in CUDA)."""
        if self.ptr == 0:
            raise RuntimeError("cudaErrorStreamCaptureUnsupported: the null stream cannot be captured")
        if _trace.capture is not None:
            raise RuntimeError("cudaErrorIllegalState: a capture is already under way")
        self._capturing = Graph()
        _trace.capture = self._capturing

    def end_capture(self):
        if self._capturing is None or _trace.capture is not self._capturing:
            raise RuntimeError("cudaErrorIllegalState: this stream is not capturing")
        graph, self._capturing = self._capturing, None
        _trace.capture = None
        return graph

    def is_capturing(self):
        return self._capturing is not None


Stream.null = Stream(null=True)


class Graph:
    """A recorded sequence of launches: ``launch()`` replays it (one launch)."""

    def __init__(self):
        self._steps = []

    def _record(self, step):
        self._steps.append(step)

    def launch(self, stream=None):
        _trace.call()
        _trace.launch(replay=self.launch)
        saved, _trace.capture = _trace.capture, None  # the replayed steps are not counted again
        stack, _trace._state.stack = _trace._active(), []
        try:
            for step in self._steps:
                step()
        finally:
            _trace.capture = saved
            _trace._state.stack = stack


class Event:
    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self._time = None

    def record(self, stream=None):
        import time

        self._time = time.perf_counter()

    def synchronize(self):
        _trace.sync("Event.synchronize()")


def get_elapsed_time(start, stop):
    return (stop._time - start._time) * 1e3


def get_current_stream():
    return getattr(_local, "stream", None) or Stream.null


def set_allocator(allocator=None):
    """Every array is its own allocation already (no pool)."""


runtime = types.SimpleNamespace(getDeviceCount=_device_count)
device = types.SimpleNamespace(get_cusolver_handle=lambda: 0, get_cublas_handle=lambda: 0)  # cupy.cuda.device
