"""cuhouse: orthogonal and SVD-parameterized matrices as Householder products.

FastH ("What if Neural Networks had SVDs?", NeurIPS 2020) and level-3 compact
WY products for NumPy and CuPy arrays.
"""

from ._operator import Operator, Product
from .autodiff import logdet, matmul, vjp
from .flatten import flatten_params, unflatten_params
from .householder import HouseholderProduct
from .spectral import EighMatrix, SVDMatrix

__all__ = [
    "EighMatrix",
    "HouseholderProduct",
    "Operator",
    "Product",
    "SVDMatrix",
    "flatten_params",
    "logdet",
    "matmul",
    "unflatten_params",
    "vjp",
]
__version__ = "0.1.0"
