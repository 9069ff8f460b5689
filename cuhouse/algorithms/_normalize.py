"""Unit rows and the gradient back to raw rows, for the algorithms that normalize first
(``sequential``, ``fasth``) and for rows whose squares would leave the dtype's range."""

from .._gpu import primitives as _primitives
from ._layout import full_rows


def unit_rows(y, layout, identity, xp, norms=None):
    """``(unit, norms)``: the full rows normalized, identity factors as zero rows. O(n d).

    ``norms`` (optional, nonzero): the full rows' norms as :func:`cuhouse._gpu.primitives.row_norms`
    gives them, when the caller has them (then they are not computed again: the same bits)."""
    v = full_rows(y, layout, xp)
    if identity is not None:
        v = xp.where(identity[..., None], 0, v)
    if norms is not None:
        return _primitives.normalize_rows(v, norms, xp), norms
    unit, norms = _primitives.unit_rows(v, xp)
    return unit, norms


def raw_gradient(dunit, unit, norms, xp):
    """The gradient w.r.t. raw rows from the one w.r.t. their unit rows: ``(I - y y^T) g / ||v||``.

    Zero rows (identity factors) get zero. ``dunit`` is overwritten. O(n d).
    """
    radial = xp.einsum("...i,...i->...", unit, dunit)
    dunit -= unit * radial[..., None]
    dunit /= xp.where(norms == 0, 1, norms)[..., None]
    return dunit
