"""One module per algorithm, each written once against the array module ``xp``.

Every module offers the same three functions on reflection vectors ``V`` of
shape ``(..., n, d)``, not necessarily normalized (zero rows are identity
factors), stored in one of the layouts of :mod:`._layout` (``"full"``,
``"trapezoidal"``, ``"unit"``: LAPACK's, read through ``a^T``):

``build(V, block_size, xp, layout="full", identity=None) -> form``
    the algorithm's form of H = H(v_1) ... H(v_n), what it precomputes (a
    namedtuple ``Form``: per-block T matrices, W blocks, unit rows or the dense
    H); ``identity`` ``(..., n)`` optionally marks identity factors (``tau == 0``);
``apply(form, X, transpose, xp) -> out``
    ``H @ X`` (or ``H.T @ X``) for ``X`` of shape ``(..., d, m)``, broadcasting
    batch dimensions like ``numpy.matmul``; ``X`` is never written to;
``backward(form, out, dout, transpose, xp, store_inputs=False) -> (dV, dX)``
    the adjoint of ``apply`` given its output ``out``: gradients with respect to
    the stored entries of ``V`` ``(..., n, d)`` (unreduced over X's batch
    dimensions; zero where the layout stores nothing, for identity factors and
    for zero rows) and to ``X`` (shaped like ``out``). In the ``"full"`` and
    ``"trapezoidal"`` layouts each row of dV is orthogonal to its vector, since
    H does not change when a vector is scaled; in the ``"unit"`` layout it is
    not (the implicit 1 is fixed, so scaling is no direction of the stored
    entries). ``out`` and ``dout`` are never written to. ``store_inputs`` (from
    the :class:`cuhouse.plan.Plan`) keeps each block's input instead of
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
