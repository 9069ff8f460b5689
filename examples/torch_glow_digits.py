"""A small Glow-style flow on load_digits with SVDConv1x1, against dense and LU-decomposed 1x1 convolutions.

Glow (Kingma & Dhariwal 2018) stacks steps of ActNorm, an invertible 1x1
convolution and an affine coupling. The 1x1 convolution's log-determinant,
H W log|det W| per image, is what costs: a dense W needs ``slogdet`` (O(C^3)
forward and backward), Glow's LU form W = P L (U + diag(s)) forms W from its
factors at every step (O(C^3)), and ``cuhouse.torch.SVDConv1x1`` (W = U
diag(s) V^T with Householder U, V) has it as sum(log|s|), O(C), applies W in
O(C^2) per pixel without forming it, and inverts without a solve.

1. Fit the same flow (squeeze 8x8x1 -> 4x4x4, K steps, squeeze -> 2x2x16,
   K steps; standard normal prior) with each 1x1 convolution on
   ``sklearn.datasets.load_digits`` (1797 8x8 images with 17 grey levels,
   shipped with scikit-learn: no download), uniformly dequantized. All flows
   start from the same weights (the dense and LU layers copy the SVD layers'
   ``.weight``) and see the same batches. Report test bits per dimension.
2. Time one training step of a single 1x1 convolution (forward, H W logdet,
   backward, Adam) at C = 256, 512, 1024 on a batch of 16 images 4x4, for
   the three forms, round-robin, single-threaded.

Run: ``python examples/torch_glow_digits.py`` (a few minutes); ``--tiny`` for a smoke run.
"""

import argparse
import math

import _measure
import torch
from sklearn.datasets import load_digits
from torch import nn

import cuhouse.torch as cht

LEVELS = 17  # grey levels of load_digits (0..16)


class DenseConv1x1(nn.Module):
    """1x1 convolution with a dense weight; log|det W| by ``torch.linalg.slogdet``, O(C^3)."""

    def __init__(self, weight):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())

    def forward(self, x):
        return nn.functional.conv2d(x, self.weight[:, :, None, None])

    def logdet(self):
        return torch.linalg.slogdet(self.weight)[1]


class LUConv1x1(nn.Module):
    """Glow's LU-decomposed 1x1 convolution: W = P L (U + diag(sign * exp(log_s))), P fixed; logdet = sum(log_s)."""

    def __init__(self, weight):
        super().__init__()
        p, lower, upper = torch.linalg.lu(weight.detach())
        diag = torch.diagonal(upper)
        c = weight.shape[0]
        self.register_buffer("p", p)
        self.register_buffer("sign", torch.sign(diag))
        self.register_buffer("lower_mask", torch.tril(torch.ones(c, c), -1))
        self.lower = nn.Parameter(lower.clone())
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(torch.abs(diag)))

    @property
    def weight(self):
        eye = torch.eye(self.p.shape[0], dtype=self.p.dtype)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign * torch.exp(self.log_s))
        return self.p @ lower @ upper

    def forward(self, x):
        return nn.functional.conv2d(x, self.weight[:, :, None, None])

    def logdet(self):
        return self.log_s.sum()


class ActNorm(nn.Module):
    """Per-channel affine map, initialized from the first batch to zero mean and unit variance."""

    def __init__(self, channels):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, x):
        if not self.initialized:
            with torch.no_grad():
                self.bias.copy_(-x.mean(dim=(0, 2, 3), keepdim=True))
                self.log_scale.copy_(-torch.log(x.std(dim=(0, 2, 3), keepdim=True) + 1e-6))
                self.initialized.fill_(True)
        return (x + self.bias) * torch.exp(self.log_scale), self.log_scale.sum() * x.shape[2] * x.shape[3]


