"""Every bad input gets its own test: exception type and a helpful message."""

import numpy
import pytest

import cuhouse

V = numpy.random.default_rng(0).standard_normal((3, 5))


def test_vectors_with_one_dimension():
    with pytest.raises(ValueError, match=r"vectors must have shape \(\.\.\., n, d\).*\(5,\)"):
        cuhouse.HouseholderProduct(numpy.ones(5))


def test_vectors_scalar():
    with pytest.raises(ValueError, match=r"vectors must have shape \(\.\.\., n, d\).*\(\)"):
        cuhouse.HouseholderProduct(numpy.float64(1.0))


def test_more_reflections_than_dimensions():
    with pytest.raises(ValueError, match=r"n=6 rows of length d=5.*1 <= n <= d"):
        cuhouse.HouseholderProduct(numpy.ones((6, 5)))


def test_zero_reflections():
    with pytest.raises(ValueError, match=r"1 <= n <= d.*n=0"):
        cuhouse.HouseholderProduct(numpy.ones((0, 5)))


def test_zero_dimension():
    with pytest.raises(ValueError, match=r"d >= 1.*d=0"):
        cuhouse.HouseholderProduct(numpy.ones((1, 0)))


def test_zero_vector():
    v = V.copy()
    v[1] = 0
    with pytest.raises(ValueError, match="vectors row 1 is a zero vector"):
        cuhouse.HouseholderProduct(v)


def test_zero_vector_in_batch_names_its_index():
    v = numpy.ones((2, 3, 5))
    v[1, 2] = 0
    with pytest.raises(ValueError, match=r"vectors row \(1, 2\) is a zero vector"):
        cuhouse.HouseholderProduct(v)


@pytest.mark.parametrize("bad", [numpy.nan, numpy.inf, -numpy.inf])
def test_non_finite_vectors(bad):
    v = V.copy()
    v[2, 3] = bad
    with pytest.raises(ValueError, match="vectors must be finite.*check_finite=False"):
        cuhouse.HouseholderProduct(v)


def test_non_finite_vectors_allowed_when_check_is_off():
    v = V.copy()
    v[2, 3] = numpy.nan
    h = cuhouse.HouseholderProduct(v, check_finite=False)
    assert h.shape == (5, 5)


def test_non_finite_operand():
    x = numpy.ones((5, 2))
    x[0, 0] = numpy.inf
    with pytest.raises(ValueError, match="X must be finite"):
        cuhouse.HouseholderProduct(V) @ x


@pytest.mark.parametrize("dtype", [numpy.float16, numpy.longdouble, numpy.clongdouble, object])
def test_unsupported_vector_dtypes(dtype):
    with pytest.raises(
        TypeError, match=r"vectors has dtype .*supported dtypes are float32, float64, complex64 and complex128"
    ):
        cuhouse.HouseholderProduct(V.astype(dtype))


def test_string_vectors():
    with pytest.raises(TypeError, match="vectors must be an array of real or complex numbers, got str"):
        cuhouse.HouseholderProduct("abc")


@pytest.mark.parametrize("dtype", [numpy.float16, numpy.clongdouble, object])
def test_unsupported_operand_dtypes(dtype):
    with pytest.raises(TypeError, match=r"X has dtype .*float32, float64, complex64 and complex128"):
        cuhouse.HouseholderProduct(V) @ numpy.ones((5, 2), dtype=dtype)


def test_string_operand():
    with pytest.raises(TypeError, match="X must be an array of real or complex numbers, got str"):
        cuhouse.HouseholderProduct(V) @ "abcde"


def test_none_operand():
    with pytest.raises(TypeError, match="X must be an array of real or complex numbers, got NoneType"):
        cuhouse.HouseholderProduct(V) @ None


def test_list_of_strings_operand():
    with pytest.raises(TypeError, match=r"X has dtype <U1"):
        cuhouse.HouseholderProduct(V) @ ["a", "b", "c", "d", "e"]


