"""Raw CUDA kernels: the only module that touches ``cupy.RawModule``.

The sources are the repository's top-level ``kernels/``, installed as the
package data of :mod:`cuhouse._gpu.kernels` (see :func:`kernel_directory`). Local
``#include "x.cuh"`` lines are inlined here before compilation, so CuPy's
kernel cache, which is keyed on the source text, also notices header edits.
One ``RawModule`` holding every kernel for float and double is created once;
CuPy compiles it per device on first use. CuPy is imported only when a kernel is
actually needed, never at ``import cuhouse``.

Every launcher below takes and returns CuPy arrays of dtype float32 or
float64, allocates and launches on its first array's device (``with
array.device:``, whatever device is current), on that device's current stream. The kernels need C-contiguous
input: non-contiguous input is copied first, which costs one extra pass over
it (noted on each launcher).
"""

import functools
import importlib.resources
import pathlib
import re

import numpy

from .._backend import SUPPORTED_DTYPES, cupy_module

KERNEL_SOURCES = ("row_norms.cu", "triangular_inverse.cu", "cwy_gradient.cu")
KERNEL_TEMPLATES = (
    "cuhouse_row_norms",
    "cuhouse_normalize_rows",
    "cuhouse_triangular_inverse_shared",
    "cuhouse_cwy_gradient_right",
    "cuhouse_cwy_gradient_left",
)
COMPILE_OPTIONS = ("-std=c++17",)
_CTYPES = {numpy.dtype(numpy.float32): "float", numpy.dtype(numpy.float64): "double"}

SHARED_INVERSE_MAX_K = 64  # the triangular-inverse kernel's largest k (a k x k tile in shared memory)
_SHARED_TILE_BYTES = 32 * 1024  # per block, under the 48 KiB default limit
_MAX_GRID = 1 << 16  # grid-stride kernels need no more blocks than this
_THREADS = 256
_WARP = 32
_TILE = 16  # CUHOUSE_TILE in cwy_gradient.cu

_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"[ \t]*$', re.MULTILINE)


def kernel_directory():
    """The directory holding the ``.cu``/``.cuh`` sources.

    In a source tree (a checkout imported without installing, as on a device
    run, or a second worktree beside an editable install) it is the
    repository's ``kernels/`` next to the package, so the sources always match
    the code importing them; in an installed wheel it is the package
    ``cuhouse._gpu.kernels``. ``ImportError`` when neither holds the sources.
    """
    source_tree = pathlib.Path(__file__).resolve().parents[2] / "kernels"
    if (source_tree / "__init__.py").is_file() and all((source_tree / name).is_file() for name in KERNEL_SOURCES):
        return source_tree
    try:
        return importlib.resources.files("cuhouse._gpu.kernels")
    except ModuleNotFoundError:
        raise ImportError(
            "the CUDA sources of cuhouse were not found: neither {} nor the package cuhouse._gpu.kernels "
            "holds {}; install cuhouse (pip install .) or run from a complete checkout".format(
                source_tree, ", ".join(KERNEL_SOURCES)
            )
        ) from None


def kernel_source():
    """The full CUDA source of the module: every kernel file, includes inlined once."""
    directory = kernel_directory()
    seen = set()

    def inline(name):
        if name in seen:
            return ""
        seen.add(name)
        text = directory.joinpath(name).read_text(encoding="utf-8")
        return _INCLUDE.sub(lambda match: inline(match.group(1)), text)

    return "\n".join(inline(name) for name in KERNEL_SOURCES)


def name_expressions():
    """``"kernel<float>"`` and ``"kernel<double>"`` for every template."""
    return [f"{name}<{ctype}>" for name in KERNEL_TEMPLATES for ctype in _CTYPES.values()]


@functools.lru_cache(maxsize=None)
def module():
    """The one ``RawModule`` holding every kernel. CuPy compiles and loads it
    lazily, once per device, at the first ``get_function`` there."""
    return cupy_module().RawModule(code=kernel_source(), options=COMPILE_OPTIONS, name_expressions=name_expressions())


def supports(*arrays):
    """True when every array is float32/float64 with one dtype (what the kernels take)."""
    dtypes = {numpy.dtype(a.dtype) for a in arrays}
    return len(dtypes) == 1 and dtypes.pop() in SUPPORTED_DTYPES


def _function(name, dtype):
    return module().get_function(f"{name}<{_CTYPES[numpy.dtype(dtype)]}>")


def _on_device_of_input(launcher):
    """Runs ``launcher(array, ...)`` with the first array's device current: its outputs and launches
    go where the data is (a kernel launched on another GPU would read memory it cannot see)."""

    @functools.wraps(launcher)
    def run(array, *args, **kwargs):
        with array.device:
            return launcher(array, *args, **kwargs)

    return run


