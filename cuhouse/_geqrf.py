"""Arrays in LAPACK's ``geqrf`` form ``(a, tau)``, for the ``from_*`` constructors.

* :func:`read_geqrf`: ``geqrf`` output checked and read in place (``from_lapack``);
* :func:`geqrf_exact`: a Householder QR of an orthogonal or unitary (or
  orthonormal-column) matrix whose R is the identity, so that the product of
  its reflectors *is* the matrix (``HouseholderProduct.from_dense``);
* :func:`geqrf_signed`: LAPACK's QR of real orthonormal columns, whose R is
  diag(signs), with the signs handed back (the singular vectors and
  eigenvectors of ``SVDMatrix``/``EighMatrix.from_dense``).

Nothing here knows the matrix classes; they call these and build themselves.
"""

import math

import numpy

from . import _complex, _validate
from ._backend import concat, copy, creation_kwargs, is_native, numpy_dtype, swap
from ._shapes import geqrf_shape
from .algorithms import _layout, ormqr


def read_geqrf(a, tau, xp, check_finite):
    """``(a, k, identity, dtype, squared, phase)``, in this order:

    - ``a`` checked (converted only when its dtype or type requires it);
    - ``k``, the number of reflectors;
    - ``identity``, the ``tau == 0`` mask ``(..., k)`` (``None`` when no factor is the
      identity; when ``tau`` has batch dimensions that ``a`` lacks, the mask always, with the
      batch shape of the two broadcast, which is the product's);
    - ``dtype``, the dtype of the product (that of ``a`` and ``tau`` together);
    - ``squared``, the reflectors' squared lengths ``1 + ||v_i||^2`` (their implicit 1 included) as
      read from ``a`` itself, ``(..., k)`` with ``a``'s batch dimensions (not broadcast to ``tau``'s);
    - ``phase``, for complex input each factor's eigenvalue ``(..., k)`` (else ``None``).

    ``a`` ``(..., M, N)`` holds reflector i below the diagonal of column i with
    an implicit 1 on the diagonal; ``tau`` ``(..., k)``, k <= min(M, N). Nothing
    on or above the diagonal is read. Real input: ``tau`` must be 0 or
    ``2 / (v^T v)`` to the precision of the less precise of ``a`` and ``tau``.
    Complex input (LAPACK's ``?geqrf``, H_i = I - tau_i v_i v_i^H, unitary but not
    Hermitian): ``lambda_i = 1 - tau_i v_i^H v_i``, the factor's eigenvalue on
    v_i, must have modulus 1 to that precision; ``phase`` is it, normalized.
    Cost: one pass over the reflectors' stored entries for their norms (no copy
    of real ``a``; complex ``a`` is read through a copy of its reflectors), O(k) for tau.
    """
    a = _validate.as_array(a, "a", xp)
    tau = _validate.as_array(tau, "tau", xp)
    k = geqrf_shape(a.shape, tau.shape)
    dtype = _validate.float_dtype(numpy.result_type(a.dtype, tau.dtype))
    unitary = _complex.is_complex(dtype)
    a = a.astype(dtype if unitary else _validate.float_dtype(a.dtype), copy=False)
    if check_finite and not bool(xp.isfinite(tau).all()):
        raise ValueError("a and tau must be finite; found NaN or Inf")
    identity = tau == 0
    if unitary:
        reflectors = xp.swapaxes(a[..., :k], -1, -2)
        sumsq = 1 + _complex.squared_norms(_layout.structured(reflectors.copy(), _layout.UNIT, xp), xp)
    else:
        sumsq = squared_lengths(a, k, xp)
    if check_finite and not bool(xp.isfinite(sumsq).all()):
        raise ValueError("a and tau must be finite; found NaN or Inf")
    # as accurate as the less precise of a and tau (float32 geqrf output may come with float64 tau)
    tol = 1e3 * max(numpy.finfo(_validate.float_dtype(t)).eps for t in (a.dtype, tau.dtype))
    phase = None
    if unitary:
        eigenvalue = 1 - tau * sumsq
        size = xp.abs(eigenvalue)
        if not bool((xp.abs(size - 1) <= tol * (1 + xp.abs(tau) * sumsq)).all()):
            raise ValueError(
                "tau must make unitary factors I - tau v v^H, that is |1 - tau v^H v| = 1 for each "
                "reflector v of a, as LAPACK's complex geqrf returns; got values that do not"
            )
        phase = xp.where(identity, 1, eigenvalue / xp.where(size > 0, size, 1))
    else:
        expected = xp.where(identity, 0, 2 / sumsq)
        if not bool((xp.abs(tau - expected) <= tol * xp.abs(expected) + tol).all()):
            raise ValueError(
                "tau must be 0 or 2 / (v^T v) for each reflector v of a, as LAPACK's real "
                "geqrf returns; got values that do not make orthogonal reflectors"
            )
    if identity.shape[:-1] != a.shape[:-2]:
        # tau's batch dimensions broadcast with a's as in numpy.matmul: the mask carries the joint batch
        # shape (kept even with no tau == 0), and the reflectors (and their norms) are read broadcast to it
        batch = numpy.broadcast_shapes(a.shape[:-2], identity.shape[:-1]) + (k,)
        return a, k, xp.broadcast_to(identity, batch), dtype, sumsq, phase
    return a, k, (identity if bool(identity.any()) else None), dtype, sumsq, phase


