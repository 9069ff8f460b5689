"""One module per algorithm, each written once against the array module ``xp``.

Every module offers the same three functions on *unit* vectors ``Y`` of shape
``(..., n, d)`` (zero rows are identity factors):

``build(Y, block_size, xp) -> factors``
    whatever the algorithm precomputes for H = H(y_1) ... H(y_n);
``apply(factors, X, transpose, xp) -> out``
    ``H @ X`` (or ``H.T @ X``) for ``X`` of shape ``(..., d, m)``, broadcasting
    batch dimensions like ``numpy.matmul``; ``X`` is never written to;
``backward(factors, out, dout, transpose, xp, store_inputs=False) -> (dY, dX)``
    the adjoint of ``apply`` given its output ``out``: gradients with respect to
    the unit vectors ``Y`` (unreduced over X's batch dimensions; the blocked
    algorithms return one row per block row, and the rows past n, which belong
    to block padding, are zero) and to ``X`` (shaped like ``out``). Zero rows
    of ``Y`` get zero gradient; ``out`` and ``dout`` are never written to.
    ``store_inputs`` (from the :class:`cuhouse.plan.Plan`) keeps each block's
    input instead of recomputing it, where the algorithm offers that choice.

The algorithms know nothing about the classes that use them.
"""
from . import cwy, dense, fasth, sequential

ALGORITHMS = {
    "sequential": sequential,
    "fasth": fasth,
    "cwy": cwy,
    "dense": dense,
}
