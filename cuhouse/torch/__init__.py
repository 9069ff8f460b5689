"""PyTorch layer: cuhouse's Householder products as differentiable torch operations and layers.

``pip install "cuhouse[torch]"``. Everything runs in torch operations on the
tensors' own device (no NumPy or CuPy crossing): compact WY with cuhouse's
level-3 backward in one ``torch.autograd.Function`` (:mod:`cuhouse._torch`, shared with
the core's classes on torch tensors; ``orthogonal()``'s materialized weight has its own,
:mod:`cuhouse.torch._columns`). Each
function and layer composes with ``torch.func`` (vmap, grad, jacrev),
``torch.compile(fullgraph=True)`` and ``torch.export``, and differentiates to
any order (``gradgradcheck``, gradient penalties).

- :func:`householder_matmul` ``(vectors, X)``: H(vectors) @ X, differentiable in both.
- :class:`SVDLinear`: ``nn.Linear`` with weight U[:, :r] diag(s) V[:, :r]^T, never formed.
- :class:`Orthogonal`: ``nn.Linear``-like layer with an orthogonal weight of n reflections.
- :class:`SVDConv1x1`: invertible 1x1 convolution W = U diag(s) V^T, with ``logdet()`` and ``inverse()``.
- :func:`orthogonal`: a Householder parametrization of an existing layer's weight (linear, batched or
  convolution weights), in one line.
"""

try:
    import torch as _torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError('cuhouse.torch needs PyTorch: pip install "cuhouse[torch]"') from exc

from .modules import Orthogonal, SVDConv1x1, SVDLinear, orthogonal
from .ops import householder_matmul

__all__ = ["Orthogonal", "SVDConv1x1", "SVDLinear", "householder_matmul", "orthogonal"]
