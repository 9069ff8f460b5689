"""Compact WY with level-3 T matrices from raw vectors, the default algorithm.

For a block V of k rows (any lengths, not normalized), with the Gram matrix
``G = V V^T``: ``S = diag(G)/2 + striu(G)``, ``T = S^{-1}`` and
``P = I - V^T T V``. This is LAPACK's ``larft`` with ``tau_i = 2 / v_i^T v_i``,
so no normalization pass is needed. The T matrices of all blocks come from one
batched triangular inverse; each block is applied by two skinny GEMMs (per
stored part: a structured layout's block touches only X's rows from its first
reflector on) and one k x k product. Merging adjacent blocks is the same
formula with a larger k, so the block size the plan picks is also the merge
depth.

On NumPy, for one matrix in the full layout and a 2-D X, both run as direct
BLAS calls (SciPy's ``?gemm``): each Gram matrix as a GEMM (NumPy's matmul
would pick SYRK, 1.6x slower at these shapes), ``X -= V^T U`` as one GEMM with
beta = 1 (no temporary, no subtraction pass), T by ``?trtri`` in place when
first needed: a product of one column solves ``S U = V X`` by ``?trsv`` and
subtracts by ``?gemv``, with no T at all (at d = 128, one ``?trtri`` of a
32 x 32 triangle, 3 us, costs more than the four solves of a fresh product).

S is built in three places that stay apart on purpose (a test holds them to
one S: ``test_the_three_builds_of_s_agree``): :func:`_build_numpy` (one NumPy
matrix, full layout) writes each Gram matrix by ``?gemm`` into S's own memory,
multiplies the weights in place and adds the zero-row term only when a
diagonal entry is zero (a test NumPy makes without a sync); :func:`build`
(NumPy and CuPy, any layout, batch and identity mask) fills one stack of Grams
with ``out=`` and masks identity factors in place, adding the zero-row term
always on CuPy (no host sync); :func:`cuhouse.algorithms.portable.gram_factor`
(the Array API alone) is functional and differentiable: no ``out=`` nor
in-place update (torch autograd, ``vmap``), and the zero-row term a constant
times an indicator, so that dS/dG is the mask everywhere. Its functional form
on the direct path's Grams measured 6.2 against 2.3 us at d = 64 and 11.5
against 3.8 us at d = 256 (k = 32, float32, one thread), of a 20 / 120 us build (T included).

Cost: build O(n k d) (half for a structured layout) in O(log k) batched
steps; apply O(n d m + n k m) in 3 n/k GEMMs (half the flops for a structured
layout); backward about three times apply, all GEMMs.
"""

import functools
from collections import namedtuple

import numpy

from .._gpu import primitives as _primitives
from . import _cached, _gemm, _layout
from ._gemm import swap
from ._layout import FULL
from ._steps import application_order, column_major, empty_in_order, sweep_buffer, writable

_FormFields = namedtuple("CWYForm", "blocks t s active layout n cache")


class Form(_FormFields):
    """The :class:`~._layout.Block` list ``blocks``, T matrices ``t`` and their
    inverses ``s`` ``(..., n/k, k, k)`` (the last block padded with decoupled
    rows), ``active`` ``(..., n)`` (``None``, or False for identity factors),
    the ``layout``, the number ``n`` of reflections, and a ``cache`` dict for the
    cached apply modes (:mod:`._cached`: ``W = M V``, captured graphs).

    A form built with ``t = None`` (:func:`_build_numpy`: one NumPy matrix in
    the full layout) makes its T matrices from ``s`` at the first read of
    ``t`` (``?trtri`` per block, kept in ``cache``): a product with one
    column solves with ``S`` instead (:func:`_apply_numpy`) and never needs
    them. Two threads reading ``t`` at once both compute the same bits."""

    __slots__ = ()

    @property
    def blocks(self):
        blocks = tuple.__getitem__(self, 0)
        if blocks is None:  # a form of _build_numpy: the Block list made at the first read
            blocks = self.cache.get("blocks")
            if blocks is None:
                blocks = self.cache["blocks"] = _layout.blocks(self.cache["y"], self.s.shape[-1], FULL, numpy)
        return blocks

    @property
    def t(self):
        t = tuple.__getitem__(self, 1)
        if t is None:
            t = self.cache.get("t")
            if t is None:  # S is exactly zero below its diagonal: ?trtri in place on a copy, no mask
                t = self.cache["t"] = _primitives.upper_triangular_inverse_in_place(self.s.copy())
        return t


