"""Every bad input gets its own test: exception type and a helpful message."""

import numpy
import pytest
from helpers import assert_equal, backend_name, is_native, on, rmatmul, to_numpy

import cuhouse

V = numpy.random.default_rng(0).standard_normal((3, 5))


def _h(xp):
    """``HouseholderProduct(V)`` on ``xp``."""
    return cuhouse.HouseholderProduct(on(xp, V))


def test_vectors_with_one_dimension(any_xp):
    with pytest.raises(ValueError, match=r"vectors must have shape \(\.\.\., n, d\).*\(5,\)"):
        cuhouse.HouseholderProduct(on(any_xp, numpy.ones(5)))


def test_vectors_scalar(any_xp):
    with pytest.raises(ValueError, match=r"vectors must have shape \(\.\.\., n, d\).*\(\)"):
        cuhouse.HouseholderProduct(on(any_xp, 1.0))


def test_more_reflections_than_dimensions(any_xp):
    with pytest.raises(ValueError, match=r"n=6 rows of length d=5.*1 <= n <= d"):
        cuhouse.HouseholderProduct(on(any_xp, numpy.ones((6, 5))))


def test_zero_reflections(any_xp):
    with pytest.raises(ValueError, match=r"1 <= n <= d.*n=0"):
        cuhouse.HouseholderProduct(on(any_xp, numpy.ones((0, 5))))


def test_zero_dimension(any_xp):
    with pytest.raises(ValueError, match=r"d >= 1.*d=0"):
        cuhouse.HouseholderProduct(on(any_xp, numpy.ones((1, 0))))


def test_zero_vector(any_xp):
    v = V.copy()
    v[1] = 0
    with pytest.raises(ValueError, match="vectors row 1 is a zero vector"):
        cuhouse.HouseholderProduct(on(any_xp, v))


def test_zero_vector_in_batch_names_its_index(any_xp):
    v = numpy.ones((2, 3, 5))
    v[1, 2] = 0
    with pytest.raises(ValueError, match=r"vectors row \(1, 2\) is a zero vector"):
        cuhouse.HouseholderProduct(on(any_xp, v))


@pytest.mark.parametrize("bad", [numpy.nan, numpy.inf, -numpy.inf])
def test_non_finite_vectors(any_xp, bad):
    v = V.copy()
    v[2, 3] = bad
    with pytest.raises(ValueError, match="vectors must be finite.*check_finite=False"):
        cuhouse.HouseholderProduct(on(any_xp, v))


def test_non_finite_vectors_allowed_when_check_is_off(any_xp):
    v = V.copy()
    v[2, 3] = numpy.nan
    h = cuhouse.HouseholderProduct(on(any_xp, v), check_finite=False)
    assert h.shape == (5, 5)


def test_non_finite_operand(any_xp):
    x = numpy.ones((5, 2))
    x[0, 0] = numpy.inf
    with pytest.raises(ValueError, match="X must be finite"):
        _h(any_xp) @ on(any_xp, x)


# Each library's dtypes that cuhouse refuses (torch's bfloat16 and complex data on the generic path have
# their own messages, tested in test_backends.py; array_api_strict has no float16).
UNSUPPORTED = {
    "numpy": ["float16", "longdouble", "clongdouble", "object"],
    "cupy": ["float16"],
    "torch": ["float16"],
    "array_api_strict": [],
}


def _unsupported(xp):
    if backend_name(xp) == "torch":
        import torch

        return [
            (name, lambda a, name=name: torch.asarray(a, dtype=getattr(torch, name))) for name in UNSUPPORTED["torch"]
        ]
    return [(name, lambda a, name=name: xp.asarray(a.astype(name))) for name in UNSUPPORTED[backend_name(xp)]]


def _cases(xp):
    cases = _unsupported(xp)
    if not cases:
        pytest.skip("array_api_strict has no dtype that cuhouse refuses")
    return cases


def test_unsupported_vector_dtypes(any_xp):
    for _, make in _cases(any_xp):
        with pytest.raises(
            TypeError, match=r"vectors has dtype .*supported dtypes are float32, float64, complex64 and complex128"
        ):
            cuhouse.HouseholderProduct(make(V))


def test_string_vectors():  # a str is no library's array: the message is the backend-neutral one
    with pytest.raises(TypeError, match="vectors must be an array of real or complex numbers, got str"):
        cuhouse.HouseholderProduct("abc")


def test_unsupported_operand_dtypes(any_xp):
    for name, make in _cases(any_xp):
        if name == "longdouble":
            continue  # (NumPy promotes a float64 H with longdouble X: the clongdouble and object cases stay)
        with pytest.raises(TypeError, match=r"X has dtype .*float32, float64, complex64 and complex128"):
            _h(any_xp) @ make(numpy.ones((5, 2)))


def test_string_operand(any_xp):
    with pytest.raises(TypeError, match="X must be an array of real or complex numbers, got str"):
        _h(any_xp) @ "abcde"


