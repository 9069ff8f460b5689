"""The generic path: compact WY written against the Array API standard alone.

Every library that is not NumPy or CuPy (torch on any device,
array_api_strict, ...) runs products here, through its ``array_api_compat``
namespace ``xp``. The code is functional: no ``out=``, no in-place update of
a view, no host synchronization, so torch autograd can differentiate it (the
backward of :class:`cuhouse._torch.Matmul` is :func:`backward` in torch
operations, differentiable again under ``create_graph``) and
``torch.func.vmap`` can batch it.

The rows are full-length ``y`` ``(..., n, d)`` (a structured layout is
expanded by the caller; an identity factor is a zero row). With ``k`` rows
per block, padded with zero rows to ``nb = ceil(n / k)`` blocks:
``G = Y Y^T``, ``S = diag(G)/2 + striu(G)`` (a zero row gets ``S_ii = 1/2``:
it acts as nothing), ``T = S^{-1}`` and each block is ``P = I - Y^T T Y``.
The same formulas as :mod:`cuhouse.algorithms.cwy`; ``k = 1`` is the
sequential algorithm (one rank-1 update per reflection) and ``dense``
materializes H once and runs one GEMM per product. ``trapezoidal`` rows (row
i zero before column i, LAPACK's layout) let block j skip the first ``j k``
rows of X: about half the flops of a full product when n = d.

Cost: build O(n k d); apply O(n d m) in 3 n/k GEMMs; backward about three
times apply, all GEMMs.
"""

from collections import namedtuple

from .._backend import functorch_wrapped, is_torch

Form = namedtuple("PortableForm", "y t s n dense trapezoidal")
Form.__doc__ = """Blocks ``y`` ``(..., nb, k, d)``, T matrices ``t`` and their inverses ``s``
``(..., nb, k, k)``, the number ``n`` of reflections, the dense matrix
``dense`` ``(..., d, d)`` (``None`` unless the dense algorithm built it) and
whether the rows are ``trapezoidal`` (row i zero before column i)."""

ALGORITHMS = ("cwy", "sequential", "dense")

Constants = namedtuple("Constants", "mask half eye upper")
Constants.__doc__ = """``(k, k)`` arrays: ``mask`` 1 above the diagonal and 1/2 on it
(``S = G * mask``), ``half`` = I/2, the identity ``eye`` and ``upper``, 1 strictly above the diagonal."""

_CONSTANTS = {}


def _device(a):
    return a.device  # the standard's attribute (array_api_compat.device() would be traced by torch.compile)


def _tracing(xp, device):
    """True while torch.compile or torch.export traces (or on the meta device): constants are
    then built in the traced graph rather than read from, or stored in, the module's cache."""
    if not is_torch(xp):
        return False
    import torch

    return torch.compiler.is_compiling() or torch.compiler.is_exporting() or device.type == "meta"


def constants(k, dtype, device, xp):
    """The :class:`Constants` for blocks of ``k`` rows in ``dtype`` on ``device``; kept per
    (library, k, dtype, device) between eager calls. O(k^2) once."""
    key = (xp.__name__, k, dtype, device)
    tracing = _tracing(xp, device)
    if not tracing and key in _CONSTANTS:
        return _CONSTANTS[key]
    i = xp.arange(k, device=device)
    eye = xp.eye(k, dtype=dtype, device=device)
    upper = xp.astype(i[:, None] < i[None, :], dtype)
    result = Constants(upper + eye / 2, eye / 2, eye, upper)
    if not tracing:
        _CONSTANTS[key] = result
    return result


def triangular_inverse(s, c, xp):
    """Inverse of a stack of upper-triangular ``s`` ``(..., k, k)`` (``c``: :func:`constants`):
    torch's triangular solve, else the standard's ``linalg.inv`` with the strictly lower part set
    to zero. O(k^3)."""
    if is_torch(xp):
        import torch

        return torch.linalg.solve_triangular(s, c.eye, upper=True)
    return xp.linalg.inv(s) * (c.upper + c.eye)