def build(y, block_size, xp, layout=FULL, identity=None):
    """The T matrix of every block: the Gram matrices (one batched GEMM over the full-length blocks
    of a contiguous ``y``, else one GEMM per block), one batched inverse. O(n k d).

    ``identity`` ``(..., n)`` (optional) marks reflections that are identity
    factors whatever their stored entries (LAPACK's ``tau == 0``).
    """
    if xp is numpy and layout == FULL and identity is None and y.ndim == 2 and y.dtype in _gemm.BLAS_DTYPES:
        return _build_numpy(y, block_size)
    blocks = _layout.blocks(y, block_size, layout, xp)
    k = blocks[0].last - blocks[0].first
    batch = y.shape[:-2]
    active = None if identity is None else ~identity
    if len(blocks) == 1:  # one block: its Gram matrix is the whole stack
        g = _gemm.gram(blocks[0], xp)[..., None, :, :]
    else:
        g = xp.zeros(batch + (len(blocks), k, k), dtype=y.dtype)
        whole = y.shape[-2] // k
        batched = layout == FULL and y.flags.c_contiguous and whole > 1
        if batched:
            stacked = y[..., : whole * k, :].reshape(batch + (whole, k, y.shape[-1]))
            xp.matmul(stacked, swap(stacked, xp), out=g[..., :whole, :, :])
        for j, block in enumerate(blocks):
            if not (batched and j < whole):
                kb = block.last - block.first
                g[..., j, :kb, :kb] = _gemm.gram(block, xp)
    if active is not None:
        for j, block in enumerate(blocks):
            kb = block.last - block.first
            a = active[..., block.first : block.last].astype(y.dtype)
            g[..., j, :kb, :kb] *= a[..., :, None] * a[..., None, :]
    weights, half_eye = _s_weights(k, g.dtype, xp)
    s = g * weights  # S = striu(G) + diag(G)/2 in one pass, no index arrays
    # a zero row (an identity factor, or block padding) gets s_ii = 1/2: decoupled, it acts as nothing
    diagonal = g.diagonal(axis1=-2, axis2=-1)  # the array method: no function dispatch
    if xp is not numpy or not diagonal.all():  # (NumPy: tested first, no sync to avoid)
        s += (diagonal == 0)[..., None] * half_eye
    return Form(blocks, _primitives.upper_triangular_inverse(s, xp), s, active, layout, y.shape[-2], {})


