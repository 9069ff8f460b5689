"""The order blocks act in, and the arrays a sweep over them writes."""


def application_order(n_steps, transpose):
    """Indices in the order they act on X: H = P_1 ... P_N applies P_N first."""
    return range(n_steps) if transpose else range(n_steps - 1, -1, -1)


def chain(x, order, update):
    """``x`` after ``x <- x - update(j, x)`` for each ``j`` in ``order``.

    The first step allocates the (broadcast) result; later steps update it in
    place. ``x`` itself is never written.
    """
    out = None
    for j in order:
        step = update(j, x if out is None else out)
        if out is None:
            out = x - step
        else:
            out -= step
    return out


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


def writable(x, batch, xp):
    """A new array of shape ``batch + x.shape[-2:]`` holding ``x`` (broadcast). O(size)."""
    out = xp.empty(tuple(batch) + x.shape[-2:], dtype=x.dtype)
    out[...] = x
    return out
