"""cuSOLVER's ``?ormqr`` and its workspace query for the CPU stand-in: LAPACK's ``?ormqr``
(through SciPy) on the stand-in's device memory, addressed by raw pointers as cuSOLVER is.

Only column-major operands, as cuSOLVER takes them: ``a`` (lda x k), ``tau`` (k),
``c`` (ldc x n, updated in place); ``info`` receives 0.
"""

import ctypes

import numpy
import scipy.linalg.lapack
from cupy import _trace

from .cublas import CUBLAS_OP_N, CUBLAS_OP_T, CUBLAS_SIDE_LEFT


def _matrix(ptr, rows, cols, ld, dtype):
    """The column-major ``rows x cols`` matrix at ``ptr`` with leading dimension ``ld`` (a view)."""
    itemsize = numpy.dtype(dtype).itemsize
    buffer = (ctypes.c_ubyte * (max(ld * (cols - 1) + rows, 0) * itemsize)).from_address(ptr)
    flat = numpy.frombuffer(buffer, dtype=dtype)
    return numpy.lib.stride_tricks.as_strided(flat, (rows, cols), (itemsize, ld * itemsize))


def _buffer_size(handle, side, trans, m, n, k, a, lda, tau, c, ldc):
    return max(1, n if side == CUBLAS_SIDE_LEFT else m) * 64


def _ormqr(dtype):
    routine = getattr(scipy.linalg.lapack, ("s" if dtype == numpy.float32 else "d") + "ormqr")

    def ormqr(handle, side, trans, m, n, k, a, lda, tau, c, ldc, work, lwork, info):
        _trace.call()
        rows = m if side == CUBLAS_SIDE_LEFT else n
        reflectors = _matrix(a, rows, k, lda, dtype)
        taus = _matrix(tau, k, 1, k, dtype)[:, 0]
        target = _matrix(c, m, n, ldc, dtype)

        def run():
            result, _, status = routine(
                "L" if side == CUBLAS_SIDE_LEFT else "R",
                {CUBLAS_OP_N: "N", CUBLAS_OP_T: "T"}[trans],
                numpy.array(reflectors, order="F"),
                numpy.array(taus),
                numpy.array(target, order="F"),
                max(1, 64 * max(m, n)),
            )
            target[...] = result
            _matrix(info, 1, 1, 1, numpy.int32)[0, 0] = status

        run()
        _trace.launch(replay=run)

    return ormqr


sormqr_bufferSize = dormqr_bufferSize = _buffer_size
sormqr = _ormqr(numpy.float32)
dormqr = _ormqr(numpy.float64)
