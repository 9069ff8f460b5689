"""Never silently wrong (issue 17): each defect of the reliability review, as a test that failed before its fix."""

import gc
import pickle
import threading
import tracemalloc
import weakref

import numpy
import pytest
import scipy.linalg
import scipy.sparse
from helpers import backend_name, dense_reference, dtype_name, needs_algorithm, rmatmul, to_numpy

import cuhouse as ch
from cuhouse.householder import ALGORITHM_CHOICES


def _scaled_reference(v, x):
    """float64 ``H @ X`` with each column of X scaled by a power of two first (exact) and back after."""
    x = numpy.asarray(x, dtype=numpy.float64)
    largest = numpy.abs(x).max(axis=-2, keepdims=True)
    _, e = numpy.frexp(numpy.where(largest > 0, largest, 1))
    return numpy.ldexp(dense_reference(v) @ numpy.ldexp(x, -e), e)


def _column_error(y, x, ref):
    """max |Y - ref| per column over ||x_j||, computed without overflow."""
    x = numpy.asarray(x, dtype=numpy.float64)
    largest = numpy.abs(x).max(axis=-2)
    _, e = numpy.frexp(numpy.where(largest > 0, largest, 1))
    diff = numpy.ldexp(numpy.asarray(y, dtype=numpy.float64), -e[..., None, :]) - numpy.ldexp(ref, -e[..., None, :])
    return (numpy.abs(diff).max(axis=-2) / numpy.linalg.norm(numpy.ldexp(x, -e[..., None, :]), axis=-2)).max()


# --------------------------------------------------------------- defect 2: the default algorithm overflowed
@pytest.mark.parametrize("algorithm", ALGORITHM_CHOICES)
def test_float32_large_rows_times_large_columns_is_finite_and_right(any_xp, algorithm):
    # the review's reproducer: "auto" and "cwy" gave 256/256 non-finite entries (V X overflowed)
    needs_algorithm(any_xp, algorithm)
    rng = numpy.random.default_rng(0)
    v = (rng.standard_normal((64, 64)) * 1e14).astype(numpy.float32)
    x = (rng.standard_normal((64, 4)) * 1e24).astype(numpy.float32)
    # a RuntimeWarning is an error in this suite
    y = to_numpy(ch.HouseholderProduct(any_xp.asarray(v), algorithm=algorithm) @ any_xp.asarray(x))
    assert numpy.isfinite(y).all()
    assert _column_error(y, x, _scaled_reference(v, x)) < 64 * 2e-6


@pytest.mark.parametrize("algorithm", ALGORITHM_CHOICES)
def test_float64_columns_near_overflow_are_finite_and_right(any_xp, algorithm):
    # d = 256, max |X| = 1e307 with columns along rows of V: "cwy" gave NaN columns
    needs_algorithm(any_xp, algorithm)
    rng = numpy.random.default_rng(1)
    v = rng.standard_normal((256, 256))
    x = numpy.stack([v[0], v[5], rng.standard_normal(256), v[200]], axis=1)
    x *= 1e307 / numpy.abs(x).max(axis=0)
    y = to_numpy(ch.HouseholderProduct(any_xp.asarray(v), algorithm=algorithm) @ any_xp.asarray(x))
    assert numpy.isfinite(y).all()
    assert _column_error(y, x, _scaled_reference(v, x)) < 1e-13


@pytest.mark.parametrize("algorithm", ALGORITHM_CHOICES)
def test_tiny_columns_are_not_lost_to_underflow(any_xp, algorithm):
    # rows of norm 2^-300 (inside their safe range) times columns of size 2^-1000: V X underflowed to
    # zero and H @ X came back as X, silently (relative error about 1)
    needs_algorithm(any_xp, algorithm)
    rng = numpy.random.default_rng(2)
    v = numpy.ldexp(rng.standard_normal((8, 8)), -300)
    x = numpy.ldexp(numpy.stack([rng.standard_normal(8), v[0] * 2.0**300], axis=1), -1000)
    y = to_numpy(ch.HouseholderProduct(any_xp.asarray(v), algorithm=algorithm) @ any_xp.asarray(x))
    assert _column_error(y, x, _scaled_reference(v, x)) < 1e-13


