"""What the tests share, in the manner of autograd's ``check_grads`` and CuPy's ``testing``:
array conversion and tolerances, the float64 dense references, random matrices of every kind,
and the central-difference dot test of an adjoint (:func:`check_vjp`).

Import it as ``from helpers import ...`` (pytest puts ``tests/`` on the path); ``conftest.py``
keeps only fixtures.
"""

import numpy
import pytest

import cuhouse as ch


# ----------------------------------------------------------------- arrays
def to_numpy(a):
    """A NumPy copy of a NumPy, CuPy, torch or array_api_strict array."""
    if hasattr(a, "get"):
        return a.get()
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    return numpy.asarray(a)


def rtol(dtype, scale=1):
    """Relative tolerance for results computed in ``dtype`` (as numpy.linalg's tests do)."""
    return scale * {numpy.float32: 2e-5, numpy.float64: 1e-12}[numpy.dtype(dtype).type]


def inner(a, b):
    """The real inner product ``Re sum(conj(a) * b)`` of two arrays of one shape, in float64 on the host
    (for complex data the one whose gradient is torch's ``dL/dRe + i dL/dIm``)."""
    a, b = to_numpy(a), to_numpy(b)
    return float(numpy.real(numpy.sum(numpy.conj(a) * b)))


# ------------------------------------------------------------ host reads
class SyncCounter:
    """Counts the device-to-host reads of torch tensors (``bool``, ``item``, ``float``, ``int``, ``index``,
    ``tolist``, ``numpy``) inside a ``with`` block, as ``count``: a stand-in on the CPU for
    ``torch.cuda.set_sync_debug_mode``."""

    NAMES = ("__bool__", "item", "__float__", "__int__", "__index__", "tolist", "numpy")

    def __enter__(self):
        import torch

        self.count, self._saved = 0, {}
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)
            self._saved[name] = original

            def counted(t, *args, _original=original, **kwargs):
                self.count += 1
                return _original(t, *args, **kwargs)

            setattr(torch.Tensor, name, counted)
        return self

    def __exit__(self, *exc):
        import torch

        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)


# ------------------------------------------------------- dense references
def dense_reference(vectors, identity=None):
    """float64 H(v_1) ... H(v_n) by the sequential loop, for one ``(n, d)`` stack or a batch.

    Zero rows and rows marked in ``identity`` ``(..., n)`` are identity factors.
    """
    v = to_numpy(vectors).astype(numpy.float64)
    d = v.shape[-1]
    h = numpy.broadcast_to(numpy.eye(d), v.shape[:-2] + (d, d)).copy()
    skip = numpy.zeros(v.shape[:-1], dtype=bool) if identity is None else numpy.asarray(identity)
    for i in range(v.shape[-2]):
        vi = numpy.where(skip[..., i, None], 0, v[..., i, :])
        norm = numpy.linalg.norm(vi, axis=-1, keepdims=True)
        unit = vi / numpy.where(norm == 0, 1, norm)
        h -= 2 * (h @ unit[..., :, None]) @ unit[..., None, :]
    return h


def dense_of(a):
    """The dense float64 form of a cuhouse matrix, on the host."""
    return to_numpy(a.todense()).astype(numpy.float64)


# ------------------------------------------------------- random matrices
# (``xp``: the backend of the arrays, from the same NumPy draws; NumPy by default.)
def random_householder(rng, d, n=None, batch=(), dtype=numpy.float64, xp=numpy):
    """A ``HouseholderProduct`` of ``n`` (default d) standard normal vectors of length d."""
    return ch.HouseholderProduct(xp.asarray(rng.standard_normal(batch + (n or d, d)).astype(dtype)))


def random_svd(rng, d_out, d_in, rank=None, low=1.0, high=2.0, u_reflections=None, v_reflections=None, xp=numpy):
    """An ``SVDMatrix`` ``d_out x d_in`` of ``rank`` (default min) singular values uniform in [low, high]."""
    r = rank or min(d_out, d_in)
    u = random_householder(rng, d_out, u_reflections, xp=xp)
    v = random_householder(rng, d_in, v_reflections, xp=xp)
    return ch.SVDMatrix(u, xp.asarray(rng.uniform(low, high, r)), v)


def random_eigh(rng, d, low=0.5, high=2.0, xp=numpy):
    """An ``EighMatrix`` with eigenvalues uniform in [low, high]."""
    return ch.EighMatrix(random_householder(rng, d, xp=xp), xp.asarray(rng.uniform(low, high, d)))


