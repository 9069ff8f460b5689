"""cuhouse.torch.orthogonal on batched and convolution weights, remove_parametrizations, and SVDConv1x1."""

import pytest

torch = pytest.importorskip("torch", reason="cuhouse.torch needs PyTorch: pip install 'cuhouse[torch]'")

from test_torch import assert_close, dense_householder, randn  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils import parametrize  # noqa: E402

import cuhouse.torch as cht  # noqa: E402

F64 = torch.float64


def assert_orthonormal(matrices):
    """Orthonormal rows when wide, orthonormal columns when tall, for a stack ``(..., rows, cols)``."""
    rows, cols = matrices.shape[-2:]
    gram = matrices @ matrices.mT if rows <= cols else matrices.mT @ matrices
    eye = torch.eye(min(rows, cols), dtype=matrices.dtype).expand_as(gram)
    assert_close(gram, eye, matrices.dtype, scale=100)


class Batched(nn.Module):
    """A module with a batch of matrices as its weight ``(*batch, rows, cols)``."""

    def __init__(self, shape):
        super().__init__()
        self.weight = nn.Parameter(randn(*shape, seed=7))

    def forward(self, x):
        return self.weight @ x


# ------------------------------------------------------------ batched weights
@pytest.mark.parametrize("shape", [(3, 5, 2), (2, 3, 4, 4), (3, 2, 5)])
def test_batched_weight_is_a_batch_of_orthonormal_matrices(shape):
    module = Batched(shape)
    w = module.weight.detach().clone()
    cht.orthogonal(module)
    weight = module.weight
    assert weight.shape == shape
    assert_orthonormal(weight)
    rows, cols = shape[-2:]
    a = w if rows >= cols else w.mT
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[..., None, :]
    assert_close(weight, q if rows >= cols else q.mT, F64, scale=1000)
    weight.sum().backward()
    assert module.parametrizations.weight.original.grad.shape == shape


def test_right_inverse_refuses_a_wrong_shape_as_torch_does():
    linear = cht.orthogonal(nn.Linear(3, 5, dtype=F64))
    with pytest.raises(
        ValueError, match=r"Expected a matrix or batch of matrices of shape \(5, 3\)\. Got a tensor of shape \(3, 5\)\."
    ):
        linear.weight = torch.zeros(3, 5, dtype=F64)
    q, _ = torch.linalg.qr(randn(5, 3))
    linear.weight = q  # the right shape: re-initialized from q, which is kept exactly
    assert_close(linear.weight, q, F64, scale=100)


@pytest.mark.parametrize("shape", [(5, 3), (4, 4), (3, 5)], ids=["tall", "square", "wide"])
def test_remove_parametrizations_without_leaving_the_parametrized_weight(shape):
    rows, cols = shape
    linear = cht.orthogonal(nn.Linear(cols, rows, dtype=F64))
    original = linear.parametrizations.weight.original.detach().clone()
    parametrize.remove_parametrizations(linear, "weight", leave_parametrized=False)
    assert linear.weight.shape == shape
    assert torch.equal(linear.weight.detach(), original)
    assert linear(randn(2, cols)).shape == (2, rows)  # the layer still runs


@pytest.mark.parametrize("shape", [(5, 3), (3, 5)])
def test_remove_parametrizations_leaving_the_parametrized_weight(shape):
    rows, cols = shape
    linear = cht.orthogonal(nn.Linear(cols, rows, dtype=F64))
    weight = linear.weight.detach().clone()
    parametrize.remove_parametrizations(linear, "weight")
    assert torch.equal(linear.weight.detach(), weight)
    assert_orthonormal(linear.weight.detach())