@pytest.mark.parametrize("algorithm", ALGORITHM_CHOICES)
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_gradients_at_extreme_scales_equal_the_scaled_gradients(any_xp, algorithm, dtype):
    # scaling V by 2^u, X by 2^s and dout by 2^t scales dV by 2^(s + t - u) and dX by 2^t, exactly in
    # exact arithmetic; before the fix the gradient underflowed to zero (or lost its digits) at such scales
    needs_algorithm(any_xp, algorithm)
    rng = numpy.random.default_rng(3)
    v0, x0, g0 = (rng.standard_normal(shape) for shape in ((16, 16), (16, 3), (16, 3)))

    def vjp(v, x, g):
        h = ch.HouseholderProduct(any_xp.asarray(v.astype(dtype)), algorithm=algorithm)
        out, back = ch.vjp(ch.matmul, h, any_xp.asarray(x.astype(dtype)))
        (dv,), dx = back(any_xp.asarray(g.astype(dtype)))
        return to_numpy(out), to_numpy(dv), to_numpy(dx)

    out0, dv0, dx0 = vjp(v0, x0, g0)
    low = {numpy.float32: (-86, -73, -73), numpy.float64: (-490, -611, -611)}[dtype]
    high = {numpy.float32: (44, 100, -25), numpy.float64: (400, 1000, -300)}[dtype]
    tol = {numpy.float32: 5e-5, numpy.float64: 1e-12}[dtype]
    for u, s, t in (low, high):
        out, dv, dx = vjp(numpy.ldexp(v0, u), numpy.ldexp(x0, s), numpy.ldexp(g0, t))
        for got, want, e in ((out, out0, s), (dv, dv0, s + t - u), (dx, dx0, t)):
            scaled_back = numpy.ldexp(got.astype(numpy.float64), -e)
            assert numpy.abs(scaled_back - want).max() <= tol * numpy.abs(want).max(), (u, s, t)


# ------------------------------------------------- defect 1: from_lapack dropped a tau batch that a lacked
def _geqrf(rng, shape):
    (a, tau), _ = scipy.linalg.qr(rng.standard_normal(shape), mode="raw")
    return numpy.ascontiguousarray(a), tau


@pytest.mark.parametrize("algorithm", ALGORITHM_CHOICES)
@pytest.mark.parametrize("zero", [False, True], ids=["same-tau", "tau-zero-in-one-entry"])
def test_from_lapack_broadcasts_a_tau_batch_that_a_lacks(any_xp, algorithm, zero):
    needs_algorithm(any_xp, algorithm)
    rng = numpy.random.default_rng(4)
    a, tau = _geqrf(rng, (4, 3))
    taus = numpy.stack([tau, numpy.where(numpy.arange(3) == 1, 0, tau) if zero else tau])
    a_xp, x_np = any_xp.asarray(a), rng.standard_normal((4, 2))
    x, x_rows = any_xp.asarray(x_np), any_xp.asarray(x_np.T)
    q = ch.HouseholderProduct.from_lapack(a_xp, any_xp.asarray(taus), algorithm=algorithm)
    each = [ch.HouseholderProduct.from_lapack(a_xp, any_xp.asarray(t), algorithm=algorithm) for t in taus]

    def stack(results):
        return numpy.stack([to_numpy(r) for r in results])

    assert q.shape == (2, 4, 4)
    numpy.testing.assert_allclose(to_numpy(q.todense()), stack(h.todense() for h in each), atol=1e-14)
    numpy.testing.assert_allclose(to_numpy(q @ x), stack(h @ x for h in each), atol=1e-14)
    numpy.testing.assert_allclose(to_numpy(rmatmul(x_rows, q)), stack(rmatmul(x_rows, h) for h in each), atol=1e-14)
    numpy.testing.assert_array_equal(to_numpy(q.det()), stack(h.det() for h in each))
    out, back = ch.vjp(ch.matmul, q, x)
    g = rng.standard_normal(tuple(out.shape))
    (da,), dx = back(any_xp.asarray(g))
    per_entry = [ch.vjp(ch.matmul, h, x)[1](any_xp.asarray(gi)) for h, gi in zip(each, g)]
    assert tuple(da.shape) == a.shape  # the gradient w.r.t. the caller's a, summed over the batch tau added
    numpy.testing.assert_allclose(to_numpy(da), sum(to_numpy(p[0][0]) for p in per_entry), atol=1e-13)
    numpy.testing.assert_allclose(to_numpy(dx), sum(to_numpy(p[1]) for p in per_entry), atol=1e-13)


