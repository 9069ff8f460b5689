"""Runs every raw kernel once per dtype on small, awkward sizes, for
compute-sanitizer (``tools/gpu_check.sh``); exits non-zero if a kernel's
result differs from its NumPy twin.

CuPy's memory pool is switched off so that every array is its own
``cudaMalloc`` and memcheck sees an access past the end of any of them.
"""
import sys

import numpy


def main():
    import cupy

    from cuhouse._gpu import primitives as _primitives, raw_kernels as _kernels

    cupy.cuda.set_allocator(None)
    rng = numpy.random.default_rng(0)
    failures = []

    def check(name, got, expected, tol):
        got = cupy.asnumpy(got)
        scale = max(float(numpy.abs(expected).max()), 1.0)
        if got.shape != expected.shape or not numpy.allclose(got, expected, rtol=0, atol=tol * scale):
            failures.append(name)

    for dtype in (numpy.float32, numpy.float64):
        tol = 1e-4 if dtype == numpy.float32 else 1e-11
        for rows, d in ((1, 1), (3, 7), (37, 129)):
            v = rng.standard_normal((rows, d)).astype(dtype)
            v[-1] = 0
            unit, norms = _kernels.row_norms(cupy.asarray(v), with_unit=True)
            expected_unit, expected = _primitives.unit_rows(v, numpy)
            check("row_norms {} {}x{}".format(dtype.__name__, rows, d), norms, expected, tol)
            check("unit_rows {} {}x{}".format(dtype.__name__, rows, d), unit, expected_unit, tol)
            check("normalize_rows {} {}x{}".format(dtype.__name__, rows, d),
                  _kernels.normalize_rows(cupy.asarray(v), cupy.asarray(expected)), expected_unit, tol)
        for count, k in ((3, 1), (5, 17), (2, 64), (2, 65), (1, 100)):
            y = rng.standard_normal((count, k, k + 3))
            y /= numpy.linalg.norm(y, axis=-1, keepdims=True)
            s = (numpy.triu(y @ numpy.swapaxes(y, -1, -2), 1) + 0.5 * numpy.eye(k)).astype(dtype)
            t = _kernels.upper_triangular_inverse(cupy.asarray(s))
            expected_t = _primitives.upper_triangular_inverse(s, numpy)
            check("triangular_inverse {} {}x{}^2".format(dtype.__name__, count, k), t, expected_t, tol)
            n = rng.standard_normal((count, k, k)).astype(dtype)
            check("cwy_gradient {} {}x{}^2".format(dtype.__name__, count, k),
                  _kernels.cwy_gradient_coefficients(cupy.asarray(expected_t), cupy.asarray(n)),
                  _primitives.cwy_gradient_coefficients(expected_t, n, numpy), tol * k)
    cupy.cuda.Device().synchronize()
    for name in failures:
        print("MISMATCH", name, file=sys.stderr)
    print("sanitizer_driver: {} kernel checks failed".format(len(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
