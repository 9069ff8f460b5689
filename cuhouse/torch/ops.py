"""Products with Householder and SVD matrices for torch tensors, in torch operations only.

Everything here is a composition of one primitive, :func:`cuhouse.torch._wy.matmul`
(compact WY with the level-3 backward, see that module): no tensor crosses
to NumPy or CuPy, so every device torch runs on works, and ``torch.func``
(vmap, grad, jacrev), ``torch.compile(fullgraph=True)``, ``torch.export``
and gradients of any order (``create_graph=True``, ``gradgradcheck``) see
plain torch operations.
"""

import torch

from .._shapes import matmul_shape
from . import _wy

FLOAT_DTYPES = (torch.float32, torch.float64)


def householder_matmul(vectors, X, transpose=False, *, check_finite=True):
    """``H @ X`` with H = H(v_1) ... H(v_n) the Householder product of the rows of ``vectors``.

    ``vectors`` ``(..., n, d)`` with 1 <= n <= d (rows need not be unit),
    ``X`` ``(..., d, m)`` or ``(d,)``; batch dimensions broadcast as in
    ``torch.matmul``. ``transpose=True`` gives ``H.T @ X`` (the reversed
    product, H's inverse). float32 or float64 tensors on one device (any
    device torch supports); mixing the two float dtypes promotes to float64.
    Differentiable with respect to both ``vectors`` (the raw rows) and ``X``,
    to any order; composes with ``torch.func.vmap``, ``grad`` and ``jacrev``.

    ``check_finite`` (eager calls on plain tensors only: never under
    ``torch.compile``, ``torch.export`` or a ``torch.func`` transform) checks
    that every row is finite and nonzero, a ``ValueError`` otherwise, at the
    price of one host synchronization on a device; ``False`` skips it (a zero
    row then gives NaN). Cost: O(n d m) forward as GEMMs in blocks of k = 64
    reflections plus O(n k d) for their T factors; backward about three times
    the forward. No d x d matrix is formed.
    """
    check(vectors, X)
    if check_finite and _eager(vectors):
        check_rows(vectors, "vectors")
    return _left(vectors, X, transpose)


def _left(vectors, x, transpose, trapezoidal=False):
    """``H @ x`` (``H^T @ x``) after :func:`check`: dtype promotion, ``(d,)`` as ``(d, 1)``
    (``trapezoidal``: see :func:`cuhouse.torch._wy.matmul`)."""
    dtype = torch.promote_types(vectors.dtype, x.dtype)
    vectors, x = vectors.to(dtype), x.to(dtype)
    if x.dim() == 1:
        return _wy.matmul(vectors, x[:, None], transpose, trapezoidal)[..., 0]
    return _wy.matmul(vectors, x, transpose, trapezoidal)


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
def _eager(t):
    """True for a plain tensor outside torch.compile, torch.export and torch.func: where a value check can run."""
    return (
        type(t) in (torch.Tensor, torch.nn.Parameter)
        and not torch.compiler.is_compiling()
        and not torch.compiler.is_exporting()
        and not torch._C._functorch.is_functorch_wrapped_tensor(t)
        and t.device.type != "meta"
    )


def check_rows(vectors, name):
    """``ValueError`` unless every row of ``vectors`` ``(..., n, d)`` is finite and nonzero (one host sync)."""
    squares = torch.linalg.vecdot(vectors.detach(), vectors.detach())
    bad = ~torch.isfinite(squares + 1 / squares)  # NaN, Inf, or 0 (1/0 = Inf)
    if bool(bad.any()):
        if not bool(torch.isfinite(vectors).all()):
            raise ValueError("{} must be finite; found NaN or Inf".format(name))
        row = int(bad.nonzero()[0, -1])
        raise ValueError(
            "{}: row {} is a zero vector (or too small to square), which makes no reflection".format(name, row)
        )


def check(vectors, x):
    """``TypeError``/``ValueError`` naming the argument unless ``householder_matmul(vectors, x)`` is defined.

    Reads only the tensors' metadata (no synchronization)."""
    for t, name in ((vectors, "vectors"), (x, "X")):
        if not isinstance(t, torch.Tensor):
            raise TypeError("{} must be a torch.Tensor, got {}".format(name, type(t).__name__))
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(
                "{} has dtype {}; supported dtypes are torch.float32 and torch.float64".format(name, t.dtype)
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