def test_none_operand(any_xp):
    with pytest.raises(TypeError, match="X must be an array of real or complex numbers, got NoneType"):
        _h(any_xp) @ None


def test_list_of_strings_operand(any_xp):
    # NumPy reads the list as a string array (its dtype is named); the generic libraries cannot read it at all.
    native = is_native(any_xp)
    match = r"X has dtype <U1" if native else r"X must be an array of real or complex numbers, got list: "
    with pytest.raises(TypeError, match=match):
        _h(any_xp) @ ["a", "b", "c", "d", "e"]


def test_mismatched_rows_left(any_xp):
    with pytest.raises(
        ValueError, match=r"X has shape \(4, 2\) but the operator is 5x5: expected \(d,\) or \(\.\.\., d, m\) with d=5"
    ):
        _h(any_xp) @ on(any_xp, numpy.ones((4, 2)))


def test_mismatched_columns_right(any_xp):
    with pytest.raises(ValueError, match=r"X has shape \(2, 4\).*\(\.\.\., m, d\) with d=5"):
        rmatmul(on(any_xp, numpy.ones((2, 4))), _h(any_xp))


def test_mismatched_vector_operand(any_xp):
    with pytest.raises(ValueError, match=r"X has shape \(3,\)"):
        _h(any_xp) @ on(any_xp, numpy.ones(3))


def test_scalar_operand(any_xp):
    with pytest.raises(ValueError, match="at least one dimension"):
        _h(any_xp) @ on(any_xp, 2.0)


def test_batch_shapes_that_do_not_broadcast(any_xp):
    h = cuhouse.HouseholderProduct(on(any_xp, numpy.ones((2, 3, 5)) + numpy.eye(3, 5)))
    with pytest.raises(ValueError, match=r"batch shapes of H \(2,\) and X \(3,\) do not broadcast"):
        h @ on(any_xp, numpy.ones((3, 5, 1)))


def test_composition_of_different_sizes(any_xp):
    with pytest.raises(ValueError, match="cannot compose HouseholderProducts of sizes 5x5 and 4x4"):
        _h(any_xp) @ cuhouse.HouseholderProduct(on(any_xp, numpy.ones((2, 4))))


def test_unknown_algorithm(any_xp):
    with pytest.raises(ValueError, match="algorithm must be one of 'auto', .*got 'qr'"):
        cuhouse.HouseholderProduct(on(any_xp, V), algorithm="qr")


@pytest.mark.parametrize(
    "block_size,error,match",
    [
        (0, ValueError, "block_size must be a positive int or None, got 0"),
        (-3, ValueError, "got -3"),
        (2.5, TypeError, "block_size must be a positive int or None, got float"),
        (True, TypeError, "got bool"),
    ],
)
def test_bad_block_size(any_xp, block_size, error, match):
    with pytest.raises(error, match=match):
        cuhouse.HouseholderProduct(on(any_xp, V), block_size=block_size)


def test_mixed_backends_names_both_types():  # NumPy only: a stand-in CuPy class beside NumPy arrays
    class FakeCupyArray:
        """Stands in for cupy.ndarray: the backend is decided by the class's module and name."""

    FakeCupyArray.__module__ = "cupy._core.core"
    FakeCupyArray.__name__ = "ndarray"
    with pytest.raises(TypeError, match=r"cannot mix NumPy and CuPy arrays: X is cupy.ndarray .*numpy.ndarray"):
        cuhouse.HouseholderProduct(V) @ FakeCupyArray()
    from cuhouse._backend import array_module

    with pytest.raises(TypeError, match=r"cannot mix NumPy and CuPy arrays: got numpy.ndarray and cupy.ndarray"):
        array_module(V, FakeCupyArray())


def test_from_lapack_rejects_vector_a(any_xp):
    with pytest.raises(ValueError, match=r"a must have shape \(\.\.\., M, N\)"):
        cuhouse.HouseholderProduct.from_lapack(*on(any_xp, numpy.ones(3), numpy.ones(1)))


def test_errors_do_not_mutate_inputs(any_xp):
    v = V.copy()
    v[0, 0] = numpy.nan
    v = on(any_xp, v)
    snapshot = to_numpy(v).copy()
    with pytest.raises(ValueError):
        cuhouse.HouseholderProduct(v)
    assert_equal(v, snapshot)


def test_a_cuhouse_matrix_is_not_taken_as_vectors(any_xp):
    h = _h(any_xp)
    with pytest.raises(TypeError, match="vectors must be an array, got a cuhouse HouseholderProduct: compose"):
        cuhouse.HouseholderProduct(h)
    with pytest.raises(TypeError, match="a must be an array, got a cuhouse HouseholderProduct"):
        cuhouse.HouseholderProduct.from_lapack(h, on(any_xp, numpy.ones(1)))
