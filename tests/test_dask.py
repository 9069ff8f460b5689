"""cuhouse matrices applied to Dask arrays: lazy, chunk by chunk, equal to the in-memory results."""

import pathlib
import subprocess
import sys

import numpy
import pytest
from helpers import random_householder, random_svd

import cuhouse as ch
from cuhouse._backend import cupy_module, gpu_available

da = pytest.importorskip("dask.array", reason="needs dask (pip install 'cuhouse[dask]')")
dask = pytest.importorskip("dask")

ROOT = pathlib.Path(__file__).resolve().parent.parent
D = 6
TOL = 1e-10


def _householder(rng, n=D, batch=()):
    return random_householder(rng, D, n, batch)


def _svd(rng):
    """A rectangular 8x6 SVDMatrix of rank 5."""
    return random_svd(rng, 8, D, rank=5, low=0.5, high=2.0, v_reflections=5)


def _square_svd(rng):
    return random_svd(rng, D, D, low=0.5, high=2.0, v_reflections=D - 1)


MATRICES = {
    "H": lambda rng: _householder(rng, n=4),
    "H.T": lambda rng: _householder(rng, n=4).T,
    "H1 @ H2": lambda rng: _householder(rng, n=4) @ _householder(rng, n=3),
    "SVDMatrix": _svd,
    "W.inv()": lambda rng: _square_svd(rng).inv(),
    "EighMatrix.expm()": lambda rng: ch.EighMatrix(_householder(rng), rng.uniform(-1.0, 1.0, D)).expm(),
    "W @ H (Product)": lambda rng: _svd(rng) @ _householder(rng, n=3),
}
# chunks of X (d, m) for A @ X; transposed for X @ A
CHUNKINGS = {"non-contracted": (-1, 4), "contracted": (2, -1), "both": (4, 3), "single": (-1, -1)}


def _operand(a, side, shape_tail, chunks, rng, batch=()):
    """``X`` (NumPy) of ``batch + shape_tail`` matching ``a`` on ``side``, and its Dask twin."""
    rows, cols = a.shape[-2:]
    d = cols if side == "left" else rows
    shape = (d,) if shape_tail == "vector" else batch + ((d, 10) if side == "left" else (10, d))
    if shape_tail != "vector" and side == "right":
        chunks = chunks[:-2] + chunks[-2:][::-1]
    x = rng.standard_normal(shape)
    return x, da.from_array(x, chunks=chunks)


def _product(a, x, side):
    return a @ x if side == "left" else x @ a


def _vjp(a, x, side):
    """``(out, back)`` with ``back(dout) -> (dparams, dx)`` on either side."""
    if side == "left":
        return ch.vjp(ch.matmul, a, x)
    out, back = ch.vjp(ch.matmul, x, a)
    return out, lambda dout: tuple(reversed(back(dout)))


def _assert_close(actual, expected):
    numpy.testing.assert_allclose(actual, expected, rtol=0, atol=TOL * max(1.0, numpy.abs(expected).max()))


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("chunking", CHUNKINGS)
@pytest.mark.parametrize("name", MATRICES)
def test_product_equals_in_memory(name, chunking, side):
    rng = numpy.random.default_rng(0)
    a = MATRICES[name](rng)
    x, xd = _operand(a, side, "matrix", CHUNKINGS[chunking], rng)
    out = _product(a, xd, side)
    assert isinstance(out, da.Array)
    expected = _product(a, x, side)
    _assert_close(out.compute(), expected)
    kept = xd.chunks[-1] if side == "left" else xd.chunks[-2]  # the non-contracted axis keeps its chunks
    assert out.chunks == ((expected.shape[-2],), kept) if side == "left" else (kept, (expected.shape[-1],))


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("name", MATRICES)
def test_vector_equals_in_memory(name, side):
    rng = numpy.random.default_rng(1)
    a = MATRICES[name](rng)
    x, xd = _operand(a, side, "vector", (4,), rng)
    out = _product(a, xd, side)
    assert out.ndim == 1 and out.chunks == ((out.shape[0],),)
    _assert_close(out.compute(), _product(a, x, side))


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize(
    "case", ["batched X", "batched A", "batched both", "broadcast A over leading X axis", "batched A, vector X"]
)
def test_batched_equals_in_memory(case, side):
    rng = numpy.random.default_rng(2)
    a_batch, x_batch, chunks = {
        "batched X": ((), (3,), (1, -1, 4)),
        "batched A": ((2,), (), (-1, 4)),
        "batched both": ((2,), (2,), (1, 2, 4)),  # the batch axis A spans is rechunked
        "broadcast A over leading X axis": ((2,), (3, 1), (2, 1, -1, 4)),
        "batched A, vector X": ((2,), None, (4,)),
    }[case]
    a = _householder(rng, n=4, batch=a_batch)
    x, xd = _operand(a, side, "vector" if x_batch is None else "matrix", chunks, rng, batch=x_batch)
    out = _product(a, xd, side)
    expected = _product(a, x, side)
    assert out.shape == expected.shape
    _assert_close(out.compute(), expected)


