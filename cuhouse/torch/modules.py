"""Layers: ``SVDLinear``, ``Orthogonal`` and the ``orthogonal`` parametrization of an existing weight."""

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from .ops import householder_matmul, product


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


def _rows(x, features, name="x"):
    """``x`` ``(..., features)`` as ``(N, features)`` (a view when the strides allow)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError("{} must be a torch.Tensor, got {}".format(name, type(x).__name__))
    if x.dim() == 0 or x.shape[-1] != features:
        raise ValueError("{} must have shape (..., {}), got shape {}".format(name, features, tuple(x.shape)))
    return x.reshape(-1, features)


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

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
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

    def reset_parameters(self):
        """Random orthogonal U and V (standard normal vectors), s uniform in [0.9, 1.1], bias as nn.Linear."""
        with torch.no_grad():
            self.U_vectors.normal_()
            self.V_vectors.normal_()
            self.s.uniform_(0.9, 1.1)
            if self.bias is not None:
                _init_bias(self.bias, self.in_features)

    def _params(self):
        return (self.U_vectors, self.s, self.V_vectors)

    def forward(self, x):
        rows = _rows(x, self.in_features)
        y = product("svd", True, "right", rows, self._params(), ("U_vectors", "s", "V_vectors", "x"))
        y = y.reshape(x.shape[:-1] + (self.out_features,))
        return y if self.bias is None else y + self.bias

    @property
    def weight(self):
        """The dense weight ``(out_features, in_features)``, differentiable. O(in r (in + out)): for export."""
        eye = torch.eye(self.in_features, dtype=self.s.dtype, device=self.s.device)
        return product("svd", False, "left", eye, self._params(), ("U_vectors", "s", "V_vectors", "X"))

    def logdet(self):
        """log|det W| = sum log|s| for a square layer, differentiable. O(r)."""
        if self.in_features != self.out_features:
            raise ValueError(
                "logdet needs a square layer, but this SVDLinear is {} -> {}".format(
                    self.in_features, self.out_features
                )
            )
        return torch.log(torch.abs(self.s)).sum()

    def extra_repr(self):
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

    def __init__(self, features, n_reflections=None, bias=False, device=None, dtype=None):
        super().__init__()
        self.features = _positive_int(features, "features")
        n = features if n_reflections is None else _positive_int(n_reflections, "n_reflections")
        if n > features:
            raise ValueError("n_reflections must be at most features = {}, got {}".format(features, n))
        factory = {"device": device, "dtype": _float_dtype(dtype)}
        self.vectors = nn.Parameter(torch.empty(n, features, **factory))
        self.bias = nn.Parameter(torch.empty(features, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        """Standard normal vectors (a random orthogonal weight), bias as nn.Linear."""
        with torch.no_grad():
            self.vectors.normal_()
            if self.bias is not None:
                _init_bias(self.bias, self.features)

    def forward(self, x):
        rows = _rows(x, self.features)
        y = product("householder", True, "right", rows, (self.vectors,), ("vectors", "x"))
        y = y.reshape(x.shape)
        return y if self.bias is None else y + self.bias

    @property
    def weight(self):
        """The dense orthogonal weight ``(features, features)``, differentiable. O(n features^2)."""
        eye = torch.eye(self.features, dtype=self.vectors.dtype, device=self.vectors.device)
        return householder_matmul(self.vectors, eye)

    def extra_repr(self):
        return "features={}, n_reflections={}, bias={}".format(
            self.features, self.vectors.shape[0], self.bias is not None
        )


class _HouseholderWeight(nn.Module):
    """The parametrization installed by :func:`orthogonal`: Householder vectors -> a (semi-)orthogonal weight.

    For a weight ``(rows, cols)``, d = max(rows, cols) and k = min(rows, cols):
    the weight is ``H[:, :k] diag(signs)``, transposed when rows < cols, with
    H the d x d product of the vectors ``(n, d)`` and ``signs`` a fixed
    buffer of +-1 (set by :meth:`right_inverse`, so that an orthogonal weight
    is reproduced exactly). Cost per forward: O(n d k).
    """

    def __init__(self, shape, n_reflections=None, dtype=None, device=None):
        super().__init__()
        self.rows, self.cols = shape
        d, k = max(shape), min(shape)
        self.n_reflections = k if n_reflections is None else _positive_int(n_reflections, "n_reflections")
        if self.n_reflections > d:
            raise ValueError(
                "n_reflections must be at most max(weight.shape) = {}, got {}".format(d, self.n_reflections)
            )
        self.register_buffer("signs", torch.ones(k, dtype=dtype, device=device))

    def forward(self, vectors):
        d, k = max(self.rows, self.cols), min(self.rows, self.cols)
        columns = torch.eye(d, k, dtype=vectors.dtype, device=vectors.device)
        q = householder_matmul(vectors, columns) * self.signs
        return q if self.rows >= self.cols else q.mT

    @torch.no_grad()
    def right_inverse(self, weight):
        """Vectors ``(n, d)`` from the QR of ``weight`` (``torch.geqrf``); sets ``signs``.

        The weight becomes the orthonormal factor Q of its QR (the first k
        columns, R's diagonal made positive), exactly the weight itself when
        it is already orthogonal. Reflector i is e_i plus column i of geqrf's
        output below the diagonal (an identity factor, tau = 0, becomes the
        reflection e_i, whose sign ``signs`` undoes); n < k keeps the first n
        reflectors (Q's first n columns), n > k appends e_{k+1}, ..., e_n.
        """
        a = weight if self.rows >= self.cols else weight.mT
        d, k = a.shape
        n = self.n_reflections
        qr, _ = torch.geqrf(a)
        vectors = torch.zeros(n, d, dtype=weight.dtype, device=weight.device)
        m = min(n, k)
        vectors[:m] = torch.tril(qr, -1).mT[:m]
        idx = torch.arange(n, device=weight.device)
        vectors[idx, idx] = 1
        columns = torch.eye(d, k, dtype=weight.dtype, device=weight.device)
        q = householder_matmul(vectors, columns)
        signs = torch.sign((q * a).sum(dim=0))
        self.signs.copy_(torch.where(signs == 0, torch.ones_like(signs), signs))
        return vectors


def orthogonal(module, name="weight", n_reflections=None):
    """Constrain ``module.<name>`` (e.g. an ``nn.Linear`` weight) to be orthogonal, in one line.

    Registers :class:`_HouseholderWeight` with
    ``torch.nn.utils.parametrize.register_parametrization``. The raw
    parameter is ``module.parametrizations.<name>.original``: Householder
    vectors ``(n_reflections, max(rows, cols))``, initialized from the QR of
    the current weight (so an orthogonal weight is kept as it is; any other
    becomes the Q of its QR). ``n_reflections`` defaults to min(rows, cols).
    A (rows, cols) weight with rows != cols gets orthonormal columns
    (rows > cols) or rows (rows < cols). Returns ``module``.
    """
    weight = getattr(module, name, None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(
            "orthogonal needs a 2-D tensor module.{}, got {}".format(
                name, None if weight is None else tuple(getattr(weight, "shape", ())) or type(weight).__name__
            )
        )
    if weight.dtype not in (torch.float32, torch.float64):
        raise TypeError(
            "module.{} has dtype {}; supported dtypes are torch.float32 and torch.float64".format(name, weight.dtype)
        )
    parametrization = _HouseholderWeight(tuple(weight.shape), n_reflections, weight.dtype, weight.device)
    parametrize.register_parametrization(module, name, parametrization)
    return module
