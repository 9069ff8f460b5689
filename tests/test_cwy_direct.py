"""cwy's direct BLAS path on NumPy (full layout, one matrix, a 2-D X): the Gram matrices and
``X -= V^T U`` as ``?gemm`` calls, T by ``?trtri`` in place when first read, one column by ``?trsv``
and ``?gemv`` with S. Same products as the general steps (to rounding), X's memory order kept, and
the same bits fresh, cached and across calls."""

import numpy
import pytest
from helpers import dense_reference

import cuhouse
from cuhouse._gpu import primitives
from cuhouse.algorithms import _gemm, _layout, cwy, portable

DTYPES = [numpy.float32, numpy.float64]


def _tolerance(dtype):
    return 200 * numpy.finfo(dtype).eps


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("m", [1, 5])
def test_subtract_gemm_updates_in_place_in_either_order(dtype, order, m):
    rng = numpy.random.default_rng(1)
    rows = rng.standard_normal((4, 9)).astype(dtype)
    u = rng.standard_normal((4, m)).astype(dtype)
    out = numpy.asarray(rng.standard_normal((9, m)).astype(dtype), order=order)
    expected = out.astype(numpy.float64) - rows.astype(numpy.float64).T @ u.astype(numpy.float64)
    before = out.__array_interface__["data"][0]
    _gemm.subtract_gemm(rows, u, out)
    assert out.__array_interface__["data"][0] == before
    numpy.testing.assert_allclose(out, expected, rtol=0, atol=_tolerance(dtype) * 10)


