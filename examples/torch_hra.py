"""Householder reflection adaptation (HRA) of a frozen linear layer, matrix-free against dense.

HRA (the PEFT method) fine-tunes a frozen weight W (d x d) as W H with H =
H(u_1) ... H(u_r), r trainable reflections: y = W H x. PEFT materializes H on
every forward as r sequential rank-1 updates of a d x d identity
(``H = H - 2 (H u_i) u_i^T`` with unit u_i), then forms W H and applies it:
O(r d^2 + d^3) time, and autograd keeps every intermediate H, O(r d^2) memory.
Matrix-free, ``y = W @ cuhouse.torch.householder_matmul(U, X)`` for X (d, m):
O(r d m + d^2 m) time and O(r d + d m) memory beyond W.

For each (d, r) the script times forward + backward (gradient of the mean of
y^2 with respect to the reflections; W frozen) of both, round-robin,
single-threaded (median), checks that both give the same y, and measures the
peak memory of each in its own subprocess (growth of peak RSS over one step
after a warm-up step, see ``_measure.py``), next to the size of the tensors
autograd must keep: r d^2 (dense) and r d + d m (matrix-free), float32.

First, a short fit shows the matrix-free layer trains: the frozen W is
adapted towards a teacher W H(t_1..t_r) by Adam on the student's reflections
(mean squared error on fresh tokens).

Run: ``python examples/torch_hra.py`` (defaults d = 1024, 4096, r = 8, 64,
m = 256 tokens: a few minutes; the dense d = 4096, r = 64 step needs about
4.5 GiB); ``--tiny`` for a smoke run.
"""

import argparse
import os

import _measure
import torch

import cuhouse.torch

VARIANTS = ("matrix-free", "dense (PEFT)")


def problem(d, r, m, seed=0):
    """Frozen W (d, d), tokens X (d, m), trainable reflections U (r, d); float32."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(d, d, generator=generator) / d**0.5
    tokens = torch.randn(d, m, generator=generator)
    vectors = torch.randn(r, d, generator=generator).requires_grad_()
    return weight, tokens, vectors


def matrix_free_output(weight, tokens, vectors):
    """W H X with H applied by cuhouse, never formed."""
    return weight @ cuhouse.torch.householder_matmul(vectors, tokens)


def dense_output(weight, tokens, vectors):
    """W H X with H formed as PEFT's HRA does: r rank-1 updates of the identity, then W H."""
    units = vectors / vectors.norm(dim=1, keepdim=True)
    householder = torch.eye(weight.shape[1], dtype=weight.dtype)
    for u in units:
        householder = householder - 2 * (householder @ u[:, None]) @ u[None, :]
    return (weight @ householder) @ tokens


OUTPUTS = {"matrix-free": matrix_free_output, "dense (PEFT)": dense_output}


def training_step(variant, weight, tokens, vectors):
    """Forward + backward of mean(y^2) with respect to the reflections."""

    def step():
        vectors.grad = None
        OUTPUTS[variant](weight, tokens, vectors).square().mean().backward()

    return step