def squared_lengths(a, k, xp):
    """``1 + ||v_i||^2`` ``(..., k)`` of the first ``k`` reflectors of a real ``geqrf`` array ``a``
    ``(..., M, N)`` (NumPy or CuPy), their implicit 1 included, read from ``a`` itself (never from a
    view broadcast to a batch of ``tau``): the one reader of ``from_lapack``'s check and of
    :attr:`Reflections.norms <cuhouse._reflections.Reflections.norms>`, so that the norms have the same
    bits fresh, pickled and refreshed. One NumPy matrix: :func:`cuhouse.algorithms.ormqr.squared_lengths`
    (NaN-safe), as the small path reads it; else
    :func:`cuhouse.algorithms._layout.squared_norms`. One pass over the stored entries."""
    if xp is numpy and a.ndim == 2:
        return ormqr.squared_lengths(a[:, :k], nan_safe=True)
    return 1 + _layout.squared_norms(xp.swapaxes(a[..., :k], -1, -2), _layout.UNIT, xp)


def geqrf_exact(q, xp):
    """``(a, tau)`` in the geqrf form with Q = H(1) ... H(r) [I_r; 0] exactly.

    ``q`` ``(..., d, r)``, r <= d, must have orthonormal columns (an orthogonal,
    or unitary, matrix when r = d): max |Q^H Q - I| <= 50 eps d, else
    ``ValueError``. Each reflector maps its column onto +e_i (LAPACK's
    ``larfgp`` choice, with Parlett's cancellation-free formula), so R is the
    identity and no sign (no phase) is left over; a column already equal to e_i
    gets an identity factor (``tau == 0``). Complex ``q`` gives LAPACK's complex
    reflectors, H_i = I - tau_i v_i v_i^H with complex tau_i. Cost: O(d r^2) in
    r level-2 steps, batched.
    """
    d, r = q.shape[-2:]
    eps = numpy.finfo(numpy_dtype(q.dtype)).eps
    unitary = _complex.is_complex(q.dtype)
    conj = xp.conj if unitary else (lambda x: x)
    gram = conj(swap(q, xp)) @ q
    error = float(xp.max(xp.abs(gram - xp.eye(r, dtype=q.dtype, **creation_kwargs(q))))) if math.prod(q.shape) else 0.0
    if not error <= 50 * eps * d:
        what = ("unitary" if unitary else "orthogonal") if r == d else "orthonormal columns"
        raise ValueError(
            "Q must be {} to within 50 eps d = {:.3g} (max |Q^{} Q - I|), got {:.3g}".format(
                what, 50 * eps * d, "H" if unitary else "T", error
            )
        )
    a = copy(q, xp)
    tau = xp.zeros(q.shape[:-2] + (r,), dtype=q.dtype, **creation_kwargs(q))
    for i in range(r):  # written with whole-array reads and item assignment only: any Array API library
        head = a[..., i, i]
        tail = a[..., i + 1 :, i]
        if unitary:  # x = (alpha, tail) onto beta e_1 with beta = ||x|| > 0: v_1 = alpha - beta, tau = -v_1 / beta
            sigma = _complex.squared_norms(tail, xp)
            re, im = xp.real(head), xp.imag(head)
            norm = xp.sqrt(re * re + im * im + sigma)
            v1 = xp.where(re > 0, -(im * im + sigma) / xp.where(re > 0, re + norm, 1), re - norm) + 1j * im
        else:
            sigma = xp.sum(tail * tail, axis=-1)
            norm = xp.sqrt(head * head + sigma)
            # v = x - ||x|| e_1, scaled to v_1 = 1; v_1 by Parlett's formula when x_1 > 0 (no cancellation)
            v1 = xp.where(head > 0, -sigma / xp.where(head > 0, head + norm, xp.ones_like(head)), head - norm)
        identity = v1 == 0  # x == ||x|| e_1 already
        # arrays, not Python scalars, in where: the Array API before 2024.12 takes no scalar there
        safe = xp.where(identity, xp.ones_like(v1), v1)
        v_tail = xp.where(identity[..., None], xp.zeros_like(tail), tail / safe[..., None])
        if unitary:
            tau_i = xp.where(identity, xp.zeros_like(safe), -safe / norm)
        else:
            tau_i = xp.where(identity, xp.zeros_like(norm), 2 / (1 + xp.sum(v_tail * v_tail, axis=-1)))
        if i + 1 < r:  # apply H_i^H to the trailing columns: A <- A - conj(tau) v (v^H A)
            top, below = a[..., i, i + 1 :], a[..., i + 1 :, i + 1 :]
            w = top + xp.sum(conj(v_tail)[..., :, None] * below, axis=-2)
            step = conj(tau_i)
            a[..., i, i + 1 :] = top - step[..., None] * w
            a[..., i + 1 :, i + 1 :] = below - step[..., None, None] * v_tail[..., :, None] * w[..., None, :]
        a[..., i, i] = norm
        a[..., i + 1 :, i] = v_tail
        tau[..., i] = tau_i
    return a, tau


