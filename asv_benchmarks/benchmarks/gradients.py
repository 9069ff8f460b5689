"""Forward plus backward of ``H @ X`` from the vectors (one training step's
work for an orthogonal layer), against torch autograd through
``torch.linalg.householder_product``.

Both sides are the ``gradients`` section of ``python -m cuhouse bench``:
``cuhouse.vjp(cuhouse.matmul, H, X)`` and its pullback on a fresh H, and
torch when it is importable. Where ``cuhouse.vjp`` cannot differentiate a
``HouseholderProduct`` (commits before it landed), ``setup`` skips.
"""
import numpy

from cuhouse.bench.gradients import forward_and_backward, torch_householder_product

from .common import ALGORITHMS, COLUMNS, DTYPES, SIZES, backends, data, skip_if_too_slow_on_cpu

METHODS = ["cuhouse " + name for name in ALGORITHMS] + ["torch householder_product"]


@backends
class ForwardBackward:
    params = [METHODS, SIZES, COLUMNS, DTYPES]
    param_names = ["method", "d", "m", "dtype"]

    def setup(self, method, d, m, dtype):
        algorithm = method.split()[1]
        if method.startswith("cuhouse "):
            skip_if_too_slow_on_cpu(self.xp, algorithm, d, m, backward=True)
            require_vjp(algorithm, dtype, self.xp)
        elif self.xp is numpy and d >= 4096:
            raise NotImplementedError("torch's backward at d=4096 on the CPU: minutes")
        vectors, x = data(d, d, m, dtype, self.xp)
        _, dout = data(d, 1, m, dtype, self.xp, seed=1)
        if method.startswith("cuhouse "):
            self.run = lambda: forward_and_backward(vectors, x, dout, algorithm)
        else:
            self.run = torch_householder_product(vectors, x, dout, self.xp)
            if self.run is None:
                raise NotImplementedError("torch is not installed")

    def time_forward_backward(self, method, d, m, dtype):
        self.run()

    def peakmem_forward_backward(self, method, d, m, dtype):
        self.run()


def require_vjp(algorithm, dtype, xp):
    """Skip unless ``cuhouse.vjp`` differentiates ``H @ X`` for ``algorithm`` (a tiny probe)."""
    vectors, x = data(8, 8, 2, dtype, xp)
    try:
        forward_and_backward(vectors, x, x, algorithm)
    except (AttributeError, NotImplementedError) as error:
        raise NotImplementedError("cuhouse.vjp cannot differentiate HouseholderProduct "
                                  "({}) yet: {}".format(algorithm, error)) from None
