"""Complex data on the real algorithms: the realification of unitary products.

A complex Householder reflection H(v) = I - 2 v v^H / (v^H v) acts on C^d,
which is R^{2d} with the entries of a complex vector interleaved as
``(Re x_0, Im x_0, Re x_1, Im x_1, ...)`` (:func:`realify_columns`). There it
is the product of two commuting real reflections,

    H(v) = H(u) H(w),   u = realify(c v),   w = realify(i c v),

for any complex unit c: u and w are orthogonal, have the norm of v, and
``u u^T + w w^T`` is the realification of ``v v^H``. LAPACK's generalized
reflection I - tau v v^H (complex tau, |1 - tau v^H v| = 1) multiplies the
complex line of v by the unit number lambda = 1 - tau v^H v and fixes its
orthogonal complement: in R^{2d} a rotation by arg(lambda) in the plane of u
and w, which is again a product of two real reflections,

    I - tau v v^H = H(realify(i sqrt(lambda) c v)) H(realify(i c v)),

(lambda = -1 gives back H(v)). So a unitary product of n factors is a real
orthogonal product of 2n reflections in 2d dimensions (:func:`pair_rows`),
every algorithm runs on it unchanged (the raw GPU kernels included, which
stay real-only), and its flop count is that of native complex arithmetic:
one complex multiply-add is four real ones. c is chosen so that the entry of
v at the reflector's own index becomes real: a trapezoidal (or LAPACK) array
of reflectors then stays trapezoidal in R^{2d}, with its halved flops.

Gradients follow torch's convention for complex tensors: for
L = Re(sum(conj(G) * out)) the gradient of a complex z is
dL/dRe(z) + i dL/dIm(z), the direction of steepest ascent, so that
``z -= lr * grad`` descends. Realification is a real-linear isometry
(``Re <a, b> = realify(a) . realify(b)``), so the real algorithms' gradients
are these gradients, interleaved; :func:`pair_gradient` takes them back to
the complex vectors. A real array that meets complex data gets the real part.

Every function here is written against the array module ``xp``.
"""

import numpy

from ._backend import COMPLEX_DTYPES, numpy_dtype


def is_complex(dtype):
    """True for complex64 and complex128 (a dtype of any library)."""
    return numpy_dtype(dtype).kind == "c"


def real_dtype(dtype):
    """The real dtype of the parts of ``dtype``: complex64 -> float32, complex128 -> float64; reals stay
    (a real dtype of another library included)."""
    try:
        dtype = numpy.dtype(dtype)
    except TypeError:  # torch.float32, ...: the generic path is real
        return dtype
    return numpy.dtype(dtype.char.lower()) if dtype in COMPLEX_DTYPES else dtype


def complex_dtype(dtype):
    """The complex dtype with parts of ``dtype``: float32 -> complex64, float64 -> complex128."""
    return numpy.result_type(dtype, numpy.complex64)


def realify_columns(c, xp):
    """``c`` ``(..., d, m)`` complex (or real) as ``(..., 2d, m)`` real, each entry's parts interleaved
    along the rows. One copy."""
    stacked = xp.stack([xp.real(c), xp.imag(c)], axis=-2)
    return xp.reshape(stacked, c.shape[:-2] + (2 * c.shape[-2], c.shape[-1]))


def complexify_columns(r, xp):
    """Inverse of :func:`realify_columns`: ``(..., 2d, m)`` real as ``(..., d, m)`` complex. One copy."""
    return _join(r[..., 0::2, :], r[..., 1::2, :], xp)


def split_columns(c, xp):
    """``c`` ``(..., d, m)`` complex as ``(..., d, 2m)`` real, real and imaginary parts interleaved along
    the columns: what a real matrix multiplies part by part. One copy."""
    stacked = xp.stack([xp.real(c), xp.imag(c)], axis=-1)
    return xp.reshape(stacked, c.shape[:-1] + (2 * c.shape[-1],))


def join_columns(r, xp):
    """Inverse of :func:`split_columns`. One copy."""
    return _join(r[..., 0::2], r[..., 1::2], xp)


def _join(re, im, xp):
    return re + 1j * im


def realify_rows(v, xp):
    """Complex rows ``(..., n, d)`` as real rows ``(..., n, 2d)``, parts interleaved. One copy."""
    stacked = xp.stack([xp.real(v), xp.imag(v)], axis=-1)
    return xp.reshape(stacked, v.shape[:-1] + (2 * v.shape[-1],))


def complexify_rows(g, xp):
    """Inverse of :func:`realify_rows`."""
    return _join(g[..., 0::2], g[..., 1::2], xp)


def pair_rows(v, phase, xp):
    """``(rows, p, q)``: the real reflection rows ``(..., 2n, 2d)`` of complex factors ``v`` ``(..., n, d)``
    in product order, and the complex units ``p``, ``q`` ``(..., n)`` with rows 2i and 2i+1
    equal to ``realify(p_i v_i)`` and ``realify(q_i v_i)`` (see the module docstring).

    ``phase`` ``(..., n)`` holds each factor's eigenvalue lambda (a unit complex
    number) on its vector, or is ``None`` for reflections (lambda = -1).
    ``q = i c`` with c the unit that makes ``v_i``'s entry i real (1 where that
    entry is zero), written in exactly so that trapezoidal rows stay
    trapezoidal; ``p = i sqrt(lambda) c`` (principal root; ``-c`` for a
    reflection). O(n d).
    """
    n = v.shape[-2]
    idx = xp.arange(n)
    pivot = v[..., idx, idx]
    size = xp.abs(pivot)
    cdtype = complex_dtype(size.dtype)
    c = xp.where(size > 0, xp.conj(pivot) / xp.where(size > 0, size, 1), 1).astype(cdtype)
    turned = c[..., None] * v
    turned[..., idx, idx] = size
    q = 1j * c
    rows = xp.empty(v.shape[:-2] + (n, 2, v.shape[-1], 2), dtype=size.dtype)
    re, im = xp.real(turned), xp.imag(turned)
    if phase is None:  # realify(-c v)
        p = -c
        rows[..., 0, :, 0] = -re
        rows[..., 0, :, 1] = -im
    else:  # realify(i sqrt(lambda) c v)
        root = xp.sqrt(phase.astype(cdtype))
        p = q * root
        first = (1j * root)[..., None] * turned
        rows[..., 0, :, 0] = xp.real(first)
        rows[..., 0, :, 1] = xp.imag(first)
    rows[..., 1, :, 0] = -im  # realify(i c v)
    rows[..., 1, :, 1] = re
    return xp.reshape(rows, v.shape[:-2] + (2 * n, 2 * v.shape[-1])), p, q


def pair_gradient(g, p, q, xp):
    """The gradient w.r.t. ``v`` ``(..., n, d)`` from the one w.r.t. :func:`pair_rows` ``(..., 2n, 2d)``
    (torch's convention): ``conj(p) g_{2i} + conj(q) g_{2i+1}``, complexified. The units
    ``c`` inside ``p`` and ``q`` depend on ``v``, but the product does not depend on
    ``c``, so they are held fixed. O(n d)."""
    first = complexify_rows(g[..., 0::2, :], xp)
    second = complexify_rows(g[..., 1::2, :], xp)
    return xp.conj(p)[..., None] * first + xp.conj(q)[..., None] * second


def squared_norms(v, xp):
    """``sum |v_ij|^2`` over the last axis, real. O(size)."""
    return xp.sum(xp.real(v) ** 2 + xp.imag(v) ** 2, axis=-1)
