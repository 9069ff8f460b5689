"""Forward plus backward of ``H @ X`` from the vectors (one training step's
work for an orthogonal layer), against torch autograd through
``torch.linalg.householder_product``.

Both sides are the ``gradients`` section of ``python -m cuhouse bench``:
``cuhouse.vjp(cuhouse.matmul, H, X)`` and its pullback on a fresh H (full
vectors, or ``from_lapack(qr, tau)``, whose gradient is w.r.t. ``qr`` as
torch's), and torch when it is importable. Where ``cuhouse.vjp`` cannot
differentiate a ``HouseholderProduct`` (commits before it landed), ``setup`` skips.
"""

import numpy

from cuhouse.bench import peers
from cuhouse.bench.gradients import forward_and_backward, lapack_forward_and_backward

from .common import ALGORITHMS, COLUMNS, DTYPES, SIZES, backends, data, skip_if_too_slow_on_cpu
from .peers import require

METHODS = ["cuhouse " + name for name in ALGORITHMS] + ["cuhouse from_lapack", "torch householder_product"]


@backends
class ForwardBackward:
    params = [METHODS, SIZES, COLUMNS, DTYPES]
    param_names = ["method", "d", "m", "dtype"]

    def setup(self, method, d, m, dtype):
        algorithm = method.split()[1]
        if method == "cuhouse from_lapack":
            skip_if_too_slow_on_cpu(self.xp, "auto", d, m, backward=True)
        elif method.startswith("cuhouse "):
            skip_if_too_slow_on_cpu(self.xp, algorithm, d, m, backward=True)
            require_vjp(algorithm, dtype, self.xp)
        elif self.xp is numpy and d >= 4096:
            raise NotImplementedError("torch's backward at d=4096 on the CPU: minutes")
        vectors, x = data(d, d, m, dtype, self.xp)
        _, dout = data(d, 1, m, dtype, self.xp, seed=1)
        if method == "cuhouse from_lapack":
            qr, tau = peers.geqrf(vectors, self.xp)
            self.run = lambda: lapack_forward_and_backward(qr, tau, x, dout)
        elif method.startswith("cuhouse "):
            self.run = lambda: forward_and_backward(vectors, x, dout, algorithm)
        else:
            qr, tau = peers.geqrf(vectors, self.xp)
            self.run = require(peers.torch_forward_backward(qr, tau, x, dout, self.xp))

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
        raise NotImplementedError(
            "cuhouse.vjp cannot differentiate HouseholderProduct ({}) yet: {}".format(algorithm, error)
        ) from None
