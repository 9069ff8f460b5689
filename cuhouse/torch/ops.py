"""Products with Householder and SVD matrices for torch tensors, in torch operations only.

Everything here is a composition of one primitive, :func:`cuhouse._torch.matmul`
(compact WY with the level-3 backward, see that module): no tensor crosses
to NumPy or CuPy, so every device torch runs on works, and ``torch.func``
(vmap, grad, jacrev), ``torch.compile(fullgraph=True)``, ``torch.export``
and gradients of any order (``create_graph=True``, ``gradgradcheck``) see
plain torch operations.
"""

from __future__ import annotations

import math

import array_api_compat.torch as xp
import torch

from .. import _torch
from .._backend import functorch_wrapped
from .._shapes import matmul_shape
from ..algorithms import _scaling

FLOAT_DTYPES = (torch.float32, torch.float64)
DTYPES = FLOAT_DTYPES + (torch.complex64, torch.complex128)


def householder_matmul(
    vectors: torch.Tensor, X: torch.Tensor, transpose: bool = False, *, check_finite: bool = True
) -> torch.Tensor:
    """``H @ X`` with H = H(v_1) ... H(v_n) the Householder product of the rows of ``vectors``.

    ``vectors`` ``(..., n, d)`` with 1 <= n <= d (rows need not be unit),
    ``X`` ``(..., d, m)`` or ``(d,)``; batch dimensions broadcast as in
    ``torch.matmul``. ``transpose=True`` gives ``H.T @ X`` (the reversed
    product, H's inverse; ``H^H @ X`` for complex vectors, H(v) = I - 2 v v^H / (v^H v)
    being unitary). float32, float64, complex64 or complex128 tensors on one
    device (any device torch supports); mixed dtypes promote as ``torch.matmul``.
    Differentiable with respect to both ``vectors`` (the raw rows) and ``X``,
    to any order (complex gradients in torch's convention); composes with
    ``torch.func.vmap``, ``grad`` and ``jacrev``.

    ``check_finite`` (eager calls on plain tensors only: never under
    ``torch.compile``, ``torch.export`` or a ``torch.func`` transform) checks
    that every row is finite and nonzero, a ``ValueError`` otherwise, at the
    price of one pass over the rows and one host synchronization on a device
    (a second only to refuse a zero row or an infinite entry, or where a valid
    row's sum of squares under- or overflows: see :func:`check_rows`); the same
    read tells whether every row's norm and every column's largest entry of X lie in
    ``[2^-16, 2^16]``, where the product skips the scalings of the rows and X
    (see ``cuhouse._torch.matmul``'s ``ranged``). ``False`` skips it (a zero row then
    acts as the identity factor). Cost: O(n d m) forward as GEMMs in blocks of k reflections
    (``cuhouse._torch.default_block_size``: 64, or 128 when X has at least d/2 columns) plus
    O(n k d) for their T factors; backward about three times
    the forward. No d x d matrix is formed.
    """
    check(vectors, X)
    ranged = False
    if check_finite and _readable(vectors):
        ranged = check_rows(vectors, "vectors", X if _readable(X) else None)
    return _left(vectors, X, transpose, ranged=ranged)


def _left(vectors, x, transpose, trapezoidal=False, ranged=False):
    """``H @ x`` (``H^T @ x``; ``H^H @ x`` when complex) after :func:`check`: dtype promotion,
    ``(d,)`` as ``(d, 1)``, complex data realified (:func:`_complex_left`) (``trapezoidal`` and
    ``ranged``: see :func:`cuhouse._torch.matmul`)."""
    dtype = torch.promote_types(vectors.dtype, x.dtype)
    x = x.to(dtype)
    if x.dim() == 1:
        return _left(vectors, x[:, None], transpose, trapezoidal, ranged)[..., 0]
    if dtype.is_complex:
        return _complex_left(vectors, x, transpose, trapezoidal)
    return _torch.matmul(vectors.to(dtype), x, transpose, trapezoidal=trapezoidal, ranged=ranged)