def _blocks(units, per_block):
    return max(1, min(-(-units // per_block), _MAX_GRID))


@_on_device_of_input
def row_norms(v, with_unit=False):
    """Norms ``(..., n)`` of the rows of ``v`` ``(..., n, d)``; with ``with_unit``,
    ``(unit, norms)`` where ``unit`` is ``v`` with rows normalized (zero rows stay
    zero), fused into the same pass. One warp per row.
    Cost: one read of ``v`` (two for rows out of the safe range, as the twin),
    plus one write of ``unit``; a copy first when ``v`` is not contiguous."""
    cupy = cupy_module()
    v = cupy.ascontiguousarray(v)
    d = v.shape[-1]
    rows = v.size // d if d else 0
    norms = cupy.empty(v.shape[:-1], dtype=v.dtype)
    unit = cupy.empty_like(v) if with_unit else None
    if rows:
        info = numpy.finfo(v.dtype)
        scalar = v.dtype.type
        warps = _THREADS // _WARP
        _function("cuhouse_row_norms", v.dtype)(
            (_blocks(rows, warps),),
            (_THREADS,),
            (
                v,
                numpy.int64(rows),
                numpy.int64(d),
                scalar(info.tiny / info.eps),
                scalar(info.max * info.eps),
                norms,
                unit if with_unit else numpy.uint64(0),
            ),
        )  # 0: a null pointer, no unit rows
    return (unit, norms) if with_unit else norms


@_on_device_of_input
def normalize_rows(v, norms):
    """``v / norms[..., None]`` for ``v`` ``(..., n, d)`` and ``norms`` ``(..., n)`` of
    the same batch shape; a zero norm divides by 1. One element-wise launch.
    Cost: one read of ``v``; a copy first when ``v`` or ``norms`` is not contiguous."""
    cupy = cupy_module()
    v = cupy.ascontiguousarray(v)
    norms = cupy.ascontiguousarray(norms)
    d = v.shape[-1]
    unit = cupy.empty_like(v)
    if v.size:
        _function("cuhouse_normalize_rows", v.dtype)(
            (_blocks(v.size, _THREADS),), (_THREADS,), (v, norms, numpy.int64(v.size // d), numpy.int64(d), unit)
        )
    return unit


@_on_device_of_input
def upper_triangular_inverse(s):
    """``S^{-1}`` for a stack ``s`` ``(..., k, k)`` of upper-triangular matrices with
    ``k <= SHARED_INVERSE_MAX_K``, all in one launch; the strictly lower triangle
    of ``s`` is not read and that of the result is exactly zero. Each inverse is
    built in shared memory, one thread per column (an O(k^2) serial loop each);
    larger k is :func:`cuhouse._gpu.primitives.upper_triangular_inverse`'s
    doubling over blocks of this size. ``ValueError`` for larger k.
    Cost: about k^3 / 3 flops per matrix, the columns in parallel; a copy first
    when ``s`` is not contiguous (O(k^2) per matrix)."""
    cupy = cupy_module()
    k = s.shape[-1]
    if k > SHARED_INVERSE_MAX_K:
        raise ValueError(
            "the triangular-inverse kernel takes k <= {}, got k = {}; larger k goes through "
            "cuhouse._gpu.primitives.upper_triangular_inverse (blocks of {} joined by doubling)".format(
                SHARED_INVERSE_MAX_K, k, SHARED_INVERSE_MAX_K
            )
        )
    s = cupy.ascontiguousarray(s)
    t = cupy.empty_like(s)
    count = s.size // (k * k) if k else 0
    if not count:
        return t
    args = (s, numpy.int64(count), numpy.int32(k), t)
    columns = _WARP * -(-k // _WARP)
    tile_bytes = k * k * s.dtype.itemsize
    per_block = max(1, min(128 // columns, _SHARED_TILE_BYTES // tile_bytes))
    _function("cuhouse_triangular_inverse_shared", s.dtype)(
        (_blocks(count, per_block),), (columns, per_block), args, shared_mem=per_block * tile_bytes
    )
    return t


@_on_device_of_input
def cwy_gradient_coefficients(t, n):
    """``Ru + Ru^T`` with ``R = T^T N T^T``, ``Ru = striu(R)``, for stacks ``t``
    (upper triangular; its strictly lower part is taken as zero) and ``n``, both
    ``(..., k, k)`` with broadcastable batch shapes. Two tiled launches.
    Cost: about k^3 flops per block; broadcasting or non-contiguous input is
    first copied into contiguous stacks (O(k^2) per block)."""
    cupy = cupy_module()
    shape = numpy.broadcast_shapes(t.shape, n.shape)
    t = cupy.ascontiguousarray(cupy.broadcast_to(t, shape))
    n = cupy.ascontiguousarray(cupy.broadcast_to(n, shape))
    k = shape[-1]
    count = n.size // (k * k) if k else 0
    workspace = cupy.empty_like(n)
    coefficients = cupy.empty_like(n)
    if count:
        tiles = -(-k // _TILE)
        grid = (_blocks(count * tiles * tiles, 1),)
        block = (_TILE, _TILE)
        _function("cuhouse_cwy_gradient_right", n.dtype)(
            grid, block, (t, n, numpy.int64(count), numpy.int32(k), workspace)
        )
        _function("cuhouse_cwy_gradient_left", n.dtype)(
            grid, block, (t, workspace, numpy.int64(count), numpy.int32(k), coefficients)
        )
    return coefficients
