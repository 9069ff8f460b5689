"""``cupy.cublas`` of the CPU stand-in: ``gemm`` with CuPy's argument rules.

``gemm(transa, transb, a, b, out=None, alpha=1.0, beta=0.0)`` computes
``out = alpha op(a) @ op(b) + beta out`` on 2-D arrays of one dtype; an
operand (or ``out``) that is neither C- nor F-contiguous is copied first,
as CuPy does (counted in ``operand_copies``).
"""

from . import _count_operand_copies, _trace, empty, ndarray


def _op(a, trans):
    if trans in ("N", 0):
        return a
    if trans in ("T", 1):
        return a.T
    if trans in ("H", 2):
        return a.conj().T
    raise TypeError("invalid trans (actual: {})".format(trans))


def gemm(transa, transb, a, b, out=None, alpha=1.0, beta=0.0):
    assert isinstance(a, ndarray) and isinstance(b, ndarray)
    assert a.ndim == b.ndim == 2
    assert a.dtype == b.dtype
    if a.dtype.char not in "fdFD":
        raise TypeError("invalid dtype")
    m, k = _op(a._view, transa).shape
    k2, n = _op(b._view, transb).shape
    assert k == k2
    if out is None:
        out = empty((m, n), dtype=a.dtype, order="F")
        beta = 0.0
    else:
        assert isinstance(out, ndarray) and out.ndim == 2
        assert out.shape == (m, n)
        assert out.dtype == a.dtype
    _trace.call()
    _count_operand_copies([a._view, b._view, out._view])

    def run():
        product = _op(a._view, transa) @ _op(b._view, transb)
        if beta == 0:
            out._view[...] = alpha * product
        else:
            out._view[...] = alpha * product + beta * out._view

    run()
    _trace.launch(replay=run, gemm=True)
    return out