@pytest.mark.parametrize("side", ["left", "right"])
def test_matmul_function_and_rmatmul_reach_the_dask_path(side):
    """``Xd @ A`` is deferred by Dask to ``A.__rmatmul__`` (A is no array chunk type), not densified."""
    rng = numpy.random.default_rng(3)
    a = _square_svd(rng)
    x, xd = _operand(a, side, "matrix", (-1, 4), rng)
    out = ch.matmul(a, xd) if side == "left" else ch.matmul(xd, a)
    assert any(str(layer).startswith("cuhouse-matmul") for layer in out.__dask_graph__().layers)
    _assert_close(out.compute(), _product(a, x, side))


def test_scipy_methods_take_dask_arrays():
    """``matmat``/``rmatmat`` (SciPy's LinearOperator names) route through the same lazy path; ``rmatmat`` is A^T X."""
    rng = numpy.random.default_rng(3)
    a = _svd(rng)
    x = rng.standard_normal((8, 10))
    out = a.rmatmat(da.from_array(x, chunks=(-1, 4)))
    assert isinstance(out, da.Array)
    _assert_close(out.compute(), a.T @ x)
    _assert_close(a.matmat(da.from_array(x[:D], chunks=(3, 4))).compute(), a @ x[:D])


def test_integer_and_float32_operands_promote_like_numpy():
    rng = numpy.random.default_rng(4)
    h = _householder(rng, n=4)
    x = rng.integers(-3, 3, (D, 8))
    assert (h @ da.from_array(x, chunks=(-1, 4))).dtype == numpy.float64
    h32 = ch.HouseholderProduct(rng.standard_normal((4, D)).astype(numpy.float32))
    out = h32 @ da.from_array(x.astype(numpy.float32), chunks=(-1, 4))
    assert out.dtype == numpy.float32 and out.compute().dtype == numpy.float32


def _graph(collection):
    return dict(collection.__dask_graph__())


def test_operator_is_one_key_that_every_chunk_task_depends_on():
    rng = numpy.random.default_rng(5)
    a = _square_svd(rng).inv()
    xd = da.from_array(rng.standard_normal((D, 40)), chunks=(3, 5))
    graph = _graph(a @ xd)
    holders = [key for key, task in graph.items() if getattr(task, "value", None) is a]
    assert len(holders) == 1
    products = [task for key, task in graph.items() if key[0].startswith("cuhouse-matmul")]
    assert len(products) == 8
    assert all(holders[0] in task.dependencies for task in products)
    assert all(a not in getattr(task, "args", ()) for task in products)  # referenced by key, not inlined


def _matrix_keys(graph):
    return {key for key in graph if isinstance(key, str) and key.startswith("cuhouse-")}


@pytest.mark.parametrize("name", MATRICES)
def test_two_graphs_of_the_same_matrix_share_its_key(name):
    """Keys come from ``dask.base.tokenize`` (the matrix's ``__dask_tokenize__``), not from a random id:
    two graphs of one matrix, or of an equal copy, name it alike, and rebuilding a graph gives the same names."""
    import pickle

    a = MATRICES[name](numpy.random.default_rng(6))
    x = numpy.random.default_rng(7).standard_normal((a.shape[-1], 8))
    first, second = a @ da.from_array(x, chunks=(-1, 4)), a @ da.from_array(2 * x, chunks=(-1, 2))
    keys = _matrix_keys(_graph(first))
    assert len(keys) == 1 and keys == _matrix_keys(_graph(second))
    assert (a @ da.from_array(x, chunks=(-1, 4))).name == first.name
    twin = pickle.loads(pickle.dumps(a))
    assert _matrix_keys(_graph(twin @ da.from_array(x, chunks=(-1, 4)))) == keys
    other = MATRICES[name](numpy.random.default_rng(8))
    assert _matrix_keys(_graph(other @ da.from_array(x, chunks=(-1, 4)))).isdisjoint(keys)
    if a.T is not a:  # the transpose is another matrix (an EighMatrix is its own)
        y = numpy.ones((a.shape[-2], 8))
        assert _matrix_keys(_graph(a.T @ da.from_array(y, chunks=(-1, 4)))).isdisjoint(keys)