def _complex_left(vectors, x, transpose, trapezoidal):
    """``H @ x`` (``H^H @ x``) for complex ``x`` ``(..., d, m)``, as :mod:`cuhouse._complex` does it.

    Complex vectors: each H(v) = I - 2 v v^H / (v^H v) is, on R^{2d} with the parts of each entry
    interleaved, the product of the two commuting real reflections of realify(-v) and realify(i v),
    so the real compact WY runs on those ``(..., 2n, 2d)`` rows and the realified ``(..., 2d, m)`` x
    (full rows: realify(i v) is trapezoidal only where v's entry i is real). Real vectors multiply
    the real and imaginary parts of x, ``(..., d, 2m)``. Differentiable torch operations
    throughout (torch's complex autograd: dL/dRe + i dL/dIm), to any order. Cost: the real
    product's flops (those of native complex arithmetic) plus a copy of x and of the result.
    """
    parts = torch.view_as_real(x)  # (..., d, m, 2)
    d, m = x.shape[-2:]
    if not vectors.is_complex():
        out = _torch.matmul(
            vectors.to(parts.dtype), parts.reshape(x.shape[:-1] + (2 * m,)), transpose, trapezoidal=trapezoidal
        )
        return torch.view_as_complex(out.reshape(out.shape[:-1] + (m, 2)).contiguous())
    vectors = vectors.to(x.dtype)
    if trapezoidal:  # entries before i are not read: zero them, as the full rows below read everything
        vectors = vectors.triu()
    n = vectors.shape[-2]
    rows = torch.stack([torch.view_as_real(-vectors), torch.view_as_real(1j * vectors)], dim=-3)
    rows = rows.reshape(vectors.shape[:-2] + (2 * n, 2 * d))
    out = _torch.matmul(rows, parts.transpose(-1, -2).reshape(x.shape[:-2] + (2 * d, m)), transpose)
    return torch.view_as_complex(out.reshape(out.shape[:-2] + (d, 2, m)).transpose(-1, -2).contiguous())


def svd_matmul(u_vectors, s, v_vectors, x, transpose=False):
    """``W @ x`` (``W^T @ x``) for W = U[:, :r] diag(s) V[:, :r]^T ``(d_out, d_in)`` and ``x`` ``(..., d_in, m)``.

    ``u_vectors`` ``(..., r, d_out)``, ``s`` ``(..., r)``, ``v_vectors``
    ``(..., r, d_in)`` with r <= min(d_out, d_in): V^T x, its first r rows
    scaled by s, padded with zeros to d_out rows, then U @ that. Validated by
    the caller. Cost: O((d_in + d_out) r m).
    """
    if transpose:
        u_vectors, v_vectors = v_vectors, u_vectors
    r, d_out = u_vectors.shape[-2:]
    z = _left(v_vectors, x, True)[..., :r, :] * s[..., :, None]
    if d_out > r:
        z = torch.cat([z, z.new_zeros(z.shape[:-2] + (d_out - r, z.shape[-1]))], dim=-2)
    return _left(u_vectors, z, False)


# ------------------------------------------------------------------ checks
def _readable(t):
    """True where the values of ``t`` may be read on the host for a check: a plain tensor (not a
    subclass, not on the meta device) outside ``torch.compile``, ``torch.export`` and ``torch.func``.
    Per tensor, unlike :func:`cuhouse._torch.eager` (which Function form applies): a plain tensor
    closed over inside a transform is read, and where this torch lacks the private probe the
    check runs anyway (a transform's wrapper then raises rather than skipping the check)."""
    return (
        type(t) in (torch.Tensor, torch.nn.Parameter)
        and not torch.compiler.is_compiling()
        and not torch.compiler.is_exporting()
        and not functorch_wrapped(t, unknown=False)  # without the probe, a wrapper's check raises
        and t.device.type != "meta"
    )


