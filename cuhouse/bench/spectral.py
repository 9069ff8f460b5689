"""The seed's matrix-operation comparison: the factored route against the dense route on W.

For each operation, the cuhouse case builds the matrix from its raw arrays
inside the timed call (validation, normalization and the forms of H included;
n = d reflections per factor), and the dense cases get W as a precomputed
dense array:

* ``inv @ X``: ``SVDMatrix(u, s, v).inv() @ X`` against ``numpy.linalg.solve``,
  ``numpy.linalg.inv`` then ``@``, and SciPy's LU; also with U and V built once
  (their forms cached), as in a loop that reuses W;
* ``logdet``: ``SVDMatrix(u, s, v).logdet()`` against ``numpy.linalg.slogdet``;
* ``expm @ X``: ``EighMatrix(u, w).expm() @ X`` against ``scipy.linalg.expm`` then ``@``;
* ``cayley @ X``: ``EighMatrix(u, w).cayley() @ X`` against
  ``(I - W) @ numpy.linalg.solve(I + W, X)``.
"""

import numpy

import cuhouse

from .forward import gaussian

TITLE = "matrix operations on W = U diag(s) V^T (n = d reflections), factored vs dense"
EXPLAIN = {
    "<op>: cuhouse": "the factored route, W built from its raw arrays inside the call: the reference of its op",
    "<op>: cuhouse, cached factors": "the same with U's and V's forms built once (a loop reusing W)",
    "<op>: numpy/scipy ...": "the dense route on W precomputed as a d x d array",
}


def data(d, m, dtype, xp, seed=0):
    """Vectors for U and V ``(d, d)``, s with |s| in [0.5, 2] (random signs), w in [0.5, 2], X ``(d, m)``;
    complex vectors and X (unitary U, V) and real s, w for a complex ``dtype``."""
    rng = numpy.random.default_rng(seed)
    real = numpy.finfo(dtype).dtype
    u, v = (gaussian(rng, (d, d), dtype) for _ in range(2))
    s = (rng.uniform(0.5, 2.0, d) * rng.choice([-1.0, 1.0], d)).astype(real)
    w = rng.uniform(0.5, 2.0, d).astype(real)
    x = gaussian(rng, (d, m), dtype)
    return tuple(xp.asarray(a) for a in (u, s, v, w, x))


def cases(d, m, dtype, xp):
    """Each case mapped to its operation's cuhouse case, and the callables."""
    u, s, v, w, x = data(d, m, dtype, xp)
    dense_w = cuhouse.SVDMatrix(u, s, v).todense()
    dense_e = cuhouse.EighMatrix(u, w).todense()
    eye = xp.eye(d, dtype=dtype)
    cached = cuhouse.SVDMatrix(cuhouse.HouseholderProduct(u), s, cuhouse.HouseholderProduct(v))
    groups = {
        "inv @ X: cuhouse": {
            "inv @ X: cuhouse": lambda: cuhouse.SVDMatrix(u, s, v).inv() @ x,
            "inv @ X: cuhouse, cached factors": lambda: cached.inv() @ x,
            "inv @ X: numpy.linalg.solve": lambda: xp.linalg.solve(dense_w, x),
            "inv @ X: numpy inv(W) @ X": lambda: xp.linalg.inv(dense_w) @ x,
        },
        "logdet: cuhouse": {
            "logdet: cuhouse": lambda: cuhouse.SVDMatrix(u, s, v).logdet(),
            "logdet: numpy.linalg.slogdet": lambda: xp.linalg.slogdet(dense_w),
        },
        "expm @ X: cuhouse": {
            "expm @ X: cuhouse": lambda: cuhouse.EighMatrix(u, w).expm() @ x,
        },
        "cayley @ X: cuhouse": {
            "cayley @ X: cuhouse": lambda: cuhouse.EighMatrix(u, w).cayley() @ x,
            "cayley @ X: (I-W) solve(I+W, X)": lambda: (eye - dense_e) @ xp.linalg.solve(eye + dense_e, x),
        },
    }
    if xp is numpy:
        import scipy.linalg

        def lu_solve():
            return scipy.linalg.lu_solve(scipy.linalg.lu_factor(dense_w, check_finite=False), x, check_finite=False)

        groups["inv @ X: cuhouse"]["inv @ X: scipy lu_factor+lu_solve"] = lu_solve
        groups["expm @ X: cuhouse"]["expm @ X: scipy expm(W) @ X"] = lambda: scipy.linalg.expm(dense_e) @ x
    baseline = {name: group for group, members in groups.items() for name in members}
    return baseline, {name: fn for members in groups.values() for name, fn in members.items()}
