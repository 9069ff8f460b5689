"""The peers cuhouse is timed against, in one place for the bench command and the ASV suite.

Every helper takes LAPACK's ``(qr, tau)`` of ``geqrf(V^T)`` (:func:`geqrf`), so
that the peers apply the same reflections as ``HouseholderProduct(V)``, stored
the way LAPACK stores them: unit lower trapezoidal, about half the flops of
full-length vectors. Each returns a zero-argument callable that does one
complete, synchronized operation and returns its result; torch helpers return
``None`` when torch (or, for the GPU, torch with CUDA) is not available.
"""

import numpy

PREFIXES = {"float32": "s", "float64": "d", "complex64": "c", "complex128": "z"}


def lapack_name(dtype, real_name):
    """The LAPACK routine for ``dtype``: ``real_name`` (``"ormqr"``, ``"orgqr"``, ...) with its type
    prefix, or its complex twin (``"unmqr"``, ``"ungqr"``) for complex data."""
    dtype = numpy.dtype(dtype)
    name = real_name.replace("or", "un", 1) if dtype.kind == "c" and real_name.startswith("or") else real_name
    return PREFIXES[dtype.name] + name


def geqrf(vectors, xp):
    """``(qr, tau)``: LAPACK's ``geqrf`` of ``V^T`` (``V`` ``(n, d)``), as arrays of ``xp``.

    The QR runs on the host (SciPy); ``qr`` ``(d, n)`` is Fortran-ordered, as LAPACK returns it.
    Complex ``V`` gives LAPACK's complex reflectors (not the same unitary matrix as
    ``HouseholderProduct(V)``, but the same kind and count of factors).
    """
    from scipy.linalg import lapack

    host = numpy.asarray(vectors) if xp is numpy else xp.asnumpy(vectors)
    prefix = PREFIXES[host.dtype.name]
    qr, tau, _, info = getattr(lapack, prefix + "geqrf")(host.T.copy())
    if info != 0:
        raise RuntimeError("LAPACK {}geqrf failed with info = {}".format(prefix, info))
    if xp is numpy:
        return qr, tau
    return xp.asfortranarray(xp.asarray(qr)), xp.asarray(tau)


def lapack_ormqr(qr, tau, x):
    """LAPACK ``?ormqr``: ``Q @ X`` from ``(qr, tau)``, building its T matrices inside each call.

    Called in X's memory order, as cuhouse's own ormqr plan calls it: a real row-major X runs as
    the transposed product ``(X^T Q^T)^T`` (``side="R"`` on the column-major view ``X^T``), so
    LAPACK gets no transposing copy. ``side="L"`` on a row-major X (SciPy copies it into column
    order first) measured up to 2.3x slower (d = 16, m = 32) and 1.1-1.3x at d = 1024..2048
    (float32, one thread): that handicap would flatter every ratio against this reference.
    """
    from scipy.linalg import lapack

    ormqr = getattr(lapack, lapack_name(x.dtype, "ormqr"))
    if x.dtype.kind != "c" and x.flags.c_contiguous and not x.flags.f_contiguous:
        xt = x.T
        lwork = int(ormqr("R", "T", qr, tau, xt, -1)[1][0])
        return lambda: ormqr("R", "T", qr, tau, xt, lwork)[0].T
    lwork = int(numpy.real(ormqr("L", "N", qr, tau, x, -1)[1][0]))  # complex routines return a complex size
    return lambda: ormqr("L", "N", qr, tau, x, lwork)[0]


def lapack_orgqr_gemm(qr, tau, x):
    """LAPACK ``?orgqr`` (form Q, d x d) then one GEMM ``Q @ X``, inside each call."""
    from scipy.linalg import lapack

    orgqr = getattr(lapack, lapack_name(x.dtype, "orgqr"))
    d, k = qr.shape
    full = numpy.zeros((d, d), dtype=qr.dtype, order="F")
    full[:, :k] = qr
    taus = numpy.zeros(d, dtype=tau.dtype)
    taus[:k] = tau
    lwork = int(numpy.real(orgqr(full, taus, -1)[1][0]))
    return lambda: orgqr(full, taus, lwork)[0] @ x


def cusolver_ormqr(qr, tau, x, cupy):
    """cuSOLVER ``?ormqr``: ``Q @ X`` on a copy of ``X`` (it works in place), T matrices built inside.

    The workspace query runs once, outside the call; the copy (O(d m)) matches
    the output allocation that ``H @ X`` pays.
    """
    from cupy_backends.cuda.libs import cublas, cusolver

    name = lapack_name(x.dtype, "ormqr")
    ormqr = getattr(cusolver, name)
    handle = cupy.cuda.device.get_cusolver_handle()
    rows, cols = x.shape
    k = tau.size
    side, trans = cublas.CUBLAS_SIDE_LEFT, cublas.CUBLAS_OP_N
    x = cupy.asfortranarray(x)
    lwork = getattr(cusolver, name + "_bufferSize")(
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
    name = lapack_name(x.dtype, "ormqr")
    if xp is numpy:
        return "LAPACK {}".format(name), lapack_ormqr(qr, tau, x)
    return "cuSOLVER {}".format(name), cusolver_ormqr(qr, tau, x, xp)


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
