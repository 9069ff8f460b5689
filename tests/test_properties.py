"""Invariants on random well-conditioned inputs (hypothesis)."""

import numpy
from helpers import algorithm_names, assert_allclose, dense_reference, dtype_name, examples, on, to_numpy
from hypothesis import given, settings
from hypothesis import strategies as st

import cuhouse
from cuhouse.algorithms import ALGORITHMS

ALGORITHM_NAMES = ["auto"] + sorted(ALGORITHMS)


@st.composite
def products(draw, xp, dtype=None):
    """A HouseholderProduct on ``xp`` with well-conditioned (norm >= 0.5) vectors, and an X."""
    d = draw(st.integers(1, 40))
    n = draw(st.integers(1, d))
    dtype = dtype or draw(st.sampled_from([numpy.float32, numpy.float64]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = numpy.random.default_rng(seed)
    v = rng.standard_normal((n, d))
    v[:, 0] += numpy.where(v[:, 0] >= 0, 1.0, -1.0)  # keep every row away from zero
    algorithm = draw(st.sampled_from(["auto", *algorithm_names(xp)]))
    block = draw(st.one_of(st.none(), st.integers(1, 12)))
    m = draw(st.integers(1, 5))
    x = rng.standard_normal((d, m)).astype(dtype)
    return cuhouse.HouseholderProduct(on(xp, v, dtype=dtype), algorithm=algorithm, block_size=block), on(xp, x)


def _eps(dtype):
    return numpy.finfo(dtype).eps


def _dtype(h):
    """``h``'s dtype as NumPy's (torch.float32 -> float32)."""
    return numpy.dtype(dtype_name(h))


def test_transpose_undoes_product(any_xp):
    @settings(max_examples=examples(any_xp, 60), deadline=None)
    @given(products(any_xp))
    def check(hx):
        h, x = hx
        back = to_numpy(h.T @ (h @ x))
        x = to_numpy(x)
        d = h.shape[-1]
        assert numpy.abs(back - x).max() <= 50 * _eps(_dtype(h)) * d * max(1, numpy.abs(x).max())

    check()


def test_dense_is_orthogonal(any_xp):
    @settings(max_examples=examples(any_xp, 60), deadline=None)
    @given(products(any_xp))
    def check(hx):
        h, _ = hx
        q = to_numpy(h.todense())
        d = h.shape[-1]
        assert numpy.abs(q.T @ q - numpy.eye(d)).max() <= 50 * _eps(_dtype(h)) * d

    check()


def test_det_parity(any_xp):
    """det H against LU determinants of two dense forms, not against the (-1)**n it is computed as:
    the float64 sequential-loop reference (exactly the sign, |det| = 1 to float64 rounding) and H's
    own dense form (to H's rounding)."""

    @settings(max_examples=examples(any_xp, 60), deadline=None)
    @given(products(any_xp))
    def check(hx):
        h, _ = hx
        d = h.shape[-1]
        det = float(to_numpy(h.det()))
        sign, logabs = numpy.linalg.slogdet(dense_reference(h.vectors))
        assert det == sign and abs(logabs) <= 10 * numpy.finfo(numpy.float64).eps * d
        dense = to_numpy(h.todense()).astype(numpy.float64)
        assert abs(numpy.linalg.det(dense) - det) <= 50 * _eps(_dtype(h)) * d

    check()


def test_composition_is_associative(any_xp):
    @settings(max_examples=examples(any_xp, 60), deadline=None)
    @given(products(any_xp, dtype=numpy.float64), st.integers(0, 2**32 - 1))
    def check(hx, seed):
        h1, x = hx
        d = h1.shape[-1]
        rng = numpy.random.default_rng(seed)
        v2 = rng.standard_normal((rng.integers(1, d + 1), d)) + numpy.eye(1, d)
        h2 = cuhouse.HouseholderProduct(on(any_xp, v2))
        assert_allclose((h1 @ h2) @ x, h1 @ (h2 @ x), atol=1e-12 * d)
        assert_allclose((h1 @ h2.T) @ x, h1 @ (h2.T @ x), atol=1e-12 * d)

    check()


# NumPy only: complex data runs on NumPy and CuPy (complex on the generic path: test_complex.py).
@st.composite
def unitary_products(draw):
    """A complex HouseholderProduct with well-conditioned vectors, possibly conjugated or transposed, and a
    complex X."""
    d = draw(st.integers(1, 24))
    n = draw(st.integers(1, d))
    dtype = draw(st.sampled_from([numpy.complex64, numpy.complex128]))
    rng = numpy.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    v = rng.standard_normal((n, d)) + 1j * rng.standard_normal((n, d))
    v[:, 0] += numpy.where(v[:, 0].real >= 0, 1.0, -1.0)
    h = cuhouse.HouseholderProduct(
        v.astype(dtype),
        algorithm=draw(st.sampled_from(ALGORITHM_NAMES)),
        block_size=draw(st.one_of(st.none(), st.integers(1, 12))),
    )
    view = draw(st.sampled_from(["", "T", "H", "conj"]))
    h = {"": h, "T": h.T, "H": h.H, "conj": h.conj()}[view]
    m = draw(st.integers(1, 4))
    x = (rng.standard_normal((d, m)) + 1j * rng.standard_normal((d, m))).astype(dtype)
    return h, x


@settings(max_examples=60, deadline=None)
@given(unitary_products())
def test_unitary_products(hx):
    """H^H H = I, H.inv() undoes H, det is (-1)^n of modulus one, to 50 eps d."""
    h, x = hx
    d = h.shape[-1]
    tol = 50 * _eps(h.dtype) * d
    q = h.todense()
    assert numpy.abs(q.conj().T @ q - numpy.eye(d)).max() <= tol
    assert numpy.abs(h.inv() @ (h @ x) - x).max() <= tol * max(1, numpy.abs(x).max())
    assert h.det() == (-1) ** h.n_reflections
    assert abs(numpy.linalg.det(q.astype(numpy.complex128)) - (-1) ** h.n_reflections) <= 1e-3
