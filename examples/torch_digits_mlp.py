"""An SVDLinear MLP on scikit-learn's digits, and spectral clipping for a Lipschitz bound.

``sklearn.datasets.load_digits`` (1797 8x8 images, shipped with scikit-learn,
no download), pixels scaled to [0, 1], a stratified 70/30 split. The MLP is
64 -> 128 -> 128 -> 10 with ReLU, built from ``nn.Linear`` or from
``cuhouse.torch.SVDLinear``. With SVD layers the spectral norm of a layer is
max|s| exactly, so the network's Lipschitz constant (l2, input to logits) is
at most the product of max|s| over layers. Clipping |s| to [0, c] after every
Adam step (signs kept, like ``cuhouse.SVDMatrix.clip(0, c)``) bounds it by
c^3. For ``nn.Linear`` the same product needs an SVD of every weight
(``torch.linalg.matrix_norm(W, 2)``), computed here once at the end.

Printed per model: test accuracy; the Lipschitz bound L (product of spectral
norms, checked against ``matrix_norm(layer.weight, 2)`` for the SVD layers);
and the certified accuracy at radius eps: a test point counts when it is
classified correctly and its logit margin exceeds sqrt(2) L eps, so that no
perturbation of l2 norm <= eps can change the class.

Run: ``python examples/torch_digits_mlp.py`` (under a minute); ``--tiny`` for a smoke run.
"""

import argparse
import math

import _measure
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import cuhouse.torch


def digits():
    """(x_train, y_train, x_test, y_test): float32 pixels in [0, 1], int64 labels."""
    data = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data / 16.0, data.target, test_size=0.3, stratify=data.target, random_state=0
    )
    return (
        torch.tensor(x_train, dtype=torch.float32),
        torch.tensor(y_train),
        torch.tensor(x_test, dtype=torch.float32),
        torch.tensor(y_test),
    )


def mlp(svd, hidden):
    make = cuhouse.torch.SVDLinear if svd else nn.Linear
    return nn.Sequential(make(64, hidden), nn.ReLU(), make(hidden, hidden), nn.ReLU(), make(hidden, 10))


def linear_layers(model):
    return [layer for layer in model if not isinstance(layer, nn.ReLU)]


@torch.no_grad()
def clip_spectrum(model, bound):
    """|s| clipped to [0, bound] in every SVD layer, signs kept."""
    for layer in linear_layers(model):
        layer.s.copy_(torch.sign(layer.s) * layer.s.abs().clamp(max=bound))


@torch.no_grad()
def spectral_norms(model):
    """Per layer: (max|s| or None for nn.Linear, matrix_norm(weight, 2))."""
    return [
        (layer.s.abs().max().item() if hasattr(layer, "s") else None, torch.linalg.matrix_norm(layer.weight, 2).item())
        for layer in linear_layers(model)
    ]


def train(model, x, y, epochs, batch, clip=None, seed=0):
    """Adam (lr 3e-3) on minibatches; clip the spectrum after every step when ``clip``. Mean loss per epoch."""
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=generator)
        total = 0.0
        for start in range(0, x.shape[0], batch):
            rows = order[start : start + batch]
            loss = nn.functional.cross_entropy(model(x[rows]), y[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if clip is not None:
                clip_spectrum(model, clip)
            total += loss.item() * rows.numel()
        history.append(total / x.shape[0])
    return history


@torch.no_grad()
def evaluate(model, x, y, lipschitz, eps):
    """(accuracy, certified accuracy at l2 radius eps) on (x, y)."""
    logits = model(x)
    correct = logits.argmax(1) == y
    top2 = logits.topk(2, dim=1).values
    certified = correct & (top2[:, 0] - top2[:, 1] > math.sqrt(2) * lipschitz * eps)
    return correct.float().mean().item(), certified.float().mean().item()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--clips", default="2,1", help="spectral bounds c for the clipped SVD MLPs")
    parser.add_argument("--eps", type=float, default=0.1, help="l2 radius for the certified accuracy")
    parser.add_argument("--tiny", action="store_true", help="3 epochs, hidden 32")
    args = parser.parse_args(argv)
    if args.tiny:
        args.epochs, args.hidden = 3, 32
    _measure.single_threaded()
    x_train, y_train, x_test, y_test = digits()
    models = [("nn.Linear MLP", False, None), ("SVDLinear MLP", True, None)]
    models += [("SVDLinear MLP, |s| <= {:g}".format(float(c)), True, float(c)) for c in args.clips.split(",")]
    results, rows = {}, []
    for name, svd, clip in models:
        torch.manual_seed(0)
        model = mlp(svd, args.hidden)
        history = train(model, x_train, y_train, args.epochs, args.batch, clip)
        norms = spectral_norms(model)
        lipschitz = math.prod(exact for _, exact in norms)
        from_s = math.prod(s for s, _ in norms) if svd else None
        accuracy, certified = evaluate(model, x_test, y_test, lipschitz, args.eps)
        results[name] = {"losses": history, "accuracy": accuracy, "lipschitz": lipschitz, "certified": certified}
        rows.append(
            [
                name,
                "{:.3f}".format(history[0]),
                "{:.4f}".format(history[-1]),
                "{:.4f}".format(accuracy),
                "{:.3g}".format(lipschitz),
                "-" if from_s is None else "{:.3g}".format(from_s),
                "{:.4f}".format(certified),
            ]
        )
    print(
        "digits: {} train / {} test, MLP 64-{h}-{h}-10 ReLU, Adam lr 3e-3, batch {}, {} epochs".format(
            len(y_train), len(y_test), args.batch, args.epochs, h=args.hidden
        )
    )
    _measure.print_table(
        [
            "model",
            "first epoch loss",
            "last epoch loss",
            "test accuracy",
            "Lipschitz bound",
            "(prod max|s|)",
            "certified @ eps={:g}".format(args.eps),
        ],
        rows,
    )
    print(
        "Lipschitz bound: product of matrix_norm(weight, 2) over the three layers (l2, input to logits); "
        "for SVD layers it equals the product of max|s|. Certified: correct and logit margin > sqrt(2) L eps"
    )
    return results


if __name__ == "__main__":
    main()
