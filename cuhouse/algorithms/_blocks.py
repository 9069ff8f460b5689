"""Splitting reflections into blocks of k rows."""


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


def merge(blocks, n):
    """Inverse of :func:`split`: ``(..., nb, k, d)`` back to ``(..., n, d)``."""
    nb, k, d = blocks.shape[-3:]
    return blocks.reshape(blocks.shape[:-3] + (nb * k, d))[..., :n, :]


def swap(a, xp):
    """Transpose of the last two axes (a view)."""
    return xp.swapaxes(a, -1, -2)


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


def application_order(n_steps, transpose):
    """Indices in the order they act on X: H = P_1 ... P_N applies P_N first."""
    return range(n_steps) if transpose else range(n_steps - 1, -1, -1)