class Coupling(nn.Module):
    """Affine coupling: the second half of the channels scaled and shifted by a small CNN of the first."""

    def __init__(self, channels, hidden):
        super().__init__()
        half = channels // 2
        self.net = nn.Sequential(
            nn.Conv2d(half, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, 2 * (channels - half), 3, padding=1)
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self.half = half

    def forward(self, x):
        a, b = x[:, : self.half], x[:, self.half :]
        raw_scale, shift = self.net(a).chunk(2, dim=1)
        log_scale = torch.tanh(raw_scale)
        return torch.cat([a, b * torch.exp(log_scale) + shift], dim=1), log_scale.sum(dim=(1, 2, 3))


def squeeze(x):
    """(N, C, H, W) -> (N, 4C, H/2, W/2)."""
    n, c, h, w = x.shape
    x = x.reshape(n, c, h // 2, 2, w // 2, 2)
    return x.permute(0, 1, 3, 5, 2, 4).reshape(n, 4 * c, h // 2, w // 2)


class Glow(nn.Module):
    """Two levels (4 channels at 4x4, 16 at 2x2) of ``steps`` steps: ActNorm, 1x1 conv, affine coupling."""

    def __init__(self, steps, hidden, convs):
        super().__init__()
        self.norms = nn.ModuleList(ActNorm(c) for c in (4, 16) for _ in range(steps))
        self.convs = nn.ModuleList(convs)
        self.couplings = nn.ModuleList(Coupling(c, hidden) for c in (4, 16) for _ in range(steps))
        self.steps = steps

    def log_prob(self, x):
        """log p(x) (nats) of dequantized images x (N, 1, 8, 8) in [0, 1)."""
        log_det = x.new_zeros(x.shape[0])
        z = x
        for i, (norm, conv, coupling) in enumerate(zip(self.norms, self.convs, self.couplings)):
            if i % self.steps == 0:
                z = squeeze(z)
            z, ld = norm(z)
            log_det = log_det + ld
            z = conv(z)
            log_det = log_det + conv.logdet() * z.shape[2] * z.shape[3]
            z, ld = coupling(z)
            log_det = log_det + ld
        prior = -0.5 * (z**2 + math.log(2 * math.pi)).sum(dim=(1, 2, 3))
        return prior + log_det


def bits_per_dim(log_prob, dims=64):
    """Discrete bits per dimension of 17-level images from the continuous log-density of x = (k + u) / 17."""
    return -(log_prob - dims * math.log(LEVELS)) / (dims * math.log(2))


def digits(seed=0):
    """(train, test): load_digits as (N, 1, 8, 8) float32 grey levels 0..16, 80/20 split."""
    images = torch.tensor(load_digits().images, dtype=torch.float32)[:, None]
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
    split = int(0.8 * images.shape[0])
    return images[order[:split]], images[order[split:]]


def flows(steps, hidden):
    """The SVD flow and its copies with dense and LU 1x1 convolutions (same weights, same ActNorm/couplings)."""
    torch.manual_seed(0)
    svd = Glow(steps, hidden, [cht.SVDConv1x1(c) for c in (4, 16) for _ in range(steps)])
    result = {"SVDConv1x1 (cuhouse)": svd}
    for name, make in (("dense 1x1 + slogdet", DenseConv1x1), ("LU 1x1 (Glow)", LUConv1x1)):
        torch.manual_seed(0)
        copy = Glow(steps, hidden, [make(conv.weight) for conv in svd.convs])
        copy.norms.load_state_dict(svd.norms.state_dict())
        copy.couplings.load_state_dict(svd.couplings.state_dict())
        result[name] = copy
    return result


def fit(steps_per_level, hidden, iterations, batch):
    """Train each flow on the same batches; {name: (train bits/dim per iteration, test bits/dim)}."""
    train, test = digits()
    results = {}
    for name, flow in flows(steps_per_level, hidden).items():
        generator = torch.Generator().manual_seed(1)
        optimizer = torch.optim.Adam(flow.parameters(), lr=1e-3)
        losses = []
        for _ in range(iterations):
            rows = torch.randint(0, train.shape[0], (batch,), generator=generator)
            x = (train[rows] + torch.rand(train[rows].shape, generator=generator)) / LEVELS
            loss = bits_per_dim(flow.log_prob(x)).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        with torch.no_grad():
            x = (test + torch.rand(test.shape, generator=torch.Generator().manual_seed(2))) / LEVELS
            results[name] = (losses, bits_per_dim(flow.log_prob(x)).mean().item())
    return results


def time_channels(channels, batch, rounds):
    """Median ms of one training step (forward, H W logdet, backward, Adam) of one 1x1 convolution."""
    torch.manual_seed(0)
    svd = cht.SVDConv1x1(channels)
    layers = {"SVDConv1x1 (cuhouse)": svd, "dense 1x1 + slogdet": DenseConv1x1(svd.weight)}
    layers["LU 1x1 (Glow)"] = LUConv1x1(svd.weight)
    x = torch.randn(batch, channels, 4, 4)

    def step_of(layer):
        optimizer = torch.optim.Adam(layer.parameters(), lr=1e-4)

        def step():
            loss = 0.5 * layer(x).square().mean() - 16 * layer.logdet() / x[0].numel()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        return step

    steps = {name: step_of(layer) for name, layer in layers.items()}
    for step in steps.values():
        step()
    return {name: _measure.median_ms(t) for name, t in _measure.interleaved_times(steps, rounds).items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="flow steps per level")
    parser.add_argument("--hidden", type=int, default=32, help="channels of the coupling networks")
    parser.add_argument("--iterations", type=int, default=800, help="Adam steps")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--channels", default="256,512,1024", help="C for the timing, comma-separated")
    parser.add_argument("--rounds", type=int, default=7, help="timed steps per variant and C")
    parser.add_argument("--tiny", action="store_true", help="20 iterations, C = 16, 2 rounds")
    args = parser.parse_args(argv)
    if args.tiny:
        args.steps, args.hidden, args.iterations, args.channels, args.rounds = 2, 8, 20, "16", 2
    _measure.single_threaded()
    fitted = fit(args.steps, args.hidden, args.iterations, args.batch)
    print(
        "load_digits (1437 train / 360 test images, 8x8, 17 grey levels, dequantized), Glow with 2 levels x {} steps, "
        "{} Adam steps (lr 1e-3, batch {})".format(args.steps, args.iterations, args.batch)
    )
    rows = [
        [name, "{:.3f}".format(losses[0]), "{:.3f}".format(sum(losses[-50:]) / len(losses[-50:])), "{:.3f}".format(bpd)]
        for name, (losses, bpd) in fitted.items()
    ]
    _measure.print_table(["1x1 convolution", "first train bits/dim", "train (last 50)", "test bits/dim"], rows)
    print()
    print(
        "time per training step of one 1x1 convolution (forward, H W logdet, backward, Adam) on 16 images 4x4, "
        "median of {} round-robin steps, torch {} single-threaded".format(args.rounds, torch.__version__)
    )
    timings = {}
    rows = []
    for channels in map(int, args.channels.split(",")):
        timings[channels] = ms = time_channels(channels, 16, args.rounds)
        svd = ms["SVDConv1x1 (cuhouse)"]
        rows.append(
            [channels]
            + ["{:.2f}".format(ms[name]) for name in ms]
            + ["{:.2f}".format(ms["dense 1x1 + slogdet"] / svd), "{:.2f}".format(ms["LU 1x1 (Glow)"] / svd)]
        )
    _measure.print_table(
        ["C", "SVDConv1x1 ms", "dense+slogdet ms", "LU (Glow) ms", "dense/SVD", "LU/SVD"],
        rows,
    )
    return fitted, timings


if __name__ == "__main__":
    main()