def random_lapack(rng, d, xp=numpy):
    """``HouseholderProduct.from_lapack`` of the ``geqrf`` of a standard normal d x d matrix."""
    import scipy.linalg

    (qr, tau), _ = scipy.linalg.qr(rng.standard_normal((d, d)), mode="raw")
    return ch.HouseholderProduct.from_lapack(xp.asarray(qr), xp.asarray(tau))


# ------------------------------------------------------------ the dot test
def check_vjp(fun, primals, vjp, *, seed=1, step=1e-6, rtol=1e-6, xp=numpy, masks=None):
    """Assert that ``vjp`` is the adjoint of the derivative of ``fun`` at ``primals``.

    The dot test: for a random cotangent ``u`` and random tangents ``t_i`` (complex for complex
    primals), ``<u, (fun(p + h t) - fun(p - h t)) / 2h>`` (central differences, ``h = step``)
    must equal ``sum_i <vjp(u)_i, t_i>`` to ``rtol`` relative (absolute below 1). ``fun(*primals)``
    returns one array; ``vjp(u)`` returns one gradient per primal, each of its primal's shape.
    ``masks`` (one per primal, ``None`` for none) restricts the tangents to the directions the
    parameterization has (a gradient convention that holds some entries fixed).
    Costs three calls of ``fun`` and one of ``vjp``.
    """
    rng = numpy.random.default_rng(seed)

    def draw(like):
        t = rng.standard_normal(like.shape)
        if numpy.dtype(dtype_name(like)).kind == "c":
            t = t + 1j * rng.standard_normal(like.shape)
        return xp.asarray(t)

    out = fun(*primals)
    u = draw(out)
    grads = tuple(vjp(u))
    assert [tuple(g.shape) for g in grads] == [tuple(p.shape) for p in primals]
    tangents = [draw(p) for p in primals]
    if masks is not None:
        tangents = [t if mask is None else t * mask for t, mask in zip(tangents, masks)]
    plus = fun(*(p + step * t for p, t in zip(primals, tangents)))
    minus = fun(*(p - step * t for p, t in zip(primals, tangents)))
    numeric = inner(u, (plus - minus) / (2 * step))
    adjoint = sum(inner(g, t) for g, t in zip(grads, tangents))
    assert abs(numeric - adjoint) <= rtol * max(abs(adjoint), 1.0), (numeric, adjoint)


def matmul_vjp(a, x, side):
    """``(out, grads)`` of ``a @ x`` (``side == "left"``) or ``x @ a`` by :func:`cuhouse.vjp`, with
    ``grads(u)`` giving ``(*dparams, dx)`` on either side: the ``vjp`` that :func:`check_vjp` takes."""
    out, back = ch.vjp(ch.matmul, a, x) if side == "left" else ch.vjp(ch.matmul, x, a)

    def grads(u):
        dparams, dx = back(u) if side == "left" else back(u)[::-1]
        return (*dparams, dx)

    return out, grads


def check_matmul_vjp(make, leaves, x, side="left", xp=numpy, **options):
    """:func:`check_vjp` of ``make(*leaves) @ x`` (``x @ make(*leaves)`` for ``side == "right"``)
    against :func:`cuhouse.vjp`, the tangent moving every leaf and ``x`` at once."""
    _, grads = matmul_vjp(make(*leaves), x, side)

    def fun(*primals):
        a, operand = make(*primals[:-1]), primals[-1]
        return ch.matmul(a, operand) if side == "left" else ch.matmul(operand, a)

    check_vjp(fun, (*leaves, x), grads, xp=xp, **options)


def check_logdet_vjp(make, leaves, xp=numpy, **options):
    """:func:`check_vjp` of ``make(*leaves).logdet()`` against :func:`cuhouse.vjp`."""
    _, back = ch.vjp(ch.logdet, make(*leaves))
    check_vjp(lambda *primals: make(*primals).logdet(), tuple(leaves), lambda u: back(u)[0], xp=xp, **options)


