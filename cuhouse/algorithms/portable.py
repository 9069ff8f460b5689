"""The generic path: compact WY written against the Array API standard alone.

Every library that is not NumPy or CuPy (torch on any device,
array_api_strict, ...) runs products here, through its ``array_api_compat``
namespace ``xp``. The code is functional: no ``out=``, no in-place update of
a view, no host synchronization, so torch autograd can differentiate it (the
double backward of :mod:`cuhouse._torch` runs through it) and
``torch.func.vmap`` can batch it.

The rows are full-length ``y`` ``(..., n, d)`` (a structured layout is
expanded by the caller; an identity factor is a zero row). With ``k`` rows
per block, padded with zero rows to ``nb = ceil(n / k)`` blocks:
``G = Y Y^T``, ``S = diag(G)/2 + striu(G)`` (a zero row gets ``S_ii = 1/2``:
it acts as nothing), ``T = S^{-1}`` and each block is ``P = I - Y^T T Y``.
The same formulas as :mod:`cuhouse.algorithms.cwy`; ``k = 1`` is the
sequential algorithm (one rank-1 update per reflection) and ``dense``
materializes H once and runs one GEMM per product.

Cost: build O(n k d); apply O(n d m) in 3 n/k GEMMs; backward about three
times apply, all GEMMs.
"""

from collections import namedtuple

Form = namedtuple("PortableForm", "y t s n dense")
Form.__doc__ = """Blocks ``y`` ``(..., nb, k, d)``, T matrices ``t`` and their inverses ``s``
``(..., nb, k, k)``, the number ``n`` of reflections and the dense matrix
``dense`` ``(..., d, d)`` (``None`` unless the dense algorithm built it)."""

ALGORITHMS = ("cwy", "sequential", "dense")


def _device(a):
    from array_api_compat import device

    return device(a)


def _upper(k, xp, device, strict=True):
    """The (strictly) upper-triangular boolean mask ``(k, k)``."""
    i = xp.arange(k, device=device)
    return (i[:, None] < i[None, :]) if strict else (i[:, None] <= i[None, :])


def triangular_inverse(s, xp):
    """Inverse of a stack of upper-triangular ``s`` ``(..., k, k)``: torch's triangular solve,
    else the standard's ``linalg.inv`` with the strictly lower part set to zero. O(k^3)."""
    from array_api_compat import is_torch_namespace

    k = s.shape[-1]
    eye = xp.eye(k, dtype=s.dtype, device=_device(s))
    if is_torch_namespace(xp):
        import torch

        return torch.linalg.solve_triangular(s, eye, upper=True)
    return xp.where(_upper(k, xp, _device(s), strict=False), xp.linalg.inv(s), xp.zeros_like(s))


