"""The peers cuhouse is timed against, in one place for the bench command and the ASV suite.

Every helper takes LAPACK's ``(qr, tau)`` of ``geqrf(V^T)`` (:func:`geqrf`), so
that the peers apply the same reflections as ``HouseholderProduct(V)``, stored
the way LAPACK stores them: unit lower trapezoidal, about half the flops of
full-length vectors. Each returns a zero-argument callable that does one
complete, synchronized operation and returns its result; torch helpers return
``None`` when torch (or, for the GPU, torch with CUDA) is not available.
"""

import numpy


def geqrf(vectors, xp):
    """``(qr, tau)``: LAPACK's ``geqrf`` of ``V^T`` (``V`` ``(n, d)``), as arrays of ``xp``.

    The QR runs on the host (SciPy); ``qr`` ``(d, n)`` is Fortran-ordered, as LAPACK returns it.
    """
    from scipy.linalg import lapack

    host = numpy.asarray(vectors) if xp is numpy else xp.asnumpy(vectors)
    prefix = "s" if host.dtype == numpy.float32 else "d"
    qr, tau, _, info = getattr(lapack, prefix + "geqrf")(host.T.copy())
    if info != 0:
        raise RuntimeError("LAPACK {}geqrf failed with info = {}".format(prefix, info))
    if xp is numpy:
        return qr, tau
    return xp.asfortranarray(xp.asarray(qr)), xp.asarray(tau)


def lapack_ormqr(qr, tau, x):
    """LAPACK ``?ormqr``: ``Q @ X`` from ``(qr, tau)``, building its T matrices inside each call."""
    from scipy.linalg import lapack

    ormqr = getattr(lapack, ("s" if x.dtype == numpy.float32 else "d") + "ormqr")
    lwork = int(ormqr("L", "N", qr, tau, x, -1)[1][0])
    return lambda: ormqr("L", "N", qr, tau, x, lwork)[0]


def lapack_orgqr_gemm(qr, tau, x):
    """LAPACK ``?orgqr`` (form Q, d x d) then one GEMM ``Q @ X``, inside each call."""
    from scipy.linalg import lapack

    prefix = "s" if x.dtype == numpy.float32 else "d"
    orgqr = getattr(lapack, prefix + "orgqr")
    d, k = qr.shape
    full = numpy.zeros((d, d), dtype=qr.dtype, order="F")
    full[:, :k] = qr
    taus = numpy.zeros(d, dtype=tau.dtype)
    taus[:k] = tau
    lwork = int(orgqr(full, taus, -1)[1][0])
    return lambda: orgqr(full, taus, lwork)[0] @ x


def cusolver_ormqr(qr, tau, x, cupy):
    """cuSOLVER ``?ormqr``: ``Q @ X`` on a copy of ``X`` (it works in place), T matrices built inside.

    The workspace query runs once, outside the call; the copy (O(d m)) matches
    the output allocation that ``H @ X`` pays.
    """
    from cupy_backends.cuda.libs import cublas, cusolver

    prefix = "s" if x.dtype == numpy.float32 else "d"
    ormqr = getattr(cusolver, prefix + "ormqr")
    handle = cupy.cuda.device.get_cusolver_handle()
    rows, cols = x.shape
    k = tau.size
    side, trans = cublas.CUBLAS_SIDE_LEFT, cublas.CUBLAS_OP_N
    x = cupy.asfortranarray(x)
    lwork = getattr(cusolver, prefix + "ormqr_bufferSize")(
        handle, side, trans, rows, cols, k, qr.data.ptr, rows, tau.data.ptr, x.data.ptr, rows
    )
    work = cupy.empty(lwork, dtype=x.dtype)
    info = cupy.empty(1, dtype=numpy.int32)

    def run():
        out = x.copy(order="F")
        ormqr(
            handle,
            side,
            trans,
            rows,
            cols,
            k,
            qr.data.ptr,
            rows,
            tau.data.ptr,
            out.data.ptr,
            rows,
            work.data.ptr,
            lwork,
            info.data.ptr,
        )
        cupy.cuda.get_current_stream().synchronize()
        return out

    return run


def ormqr(qr, tau, x, xp):
    """``(label, callable)`` of the backend's ormqr: LAPACK on NumPy, cuSOLVER on CuPy."""
    prefix = "s" if x.dtype == numpy.float32 else "d"
    if xp is numpy:
        return "LAPACK {}ormqr".format(prefix), lapack_ormqr(qr, tau, x)
    return "cuSOLVER {}ormqr".format(prefix), cusolver_ormqr(qr, tau, x, xp)


def torch_module(xp):
    """``torch`` able to run on the backend's device, or ``None``."""
    try:
        import torch
    except ImportError:
        return None
    if xp is not numpy and not torch.cuda.is_available():
        return None
    return torch


def _torch_operands(torch, xp, *arrays):
    device = "cpu" if xp is numpy else "cuda"
    host = (lambda a: numpy.ascontiguousarray(a)) if xp is numpy else xp.asnumpy
    return device, [torch.as_tensor(host(a)).to(device) for a in arrays]


def torch_forward(qr, tau, x, xp):
    """``torch.linalg.householder_product(qr, tau) @ X`` (forms the d x n Q, then a GEMM), or ``None``."""
    torch = torch_module(xp)
    if torch is None:
        return None
    device, (a, t, tx) = _torch_operands(torch, xp, qr, tau, x)

    def run():
        out = torch.linalg.householder_product(a, t) @ tx[: a.shape[1]]
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    return run


def torch_forward_backward(qr, tau, x, dout, xp):
    """The same with autograd: forward, then ``backward(dout)`` to the gradient w.r.t. ``qr``
    (torch holds ``tau`` fixed), or ``None``.

    ``householder_product`` gives Q's first n columns: with n = d reflections it
    is the whole Q, the product cuhouse computes.
    """
    torch = torch_module(xp)
    if torch is None:
        return None
    device, (a, t, tx, tg) = _torch_operands(torch, xp, qr, tau, x, dout)

    def run():
        leaf = a.detach().requires_grad_()
        (torch.linalg.householder_product(leaf, t) @ tx[: a.shape[1]]).backward(tg)
        if device == "cuda":
            torch.cuda.synchronize()
        return leaf.grad

    return run


def dense_gemm(dense, x):
    """One GEMM with the dense H precomputed: the floor of any ``H @ X``."""
    return lambda: dense @ x