def test_from_lapack_batch_dimensions_of_a_and_tau_broadcast_as_in_matmul(any_xp):
    rng = numpy.random.default_rng(5)
    a0, tau0 = _geqrf(rng, (5, 3))
    a1 = numpy.where(numpy.tri(5, 3, -1, dtype=bool), -a0, a0)  # other reflectors of the same norms: same tau
    a = numpy.stack([a0, a1])[:, None]  # (2, 1, 5, 3)
    tau = numpy.stack([tau0, numpy.where(numpy.arange(3) == 0, 0, tau0), numpy.zeros(3)])  # (3, 3)
    q = ch.HouseholderProduct.from_lapack(any_xp.asarray(a), any_xp.asarray(tau))
    assert q.shape == (2, 3, 5, 5)
    x = rng.standard_normal((5, 2))
    dense, product = to_numpy(q.todense()), to_numpy(q @ any_xp.asarray(x))
    for i in range(2):
        for j in range(3):
            want = to_numpy(
                ch.HouseholderProduct.from_lapack(any_xp.asarray(a[i, 0]), any_xp.asarray(tau[j])).todense()
            )
            numpy.testing.assert_allclose(dense[i, j], want, atol=1e-14)
            numpy.testing.assert_allclose(product[i, j], want @ x, atol=1e-14)


@pytest.mark.parametrize(
    "a_shape, tau_batch",
    [((4, 3), (2,)), ((300, 260), (2,)), ((2, 1, 5, 3), (3,))],
    ids=["2-D a", "2-D a, read in panels", "batch dimensions of both"],
)
def test_from_lapack_norms_agree_fresh_pickled_and_refreshed(a_shape, tau_batch):
    """The reflectors' norms a product keeps have the reflections' batch shape and the same bits
    whether read by ``from_lapack``, after pickling or after ``refresh()`` (one reader of the leaf)."""
    rng = numpy.random.default_rng(6)
    (a, tau), _ = scipy.linalg.qr(rng.standard_normal(a_shape[-2:]), mode="raw")  # a in LAPACK's order
    if len(a_shape) > 2:
        a = numpy.ascontiguousarray(numpy.broadcast_to(a, a_shape))
    q = ch.HouseholderProduct.from_lapack(a, numpy.broadcast_to(tau, tau_batch + tau.shape).copy())
    batch = numpy.broadcast_shapes(a_shape[:-2], tau_batch)
    fresh = q._core.norms
    assert fresh.shape == batch + tau.shape
    pickled = pickle.loads(pickle.dumps(q))._core.norms
    refreshed = q.refresh()._core.norms
    for norms in (pickled, refreshed):
        assert norms.shape == fresh.shape and norms.dtype == fresh.dtype
        numpy.testing.assert_array_equal(norms, fresh)


def _strided(values, step_rows, step_cols, xp):
    """``values`` in a strided view of a larger ``xp`` array (every ``step``-th row and column; neither C
    nor Fortran order when ``step_cols > 1``), in place updates seen as by the caller's own array."""
    rows, cols = values.shape
    view = xp.zeros((rows * step_rows, cols * step_cols), dtype=values.dtype)[::step_rows, ::step_cols]
    view[...] = xp.asarray(values)
    return view


