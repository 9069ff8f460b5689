"""Dask arrays as operands: ``A @ Xd``, ``Xd @ A`` and their vjp, lazily, chunk by chunk.

Every function here builds a graph and computes nothing. The matrix enters
the graph once, as a single key that every chunk task depends on, so a
``dask.distributed`` worker receives the matrix once, keeps it, and reuses
its cached forms for all the chunks it runs. Each chunk goes through
the operator's in-memory path (``A @ chunk``, ``chunk @ A`` and the vjp of
:class:`cuhouse._operator.Operator`), so finiteness of ``X`` is checked per
chunk, when the chunk is computed.

Chunking: ``X`` (``(..., d, m)`` for ``A @ X``, ``(..., m, d)`` for ``X @ A``)
maps block-wise along its batch and non-contracted axes; the contracted axis
``d`` is rechunked to a single chunk (a product with a Householder operator
needs the whole column). Batch axes that ``A`` has (with size > 1) are
rechunked to one chunk too, since ``A`` acts on all of them at once. Chunks
keep the array type of ``X._meta``: CuPy chunks (dask-cuda) stay on the
device, with a matrix whose parameters are CuPy arrays.

The matrix's key is ``cuhouse-<class>-<token>`` with the token from
``dask.base.tokenize`` (:meth:`cuhouse.Operator.__dask_tokenize__`: the
class and its whole state, arrays hashed by content), so graphs built twice
from the same matrix share that key and are reproducible.

Dask is imported only inside these functions; ``import cuhouse`` never
imports it. This module imports no class of cuhouse: it works on any object
with the operator protocol.
"""

import functools
import math
import operator

import numpy

from . import _validate
from ._backend import is_cupy_array, is_dask_array, module_named, type_name
from ._shapes import matmul_shape, reduce_to_shape

GRADIENT_FAN_IN = 8  # chunks summed per task in the tree reduction of parameter gradients


def matmul(op, x, side):
    """``op @ x`` (``side == "left"``) or ``x @ op`` (``"right"``) for a Dask array ``x``: a lazy Dask array.

    Chunks along the batch and non-contracted axes are kept; the contracted
    axis becomes one chunk of the output dimension. Cost when computed: one
    cuhouse product per chunk, plus a rechunk when ``x`` is chunked along the
    contracted axis.
    """
    chunked = _Chunked(op, x, side)
    return chunked.result(_product_chunks(_operator_key(op), chunked))


def vjp_matmul(op, x, side):
    """``(out, back)`` for ``op @ x`` (``x @ op``) with ``x`` a Dask array; nothing is computed.

    ``back(dout)`` (``dout`` a Dask or in-memory array of ``out``'s shape)
    returns ``(dparams, dx)``: ``dparams`` a tuple of single-chunk Dask arrays
    matching ``op.params``, the sum of every chunk's gradient as a tree
    reduction; ``dx`` a Dask array with ``x``'s shape and chunks.
    ``dask.compute(*back(dout))`` computes both. Cost when computed: per
    chunk, cuhouse's vjp (the forward product again, then its backward).
    """
    chunked = _Chunked(op, x, side)
    key = _operator_key(op)
    out = chunked.result(_product_chunks(key, chunked))

    def back(dout):
        pairs = _vjp_chunks(key, chunked, chunked.cotangent(dout, out))
        dx = pairs.map_blocks(
            operator.itemgetter(1), dtype=chunked.grad_dtype, meta=chunked.meta(chunked.x.ndim, chunked.grad_dtype)
        )
        return _tree_sum(pairs, op.params), chunked.gradient(dx)

    return out, back


class _Chunked:
    """``X`` validated and chunked for block-wise products, and the way back to its shape and chunks.

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
        matmul_shape(op.shape, x.shape, side, op._NAME, "X")  # named as the in-memory path names it
        rows, cols = op.shape[-2:]
        self.side, self.chunks, self.vector = side, x.chunks, x.ndim == 1
        self.xp = module_named(op.backend)
        self.contracted = -2 if side == "left" else -1
        if self.vector:
            x = _as_matrix(x, side)
        self.matrix_shape = x.shape
        batch = numpy.broadcast_shapes(op.shape[:-2], x.shape[:-2])
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
        """The product in ``X``'s form: a vector again for a vector ``X``."""
        return _as_vector(out, self.side) if self.vector else out

    def cotangent(self, dout, out):
        """``dout`` as a Dask array in the form of the block-wise product, chunked like it."""
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
            dout = _as_matrix(dout, self.side)
        chunks = list(self.x.chunks)
        chunks[self.contracted] = (self.out_size,)
        return dout.astype(self.dtype).rechunk(tuple(chunks))

    def gradient(self, dx):
        """The gradient for ``x`` (as chunked) back in ``X``'s shape and chunks."""
        dx = reduce_to_shape(dx, self.matrix_shape)
        return (_as_vector(dx, self.side) if self.vector else dx).rechunk(self.chunks)


def _as_matrix(v, side):
    """A vector (or a stack of them) as one column (``A @ v``) or one row (``v @ A``)."""
    return v[..., None] if side == "left" else v[..., None, :]


def _as_vector(c, side):
    """Inverse of :func:`_as_matrix`."""
    return c[..., 0] if side == "left" else c[..., 0, :]


def _operator_key(op):
    """``op`` as a one-key Delayed: every chunk task depends on that key, so it is shipped once per worker.

    The key is ``cuhouse-<class>-<tokenize(op)>``: deterministic, shared by every graph of the same matrix.
    Cost: one hash over the parameter arrays.
    """
    import dask
    from dask.base import tokenize

    return dask.delayed(op, name="cuhouse-{}-{}".format(type(op).__name__, tokenize(op)))


def _product_chunks(key, chunked):
    """One cuhouse product per chunk of ``chunked.x``: a Dask array."""
    import dask.array as da

    ind = chunked.letters
    return da.blockwise(
        _chunk_product,
        ind,
        key,
        None,
        chunked.x,
        ind,
        chunked.side,
        None,
        adjust_chunks={ind[chunked.contracted]: chunked.out_size},
        dtype=chunked.dtype,
        meta=chunked.meta(chunked.x.ndim, chunked.dtype),
        token="cuhouse-matmul",
    )


def _vjp_chunks(key, chunked, dout):
    """``(dparams, dx)`` per chunk of ``chunked.x``: a Dask array of tuples, chunks aligned with ``x``'s."""
    import dask.array as da

    ind = chunked.letters
    return da.blockwise(
        _chunk_vjp,
        ind,
        key,
        None,
        chunked.x,
        ind,
        dout,
        ind,
        chunked.side,
        None,
        dtype=object,
        meta=numpy.empty((0,) * chunked.x.ndim, dtype=object),
        token="cuhouse-vjp",
        align_arrays=False,
    )


def _tree_sum(pairs, params):
    """The parameter gradients of every chunk, summed ``GRADIENT_FAN_IN`` at a time: single-chunk Dask arrays."""
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


def _chunk_product(op, chunk, side):
    return op._product(chunk, side)


def _chunk_vjp(op, chunk, dout, side):
    return op._vjp_matmul(chunk, side)[1](dout)


def _sum_gradients(*parts):
    return tuple(functools.reduce(operator.add, grads) for grads in zip(*parts))
