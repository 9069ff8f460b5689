"""PyTorch adapter: cuhouse's Householder products as differentiable torch operations and layers.

``pip install "cuhouse[torch]"``. Tensors cross to NumPy (CPU) or CuPy (CUDA)
by DLPack without a copy; the backward passes are cuhouse's manual adjoints
(:func:`cuhouse.vjp`), wrapped in ``torch.autograd``.

- :func:`householder_matmul` ``(vectors, X)``: H(vectors) @ X, differentiable in both.
- :class:`SVDLinear`: ``nn.Linear`` with weight U[:, :r] diag(s) V[:, :r]^T, never formed.
- :class:`Orthogonal`: ``nn.Linear``-like layer with an orthogonal weight of n reflections.
- :func:`orthogonal`: a Householder parametrization of an existing layer's weight, in one line.

Under ``torch.compile`` the products go through the custom operators
``torch.ops.cuhouse.matmul`` and ``torch.ops.cuhouse.matmul_backward``,
which have fake (meta) implementations.
"""

try:
    import torch as _torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError('cuhouse.torch needs PyTorch: pip install "cuhouse[torch]"') from exc

from .modules import Orthogonal, SVDLinear, orthogonal
from .ops import householder_matmul

__all__ = ["Orthogonal", "SVDLinear", "householder_matmul", "orthogonal"]