@pytest.mark.parametrize("steps", [(1, 2), (2, 3), (2, 1)], ids=["strided columns", "strided both", "strided rows"])
@pytest.mark.parametrize("algorithm", ["auto", "cwy", "dense", "sequential", "fasth"])
@pytest.mark.parametrize("lapack", [False, True], ids=["V", "from_lapack"])
def test_a_strided_leaf_gives_the_same_bits_fresh_pickled_and_refreshed(xp, steps, algorithm, lapack):
    """A leaf in a strided view (pickling stores it C-contiguous) gives products with the bits of a
    C-contiguous copy of it, fresh, pickled and after an in-place update and ``refresh()`` (before: the
    algorithms summed the strided operand in another order, up to 2.4e-15 apart in float64)."""
    rng = numpy.random.default_rng(22)
    d, n = 24, 9
    if lapack:
        (a, _), _ = scipy.linalg.qr(rng.standard_normal((d, d)), mode="raw")
        leaf = _strided(a, *steps, xp)

        def make(leaf):  # tau as implied by the reflectors stored in leaf
            tau = 2 / (1 + (xp.tril(leaf, -1) ** 2).sum(axis=0))
            return ch.HouseholderProduct.from_lapack(leaf, tau, algorithm=algorithm)
    else:
        leaf = _strided(rng.standard_normal((n, d)), *steps, xp)
        make = lambda leaf: ch.HouseholderProduct(leaf, algorithm=algorithm)  # noqa: E731
    x = xp.asarray(rng.standard_normal((d, 5)))
    h = make(leaf)
    for view in (h, pickle.loads(pickle.dumps(h))):
        assert view.params[0].shape == leaf.shape
        numpy.testing.assert_array_equal(to_numpy(view @ x), to_numpy(make(xp.ascontiguousarray(leaf)) @ x))
        numpy.testing.assert_array_equal(to_numpy(x.T @ view), to_numpy(x.T @ make(xp.ascontiguousarray(leaf))))
    leaf[3:, 2] *= 1.5  # in place (a reflector of a geqrf leaf): the copy is made anew after refresh()
    numpy.testing.assert_array_equal(to_numpy(h.refresh() @ x), to_numpy(make(xp.ascontiguousarray(leaf)) @ x))
    assert h.params[0] is leaf


# ----------------------------------------------- defect 3: SVDMatrix and EighMatrix referred to themselves
def _every_matrix_type(rng, xp):
    d = 5

    def normal(*shape):
        return xp.asarray(rng.standard_normal(shape))

    def uniform(n):
        return xp.asarray(rng.uniform(1, 2, n))

    a, tau = (xp.asarray(t) for t in _geqrf(rng, (d, d)))
    h = ch.HouseholderProduct(normal(3, d))
    w = ch.SVDMatrix(normal(3, d), uniform(3), normal(3, d))
    e = ch.EighMatrix(normal(d, d), uniform(d))
    complex_u = rng.standard_normal((d, d)) + 1j * rng.standard_normal((d, d))
    return {
        "HouseholderProduct": lambda: ch.HouseholderProduct(normal(3, d)),
        "from_lapack": lambda: ch.HouseholderProduct.from_lapack(a, tau),
        "from_dense": lambda: ch.HouseholderProduct.from_dense(
            xp.asarray(scipy.linalg.qr(rng.standard_normal((d, d)))[0])
        ),
        "H1 @ H2": lambda: h @ ch.HouseholderProduct(normal(2, d)),
        "SVDMatrix": lambda: ch.SVDMatrix(normal(3, d), uniform(3), normal(3, d)),
        "SVDMatrix.from_dense": lambda: ch.SVDMatrix.from_dense(normal(d, d)),
        "SVDMatrix.inv().T": lambda: ch.SVDMatrix.from_dense(normal(d, d)).inv().T,
        "SVDMatrix.pinv()": lambda: ch.SVDMatrix.from_dense(normal(d, d)).pinv(),
        "EighMatrix": lambda: ch.EighMatrix(normal(d, d), uniform(d)),
        "EighMatrix.expm()": lambda: ch.EighMatrix(normal(d, d), uniform(d)).expm(),
        "complex EighMatrix": lambda: ch.EighMatrix(xp.asarray(complex_u), uniform(d)),
        "Product": lambda: w @ h @ e,
    }


