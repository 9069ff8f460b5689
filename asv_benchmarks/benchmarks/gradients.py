"""Forward plus backward of ``H @ X`` from the vectors (one training step's
work for an orthogonal layer), against torch autograd through
``torch.linalg.householder_product``.

cuhouse's side is ``cuhouse.vjp(cuhouse.matmul, H, X)`` followed by the
pullback, on a fresh H. Where ``cuhouse.vjp`` cannot differentiate a
``HouseholderProduct`` yet, ``setup`` skips.
"""
import numpy

import cuhouse

from .common import ALGORITHMS, COLUMNS, DTYPES, SIZES, backends, data, skip_if_too_slow_on_cpu
from .peers import torch_module, torch_operands, torch_synchronize

METHODS = ["cuhouse " + name for name in ALGORITHMS] + ["torch householder_product"]


@backends
class ForwardBackward:
    params = [METHODS, SIZES, COLUMNS, DTYPES]
    param_names = ["method", "d", "m", "dtype"]

    def setup(self, method, d, m, dtype):
        if method.startswith("cuhouse "):
            algorithm = method.split()[1]
            skip_if_too_slow_on_cpu(self.xp, algorithm, d, m)
            require_vjp(algorithm, dtype, self.xp)
        elif self.xp is numpy and d >= 4096:
            raise NotImplementedError("torch's backward at d=4096 on the CPU: minutes")
        else:
            torch_module(self.xp)
        vectors, x = data(d, d, m, dtype, self.xp)
        _, dout = data(d, 1, m, dtype, self.xp, seed=1)
        if method.startswith("cuhouse "):
            self.run = lambda: cuhouse_step(vectors, x, dout, algorithm)
        else:
            self.run = torch_step(vectors, x, dout, self.xp)

    def time_forward_backward(self, method, d, m, dtype):
        self.run()

    def peakmem_forward_backward(self, method, d, m, dtype):
        self.run()


def cuhouse_step(vectors, x, dout, algorithm):
    """Gradients of ``<dout, H @ X>`` with respect to the vectors and X."""
    h = cuhouse.HouseholderProduct(vectors, algorithm=algorithm)
    _, pullback = cuhouse.vjp(cuhouse.matmul, h, x)
    return pullback(dout)


def require_vjp(algorithm, dtype, xp):
    """Skip unless ``cuhouse.vjp`` differentiates ``H @ X`` for ``algorithm`` (a tiny probe)."""
    vectors, x = data(8, 8, 2, dtype, xp)
    try:
        cuhouse_step(vectors, x, x, algorithm)
    except (AttributeError, NotImplementedError) as error:
        raise NotImplementedError("cuhouse.vjp cannot differentiate HouseholderProduct "
                                  "({}) yet: {}".format(algorithm, error)) from None


def torch_step(vectors, x, dout, xp):
    """torch autograd through ``householder_product(A, tau) @ X``, with respect to A."""
    torch, a, tau, x = torch_operands(vectors, x, xp)
    a.requires_grad_(True)
    dout = torch.as_tensor(dout if xp is numpy else xp.asnumpy(dout)).to(x.device)

    def run():
        a.grad = None
        (torch.linalg.householder_product(a, tau) @ x).backward(dout)
        torch_synchronize(torch, x)
    return run
