"""Fuzzing the public API (hypothesis, a bounded number of examples): never silently wrong.

For random shapes, batch dimensions, dtypes, storage layouts, memory orders and
bad inputs, every call either matches a dense float64 reference or raises a
``TypeError``/``ValueError``/``MemoryError`` from cuhouse that names the
offending argument; the caller's arrays are never modified; no result shares
memory with an input. Then the algebra fuzz (random expression trees of
products, ``.T`` and ``.inv()`` against dense float64, with gradients against
central differences) and an overflow/underflow sweep of row and operand scales
for every algorithm. Each runs on every backend (``any_xp``): the generic path's
libraries draw from what they have (no object arrays, no negative strides,
float16 on torch only) and
run a quarter of the examples (:func:`helpers.examples`).

Every call is counted by outcome in :data:`OUTCOMES`; ``pytest -s
tests/test_fuzz.py`` prints the counts at the end of the module (and writes
them as JSON to ``$CUHOUSE_FUZZ_COUNTS`` when that is set). Examples are
derandomized, so CI runs the same cases every time.
"""

import collections
import json
import os
import re
import sys
import traceback

import numpy
import pytest
import scipy.linalg
from helpers import (
    algorithm_names,
    backend_name,
    dense_reference,
    dtype_name,
    examples,
    is_native,
    needs_algorithm,
    rmatmul,
    to_numpy,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cuhouse as ch
from cuhouse.householder import ALGORITHM_CHOICES

OUTCOMES = collections.Counter()
"""Calls by outcome: ``matched`` a dense reference, ``raised <Error>`` as expected for a bad input
(by the argument named), and the failures, which the assertions forbid: ``silently wrong``,
``unclear error``, ``modified an input``, ``shared memory``."""

FUZZ = settings(
    deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
PACKAGE = os.path.dirname(ch.__file__)
TOL = {numpy.dtype(numpy.float32): 2e-4, numpy.dtype(numpy.float64): 1e-11}


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    total = sum(v for k, v in OUTCOMES.items() if k != "calls")
    lines = ["", "fuzz outcomes ({} calls):".format(OUTCOMES["calls"])]
    lines += ["  {:<40} {}".format(k, v) for k, v in sorted(OUTCOMES.items()) if k != "calls"]
    lines.append("  {:<40} {}".format("silently wrong", OUTCOMES["silently wrong"]))
    lines.append("  {:<40} {}".format("(outcomes counted)", total))
    print("\n".join(lines))
    if os.environ.get("CUHOUSE_FUZZ_COUNTS"):
        with open(os.environ["CUHOUSE_FUZZ_COUNTS"], "w") as f:
            json.dump(dict(OUTCOMES), f, indent=1, sort_keys=True)


# --------------------------------------------------------------------------------------- references
def _lapack_dense(a, tau):
    """float64 (complex128) Q = H(1) ... H(k) of geqrf output ``a`` ``(..., M, N)``, ``tau`` ``(..., k)``
    (batched): ``H_i = I - tau_i v_i v_i^H``, with LAPACK's tau for complex input and, for real input,
    tau implied by the reflector (``2 / v^T v``, exactly what ``tau`` is to its precision)."""
    complex_ = numpy.iscomplexobj(a) or numpy.iscomplexobj(tau)
    a, tau = _as_dense(a, complex_), _as_dense(tau, complex_)
    batch = numpy.broadcast_shapes(a.shape[:-2], tau.shape[:-1])
    a = numpy.broadcast_to(a, batch + a.shape[-2:])
    tau = numpy.broadcast_to(tau, batch + tau.shape[-1:])
    d, k = a.shape[-2], tau.shape[-1]
    q = numpy.broadcast_to(numpy.eye(d, dtype=a.dtype), batch + (d, d)).copy()
    for i in range(k):
        v = numpy.zeros(batch + (d,), dtype=a.dtype)
        v[..., i] = 1
        v[..., i + 1 :] = a[..., i + 1 :, i]
        t = tau[..., i] if complex_ else numpy.where(tau[..., i] == 0, 0, 2 / (v * v).sum(axis=-1))
        q -= t[..., None, None] * (q @ v[..., :, None]) @ v[..., None, :].conj()
    return q


def _householder_dense(v):
    """float64 (complex128) H(v_1) ... H(v_n), H(v) = I - 2 v v^H / (v^H v), batched."""
    if not numpy.iscomplexobj(v):
        return dense_reference(v)
    v = _as_dense(v, True)
    d = v.shape[-1]
    h = numpy.broadcast_to(numpy.eye(d, dtype=v.dtype), v.shape[:-2] + (d, d)).copy()
    for i in range(v.shape[-2]):
        unit = v[..., i, :] / numpy.linalg.norm(v[..., i, :], axis=-1, keepdims=True)
        h -= 2 * (h @ unit[..., :, None]) @ unit[..., None, :].conj()
    return h


def _as_dense(x, complex_=None):
    """``x`` in float64, or complex128 when it (or ``complex_``) is complex."""
    complex_ = numpy.iscomplexobj(x) if complex_ is None else complex_
    return numpy.asarray(x, dtype=numpy.complex128 if complex_ else numpy.float64)


def _adjoint(a):
    return numpy.swapaxes(a, -1, -2).conj()


def _shares_memory(a, b):
    """Whether arrays ``a`` and ``b`` of one backend share memory: NumPy's and CuPy's ``shares_memory``;
    torch CPU tensors and array_api_strict arrays through their DLPack views on the host."""
    if isinstance(a, numpy.ndarray):
        return numpy.shares_memory(a, b)
    if type(a).__module__.split(".")[0] == "cupy":
        return bool(sys.modules["cupy"].shares_memory(a, b))
    return numpy.shares_memory(numpy.from_dlpack(a), numpy.from_dlpack(b))


# ------------------------------------------------------------------------------------ the matrices
KINDS = ("householder", "trapezoidal", "lapack", "from_dense", "svd", "eigh")


def _vectors(rng, shape, dtype=numpy.float64):
    v = rng.standard_normal(shape)
    if numpy.dtype(dtype).kind == "c":
        v = v + 1j * rng.standard_normal(shape)
    v[..., 0] += numpy.where(v[..., 0].real >= 0, 1.0, -1.0)  # no row near zero
    return v.astype(dtype)


def _matrix(kind, rng, d, n, batch, dtype, algorithm, xp):
    """``(matrix, dense float64 (complex128) reference, {name: caller's array}, {name: NumPy array})`` for
    one kind of matrix, built from ``xp`` arrays made from the NumPy ones."""
    matrix, ref, host = _host_matrix(kind, rng, d, n, batch, dtype, algorithm)
    params = {k: xp.asarray(v) for k, v in host.items()}
    return (matrix if xp is numpy else _rebuild(kind, params, algorithm)), ref, (host if xp is numpy else params), host


def _host_matrix(kind, rng, d, n, batch, dtype, algorithm):
    """``(matrix, dense float64 (complex128) reference, {name: caller's array})`` on NumPy."""
    real = numpy.finfo(dtype).dtype  # the real dtype of the same precision
    if kind in ("householder", "trapezoidal"):
        v = _vectors(rng, batch + (n, d), dtype)
        if kind == "trapezoidal":
            v = numpy.triu(v)
            idx = numpy.arange(n)
            v[..., idx, idx] += numpy.where(v[..., idx, idx].real >= 0, 1.0, -1.0)
        return ch.HouseholderProduct(v, algorithm=algorithm), _householder_dense(v), {"vectors": v}
    if kind == "lapack":
        raw = _vectors(rng, batch + (d, d), numpy.result_type(dtype, numpy.float64))
        a = numpy.empty_like(raw)
        tau = numpy.empty(batch + (d,), dtype=raw.dtype)
        for index in numpy.ndindex(*batch):
            (a[index], tau[index]), _ = scipy.linalg.qr(raw[index], mode="raw")
        k = rng.integers(1, d + 1)
        a, tau = a.astype(dtype), tau[..., :k].astype(dtype)
        return (
            ch.HouseholderProduct.from_lapack(a, tau, algorithm=algorithm),
            _lapack_dense(a, tau),
            {"a": a, "tau": tau},
        )
    if kind == "from_dense":
        q = numpy.linalg.qr(_vectors(rng, batch + (d, d), numpy.result_type(dtype, numpy.float64)))[0].astype(dtype)
        return ch.HouseholderProduct.from_dense(q, algorithm=algorithm), _as_dense(q), {"Q": q}
    u = _vectors(rng, batch + (n, d), dtype)
    if kind == "svd":
        v = _vectors(rng, batch + (n, d), dtype)
        r = int(rng.integers(1, n + 1))
        s = (rng.uniform(0.5, 2, batch + (r,)) * rng.choice([-1, 1], batch + (r,))).astype(real)
        ud, vd = _householder_dense(u), _householder_dense(v)
        ref = (ud[..., :, :r] * _as_dense(s)[..., None, :]) @ _adjoint(vd[..., :, :r])
        return ch.SVDMatrix(u, s, v), ref, {"U": u, "s": s, "V": v}
    w = rng.uniform(0.5, 2, batch + (d,)).astype(real)
    ud = _householder_dense(u)
    ref = (ud * _as_dense(w)[..., None, :]) @ _adjoint(ud)
    return ch.EighMatrix(u, w), ref, {"U": u, "w": w}


def _layout(rng, x, order, xp=numpy):
    """NumPy ``x`` as an ``xp`` array in a memory order: C, Fortran, a strided slice of a larger array,
    or reversed strides (NumPy and CuPy only: torch has no negative strides)."""
    if not is_native(xp):
        if order == "F" and x.ndim > 1:
            return xp.asarray(numpy.swapaxes(x, -1, -2)).mT
        if order == "strided":
            big = numpy.zeros(x.shape[:-1] + (2 * x.shape[-1] + 1,), dtype=x.dtype)
            big[..., 1::2] = x
            return xp.asarray(big)[..., 1::2]
        return xp.asarray(x)
    x = xp.asarray(x)
    if order == "F":
        return xp.asfortranarray(x)
    if order == "strided":
        big = xp.zeros(x.shape[:-1] + (2 * x.shape[-1] + 1,), dtype=x.dtype)
        big[..., 1::2] = x
        return big[..., 1::2]
    if order == "reversed":
        return xp.ascontiguousarray(x[..., ::-1])[..., ::-1]
    return x


# ------------------------------------------------------------------------------------- bad inputs
BAD = {
    None: None,
    "nan in X": "X",
    "inf in X": "X",
    "X of the wrong size": "X",
    "float16 X": "X",
    "object X": "X",
    "X is None": "X",
    "X is a string": "X",
    "X is a scalar": "X",
    "batch of X does not broadcast": "X",
    "nan in the parameters": "param",
    "a zero vector": "vectors",
    "nan in dout": "dout",
    "dout of the wrong shape": "dout",
}
"""Each bad input and the argument its error must name (``param``: the parameter that was spoiled)."""


def _check_error(exc, name):
    """A cuhouse error of the allowed types whose message names ``name``; the count's key."""
    where = traceback.extract_tb(exc.__traceback__)[-1].filename
    clear = (
        isinstance(exc, (TypeError, ValueError, MemoryError))
        and os.path.dirname(os.path.abspath(where)).startswith(PACKAGE)
        and re.search(r"\b{}\b".format(re.escape(name)), str(exc)) is not None
    )
    if not clear:
        OUTCOMES["unclear error"] += 1
        raise AssertionError("unclear error for a bad {}: {!r} raised at {}".format(name, exc, where)) from exc
    return "raised {} naming {}".format(type(exc).__name__, name)


@st.composite
def api_cases(draw, xp=numpy, complex_=True):
    """One call of the API fuzz on ``xp`` (``complex_``: whether it takes complex data)."""
    native = is_native(xp)
    complex_dtypes = [numpy.complex64, numpy.complex128] if complex_ else []
    bad = [b for b in list(BAD)[1:] if native or b != "object X"]
    if not native and backend_name(xp) != "torch":
        bad.remove("float16 X")  # array_api_strict has no float16
    return dict(
        kind=draw(st.sampled_from(KINDS)),
        dtype=draw(st.sampled_from([numpy.float32, numpy.float64] + complex_dtypes)),
        d=draw(st.integers(1, 6)),
        batch=draw(st.sampled_from([(), (), (2,), (1,), (2, 1)])),
        x_batch=draw(st.sampled_from([(), (), (3,), (1, 2), (2, 1)])),
        m=draw(st.integers(0, 3)),
        vector=draw(st.booleans()),
        x_dtype=draw(st.sampled_from(["float32", "float64", "int64", "bool"] + ["complex64"] * complex_)),
        order=draw(st.sampled_from(["C", "F", "strided"] + ["reversed"] * native)),
        operation=draw(st.sampled_from(["A @ X", "X @ A", "A.T @ X", "vjp", "todense", "logdet", "solve"])),
        algorithm=draw(st.sampled_from(["auto", *algorithm_names(xp)])),
        bad=draw(st.sampled_from([None] * len(bad) + bad)),  # about half the calls valid
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def _orient(x, operation):
    """X for the operation: ``X @ A`` takes rows of length d, the others columns."""
    return numpy.swapaxes(x, -1, -2) if operation == "X @ A" and x.ndim > 1 else x


X_OPERATIONS = ("A @ X", "X @ A", "A.T @ X", "vjp", "solve")


def _spoil(bad, case, rng, x, params):
    """Apply the bad input ``bad`` to the column-form ``x`` (returned) or to one of ``params`` (in
    place). Returns ``(x, name)``: the argument the error must name, ``None`` when the call is valid
    after all (the bad input does not apply to this operation or shape)."""
    spectral_solve = case["operation"] == "solve" and case["kind"] in ("svd", "eigh")
    name = "B" if spectral_solve and BAD[bad] == "X" else BAD[bad]
    uses_x = case["operation"] in X_OPERATIONS
    if name in ("X", "B") and not uses_x or name == "dout" and case["operation"] != "vjp":
        return x, None
    if bad == "nan in dout" and not case["vector"] and case["m"] == 0:
        return x, None  # an empty cotangent holds no NaN
    if bad in ("nan in X", "inf in X"):
        if x.size == 0:
            return x, None
        x = x.astype(numpy.complex128 if x.dtype.kind == "c" else numpy.float64)
        x.flat[rng.integers(x.size)] = numpy.nan if bad == "nan in X" else numpy.inf
    elif bad == "X of the wrong size":
        x = numpy.zeros(x.shape[:-2] + (x.shape[-2] + 1,) + x.shape[-1:]) if x.ndim > 1 else numpy.zeros(x.size + 1)
    elif bad == "float16 X":
        x = x.real.astype(numpy.float16)
    elif bad == "object X":
        x = x.astype(object)
    elif bad == "X is None":
        x = None
    elif bad == "X is a string":
        x = "X"
    elif bad == "X is a scalar":
        x = numpy.float64(1.0)
    elif bad == "batch of X does not broadcast":
        if case["batch"] in ((), (1,)) or x.ndim == 1:
            return x, None
        x = numpy.zeros((3, 3) + x.shape[-2:])
    elif bad == "nan in the parameters":
        name = sorted(k for k in params if k != "tau")[rng.integers(len(params) - ("tau" in params))]
        target = params[name]
        if name == "a":  # only the reflectors below the diagonal are read
            if target.shape[-2] < 2:
                return x, None
            target[..., -1, 0] = numpy.nan
        else:
            target.flat[rng.integers(target.size)] = numpy.nan
    elif bad == "a zero vector":
        if "vectors" not in params:
            return x, None
        params["vectors"][..., -1, :] = 0
    return x, name


def test_api_fuzz(any_xp):

    @settings(FUZZ, max_examples=examples(any_xp, 2000))
    @given(api_cases(any_xp))
    def check(case):
        _api_call(case, any_xp)

    check()


def _api_call(case, xp):
    rng = numpy.random.default_rng(case["seed"])
    d, dtype, kind, operation, bad = case["d"], numpy.dtype(case["dtype"]), case["kind"], case["operation"], case["bad"]
    n = d if kind in ("svd", "eigh") else int(rng.integers(1, d + 1))
    matrix, ref, params, host = _matrix(
        kind, numpy.random.default_rng(case["seed"] + 1), d, n, case["batch"], dtype, case["algorithm"], xp
    )
    x = rng.standard_normal(case["x_batch"] + (d, case["m"]) if not case["vector"] else (d,))
    x = x.astype(case["x_dtype"]) if case["x_dtype"] != "bool" else x > 0
    if x.dtype.kind == "c":
        x += 1j * rng.standard_normal(x.shape).astype(x.dtype)
    expect = None
    if bad in ("nan in the parameters", "a zero vector"):
        _, expect = _spoil(bad, case, rng, x, host)
        if expect is not None:  # the constructor must refuse the spoiled parameters
            spoiled = host if xp is numpy else {k: xp.asarray(v) for k, v in host.items()}
            snapshot = {k: to_numpy(v).copy() for k, v in spoiled.items()}
            OUTCOMES["calls"] += 1
            with pytest.raises(Exception) as info:
                _rebuild(kind, spoiled, case["algorithm"])
            OUTCOMES[_check_error(info.value, expect)] += 1
            for k, v in spoiled.items():
                numpy.testing.assert_array_equal(to_numpy(v), snapshot[k])
            return
    elif bad is not None:
        x, expect = _spoil(bad, case, rng, x, host)
    # an X whose batch does not broadcast is refused before a bad dout is ever seen
    if isinstance(x, numpy.ndarray) and x.ndim > 1 and operation in X_OPERATIONS and expect in (None, "dout"):
        try:
            numpy.broadcast_shapes(matrix.shape[:-2], x.shape[:-2])
        except ValueError:
            expect = "B" if operation == "solve" and kind in ("svd", "eigh") else "X"
    x_is_array = isinstance(x, numpy.ndarray)
    if x_is_array and x.dtype != object:
        x = _layout(rng, _orient(x, operation), case["order"], xp)
    inputs = dict(params, X=x) if x_is_array else dict(params)
    snapshot = {k: to_numpy(v).copy() for k, v in inputs.items()}
    OUTCOMES["calls"] += 1
    try:
        results, wants, sources = _run(matrix, ref, x, case, rng, bad if expect == "dout" else None, xp)
    except Exception as exc:
        OUTCOMES[_valid_refusal(exc, matrix, operation) if expect is None else _check_error(exc, expect)] += 1
    else:
        if expect is not None:
            OUTCOMES["silently wrong"] += 1
            raise AssertionError("a bad input ({}) was accepted".format(bad))
        _compare(
            results,
            wants,
            [matrix.dtype, x.dtype] if operation in X_OPERATIONS else [matrix.dtype],
            case,
        )
        for r in results:
            for name, source in sources.items():
                if source is not None and _shares_memory(r, source):
                    OUTCOMES["shared memory"] += 1
                    raise AssertionError("a result shares memory with {}".format(name))
        OUTCOMES["matched the dense reference"] += 1
    finally:
        for k, v in inputs.items():
            snap = snapshot[k]
            if not numpy.array_equal(to_numpy(v), snap, equal_nan=snap.dtype.kind in "fc"):
                OUTCOMES["modified an input"] += 1
                raise AssertionError("the caller's {} was modified".format(k))


def _rebuild(kind, params, algorithm):
    if kind in ("householder", "trapezoidal"):
        return ch.HouseholderProduct(params["vectors"], algorithm=algorithm)
    if kind == "lapack":
        return ch.HouseholderProduct.from_lapack(params["a"], params["tau"], algorithm=algorithm)
    if kind == "from_dense":
        return ch.HouseholderProduct.from_dense(params["Q"], algorithm=algorithm)
    if kind == "svd":
        return ch.SVDMatrix(params["U"], params["s"], params["V"])
    return ch.EighMatrix(params["U"], params["w"])


def _valid_refusal(exc, matrix, operation):
    """A valid call may be refused only where the API says so: solve() of a rank-deficient W (the
    message says so). Anything else is a failure."""
    documented = (
        operation == "solve"
        and isinstance(matrix, ch.SVDMatrix)
        and matrix.rank < matrix.shape[-1]
        and isinstance(exc, ValueError)
        and "rank" in str(exc)
    )
    if not documented:
        raise AssertionError("a valid call raised {!r}".format(exc)) from exc
    return "raised ValueError (documented: solve of a rank-deficient W)"


def _run(matrix, ref, x, case, rng, bad_dout, xp=numpy):
    """``(results, references, sources)``: the call's arrays, their float64 references (``None``: only
    checked finite), and the inputs that results must not share memory with."""
    operation = case["operation"]
    is_array = hasattr(x, "ndim") and not isinstance(x, numpy.generic)
    sources = {"X": x if is_array and dtype_name(x) != "object" else None}
    sources.update({"param{}".format(i): p for i, p in enumerate(matrix.params)})
    xd = _as_dense(to_numpy(x)) if sources["X"] is not None else None
    transposed = numpy.swapaxes(ref, -1, -2)
    if operation == "A @ X":
        return [matrix @ x], [ref @ xd], sources
    if operation == "X @ A":
        return [rmatmul(x, matrix) if is_array else x @ matrix], [xd @ ref], sources
    if operation == "A.T @ X":
        return [matrix.T @ x], [transposed @ xd], sources
    if operation == "todense":
        return [matrix.todense()], [ref], sources
    if operation == "logdet":
        return [matrix.logdet()], [_logdet(matrix, ref)], sources
    if operation == "solve":
        if isinstance(matrix, ch.HouseholderProduct):
            return [matrix.inv() @ x], [_adjoint(ref) @ xd], sources
        return [matrix.solve(x)], [numpy.linalg.solve(ref, xd) if xd.ndim > 1 else _solve_vector(ref, xd)], sources
    out, back = ch.vjp(ch.matmul, matrix, x)
    shape = tuple(out.shape)
    dout = rng.standard_normal(shape)
    if numpy.dtype(dtype_name(out)).kind == "c":
        dout = dout + 1j * rng.standard_normal(shape)
    if bad_dout == "nan in dout":
        dout.flat[rng.integers(dout.size)] = numpy.nan
    elif bad_dout == "dout of the wrong shape":
        dout = numpy.zeros(shape + (1,))
    snapshot = dout.copy()
    dout = xp.asarray(dout)
    sources["dout"] = dout
    try:
        grads, dx = back(dout)
    finally:
        numpy.testing.assert_array_equal(to_numpy(dout), snapshot)
    # torch's convention: dX = A^H dout, its real part for a real X
    dout = snapshot
    if x.ndim == 1:
        want_dx = _reduce((_adjoint(ref) @ dout[..., None])[..., 0], x.shape)
    else:
        want_dx = _reduce(_adjoint(ref) @ dout, x.shape)
    if numpy.dtype(dtype_name(x)).kind != "c":
        want_dx = want_dx.real
    return [out, dx] + list(grads), [ref @ xd, want_dx] + [None] * len(grads), sources


def _solve_vector(ref, b):
    return numpy.linalg.solve(ref, numpy.broadcast_to(b, ref.shape[:-1])[..., None])[..., 0]


def _logdet(matrix, ref):
    """log|det| from the spectrum (0 for an orthogonal matrix, -inf for a rank-deficient W)."""
    if isinstance(matrix, ch.HouseholderProduct):
        return numpy.zeros(ref.shape[:-2])
    values = to_numpy(matrix.s if isinstance(matrix, ch.SVDMatrix) else matrix.w)
    if values.shape[-1] < ref.shape[-1]:
        return numpy.full(ref.shape[:-2], -numpy.inf)
    return numpy.broadcast_to(numpy.log(numpy.abs(_as_dense(values))).sum(axis=-1), ref.shape[:-2])


def _reduce(g, shape):
    extra = g.ndim - len(shape)
    if extra:
        g = g.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, (gs, s) in enumerate(zip(g.shape, shape)) if s == 1 and gs != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


def _compare(results, wants, dtypes, case):
    """Each result against its float64 reference, relative to the reference's size (a gradient w.r.t.
    the parameters, ``None``, is checked by the algebra fuzz: here it must be finite)."""
    for got, want in zip(results, wants):
        got = to_numpy(got)
        # the least precise of the matrix, X and the result (a float32 from_dense is Q to float32 accuracy)
        tol = max(TOL[numpy.finfo(ch._validate.float_dtype(t)).dtype] for t in dtypes + [got.dtype])
        if want is None:
            if not numpy.isfinite(got).all():
                OUTCOMES["silently wrong"] += 1
                raise AssertionError("a non-finite gradient")
            continue
        assert got.shape == want.shape, (got.shape, want.shape)
        if not want.size:
            continue
        finite = numpy.isfinite(want)
        same_infinities = numpy.array_equal(got[~finite], want[~finite])
        scale = max(1.0, float(numpy.abs(want[finite]).max())) if finite.any() else 1.0
        error = float(numpy.abs(got[finite] - want[finite]).max()) if finite.any() else 0.0
        if not (same_infinities and error <= 10 * tol * case["d"] * scale):
            OUTCOMES["silently wrong"] += 1
            raise AssertionError("result differs from the dense reference by {}".format(error))


# ------------------------------------------------------------------------------------- algebra fuzz
LEAVES = ("H", "L", "W", "E")


def _leaf_params(rng, d):
    """Float64 parameters of four square leaves: vectors, a geqrf array, an SVD and an eigendecomposition."""
    (a, _), _ = scipy.linalg.qr(rng.standard_normal((d, d)), mode="raw")
    return {
        "H": [_vectors(rng, (d, d))],
        "L": [numpy.ascontiguousarray(a)],
        "W": [_vectors(rng, (d, d)), rng.uniform(0.5, 2, d) * rng.choice([-1, 1], d), _vectors(rng, (d, d))],
        "E": [_vectors(rng, (d, d)), rng.uniform(0.5, 2, d)],
    }


def _implied_tau(a, xp=numpy):
    """LAPACK's tau for the reflectors of ``a`` (an ``xp`` array): 2 / (1 + ||a[i+1:, i]||^2)."""
    below = a * xp.asarray(numpy.tri(*a.shape, -1))
    return 2 / (1 + xp.sum(below * below, axis=0))


def _leaves(params, xp=numpy):
    """Fresh leaf matrices from ``params`` (``xp`` arrays, the arrays themselves: gradients reach them)."""
    return {
        "H": ch.HouseholderProduct(*params["H"]),
        "L": ch.HouseholderProduct.from_lapack(params["L"][0], _implied_tau(params["L"][0], xp)),
        "W": ch.SVDMatrix(*params["W"]),
        "E": ch.EighMatrix(*params["E"]),
    }


def _dense_leaves(params):
    u, s, v = params["W"]
    e_u, w = params["E"]
    a = params["L"][0]
    return {
        "H": dense_reference(params["H"][0]),
        "L": _lapack_dense(a, _implied_tau(a)),
        "W": (dense_reference(u) * s) @ dense_reference(v).T,
        "E": (dense_reference(e_u) * w) @ dense_reference(e_u).T,
    }


def _evaluate(tree, leaves, matmul, transpose, inverse):
    """A tree of ``("@", left, right)``, ``("T", child)``, ``("inv", child)`` and leaf names."""
    if isinstance(tree, str):
        return leaves[tree]
    op, *children = tree
    values = [_evaluate(c, leaves, matmul, transpose, inverse) for c in children]
    return matmul(*values) if op == "@" else transpose(values[0]) if op == "T" else inverse(values[0])


def _cuhouse(tree, params, xp=numpy):
    return _evaluate(tree, _leaves(params, xp), lambda a, b: a @ b, lambda a: a.T, lambda a: a.inv())


def _dense(tree, params):
    return _evaluate(tree, _dense_leaves(params), lambda a, b: a @ b, lambda a: a.T, numpy.linalg.inv)


TREES = st.recursive(
    st.sampled_from(LEAVES),
    lambda children: st.one_of(
        st.tuples(st.just("@"), children, children),
        st.tuples(st.just("T"), children),
        st.tuples(st.just("inv"), children),
    ),
    max_leaves=4,
)


def _flat(params):
    return {(k, i): a for k, arrays in params.items() for i, a in enumerate(arrays)}


def _count_match(error, tol, what):
    OUTCOMES["calls"] += 1
    if not error <= tol:
        OUTCOMES["silently wrong"] += 1
        raise AssertionError("{} differs from the dense float64 reference by {:.3g}".format(what, error))
    OUTCOMES["matched the dense reference"] += 1


def test_algebra_fuzz(any_xp):
    @settings(FUZZ, max_examples=examples(any_xp, 300))
    @given(TREES, st.integers(2, 5), st.integers(0, 2**32 - 1))
    def check(tree, d, seed):
        _algebra_case(tree, d, seed, any_xp)

    check()


def _algebra_case(tree, d, seed, xp):
    rng = numpy.random.default_rng(seed)
    params = _leaf_params(rng, d)
    moved = {k: [xp.asarray(arr) for arr in arrays] for k, arrays in params.items()}
    a, dense = _cuhouse(tree, moved, xp), _dense(tree, params)
    size = max(1.0, float(numpy.abs(dense).max()))
    x = rng.standard_normal((d, 3))
    _count_match(numpy.abs(to_numpy(a @ xp.asarray(x)) - dense @ x).max() / size, 1e-11, "A @ X")
    _count_match(numpy.abs(to_numpy(rmatmul(xp.asarray(x.T), a)) - x.T @ dense).max() / size, 1e-11, "X @ A")
    _count_match(numpy.abs(to_numpy(a.todense()) - dense).max() / size, 1e-11, "todense()")
    logdet = numpy.linalg.slogdet(dense)[1]
    _count_match(abs(float(a.logdet()) - logdet), 1e-10 * max(1, abs(logdet)), "logdet()")
    # gradients: <vjp(G), delta> against a central difference of <G, A(params + h delta) @ X>
    g = rng.standard_normal((d, 3))
    out, back = ch.vjp(ch.matmul, a, xp.asarray(x))
    grads, dx = back(xp.asarray(g))
    grads = [to_numpy(grad) for grad in grads]
    _count_match(numpy.abs(to_numpy(dx) - dense.T @ g).max() / size, 1e-11, "dX")
    flat = _flat(moved)
    by_identity = {id(arr): key for key, arr in flat.items()}
    assert len(grads) == len(a.params) and all(id(p) in by_identity for p in a.params)
    delta = {key: rng.standard_normal(tuple(arr.shape)) for key, arr in flat.items()}
    predicted = sum(float((grad * delta[by_identity[id(p)]]).sum()) for grad, p in zip(grads, a.params))
    h = 1e-6

    def value(sign):
        moved = {k: [arr + sign * h * delta[(k, i)] for i, arr in enumerate(arrays)] for k, arrays in params.items()}
        return float((g * (_dense(tree, moved) @ x)).sum())

    used = {by_identity[id(p)] for p in a.params}
    delta.update({key: numpy.zeros(tuple(arr.shape)) for key, arr in flat.items() if key not in used})
    measured = (value(1) - value(-1)) / (2 * h)
    _count_match(abs(predicted - measured), 1e-6 * max(1.0, abs(measured), size * d), "the gradient w.r.t. the leaves")
    (dlog,) = ch.vjp(ch.logdet, a)[1](xp.asarray(numpy.ones(())))
    predicted = sum(float((to_numpy(grad) * delta[by_identity[id(p)]]).sum()) for grad, p in zip(dlog, a.params))
    measured = (
        numpy.linalg.slogdet(
            _dense(tree, {k: [arr + h * delta[(k, i)] for i, arr in enumerate(v)] for k, v in params.items()})
        )[1]
        - numpy.linalg.slogdet(
            _dense(tree, {k: [arr - h * delta[(k, i)] for i, arr in enumerate(v)] for k, v in params.items()})
        )[1]
    ) / (2 * h)
    _count_match(abs(predicted - measured), 1e-6 * max(1.0, abs(measured)), "the gradient of logdet")


# ------------------------------------------------------------------------ overflow and underflow sweep
def _exponent_range(dtype, d):
    """``(lowest, highest)`` exponents e for data of size 2^e in ``dtype``: the lowest keeps every
    entry (and every result) normal to full precision; the highest keeps norms of d entries finite."""
    info = numpy.finfo(dtype)
    return int(numpy.log2(info.tiny)) + info.nmant + 4, int(numpy.log2(info.max)) - int(numpy.ceil(numpy.log2(d))) - 4


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("layout", ["full", "trapezoidal", "lapack"])
@pytest.mark.parametrize("algorithm", ALGORITHM_CHOICES)
def test_overflow_underflow_sweep(any_xp, algorithm, layout, dtype):
    # H(2^u V) @ (2^s X) == 2^s H(V) @ X, and the gradients scale as 2^(s + t - u) (w.r.t. V) and 2^t
    # (w.r.t. X) for dout 2^t G: exact in exact arithmetic, so the scaled results must match the
    # unscaled ones to rounding, wherever the exact results are representable
    needs_algorithm(any_xp, algorithm)
    xp = any_xp
    d = 8
    rng = numpy.random.default_rng(10)
    lowest, highest = _exponent_range(dtype, d)
    v0 = numpy.triu(_vectors(rng, (d, d))) if layout == "trapezoidal" else _vectors(rng, (d, d))
    x0 = rng.standard_normal((d, 3))
    x0 /= numpy.abs(x0).max()
    x0[:, 1] = v0[0] / numpy.abs(v0[0]).max()  # a column along a row: the largest V X
    g0 = rng.standard_normal((d, 3))
    g0 /= numpy.abs(g0).max()

    def make(u):
        if layout == "lapack":
            (a, tau), _ = scipy.linalg.qr(v0.T, mode="raw")
            a, tau = xp.asarray(a.astype(dtype)), xp.asarray(tau.astype(dtype))
            return ch.HouseholderProduct.from_lapack(a, tau, algorithm=algorithm)
        return ch.HouseholderProduct(xp.asarray(numpy.ldexp(v0, u).astype(dtype)), algorithm=algorithm)

    def vjp(h, x, g):
        out, back = ch.vjp(ch.matmul, h, xp.asarray(x.astype(dtype)))
        (dv,), dx = back(xp.asarray(g.astype(dtype)))
        return to_numpy(out), to_numpy(dv), to_numpy(dx)

    base = make(0)
    out0, dv0, dx0 = vjp(base, x0, g0)
    reference = _lapack_dense(*scipy.linalg.qr(v0.T, mode="raw")[0]) if layout == "lapack" else dense_reference(v0)
    _count_match(numpy.abs(out0 - reference @ x0).max(), 10 * TOL[numpy.dtype(dtype)] * d, "the unscaled product")
    tol = 10 * TOL[numpy.dtype(dtype)] * d
    row_exponents = [0] if layout == "lapack" else numpy.linspace(lowest, highest - 4, 5).astype(int)
    for u in row_exponents:
        h = make(u)
        for s in numpy.linspace(lowest, highest, 6).astype(int):
            out = to_numpy(h @ xp.asarray(numpy.ldexp(x0, s).astype(dtype)))
            _count_match(numpy.abs(numpy.ldexp(out.astype(numpy.float64), -s) - out0).max(), tol, "2^-s H @ 2^s X")
            # the gradient w.r.t. V near the bottom, the middle and the top of the range
            for q in (lowest + 16, 0, highest - 16):
                t = q - s + u
                if not lowest <= t <= highest:
                    continue
                out, dv, dx = vjp(h, numpy.ldexp(x0, s), numpy.ldexp(g0, t))
                size = numpy.abs(dv0).max()
                error = numpy.abs(numpy.ldexp(dv.astype(numpy.float64), -q) - dv0).max() / size
                _count_match(error, tol, "the gradient w.r.t. V at scales 2^{}, 2^{}, 2^{}".format(u, s, t))
                error = numpy.abs(numpy.ldexp(dx.astype(numpy.float64), -t) - dx0).max()
                _count_match(error, tol, "the gradient w.r.t. X at scale 2^{}".format(t))
