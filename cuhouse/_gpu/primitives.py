"""The few operations whose GPU version may be a raw CUDA kernel.

Each function here is written against the array module ``xp`` and is the NumPy
twin of its kernel: this module alone decides, per call, whether a raw kernel
from :mod:`.raw_kernels` runs instead. The GPU tests check that both agree.

On CuPy, float32/float64 input of one dtype goes to the kernel (a
non-contiguous array is first copied, see :mod:`.raw_kernels`); anything else, and
all NumPy input, runs the twin below the dispatch.
"""

import functools
import importlib

import numpy

from . import raw_kernels


def _on_kernel(xp, *arrays):
    """True when ``arrays`` are CuPy arrays a raw kernel takes."""
    return xp is not numpy and raw_kernels.supports(*arrays)


def row_norms(v, xp):
    """Euclidean norms of the rows of ``v`` ``(..., n, d)``, without spurious
    overflow or underflow. Cost: one pass over ``v``; a second, scaled pass
    only for rows whose sum of squares left the safe range (or is NaN/Inf)."""
    if _on_kernel(xp, v):
        return raw_kernels.row_norms(v)
    sumsq = xp.einsum("...i,...i->...", v, v)
    info = numpy.finfo(v.dtype)
    risky = ~(sumsq >= info.tiny / info.eps) | ~(sumsq <= info.max * info.eps)
    if not bool(risky.any()):
        return xp.sqrt(sumsq)
    row_max = xp.abs(v).max(axis=-1)
    safe_max = xp.where(row_max == 0, 1, row_max)[..., None]
    with numpy.errstate(invalid="ignore", over="ignore"):  # Inf rows give NaN/Inf norms, as they should
        scaled = v / safe_max
        robust = xp.sqrt(xp.einsum("...i,...i->...", scaled, scaled)) * safe_max[..., 0]
    return xp.where(risky, robust, xp.sqrt(sumsq))


def normalize_rows(v, norms, xp):
    """``v / ||v||`` row-wise for ``v`` ``(..., n, d)`` and ``norms`` ``(..., n)``.

    A zero row (an identity factor, as LAPACK's ``tau == 0``) stays zero.
    Cost: one pass over ``v``.
    """
    if _on_kernel(xp, v, norms) and norms.shape == v.shape[:-1]:
        return raw_kernels.normalize_rows(v, norms)
    return v / xp.where(norms == 0, 1, norms)[..., None]


def unit_rows(v, xp):
    """``(normalize_rows(v, norms), norms)`` with ``norms = row_norms(v)``, for ``v``
    ``(..., n, d)``. On the GPU both come from one fused pass over ``v``."""
    if _on_kernel(xp, v):
        return raw_kernels.row_norms(v, with_unit=True)
    norms = row_norms(v, xp)
    return normalize_rows(v, norms, xp), norms


# The raw triangular-inverse kernel builds each k x k inverse in shared memory with one
# thread per column, an O(k^2) serial loop each: fast up to this k only. Larger k inverts
# its diagonal blocks of this size with the kernel and joins them by doubling (GEMMs).
KERNEL_INVERSE_MAX_K = raw_kernels.SHARED_INVERSE_MAX_K


def upper_triangular_inverse(s, xp):
    """Inverse of a stack of upper-triangular matrices ``s`` of shape ``(..., k, k)``.

    Only the upper triangle of ``s`` is read; the strictly lower triangle of
    the result is exactly zero. On NumPy: LAPACK ``?trtri``, one call per
    matrix (it measures 5-40x faster than the doubling below for k <= 256 on
    a CPU, where a call costs a microsecond). On CuPy: the raw kernel for the
    whole stack when ``k <= KERNEL_INVERSE_MAX_K``, else the kernel on the
    diagonal blocks of that size (one launch) joined by the doubling below.
    Elsewhere the NumPy twin of the kernel, a level-3 doubling: the diagonal
    blocks of size b, 2b, 4b, ... (b = 1) are inverted together, each level
    joining pairs with ``T12 = -T11 S12 T22`` as one batched GEMM, ``k``
    padded to b times a power of two with identity rows.
    Cost: O(k^3 / 3) flops per matrix (in log2(k / b) batched steps of about
    eight launches for the doubling).
    """
    if _on_kernel(xp, s):
        if s.shape[-1] <= KERNEL_INVERSE_MAX_K:
            return raw_kernels.upper_triangular_inverse(s)
        return _doubling_inverse(s, xp, KERNEL_INVERSE_MAX_K, raw_kernels.upper_triangular_inverse)
    if xp is numpy and s.dtype in (numpy.float32, numpy.float64) and s.size:
        return _lapack_upper_triangular_inverse(s)
    return _doubling_inverse(s, xp, 1, None)