def test_subtract_gemm_writes_back_into_a_strided_output():
    rng = numpy.random.default_rng(7)
    rows, u = rng.standard_normal((3, 6)), rng.standard_normal((3, 2))
    buffer = rng.standard_normal((12, 2))
    out = buffer[::2]
    expected = out - rows.T @ u
    _gemm.subtract_gemm(rows, u, out)
    numpy.testing.assert_allclose(buffer[::2], expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gram_gemm_in_either_order(dtype):
    rng = numpy.random.default_rng(2)
    rows = rng.standard_normal((5, 11)).astype(dtype)
    expected = rows.astype(numpy.float64) @ rows.astype(numpy.float64).T
    for operand in (rows, numpy.asfortranarray(rows)):
        numpy.testing.assert_allclose(_gemm.gram_gemm(operand), expected, rtol=0, atol=_tolerance(dtype) * 20)


@pytest.mark.parametrize("dtype", DTYPES)
def test_in_place_inverse_gives_the_stack_inverse_bits(dtype):
    rng = numpy.random.default_rng(3)
    s = numpy.triu(rng.standard_normal((3, 6, 6))).astype(dtype) + 4 * numpy.eye(6, dtype=dtype)
    expected = primitives.upper_triangular_inverse(s, numpy)
    copy = s.copy()
    assert primitives.upper_triangular_inverse_in_place(copy) is copy
    numpy.testing.assert_array_equal(copy, expected)


def test_in_place_inverse_refuses_a_singular_matrix():
    s = numpy.triu(numpy.ones((2, 4, 4)))
    s[1, 2, 2] = 0
    with pytest.raises(numpy.linalg.LinAlgError, match=r"singular \(\?trtri info 3\)"):
        primitives.upper_triangular_inverse_in_place(s)


def test_in_place_inverse_refuses_a_stack_it_cannot_overwrite():
    """?trtri would invert a copy of a Fortran-ordered (or read-only) stack and leave it as it was."""
    s = numpy.triu(numpy.ones((2, 4, 4))) + numpy.eye(4)
    for stack in (numpy.asfortranarray(s), s.transpose(0, 2, 1), numpy.broadcast_to(s[0], (2, 4, 4))):
        with pytest.raises(ValueError, match=r"needs a writable C-ordered stack, got strides"):
            primitives.upper_triangular_inverse_in_place(stack)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, k", [(12, 4), (13, 4), (7, 16)])
def test_direct_build_matches_the_general_build(dtype, n, k):
    """Blocks of k, a padded last block (13 = 3 * 4 + 1), one block smaller than k; a zero row."""
    rng = numpy.random.default_rng(4)
    y = rng.standard_normal((n, 16)).astype(dtype)
    y[2] = 0
    direct = cwy.build(y, k, numpy)
    general = cwy.build(y[None], k, numpy)  # a batch of one: the general (batched) build
    assert direct.t.shape == general.t.shape[1:] and direct.s.shape == general.s.shape[1:]
    numpy.testing.assert_allclose(direct.s, general.s[0], rtol=_tolerance(dtype), atol=_tolerance(dtype))
    numpy.testing.assert_allclose(direct.t, general.t[0], rtol=1e3 * _tolerance(dtype), atol=_tolerance(dtype))
    assert not numpy.tril(direct.t, -1).any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, k", [(12, 4), (13, 4), (7, 16)])
def test_the_three_builds_of_s_agree(dtype, n, k):
    """S is built in three places on purpose (see cwy.build): the direct NumPy build, the general build
    and the generic path's differentiable gram_factor give one S, zero rows and padding at 1/2 included."""
    rng = numpy.random.default_rng(5)
    y = rng.standard_normal((n, 16)).astype(dtype)
    y[2] = 0
    direct, general = cwy.build(y, k, numpy).s, cwy.build(y[None], k, numpy).s[0]
    strict = pytest.importorskip("array_api_strict")  # the generic path's library (NumPy < 2 has no .mT)
    generic = portable.gram_factor(portable.blocks(strict.asarray(y), min(k, n), strict), strict)
    generic = numpy.asarray(generic)
    assert generic.shape == direct.shape == general.shape
    for s in (general, generic):
        numpy.testing.assert_allclose(s, direct, rtol=_tolerance(dtype), atol=_tolerance(dtype))
        assert not numpy.tril(s, -1).any()
    assert direct[0, 2, 2] == general[0, 2, 2] == generic[0, 2, 2] == 0.5


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("columns", [(16, 1), (16, 3), "row-major X @ H"])
@pytest.mark.parametrize("through_numpy", [False, True])
def test_direct_apply_matches_the_dense_product_and_keeps_the_order(
    dtype, transpose, columns, through_numpy, monkeypatch
):
    """``through_numpy``: Z = V X by NumPy's matmul, as for a row-major X of at least
    ``cwy.NUMPY_PRODUCT_FROM`` entries (here every X), else SciPy's ?gemm."""
    monkeypatch.setattr(cwy, "NUMPY_PRODUCT_FROM", 0 if through_numpy else cwy.NUMPY_PRODUCT_FROM)
    rng = numpy.random.default_rng(5)
    y = rng.standard_normal((11, 16)).astype(dtype)
    if columns == "row-major X @ H":
        x = rng.standard_normal((3, 16)).astype(dtype).T  # the column-major view an X @ H operand is
    else:
        x = rng.standard_normal(columns).astype(dtype)
    form = cwy.build(y, 4, numpy)
    out = cwy.apply(form, x, transpose, numpy)
    dense = dense_reference(y.astype(numpy.float64))
    expected = (dense.T if transpose else dense) @ x.astype(numpy.float64)
    numpy.testing.assert_allclose(out, expected, rtol=0, atol=_tolerance(dtype) * 10)
    assert out.flags.f_contiguous if x.strides[0] < x.strides[1] else out.flags.c_contiguous
    assert numpy.shares_memory(out, x) is False


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("m", [9, 12, 40])
def test_a_column_major_x_of_many_columns_runs_in_panels(dtype, transpose, m, monkeypatch):
    """Past ``PANEL_ENTRIES`` entries a column-major X runs in panels of columns, each through every block
    (here panels of 4 columns, the last one narrower for m = 9; a padded last block, 11 = 2 * 4 + 3): the
    dense product to rounding, X's order kept, X untouched, and the same bits on every call. A row-major X
    of the same shape runs whole."""
    monkeypatch.setattr(cwy, "PANEL_ENTRIES", 4 * 16)
    monkeypatch.setattr(cwy, "PANEL_MIN_COLUMNS", 2)
    assert cwy.panel_columns(16, m) == 4 and cwy.panel_columns(16, 4) == 4 and cwy.panel_columns(8, 7) == 7
    assert cwy.panel_columns(64, m) == 2  # at least PANEL_MIN_COLUMNS
    rng = numpy.random.default_rng(9)
    y = rng.standard_normal((11, 16)).astype(dtype)
    dense = dense_reference(y.astype(numpy.float64))
    form = cwy.build(y, 4, numpy)
    form.t  # noqa: B018 (T made before the calls are counted)
    calls = []
    blas = _gemm.blas

    def counted(name, dtype):
        routine = blas(name, dtype)
        return lambda *args: calls.append(name) or routine(*args)

    monkeypatch.setattr(_gemm, "blas", counted)
    fortran = numpy.asfortranarray(rng.standard_normal((16, m)).astype(dtype))
    for x in (fortran, rng.standard_normal((m, 16)).astype(dtype).T):  # the second: an X @ H operand's view
        before = x.copy()
        calls.clear()
        out = cwy.apply(form, x, transpose, numpy)
        assert calls == ["gemm"] * (3 * 3 * -(-m // 4))  # 3 calls a block, 3 blocks a panel
        expected = (dense.T if transpose else dense) @ x.astype(numpy.float64)
        numpy.testing.assert_allclose(out, expected, rtol=0, atol=_tolerance(dtype) * 10)
        assert out.flags.f_contiguous and not numpy.shares_memory(out, x)
        numpy.testing.assert_array_equal(x, before)
        numpy.testing.assert_array_equal(cwy.apply(form, x, transpose, numpy), out)
    row_major = rng.standard_normal((16, m)).astype(dtype)
    out = cwy.apply(form, row_major, transpose, numpy)
    assert out.flags.c_contiguous
    numpy.testing.assert_allclose(
        out, (dense.T if transpose else dense) @ row_major.astype(numpy.float64), rtol=0, atol=_tolerance(dtype) * 10
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("order", ["C", "F"])
def test_one_column_solves_with_s_and_makes_t_only_when_read(dtype, transpose, order):
    """One column solves ``S U = V X`` (``?trsv``) and subtracts by ``?gemv``: no T matrices built, the
    dense product to rounding, for vectors in either memory order (an F-ordered V's blocks are strided
    views) and a padded last block (11 = 2 * 4 + 3). T is made from S at its first read, once."""
    rng = numpy.random.default_rng(7)
    y = numpy.asarray(rng.standard_normal((11, 16)), dtype=dtype, order=order)
    dense = dense_reference(y.astype(numpy.float64))
    form = cwy.build(y, 4, numpy)
    for x in (rng.standard_normal((16, 1)).astype(dtype), numpy.asfortranarray(rng.standard_normal((16, 1)), dtype)):
        out = cwy.apply(form, x, transpose, numpy)
        expected = (dense.T if transpose else dense) @ x.astype(numpy.float64)
        numpy.testing.assert_allclose(out, expected, rtol=0, atol=_tolerance(dtype) * 10)
        assert out.shape == (16, 1) and not numpy.shares_memory(out, x)
    assert "t" not in form.cache
    t = form.t
    assert form.t is t and form.cache["t"] is t
    numpy.testing.assert_array_equal(t, primitives.upper_triangular_inverse_in_place(form.s.copy()))
    two = cwy.apply(form, numpy.hstack([x, x]), transpose, numpy)  # more columns: the product with T
    numpy.testing.assert_allclose(two, numpy.hstack([expected, expected]), rtol=0, atol=_tolerance(dtype) * 10)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d, m", [(64, 1), (64, 32), (300, 7)])
def test_fresh_and_cached_products_give_the_same_bits(dtype, d, m):
    rng = numpy.random.default_rng(6)
    v = rng.standard_normal((d, d)).astype(dtype)
    x = rng.standard_normal((d, m)).astype(dtype)
    h = cuhouse.HouseholderProduct(v)
    first = h @ x
    numpy.testing.assert_array_equal(first, h @ x)
    numpy.testing.assert_array_equal(first, cuhouse.HouseholderProduct(v) @ x)
    numpy.testing.assert_array_equal((x.T @ h.T).T, first)


def test_gram_gemm_refuses_an_output_it_cannot_write_in_place():
    rows = numpy.ones((3, 5), dtype=numpy.float32)
    for out in (numpy.empty((3, 3), dtype=numpy.float32, order="F"), numpy.empty((3, 3), dtype=numpy.float64)):
        with pytest.raises(ValueError, match="gram_gemm needs a C-contiguous out of the rows' dtype"):
            _gemm.gram_gemm(rows, out=out)


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_column_writes_back_into_a_strided_output(dtype):
    """``_apply_numpy_column`` on a strided ``out`` ``(d, 1)`` (a column of a wider array): ``?gemv`` copies
    the column it cannot write in place, and the result is written back (as ``subtract_gemm`` does)."""
    rng = numpy.random.default_rng(8)
    y = rng.standard_normal((11, 16)).astype(dtype)
    dense = dense_reference(y.astype(numpy.float64))
    form = cwy.build(y, 4, numpy)
    wide = rng.standard_normal((16, 3)).astype(dtype)
    x = wide[:, :1].astype(numpy.float64)
    out = wide[:, :1]
    assert not out[:, 0].flags.contiguous
    assert cwy._apply_numpy_column(form, out, False) is out
    numpy.testing.assert_allclose(wide[:, :1], dense @ x, rtol=0, atol=_tolerance(dtype) * 10)


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("n", [32, 37])
def test_direct_build_keeps_the_blocks_rows_as_views(order, n):
    """``_build_numpy`` keeps each block's rows as the Fortran view ``V_j^T`` (``cache["columns"]``,
    one reshaped view for a row-major V, slices otherwise, the short last block included) and makes
    the Block list only when first read: the same blocks as ``_layout.blocks``, views of V, in block order."""
    rng = numpy.random.default_rng(5)
    y = numpy.asarray(rng.standard_normal((n, 40)), order=order)
    form = cwy.build(y, 8, numpy)
    assert "blocks" not in form.cache
    columns = form.cache["columns"]
    expected = _layout.blocks(y, 8, "full", numpy)
    assert form.blocks == form.cache["blocks"] and len(form.blocks) == len(expected) == len(columns)
    for got, want, vt in zip(form.blocks, expected, columns):
        assert got[:4] == want[:4]
        assert numpy.shares_memory(got.tail, y) and numpy.shares_memory(vt, y)
        numpy.testing.assert_array_equal(got.tail, want.tail)
        numpy.testing.assert_array_equal(vt, want.tail.T)
        assert vt.flags.f_contiguous == (order == "C")
