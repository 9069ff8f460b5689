"""Orthogonal RNN on the copy task (Arjovsky, Shah and Bengio 2016).

Input: 10 symbols from {1..8}, T - 1 blanks, a marker, 10 blanks (length
T + 20); target: blanks, then the 10 symbols after the marker. Predicting
blanks and then uniform guesses scores ``10 log 8 / (T + 20)``: a loss below
that means the network remembers. The RNN is ``h_t = modrelu(W h_{t-1} + U x_t)``
(U x_t an embedding of the symbol) with a linear read-out; only the recurrent matrix W differs between variants:

- ``cuhouse Orthogonal``: ``cuhouse.torch.Orthogonal``, applied matrix-free at
  every time step (O(d n b) per step for n reflections, batch b);
- ``cuhouse orthogonal()``: ``cuhouse.torch.orthogonal`` on an ``nn.Linear``,
  W formed once per sequence;
- ``torch matrix_exp`` / ``torch householder``: ``torch.nn.utils.parametrizations.orthogonal``
  with that map, W formed once per sequence (``parametrize.cached()``);
- ``nn.Linear``: unconstrained.

Every variant starts from the same random orthogonal W = H(v_1) ... H(v_d)
(standard normal vectors) and the same embedding and read-out.

All train with Adam (lr 1e-3) on the same batches, single-threaded, one step of
every variant in turn (round-robin), so timings share the machine's state.
Per-step time is the median; peak memory is measured per variant in its own
subprocess (see ``_measure.py``).

Run: ``python examples/torch_copy_task.py`` (defaults T = 100, hidden 128,
batch 64, 400 steps: a few minutes); ``--tiny`` for a smoke run.
"""

import argparse
import math
import os

import _measure
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import orthogonal as torch_orthogonal

import cuhouse.torch

SYMBOLS = 8  # 1..8; 0 is the blank, 9 the marker
MEMORIZE = 10
VARIANTS = ("cuhouse Orthogonal", "cuhouse orthogonal()", "torch matrix_exp", "torch householder", "nn.Linear")


def copy_batch(batch, delay, generator):
    """Inputs (T + 20, batch) and targets (T + 20, batch) as integer codes."""
    symbols = torch.randint(1, SYMBOLS + 1, (MEMORIZE, batch), generator=generator)
    blanks = torch.zeros(delay - 1, batch, dtype=torch.long)
    marker = torch.full((1, batch), SYMBOLS + 1, dtype=torch.long)
    tail = torch.zeros(MEMORIZE, batch, dtype=torch.long)
    inputs = torch.cat([symbols, blanks, marker, tail])
    targets = torch.cat([torch.zeros(delay + MEMORIZE, batch, dtype=torch.long), symbols])
    return inputs, targets


def memoryless_loss(delay):
    """Cross-entropy of predicting blanks, then uniform over the symbols."""
    return MEMORIZE * math.log(SYMBOLS) / (delay + 2 * MEMORIZE)


class ModReLU(nn.Module):
    """``sign(z) relu(|z| + b)``, the nonlinearity of unitary RNNs."""

    def __init__(self, features):
        super().__init__()
        self.bias = nn.Parameter(torch.empty(features).uniform_(-0.01, 0.01))

    def forward(self, z):
        return torch.sign(z) * torch.relu(z.abs() + self.bias)


class CopyRNN(nn.Module):
    """Embedding, recurrence ``h -> recurrent(h)``, modReLU, per-step read-out."""

    def __init__(self, variant, initial_vectors):
        super().__init__()
        hidden = initial_vectors.shape[1]
        self.embed = nn.Embedding(SYMBOLS + 2, hidden)
        self.nonlinearity = ModReLU(hidden)
        self.readout = nn.Linear(hidden, SYMBOLS + 1)
        if variant == "cuhouse Orthogonal":
            self.recurrent = cuhouse.torch.Orthogonal(hidden)
            with torch.no_grad():
                self.recurrent.vectors.copy_(initial_vectors)
        else:
            self.recurrent = nn.Linear(hidden, hidden, bias=False)
            with torch.no_grad():
                self.recurrent.weight.copy_(cuhouse.torch.householder_matmul(initial_vectors, torch.eye(hidden)))
            if variant == "cuhouse orthogonal()":
                cuhouse.torch.orthogonal(self.recurrent)
            elif variant == "torch matrix_exp":
                torch_orthogonal(self.recurrent, orthogonal_map="matrix_exp")
            elif variant == "torch householder":
                torch_orthogonal(self.recurrent, orthogonal_map="householder")
            elif variant != "nn.Linear":
                raise ValueError("variant must be one of {}, got {!r}".format(VARIANTS, variant))

    def forward(self, inputs):
        """Logits (T + 20, batch, 9) for integer inputs (T + 20, batch)."""
        drive = self.embed(inputs)
        with parametrize.cached():
            if isinstance(self.recurrent, nn.Linear):
                weight = self.recurrent.weight  # formed once per sequence
                step = lambda h: h @ weight.T  # noqa: E731
            else:
                step = self.recurrent  # matrix-free, every time step
            h = drive.new_zeros(drive.shape[1:])
            states = []
            for x in drive:
                h = self.nonlinearity(step(h) + x)
                states.append(h)
        return self.readout(torch.stack(states))


