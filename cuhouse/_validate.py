"""Input checks with clear messages (the memory probe is :mod:`cuhouse._memory`).

Every check raises ``TypeError`` (wrong kind of object or dtype) or
``ValueError`` (wrong shape or value) naming the argument, what was expected
and what was received. No check mutates its input.
"""

from collections import namedtuple

import numpy

from ._backend import SUPPORTED_DTYPES, is_cupy_array, to_host, type_name
from ._shapes import matmul_shape

_KINDS = "biufc"  # bool, signed, unsigned, float, complex


def as_array(x, name, xp):
    """``x`` as an array of module ``xp`` with a real or complex dtype.

    Lists and scalars go through ``xp.asarray``. A ``TypeError`` names what
    is refused: cuhouse matrices (whose ``__array__`` would densify them),
    ``None``, strings, objects that opt out of NumPy's array protocol with
    ``__array_ufunc__ = None``, torch tensors that require grad, SciPy sparse
    matrices, NumPy masked arrays, float16 and object data.
    """
    if getattr(type(x), "_CUHOUSE_MATRIX", False):
        raise TypeError(
            "{} must be an array, got a cuhouse {}: compose matrices with A @ B, or pass its dense "
            "form {}.todense()".format(name, type(x).__name__, name)
        )
    if x is None or isinstance(x, (str, bytes)) or getattr(type(x), "__array_ufunc__", False) is None:
        raise TypeError("{} must be an array of real or complex numbers, got {}".format(name, type(x).__name__))
    if type(x).__module__.split(".")[0] == "torch" and getattr(x, "requires_grad", False):
        raise TypeError(
            "{} is a torch.Tensor that requires grad; the array API of cuhouse does not carry torch "
            "gradients: use cuhouse.torch (householder_matmul, SVDLinear) for autograd, or pass "
            "{}.detach()".format(name, name)
        )
    if type(x).__module__.startswith("scipy.sparse"):
        raise TypeError(
            "{} is a SciPy sparse {}; cuhouse takes dense arrays: pass {}.toarray()".format(
                name, type(x).__name__, name
            )
        )
    if isinstance(x, numpy.ma.MaskedArray):
        raise TypeError(
            "{} is a numpy.ma.MaskedArray; masked arrays are not supported: pass {}.filled(value) or {}.data".format(
                name, name, name
            )
        )
    if isinstance(x, numpy.ndarray) and type(x) is not numpy.ndarray and xp is numpy:
        x = numpy.asarray(x)  # a subclass such as numpy.matrix: its plain ndarray view
    if not isinstance(x, xp.ndarray):
        if isinstance(x, numpy.ndarray) or is_cupy_array(x):
            raise TypeError(
                "cannot mix NumPy and CuPy arrays: {} is {} but the operator holds "
                "{}.ndarray; move the data explicitly with cupy.asarray or "
                "cupy.asnumpy".format(name, type_name(type(x)), xp.__name__)
            )
        try:
            x = xp.asarray(x)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                "{} must be an array of real or complex numbers, got {}: {}".format(name, type(x).__name__, exc)
            ) from None
    check_dtype(x.dtype, name)
    return x


def check_dtype(dtype, name):
    """``TypeError`` unless ``dtype`` is bool, integer, float32, float64, complex64 or complex128
    (either byte order)."""
    dtype = numpy.dtype(dtype).newbyteorder("=")
    if dtype.kind not in _KINDS or (dtype.kind in "fc" and dtype not in SUPPORTED_DTYPES):
        raise TypeError(
            "{} has dtype {}; supported dtypes are float32, float64, complex64 and complex128 "
            "(bool and integer input is promoted as NumPy promotes it)".format(name, dtype)
        )


def float_dtype(dtype):
    """The native floating dtype used for data of ``dtype``: float and complex dtypes stay, the rest go to float64."""
    dtype = numpy.dtype(dtype).newbyteorder("=")
    return dtype if dtype in SUPPORTED_DTYPES else numpy.dtype(numpy.float64)


def vectors(v, xp, name="vectors"):
    """Validate Householder vectors of shape ``(..., n, d)`` with 1 <= n <= d.

    Returns ``v`` as a float array: the caller's array itself when it is
    already float32/float64. Values are checked by :func:`vector_norms`,
    on the norms the caller computes anyway. Cost: O(1) (a cast for
    integer input).
    """
    v = as_array(v, name, xp)
    if v.ndim < 2:
        raise ValueError(
            "{} must have shape (..., n, d) with one vector per row, got an array of shape {}".format(
                name, tuple(v.shape)
            )
        )
    n, d = v.shape[-2:]
    if d == 0 or n == 0:
        raise ValueError(
            "{} must have 1 <= n <= d and d >= 1, got shape {} (n={}, d={})".format(name, tuple(v.shape), n, d)
        )
    if n > d:
        raise ValueError(
            "{} has n={} rows of length d={}; a Householder product needs 1 <= n <= d, got shape {}".format(
                name, n, d, tuple(v.shape)
            )
        )
    if v.dtype not in SUPPORTED_DTYPES:
        v = v.astype(float_dtype(v.dtype))
    return v


OPERAND_CHECK = "the matrix checks its operands: build it with check_finite=False to skip this check"
"""Where the finiteness check of an operand (X, B, dout) is switched off: the matrix's constructor."""


NormSummary = namedtuple("NormSummary", "finite zero largest smallest")
NormSummary.__doc__ = """Host facts about row norms: all ``finite``, some ``zero``, the ``largest``
norm and the ``smallest`` nonzero one (``inf`` when none is nonzero; NaN propagates)."""