def build(y, block_size, xp, algorithm="cwy"):
    """The form of H from the rows ``y`` ``(..., n, d)``: one batched Gram GEMM, one batched
    triangular inverse (and, for ``algorithm == "dense"``, H applied to the identity). O(n k d)."""
    n, d = y.shape[-2:]
    k = 1 if algorithm == "sequential" else min(block_size, n)
    nb = -(-n // k)
    device = _device(y)
    if nb * k > n:
        y = xp.concat([y, xp.zeros(y.shape[:-2] + (nb * k - n, d), dtype=y.dtype, device=device)], axis=-2)
    y = xp.reshape(y, y.shape[:-2] + (nb, k, d))
    g = y @ y.mT
    diag = xp.linalg.diagonal(g)
    half = xp.where(diag > 0, diag / 2, xp.ones_like(diag) / 2)
    s = (
        xp.where(_upper(k, xp, device), g, xp.zeros_like(g))
        + xp.eye(k, dtype=y.dtype, device=device) * half[..., None, :]
    )
    f = Form(y, triangular_inverse(s, xp), s, n, None)
    if algorithm == "dense":
        f = f._replace(dense=_apply_blocks(f, xp.eye(d, dtype=y.dtype, device=device), False, xp))
    return f


def _order(nb, transpose):
    """Block indices in the order they act on X: H = P_1 ... P_N applies P_N first."""
    return range(nb) if transpose else range(nb - 1, -1, -1)


def _apply_blocks(f, x, transpose, xp):
    for j in _order(f.t.shape[-3], transpose):
        yj, tj = f.y[..., j, :, :], f.t[..., j, :, :]
        x = x - yj.mT @ ((tj.mT if transpose else tj) @ (yj @ x))
    return x


def apply(f, x, transpose, xp):
    """``H @ X`` (``H.T @ X``) for ``x`` ``(..., d, m)``: per block ``X - Y^T (T (Y X))``, or one GEMM
    with the dense H. O(n d m), or O(d^2 m) dense."""
    if f.dense is not None:
        return (f.dense.mT if transpose else f.dense) @ x
    return _apply_blocks(f, x, transpose, xp)


def backward(f, out, dout, transpose, xp, store_inputs=False):
    """Adjoint of :func:`apply` given its output: ``(dY, dX)``, dY ``(..., n, d)`` for the rows.

    The sweep of :func:`cuhouse.algorithms.cwy.backward`, written functionally:
    from the last applied block to the first it carries ``B = [A | G]`` (a
    block's output and the gradient there), forms ``Z = Y B``, ``U = M^T Z``
    (``M = T``, or ``T^T`` when ``transpose``) and the explicit term
    ``[-U_G, U_A] B^T``, then undoes the block, ``B <- B - Y^T U``. The k x k
    coefficients of ``dY = [-U_G, U_A] B^T + C Y`` then run batched over all
    blocks. The dense algorithm takes ``dH = dout X^T`` back through the same
    sweep on the identity. ``store_inputs`` is unused: the sweep recomputes.
    Cost: about three products.
    """
    if f.dense is not None:
        h = f.dense.mT if transpose else f.dense
        x = h.mT @ out
        dh = x @ dout.mT if transpose else dout @ x.mT
        dy, _ = backward(f._replace(dense=None), xp.broadcast_to(f.dense, dh.shape), dh, False, xp)
        return dy, h.mT @ dout
    nb, k = f.t.shape[-3], f.t.shape[-1]
    m = out.shape[-1]
    b = xp.concat([out, dout], axis=-1)
    z, u, explicit = [None] * nb, [None] * nb, [None] * nb
    for j in reversed(_order(nb, transpose)):
        yj, tj = f.y[..., j, :, :], f.t[..., j, :, :]
        z[j] = yj @ b
        u[j] = (tj if transpose else tj.mT) @ z[j]
        explicit[j] = xp.concat([-u[j][..., m:], u[j][..., :m]], axis=-1) @ b.mT
        b = b - yj.mT @ u[j]
    z, u, explicit = (xp.stack(xp.broadcast_arrays(*parts), axis=-3) for parts in (z, u, explicit))
    u_a, u_g = u[..., :m], u[..., m:]
    y_a_in = -((f.s.mT if transpose else f.s) @ u_a)  # V A_in = -M^{-1} U_A
    y_g = z[..., m:]
    n_mat = y_a_in @ y_g.mT if transpose else y_g @ y_a_in.mT
    tt = f.t.mT
    r = tt @ n_mat @ tt
    ru = xp.where(_upper(k, xp, _device(r)), r, xp.zeros_like(r))
    r_diag = xp.sum((tt @ n_mat) * f.t, axis=-1)
    coefficients = ru + ru.mT + u_g @ u_a.mT + xp.eye(k, dtype=r.dtype, device=_device(r)) * r_diag[..., None, :]
    dy = explicit + coefficients @ f.y
    dy = xp.reshape(dy, dy.shape[:-3] + (nb * k, dy.shape[-1]))[..., : f.n, :]
    return dy, b[..., m:]
