"""A normalizing flow of SVD layers on two moons, against the same flow with dense weights.

The flow maps data x to z = L_K(a_{K-1}(L_{K-1}(... a_1(L_1(x))))) with linear
layers L_k and elementwise monotone maps a_k(t) = t + sum_j alpha_j tanh(beta_j t +
gamma_j) (alpha, beta >= 0, learned per coordinate), and scores log p(x) =
log N(z; 0, I) + sum_k log|det W_k| + sum log a_k'. With ``cuhouse.torch.SVDLinear`` layers
``log|det W_k| = layer.logdet() = sum log|s|``, O(d); the dense flow uses
``nn.Linear`` and ``torch.linalg.slogdet(W)``, O(d^3) forward and backward.

Both flows start from the same weights (the dense one copies the SVD layers'
``.weight``).

1. Fit both flows (d = 2) to ``sklearn.datasets.make_moons`` (generated, no
   download) with Adam; print the test log-likelihood (nats per point) of
   both, next to a fitted Gaussian.
2. Time one training step (log-likelihood, backward, Adam) of both flows at
   larger widths d (default 512 and 1024, data: two moons in two coordinates
   plus Gaussian noise in the rest), round-robin, single-threaded; also the
   log-determinant term alone.

Run: ``python examples/torch_svd_flow.py`` (a few minutes); ``--tiny`` for a smoke run.
"""

import argparse
import math

import _measure
import torch
from sklearn.datasets import make_moons
from torch import nn

import cuhouse.torch

BUMPS = 8


class MonotoneTanh(nn.Module):
    """Elementwise ``t + sum_j alpha_j tanh(beta_j t + gamma_j)``, alpha, beta > 0: increasing, invertible."""

    def __init__(self, width):
        super().__init__()
        self.raw_alpha = nn.Parameter(torch.full((width, BUMPS), -3.0))
        self.raw_beta = nn.Parameter(torch.zeros(width, BUMPS))
        self.gamma = nn.Parameter(torch.linspace(-2, 2, BUMPS).repeat(width, 1))

    def forward(self, t):
        """(a(t), sum log a'(t)) for t (batch, width)."""
        alpha, beta = nn.functional.softplus(self.raw_alpha), nn.functional.softplus(self.raw_beta)
        inner = torch.tanh(beta * t[..., None] + self.gamma)
        slope = 1 + (alpha * beta * (1 - inner**2)).sum(-1)
        return t + (alpha * inner).sum(-1), torch.log(slope).sum(-1)


class LinearFlow(nn.Module):
    """``layers`` linear layers of width ``width``, monotone maps between them; SVD or dense."""

    def __init__(self, width, layers, svd):
        super().__init__()
        self.svd = svd
        self.maps = nn.ModuleList(MonotoneTanh(width) for _ in range(layers - 1))
        make = cuhouse.torch.SVDLinear if svd else nn.Linear
        self.layers = nn.ModuleList(make(width, width) for _ in range(layers))

    @torch.no_grad()
    def densified(self):
        """The same flow (same weights, biases and maps) with dense ``nn.Linear`` layers."""
        dense = LinearFlow(self.layers[0].in_features, len(self.layers), svd=False)
        dense.maps.load_state_dict(self.maps.state_dict())
        for target, layer in zip(dense.layers, self.layers):
            target.weight.copy_(layer.weight)
            target.bias.copy_(layer.bias)
        return dense

    def logdet_terms(self):
        """Sum over layers of log|det W_k|: ``logdet()`` for SVD layers, ``slogdet`` for dense ones."""
        if self.svd:
            return sum(layer.logdet() for layer in self.layers)
        return sum(torch.linalg.slogdet(layer.weight)[1] for layer in self.layers)

    def log_prob(self, x):
        """log p(x) for x (batch, width): (batch,)."""
        z = self.layers[0](x)
        log_slopes = x.new_zeros(x.shape[0])
        for monotone, layer in zip(self.maps, self.layers[1:]):
            z, log_slope = monotone(z)
            log_slopes = log_slopes + log_slope
            z = layer(z)
        gauss = -0.5 * (z**2).sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)
        return gauss + log_slopes + self.logdet_terms()


def moons(n, width, seed, noise=0.05):
    """Two moons (standardized) in the first two coordinates, N(0, 0.1^2) in the other width - 2: (n, width)."""
    points, _ = make_moons(n, noise=noise, random_state=seed)
    points = torch.tensor((points - [0.5, 0.25]) / [0.87, 0.5], dtype=torch.float32)
    rest = 0.1 * torch.randn(n, width - 2, generator=torch.Generator().manual_seed(seed))
    return torch.cat([points, rest], 1)


def gaussian_log_likelihood(train, test):
    """Mean test log-likelihood under the maximum-likelihood Gaussian of ``train``."""
    mean = train.mean(0)
    cov = torch.cov(train.T.double())
    dist = torch.distributions.MultivariateNormal(mean.double(), cov)
    return dist.log_prob(test.double()).mean().item()