# ------------------------------------------------------------------- convolutions
CONVS = {
    "Conv1d wide": lambda: nn.Conv1d(3, 4, 3, dtype=F64),  # 4 x 9
    "Conv2d wide": lambda: nn.Conv2d(2, 5, 3, dtype=F64),  # 5 x 18
    "Conv2d tall": lambda: nn.Conv2d(2, 9, (2, 2), dtype=F64),  # 9 x 8
    "Conv3d": lambda: nn.Conv3d(2, 3, 2, dtype=F64),  # 3 x 16
    "Conv2d groups": lambda: nn.Conv2d(4, 6, 2, groups=2, dtype=F64),  # 2 groups of 3 x 8
    "Conv2d groups tall": lambda: nn.Conv2d(2, 12, 2, groups=2, dtype=F64),  # 2 groups of 6 x 4
    "ConvTranspose2d": lambda: nn.ConvTranspose2d(3, 4, 2, dtype=F64),  # weight (3, 4, 2, 2): 3 x 16
}


@pytest.mark.parametrize("name", CONVS)
def test_conv_weight_flattened_per_group_is_orthonormal(name):
    torch.manual_seed(0)
    conv = cht.orthogonal(CONVS[name]())
    weight = conv.weight
    groups = conv.groups
    matrices = weight.reshape(groups, weight.shape[0] // groups, -1)
    assert_orthonormal(matrices)
    assert conv.parametrizations.weight.original.shape == weight.shape
    x = randn(2, conv.in_channels, *([4] * (weight.dim() - 2)), seed=3)
    conv(x).square().sum().backward()
    assert conv.parametrizations.weight.original.grad.abs().sum() > 0


def test_orthonormal_rows_conv_preserves_the_norm_of_each_patch_projection():
    """Wide conv (out <= in k^2): W W^T = I, so ||conv(x)|| <= ||patches|| with equality on W's row space."""
    torch.manual_seed(0)
    conv = cht.orthogonal(nn.Conv2d(2, 3, 2, bias=False, dtype=F64))
    w = conv.weight.reshape(3, -1)
    patch = w.T @ randn(3, seed=4)  # a patch in W's row space
    x = patch.reshape(1, 2, 2, 2)
    assert_close(conv(x).norm(), patch.norm(), F64)


def test_orthogonal_other_module_treats_the_last_two_axes_as_matrices():
    """Not a conv: like torch's orthogonal, a (4, 3, 3) weight is a batch of 4 matrices 3 x 3."""
    module = Batched((4, 3, 3))
    cht.orthogonal(module)
    assert_orthonormal(module.weight)


def test_grouped_conv_with_incompatible_shapes():
    conv = nn.Conv2d(4, 6, 2, groups=2)
    conv.weight = nn.Parameter(torch.randn(5, 2, 2, 2))  # 5 output channels cannot split into 2 groups
    with pytest.raises(
        ValueError,
        match=r"orthogonal constrains each of the 2 groups of Conv2d: .* out_channels divisible by groups, "
        r"got \(5, 2, 2, 2\)",
    ):
        cht.orthogonal(conv)


def test_conv_n_reflections_and_assignment():
    conv = cht.orthogonal(nn.Conv1d(2, 3, 2, dtype=F64), n_reflections=2)  # 3 x 4 matrices: k = 3, d = 4
    assert conv.parametrizations.weight.original.shape == (2, 4)
    with pytest.raises(ValueError, match=r"Expected a matrix or batch of matrices of shape \(3, 2, 2\)"):
        conv.weight = torch.zeros(3, 4, dtype=F64)


# ------------------------------------------------------------------- SVDConv1x1
def dense_weight(layer):
    u, v = dense_householder(layer.U_vectors), dense_householder(layer.V_vectors)
    return u * layer.s @ v.T


def conv_layer(channels=5, seed=0):
    torch.manual_seed(seed)
    layer = cht.SVDConv1x1(channels, dtype=F64)
    with torch.no_grad():
        layer.s.copy_(torch.linspace(-1.5, 2.0, channels))
    return layer


def test_svd_conv_forward_inverse_logdet_against_conv2d():
    layer = conv_layer()
    x = randn(2, 5, 3, 4, seed=3)
    w = dense_weight(layer)
    assert_close(layer.weight, w, F64)
    y = layer(x)
    assert y.shape == x.shape
    assert_close(y, nn.functional.conv2d(x, w[:, :, None, None]), F64)
    inv = torch.linalg.inv(w)
    assert_close(layer.inverse(y), x, F64)
    assert_close(layer.inverse(x), nn.functional.conv2d(x, inv[:, :, None, None]), F64)
    assert_close(layer.logdet(), torch.linalg.slogdet(w)[1], F64)


def test_svd_conv_other_spatial_dims():
    layer = conv_layer(3)
    w = layer.weight
    for shape in [(2, 3), (2, 3, 5), (1, 3, 2, 2, 2)]:
        x = randn(*shape, seed=3)
        expected = torch.einsum("ij,nj...->ni...", w, x)
        assert_close(layer(x), expected, F64)


def test_svd_conv_gradients_against_the_dense_layer():
    """Loss = <G, conv(x)> + H W logdet (a flow's objective): the same gradients as conv2d with the
    dense weight and slogdet, for U_vectors, s, V_vectors and x."""
    layer = conv_layer()
    x = randn(2, 5, 3, 3, seed=3, requires_grad=True)
    g = randn(2, 5, 3, 3, seed=4)
    params = [layer.U_vectors, layer.s, layer.V_vectors]
    loss = (g * layer(x)).sum() + 9 * layer.logdet()
    got = torch.autograd.grad(loss, params + [x])
    w = dense_weight(layer)
    dense = (g * nn.functional.conv2d(x, w[:, :, None, None])).sum() + 9 * torch.linalg.slogdet(w)[1]
    expected = torch.autograd.grad(dense, params + [x])
    for a, b in zip(got, expected):
        assert_close(a, b, F64, scale=100)
    loss = layer.inverse(x).square().sum()
    got = torch.autograd.grad(loss, params)
    expected = torch.autograd.grad(
        nn.functional.conv2d(x, torch.linalg.inv(dense_weight(layer))[:, :, None, None]).square().sum(), params
    )
    for a, b in zip(got, expected):
        assert_close(a, b, F64, scale=1000)


def test_svd_conv_initialization_and_float32():
    layer = cht.SVDConv1x1(4)
    assert layer.s.dtype == torch.float32 and torch.equal(layer.s.detach(), torch.ones(4))
    assert_close(layer.weight @ layer.weight.T, torch.eye(4), torch.float32)
    assert layer.logdet().item() == 0
    assert dict((n, tuple(p.shape)) for n, p in layer.named_parameters()) == {
        "U_vectors": (4, 4),
        "s": (4,),
        "V_vectors": (4, 4),
    }
    assert "channels=4" in repr(layer)


def test_svd_conv_bad_input():
    layer = cht.SVDConv1x1(3)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 3, \.\.\.\), got shape \(2, 4, 5, 5\)"):
        layer(torch.ones(2, 4, 5, 5))
    with pytest.raises(ValueError, match=r"x must have shape \(N, 3, \.\.\.\), got shape \(3,\)"):
        layer.inverse(torch.ones(3))
    with pytest.raises(TypeError, match=r"x has dtype torch\.int64; supported dtypes are"):
        layer(torch.ones(2, 3, 1, 1, dtype=torch.int64))
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
        layer([1.0, 2.0, 3.0])
    with pytest.raises(TypeError, match="x is on meta but the layer's parameters are on cpu"):
        layer(torch.ones(2, 3, 1, 1, device="meta"))
    with pytest.raises(ValueError, match="channels must be a positive int, got 0"):
        cht.SVDConv1x1(0)
    with pytest.raises(TypeError, match="dtype must be torch.float32 or torch.float64, got torch.float16"):
        cht.SVDConv1x1(3, dtype=torch.float16)
