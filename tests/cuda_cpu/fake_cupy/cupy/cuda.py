"""``cupy.cuda`` of the CPU stand-in: one device, synchronous streams."""

import types


class Device:
    def __init__(self, device=None):
        self.id = 0 if device is None else int(device)

    def synchronize(self):
        """Launches are synchronous on the CPU."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class Stream:
    def synchronize(self):
        """Launches are synchronous on the CPU."""


def get_current_stream():
    return Stream()


def set_allocator(allocator=None):
    """Every array is its own allocation already (no pool)."""


runtime = types.SimpleNamespace(getDeviceCount=lambda: 1)
