"""The cached apply modes of compact WY: two GEMMs per block, or one CUDA graph.

A block applies ``P = I - V^T M V`` (``M = T``, or ``T^T`` for ``H^T``). With
``W = M V`` precomputed once per direction (and, for a structured layout,
the block's rows made dense from its first stored column on), a block is

    Z = W X[start:]              one GEMM  (k x m)
    X[start:] -= V^T Z           one GEMM with beta = 1 (cuBLAS on CuPy)

so a cached ``H @ X`` makes two launches per block and no host sync. On CuPy
the whole sweep can also be captured once as a CUDA graph and replayed: then
a product is three launches whatever the number of blocks (X copied into the
graph's buffer, the replay, the result copied out). Which mode runs is the
plan's ``apply`` (:func:`cuhouse.plan.choose`); the steps of
:func:`cuhouse.algorithms.cwy.apply` needs no extra memory, these keep
``W`` and the dense rows (``n d`` values each, at most).

Every operand is C-contiguous, so CuPy copies none of them before cuBLAS.
"""

import threading
import warnings
from collections import OrderedDict, namedtuple

from .._gpu import primitives as _primitives
from ._steps import application_order, empty_in_order, writable

WBlock = namedtuple("WBlock", "w v start kb")
WBlock.__doc__ = """Per block (in product order): ``w`` ``(..., kb, d - start)`` = ``M V`` with identity
factors' rows zero, ``v`` ``(..., kb, d - start)`` the rows from column ``start`` on (C-contiguous)."""

GRAPHS_PER_FACTORS = 4  # captured graphs kept per factors and direction (X shapes, streams), least recent dropped
_lock = threading.Lock()


def w_blocks(f, transpose, xp):
    """The cached :class:`WBlock` list of the cwy form ``f`` for ``H`` (``H^T`` when ``transpose``); built once.

    Cost: one batched GEMM of O(k^2 d) per block (O(n k d) in all) and a copy of
    the structured blocks' rows, the first time.
    """
    key = ("w", bool(transpose))
    with _lock:
        cached = f.cache.get(key)
    if cached is not None:
        return cached
    built = []
    for j, block in enumerate(f.blocks):
        kb = block.last - block.first
        tj = f.t[..., j, :kb, :kb]
        mj = tj.swapaxes(-1, -2) if transpose else tj
        if block.head is None:
            v = xp.ascontiguousarray(block.tail)
        else:
            v = xp.concatenate([block.head, block.tail], axis=-1)
        rows = v
        if f.active is not None:
            rows = v * f.active[..., block.first : block.last, None]
        built.append(WBlock(xp.ascontiguousarray(mj @ rows), v, block.start, kb))
    with _lock:
        return f.cache.setdefault(key, built)


def sweep(blocks, out, z, transpose, xp):
    """``out`` ``(..., d, m)`` <- the product applied in place, two GEMMs per block; ``z`` a
    ``(..., k, m)`` workspace. No allocation on CuPy for unbatched 2-D operands."""
    for j in application_order(len(blocks), transpose):
        block = blocks[j]
        target = out[..., block.start :, :]
        zj = z[..., : block.kb, :]
        _primitives.matmul_into(block.w, target, zj, xp)
        _primitives.subtract_transposed_product(target, block.v, zj, xp)
    return out


def apply_gemm(f, x, transpose, xp, batch):
    """``H @ X`` by the two-GEMM mode: one copy of X, then two launches per block. O(n d m)."""
    blocks = w_blocks(f, transpose, xp)
    out = writable(x, batch, xp)  # in X's memory order
    z = xp.empty(tuple(batch) + (f.t.shape[-1], x.shape[-1]), dtype=x.dtype)
    return sweep(blocks, out, z, transpose, xp)


def graphable(f, x, batch):
    """Whether :func:`apply_graph` takes this product: unbatched factors and X, on CuPy."""
    return not tuple(batch) and x.ndim == 2 and f.t.ndim == 3


def apply_graph(f, x, transpose, xp):
    """``H @ X`` by replaying the two-GEMM sweep captured as a CUDA graph (CuPy, 2-D X).

    The first product of a shape (on a stream) captures the sweep on buffers kept
    for the next ones: then each product is three launches (X in, the replay,
    the result out). A capture CUDA refuses falls back to :func:`apply_gemm`
    with a ``RuntimeWarning`` naming the reason, once per factors.
    """
    blocks = w_blocks(f, transpose, xp)
    stream = xp.cuda.get_current_stream()
    key = ("graph", bool(transpose), x.shape, x.strides, x.dtype.str, stream.ptr, x.device.id)
    with _lock:
        graphs = f.cache.setdefault(("graphs", bool(transpose)), OrderedDict())
        entry = graphs.get(key)
        if entry is not None:
            graphs.move_to_end(key)
        refused = f.cache.get("graph refused")
    if refused is not None:
        return apply_gemm(f, x, transpose, xp, ())
    if entry is None:
        try:
            entry = _capture(blocks, x, f.t.shape[-1], transpose, xp)
        except Exception as exc:  # CUDA refused the capture: the two-GEMM mode, said once
            with _lock:
                f.cache["graph refused"] = str(exc)
            warnings.warn(
                "cuhouse: capturing H @ X as a CUDA graph failed ({}: {}); these factors use the "
                "two-GEMM mode from now on".format(type(exc).__name__, exc),
                RuntimeWarning,
                stacklevel=4,
            )
            return apply_gemm(f, x, transpose, xp, ())
        with _lock:
            graphs[key] = entry
            while len(graphs) > GRAPHS_PER_FACTORS:
                graphs.popitem(last=False)
    out, _, graph, lock = entry
    with lock:  # one product at a time on these buffers
        out[...] = x
        graph.launch(stream=stream)
        return out.copy()


def _capture(blocks, x, k, transpose, xp):
    """``(out, z, graph, lock)``: buffers for X's shape and the sweep on them captured (not run)."""
    out = empty_in_order(x.shape, x.dtype, x, xp)
    z = xp.empty((k, x.shape[-1]), dtype=x.dtype)
    side = xp.cuda.Stream(non_blocking=True)
    with side:
        side.begin_capture()
        try:
            sweep(blocks, out, z, transpose, xp)
        finally:
            graph = side.end_capture()
    return out, z, graph, threading.Lock()