def check_rows(vectors, name, x=None):
    """``ValueError`` unless every row of ``vectors`` ``(..., n, d)`` is finite and nonzero; returns
    whether every row's norm, and every column's largest absolute entry of the real ``x``
    ``(..., d, m)`` or ``(d,)`` (if given), lies in ``[1 / RANGE, RANGE]``
    (:data:`cuhouse._torch.RANGE`: the product may then skip the scalings, ``ranged`` in
    :func:`cuhouse._torch.matmul`; a zero column of x answers False). One reading pass over the
    rows (their norms) and one host sync, which reads the smallest and largest norm (and
    column size) and so decides both questions: norms in ``(0, inf)`` are finite nonzero rows,
    a NaN norm is a NaN entry (the ``ValueError`` at once). Only where a norm is 0 or infinite
    (a zero row or an infinite entry, the ``ValueError``; or a valid row whose sum of squares
    underflows or overflows: in float32 every entry below 2^-75 in magnitude, or a norm above
    2^64; in float64 2^-538 and 2^512) a second sync reads the rows' largest entries (of each
    part when complex). Tiny and huge rows are fine: the products scale each row to its binade."""
    detached = vectors.detach()
    norms = torch.linalg.vector_norm(detached, dim=-1).flatten()  # real, also for complex rows
    real = x is not None and not x.is_complex() and not vectors.is_complex()
    sizes = _largest(x.detach(), -2 if x.dim() > 1 else -1).flatten() if real else None
    read = [t for t in (norms, sizes) if t is not None and t.numel()]
    if not read:  # no rows, and no column of x: nothing to check
        return sizes is not None
    values = torch.stack([value for t in read for value in torch.aminmax(t)]).tolist()  # the one host sync
    if norms.numel():
        smallest, largest = values[:2]
        if math.isnan(smallest) or math.isnan(largest):
            raise ValueError("{} must be finite; found NaN or Inf".format(name))
        if not 0 < smallest <= largest < math.inf:
            _refuse_zero_or_infinite(detached, name)
            return False
    return sizes is not None and all(1 / _torch.RANGE <= value <= _torch.RANGE for value in values)


def _refuse_zero_or_infinite(rows, name):
    """``ValueError`` where a row of ``rows`` ``(..., n, d)`` (detached) has an infinite entry or
    no nonzero one; nothing where every row is finite and nonzero (its norm under- or overflowed).
    A host sync (two more before a ``ValueError``) and the rows' largest entries: O(n d)."""
    parts = torch.view_as_real(rows).flatten(-2) if rows.is_complex() else rows
    largest = _largest(parts, -1)
    good = (largest > 0) & (largest < math.inf)  # False for Inf and zero rows
    if not bool(good.all()):
        if not bool(torch.isfinite(rows).all()):
            raise ValueError("{} must be finite; found NaN or Inf".format(name))
        row = int((~good).nonzero()[0, -1])
        raise ValueError("{}: row {} is a zero vector, which makes no reflection".format(name, row))


def _largest(t, dim):
    """The largest absolute values of a real ``t`` along ``dim``: ``|t|`` and its maximum for up to
    2^16 entries (two calls), else the maximum and minimum (two reading passes, no temporary)."""
    if t.numel() <= 2**16:
        return t.abs().amax(dim)
    return _scaling.largest_magnitudes(t, dim, xp).squeeze(dim)


def check(vectors, x):
    """``TypeError``/``ValueError`` naming the argument unless ``householder_matmul(vectors, x)`` is defined.

    Reads only the tensors' metadata (no synchronization)."""
    for t, name in ((vectors, "vectors"), (x, "X")):
        if not isinstance(t, torch.Tensor):
            raise TypeError("{} must be a torch.Tensor, got {}".format(name, type(t).__name__))
        if t.dtype not in DTYPES:
            raise TypeError(
                "{} has dtype {}; supported dtypes are torch.float32, torch.float64, torch.complex64 and "
                "torch.complex128".format(name, t.dtype)
            )
    if vectors.device != x.device:
        raise TypeError(
            "X is on {} but vectors is on {}; cuhouse copies nothing between devices: move one with .to(device)".format(
                x.device, vectors.device
            )
        )
    if vectors.dim() < 2:
        raise ValueError(
            "vectors must have shape (..., n, d) with one vector per row, got shape {}".format(tuple(vectors.shape))
        )
    n, d = vectors.shape[-2:]
    if not 1 <= n <= d:
        raise ValueError(
            "vectors must have shape (..., n, d) with 1 <= n <= d, got shape {} (n={}, d={})".format(
                tuple(vectors.shape), n, d
            )
        )
    matmul_shape(tuple(vectors.shape[:-2]) + (d, d), tuple(x.shape), "left", "the operator", "X")
