"""Input checks with clear messages (the memory probe is :mod:`cuhouse._memory`).

Every check raises ``TypeError`` (wrong kind of object or dtype) or
``ValueError`` (wrong shape or value) naming the argument, what was expected
and what was received. No check mutates its input.
"""

from collections import namedtuple

import numpy

from ._backend import (
    SUPPORTED_DTYPES,
    astype,
    backend_name,
    device_of,
    display_name,
    is_native,
    library_dtype,
    library_name,
    numpy_dtype,
    result_type,
    to_host,
    type_name,
)
from ._shapes import matmul_shape

_KINDS = "biufc"  # bool, signed, unsigned, float, complex


def as_array(x, name, xp, device=None):
    """``x`` as an array of module ``xp`` with a real or complex dtype.

    Lists and scalars go through ``xp.asarray`` (on ``device``, for a library
    with devices). A ``TypeError`` names what is refused: an array of another
    library or device than ``xp``'s (nothing is copied behind the caller's
    back), cuhouse matrices (whose ``__array__`` would densify them),
    ``None``, strings, objects that opt out of NumPy's array protocol with
    ``__array_ufunc__ = None``, SciPy sparse matrices, NumPy masked arrays,
    float16 and object data, and complex data on the generic path (neither
    NumPy nor CuPy), which computes in float32/float64. A torch tensor that
    requires grad is taken as it is: torch autograd runs through cuhouse's
    adjoints (:mod:`cuhouse._torch`).
    """
    if getattr(type(x), "_CUHOUSE_MATRIX", False):
        raise TypeError(
            "{} must be an array, got a cuhouse {}: compose matrices with A @ B, or pass its dense "
            "form {}.todense()".format(name, type(x).__name__, name)
        )
    if x is None or isinstance(x, (str, bytes)) or getattr(type(x), "__array_ufunc__", False) is None:
        raise TypeError("{} must be an array of real or complex numbers, got {}".format(name, type(x).__name__))
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
    library = library_name(x)
    if library is not None and library != backend_name(xp):
        held = backend_name(xp)
        raise TypeError(
            "cannot mix {} and {} arrays: {} is {} but the operator holds {}; cuhouse copies nothing between "
            "libraries or devices: convert it explicitly ({})".format(
                display_name(held),
                display_name(library),
                name,
                type_name(type(x)),
                held + ".ndarray" if held in ("numpy", "cupy") else held + " arrays",
                "cupy.asarray or cupy.asnumpy" if {library, held} == {"numpy", "cupy"} else "e.g. by DLPack",
            )
        )
    if library is None:
        try:
            x = xp.asarray(x) if device is None else xp.asarray(x, device=device)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(
                "{} must be an array of real or complex numbers, got {}: {}".format(name, type(x).__name__, exc)
            ) from None
    elif device is not None and device_of(x) != device:
        raise TypeError(
            "cannot mix devices: {} is on {} but the operator is on {}; cuhouse copies nothing between "
            "devices: move it explicitly (e.g. with .to(device))".format(name, device_of(x), device)
        )
    check_dtype(x.dtype, name)
    return x


def check_dtype(dtype, name):
    """``TypeError`` unless ``dtype`` (of any library) is bool, integer, float32, float64, complex64 or
    complex128 (either byte order)."""
    try:
        native = numpy_dtype(dtype).newbyteorder("=")
    except TypeError:  # no NumPy dtype of that name (torch.bfloat16, ...)
        native = None
    if native is None or native.kind not in _KINDS or (native.kind in "fc" and native not in SUPPORTED_DTYPES):
        raise TypeError(
            "{} has dtype {}; supported dtypes are float32, float64, complex64 and complex128 "
            "(bool and integer input is promoted as NumPy promotes it)".format(
                name, dtype if native is None else native
            )
        )