class _Raise:
    """A scheduler that fails the test when anything is computed."""

    def __call__(self, *args, **kwargs):
        raise AssertionError("the graph was computed while it was being built")


def test_graph_stays_lazy_until_compute():
    rng = numpy.random.default_rng(6)
    calls = []

    def counted(block):
        calls.append(block.shape)
        return block

    a = _square_svd(rng)
    x = rng.standard_normal((D, 12))
    xd = da.from_array(x, chunks=(2, 4)).map_blocks(counted, meta=numpy.empty((0, 0)))
    with dask.config.set(scheduler=_Raise()):
        out = a @ xd
        right = xd.T @ a
        out2, back = ch.vjp(ch.matmul, a, xd)
        grads = back(da.ones(out2.shape, chunks=3))
        grads_from_numpy = back(numpy.ones(out2.shape))
    assert calls == []
    _assert_close(out.compute(), a @ x)
    assert calls
    _assert_close(right.compute(), x.T @ a)
    dask.compute(grads, grads_from_numpy)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("chunking", ["non-contracted", "both"])
@pytest.mark.parametrize("name", MATRICES)
def test_gradients_equal_in_memory(name, chunking, side):
    rng = numpy.random.default_rng(7)
    a = MATRICES[name](rng)
    x, xd = _operand(a, side, "matrix", CHUNKINGS[chunking], rng)
    out, back = _vjp(a, xd, side)
    expected_out, expected_back = _vjp(a, x, side)
    dout = rng.standard_normal(expected_out.shape)
    ((dparams, dx),) = dask.compute(back(da.from_array(dout, chunks=3)))
    expected_dparams, expected_dx = expected_back(dout)
    _assert_close(out.compute(), expected_out)
    assert back(dout)[1].chunks == xd.chunks  # dX keeps X's chunks
    assert len(dparams) == len(a.params)
    for got, want, leaf in zip(dparams, expected_dparams, a.params):
        assert got.shape == leaf.shape and got.dtype == want.dtype
        _assert_close(got, want)
    assert dx.dtype == expected_dx.dtype
    _assert_close(dx, expected_dx)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("case", ["vector", "broadcast A over X", "batched A, vector X"])
def test_gradients_of_vectors_and_broadcasts(case, side):
    rng = numpy.random.default_rng(8)
    if case != "broadcast A over X":
        a = _svd(rng) if case == "vector" else _householder(rng, n=4, batch=(2,))
        x, xd = _operand(a, side, "vector", (4,), rng)
    else:
        a = _householder(rng, n=4, batch=(2,))
        x, xd = _operand(a, side, "matrix", (3, 4), rng)
    out, back = _vjp(a, xd, side)
    expected_out, expected_back = _vjp(a, x, side)
    dout = rng.standard_normal(expected_out.shape)
    dparams, dx = dask.compute(*back(dout))
    expected_dparams, expected_dx = expected_back(dout)
    for got, want in zip(dparams, expected_dparams):
        _assert_close(got, want)
    assert back(dout)[1].chunks == xd.chunks
    _assert_close(dx, expected_dx)


def test_parameter_gradients_are_a_tree_reduction():
    """40 chunks are summed 8 at a time: 5 partial sums, then 1; each gradient is one chunk."""
    rng = numpy.random.default_rng(9)
    h = _householder(rng, n=4)
    xd = da.from_array(rng.standard_normal((D, 40)), chunks=(-1, 1))
    out, back = ch.vjp(ch.matmul, h, xd)
    (dv,), _ = back(da.ones(out.shape, chunks=(-1, 1)))
    assert dv.numblocks == (1, 1)
    sums = [key for key in _graph(dv) if str(key).startswith("_sum_gradients")]
    assert len(sums) == 6


