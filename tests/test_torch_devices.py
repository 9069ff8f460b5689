"""torch tensors on every device torch has here: the core classes, autograd to second order, the
cuhouse.torch layers, vmap, torch.compile, refusals of mixed devices, no CuPy and no host syncs.

Each test runs on ``cpu`` everywhere (which keeps the tests themselves checked on machines without a
GPU), on ``cuda`` when torch sees a CUDA device (marked ``cuda_torch``: ``tools/gpu_check.sh`` runs
them with the GPU tests) and on ``mps`` on an Apple GPU. References are the NumPy path in float64.
"""

import subprocess
import sys

import numpy
import pytest

torch = pytest.importorskip("torch", reason="torch tensors need PyTorch: pip install 'cuhouse[torch]'")

import cuhouse as ch  # noqa: E402
import cuhouse.torch as cht  # noqa: E402


def _has_mps():
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "cuda",
        id="cuda",
        marks=[
            pytest.mark.cuda_torch,  # not `gpu`: the CPU stand-in of CuPy cannot stand in for torch's CUDA
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA build of torch and a device"),
        ],
    ),
    pytest.param("mps", id="mps", marks=pytest.mark.skipif(not _has_mps(), reason="needs an Apple GPU (MPS)")),
]
TOL = {torch.float32: 1e-4, torch.float64: 1e-10}


def tensor(a, device, dtype=torch.float32, requires_grad=False):
    return torch.tensor(numpy.asarray(a), dtype=dtype, device=device, requires_grad=requires_grad)


def host(t):
    """float64 NumPy copy of a tensor on any device."""
    return t.detach().cpu().double().numpy()


def assert_close(actual, expected, dtype=torch.float32):
    expected = numpy.asarray(expected, dtype=numpy.float64)
    actual = host(actual) if isinstance(actual, torch.Tensor) else numpy.asarray(actual)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    numpy.testing.assert_allclose(actual, expected, rtol=0, atol=TOL[dtype] * max(1.0, numpy.abs(expected).max()))


def on_device(t, device):
    assert isinstance(t, torch.Tensor) and t.device.type == device, (type(t), getattr(t, "device", None))
    return t


def float64_device(device):
    if device == "mps":
        pytest.skip("MPS has no float64")


@pytest.mark.parametrize("device", DEVICES)
def test_core_classes_give_tensors_on_the_same_device(device):
    rng = numpy.random.default_rng(0)
    v, u, x = rng.standard_normal((5, 8)), rng.standard_normal((8, 8)), rng.standard_normal((8, 3))
    s = rng.uniform(0.5, 1.5, 8)
    h, vt, xt = ch.HouseholderProduct(tensor(v, device)), tensor(v, device), tensor(x, device)
    hn, un = ch.HouseholderProduct(v), ch.HouseholderProduct(u)
    assert h.dtype == torch.float32 and h.device == vt.device
    for op, reference in ((h, hn), (h.T, hn.T), (h.inv(), hn.inv()), (h @ h.T, hn @ hn.T)):
        assert_close(on_device(op @ xt, device), reference @ x)
    assert_close(on_device(ch.matmul(xt.T, h), device), x.T @ hn)
    assert_close(on_device(h.logdet(), device), 0.0)
    assert_close(on_device(h.todense(), device), hn.todense())
    w = ch.SVDMatrix(tensor(u, device), tensor(s, device), tensor(v[:, ::-1].copy(), device))
    wn = ch.SVDMatrix(u, s, v[:, ::-1].copy())
    assert_close(on_device(w @ xt, device), wn @ x)
    assert_close(on_device(w.inv() @ xt, device), wn.inv() @ x)
    assert_close(on_device(w.logdet(), device), wn.logdet())
    e, en = ch.EighMatrix(tensor(u, device), tensor(s, device)), ch.EighMatrix(u, s)
    assert_close(on_device(e.expm() @ xt, device), en.expm() @ x)
    assert_close(
        on_device(ch.HouseholderProduct.from_dense(tensor(un.todense(), device)).todense(), device), un.todense()
    )


@pytest.mark.parametrize("device", DEVICES)
def test_from_lapack_takes_torch_geqrf_output_on_the_device(device):
    if device == "mps":
        pytest.skip("torch.geqrf has no MPS kernel")
    a = tensor(numpy.random.default_rng(1).standard_normal((7, 4)), device)
    qr, tau = torch.geqrf(a)
    h = ch.HouseholderProduct.from_lapack(qr, tau)
    assert_close(on_device(h.todense()[:, :4], device), host(torch.linalg.householder_product(qr, tau)))
    assert_close(on_device(h.T @ a, device)[:4], host(torch.triu(qr[:4])))


@pytest.mark.parametrize("device", DEVICES)
def test_gradients_on_the_device_match_numpy(device):
    rng = numpy.random.default_rng(2)
    v, u, x, g = (rng.standard_normal(shape) for shape in ((4, 6), (6, 6), (6, 3), (6, 3)))
    s = rng.uniform(0.5, 1.5, 6)
    leaves = [tensor(a, device, requires_grad=True) for a in (v, u, s, x)]
    vt, ut, st, xt = leaves
    out = ch.HouseholderProduct(vt) @ (ch.SVDMatrix(ut, st, ut) @ xt)
    grads = torch.autograd.grad(out, leaves, tensor(g, device))
    for grad in grads:
        on_device(grad, device)

    y, inner_back = ch.vjp(ch.matmul, ch.SVDMatrix(u, s, u), x)  # the NumPy path in float64
    (dv,), dy = ch.vjp(ch.matmul, ch.HouseholderProduct(v), y)[1](g)
    (du, ds, du2), dx = inner_back(dy)
    for got, want in zip(grads, (dv, du + du2, ds, dx)):
        assert_close(got, want)