def _doubling_inverse(s, xp, base, invert_base):
    """:func:`upper_triangular_inverse` by doubling from diagonal blocks of size ``base``, inverted
    by ``invert_base`` (``(..., base, base)`` stacks; ``None`` for base 1: reciprocals)."""
    k = s.shape[-1]
    size = base << max(-(-k // base) - 1, 0).bit_length()
    batch = s.shape[:-2]
    if size != k:
        padded = xp.zeros(batch + (size, size), dtype=s.dtype)
        padded[..., :k, :k] = s
        idx = xp.arange(k, size)
        padded[..., idx, idx] = 1
        s = padded
    rows = xp.arange(size)
    if invert_base is None:
        t = (1 / xp.diagonal(s, axis1=-2, axis2=-1))[..., None, None]  # (..., size, 1, 1) blocks
    else:
        r = rows.reshape(size // base, base)
        t = invert_base(s[..., r[:, :, None], r[:, None, :]])  # (..., size / base, base, base)
    b = base
    while b < size:
        pairs = size // (2 * b)
        r = rows.reshape(pairs, 2 * b)
        s12 = s[..., r[:, :b, None], r[:, None, b:]]  # (..., pairs, b, b)
        t11 = t[..., 0::2, :, :]
        t22 = t[..., 1::2, :, :]
        joined = xp.zeros(batch + (pairs, 2 * b, 2 * b), dtype=s.dtype)
        joined[..., :b, :b] = t11
        joined[..., b:, b:] = t22
        joined[..., :b, b:] = -(t11 @ s12) @ t22
        t = joined
        b *= 2
    return t[..., 0, :k, :k]


@functools.lru_cache(maxsize=None)
def _trtri(dtype):
    """SciPy's ``?trtri`` for a real ``dtype``, looked up once (an import statement per call costs 2 us)."""
    from scipy.linalg import lapack

    return lapack.strtri if dtype == numpy.float32 else lapack.dtrtri


def upper_triangular_inverse_in_place(s):
    """:func:`upper_triangular_inverse` of a C-ordered NumPy stack ``s`` ``(nb, k, k)`` of float32/float64
    whose strictly lower triangles are zero, in place (LAPACK ``?trtri`` on each ``s[j]^T``, a
    Fortran-ordered lower triangle): the same bits as :func:`upper_triangular_inverse`, no
    temporaries. Returns ``s``. Cost: O(k^3 / 3) flops and one call per matrix."""
    if not s.flags.c_contiguous or not s.flags.writeable:  # ?trtri would invert a copy and leave s as it was
        raise ValueError(
            "upper_triangular_inverse_in_place needs a writable C-ordered stack, got strides {}".format(s.strides)
        )
    trtri = _trtri(s.dtype)
    # lower, not unit, overwrite_c (positional: keywords cost 0.2 us); one list, no loop body: 7% less a stack
    infos = [trtri(matrix, 1, 0, 1)[1] for matrix in s.transpose(0, 2, 1)]
    if any(infos):
        raise numpy.linalg.LinAlgError(
            "a T matrix of the compact WY form is singular (?trtri info {})".format(next(filter(None, infos)))
        )
    return s


def _lapack_upper_triangular_inverse(s):
    """:func:`upper_triangular_inverse` of a NumPy stack by LAPACK ``?trtri``, one call per matrix."""
    trtri = _trtri(s.dtype)
    k = s.shape[-1]
    flat = s.reshape((-1, k, k))
    if flat.shape[0] == 1:  # one matrix: no loop, no stack to fill
        inverse, info = trtri(flat[0].T, lower=1)
        if info:
            raise numpy.linalg.LinAlgError(
                "a T matrix of the compact WY form is singular (?trtri info {})".format(info)
            )
        return (inverse.T * upper_mask(k, s.dtype)).reshape(s.shape)
    out = numpy.empty(flat.shape, dtype=s.dtype)
    for i in range(flat.shape[0]):
        # S^T is a Fortran-ordered lower triangle: LAPACK reads it in place, and L^-T = S^-1
        inverse, info = trtri(flat[i].T, lower=1)
        if info:
            raise numpy.linalg.LinAlgError(
                "a T matrix of the compact WY form is singular (?trtri info {})".format(info)
            )
        out[i] = inverse.T
    out *= upper_mask(k, s.dtype)  # ?trtri leaves the other triangle as it found it
    return out.reshape(s.shape)


@functools.lru_cache(maxsize=64)
def upper_mask(k, dtype, diagonal=1.0):
    """The read-only ``(k, k)`` NumPy matrix with ones strictly above the diagonal and
    ``diagonal`` on it (zeros below): ``S = G * upper_mask(k, dtype, 0.5)`` is the compact WY
    ``S = diag(G)/2 + striu(G)``. Memoized."""
    mask = numpy.triu(numpy.ones((k, k), dtype=dtype), 1) + diagonal * numpy.eye(k, dtype=dtype)
    mask.flags.writeable = False
    return mask


def cwy_gradient_coefficients(t, n, xp):
    """The k x k coefficient of the level-3 CWY backward, per block.

    ``t``: T matrices ``(..., k, k)`` (upper triangular); ``n``: ``YG YA^T``
    ``(..., k, k)``. Returns ``Ru + Ru^T`` with ``R = T^T N T^T`` and
    ``Ru = striu(R)``, so that a block's gradient is
    ``dY = -T YA G^T - T^T YG A^T + (Ru + Ru^T) Y``. Cost: O(k^3) per block.
    """
    if _on_kernel(xp, t, n):
        return raw_kernels.cwy_gradient_coefficients(t, n)
    tt = xp.swapaxes(t, -1, -2)
    r = tt @ n @ tt
    k = t.shape[-1]
    ru = r * xp.triu(xp.ones((k, k), dtype=r.dtype), 1)
    return ru + xp.swapaxes(ru, -1, -2)


def _cublas_takes(xp, *arrays):
    """True when cuBLAS's ``gemm`` takes ``arrays`` as they are: CuPy, 2-D, one float dtype."""
    if xp is numpy or any(a.ndim != 2 for a in arrays) or not raw_kernels.supports(*arrays):
        return False
    importlib.import_module(xp.__name__ + ".cublas")  # xp.cublas is a submodule CuPy loads on demand
    return True


def matmul_into(a, b, out, xp):
    """``out[...] = a @ b`` for ``a`` ``(..., p, q)``, ``b`` ``(..., q, r)`` and ``out`` ``(..., p, r)``.

    On CuPy, 2-D operands go to cuBLAS ``gemm`` directly (no allocation, none
    copied when each is C- or F-contiguous); otherwise ``xp.matmul(..., out=)``.
    Cost: one GEMM, one launch.
    """
    if _cublas_takes(xp, a, b, out):
        return xp.cublas.gemm("N", "N", a, b, out=out)
    return xp.matmul(a, b, out=out)


def subtract_transposed_product(target, a, z, xp):
    """``target -= a^T @ z`` in place, for ``a`` ``(..., q, p)``, ``z`` ``(..., q, r)``, ``target`` ``(..., p, r)``.

    On CuPy with 2-D operands: one cuBLAS ``gemm`` with alpha = -1, beta = 1
    (one launch, no temporary); otherwise the product, then the subtraction.
    Cost: one GEMM.
    """
    if _cublas_takes(xp, target, a, z):
        return xp.cublas.gemm("T", "N", a, z, out=target, alpha=-1.0, beta=1.0)
    target -= a.swapaxes(-1, -2) @ z
    return target