def test_cupy_chunk_type_follows_meta():
    """The output's ``_meta`` (Dask's chunk type) is X's chunk type, so CuPy chunks stay CuPy (dask-cuda).

    A NumPy subclass stands in for the chunk type; the GPU test below uses CuPy itself.
    """

    class StandIn(numpy.ndarray):
        pass

    rng = numpy.random.default_rng(10)
    h = _householder(rng, n=4)
    xd = da.from_array(rng.standard_normal((D, 8)), chunks=(-1, 4)).map_blocks(
        lambda b: b.view(StandIn), meta=numpy.empty((0, 0)).view(StandIn)
    )
    for out in (h @ xd, xd.T @ h, ch.vjp(ch.matmul, h, xd)[1](numpy.ones((D, 8)))[1]):
        assert type(out._meta) is StandIn and out._meta.dtype == numpy.float64


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA device")
def test_cupy_chunks_stay_on_the_device():
    cupy = cupy_module()
    rng = numpy.random.default_rng(11)
    v = rng.standard_normal((4, D))
    h, h_gpu = ch.HouseholderProduct(v), ch.HouseholderProduct(cupy.asarray(v))
    x = rng.standard_normal((D, 12))
    xd = da.from_array(cupy.asarray(x), chunks=(-1, 4), asarray=False)
    out = h_gpu @ xd
    assert isinstance(out._meta, cupy.ndarray)
    assert all(isinstance(block, cupy.ndarray) for block in dask.compute(*out.to_delayed().ravel()))
    _assert_close(cupy.asnumpy(out.compute()), h @ x)
    (dv,), dx = dask.compute(*ch.vjp(ch.matmul, h_gpu, xd)[1](cupy.ones((D, 12))))
    assert isinstance(dv, cupy.ndarray) and isinstance(dx, cupy.ndarray)
    (dv_ref,), dx_ref = ch.vjp(ch.matmul, h, x)[1](numpy.ones((D, 12)))
    _assert_close(cupy.asnumpy(dv), dv_ref)
    _assert_close(cupy.asnumpy(dx), dx_ref)


# ------------------------------------------------------------------ bad input
def test_unknown_chunk_sizes_are_a_value_error():
    rng = numpy.random.default_rng(12)
    h = _householder(rng, n=4)
    xd = da.from_array(rng.standard_normal((20, D)), chunks=(5, -1))
    xd = xd[xd[:, 0] > 0]  # boolean indexing: NaN row chunks
    with pytest.raises(ValueError, match=r"X is a dask array with unknown chunk sizes.*compute_chunk_sizes\(\)"):
        xd @ h
    with pytest.raises(ValueError, match="unknown chunk sizes"):
        ch.vjp(ch.matmul, h, xd.T)


def test_wrong_contracted_size_is_a_value_error():
    h = _householder(numpy.random.default_rng(13), n=4)
    with pytest.raises(ValueError, match=r"X has shape \(5, 3\) but the operator is 6x6"):
        h @ da.zeros((5, 3))
    with pytest.raises(ValueError, match=r"X has shape \(3, 5\) but the operator is 6x6"):
        da.zeros((3, 5)) @ h


def test_unbroadcastable_batch_is_a_value_error():
    h = _householder(numpy.random.default_rng(14), n=4, batch=(2,))
    with pytest.raises(ValueError, match=r"batch shapes of H \(2,\) and X \(3,\) do not broadcast"):
        h @ da.zeros((3, D, 4))


def test_float16_dtype_is_a_type_error():
    h = _householder(numpy.random.default_rng(15), n=4)
    with pytest.raises(TypeError, match="X has dtype float16"):
        h @ da.zeros((D, 4), dtype=numpy.float16)


def test_complex_chunks_and_a_unitary_matrix():
    """Complex Dask arrays: a real matrix promotes them as numpy.matmul; a unitary one keeps them complex;
    the vjp is lazy and matches the in-memory one (torch's convention for complex gradients)."""
    rng = numpy.random.default_rng(15)
    v = rng.standard_normal((4, D)) + 1j * rng.standard_normal((4, D))
    x = rng.standard_normal((D, 8)) + 1j * rng.standard_normal((D, 8))
    for h in (_householder(rng, n=4), ch.HouseholderProduct(v)):
        out = h @ da.from_array(x, chunks=(-1, 3))
        assert out.dtype == numpy.complex128
        _assert_close(out.compute(), h @ x)
        _assert_close((da.from_array(x.T, chunks=(3, -1)) @ h).compute(), x.T @ h)
        g = rng.standard_normal((D, 8)) + 1j * rng.standard_normal((D, 8))
        lazy_out, back = ch.vjp(ch.matmul, h, da.from_array(x, chunks=(-1, 3)))
        (dv,), dx = dask.compute(*back(g))
        _, eager = ch.vjp(ch.matmul, h, x)
        (ev,), ex = eager(g)
        assert dv.dtype == ev.dtype
        _assert_close(dv, ev)
        _assert_close(dx, ex)