def norm_summary(norms, xp):
    """The :class:`NormSummary` of ``norms`` ``(..., n)`` in one device-to-host transfer (on CuPy
    the one host synchronization that validating and building from these norms need). O(n)."""
    if norms.size == 0:
        return NormSummary(True, False, 0.0, float("inf"))
    facts = xp.stack(
        [
            xp.isfinite(norms).all().astype(numpy.float64),
            (norms == 0).any().astype(numpy.float64),
            xp.max(norms).astype(numpy.float64),
            xp.min(xp.where(norms == 0, numpy.inf, norms)).astype(numpy.float64),
        ]
    )
    finite, zero, largest, smallest = to_host(facts).tolist()
    return NormSummary(bool(finite), bool(zero), largest, smallest)


def vector_norms(norms, xp, check_finite, allow_zero_rows=False, name="vectors", summary=None):
    """Check the row norms ``(..., n)`` of Householder vectors: a NaN/Inf norm
    (only when ``check_finite``) or a zero row (unless ``allow_zero_rows``) is a
    ``ValueError``. A norm is finite exactly when its row is. ``summary`` (a
    :class:`NormSummary` of ``norms``) saves the device-to-host transfer. Cost: O(n).
    """
    if summary is None:
        summary = norm_summary(norms, xp)
    if check_finite and not summary.finite:
        raise ValueError(
            "{} must be finite; found NaN or Inf (pass check_finite=False to skip this check)".format(name)
        )
    if not allow_zero_rows:
        zero = norms == 0
        if summary.zero:
            where = tuple(int(i) for i in numpy.argwhere(to_host(zero))[0])
            raise ValueError(
                "{} row {} is a zero vector; every Householder vector must be nonzero".format(
                    name, where if len(where) > 1 else where[0]
                )
            )


def cotangent(g, name, shape, xp, check_finite):
    """The gradient ``g`` fed to a vjp function: an array of module ``xp`` of exactly ``shape``,
    finite (as ``X`` is) when ``check_finite``."""
    g = as_array(g, name, xp)
    if tuple(g.shape) != tuple(shape):
        raise ValueError(
            "{} must have the shape of the value it is the gradient of, {}, got shape {}".format(
                name, tuple(shape), tuple(g.shape)
            )
        )
    if check_finite and not bool(xp.isfinite(g).all()):
        raise ValueError("{} must be finite; found NaN or Inf ({})".format(name, OPERAND_CHECK))
    return g


def product_operand(x, xp, op_name, op_shape, op_dtype, side, check_finite, name="X"):
    """Validate X of ``op @ X`` (``side == "left"``) or ``X @ op`` for an operator
    of shape ``(..., rows, cols)`` and dtype ``op_dtype``; ``name`` is X's name in messages.

    The shapes follow :func:`cuhouse._shapes.matmul_shape`; NaN/Inf is a
    ``ValueError`` when ``check_finite``. Returns ``(x, cast)``: ``x`` as
    validated (its own dtype) and ``x`` in the result dtype,
    ``numpy.result_type`` of both (float64 for integer data). Cost: O(size of X)
    for the finiteness check, O(1) otherwise.
    """
    x = as_array(x, name, xp)
    matmul_shape(op_shape, x.shape, side, op_name, name)
    if check_finite and not bool(xp.isfinite(x).all()):
        raise ValueError("{} must be finite; found NaN or Inf ({})".format(name, OPERAND_CHECK))
    return x, x.astype(float_dtype(numpy.result_type(op_dtype, x.dtype)), copy=False)


def dense_matrix(a, name, xp):
    """A finite float matrix stack ``(..., rows, cols)`` with rows, cols >= 1, for the ``from_dense`` constructors."""
    a = as_array(a, name, xp)
    if a.ndim < 2 or 0 in a.shape[-2:]:
        raise ValueError(
            "{} must have shape (..., rows, cols) with rows, cols >= 1, got shape {}".format(name, tuple(a.shape))
        )
    a = a.astype(float_dtype(a.dtype), copy=False)
    if not bool(xp.isfinite(a).all()):
        raise ValueError("{} must be finite; found NaN or Inf".format(name))
    return a


def choice(value, name, options):
    """``ValueError`` unless ``value`` is one of ``options``."""
    if not isinstance(value, str) or value not in options:
        raise ValueError("{} must be one of {}, got {!r}".format(name, ", ".join(map(repr, options)), value))
    return value


def real_number(value, name):
    """``value`` as a Python float; ``TypeError`` unless it is a real scalar."""
    if not isinstance(value, (str, bytes)):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    raise TypeError("{} must be a real number, got {!r}".format(name, value))


def non_negative_real(value, name):
    """``value`` as a float; ``TypeError`` unless a real number, ``ValueError`` if negative or NaN."""
    if isinstance(value, (bool, str, bytes)) or not isinstance(value, (int, float, numpy.integer, numpy.floating)):
        raise TypeError("{} must be a real number, got {}".format(name, type(value).__name__))
    if not value >= 0:
        raise ValueError("{} must be a non-negative number, got {}".format(name, value))
    return float(value)


def positive_int(value, name, expected="a positive int"):
    """``value`` as an int >= 1; ``TypeError``/``ValueError`` saying ``expected`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, numpy.integer)):
        raise TypeError("{} must be {}, got {}".format(name, expected, type(value).__name__))
    if value < 1:
        raise ValueError("{} must be {}, got {}".format(name, expected, value))
    return int(value)


def positive_int_or_none(value, name):
    """``None`` or a positive int; ``TypeError``/``ValueError`` otherwise."""
    return None if value is None else positive_int(value, name, "a positive int or None")
