"""The generic path of :class:`cuhouse.householder.Reflections`, for any Array API library.

NumPy and CuPy read their reflections in place in their stored layout (see
:mod:`cuhouse.algorithms._blocks`); every other library (torch,
array_api_strict, ...) runs :mod:`cuhouse.algorithms.portable` on full rows
built here with standard operations only: no in-place update, no host
synchronization, so torch autograd and ``torch.func`` go through it.

* :func:`row_norms`: overflow-safe norms, for validation;
* :func:`read_geqrf`: ``from_lapack``'s checks on ``geqrf`` output;
* :func:`rows`, :func:`row_scale`, :func:`form`: the rows of every segment
  as full rows, scaled into the safe range (a row's scale does not change
  its reflection), and their form (:mod:`cuhouse.algorithms.portable`); on
  torch, when a gradient is recorded, the scaled rows go to
  :func:`cuhouse._torch.matmul` instead;
* :func:`contributions`: the gradient with respect to those rows taken back
  to the leaf arrays (strictly lower part of a ``geqrf`` array);
* :func:`segment_parts`: a gradient w.r.t. joined rows split back by segment
  (every path's ``contributions`` uses it).
"""

import math

import numpy

from . import _complex, _validate
from ._backend import astype, device_of, numpy_dtype, result_type
from ._shapes import geqrf_shape
from .algorithms import portable


def _strict_upper(rows, cols, xp, device):
    """Mask ``(rows, cols)``: True where column > row."""
    return xp.arange(rows, device=device)[:, None] < xp.arange(cols, device=device)[None, :]


def row_norms(v, xp):
    """Euclidean norms ``(..., n)`` of the rows of ``v``, without spurious overflow or underflow:
    each row is divided by its largest magnitude first (not a zero or infinite one: inf / inf would be
    an invalid operation; such a row's norm is 0 or inf). Cost: two passes over ``v``."""
    biggest = xp.max(xp.abs(v), axis=-1)
    safe = xp.where((biggest == 0) | xp.isinf(biggest), xp.ones_like(biggest), biggest)
    scaled = v / safe[..., None]
    return xp.sqrt(xp.sum(scaled * scaled, axis=-1)) * safe


def read_geqrf(a, tau, xp, check_finite):
    """``(a, k, identity, dtype, phase)`` for ``from_lapack`` on the generic path: the same checks and
    messages as :func:`cuhouse._geqrf.read_geqrf`, in one host synchronization (none with
    ``check_finite=False``, which also skips the check of ``tau``'s values). ``phase`` is each complex
    factor's eigenvalue ``1 - tau_i v_i^H v_i`` ``(..., k)``, normalized (``None`` for real input)."""
    a = _validate.as_array(a, "a", xp)
    device = device_of(a)
    tau = _validate.as_array(tau, "tau", xp, device)
    k = geqrf_shape(a.shape, tau.shape)
    rows = a.shape[-2]
    dtype = _validate.float_dtype(result_type(xp, a.dtype, tau.dtype), xp)
    unitary = _complex.is_complex(dtype)
    a = astype(a, dtype if unitary else _validate.float_dtype(a.dtype, xp), xp)
    identity = tau == 0
    stored = xp.where(_strict_upper(k, rows, xp, device), a[..., :k].mT, xp.zeros_like(a[..., :k].mT))
    sumsq = 1 + (_complex.squared_norms(stored, xp) if unitary else xp.sum(stored * stored, axis=-1))
    phase = None
    if unitary:
        eigenvalue = 1 - tau * astype(sumsq, dtype, xp)
        size = xp.abs(eigenvalue)
        one = xp.ones_like(eigenvalue)
        phase = xp.where(identity, one, eigenvalue / astype(xp.where(size > 0, size, xp.ones_like(size)), dtype, xp))
    if check_finite:
        tol = 1e3 * max(float(numpy.finfo(numpy_dtype(t)).eps) for t in (a.dtype, tau.dtype))
        finite = xp.all(xp.isfinite(tau)) & xp.all(xp.isfinite(sumsq))
        if unitary:
            close = xp.all(xp.abs(size - 1) <= tol * (1 + xp.abs(tau) * sumsq))
        else:
            expected = xp.where(identity, xp.zeros_like(sumsq), 2 / sumsq)
            close = xp.all(xp.abs(tau - expected) <= tol * xp.abs(expected) + tol)
        if not bool(finite & close):  # the one synchronization; the message needs one more
            if not bool(finite):
                raise ValueError("a and tau must be finite; found NaN or Inf")
            if unitary:
                raise ValueError(
                    "tau must make unitary factors I - tau v v^H, that is |1 - tau v^H v| = 1 for each "
                    "reflector v of a, as LAPACK's complex geqrf returns; got values that do not"
                )
            raise ValueError(
                "tau must be 0 or 2 / (v^T v) for each reflector v of a, as LAPACK's real "
                "geqrf returns; got values that do not make orthogonal reflectors"
            )
    if identity.shape[:-1] != a.shape[:-2]:  # the batch of a and tau broadcast, as in numpy.matmul
        identity = xp.broadcast_to(identity, numpy.broadcast_shapes(a.shape[:-2], identity.shape[:-1]) + (k,))
    return a, k, identity, dtype, phase


