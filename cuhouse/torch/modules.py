"""Layers: ``SVDLinear``, ``Orthogonal``, ``SVDConv1x1`` and the ``orthogonal`` parametrization of a weight.

Each is a torch composition of :func:`~cuhouse.torch.ops.householder_matmul`;
the parameters are validated once, so the products skip the per-call value
check (``check_finite=False``: a zero vector gives NaN, never a wrong number).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from . import _columns
from .ops import DTYPES, FLOAT_DTYPES, _left, householder_matmul, svd_matmul


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("{} must be a positive int, got {}".format(name, type(value).__name__))
    if value < 1:
        raise ValueError("{} must be a positive int, got {}".format(name, value))
    return value


def _float_dtype(dtype):
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if dtype not in (torch.float32, torch.float64):
        raise TypeError("dtype must be torch.float32 or torch.float64, got {}".format(dtype))
    return dtype


def _input(x, parameter, axis, size, expected):
    """``TypeError``/``ValueError`` unless ``x`` is a float tensor on ``parameter``'s device with
    ``x.shape[axis] == size`` (``expected`` describes the shape in the message)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError("x must be a torch.Tensor, got {}".format(type(x).__name__))
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError("x has dtype {}; supported dtypes are torch.float32 and torch.float64".format(x.dtype))
    if x.device != parameter.device:
        raise TypeError(
            "x is on {} but the layer's parameters are on {}; cuhouse copies nothing between devices".format(
                x.device, parameter.device
            )
        )
    if x.dim() <= max(axis, -axis - 1) or x.shape[axis] != size:
        raise ValueError("x must have shape {}, got shape {}".format(expected, tuple(x.shape)))


def _rows(x, parameter, features):
    """``x`` ``(..., features)``, checked, as ``(features, N)`` (a view when the strides allow)."""
    _input(x, parameter, -1, features, "(..., {})".format(features))
    return x.reshape(-1, features).mT


def _init_bias(bias, fan_in):
    bound = 1 / math.sqrt(fan_in)
    nn.init.uniform_(bias, -bound, bound)


