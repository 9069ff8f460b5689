"""Products with cuhouse matrices for torch tensors, differentiable through cuhouse's adjoints.

One internal operation, ``product(kind, transpose, side, x, params)``, is
``A @ x`` (``side == "left"``) or ``x @ A`` (``"right"``) where A is built
from the tensors ``params``: ``kind == "householder"`` is
``HouseholderProduct(vectors)``, ``kind == "svd"`` is
``SVDMatrix(U_vectors, s, V_vectors)``; ``transpose`` takes ``A.T``.
The tensors cross to NumPy (CPU) or CuPy (CUDA) by DLPack, without a copy
and detached from autograd; the results come back the same way.

Eagerly, the product is a ``torch.autograd.Function`` that keeps cuhouse's
``vjp_fn`` for the backward (no recomputation). Under ``torch.compile`` it is
the custom operator ``torch.ops.cuhouse.matmul`` with a fake implementation;
its backward, ``torch.ops.cuhouse.matmul_backward``, recomputes the forward
product inside (a compiled graph cannot hold a Python closure), so a
compiled training step does about one product more than an eager one.
"""

import contextlib

import numpy
import torch

import cuhouse

from .._backend import cupy_module
from .._shapes import batch_shape, matmul_shape

FLOAT_DTYPES = (torch.float32, torch.float64)
KINDS = {"householder": ("vectors",), "svd": ("U_vectors", "s", "V_vectors")}


def householder_matmul(vectors, X, transpose=False):
    """``H @ X`` with H = H(v_1) ... H(v_n) the Householder product of the rows of ``vectors``.

    ``vectors`` ``(..., n, d)`` with 1 <= n <= d (rows need not be unit),
    ``X`` ``(..., d, m)`` or ``(d,)``; batch dimensions broadcast as in
    ``torch.matmul``. ``transpose=True`` gives ``H.T @ X`` (the reversed
    product, H's inverse). float32 or float64 tensors on one device (CPU,
    or CUDA with CuPy installed); mixing the two float dtypes promotes to
    float64. Differentiable with respect to both ``vectors`` (the raw rows)
    and ``X``. Cost: O(d n m) forward and about twice that backward, as
    GEMMs (cuhouse's cost model picks the algorithm); no O(d^2) matrix is
    formed unless m is comparable to d.
    """
    return product("householder", bool(transpose), "left", X, (vectors,), ("vectors", "X"))


def product(kind, transpose, side, x, params, names):
    """``A @ x`` or ``x @ A`` (see the module docstring), validated, differentiable.

    ``names`` are the names of ``params`` then of ``x`` in error messages.
    """
    check(kind, transpose, side, x, params, names)
    if torch.compiler.is_compiling():
        return torch.ops.cuhouse.matmul(kind, transpose, side, x, list(params))
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in (x,) + tuple(params))):
        return forward(kind, transpose, side, x, params)  # no graph to record: no adjoint kept
    return _Product.apply(kind, transpose, side, x, *params)


# ------------------------------------------------------------------ checks
def check(kind, transpose, side, x, params, names, devices=("cpu", "cuda")):
    """The output's ``(shape, dtype)``; ``TypeError``/``ValueError`` naming the argument otherwise.

    Reads only the tensors' metadata: it is also the fake implementation's
    shape rule, where ``devices`` admits meta tensors.
    """
    tensors = tuple(params) + (x,)
    for t, name in zip(tensors, names):
        if not isinstance(t, torch.Tensor):
            raise TypeError("{} must be a torch.Tensor, got {}".format(name, type(t).__name__))
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(
                "{} has dtype {}; supported dtypes are torch.float32 and torch.float64".format(name, t.dtype)
            )
    for t, name in zip(tensors, names):
        if t.device != x.device:
            raise TypeError(
                "{} is on {} but {} is on {}; cuhouse copies nothing between devices: move one with .to(device)".format(
                    names[-1], x.device, name, t.device
                )
            )
    if x.device.type not in devices:
        raise TypeError("{} is on {}; cuhouse.torch supports CPU and CUDA tensors".format(names[-1], x.device))
    batch, rows, cols = _operator_shape(kind, params, names)
    if transpose:
        rows, cols = cols, rows
    shape = matmul_shape(batch + (rows, cols), tuple(x.shape), side, "the operator", names[-1])
    dtype = x.dtype
    for p in params:
        dtype = torch.promote_types(dtype, p.dtype)
    return shape, dtype


def _operator_shape(kind, params, names):
    """``(batch, rows, cols)`` of the operator built from ``params``."""
    if kind == "householder":
        (v,) = params
        if v.dim() < 2:
            raise ValueError(
                "{} must have shape (..., n, d) with one vector per row, got shape {}".format(names[0], tuple(v.shape))
            )
        n, d = v.shape[-2:]
        if not 1 <= n <= d:
            raise ValueError(
                "{} must have shape (..., n, d) with 1 <= n <= d, got shape {} (n={}, d={})".format(
                    names[0], tuple(v.shape), n, d
                )
            )
        return tuple(v.shape[:-2]), d, d
    u, s, v = params
    batch = batch_shape((names[0], tuple(u.shape[:-2])), (names[2], tuple(v.shape[:-2])))
    batch = batch_shape(("{} and {}".format(names[0], names[2]), batch), (names[1], tuple(s.shape[:-1])))
    return batch, u.shape[-1], v.shape[-1]


