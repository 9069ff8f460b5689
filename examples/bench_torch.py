"""cuhouse.torch against PyTorch's own orthogonal machinery, on one CPU thread.

1. ``householder_matmul(vectors, X)`` forward + backward (d = n, X d x m)
   against ``torch.linalg.householder_product`` + matmul with autograd
   (reflectors in the geqrf layout, tau = 2 / (v^T v) from them, so both
   take gradients w.r.t. the same d x n numbers).
2. One training step (forward, MSE loss, backward, SGD step) of a d x d
   orthogonal layer on a batch of m rows: ``cuhouse.torch.Orthogonal``,
   an ``nn.Linear`` with ``cuhouse.torch.orthogonal``, and ``nn.Linear``
   with ``torch.nn.utils.parametrizations.orthogonal`` (matrix_exp, cayley),
   with a plain ``nn.Linear`` as the floor.

Rounds are interleaved (A, B, C, A, B, C, ...) after a warm-up round, each
case timed by the calling thread's CPU time (torch and its BLAS on one
thread: a shared machine's waiting for a core is left out); the table gives
median times and the median of the per-round ratios to the first case of the
table (``householder_matmul``; ``orthogonal()`` for the training step),
> 1: that case is faster. Run: ``python examples/bench_torch.py`` (d = 256
and 1024, m = 32, float32; about three minutes) or ``--d 256 --rounds 3``
for a quick look.
"""

import argparse
import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before NumPy and torch load their BLAS

import numpy  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils import parametrizations  # noqa: E402

import cuhouse.torch as cht  # noqa: E402
from cuhouse.bench._timing import measure  # noqa: E402


def products(d, m, dtype):
    """Forward + backward of H @ X: cuhouse and torch.linalg.householder_product."""
    g = torch.Generator().manual_seed(0)
    vectors = torch.randn(d, d, generator=g, dtype=dtype).requires_grad_()
    a = torch.randn(d, d, generator=g, dtype=dtype).requires_grad_()  # geqrf layout: column i is v_i
    x = torch.randn(d, m, generator=g, dtype=dtype).requires_grad_()
    dout = torch.randn(d, m, generator=g, dtype=dtype)

    def cuhouse_step():
        cht.householder_matmul(vectors, x).backward(dout)

    def torch_step():
        below = torch.tril(a, -1)
        tau = 2 / (1 + below.square().sum(dim=0))
        (torch.linalg.householder_product(below, tau) @ x).backward(dout)

    return {"cuhouse householder_matmul": cuhouse_step, "torch householder_product + matmul": torch_step}


def training_steps(d, m, dtype):
    """One SGD step of a d x d orthogonal layer on m rows, per implementation."""
    torch.manual_seed(0)
    layers = {
        "nn.Linear + cuhouse.torch.orthogonal": cht.orthogonal(nn.Linear(d, d, bias=False, dtype=dtype)),
        "cuhouse Orthogonal": cht.Orthogonal(d, dtype=dtype),
        "parametrizations.orthogonal matrix_exp": parametrizations.orthogonal(
            nn.Linear(d, d, bias=False, dtype=dtype), orthogonal_map="matrix_exp"
        ),
        "parametrizations.orthogonal cayley": parametrizations.orthogonal(
            nn.Linear(d, d, bias=False, dtype=dtype), orthogonal_map="cayley"
        ),
        "nn.Linear (unconstrained, the floor)": nn.Linear(d, d, bias=False, dtype=dtype),
    }
    x = torch.randn(m, d, dtype=dtype)
    target = torch.randn(m, d, dtype=dtype)

    def step_of(layer):
        optimizer = torch.optim.SGD(layer.parameters(), lr=1e-3)

        def step():
            optimizer.zero_grad()
            nn.functional.mse_loss(layer(x), target).backward()
            optimizer.step()

        return step

    return {name: step_of(layer) for name, layer in layers.items()}


def report(title, cases, rounds):
    baseline = next(iter(cases))
    results = measure(cases, baseline, rounds, numpy, cpu_clock=True)
    print(title)
    print("  {:<42} {:>12} {:>22}".format("case", "median ms", "time / first (median)"))
    for name, result in results.items():
        print("  {:<42} {:>12.2f} {:>22.2f}".format(name, result.seconds * 1e3, result.ratio))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--d", type=int, nargs="+", default=[256, 1024], help="d = n, one or more (default 256 1024)")
    parser.add_argument("--m", type=int, default=32, help="columns of X / rows of the batch (default 32)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    dtype = getattr(torch, args.dtype)
    for d in args.d:
        print(
            "torch {}, {} thread, d = n = {}, m = {}, {}, {} interleaved rounds, thread CPU time".format(
                torch.__version__, torch.get_num_threads(), d, args.m, args.dtype, args.rounds
            )
        )
        report("H @ X forward + backward", products(d, args.m, dtype), args.rounds)
        report("training step of a d x d orthogonal layer", training_steps(d, args.m, dtype), args.rounds)


if __name__ == "__main__":
    main()