def fit_teacher(d, r, m, steps, seed=0):
    """Adam on r student reflections towards y = W H(teacher) X; the losses (relative squared error)."""
    weight, _, teacher = problem(d, r, m, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    student = (torch.randn(r, d, generator=generator) / d**0.5).requires_grad_()  # unit-scale vectors
    optimizer = torch.optim.Adam([student], lr=1e-2)
    losses = []
    for _ in range(steps):
        tokens = torch.randn(d, m, generator=generator)
        with torch.no_grad():
            target = matrix_free_output(weight, tokens, teacher)
        loss = (matrix_free_output(weight, tokens, student) - target).square().sum() / target.square().sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def compare(d, r, m, rounds, measure_memory):
    """One table row: times, memory, agreement of y and of the gradients."""
    weight, tokens, vectors = problem(d, r, m)
    outputs, grads = {}, {}
    for variant in VARIANTS:
        vectors.grad = None
        y = OUTPUTS[variant](weight, tokens, vectors)
        y.square().mean().backward()
        outputs[variant], grads[variant] = y.detach(), vectors.grad.clone()
    y_error = ((outputs["matrix-free"] - outputs["dense (PEFT)"]).norm() / outputs["dense (PEFT)"].norm()).item()
    g_error = ((grads["matrix-free"] - grads["dense (PEFT)"]).norm() / grads["dense (PEFT)"].norm()).item()
    steps = {v: training_step(v, weight, tokens, vectors) for v in VARIANTS}
    ms = {v: _measure.median_ms(t) for v, t in _measure.interleaved_times(steps, rounds).items()}
    memory = {v: None for v in VARIANTS}
    if measure_memory:
        for v in VARIANTS:
            memory[v] = _measure.run_child(
                os.path.abspath(__file__), ["--memory-of", v, "--sizes", d, "--reflections", r, "--tokens", m]
            )
    return {"ms": ms, "memory": memory, "y_error": y_error, "grad_error": g_error}


def mib(n_floats):
    return n_floats * 4 / 2**20


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1024,4096", help="layer widths d, comma-separated")
    parser.add_argument("--reflections", default="8,64", help="r, comma-separated")
    parser.add_argument("--tokens", type=int, default=256, help="m, the columns of X")
    parser.add_argument("--rounds", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--fit-steps", type=int, default=200, help="Adam steps of the teacher fit")
    parser.add_argument("--tiny", action="store_true", help="d = 128, r = 8, m = 16, 2 rounds, 40 fit steps")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)  # child mode: peak memory of one variant
    args = parser.parse_args(argv)
    if args.tiny:
        args.sizes, args.reflections, args.tokens, args.rounds, args.fit_steps = "128", "8", 16, 2, 40
    _measure.single_threaded()
    sizes = [int(d) for d in str(args.sizes).split(",")]
    reflections = [int(r) for r in str(args.reflections).split(",")]
    if args.memory_of:
        step = training_step(args.memory_of, *problem(sizes[0], reflections[0], args.tokens))
        _measure.report_to_parent(_measure.peak_growth_mib(step, warmup=1, steps=1))
        return None
    fit = fit_teacher(sizes[0], reflections[0], args.tokens, args.fit_steps)
    print(
        "teacher fit, d = {}, r = {}, m = {}, Adam lr 1e-2: relative squared error {:.4f} at step 1, "
        "{:.2e} at step {}".format(sizes[0], reflections[0], args.tokens, fit[0], fit[-1], len(fit))
    )
    measure_memory = not args.no_memory and _measure.memory_supported()
    results, rows = {"fit": fit}, []
    for d in sizes:
        for r in reflections:
            result = results[d, r] = compare(d, r, args.tokens, args.rounds, measure_memory)
            free, dense = result["ms"]["matrix-free"], result["ms"]["dense (PEFT)"]
            memory = ["n/a" if result["memory"][v] is None else "{:.1f}".format(result["memory"][v]) for v in VARIANTS]
            rows.append(
                [
                    d,
                    r,
                    "{:.2f}".format(free),
                    "{:.2f}".format(dense),
                    "{:.1f}".format(dense / free),
                    memory[0],
                    "{:.1f}".format(mib(r * d + d * args.tokens)),
                    memory[1],
                    "{:.1f}".format(mib(r * d * d)),
                    "{:.0e}".format(max(result["y_error"], result["grad_error"])),
                ]
            )
    print(
        "HRA y = W H(u_1..u_r) X, W frozen (d x d), X (d x {}), float32, forward + backward of mean(y^2); "
        "torch {} and NumPy's BLAS single-threaded, median of {} round-robin steps".format(
            args.tokens, torch.__version__, args.rounds
        )
    )
    _measure.print_table(
        ["d", "r", "free ms", "dense ms", "dense/free", "free MiB", "(r d + d m)", "dense MiB", "(r d^2)", "rel. diff"],
        rows,
    )
    print(
        "MiB: growth of peak RSS over one step after a warm-up step, each variant in its own process; "
        "in parentheses the float32 size of the tensors autograd keeps; rel. diff: max relative difference "
        "of y and of the gradient between the two"
    )
    return results


if __name__ == "__main__":
    main()