# -------------------------------------------------------- crossing by DLPack
@contextlib.contextmanager
def _on_device(device):
    """On CUDA: CuPy works on the tensor's device and on torch's current stream."""
    if device.type != "cuda":
        yield
        return
    cupy = cupy_module()
    if cupy is None:
        raise ImportError('CUDA tensors need CuPy: pip install "cuhouse[cuda13]" (or cuda12)')
    stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream, device.index)
    with cupy.cuda.Device(device.index), stream:
        yield


def to_array(t):
    """The NumPy (CPU) or CuPy (CUDA) array sharing ``t``'s memory; ``t`` is detached first."""
    t = t.detach()
    if t.device.type == "cpu":
        return numpy.from_dlpack(t)
    return cupy_module().from_dlpack(t)


def to_tensor(a):
    """The tensor sharing the memory of the array ``a``.

    torch cannot take negative strides through DLPack: such an array (a
    reversed view) is copied first, the only copy made here.
    """
    if any(stride < 0 for stride in a.strides):
        a = a.copy()
    return torch.from_dlpack(a)


def _operator(kind, transpose, arrays):
    op = cuhouse.HouseholderProduct(*arrays) if kind == "householder" else cuhouse.SVDMatrix(*arrays)
    return op.T if transpose else op


def forward(kind, transpose, side, x, params):
    """``A @ x`` or ``x @ A`` as a tensor, without an adjoint."""
    with _on_device(x.device):
        op = _operator(kind, transpose, [to_array(p) for p in params])
        out = op @ to_array(x) if side == "left" else to_array(x) @ op
        return to_tensor(out)


def forward_with_vjp(kind, transpose, side, x, params):
    """``(out, vjp_fn)`` with ``vjp_fn(dout) -> (dx, dparams)``, all torch tensors. Call inside ``_on_device``."""
    op = _operator(kind, transpose, [to_array(p) for p in params])
    if side == "left":
        out, back = cuhouse.vjp(cuhouse.matmul, op, to_array(x))
    else:
        out, back = cuhouse.vjp(cuhouse.matmul, to_array(x), op)

    def vjp_fn(dout):
        grads = back(to_array(dout))
        dparams, dx = grads if side == "left" else grads[::-1]
        return to_tensor(dx), [to_tensor(g) for g in dparams]

    return to_tensor(out), vjp_fn


class _Product(torch.autograd.Function):
    """The eager path: cuhouse's ``vjp_fn`` kept on ``ctx`` for the backward."""

    @staticmethod
    def forward(ctx, kind, transpose, side, x, *params):
        with _on_device(x.device):
            out, ctx.vjp_fn = forward_with_vjp(kind, transpose, side, x, params)
        ctx.save_for_backward(x, *params)  # only so that torch detects in-place changes before backward
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        x = ctx.saved_tensors[0]
        with _on_device(x.device):
            dx, dparams = ctx.vjp_fn(dout)
        return (None, None, None, dx, *dparams)


# -------------------------------------------------- custom operators (compile)
@torch.library.custom_op("cuhouse::matmul", mutates_args=())
def _matmul_op(kind: str, transpose: bool, side: str, x: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    return forward(kind, transpose, side, x, params)


@_matmul_op.register_fake
def _matmul_fake(kind, transpose, side, x, params):
    shape, dtype = check(kind, transpose, side, x, params, KINDS[kind] + ("X",), ("cpu", "cuda", "meta"))
    return x.new_empty(shape, dtype=dtype)


@torch.library.custom_op("cuhouse::matmul_backward", mutates_args=())
def _matmul_backward_op(
    kind: str, transpose: bool, side: str, x: torch.Tensor, params: list[torch.Tensor], dout: torch.Tensor
) -> list[torch.Tensor]:
    with _on_device(x.device):
        _, vjp_fn = forward_with_vjp(kind, transpose, side, x, params)
        dx, dparams = vjp_fn(dout)
    return [dx] + dparams


@_matmul_backward_op.register_fake
def _matmul_backward_fake(kind, transpose, side, x, params, dout):
    return [torch.empty_like(x, memory_format=torch.contiguous_format)] + [
        torch.empty_like(p, memory_format=torch.contiguous_format) for p in params
    ]


def _setup_context(ctx, inputs, output):
    kind, transpose, side, x, params = inputs
    ctx.save_for_backward(x, *params)
    ctx.how = (kind, transpose, side)


def _backward(ctx, dout):
    x, *params = ctx.saved_tensors
    dx, *dparams = torch.ops.cuhouse.matmul_backward(*ctx.how, x, params, dout)
    return None, None, None, dx, dparams


_matmul_op.register_autograd(_backward, setup_context=_setup_context)
