"""Materialize H once with the compact WY form, then one GEMM per product.

Pays O(n d^2) once per H (cached) and O(d^2 m) per product: the fastest route
once m, summed over the products that reuse H, is comparable to d.
"""
from . import cwy


def build(y, block_size, xp):
    """The dense d x d matrix H (batched), via CWY applied to the identity. O(n d^2)."""
    d = y.shape[-1]
    eye = xp.eye(d, dtype=y.dtype)
    return cwy.apply(cwy.build(y, block_size, xp), eye, False, xp)


def apply(h, x, transpose, xp):
    """``H @ X`` (``H.T @ X``) as one GEMM. O(d^2 m)."""
    return (xp.swapaxes(h, -1, -2) if transpose else h) @ x