def float_dtype(dtype, xp=numpy):
    """The floating dtype used for data of ``dtype``: float and complex dtypes stay, the rest go to float64
    (a dtype of ``xp``)."""
    native = numpy_dtype(dtype).newbyteorder("=")
    return library_dtype(native if native in SUPPORTED_DTYPES else numpy.float64, xp)


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
    if numpy_dtype(v.dtype) not in SUPPORTED_DTYPES:
        v = astype(v, float_dtype(v.dtype, xp), xp)
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
    :class:`NormSummary` of ``norms``) saves the device-to-host transfer. Cost: O(n). On the
    generic path (neither NumPy nor CuPy) one synchronization, and none with ``check_finite=False``,
    which skips the zero-row check too: a zero row then acts as the identity.
    """
    if not is_native(xp):
        _generic_vector_norms(norms, xp, check_finite, allow_zero_rows, name)
        return
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


def cotangent(g, name, shape, xp, check_finite, device=None):
    """The gradient ``g`` fed to a vjp function: an array of module ``xp`` (on ``device``) of exactly
    ``shape``, finite (as ``X`` is) when ``check_finite``."""
    g = as_array(g, name, xp, device)
    if tuple(g.shape) != tuple(shape):
        raise ValueError(
            "{} must have the shape of the value it is the gradient of, {}, got shape {}".format(
                name, tuple(shape), tuple(g.shape)
            )
        )
    if check_finite and numpy_dtype(g.dtype).kind in "fc" and not bool(xp.all(xp.isfinite(g))):
        raise ValueError("{} must be finite; found NaN or Inf ({})".format(name, OPERAND_CHECK))
    return g


def product_operand(x, xp, op_name, op_shape, op_dtype, side, check_finite, name="X", device=None):
    """Validate X of ``op @ X`` (``side == "left"``) or ``X @ op`` for an operator
    of shape ``(..., rows, cols)`` and dtype ``op_dtype``; ``name`` is X's name in messages.

    The shapes follow :func:`cuhouse._shapes.matmul_shape`; NaN/Inf is a
    ``ValueError`` when ``check_finite``. Returns ``(x, cast)``: ``x`` as
    validated (its own dtype) and ``x`` in the result dtype,
    ``numpy.result_type`` of both (float64 for integer data); ``device`` is the operator's
    (see :func:`as_array`). Cost: O(size of X)
    for the finiteness check, O(1) otherwise.
    """
    x = as_array(x, name, xp, device)
    matmul_shape(op_shape, x.shape, side, op_name, name)
    # bool and integer data are finite (and the Array API's isfinite refuses bool)
    if check_finite and numpy_dtype(x.dtype).kind in "fc" and not bool(xp.all(xp.isfinite(x))):
        raise ValueError("{} must be finite; found NaN or Inf ({})".format(name, OPERAND_CHECK))
    return x, astype(x, float_dtype(result_type(xp, op_dtype, x.dtype), xp), xp)


def dense_matrix(a, name, xp):
    """A finite float matrix stack ``(..., rows, cols)`` with rows, cols >= 1, for the ``from_dense`` constructors."""
    a = as_array(a, name, xp)
    if a.ndim < 2 or 0 in tuple(a.shape[-2:]):
        raise ValueError(
            "{} must have shape (..., rows, cols) with rows, cols >= 1, got shape {}".format(name, tuple(a.shape))
        )
    a = astype(a, float_dtype(a.dtype, xp), xp)
    if not bool(xp.all(xp.isfinite(a))):
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


def _generic_vector_norms(norms, xp, check_finite, allow_zero_rows, name):
    """:func:`vector_norms` on the generic path: one host synchronization (none without checks)."""
    if not check_finite:
        return
    bad = ~xp.isfinite(norms)
    if not allow_zero_rows:
        bad = bad | (norms == 0)
    if not bool(xp.any(bad)):
        return
    if not bool(xp.all(xp.isfinite(norms))):
        raise ValueError(
            "{} must be finite; found NaN or Inf (pass check_finite=False to skip this check)".format(name)
        )
    where = tuple(int(i) for i in numpy.argwhere(to_host(norms == 0))[0])
    raise ValueError(
        "{} row {} is a zero vector; every Householder vector must be nonzero".format(
            name, where if len(where) > 1 else where[0]
        )
    )