@pytest.mark.parametrize("device", DEVICES)
def test_second_order_gradients_on_the_device(device):
    float64_device(device)
    rng = numpy.random.default_rng(3)
    v, u, x = (tensor(rng.standard_normal(shape), device, torch.float64, True) for shape in ((3, 5), (5, 5), (5, 2)))
    s = tensor(rng.uniform(0.5, 1.5, 5), device, torch.float64, True)
    cases = {
        "HouseholderProduct": (lambda v, x: ch.HouseholderProduct(v) @ x, (v, x)),
        "householder_matmul": (cht.householder_matmul, (v, x)),
        "SVDMatrix": (lambda u, s, x: ch.SVDMatrix(u, s, u) @ x, (u, s, x)),
        "logdet": (lambda u, s: ch.SVDMatrix(u, s, u).logdet(), (u, s)),
    }
    for name, (function, args) in cases.items():
        assert torch.autograd.gradcheck(function, args), name
        assert torch.autograd.gradgradcheck(function, args), name


@pytest.mark.parametrize("device", DEVICES)
def test_layers_train_on_the_device_as_on_the_cpu(device):
    torch.manual_seed(0)
    layers = {
        "SVDLinear": lambda: cht.SVDLinear(6, 4),
        "Orthogonal": lambda: cht.Orthogonal(6, bias=True),
        "orthogonal(Linear)": lambda: cht.orthogonal(torch.nn.Linear(6, 6)),
    }
    x = torch.randn(5, 6)
    for make in layers.values():
        cpu_layer = make()
        layer = make().to(device)
        layer.load_state_dict(cpu_layer.state_dict())
        for model, inputs in ((cpu_layer, x), (layer, x.to(device))):
            out = model(inputs)
            out.square().sum().backward()
            torch.optim.SGD(model.parameters(), lr=0.1).step()
        after = layer(x.to(device))
        assert_close(on_device(after, device), host(cpu_layer(x)))
        for p, q in zip(layer.parameters(), cpu_layer.parameters()):
            assert_close(on_device(p, device), host(q))
    weight = cht.orthogonal(torch.nn.Linear(6, 6)).to(device).weight
    assert_close(weight.T @ weight, numpy.eye(6))


@pytest.mark.parametrize("device", DEVICES)
def test_vmap_on_the_device_matches_a_loop(device):
    rng = numpy.random.default_rng(4)
    vb, x = tensor(rng.standard_normal((3, 4, 6)), device), tensor(rng.standard_normal((6, 2)), device)
    batched = torch.func.vmap(lambda v: cht.householder_matmul(v, x))(vb)
    assert_close(on_device(batched, device), numpy.stack([host(cht.householder_matmul(v, x)) for v in vb]))


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_layer_step_on_the_device_matches_eager(device):
    """fullgraph=True; inductor on an accelerator, aot_eager on the CPU (test_torch compiles inductor there)."""
    torch.manual_seed(0)
    layer = cht.Orthogonal(8).to(device)
    x = torch.randn(4, 8, device=device)
    backend = "aot_eager" if device == "cpu" else "inductor"
    out = torch.compile(layer, fullgraph=True, backend=backend)(x)
    (grad,) = torch.autograd.grad(out.square().sum(), layer.vectors)
    expected = layer(x)
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), layer.vectors)
    assert_close(on_device(out, device), host(expected))
    assert_close(grad, host(expected_grad))


@pytest.mark.parametrize("device", DEVICES)
def test_mixing_libraries_or_devices_is_a_type_error(device):
    h = ch.HouseholderProduct(torch.randn(3, 5, device=device))
    with pytest.raises(TypeError, match=r"cannot mix .*torch.*numpy|cannot mix .*numpy.*torch"):
        h @ numpy.ones((5, 2), dtype=numpy.float32)
    if device != "cpu":
        with pytest.raises(TypeError, match=r"cannot mix devices"):
            h @ torch.ones(5, 2)
        with pytest.raises(TypeError, match=r"X is on cpu but vectors is on " + device):
            cht.householder_matmul(torch.randn(3, 5, device=device), torch.ones(5, 2))


@pytest.mark.parametrize("device", DEVICES)
def test_the_torch_path_on_the_device_imports_no_cupy(device):
    code = (
        "import sys, torch, cuhouse, cuhouse.torch as cht\n"
        "v = torch.randn(3, 5, device={0!r}, requires_grad=True)\n"
        "x = torch.randn(5, 2, device={0!r})\n"
        "(cuhouse.HouseholderProduct(v) @ x).sum().backward()\n"
        "cht.Orthogonal(5).to({0!r})(x.T).sum().backward()\n"
        "assert 'cupy' not in sys.modules, 'cupy imported'\n"
    ).format(device)
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("device", [p for p in DEVICES if p.id == "cuda"])
def test_no_host_synchronization_with_check_finite_false(device):
    """torch's own sync detector: a product, its backward and an SVD logdet of matrices built with
    ``check_finite=False`` read nothing back to the host (the CPU's counting stand-in is in test_backends)."""
    v = torch.randn(2, 16, 64, device=device, requires_grad=True)
    x = torch.randn(64, 8, device=device, requires_grad=True)
    h = ch.HouseholderProduct(v, check_finite=False)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = h @ x
        out.square().sum().backward()
        logdet = ch.SVDMatrix(v[0], torch.rand(16, device=device) + 0.5, v[1], check_finite=False).logdet()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.device == x.device and logdet.device == x.device and v.grad.device == v.device
    reference = ch.HouseholderProduct(host(v)) @ host(x)
    assert_close(out, reference)