def _build_numpy(y, block_size):
    """:func:`build` of one NumPy matrix ``y`` ``(n, d)`` in the full layout: each block's Gram matrix
    as one BLAS ``?gemm`` written into ``S`` (:func:`._gemm.gram_gemm`; NumPy's matmul would run
    SYRK, slower at these shapes), ``S = G * W`` in one pass over all blocks; the T matrices (one
    ``?trtri`` per block) only when first read (see :class:`Form`). The blocks' rows are kept as
    Fortran views ``V_j^T`` ``(d, kb)`` (``cache["columns"]``, what the BLAS calls of
    :func:`_apply_numpy` take; a row-major ``y``'s come from one reshaped view, 0.1 us a block
    against 0.6 for a :class:`~._layout.Block`), the Block list only when first read. Cost:
    O(n k d), 1 call a block (2 with T)."""
    n, d = y.shape
    k = min(block_size, n)
    whole = n // k
    weights, half_eye = _numpy_s_weights(k, y.dtype)
    s = numpy.empty((-(-n // k), k, k), dtype=y.dtype)
    gemm = _gemm.blas("gemm", y.dtype)
    if y.flags.c_contiguous:  # each block's rows^T is a Fortran matrix: rows @ rows^T by one ?gemm, no wrapper
        columns = list(y[: whole * k].reshape(whole, k, d).transpose(0, 2, 1))
        for rows, sj in zip(columns, s.transpose(0, 2, 1)):  # (alpha, a, b, beta, c, trans_a, trans_b, overwrite_c)
            gemm(1.0, rows, rows, 0.0, sj, 1, 0, 1)  # S_j^T = rows^T rows
    else:
        columns = [y[first : first + k].T for first in range(0, whole * k, k)]
        for j, rows in enumerate(columns):
            _gemm.gram_gemm(rows.T, out=s[j])
    if whole * k < n:  # the last block, padded with decoupled rows (a 1 on the diagonal: W halves it)
        rows = y[whole * k :]
        columns.append(rows.T)
        s[-1] = _numpy_eye(k, y.dtype)
        s[-1, : n - whole * k, : n - whole * k] = _gemm.gram_gemm(rows)
    numpy.multiply(s, weights, out=s)
    diagonal = s.diagonal(axis1=-2, axis2=-1)
    if numpy.count_nonzero(diagonal) != diagonal.size:  # zero rows: s_ii = 1/2, as in build
        s += (diagonal == 0)[..., None] * half_eye
    return Form(None, None, s, None, FULL, n, {"y": y, "columns": columns})


def _columns(f):
    """The blocks' rows of the form ``f`` as Fortran views ``V_j^T`` ``(d, kb)``, in block order."""
    columns = f.cache.get("columns")
    return [block.tail.T for block in f.blocks] if columns is None else columns


@functools.lru_cache(maxsize=64)
def _numpy_eye(k, dtype):
    eye = numpy.eye(k, dtype=dtype)
    eye.flags.writeable = False
    return eye


def _s_weights(k, dtype, xp):
    """``(W, I/2)``, ``(k, k)`` each, with ``S = G * W`` the compact WY ``S`` of a Gram matrix G
    (ones strictly above the diagonal, 1/2 on it). Memoized on NumPy."""
    if xp is numpy:
        return _numpy_s_weights(k, numpy.dtype(dtype))
    half_eye = 0.5 * xp.eye(k, dtype=dtype)
    return xp.triu(xp.ones((k, k), dtype=dtype), 1) + half_eye, half_eye


@functools.lru_cache(maxsize=64)
def _numpy_s_weights(k, dtype):
    weights, half_eye = _primitives.upper_mask(k, dtype, 0.5), 0.5 * numpy.eye(k, dtype=dtype)
    half_eye.flags.writeable = False
    return weights, half_eye


def _block_rows_times(f, j, x, xp):
    """``V_j x[start:]`` with identity factors' rows zeroed: ``(..., kb, m)``."""
    block = f.blocks[j]
    z = _gemm.rows_times(block, x, xp)
    if f.active is not None:
        z *= f.active[..., block.first : block.last, None]
    return z


def apply(f, x, transpose, xp, mode="steps"):
    """``H @ X`` (``H.T @ X``): per block ``X <- X - V^T (T (V X))``. O(n d m).

    The result keeps X's memory order: for the column-major view of a row-major
    ``X @ H`` operand every GEMM runs transposed (:func:`._gemm.matmul`), so
    neither X nor the result is copied across orders.

    ``mode`` (the plan's ``apply``): ``"steps"`` runs the three GEMMs a block
    below; ``"gemm"`` and ``"graph"`` the cached modes of :mod:`._cached` (two
    GEMMs a block; on CuPy one CUDA graph for an unbatched 2-D X), which take a
    row-major X, or any X with full-length rows (contiguous GEMM operands
    either way); other X run the steps.
    """
    if mode != "steps" and (f.layout == FULL or not column_major(x)):
        batch = _batch(f, x)
        if mode == "graph" and xp.__name__ != "numpy" and _cached.graphable(f, x, batch):
            return _cached.apply_graph(f, x, transpose, xp)
        return _cached.apply_gemm(f, x, transpose, xp, batch)
    if xp is numpy and direct(f, x):
        return _apply_numpy(f, x, transpose)
    out = writable(x, _batch(f, x), xp)
    work = xp.empty_like(out)
    for j in application_order(len(f.blocks), transpose):
        block = f.blocks[j]
        kb = block.last - block.first
        tj = f.t[..., j, :kb, :kb]
        z = _block_rows_times(f, j, out, xp)
        _gemm.subtract_rows_transposed(block, _gemm.matmul(swap(tj, xp) if transpose else tj, z, xp), out, xp, work)
    return out


def direct(f, x):
    """Whether :func:`apply` runs the NumPy form ``f`` on the NumPy ``x`` as direct BLAS calls
    (:func:`_apply_numpy`): a :func:`direct_form` and a 2-D X of its float32/float64 dtype with at
    least one column. O(1)."""
    return direct_form(f) and x.ndim == 2 and x.shape[-1] > 0 and x.dtype == f.s.dtype and x.dtype in _gemm.BLAS_DTYPES


def direct_form(f):
    """Whether the NumPy form ``f`` is one matrix in the full layout with no identity factors: then
    :func:`apply` (``mode="steps"``) runs :func:`_apply_numpy` on every X that :func:`direct` takes.
    O(1)."""
    return f.layout == FULL and f.active is None and f.s.ndim == 3


# From this many entries of a row-major X on, Z = V X runs through NumPy's matmul (OpenBLAS's CBLAS
# entry) rather than SciPy's ?gemm: the same product measured 7-14% faster there at d = 4096, m = 32
# (k = 8..32, single-threaded OpenBLAS 0.3.31), while below about d = 2048 the direct call
# is 0.5-1 us (2-25%) faster.
NUMPY_PRODUCT_FROM = 4096 * 32


def _apply_numpy(f, x, transpose):
    """:func:`apply` of one NumPy form in the full layout to a 2-D X of its dtype: per block
    ``Z = V X``, ``U = T Z`` and ``X -= V^T U`` (beta = 1), three BLAS ``?gemm`` calls on Fortran
    views in X's memory order, ``Z`` and ``U`` written into two buffers made once (through NumPy's
    matmul the same products cost about 2 us more a call: at d = 1024, k = 16, m = 32, 64 blocks,
    1.46 against 1.22 ms an apply, the same bits). One column (m = 1) solves ``S U = V X``
    instead (``?trsv``, no T matrices: their ``?trtri`` costs more than the solves of a fresh
    product, and a solve of one column is no slower than the product with T) and subtracts
    with ``?gemv``. A column-major X of many columns runs in panels (:func:`panel_columns`).
    Cost: O(n d m), 3 calls a block (a panel)."""
    out = x.copy(order="F" if x.strides[0] < x.strides[1] else "C")  # column_major(x), inline
    if out.shape[1] == 1:
        return _apply_numpy_column(f, out, transpose)
    steps = _steps(f, "t")  # T made from S at the first read
    k = f.s.shape[-1]
    gemm = _gemm.blas("gemm", out.dtype)
    m = out.shape[1]
    order = steps if transpose else steps[::-1]  # application_order
    # (alpha, a, b, beta, c, trans_a, trans_b, overwrite_c), positional: keywords cost 0.3 us a call
    if out.flags.f_contiguous:  # Z = V X, U = T Z, X -= V^T U on column-major arrays, a panel at a time
        width = panel_columns(out.shape[0], m)
        panels = [out] if width == m else [out[:, first : first + width] for first in range(0, m, width)]
        z, u = numpy.empty((width, k), dtype=out.dtype).T, numpy.empty((width, k), dtype=out.dtype).T
        trans_t = 0 if transpose else 1
        partial = steps[-1][0] if steps[-1][0].shape[1] < k else None  # the last block's V^T if it has fewer rows
        for panel in panels:  # contiguous (d, width) views of out
            whole = panel.shape[1] == width
            for vt, tjt in order:  # V_j^T (d, kb), T_j^T (kb, kb) as Fortran matrices
                zj, uj = (z, u) if whole and vt is not partial else (None, None)  # else new Z, U
                zj = gemm(1.0, vt, panel, 0.0, zj, 1, 0, 1)
                uj = gemm(1.0, tjt, zj, 0.0, uj, trans_t, 0, 1)
                result = gemm(-1.0, vt, uj, 1.0, panel, 0, 0, 1)  # panel is contiguous: written in place
                if result is not panel:  # the wrapper copied an array it could not write (as the column path)
                    panel[...] = result
        return out
    # row-major X: the same products transposed, Z^T = X^T V^T, U^T = Z^T T^T, X^T -= U^T V
    zt, ut = numpy.empty((m, k), dtype=out.dtype, order="F"), numpy.empty((m, k), dtype=out.dtype, order="F")
    streamed = out.size >= NUMPY_PRODUCT_FROM
    xt = out.T
    trans_t = 1 if transpose else 0
    last = steps[-1][0]  # the last block's V^T: its Z^T and U^T are the buffers' first kb columns (contiguous)
    kb = last.shape[1]
    z_last, u_last = (zt, ut) if kb == k else (zt[:, :kb], ut[:, :kb])
    for vt, tjt in order:
        zj, uj = (z_last, u_last) if vt is last else (zt, ut)
        if streamed:  # Z = V X by NumPy's matmul (CBLAS) into Z^T's memory
            numpy.matmul(vt.T, out, out=zj.T)
        else:
            zj = gemm(1.0, xt, vt, 0.0, zj, 0, 0, 1)
        uj = gemm(1.0, zj, tjt, 0.0, uj, 0, trans_t, 1)
        result = gemm(-1.0, uj, vt, 1.0, xt, 0, 1, 1)  # xt is Fortran-contiguous: written in place
        if result is not xt:
            xt[...] = result
    return out


# A column-major X ``(d, m)`` of more than PANEL_ENTRIES entries (d * m) runs in panels of PANEL_ENTRIES // d
# columns (at least PANEL_MIN_COLUMNS, at most m), each through every block before the next: a panel stays in
# the cache between its three GEMMs and from block to block, where the whole X is streamed from memory three
# times a block. Measured (2-core AMD EPYC, OpenBLAS 0.3.30, float32, one thread, n = 64 reflections, k = 32),
# this function alone (the copy of X included) in panels / on the whole X / on a row-major X^T (d, m):
#   d = 256, m = 65536:  58-68 ms (panels of 256-2048 columns alike) / 115-121 (X @ H) / 89-99 ms
#   d = 1024, m = 65536: 231-265 ms (256-512 columns) / 375-424 / 320-327 ms
#   d = 4096, m = 8192:  110-132 ms (128-256 columns; 64 columns: 133-146) / 165 / 147-171 ms
# (X @ H itself, the X check included: 69-75 ms at d = 256 and 282-315 ms at d = 1024, docs/design.rst.)
# A row-major X's panels (strided views of X^T) measured no faster (301-373 ms at d = 1024): it runs whole.
PANEL_ENTRIES = 1 << 19
PANEL_MIN_COLUMNS = 128


def panel_columns(d, m):
    """The columns of :func:`_apply_numpy`'s panels of a column-major X ``(d, m)``: ``m`` (one panel)
    up to ``PANEL_ENTRIES`` entries, else ``max(PANEL_ENTRIES // d, PANEL_MIN_COLUMNS)`` and at most
    ``m`` (the last panel may be narrower). Depends on the shape only, so the same X gives the same
    bits. O(1)."""
    if d * m <= PANEL_ENTRIES:
        return m
    return min(m, max(PANEL_ENTRIES // d, PANEL_MIN_COLUMNS))


def _steps(f, name):
    """``[(V_j^T, M_j^T), ...]`` in block order for the NumPy form ``f`` of :func:`_apply_numpy`, with
    ``M = f.t`` (``name == "t"``) or ``f.s`` (``"s"``): the Fortran views its BLAS calls take
    (``M_j^T`` cut to the block's ``kb`` rows), made once per form and kept in ``f.cache`` (a
    view costs 0.1-0.2 us a block a call). Two threads making them at once make the same views."""
    key = ("steps", name)
    steps = f.cache.get(key)
    if steps is None:
        matrices = f.t if name == "t" else f.s
        columns = _columns(f)
        steps = list(zip(columns, matrices.transpose(0, 2, 1)))  # M_j^T: the stack's views, made in C
        kb = columns[-1].shape[1]
        if kb < matrices.shape[-1]:  # the last block's rows only
            steps[-1] = columns[-1], matrices[-1, :kb, :kb].T
        f.cache[key] = steps
    return steps


def _apply_numpy_column(f, out, transpose):
    """:func:`_apply_numpy` of one column ``out`` ``(d, 1)``, in place: per block ``z = V out``,
    ``S z' = z`` (``S^T`` for ``H^T``) by ``?trsv`` in place, ``out -= V^T z'`` by ``?gemv`` (beta = 1).
    Returns ``out``. Cost: ``4 n d + n k`` flops (``n`` reflections in blocks of ``k``) in three BLAS
    calls a block (``z = V out`` by ``?gemv`` into one buffer ``(k,)``: NumPy's matmul cost 1-2 us
    more a call, the same bits)."""
    column = out[:, 0]  # contiguous in either memory order: ?gemv (overwrite_y) writes it in place
    trsv, gemv = _gemm.blas("trsv", out.dtype), _gemm.blas("gemv", out.dtype)
    trans = 0 if transpose else 1  # S^T (lower, Fortran-ordered) as stored: trans = 1 solves with S
    k = f.s.shape[-1]
    buffer = numpy.empty(k, dtype=out.dtype)
    steps = _steps(f, "s")
    for vt, st in steps if transpose else reversed(steps):  # V_j^T (d, kb), S_j^T (kb, kb): application_order
        kb = vt.shape[1]
        z = buffer if kb == k else buffer[:kb]
        # (alpha, a, x, beta, y, offx, incx, offy, incy, trans, overwrite_y): rows^T as a Fortran matrix
        z = gemv(1.0, vt, column, 0.0, z, 0, 1, 0, 1, 1, 1)  # z = V out (trans = 1)
        z = trsv(st, z, 1, 0, 1, trans, 0, 1)  # (a, x, incx, offx, lower, trans, diag, overwrite_x)
        result = gemv(-1.0, vt, z, 1.0, column, 0, 1, 0, 1, 0, 1)
        if result is not column:  # the wrapper copied a column it could not write (as subtract_gemm)
            column[...] = result
    return out


def _batch(f, x):
    """The batch shape of ``H @ x``."""
    if f.t.ndim == 3 and x.ndim == 2:  # one matrix, one X: no broadcasting to work out (3 us at small sizes)
        return ()
    return numpy.broadcast_shapes(f.t.shape[:-3], x.shape[:-2])


def backward(f, out, dout, transpose, xp, store_inputs=False):
    """Adjoint of :func:`apply` given its output: ``(dV, dX)``, all GEMMs, no per-vector loop.

    The applied block is ``Q = I - V^T M V`` (``M = T``, or ``T^T`` when
    ``transpose``). The blocks are swept from the last applied to the first,
    carrying ``B = [A | G]`` ``(..., d, 2m)``, a block's output and the gradient
    there; ``B <- B - V^T U`` with ``U = M^T V B`` undoes the block, and its
    gradient is ``dV = [-U_G, U_A] B^T + (C + U_G U_A^T) V``, which needs no
    block input. The derivation, and the coefficients ``C`` of
    :func:`cuhouse._gpu.primitives.cwy_gradient_coefficients`, are on the
    design page (``docs/design.rst``, "Compact WY and its backward pass"). All
    the k x k work and the ``C V`` products run batched over blocks after the
    sweep. Each row of dV is orthogonal to its vector in the full and
    trapezoidal layouts (not in ``"unit"``, whose implicit 1 is fixed).

    ``store_inputs`` (full layout only; see :func:`cuhouse.plan.store_block_inputs`)
    keeps every block's ``B`` (extra ``n/k * d * 2m`` values) and forms the
    ``[-U_G, U_A] B^T`` products as one batched GEMM; otherwise they run inside
    the sweep. dV ``(..., n, d)`` is zero where the layout stores nothing and
    for identity factors. Cost: 3 GEMMs of O(k (d - start) m) per block plus
    O(n k d) for ``C V``.
    """
    n_blocks, k = f.t.shape[-3], f.t.shape[-1]
    m = out.shape[-1]
    d = out.shape[-2]
    m_factor = swap(f.t, xp) if transpose else f.t
    b = sweep_buffer(out, dout, xp)  # out's batch already includes V's
    batch = b.shape[:-2]
    z = xp.zeros(batch + (n_blocks, k, 2 * m), dtype=b.dtype)
    u = xp.zeros_like(z)
    store_inputs = store_inputs and f.layout == FULL
    stored = empty_in_order(batch + (n_blocks, d, 2 * m), b.dtype, b, xp) if store_inputs else None
    dy = xp.zeros(batch + (f.n, d), dtype=b.dtype)
    work = xp.empty_like(b)
    for j in reversed(application_order(n_blocks, transpose)):
        block = f.blocks[j]
        kb = block.last - block.first
        zj = _block_rows_times(f, j, b, xp)
        z[..., j, :kb, :] = zj
        uj = _gemm.matmul(swap(m_factor[..., j, :kb, :kb], xp), zj, xp)
        u[..., j, :kb, :] = uj
        if store_inputs:
            stored[..., j, :, :] = b
        else:
            xp.matmul(
                _explicit_coefficients(uj, m, xp),
                swap(b[..., block.start :, :], xp),
                out=dy[..., block.first : block.last, block.start :],
            )
        _gemm.subtract_rows_transposed(block, uj, b, xp, work)
    if store_inputs:
        explicit = _explicit_coefficients(u, m, xp) @ swap(stored, xp)  # (..., nb, k, d)
        dy[...] = explicit.reshape(batch + (n_blocks * k, d))[..., : f.n, :]
    u_a, u_g = u[..., :m], u[..., m:]
    y_a_in = -((swap(f.s, xp) if transpose else f.s) @ u_a)  # V A_in = -M^{-1} U_A
    y_g = z[..., m:]
    n_mat = y_a_in @ swap(y_g, xp) if transpose else y_g @ swap(y_a_in, xp)
    coefficients = _primitives.cwy_gradient_coefficients(f.t, n_mat, xp) + u_g @ swap(u_a, xp)
    # d(diag(G)/2): R_ii v_i, with R = T^T N T^T; S_ii is a constant for zero rows and identity factors
    r_diag = ((swap(f.t, xp) @ n_mat) * f.t).sum(axis=-1)
    idx = xp.arange(k)
    coefficients[..., idx, idx] += r_diag
    for j, block in enumerate(f.blocks):
        kb = block.last - block.first
        c = coefficients[..., j, :kb, :kb]
        if f.active is not None:
            c = c * f.active[..., None, block.first : block.last]
        _gemm.add_coefficients_times_rows(block, c, dy, xp)
    if f.active is not None:
        dy *= f.active[..., None]
    if f.layout != FULL:
        _layout.mask_heads(dy, k, f.layout, xp)
    return dy, b[..., m:]


def _explicit_coefficients(u, m, xp):
    """``[-U_G, U_A]`` ``(..., k, 2m)`` from ``U = [U_A | U_G]``."""
    return xp.concatenate([-u[..., m:], u[..., :m]], axis=-1)