@pytest.mark.parametrize("name", list(_every_matrix_type(numpy.random.default_rng(0), numpy)))
def test_every_matrix_type_is_freed_by_reference_counting_alone(any_xp, name):
    rng = numpy.random.default_rng(6)
    make = _every_matrix_type(rng, any_xp)[name]

    def use(matrix):
        x = any_xp.asarray(rng.standard_normal((matrix.shape[-1], 2)))
        matrix @ x  # fill the caches: block factors, norms, vectors
        out, back = ch.vjp(ch.matmul, matrix, x)
        back(any_xp.asarray(numpy.ones(tuple(out.shape), dtype=dtype_name(out))))

    use(make())  # warm-up: the library's one-off caches (torch's first call leaves a few hundred cycles)
    gc.freeze()  # what exists now is not examined again: a full collection takes 0.3 s with torch loaded
    gc.disable()
    try:
        matrix = make()
        use(matrix)
        refs = [weakref.ref(matrix)]
        refs += [weakref.ref(part) for part in (getattr(matrix, "U", None), getattr(matrix, "V", None)) if part]
        del matrix
        assert all(ref() is None for ref in refs), "a reference cycle keeps the matrix alive"
        assert _collect_cycles(any_xp) == 0
    finally:
        gc.enable()
        gc.unfreeze()