def test_mismatched_rows_left():
    with pytest.raises(
        ValueError, match=r"X has shape \(4, 2\) but the operator is 5x5: expected \(d,\) or \(\.\.\., d, m\) with d=5"
    ):
        cuhouse.HouseholderProduct(V) @ numpy.ones((4, 2))


def test_mismatched_columns_right():
    with pytest.raises(ValueError, match=r"X has shape \(2, 4\).*\(\.\.\., m, d\) with d=5"):
        numpy.ones((2, 4)) @ cuhouse.HouseholderProduct(V)


def test_mismatched_vector_operand():
    with pytest.raises(ValueError, match=r"X has shape \(3,\)"):
        cuhouse.HouseholderProduct(V) @ numpy.ones(3)


def test_scalar_operand():
    with pytest.raises(ValueError, match="at least one dimension"):
        cuhouse.HouseholderProduct(V) @ numpy.float64(2.0)


def test_batch_shapes_that_do_not_broadcast():
    h = cuhouse.HouseholderProduct(numpy.ones((2, 3, 5)) + numpy.eye(3, 5))
    with pytest.raises(ValueError, match=r"batch shapes of H \(2,\) and X \(3,\) do not broadcast"):
        h @ numpy.ones((3, 5, 1))


def test_composition_of_different_sizes():
    with pytest.raises(ValueError, match="cannot compose HouseholderProducts of sizes 5x5 and 4x4"):
        cuhouse.HouseholderProduct(V) @ cuhouse.HouseholderProduct(numpy.ones((2, 4)))


def test_unknown_algorithm():
    with pytest.raises(ValueError, match="algorithm must be one of 'auto', .*got 'qr'"):
        cuhouse.HouseholderProduct(V, algorithm="qr")


@pytest.mark.parametrize(
    "block_size,error,match",
    [
        (0, ValueError, "block_size must be a positive int or None, got 0"),
        (-3, ValueError, "got -3"),
        (2.5, TypeError, "block_size must be a positive int or None, got float"),
        (True, TypeError, "got bool"),
    ],
)
def test_bad_block_size(block_size, error, match):
    with pytest.raises(error, match=match):
        cuhouse.HouseholderProduct(V, block_size=block_size)


def test_mixed_backends_names_both_types():
    class FakeCupyArray:
        """Stands in for cupy.ndarray: the backend is decided by the class's module and name."""

    FakeCupyArray.__module__ = "cupy._core.core"
    FakeCupyArray.__name__ = "ndarray"
    with pytest.raises(TypeError, match=r"cannot mix NumPy and CuPy arrays: X is cupy.ndarray .*numpy.ndarray"):
        cuhouse.HouseholderProduct(V) @ FakeCupyArray()
    from cuhouse._backend import array_module

    with pytest.raises(TypeError, match=r"cannot mix NumPy and CuPy arrays: got numpy.ndarray and cupy.ndarray"):
        array_module(V, FakeCupyArray())


def test_from_lapack_rejects_vector_a():
    with pytest.raises(ValueError, match=r"a must have shape \(\.\.\., M, N\)"):
        cuhouse.HouseholderProduct.from_lapack(numpy.ones(3), numpy.ones(1))


def test_errors_do_not_mutate_inputs():
    v = V.copy()
    v[0, 0] = numpy.nan
    snapshot = v.copy()
    with pytest.raises(ValueError):
        cuhouse.HouseholderProduct(v)
    numpy.testing.assert_array_equal(v, snapshot)


def test_a_cuhouse_matrix_is_not_taken_as_vectors():
    h = cuhouse.HouseholderProduct(V)
    with pytest.raises(TypeError, match="vectors must be an array, got a cuhouse HouseholderProduct: compose"):
        cuhouse.HouseholderProduct(h)
    with pytest.raises(TypeError, match="a must be an array, got a cuhouse HouseholderProduct"):
        cuhouse.HouseholderProduct.from_lapack(h, numpy.ones(1))