def training_step(flow, data, batch, generator):
    optimizer = torch.optim.Adam(flow.parameters(), lr=3e-3)

    def step():
        rows = torch.randint(0, data.shape[0], (batch,), generator=generator)
        loss = -flow.log_prob(data[rows]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def fit_moons(layers, steps, batch, n_train=2000, n_test=1000):
    """Train an SVD flow and its dense copy on the same batches; {name: (losses, test log-likelihood)}."""
    train, test = moons(n_train, 2, seed=0), moons(n_test, 2, seed=1)
    torch.manual_seed(0)
    svd_flow = LinearFlow(2, layers, svd=True)
    results = {}
    for name, flow in (("SVDLinear + logdet()", svd_flow), ("nn.Linear + slogdet", svd_flow.densified())):
        step = training_step(flow, train, batch, torch.Generator().manual_seed(0))
        losses = [step() for _ in range(steps)]
        with torch.no_grad():
            results[name] = (losses, flow.log_prob(test).mean().item())
    results["Gaussian (fitted)"] = (None, gaussian_log_likelihood(train, test))
    return results


def time_width(width, layers, batch, rounds):
    """Median ms of a training step and of the log-determinant term (forward + backward) of both flows."""
    data = moons(4 * batch, width, seed=0)
    svd_flow = LinearFlow(width, layers, svd=True)
    flows = {"SVDLinear + logdet()": svd_flow, "nn.Linear + slogdet": svd_flow.densified()}
    steps, logdets = {}, {}
    for name, flow in flows.items():
        steps[name] = training_step(flow, data, batch, torch.Generator().manual_seed(0))
        logdets[name] = lambda flow=flow: flow.logdet_terms().backward()
    for timed in (steps, logdets):  # one warm-up call each
        for call in timed.values():
            call()
    step_ms = {k: _measure.median_ms(v) for k, v in _measure.interleaved_times(steps, rounds).items()}
    logdet_ms = {k: _measure.median_ms(v) for k, v in _measure.interleaved_times(logdets, rounds).items()}
    return step_ms, logdet_ms


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8, help="linear layers of the 2-D flow")
    parser.add_argument("--steps", type=int, default=1500, help="Adam steps on two moons")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--widths", default="512,1024", help="widths for the timing, comma-separated")
    parser.add_argument("--width-layers", type=int, default=4, help="layers of the wide flows")
    parser.add_argument("--timing-batches", default="64,256", help="batch sizes for the timing")
    parser.add_argument("--rounds", type=int, default=7, help="timed steps per variant and width")
    parser.add_argument("--tiny", action="store_true", help="100 steps, width 32, 2 rounds")
    args = parser.parse_args(argv)
    if args.tiny:
        args.steps, args.widths, args.timing_batches, args.rounds, args.width_layers = 100, "32", "16", 2, 2
    _measure.single_threaded()
    fitted = fit_moons(args.layers, args.steps, args.batch)
    print(
        "two moons (noise 0.05, standardized), {} layers, {} Adam steps (lr 3e-3, batch {}); "
        "2000 train / 1000 test points".format(args.layers, args.steps, args.batch)
    )
    rows = [
        [
            name,
            "{:.3f}".format(ll),
            "-" if losses is None else "{:.3f}".format(losses[0]),
            "-" if losses is None else "{:.3f}".format(sum(losses[-50:]) / len(losses[-50:])),
        ]
        for name, (losses, ll) in fitted.items()
    ]
    _measure.print_table(["flow", "test log-lik (nats/point)", "first train NLL", "train NLL (last 50)"], rows)
    print()
    print(
        "time per training step (log-likelihood + backward + Adam), {} layers, median of {} round-robin "
        "steps, torch {} and NumPy's BLAS single-threaded; 'logdet' is the log-determinant term alone, "
        "forward + backward".format(args.width_layers, args.rounds, torch.__version__)
    )
    rows = []
    timings = {}
    for width in map(int, args.widths.split(",")):
        for batch in map(int, args.timing_batches.split(",")):
            step_ms, logdet_ms = time_width(width, args.width_layers, batch, args.rounds)
            timings[width, batch] = (step_ms, logdet_ms)
            svd, dense = step_ms["SVDLinear + logdet()"], step_ms["nn.Linear + slogdet"]
            rows.append(
                [
                    width,
                    batch,
                    "{:.1f}".format(svd),
                    "{:.1f}".format(dense),
                    "{:.2f}".format(dense / svd),
                    "{:.2f}".format(logdet_ms["SVDLinear + logdet()"]),
                    "{:.1f}".format(logdet_ms["nn.Linear + slogdet"]),
                ]
            )
    _measure.print_table(
        ["d", "batch", "SVD ms/step", "dense ms/step", "dense/SVD", "SVD logdet ms", "slogdet ms"], rows
    )
    return fitted, timings


if __name__ == "__main__":
    main()