def test_scalar_is_a_value_error():
    h = _householder(numpy.random.default_rng(16), n=4)
    with pytest.raises(ValueError, match="at least one dimension"):
        h @ da.from_array(numpy.float64(1.0))


def test_cupy_chunks_with_a_numpy_matrix_are_a_type_error():
    class ndarray(numpy.ndarray):  # stands in for cupy.ndarray (matched by module and name)
        __module__ = "cupy"

    h = _householder(numpy.random.default_rng(17), n=4)
    xd = da.zeros((D, 4)).map_blocks(lambda b: b.view(ndarray), meta=numpy.empty((0, 0)).view(ndarray))
    with pytest.raises(TypeError, match=r"cannot mix NumPy and CuPy arrays: the chunks of X are cupy.ndarray"):
        h @ xd


def test_wrong_cotangent_shape_is_a_value_error():
    h = _householder(numpy.random.default_rng(18), n=4)
    _, back = ch.vjp(ch.matmul, h, da.zeros((D, 4), chunks=2))
    with pytest.raises(ValueError, match=r"dout must have the shape of the value it is the gradient of, \(6, 4\)"):
        back(da.zeros((D, 5)))
    with pytest.raises(TypeError, match="dout has dtype float16"):
        back(numpy.zeros((D, 4), dtype=numpy.float16))


def test_non_finite_chunk_fails_when_computed():
    h = _householder(numpy.random.default_rng(19), n=4)
    x = numpy.zeros((D, 8))
    x[2, 6] = numpy.nan
    out = h @ da.from_array(x, chunks=(-1, 4))  # building checks no values
    with pytest.raises(ValueError, match="X must be finite"):
        out.compute()


# ------------------------------------------------------------ packaging, cluster, docs
def test_import_cuhouse_does_not_import_dask():
    code = "import sys, cuhouse; sys.exit(int(any(m == 'dask' or m.startswith('dask.') for m in sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_cuhouse_dask_is_imported_only_by_a_dask_product():
    code = (
        "import sys, numpy, cuhouse\n"
        "h = cuhouse.HouseholderProduct(numpy.ones((2, 3)))\n"
        "h @ numpy.ones((3, 2)), cuhouse.vjp(cuhouse.matmul, h, numpy.ones((3, 2)))\n"
        "assert 'cuhouse._dask' not in sys.modules, 'imported by a NumPy product'\n"
        "import dask.array as da\n"
        "h @ da.ones((3, 2))\n"
        "assert 'cuhouse._dask' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_local_cluster_with_processes():
    """Two worker processes: the matrices (derived ones included) travel by pickle about once per worker,
    not once per chunk, and give the in-memory results. Three Reflections travel (U, V, h); under load the
    scheduler may move a task holding one of them to the other worker, so a worker may unpickle one a second
    time (seen: 4), but never once per chunk (16 chunks)."""
    distributed = pytest.importorskip("distributed")
    rng = numpy.random.default_rng(20)
    w_inv = _square_svd(rng).inv()  # two Reflections: U and V
    h = _householder(rng, n=4)  # one more
    x = rng.standard_normal((D, 32))
    xd = da.from_array(x, chunks=(-1, 2))  # 16 chunks

    def count_unpickled_reflections():  # runs in each worker (pickled by value)
        from cuhouse._reflections import Reflections

        restore = Reflections.__setstate__

        def counting(self, state):
            Reflections.unpickled += 1
            restore(self, state)

        Reflections.unpickled, Reflections.__setstate__ = 0, counting

    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, worker_dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        assert len(client.scheduler_info()["workers"]) == 2
        client.run(count_unpickled_reflections)
        out, back = ch.vjp(ch.matmul, w_inv, xd)
        left, right, (dparams, dx) = dask.compute(out, xd.T @ h, back(numpy.ones((D, 32))))
        unpickled = client.run(lambda: __import__("cuhouse._reflections")._reflections.Reflections.unpickled)
    assert sum(unpickled.values()) >= 3 and all(count <= 2 * 3 for count in unpickled.values()), unpickled
    _assert_close(left, w_inv @ x)
    _assert_close(right, x.T @ h)
    expected_dparams, expected_dx = ch.vjp(ch.matmul, w_inv, x)[1](numpy.ones((D, 32)))
    for got, want in zip(dparams, expected_dparams):
        _assert_close(got, want)
    _assert_close(dx, expected_dx)
