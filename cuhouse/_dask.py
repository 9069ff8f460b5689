"""Dask arrays as operands: ``A @ Xd``, ``Xd @ A`` and their vjp, lazily, chunk by chunk.

Every function here builds a graph and computes nothing. The matrix enters
the graph once, as a single key that every chunk task depends on, so a
``dask.distributed`` worker receives its factors once, keeps them, and reuses
its cached block factors for all the chunks it runs. Each chunk goes through
the operator's in-memory path (``A @ chunk``, ``chunk @ A`` and the vjp of
:class:`cuhouse._operator.Operator`), so finiteness of ``X`` is checked per
chunk, when the chunk is computed.

Layout: ``X`` (``(..., d, m)`` for ``A @ X``, ``(..., m, d)`` for ``X @ A``)
maps block-wise along its batch and non-contracted axes; the contracted axis
``d`` is rechunked to a single chunk (a product with a Householder operator
needs the whole column). Batch axes that ``A`` has (with size > 1) are
rechunked to one chunk too, since ``A`` acts on all of them at once. Chunks
keep the array type of ``X._meta``: CuPy chunks (dask-cuda) stay on the
device, with a matrix whose parameters are CuPy arrays.

Dask is imported only inside these functions; ``import cuhouse`` never
imports it.
"""

import functools
import math
import operator
import uuid

import numpy

from . import _operator, _validate
from ._backend import is_cupy_array, module_named, type_name

GRADIENT_FAN_IN = 8  # chunks summed per task in the tree reduction of parameter gradients


def is_dask_array(x):
    """True when ``x`` is a ``dask.array.Array`` (checked by type, without importing Dask)."""
    cls = type(x)
    return cls.__name__ == "Array" and cls.__module__.split(".")[:2] == ["dask", "array"]


def matmul(op, x, side):
    """``op @ x`` (``side == "left"``) or ``x @ op`` (``"right"``) for a Dask array ``x``: a lazy Dask array.

    Chunks along the batch and non-contracted axes are kept; the contracted
    axis becomes one chunk of the output dimension. Cost when computed: one
    cuhouse product per chunk, plus a rechunk when ``x`` is chunked along the
    contracted axis.
    """
    layout = _Layout(op, x, side)
    return layout.result(_product_blocks(_operator_key(op), layout))


def vjp_matmul(op, x, side):
    """``(out, back)`` for ``op @ x`` (``x @ op``) with ``x`` a Dask array; nothing is computed.

    ``back(dout)`` (``dout`` a Dask or in-memory array of ``out``'s shape)
    returns ``(dparams, dx)``: ``dparams`` a tuple of single-chunk Dask arrays
    matching ``op.params``, the sum of every chunk's gradient as a tree
    reduction; ``dx`` a Dask array with ``x``'s shape and chunks.
    ``dask.compute(*back(dout))`` computes both. Cost when computed: per
    chunk, cuhouse's vjp (the forward product again, then its backward).
    """
    layout = _Layout(op, x, side)
    key = _operator_key(op)
    out = layout.result(_product_blocks(key, layout))

    def back(dout):
        pairs = _vjp_blocks(key, layout, layout.cotangent(dout, out))
        dx = pairs.map_blocks(
            operator.itemgetter(1), dtype=layout.grad_dtype, meta=layout.meta(layout.x.ndim, layout.grad_dtype)
        )
        return _tree_sum(pairs, op.params), layout.gradient(dx)

    return out, back


