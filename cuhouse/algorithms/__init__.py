"""One module per algorithm, each written once against the array module ``xp``.

Every module offers the same three functions on reflection vectors ``V`` of
shape ``(..., n, d)``, not necessarily normalized (zero rows are identity
factors), stored in one of the layouts of :mod:`._blocks` (``"full"``,
``"trapezoidal"``, ``"unit"``: LAPACK's, read through ``a^T``):

``build(V, block_size, xp, layout="full", identity=None) -> factors``
    whatever the algorithm precomputes for H = H(v_1) ... H(v_n);
    ``identity`` ``(..., n)`` optionally marks identity factors (``tau == 0``);
``apply(factors, X, transpose, xp) -> out``
    ``H @ X`` (or ``H.T @ X``) for ``X`` of shape ``(..., d, m)``, broadcasting
    batch dimensions like ``numpy.matmul``; ``X`` is never written to;
``backward(factors, out, dout, transpose, xp, store_inputs=False) -> (dV, dX)``
    the adjoint of ``apply`` given its output ``out``: gradients with respect to
    the stored entries of ``V`` ``(..., n, d)`` (unreduced over X's batch
    dimensions; zero where the layout stores nothing, for identity factors and
    for zero rows; each row orthogonal to its vector, since H does not change
    when a vector is scaled) and to ``X`` (shaped like ``out``). ``out`` and
    ``dout`` are never written to. ``store_inputs`` (from the
    :class:`cuhouse.plan.Plan`) keeps each block's input instead of
    recomputing it, where the algorithm offers that choice.

The algorithms know nothing about the classes that use them.
"""

from . import cwy, dense, fasth, ormqr, sequential

ALGORITHMS = {
    "sequential": sequential,
    "fasth": fasth,
    "cwy": cwy,
    "dense": dense,
}

PLANS = dict(ALGORITHMS, ormqr=ormqr)
"""Every plan's module: the algorithms, and LAPACK's ``?ormqr`` (:mod:`.ormqr`: forward only, NumPy,
LAPACK's layout, no batch), which the cost model may pick but which is no algorithm to choose by name."""
