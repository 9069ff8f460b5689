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

from ._backend import COMPLEX_DTYPES, astype, creation_kwargs, numpy_dtype


def is_complex(dtype):
    """True for complex64 and complex128 (a dtype of any library)."""
    return numpy_dtype(dtype).kind == "c"


def real_dtype(dtype):
    """The real dtype of the parts of ``dtype``: complex64 -> float32, complex128 -> float64; reals stay.
    A dtype of another library gives that library's dtype (``torch.complex64`` -> ``torch.float32``)."""
    try:
        dtype = numpy.dtype(dtype)
    except TypeError:  # torch.complex64, ...: the same name's parts in that library
        return _partner(dtype, real_dtype)
    return numpy.dtype(dtype.char.lower()) if dtype in COMPLEX_DTYPES else dtype


def _partner(dtype, mapping):
    """``mapping`` of a dtype of another library (torch, array_api_strict), as that library's dtype:
    looked up by name on the module that defines the dtype object."""
    import sys

    name = numpy.dtype(mapping(numpy_dtype(dtype))).name
    module = sys.modules[type(dtype).__module__.split(".")[0]]
    return getattr(module, name)


def complex_dtype(dtype):
    """The complex dtype with parts of ``dtype``: float32 -> complex64, float64 -> complex128 (a dtype of
    another library gives that library's dtype)."""
    try:
        return numpy.result_type(numpy.dtype(dtype), numpy.complex64)
    except TypeError:
        return _partner(dtype, complex_dtype)


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
    if r.shape[-1] == 0:  # no columns: array_api_strict refuses the slice 1::2 of an empty axis
        return _join(r, r, xp)
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
    reflection). Array API operations only (the generic path runs it too). O(n d).
    """
    n, d = v.shape[-2:]
    kwargs = creation_kwargs(v)
    diagonal = xp.arange(n, **kwargs)[:, None] == xp.arange(d, **kwargs)[None, :]
    pivot = xp.sum(xp.where(diagonal, v, xp.zeros_like(v)), axis=-1)
    size = xp.abs(pivot)
    nonzero = size > 0
    c = xp.where(nonzero, xp.conj(pivot) / xp.where(nonzero, size, xp.ones_like(size)), xp.ones_like(pivot))
    turned = xp.where(diagonal, astype(size, v.dtype, xp)[..., None], c[..., None] * v)
    q = 1j * c
    re, im = xp.real(turned), xp.imag(turned)
    if phase is None:  # realify(-c v)
        p = -c
        first = (-re, -im)
    else:  # realify(i sqrt(lambda) c v)
        root = xp.sqrt(astype(phase, v.dtype, xp))
        p = q * root
        rotated = (1j * root)[..., None] * turned
        first = (xp.real(rotated), xp.imag(rotated))
    second = (-im, re)  # realify(i c v)
    rows = xp.stack([xp.stack(first, axis=-1), xp.stack(second, axis=-1)], axis=-3)  # (..., n, 2, d, 2)
    return xp.reshape(rows, v.shape[:-2] + (2 * n, 2 * d)), p, q


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