def trainer(variant, hidden, delay, batch, seed):
    """(model, a closure doing one Adam step on a fresh batch and returning the loss)."""
    torch.manual_seed(seed)
    model = CopyRNN(variant, torch.randn(hidden, hidden))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = torch.Generator().manual_seed(seed)

    def step():
        inputs, targets = copy_batch(batch, delay, data)
        loss = nn.functional.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    return model, step


@torch.no_grad()
def recall_accuracy(model, delay, batch=256, seed=1):
    """Fraction of the 10 symbols recalled (argmax) on a fresh batch."""
    inputs, targets = copy_batch(batch, delay, torch.Generator().manual_seed(seed))
    predicted = model(inputs)[-MEMORIZE:].argmax(-1)
    return (predicted == targets[-MEMORIZE:]).float().mean().item()


def train_all(variants, hidden, delay, batch, steps, seed=0):
    """Round-robin training: {variant: (losses, seconds per step, recall accuracy after training)}."""
    trainers = {v: trainer(v, hidden, delay, batch, seed) for v in variants}
    losses = {v: [] for v in variants}
    timed = {v: (lambda v=v: losses[v].append(trainers[v][1]())) for v in variants}
    seconds = _measure.interleaved_times(timed, steps)
    return {v: (losses[v], seconds[v], recall_accuracy(trainers[v][0], delay)) for v in variants}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=int, default=100, help="T, the blank steps between symbols and recall")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--tiny", action="store_true", help="T = 10, hidden 16, 30 steps, no memory runs")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)  # child mode: peak memory of one variant
    args = parser.parse_args(argv)
    if args.tiny:
        args.delay, args.hidden, args.batch, args.steps = 10, 16, 16, 30
    _measure.single_threaded()
    if args.memory_of:
        _, step = trainer(args.memory_of, args.hidden, args.delay, args.batch, seed=0)
        _measure.report_to_parent(_measure.peak_growth_mib(step))
        return None
    variants = args.variants.split(",")
    results = train_all(variants, args.hidden, args.delay, args.batch, args.steps)
    measure_memory = not args.tiny and _measure.memory_supported()
    print(
        "copy task: T = {}, hidden {}, batch {}, {} Adam steps per variant, torch {} single-threaded".format(
            args.delay, args.hidden, args.batch, args.steps, torch.__version__
        )
    )
    print("memoryless baseline loss 10 log 8 / (T + 20) = {:.4f}".format(memoryless_loss(args.delay)))
    last = max(1, args.steps // 10)
    rows = []
    for v in variants:
        losses, seconds, recall = results[v]
        memory = "n/a"
        if measure_memory:
            memory = "{:.1f}".format(
                _measure.run_child(
                    os.path.abspath(__file__),
                    ["--memory-of", v, "--delay", args.delay, "--hidden", args.hidden, "--batch", args.batch],
                )
            )
        rows.append(
            [
                v,
                "{:.1f}".format(_measure.median_ms(seconds)),
                memory,
                "{:.4f}".format(losses[0]),
                "{:.4f}".format(sum(losses[-last:]) / last),
                "{:.3f}".format(recall),
            ]
        )
    _measure.print_table(
        [
            "recurrent matrix",
            "ms/step (median)",
            "peak MiB",
            "first loss",
            "loss (mean of last {})".format(last),
            "recall",
        ],
        rows,
    )
    print(
        "ms/step: forward + backward + Adam, round-robin over variants; peak MiB: growth of peak RSS over "
        "two training steps after a warm-up step, each variant in its own process; recall: fraction of the "
        "10 symbols recalled on 256 fresh sequences (chance 1/8)"
    )
    return results


if __name__ == "__main__":
    main()