class _Layout:
    """``X`` validated and laid out for block-wise products, and the way back to its shape.

    ``x`` is ``X`` with a vector as one column (``A @ X``) or row (``X @ A``),
    broadcast to the result's batch shape and rechunked so that the contracted
    axis and the batch axes ``A`` spans are single chunks. ``letters`` index
    its axes for ``blockwise``; ``contracted`` is the contracted axis.
    Cost: O(1) (a graph of views and rechunks).
    """

    def __init__(self, op, x, side):
        import dask.array as da

        _validate.check_dtype(x.dtype, "X")
        if any(math.isnan(size) for sizes in x.chunks for size in sizes):
            raise ValueError(
                "X is a dask array with unknown chunk sizes (NaN in X.chunks, e.g. after boolean "
                "indexing): call X.compute_chunk_sizes() before the product"
            )
        if is_cupy_array(x._meta) != (op.backend == "cupy"):
            raise TypeError(
                "cannot mix NumPy and CuPy arrays: the chunks of X are {} (X._meta) but the operator "
                "holds {} arrays; move the data explicitly (X.map_blocks(cupy.asarray) or "
                "cupy.asnumpy)".format(type_name(type(x._meta)), op.backend)
            )
        if x.ndim == 0:
            raise ValueError("X must have at least one dimension for matmul, got a scalar")
        rows, cols = op.shape[-2:]
        d = cols if side == "left" else rows
        self.side, self.chunks, self.vector = side, x.chunks, x.ndim == 1
        self.xp = module_named(op.backend)
        self.contracted = -2 if side == "left" else -1
        if x.shape[-1 if self.vector else self.contracted] != d:
            expected = "(d,) or (..., d, m)" if side == "left" else "(d,) or (..., m, d)"
            raise ValueError(
                "X has shape {} but the operator is {}x{}: expected {} with d={}".format(
                    tuple(x.shape), rows, cols, expected, d
                )
            )
        if self.vector:
            x = _to_columns(x, side)
        self.column_shape = x.shape
        batch = _validate.batch_shape(("A", op.shape[:-2]), ("X", x.shape[:-2]))
        if batch != x.shape[:-2]:
            x = da.broadcast_to(x, batch + x.shape[-2:])
        spanned = [x.ndim - 2 - len(op.shape[:-2]) + i for i, size in enumerate(op.shape[:-2]) if size > 1]
        single = {axis: -1 for axis in spanned + [x.ndim + self.contracted]}
        if any(len(x.chunks[axis]) > 1 for axis in single):
            x = x.rechunk(single)
        self.x = x
        self.out_size = rows if side == "left" else cols
        self.dtype = _validate.float_dtype(numpy.result_type(op.dtype, x.dtype))
        self.grad_dtype = _validate.float_dtype(x.dtype)
        self.letters = "".join(chr(ord("a") + i) for i in range(x.ndim))

    def meta(self, ndim, dtype):
        """An empty array of ``X``'s chunk type (NumPy, CuPy, ...) with ``ndim`` and ``dtype``."""
        from dask.array.utils import meta_from_array

        return meta_from_array(self.x._meta, ndim=ndim, dtype=dtype)

    def result(self, out):
        """The product in ``X``'s layout: a vector again for a vector ``X``."""
        return _from_columns(out, self.side) if self.vector else out

    def cotangent(self, dout, out):
        """``dout`` as a Dask array in the layout of the block-wise product, chunked like it."""
        import dask.array as da

        if not is_dask_array(dout):
            dout = da.from_array(_validate.as_array(dout, "dout", self.xp), chunks=out.chunks)
        _validate.check_dtype(dout.dtype, "dout")
        if tuple(dout.shape) != tuple(out.shape):
            raise ValueError(
                "dout must have the shape of the value it is the gradient of, {}, got shape {}".format(
                    tuple(out.shape), tuple(dout.shape)
                )
            )
        if self.vector:
            dout = _to_columns(dout, self.side)
        chunks = list(self.x.chunks)
        chunks[self.contracted] = (self.out_size,)
        return dout.astype(self.dtype).rechunk(tuple(chunks))

    def gradient(self, dx):
        """The gradient for ``x`` (laid out) back in ``X``'s shape and chunks."""
        dx = _operator.reduce_to_shape(dx, self.column_shape)
        return (_from_columns(dx, self.side) if self.vector else dx).rechunk(self.chunks)


def _to_columns(v, side):
    """A vector (or a stack of them) as one column (``A @ v``) or one row (``v @ A``)."""
    return v[..., None] if side == "left" else v[..., None, :]


def _from_columns(c, side):
    """Inverse of :func:`_to_columns`."""
    return c[..., 0] if side == "left" else c[..., 0, :]


def _operator_key(op):
    """``op`` as a one-key Delayed: every chunk task depends on that key, so it is shipped once per worker."""
    import dask

    return dask.delayed(op, name="cuhouse-{}-{}".format(type(op).__name__, uuid.uuid4().hex))


def _product_blocks(key, layout):
    """One cuhouse product per block of ``layout.x``: a Dask array."""
    import dask.array as da

    ind = layout.letters
    return da.blockwise(
        _block_product,
        ind,
        key,
        None,
        layout.x,
        ind,
        layout.side,
        None,
        adjust_chunks={ind[layout.contracted]: layout.out_size},
        dtype=layout.dtype,
        meta=layout.meta(layout.x.ndim, layout.dtype),
        token="cuhouse-matmul",
    )


def _vjp_blocks(key, layout, dout):
    """``(dparams, dx)`` per block of ``layout.x``: a Dask array of tuples, blocks aligned with ``x``'s."""
    import dask.array as da

    ind = layout.letters
    return da.blockwise(
        _block_vjp,
        ind,
        key,
        None,
        layout.x,
        ind,
        dout,
        ind,
        layout.side,
        None,
        dtype=object,
        meta=numpy.empty((0,) * layout.x.ndim, dtype=object),
        token="cuhouse-vjp",
        align_arrays=False,
    )


def _tree_sum(pairs, params):
    """The parameter gradients of every block, summed ``GRADIENT_FAN_IN`` at a time: single-chunk Dask arrays."""
    import dask
    import dask.array as da
    from dask.array.utils import meta_from_array

    level = [
        dask.delayed(operator.itemgetter(0), pure=True)(block)
        for block in pairs.to_delayed(optimize_graph=False).ravel()
    ]
    while len(level) > 1:
        level = [
            dask.delayed(_sum_gradients, pure=True)(*level[i : i + GRADIENT_FAN_IN])
            for i in range(0, len(level), GRADIENT_FAN_IN)
        ]
    total = level[0]
    grads = []
    for i, leaf in enumerate(params):
        dtype = numpy.result_type(leaf.dtype, numpy.float32)
        grads.append(
            da.from_delayed(
                total[i], shape=leaf.shape, dtype=dtype, meta=meta_from_array(leaf, ndim=leaf.ndim, dtype=dtype)
            )
        )
    return tuple(grads)


def _block_product(op, block, side):
    return op._product(block, side)


def _block_vjp(op, block, dout, side):
    return op._vjp_matmul(block, side)[1](dout)


def _sum_gradients(*parts):
    return tuple(functools.reduce(operator.add, grads) for grads in zip(*parts))