def full_rows(leaf, segment, dtype, xp):
    """The rows of one segment as full rows ``(..., n, d)`` in product order, identity factors as zero rows."""
    if segment.k is None:
        rows = leaf
    else:
        stored = leaf[..., : segment.k].mT  # (..., k, M)
        k, d = stored.shape[-2:]
        device = device_of(leaf)
        rows = xp.where(_strict_upper(k, d, xp, device), stored, xp.zeros_like(stored))
        rows = rows + xp.eye(k, d, dtype=rows.dtype, device=device)
        if segment.identity is not None:
            rows = xp.where(segment.identity[..., None], xp.zeros_like(rows), rows)
    rows = astype(rows, dtype, xp)
    return xp.flip(rows, axis=-2) if segment.transpose else rows


def joined(parts, xp):
    """The row stacks ``parts`` ``(..., n_i, d)`` concatenated into ``(..., sum n_i, d)``, batches broadcast."""
    if len(parts) == 1:
        return parts[0]
    batch = numpy.broadcast_shapes(*(tuple(p.shape[:-2]) for p in parts))
    concat = getattr(xp, "concat", None) or xp.concatenate  # NumPy < 2.0 and CuPy name it concatenate
    return concat([xp.broadcast_to(p, batch + tuple(p.shape[-2:])) for p in parts], axis=-2)


def rows(core, dtype):
    """Every reflection of ``core`` as full rows ``(..., n, d)`` in ``dtype``, in product order
    (identity factors as zero rows): standard operations on the leaves, differentiable on torch. O(n d)."""
    return joined([full_rows(core.params[s.param], s, dtype, core.xp) for s in core.segments], core.xp)


def row_scale(rows, xp):
    """The per-row scale ``(..., n)`` that brings ``rows`` ``(..., n, d)`` into the safe range: a row
    whose largest magnitude b leaves ``[sqrt(tiny / eps), sqrt(max eps / d)]`` (where its sum of
    squares could leave the dtype's safe range, since ``b^2 <= sum of squares <= d b^2``; judged
    from b, so that nothing overflows on the way) is divided by b (a reflection does not change when
    its vector is scaled); every other row, and a zero row, gets 1. No host synchronization.
    Cost: two passes over ``rows``.
    """
    info = xp.finfo(rows.dtype)
    low, high = math.sqrt(info.smallest_normal / info.eps), math.sqrt(info.max * info.eps / rows.shape[-1])
    biggest = xp.max(xp.abs(rows), axis=-1)
    unsafe = ((biggest < low) & (biggest > 0)) | (biggest > high)
    return 1 / xp.where(unsafe, biggest, xp.ones_like(biggest))


def form(core, algorithm, block_size, dtype):
    """``(form, scale)``: the :mod:`cuhouse.algorithms.portable` form of every reflection of
    ``core`` in ``dtype`` (:func:`rows`), and the per-row ``scale`` ``(..., n)`` applied first
    (:func:`row_scale`). Cost: O(n d) plus the build.
    """
    full = rows(core, dtype)
    scale = row_scale(full, core.xp)
    return portable.build(full * scale[..., None], block_size, core.xp, algorithm), scale


def segment_parts(dv, segments, params, xp, per_factor=1):
    """``(segment, leaf, part)`` for each segment of ``segments``: its rows of ``dv`` ``(..., N, d)`` (the
    gradient w.r.t. the joined rows, ``per_factor`` rows per factor: 2 for realified complex
    factors), in the leaf's stored order (a transposed run flipped back). Views where the library
    has them. O(number of segments)."""
    start = 0
    for segment in segments:
        leaf = params[segment.param]
        n = per_factor * (leaf.shape[-2] if segment.k is None else segment.k)
        part = dv[..., start : start + n, :]
        start += n
        yield segment, leaf, xp.flip(part, axis=-2) if segment.transpose else part


def contributions(core, dv, scale):
    """``(leaf, gradient)`` pairs from ``dv``, the gradient w.r.t. the scaled rows of :func:`form`.

    The scale counts as a constant: the gradient w.r.t. a row is orthogonal to
    the row (a reflection does not change when its vector is scaled), so this
    is the exact gradient w.r.t. the stored row. A ``geqrf`` leaf gets its
    strictly lower part, zero for identity factors and in its columns past k.
    """
    xp = core.xp
    parts = segment_parts(dv * scale[..., None], core.segments, core.params, xp)
    return [(leaf, to_leaf(part, segment, leaf, xp)) for segment, leaf, part in parts]


def to_leaf(part, segment, leaf, xp):
    """The gradient ``part`` ``(..., n, d)`` w.r.t. one segment's full rows (stored order) as a gradient
    w.r.t. its leaf: itself for a vectors leaf; for a ``geqrf`` leaf ``(..., d, N)`` its strictly lower
    part, transposed, zero for identity factors and in the columns past k. O(n d)."""
    if segment.k is None:
        return part
    n = segment.k
    rows, cols = leaf.shape[-2:]
    part = xp.where(_strict_upper(n, rows, xp, device_of(part)), part, xp.zeros_like(part))
    if segment.identity is not None:
        part = xp.where(segment.identity[..., None], xp.zeros_like(part), part)
    part = part.mT
    if cols > n:
        pad = xp.zeros(part.shape[:-1] + (cols - n,), dtype=part.dtype, device=device_of(part))
        part = xp.concat([part, pad], axis=-1)
    return part
