"""The order blocks act in, and the arrays a sweep over them writes."""


def application_order(n_steps, transpose):
    """Indices in the order they act on X: H = P_1 ... P_N applies P_N first."""
    return range(n_steps) if transpose else range(n_steps - 1, -1, -1)


def split(y, block_size, xp):
    """``(..., n, d)`` rows as ``(..., ceil(n/k), k, d)`` blocks.

    The last block is padded with zero rows, which are identity factors in
    every blocked form used here, so padding changes no result. Cost: a copy
    only when ``k`` does not divide ``n``.
    """
    n, d = y.shape[-2:]
    k = min(block_size, n)
    n_blocks = -(-n // k)
    pad = n_blocks * k - n
    if pad:
        padded = xp.zeros(y.shape[:-2] + (n_blocks * k, d), dtype=y.dtype)
        padded[..., :n, :] = y
        y = padded
    return y.reshape(y.shape[:-2] + (n_blocks, k, d))


def column_major(x):
    """Whether the last two axes of ``x`` are laid out column by column, as the columns view
    ``X^T`` of a row-major ``X @ H`` operand is. O(1)."""
    return x.strides[-2] < x.strides[-1]


def empty_in_order(shape, dtype, like, xp):
    """An uninitialized array of ``shape`` whose last two axes have ``like``'s memory order
    (column-major when ``like`` is: a transposed view of a row-major array)."""
    shape = tuple(shape)
    if column_major(like):
        return xp.empty(shape[:-2] + (shape[-1], shape[-2]), dtype=dtype).swapaxes(-1, -2)
    return xp.empty(shape, dtype=dtype)


def writable(x, batch, xp):
    """A new array of shape ``batch + x.shape[-2:]`` holding ``x`` (broadcast), in ``x``'s memory
    order: no transposing copy of a row-major ``X @ H`` operand. O(size)."""
    out = empty_in_order(tuple(batch) + x.shape[-2:], x.dtype, x, xp)
    out[...] = x
    return out


def sweep_buffer(out, dout, xp):
    """``[out | dout]`` ``(..., d, 2m)`` in ``out``'s memory order, the buffer a backward sweep
    overwrites: for the columns of a row-major ``X @ H`` the gradient w.r.t. X is then a row-major
    slice of it, returned with no copy. O(d m)."""
    m = out.shape[-1]
    b = empty_in_order(out.shape[:-1] + (2 * m,), out.dtype, out, xp)
    b[..., :m] = out
    b[..., m:] = dout
    return b