def geqrf_signed(q, xp):
    """``(a, tau, signs)`` with H(1) ... H(n) [I_r; 0] = q diag(signs), for the
    ``from_dense`` of ``SVDMatrix``/``EighMatrix``.

    LAPACK's QR of the orthonormal ``q`` ``(..., d, r)``: R is diagonal with
    entries +-1 (``signs`` ``(..., r)``, which the caller moves into the
    spectrum) and n = max(1, min(r, d - 1)) reflectors (the last of a full
    d x d QR is the identity). Cost: O(d r^2), blocked.
    """
    d, r = q.shape[-2:]
    if not is_native(xp):  # no LAPACK QR in the standard: the reflections with R = I ...
        a, tau = geqrf_exact(q, xp)
        signs = xp.ones(q.shape[:-2] + (r,), dtype=q.dtype, **creation_kwargs(q))
        if r == d > 1:  # ... whose last, of a square q, is I or diag(1, ..., 1, -1): a sign, as LAPACK's R
            last = xp.where(tau[..., -1:] == 0, signs[..., -1:], -signs[..., -1:])
            return a, tau[..., :-1], concat([signs[..., :-1], last], -1, xp)
        return a, tau, signs
    raw, tau = xp.linalg.qr(q, mode="raw")  # raw is the transposed geqrf form
    a = xp.swapaxes(raw, -1, -2)
    signs = xp.sign(xp.diagonal(a, axis1=-2, axis2=-1)[..., :r])
    return a, tau[..., : max(1, min(r, d - 1))], signs