# ------------------------------------------------- the generic path (torch, array_api_strict)
class Library:
    """A library of the generic path as the tests use it: its Array API namespace, plus the few
    NumPy spellings the suite is written with (``asarray`` of a NumPy array, ``swapaxes``).

    ``name`` is the backend's name (``"torch"``, ``"array_api_strict"``); ``native`` is False, so a
    test that needs a NumPy/CuPy-only feature asks for it with :func:`native_only`.
    """

    native = False

    def __init__(self, name, namespace):
        self.name = self.__name__ = name
        self._namespace = namespace

    def __getattr__(self, attribute):
        return getattr(self._namespace, attribute)

    def asarray(self, a, dtype=None):
        if isinstance(a, numpy.ndarray) and dtype is not None:
            a = a.astype(dtype)
        if isinstance(a, numpy.ndarray):  # numpy.array, not ascontiguousarray, which makes a 0-d array 1-d
            return self._namespace.asarray(numpy.array(a, order="C"))
        return self._namespace.asarray(a) if dtype is None else self._namespace.asarray(a, dtype=self._dtype(dtype))

    def _dtype(self, dtype):
        return getattr(self._namespace, numpy.dtype(dtype).name)

    def swapaxes(self, a, axis1, axis2):
        if sorted((axis1 % a.ndim, axis2 % a.ndim)) != [a.ndim - 2, a.ndim - 1]:
            raise NotImplementedError("the tests swap the last two axes only")
        return a.mT


def generic_library(name):
    """The :class:`Library` of ``name``, or ``None`` when it is not installed."""
    try:
        if name == "torch":
            import array_api_compat.torch as namespace
        else:
            namespace = __import__(name)
    except ImportError:
        return None
    return Library(name, namespace)


def is_native(xp):
    """Whether ``xp`` runs cuhouse's native code (NumPy, CuPy); the generic path's libraries of ``any_xp``
    (:class:`Library`) say ``native = False``."""
    return getattr(xp, "native", True) is not False


def native_only(xp, what):
    """Skip the test on the generic path, saying which NumPy/CuPy-only feature it exercises."""
    if not is_native(xp):
        pytest.skip("{} is NumPy/CuPy only".format(what))


def algorithm_names(xp):
    """The algorithms that run on ``xp`` (``auto`` aside): all of them natively, the portable ones on the
    generic path."""
    from cuhouse.algorithms import ALGORITHMS, portable

    return sorted(ALGORITHMS) if is_native(xp) else list(portable.ALGORITHMS)


# ----------------------------------- backend-neutral inputs and results (every backend of ``any_xp``)
def backend_name(xp):
    """The backend's name as ``HouseholderProduct.backend`` spells it: numpy, cupy, torch, array_api_strict."""
    return getattr(xp, "name", xp.__name__)


def on(xp, *arrays, dtype=None):
    """NumPy data (arrays, lists, scalars) as arrays of ``xp`` (optionally of ``dtype``, a NumPy dtype):
    one array for one argument, a tuple for several. Inputs are drawn with NumPy's rng and moved here."""
    moved = tuple(xp.asarray(numpy.array(a, dtype=dtype)) for a in arrays)  # a writable copy: torch warns on others
    return moved[0] if len(moved) == 1 else moved


def dtype_name(a):
    """The NumPy name of an array's or a cuhouse matrix's dtype on any backend (``torch.float32`` -> ``float32``)."""
    return str(a.dtype).rsplit(".", 1)[-1]


def assert_allclose(actual, expected, **tolerances):
    """``numpy.testing.assert_allclose`` on the host: either side may be an array of any backend."""
    numpy.testing.assert_allclose(to_numpy(actual), to_numpy(expected), **tolerances)


def assert_equal(actual, expected):
    """``numpy.testing.assert_array_equal`` on the host: either side may be an array of any backend."""
    numpy.testing.assert_array_equal(to_numpy(actual), to_numpy(expected))


def rmatmul(x, a):
    """``x @ a`` for an array ``x`` and a cuhouse matrix ``a``; through :func:`cuhouse.matmul` on
    array_api_strict, whose ``@`` refuses a foreign operand (elsewhere the reflected ``__rmatmul__`` runs)."""
    return ch.matmul(x, a) if type(x).__module__.startswith("array_api_strict") else x @ a


def needs_algorithm(xp, algorithm):
    """Skip the test where ``algorithm`` does not run on ``xp`` (``fasth`` is NumPy/CuPy only; its
    refusal on the generic path is tested in ``test_backends.py``)."""
    from cuhouse.algorithms import portable

    if algorithm not in ("auto",) + portable.ALGORITHMS:
        native_only(xp, "algorithm={!r}".format(algorithm))


# ------------------------------------------- backend-neutral checks (tests2: spectral, complex, fuzz, ...)
def examples(xp, numpy_examples):
    """How many hypothesis examples a property test runs on ``xp``: all of them on NumPy and CuPy, a
    quarter (at least 5) on the generic path, whose Python overhead per call is larger."""
    return numpy_examples if is_native(xp) else max(5, numpy_examples // 4)