def blocks(y, k, xp):
    """``y`` ``(..., n, d)`` padded with zero rows to a multiple of ``k`` and split ``(..., nb, k, d)``."""
    n, d = y.shape[-2:]
    nb = -(-n // k)
    if nb * k > n:
        y = xp.concat([y, xp.zeros(y.shape[:-2] + (nb * k - n, d), dtype=y.dtype, device=_device(y))], axis=-2)
    return xp.reshape(y, y.shape[:-2] + (nb, k, d))


def build(y, block_size, xp, algorithm="cwy", trapezoidal=False):
    """The form of H from the rows ``y`` ``(..., n, d)``: one batched Gram GEMM, one batched
    triangular inverse (and, for ``algorithm == "dense"``, H applied to the identity). O(n k d).

    ``trapezoidal`` promises that row i of ``y`` is zero before column i (the
    products then skip the rows a block cannot touch; a wrong promise gives a
    wrong product)."""
    n, d = y.shape[-2:]
    k = 1 if algorithm == "sequential" else min(block_size, n)
    y = blocks(y, k, xp)
    t, s = factors(y, xp)
    f = Form(y, t, s, n, None, bool(trapezoidal))
    if algorithm == "dense":
        f = f._replace(dense=_apply_blocks(f, xp.eye(d, dtype=y.dtype, device=_device(y)), False, xp))
    return f


def factors(y, xp):
    """``(T, S)`` ``(..., k, k)`` of the blocks ``y`` ``(..., k, d)``: S of :func:`gram_factor` and
    ``T = S^{-1}``; differentiable. O(k^2 d + k^3)."""
    s = gram_factor(y, xp)
    return triangular_inverse(s, constants(y.shape[-2], y.dtype, _device(y), xp), xp), s


def gram_factor(y, xp, nonzero=False):
    """``S = G * mask`` ``(..., k, k)`` with ``G = Y Y^T`` for the rows ``y`` ``(..., k, d)`` (a zero row,
    an identity factor or padding, gets ``S_ii = 1/2``: it acts as nothing; ``nonzero=True`` promises
    that there is none: four array operations fewer); differentiable. O(k^2 d).
    The S of :func:`cuhouse.algorithms.cwy.build` (why it is built apart: that module's docstring)."""
    c = constants(y.shape[-2], y.dtype, _device(y), xp)
    g = y @ y.mT
    if nonzero:
        return g * c.mask
    # the term for zero rows is a constant, so dS/dG is the mask everywhere (xp.where(G == 0, ...) cut the
    # derivative at an exactly zero off-diagonal G_ij: orthogonal rows got silently wrong gradients); only
    # the diagonal is compared (I/2 is zero elsewhere): 18 us less at k = 128 on one CPU thread
    zero_rows = xp.astype(xp.linalg.diagonal(g) == 0, g.dtype)
    return g * c.mask + c.half * zero_rows[..., None, :]


def solve(s, b, transpose, xp):
    """``S^{-1} b`` (``S^{-T} b`` with ``transpose``) for upper-triangular ``s`` ``(..., k, k)`` and ``b``
    ``(..., k, m)`` (batch shapes broadcast): one triangular solve on torch, O(k^2 m); the standard's
    ``linalg.solve`` otherwise."""
    a = s.mT if transpose else s
    if is_torch(xp):
        import torch

        return torch.linalg.solve_triangular(a, b, upper=not transpose)
    return xp.linalg.solve(a, b)


def one_block(y, x, transpose, xp, nonzero=False):
    """``H @ x`` (``H^T @ x``) for the rows ``y`` ``(..., n, d)`` applied as ONE block, unpadded:
    ``(out, S, W)`` with S of :func:`gram_factor` and ``W = M (Y x)`` (``M = T = S^{-1}``, or
    ``T^T`` when ``transpose``) ``(..., n, m)`` by one triangular solve (no T), kept for
    :func:`one_block_backward` (``nonzero``: as in :func:`gram_factor`). Batch shapes broadcast.
    O(n^2 d + n d m)."""
    s = gram_factor(y, xp, nonzero)
    w = solve(s, y @ x, transpose, xp)
    return _plus_product(x, y.mT, w, xp, -1), s, w


def one_block_backward(y, x, s, w, dout, transpose, xp):
    """``(dY, dX)`` of :func:`one_block`'s output for its inputs ``y``, ``x``, its ``S`` and ``W``
    and the cotangent ``dout`` (of the output's shape), from the saved input rather than the
    sweep's reconstruction: with ``A = Y dout`` and ``P = M^T A`` (one triangular solve),
    ``dX = dout - Y^T P``, ``dS = P W^T`` (``W P^T`` when ``transpose``), ``dG = dS * mask`` and
    ``dY = (dG + dG^T) Y - W dout^T - P x^T``. Differentiable (to any order when ``S`` and ``W``
    are functions of ``y`` and ``x`` on the tape). dY and dX have the batch shape of ``dout``.
    Cost: 4 GEMMs of O(n d m), a solve of O(n^2 m) and 1 GEMM of O(n^2 d): about twice the forward."""
    c = constants(y.shape[-2], y.dtype, _device(y), xp)
    p = solve(s, y @ dout, not transpose, xp)
    dx = _plus_product(dout, y.mT, p, xp, -1)
    dg = (w @ p.mT if transpose else p @ w.mT) * c.mask
    dy = _plus_product((dg + dg.mT) @ y, w, dout.mT, xp, -1, scratch=True)
    return _plus_product(dy, p, x.mT, xp, -1, scratch=True), dx


def one_block_tangent(y, x, s, w, dy, dx, transpose, xp):
    """The tangent of :func:`one_block`'s output for tangents ``dy`` and ``dx`` (either ``None``: zero)
    of its inputs (forward mode): ``dS = (dY Y^T + Y dY^T) * mask``,
    ``dW = M (dY x + Y dx - dS W)`` (``dS^T`` when ``transpose``; one triangular solve) and
    ``d out = dx - dY^T W - Y^T dW``. O(n^2 d + n d m)."""
    parts, tangent = [], None
    if dy is not None:
        c = constants(y.shape[-2], y.dtype, _device(y), xp)
        ds = ((dy @ y.mT) + (y @ dy.mT)) * c.mask
        parts += [-((ds.mT if transpose else ds) @ w), dy @ x]
        tangent = -(dy.mT @ w)
    if dx is not None:
        parts.append(y @ dx)
        tangent = dx if tangent is None else tangent + dx
    rhs = parts[0]
    for part in parts[1:]:
        rhs = rhs + part
    return tangent - y.mT @ solve(s, rhs, transpose, xp)


def _explicit_array(b, nb, k, trapezoidal, xp):
    """An uninitialized ``(nb, k, d)`` array for the backward's explicit terms when torch records no
    graph (the backward of a first derivative, eager: no tracing, no transform), ``b`` ``(d, 2m)``
    is one matrix and the rows are full; else ``None`` (the terms are stacked). Saves the stack's
    copy of ``n d`` values."""
    if not is_torch(xp) or b.ndim != 2 or trapezoidal:
        return None
    import torch

    if torch.is_grad_enabled() or _tracing(xp, b.device) or functorch_wrapped(b):
        return None
    return torch.empty((nb, k, b.shape[0]), dtype=b.dtype, device=b.device)


def _explicit_into(out, u, b, m):
    """``[-U_G, U_A] B^T`` written into ``out`` ``(k, d)`` (torch): two GEMMs, no new array."""
    import torch

    return torch.mm(u[:, :m], b[:, m:].mT, out=out).addmm_(u[:, m:], b[:, :m].mT, alpha=-1)


def _plus_product(c, a, b, xp, alpha=1, scratch=False):
    """``c + alpha * (a @ b)`` (alpha 1 or -1): on torch one fused GEMM (``addmm``, ``baddbmm``;
    one pass over ``c`` fewer) where ``c``, ``a`` and ``b`` are matrices or stacks of one batch
    size, else the standard's operators. Differentiable, batched by ``torch.func.vmap``.
    ``scratch``: ``c`` is an intermediate of the caller's own, which torch may then overwrite
    when no graph is recorded (no new array of c's size)."""
    if is_torch(xp) and c.ndim == a.ndim == b.ndim and c.ndim in (2, 3):
        import torch

        in_place = scratch and not torch.is_grad_enabled()
        if c.ndim == 2:
            return c.addmm_(a, b, alpha=alpha) if in_place else torch.addmm(c, a, b, alpha=alpha)
        if c.shape[0] == a.shape[0] == b.shape[0]:
            return c.baddbmm_(a, b, alpha=alpha) if in_place else torch.baddbmm(c, a, b, alpha=alpha)
    return c + a @ b if alpha == 1 else c - a @ b


def _order(nb, transpose):
    """Block indices in the order they act on X: H = P_1 ... P_N applies P_N first."""
    return range(nb) if transpose else range(nb - 1, -1, -1)


def _first(f, j):
    """The first row of X block ``j`` touches: ``j k`` for trapezoidal rows, else 0."""
    return j * f.y.shape[-2] if f.trapezoidal else 0


def _rows_from(x, first, rest, xp):
    """``x`` with its rows from ``first`` on replaced by ``rest`` (batch shapes broadcast)."""
    if first == 0:
        return rest
    head = x[..., :first, :]
    return xp.concat([xp.broadcast_to(head, rest.shape[:-2] + head.shape[-2:]), rest], axis=-2)


def _apply_blocks(f, x, transpose, xp):
    for step, j in enumerate(_order(f.t.shape[-3], transpose)):
        first = _first(f, j)
        yj, tj = f.y[..., j, :, :], f.t[..., j, :, :]
        own = step > 0  # x is the previous block's result: ours to overwrite (never the caller's)
        if first:
            yj, rest = yj[..., first:], x[..., first:, :]
            w = (tj.mT if transpose else tj) @ (yj @ rest)
            x = _rows_from(x, first, _plus_product(rest, yj.mT, w, xp, -1, scratch=own), xp)
        else:
            x = _plus_product(x, yj.mT, (tj.mT if transpose else tj) @ (yj @ x), xp, -1, scratch=own)
    return x


def apply(f, x, transpose, xp):
    """``H @ X`` (``H.T @ X``) for ``x`` ``(..., d, m)``: per block ``X - Y^T (T (Y X))``, or one GEMM
    with the dense H. O(n d m) (about half for trapezoidal rows with n = d), or O(d^2 m) dense."""
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
    blocks. Trapezoidal rows: block j works on rows ``j k ..`` of B only and
    its dY is zero before column ``j k``. The dense algorithm takes
    ``dH = dout X^T`` back through the same sweep on the identity.
    ``store_inputs`` is unused: the sweep recomputes. ``out`` and ``dout``
    have one shape; dY and dX have the batch shape of ``out``. Cost: about
    three products.
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
    mt = f.t if transpose else f.t.mT  # U = M^T Z
    z, u, explicit = [None] * nb, [None] * nb, [None] * nb
    # torch recording no graph, one matrix, full rows: the explicit terms written into one array (no stack)
    into = _explicit_array(b, nb, k, f.trapezoidal, xp)
    for j in reversed(_order(nb, transpose)):
        first = _first(f, j)
        yj, rest = f.y[..., j, :, first:], b[..., first:, :]
        z[j] = yj @ rest
        u[j] = mt[..., j, :, :] @ z[j]
        # [-U_G, U_A] B^T as two GEMMs over B = [A | G] (no concatenation, no negation)
        if into is not None:
            explicit[j] = _explicit_into(into[j], u[j], rest, m)
        else:
            explicit[j] = _plus_product(
                u[j][..., :m] @ rest[..., m:].mT, u[j][..., m:], rest[..., :m].mT, xp, -1, scratch=True
            )
        if first:
            pad = xp.zeros(explicit[j].shape[:-1] + (first,), dtype=b.dtype, device=_device(b))
            explicit[j] = xp.concat([pad, explicit[j]], axis=-1)
        b = _rows_from(b, first, _plus_product(rest, yj.mT, u[j], xp, -1, scratch=True), xp)
    z, u = (xp.stack(parts, axis=-3) for parts in (z, u))
    explicit = xp.stack(explicit, axis=-3) if into is None else into
    u_a, u_g = u[..., :m], u[..., m:]
    y_a_in = -((f.s.mT if transpose else f.s) @ u_a)  # V A_in = -M^{-1} U_A
    y_g = z[..., m:]
    n_mat = y_a_in @ y_g.mT if transpose else y_g @ y_a_in.mT
    tt_n = f.t.mT @ n_mat
    c = constants(k, b.dtype, _device(b), xp)
    r_upper = (tt_n @ f.t.mT) * c.upper
    r_diag = xp.sum(tt_n * f.t, axis=-1)
    coefficients = r_upper + r_upper.mT + u_g @ u_a.mT + c.eye * r_diag[..., None, :]
    dy = _plus_product(explicit, coefficients, f.y, xp, scratch=True)
    dy = xp.reshape(dy, dy.shape[:-3] + (nb * k, dy.shape[-1]))[..., : f.n, :]
    return dy, b[..., m:]
