"""Orthogonal Procrustes by gradient descent on Householder vectors.

Find the orthogonal R minimizing ``||A R - B||_F^2 / m`` with R = H(v_1)...H(v_d),
using only NumPy, ``cuhouse.vjp`` for the gradient and a hand-written Adam on
the flattened vectors. ``scipy.linalg.orthogonal_procrustes`` gives the
closed-form optimum to compare with. A product of d reflections has
determinant (-1)^d, so the data are generated from such a matrix.

Run: ``python examples/procrustes.py`` (a few seconds).
"""

import numpy
from scipy.linalg import orthogonal_procrustes

import cuhouse


def loss_and_gradient(flat, like, a, b):
    """Loss ``||A H - B||^2 / m`` and its gradient w.r.t. the flat vectors."""
    h = cuhouse.HouseholderProduct(*cuhouse.unflatten_params(flat, like))
    out, back = cuhouse.vjp(cuhouse.matmul, a, h)
    residual = out - b
    m = a.shape[0]
    _, dparams = back(2 * residual / m)
    return float(numpy.sum(residual**2) / m), cuhouse.flatten_params(dparams)


def adam(fun, x, steps, lr, decay, beta1=0.9, beta2=0.999, eps=1e-12, report=None):
    """Minimize ``fun(x) -> (loss, grad)`` with Adam and an exponentially decaying step size."""
    mean = numpy.zeros_like(x)
    second = numpy.zeros_like(x)
    for step in range(1, steps + 1):
        loss, grad = fun(x)
        mean = beta1 * mean + (1 - beta1) * grad
        second = beta2 * second + (1 - beta2) * grad**2
        step_size = lr * decay**step * numpy.sqrt(1 - beta2**step) / (1 - beta1**step)
        x = x - step_size * mean / (numpy.sqrt(second) + eps)
        if report:
            report(step, loss)
    return x, fun(x)[0]


def main(d=16, m=200, steps=3000, seed=0):
    rng = numpy.random.default_rng(seed)
    truth = cuhouse.HouseholderProduct(rng.standard_normal((d, d))).todense()
    a = rng.standard_normal((m, d))
    b = a @ truth + 0.1 * rng.standard_normal((m, d))
    r, _ = orthogonal_procrustes(a, b)
    optimum = float(numpy.sum((a @ r - b) ** 2) / m)
    assert numpy.sign(numpy.linalg.det(r)) == (-1) ** d, "the optimum must be reachable by d reflections"

    params = (rng.standard_normal((d, d)),)
    every = steps // 10

    def report(step, loss):
        if step % every == 0 or step == 1:
            print("step {:5d}  loss {:.10f}  loss - optimum {:.3e}".format(step, loss, loss - optimum))

    flat, final = adam(
        lambda x: loss_and_gradient(x, params, a, b),
        cuhouse.flatten_params(params),
        steps,
        lr=0.05,
        decay=0.999,
        report=report,
    )
    print("closed-form optimum (scipy orthogonal_procrustes): {:.10f}".format(optimum))
    print("Adam on Householder vectors:                       {:.10f}  (gap {:.3e})".format(final, final - optimum))
    return final - optimum


if __name__ == "__main__":
    gap = main()
    raise SystemExit(0 if gap < 1e-6 else 1)