class SVDLinear(nn.Module):
    """``nn.Linear`` whose weight is W = U[:, :r] diag(s) V[:, :r]^T, r = min(in, out), never formed.

    U (out x out) and V (in x in) are Householder products of r reflections
    each. Parameters: ``U_vectors`` ``(r, out_features)``, ``V_vectors``
    ``(r, in_features)`` (raw vectors, need not be unit), ``s`` ``(r,)``
    (signed singular values) and ``bias`` ``(out_features,)`` or None.

    Initialization (:meth:`reset_parameters`): standard normal vectors (a
    random orthogonal U and V), ``s`` uniform in [0.9, 1.1], the bias as
    ``nn.Linear`` (uniform in +-1/sqrt(in_features)).

    ``forward(x)``, x ``(..., in_features)``, is ``x @ W.T + bias`` through
    ``cuhouse.SVDMatrix`` and its adjoint: O((in + out) r N) for N rows.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = _positive_int(in_features, "in_features")
        self.out_features = _positive_int(out_features, "out_features")
        self.rank = min(in_features, out_features)
        factory = {"device": device, "dtype": _float_dtype(dtype)}
        self.U_vectors = nn.Parameter(torch.empty(self.rank, out_features, **factory))
        self.s = nn.Parameter(torch.empty(self.rank, **factory))
        self.V_vectors = nn.Parameter(torch.empty(self.rank, in_features, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random orthogonal U and V (standard normal vectors), s uniform in [0.9, 1.1], bias as nn.Linear."""
        with torch.no_grad():
            self.U_vectors.normal_()
            self.V_vectors.normal_()
            self.s.uniform_(0.9, 1.1)
            if self.bias is not None:
                _init_bias(self.bias, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = svd_matmul(self.U_vectors, self.s, self.V_vectors, _rows(x, self.s, self.in_features)).mT
        y = y.reshape(x.shape[:-1] + (self.out_features,))
        return y if self.bias is None else y + self.bias

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight ``(out_features, in_features)``, differentiable. O(in r (in + out)): for export."""
        eye = torch.eye(self.in_features, dtype=self.s.dtype, device=self.s.device)
        return svd_matmul(self.U_vectors, self.s, self.V_vectors, eye)

    def logdet(self) -> torch.Tensor:
        """log|det W| = sum log|s| for a square layer, differentiable. O(r)."""
        if self.in_features != self.out_features:
            raise ValueError(
                "logdet needs a square layer, but this SVDLinear is {} -> {}".format(
                    self.in_features, self.out_features
                )
            )
        return torch.log(torch.abs(self.s)).sum()

    def extra_repr(self) -> str:
        return "in_features={}, out_features={}, rank={}, bias={}".format(
            self.in_features, self.out_features, self.rank, self.bias is not None
        )


class Orthogonal(nn.Module):
    """``nn.Linear``-like layer with an orthogonal weight H = H(v_1) ... H(v_n) (features x features).

    Parameters: ``vectors`` ``(n_reflections, features)`` (raw Householder
    vectors; n_reflections defaults to ``features``, which reaches every
    orthogonal matrix) and ``bias`` ``(features,)`` when ``bias=True``.
    Initialization: standard normal vectors (a random orthogonal H), bias as
    ``nn.Linear``. ``forward(x)`` is ``x @ H.T + bias`` for x
    ``(..., features)``: O(features n N) for N rows, H never formed.
    """

    def __init__(
        self,
        features: int,
        n_reflections: int | None = None,
        bias: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.features = _positive_int(features, "features")
        n = features if n_reflections is None else _positive_int(n_reflections, "n_reflections")
        if n > features:
            raise ValueError("n_reflections must be at most features = {}, got {}".format(features, n))
        factory = {"device": device, "dtype": _float_dtype(dtype)}
        self.vectors = nn.Parameter(torch.empty(n, features, **factory))
        self.bias = nn.Parameter(torch.empty(features, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Standard normal vectors (a random orthogonal weight), bias as nn.Linear."""
        with torch.no_grad():
            self.vectors.normal_()
            if self.bias is not None:
                _init_bias(self.bias, self.features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = householder_matmul(self.vectors, _rows(x, self.vectors, self.features), check_finite=False).mT
        y = y.reshape(x.shape)
        return y if self.bias is None else y + self.bias

    @property
    def weight(self) -> torch.Tensor:
        """The dense orthogonal weight ``(features, features)``, differentiable. O(n features^2)."""
        eye = torch.eye(self.features, dtype=self.vectors.dtype, device=self.vectors.device)
        return householder_matmul(self.vectors, eye, check_finite=False)

    def extra_repr(self) -> str:
        return "features={}, n_reflections={}, bias={}".format(
            self.features, self.vectors.shape[0], self.bias is not None
        )


class SVDConv1x1(nn.Module):
    """Invertible 1x1 convolution over the channels of ``(N, C, ...)`` input with W = U diag(s) V^T (C x C).

    The building block of Glow-style flows, with its log-determinant and
    inverse for free. Parameters: ``U_vectors`` and ``V_vectors`` ``(C, C)``
    (raw Householder vectors of the orthogonal U and V) and ``s`` ``(C,)``
    (signed singular values). Initialization: random orthogonal U and V
    (standard normal vectors) and ``s = 1``, so W starts as a random rotation
    (log-determinant 0), as in Glow.

    - ``forward(x)``: ``y[:, :, p] = W x[:, :, p]`` at every position p of
      ``x`` ``(N, C, *spatial)``, as ``nn.functional.conv2d(x, W[..., None, None])``
      does for 2-D input. O(C^2) per pixel, W never formed.
    - :meth:`logdet`: log|det W| = sum(log|s|), the log-determinant *per
      pixel* (a flow multiplies it by the number of positions, H W). O(C).
    - :meth:`inverse`: ``W^{-1} y = V diag(1/s) U^T y``, O(C^2) per pixel, no solve.
    - :attr:`weight`: the dense ``(C, C)`` matrix W, differentiable. O(C^3).

    Gradients reach ``U_vectors``, ``V_vectors`` and ``s`` through all four.
    """

    def __init__(
        self, channels: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        self.channels = _positive_int(channels, "channels")
        factory = {"device": device, "dtype": _float_dtype(dtype)}
        self.U_vectors = nn.Parameter(torch.empty(channels, channels, **factory))
        self.s = nn.Parameter(torch.empty(channels, **factory))
        self.V_vectors = nn.Parameter(torch.empty(channels, channels, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random orthogonal U and V (standard normal vectors) and s = 1: W a random rotation."""
        with torch.no_grad():
            self.U_vectors.normal_()
            self.V_vectors.normal_()
            self.s.fill_(1)

    def _channels_first(self, x):
        """``x`` ``(N, C, *spatial)``, checked, as ``(C, N * prod(spatial))`` (one copy)."""
        _input(x, self.s, 1, self.channels, "(N, {}, ...)".format(self.channels))
        return x.transpose(0, 1).reshape(self.channels, -1)

    def _back(self, y, x):
        return y.reshape((self.channels, x.shape[0]) + tuple(x.shape[2:])).transpose(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._back(svd_matmul(self.U_vectors, self.s, self.V_vectors, self._channels_first(x)), x)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """``x`` with ``forward(x) == y``: V diag(1/s) U^T at every position. O(C^2) per pixel, no solve."""
        return self._back(svd_matmul(self.V_vectors, 1 / self.s, self.U_vectors, self._channels_first(y)), y)

    def logdet(self) -> torch.Tensor:
        """log|det W| = sum(log|s|), per pixel, differentiable. O(C)."""
        return torch.log(torch.abs(self.s)).sum()

    @property
    def weight(self) -> torch.Tensor:
        """The dense ``(C, C)`` matrix W = U diag(s) V^T, differentiable. O(C^3)."""
        eye = torch.eye(self.channels, dtype=self.s.dtype, device=self.s.device)
        return svd_matmul(self.U_vectors, self.s, self.V_vectors, eye)

    def extra_repr(self) -> str:
        return "channels={}".format(self.channels)


def _matrix_shape(module, name, weight):
    """``(batch..., rows, cols)``: the matrices of ``weight`` that :func:`orthogonal` constrains."""
    if isinstance(module, nn.modules.conv._ConvNd) and name == "weight":
        groups = module.groups
        if weight.dim() < 2 or weight.shape[0] % groups:
            raise ValueError(
                "orthogonal constrains each of the {} groups of {}: its weight must have shape "
                "(out_channels, in_channels / groups, *kernel_size) with out_channels divisible by groups, "
                "got {}".format(groups, type(module).__name__, tuple(weight.shape))
            )
        rows = weight.shape[0] // groups
        cols = math.prod(weight.shape[1:])
        return ((groups,) if groups > 1 else ()) + (rows, cols)
    if weight.dim() < 2:
        raise ValueError(
            "orthogonal needs module.{} to have at least 2 dimensions (a matrix or a batch of matrices), "
            "got shape {}".format(name, tuple(weight.shape))
        )
    return tuple(weight.shape)


def _hermitian_reflectors(a):
    """The Householder QR of complex ``a`` ``(..., d, k)`` by Hermitian reflections: vectors ``(..., k, d)``,
    row i zero before entry i and 1 there, with H(v_1) ... H(v_k) [I_k; 0] equal to the QR's Q up to one
    phase per column. (LAPACK's complex geqrf uses non-Hermitian factors I - tau v v^H, whose vectors
    alone would not give Q.) Reflector i maps column i's trailing part x onto -sgn(x_0) ||x|| e_0, the
    cancellation-free choice; a zero x gets e_0. Cost: O(d k^2) in k level-2 steps, batched.
    """
    a = a.clone()
    d, k = a.shape[-2:]
    rows = a.new_zeros(a.shape[:-2] + (k, d))
    for i in range(k):
        x = a[..., i:, i]
        head = x[..., 0]
        phase = torch.where(head == 0, torch.ones_like(head), torch.sgn(head))
        pivot = head + phase * torch.linalg.vector_norm(x, dim=-1)  # |pivot| = |x_0| + ||x||: 0 only for x = 0
        v = x / torch.where(pivot == 0, torch.ones_like(pivot), pivot)[..., None]
        v[..., 0] = 1
        rows[..., i, i:] = v
        block = a[..., i:, i:]
        w = (v.conj()[..., :, None] * block).sum(dim=-2)
        block -= (2 / torch.linalg.vecdot(v, v).real)[..., None, None] * v[..., :, None] * w[..., None, :]
    return rows


class _HouseholderWeight(nn.Module):
    """The parametrization installed by :func:`orthogonal`: Householder vectors -> (semi-)orthogonal matrices.

    ``shape`` is the weight's shape and ``matrix_shape`` ``(..., rows, cols)``
    its matrices (see :func:`orthogonal`). With d = max(rows, cols) and
    k = min(rows, cols), each matrix is ``H[:, :k] diag(signs)``, transposed
    when rows < cols, for H the d x d product of n vectors ``(..., n, d)``
    and ``signs`` a fixed buffer of +-1 (unit phases for a complex weight, whose matrices are then
    unitary: H is a product of complex reflections) (set by :meth:`right_inverse`, so
    that an orthogonal weight is reproduced exactly). Vector i is read from
    entry i on (LAPACK's layout, which still reaches every orthogonal
    matrix): the entries before it are not used (their gradient is zero),
    and each block of reflections skips the rows it cannot touch.

    The raw tensor ``original`` has the weight's own shape when n = k (the
    default; the vectors are the matrices' columns when rows >= cols, their
    rows otherwise), so ``remove_parametrizations(..., leave_parametrized=False)``
    leaves a weight the layer runs with; otherwise it is the vectors
    ``(..., n, d)``. Cost per forward: O(n d k) per matrix.
    """

    def __init__(self, shape, matrix_shape, n_reflections=None, dtype=None, device=None):
        super().__init__()
        self.shape, self.matrix_shape = tuple(shape), tuple(matrix_shape)
        rows, cols = matrix_shape[-2:]
        self.tall = rows >= cols
        d, k = max(rows, cols), min(rows, cols)
        self.n_reflections = k if n_reflections is None else _positive_int(n_reflections, "n_reflections")
        if self.n_reflections > d:
            raise ValueError(
                "n_reflections must be at most max(rows, cols) = {} of the {}x{} matrices, got {}".format(
                    d, rows, cols, self.n_reflections
                )
            )
        self.register_buffer("signs", torch.ones(self.matrix_shape[:-2] + (k,), dtype=dtype, device=device))

    def _vectors(self, original):
        """The vectors ``(..., n, d)`` stored in ``original`` (row i is read from column i on)."""
        if self.n_reflections != self.signs.shape[-1]:
            return original
        matrices = original.reshape(self.matrix_shape)
        return matrices.mT if self.tall else matrices

    def forward(self, original):
        # row i of the vectors is read from column i on (LAPACK's layout, what right_inverse makes): the
        # entries before it are not used, and each block of reflections skips the rows it cannot touch
        vectors = self._vectors(original)
        d, k = vectors.shape[-1], self.signs.shape[-1]
        if vectors.shape[-2] > k:  # reflection i >= k leaves I[:, :k] as it is (zero before column i)
            vectors = vectors[..., :k, :]
        if not vectors.is_complex() and _columns.cheaper(vectors.shape[-2], d, k):
            q = _columns.columns(vectors, k, self.signs)  # reads each row from its diagonal on
        else:
            vectors = torch.triu(vectors)
            q = _left(vectors, torch.eye(d, k, dtype=vectors.dtype, device=vectors.device), False, trapezoidal=True)
            q = q * self.signs[..., None, :]
        return (q if self.tall else q.mT).reshape(self.shape)

    @torch.no_grad()
    def right_inverse(self, weight):
        """The raw tensor for ``weight`` (its matrices' QR by ``torch.geqrf``); sets ``signs``.

        ``ValueError`` unless ``weight`` has the parametrized shape. Each
        matrix becomes the orthonormal factor Q of its QR (the first k
        columns, R's diagonal made positive), exactly the matrix itself when
        it is already orthogonal. Reflector i is e_i plus column i of geqrf's
        output below the diagonal (an identity factor, tau = 0, becomes the
        reflection e_i, whose sign ``signs`` undoes); n < k keeps the first n
        reflectors (Q's first n columns), n > k appends e_{k+1}, ..., e_n.
        """
        if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != self.shape:
            raise ValueError(
                "Expected a matrix or batch of matrices of shape {}. Got a tensor of shape {}.".format(
                    self.shape, tuple(getattr(weight, "shape", ())) or type(weight).__name__
                )
            )
        a = weight.reshape(self.matrix_shape)
        a = a if self.tall else a.mT
        d, k = a.shape[-2:]
        n = self.n_reflections
        vectors = weight.new_zeros(a.shape[:-2] + (n, d))
        m = min(n, k)
        if a.is_complex():
            vectors[..., :m, :] = _hermitian_reflectors(a)[..., :m, :]
        else:
            qr, _ = torch.geqrf(a)
            vectors[..., :m, :] = torch.tril(qr, -1).mT[..., :m, :]
        idx = torch.arange(n, device=weight.device)
        vectors[..., idx, idx] = 1
        columns = torch.eye(d, k, dtype=weight.dtype, device=weight.device)
        q = householder_matmul(vectors, columns)
        signs = torch.sgn((q.conj() * a).sum(dim=-2))  # +-1, or a phase for complex weights
        self.signs.copy_(torch.where(signs == 0, torch.ones_like(signs), signs))
        if n != k:
            return vectors
        return (vectors.mT if self.tall else vectors).reshape(self.shape)


def orthogonal(module: nn.Module, name: str = "weight", n_reflections: int | None = None) -> nn.Module:
    """Constrain ``module.<name>`` to (semi-)orthogonal matrices of Householder vectors, in one line.

    Which matrices:

    - a convolution (``nn.Conv1d``/``Conv2d``/``Conv3d`` and the transposed
      ones): the weight flattened to ``(out, in / groups * prod(kernel_size))``
      gets orthonormal rows when it is wide (out <= in * k...), else
      orthonormal columns; with ``groups > 1`` each group's
      ``(out / groups, in / groups * prod(kernel_size))`` block is constrained
      on its own. An orthonormal-row conv weight preserves the norm of every
      patch's projection, which is what an orthogonal convolution layer needs.
      This differs from ``torch.nn.utils.parametrizations.orthogonal``, which
      treats the last two axes (kh x kw) as a batch of small matrices.
    - any other module: a weight ``(..., rows, cols)`` is a batch of
      matrices over its last two axes, as torch does; each gets orthonormal
      columns (rows >= cols) or rows.

    Registers :class:`_HouseholderWeight` with
    ``torch.nn.utils.parametrize.register_parametrization``. The raw tensor
    is ``module.parametrizations.<name>.original``, initialized from the QR
    of the current weight (an orthogonal weight is kept as it is; any other
    becomes the Q of its QR), of the weight's own shape for the default
    ``n_reflections = min(rows, cols)``. Assigning ``module.<name> = W``
    re-initializes from W (a ``ValueError`` naming the expected shape if W's
    differs). float32, float64, complex64 and complex128 (a complex weight gets orthonormal columns or
    rows in C^d: a unitary matrix when square). Cost per forward: O(n max(rows, cols)
    min(rows, cols)) per matrix. Returns ``module``.
    """
    weight = getattr(module, name, None)
    if not isinstance(weight, torch.Tensor):
        raise ValueError(
            "orthogonal needs a tensor module.{}, got {}".format(
                name, None if weight is None else type(weight).__name__
            )
        )
    if weight.dtype not in DTYPES:
        raise TypeError(
            "module.{} has dtype {}; supported dtypes are torch.float32, torch.float64, torch.complex64 and "
            "torch.complex128".format(name, weight.dtype)
        )
    matrix_shape = _matrix_shape(module, name, weight)
    parametrization = _HouseholderWeight(weight.shape, matrix_shape, n_reflections, weight.dtype, weight.device)
    parametrize.register_parametrization(module, name, parametrization)
    return module