def _collect_cycles(xp):
    """A full collection: the number of objects in reference cycles it frees. On CuPy only the functions
    and objects of cuhouse's modules count: CuPy's CPU stand-in (tests/cuda_cpu) builds ctypes types and
    closures of its own in cycles on every call."""
    if backend_name(xp) != "cupy":
        return gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return sum(_of_cuhouse(o) for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def _of_cuhouse(obj):
    """Whether ``obj`` is a function or an instance of a class defined in cuhouse's modules."""
    module = obj.__module__ if callable(obj) and hasattr(obj, "__code__") else type(obj).__module__
    return isinstance(module, str) and module.split(".")[0] == "cuhouse"


# ----------------------------------------------------------- defect 4: a non-finite cotangent was accepted
@pytest.mark.parametrize("bad", [numpy.nan, numpy.inf])
def test_a_non_finite_cotangent_is_rejected_like_x(any_xp, bad):
    rng = numpy.random.default_rng(7)
    h = ch.HouseholderProduct(any_xp.asarray(rng.standard_normal((3, 5))))
    out, back = ch.vjp(ch.matmul, h, any_xp.asarray(rng.standard_normal((5, 2))))
    dout = numpy.ones(tuple(out.shape))
    dout[1, 1] = bad
    with pytest.raises(ValueError, match=r"dout must be finite; found NaN or Inf \(.*build it with check_finite=False"):
        back(any_xp.asarray(dout))
    w = ch.SVDMatrix.from_dense(any_xp.asarray(rng.standard_normal((4, 4))))
    value, back = ch.vjp(ch.logdet, w)
    with pytest.raises(ValueError, match=r"dvalue must be finite; found NaN or Inf"):
        back(any_xp.asarray(numpy.full(tuple(value.shape), bad)))


def test_check_finite_false_lets_a_non_finite_cotangent_through(any_xp):
    rng = numpy.random.default_rng(8)
    h = ch.HouseholderProduct(any_xp.asarray(rng.standard_normal((3, 5))), check_finite=False)
    out, back = ch.vjp(ch.matmul, h, any_xp.asarray(rng.standard_normal((5, 2))))
    (dv,), dx = back(any_xp.asarray(numpy.full(tuple(out.shape), numpy.nan)))
    assert numpy.isnan(to_numpy(dx)).all()


# ------------------------------------------------------ defect 5: mixed precision followed the spectrum
@pytest.mark.parametrize("make", ["eigh", "svd"])
def test_mixed_precision_results_follow_the_matrix_dtype(any_xp, make):
    rng = numpy.random.default_rng(9)
    u = any_xp.asarray(rng.standard_normal((4, 4)))
    values_host = rng.uniform(1, 2, 4).astype(numpy.float32)
    values, values64 = any_xp.asarray(values_host), any_xp.asarray(values_host.astype(numpy.float64))
    if make == "eigh":
        m, m64 = ch.EighMatrix(u, values), ch.EighMatrix(u, values64)
    else:
        v = any_xp.asarray(rng.standard_normal((4, 4)))
        m, m64 = ch.SVDMatrix(u, values, v), ch.SVDMatrix(u, values64, v)
    assert dtype_name(m) == "float64"
    for result in (m.norm(), m.norm("nuc"), m.norm(2), m.cond(), m.singular_values(), m.det(), m.logdet()):
        assert dtype_name(result) == "float64"
    dense = to_numpy(m64.todense())
    assert abs(float(m.det()) - numpy.linalg.det(dense)) <= 1e-14 * abs(numpy.linalg.det(dense))
    numpy.testing.assert_allclose(to_numpy(m.inv().todense()), numpy.linalg.inv(dense), rtol=0, atol=1e-14)
    if make == "eigh":
        want = scipy.linalg.expm(dense)
        numpy.testing.assert_allclose(to_numpy(m.expm().todense()), want, rtol=0, atol=1e-14 * numpy.abs(want).max())
    # the gradient still reaches the caller's float32 spectrum, in its dtype
    assert m.params[1] is values
    out, back = ch.vjp(ch.matmul, m.inv(), any_xp.asarray(rng.standard_normal((4, 2))))
    grads, _ = back(any_xp.asarray(numpy.ones(tuple(out.shape))))
    assert dtype_name(grads[1]) == "float32"


# ------------------------------------------------------------------------------------ threads and leaks
def _shared_matrix_calls(rng, xp, d=48):
    """``(make, calls)``: a maker of fresh, equal matrices of every kind and the calls each thread runs
    (different column counts, dtypes and transposes: different plans and caches, filled concurrently)."""
    vectors = xp.asarray(rng.standard_normal((d, d)))
    a, tau = (xp.asarray(t) for t in _geqrf(rng, (d, d)))
    u, v, s = (xp.asarray(t) for t in (rng.standard_normal((d, d)), rng.standard_normal((d, d)), rng.uniform(1, 2, d)))
    host = [rng.standard_normal((d, m)) for m in (1, 7, 64)]
    host += [x.astype(numpy.float32) for x in host]
    xs, rows = [xp.asarray(x) for x in host], [xp.asarray(x.T) for x in host]

    def make():
        h = ch.HouseholderProduct(vectors)
        return [
            h,
            ch.HouseholderProduct.from_lapack(a, tau),
            ch.SVDMatrix(u, s, v),
            ch.EighMatrix(u, s).expm(),
            h @ h.T,
        ]

    def calls(matrices):
        out = []
        for m in matrices:
            out += [lambda m=m, x=x: m @ x for x in xs]
            out += [lambda m=m, x=x: m.T @ x for x in xs]
            out += [lambda m=m, x=x: rmatmul(x, m) for x in rows]
            out.append(lambda m=m: ch.vjp(ch.matmul, m, xs[1])[1](xs[1])[0][0])
            out.append(m.todense)
        return out

    return make, calls


def test_one_fresh_matrix_shared_by_8_threads_gives_bitwise_the_single_thread_results(any_xp):
    make, calls = _shared_matrix_calls(numpy.random.default_rng(11), any_xp)
    expected = [to_numpy(f()) for f in calls(make())]
    for _ in range(3):  # three fresh sets of matrices, each shared by 8 threads from its first call
        shared = calls(make())
        barrier = threading.Barrier(8)
        results = [None] * 8

        def run(t):
            order = list(range(len(shared)))[t * 7 % len(shared) :] + list(range(len(shared)))[: t * 7 % len(shared)]
            barrier.wait()
            results[t] = {i: to_numpy(shared[i]()) for i in order}

        threads = [threading.Thread(target=run, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for per_thread in results:
            for i, want in enumerate(expected):
                got = per_thread[i]
                assert got.dtype == want.dtype and numpy.array_equal(got, want), "call {} differs".format(i)


def test_memory_is_flat_over_many_fresh_matrices_with_the_garbage_collector_disabled():
    # NumPy only: tracemalloc sees NumPy's allocations, not torch's or array_api_strict's
    # each step builds fresh matrices of every kind at d = 128 and fills their caches (block factors of
    # about 100 KiB each): a reference cycle would hold them, several MiB over the steps below
    rng = numpy.random.default_rng(12)
    d = 128
    vectors, w, x = rng.standard_normal((d, d)), rng.uniform(1, 2, d), rng.standard_normal((d, 4))
    a, tau = _geqrf(rng, (d, d))

    def step():
        h = ch.HouseholderProduct(vectors)
        svd = ch.SVDMatrix(vectors, w, h)
        e = ch.EighMatrix(vectors, w)
        for m in (h, ch.HouseholderProduct.from_lapack(a, tau), svd, svd.inv().T, e.expm(), svd @ e):
            out, back = ch.vjp(ch.matmul, m, x)
            back(out)
            ch.vjp(ch.logdet, m)[1](numpy.ones(m.shape[:-2]))

    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        for _ in range(5):  # warm-up: the plan's memo and other one-off caches
            step()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(40):
            step()
        grown = tracemalloc.get_traced_memory()[0] - before
        assert grown < 2**20, "{:.1f} MiB held after 40 steps".format(grown / 2**20)
        assert gc.collect() == 0, "reference cycles were created"
    finally:
        tracemalloc.stop()
        gc.enable()


def test_svd_linear_training_steps_create_no_reference_cycles():
    torch = pytest.importorskip("torch")
    import cuhouse.torch as cht

    torch.manual_seed(0)
    layer = cht.SVDLinear(16, 16)
    x = torch.randn(8, 16)

    def step():
        loss = layer(x).square().sum() - layer.logdet().sum()
        loss.backward()

    for _ in range(5):  # warm-up: torch's own one-off caches
        step()
    gc.collect()
    gc.disable()
    try:
        for _ in range(100):
            step()
        assert gc.collect() == 0, "each step left a reference cycle (an SVDMatrix and its factors)"
    finally:
        gc.enable()


# ------------------------------------------------------------------- defect 6: unclear or misleading errors
def test_a_torch_tensor_that_requires_grad_is_named_or_differentiated():
    """Issue 21: a torch tensor beside NumPy is a mixing TypeError naming both; torch tensors that
    require grad make a torch matrix, differentiated through cuhouse's adjoints (no silent detach)."""
    torch = pytest.importorskip("torch")
    h = ch.HouseholderProduct(numpy.random.default_rng(13).standard_normal((3, 5)))
    with pytest.raises(TypeError, match=r"^cannot mix NumPy and torch arrays: X is torch.Tensor"):
        h @ torch.randn(5, 2, requires_grad=True)
    v = torch.randn(3, 5, requires_grad=True)
    (ch.HouseholderProduct(v) @ torch.randn(5, 2)).square().sum().backward()
    assert v.grad is not None and v.grad.shape == v.shape


def test_numpy_dot_is_the_product_and_a_matrix_as_an_array_operand_says_what_to_do():  # NumPy only: numpy.dot
    rng = numpy.random.default_rng(14)
    h = ch.HouseholderProduct(rng.standard_normal((3, 5)))
    x = rng.standard_normal((5, 2))
    dense = h.todense()
    for got, want in (
        (numpy.dot(h, x), dense @ x),
        (numpy.dot(x.T, h), x.T @ dense),
        (numpy.dot(h, x[:, 0]), dense @ x[:, 0]),
        (x.T @ h, x.T @ dense),
    ):
        assert isinstance(got, numpy.ndarray)
        numpy.testing.assert_allclose(got, want, atol=1e-14)
    batched = ch.HouseholderProduct(rng.standard_normal((2, 3, 5)))
    with pytest.raises(TypeError, match=r"numpy.dot does not broadcast.*use A @ X"):
        numpy.dot(batched, x)
    with pytest.raises(TypeError, match=r"^X must be an array, got a cuhouse HouseholderProduct.*X.todense\(\)"):
        h.matvec(h)
    with pytest.raises(TypeError, match=r"^dout must be an array, got a cuhouse HouseholderProduct"):
        ch.vjp(ch.matmul, h, x)[1](h)


def test_a_sparse_matrix_times_a_batched_matrix_says_what_to_do():  # NumPy only: SciPy sparse
    rng = numpy.random.default_rng(15)
    batched = ch.HouseholderProduct(rng.standard_normal((2, 3, 5)))
    s = scipy.sparse.random(4, 5, density=0.5, format="csr", random_state=0)
    with pytest.raises(TypeError, match=r"SciPy sparse matrix times a batched cuhouse.*S.toarray\(\) @ A"):
        s @ batched
    numpy.testing.assert_allclose(s.toarray() @ batched, s.toarray() @ batched.todense(), atol=1e-14)
    single = ch.HouseholderProduct(rng.standard_normal((3, 5)))
    numpy.testing.assert_allclose(s @ single, s.toarray() @ single.todense(), atol=1e-14)


def test_the_inverse_of_a_product_names_the_factor_that_is_not_square(any_xp):
    rng = numpy.random.default_rng(16)
    r = ch.SVDMatrix(
        *(any_xp.asarray(a) for a in (rng.standard_normal((5, 5)), rng.uniform(1, 2, 5), rng.standard_normal((5, 7))))
    )
    with pytest.raises(
        ValueError, match=r"inv\(\) of a Product .* factor 0 of 2 \(SVDMatrix W\) is 5x7 \(the product is 5x5\)"
    ):
        (r @ r.T).inv()
    with pytest.raises(ValueError, match=r"^logdet\(\) of a Product .* factor 0 of 2 \(SVDMatrix W\) is 5x7"):
        ch.vjp(ch.logdet, r @ r.T)
    with pytest.raises(ValueError, match=r"^inv\(\) needs a square matrix, but W.T is 7x5"):
        r.T.inv()


def test_a_non_finite_operand_says_where_check_finite_is(any_xp):
    rng = numpy.random.default_rng(17)
    w = ch.SVDMatrix.from_dense(any_xp.asarray(rng.standard_normal((4, 4))))
    b = numpy.ones((4, 2))
    b[0, 0] = numpy.nan
    with pytest.raises(ValueError, match=r"^B must be finite.*build it with check_finite=False"):
        w.solve(any_xp.asarray(b))
    with pytest.raises(ValueError, match=r"^X must be finite.*build it with check_finite=False"):
        w @ any_xp.asarray(b)


def test_dask_operands_name_the_matrix_as_in_memory_ones_do():  # NumPy only: Dask arrays of NumPy chunks
    da = pytest.importorskip("dask.array")
    rng = numpy.random.default_rng(18)
    h = ch.HouseholderProduct(rng.standard_normal((2, 3, 5)))
    w = ch.SVDMatrix.from_dense(rng.standard_normal((5, 5)))
    x = numpy.zeros((3, 5, 2))
    for matrix, name in ((h, "H"),):
        message = r"the batch shapes of {} \(2,\) and X \(3,\) do not broadcast".format(name)
        with pytest.raises(ValueError, match=message):
            matrix @ x
        with pytest.raises(ValueError, match=message):
            matrix @ da.from_array(x)
    with pytest.raises(ValueError, match=r"X has shape \(6, 2\) but the operator is 5x5"):
        w @ da.from_array(numpy.zeros((6, 2)))


# ------------------------------------------------------------------------- found by tests/test_fuzz.py
@pytest.mark.parametrize("algorithm", ALGORITHM_CHOICES)
@pytest.mark.parametrize("m", [0, 1, 3])
def test_an_unbatched_lapack_product_times_a_batched_or_empty_x(any_xp, algorithm, m):
    # the ormqr plan took X as (d, m): a batched X failed in LAPACK (info = -7), an empty one in f2py
    needs_algorithm(any_xp, algorithm)
    rng = numpy.random.default_rng(19)
    for d in (1, 4):
        a, tau = _geqrf(rng, (d, d))
        q = ch.HouseholderProduct.from_lapack(any_xp.asarray(a), any_xp.asarray(tau), algorithm=algorithm)
        x = rng.standard_normal((3, d, m))
        rows = numpy.swapaxes(x, -1, -2)
        dense = _lapack_q(a, tau)
        numpy.testing.assert_allclose(to_numpy(q @ any_xp.asarray(x)), dense @ x, atol=1e-13)
        numpy.testing.assert_allclose(to_numpy(q.T @ any_xp.asarray(x)), dense.T @ x, atol=1e-13)
        numpy.testing.assert_allclose(to_numpy(rmatmul(any_xp.asarray(rows), q)), rows @ dense, atol=1e-13)


def _lapack_q(a, tau):
    return scipy.linalg.lapack.dorgqr(a, tau)[0] if a.shape[0] > 1 else numpy.where(tau[0] == 0, 1.0, -1.0)[None, None]
