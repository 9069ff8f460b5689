"""Runs every raw kernel once per dtype on small, awkward sizes and exits
non-zero if a kernel's result differs from its NumPy twin; and drives that
run (or any command) on the CPU under the sanitizer modes.

    python tools/sanitizer_driver.py                 # on CuPy: for compute-sanitizer (tools/gpu_check.sh)
    python tools/sanitizer_driver.py --on-cpu MODE   # on the CPU stand-in of CuPy, MODE below
    python tools/sanitizer_driver.py --on-cpu plain -- python -m pytest -m gpu tests/test_kernels.py

On a device, CuPy's memory pool is switched off so that every array is its
own ``cudaMalloc`` and memcheck sees an access past the end of any of them.

``--on-cpu`` puts ``tests/cuda_cpu/fake_cupy`` (which refuses to shadow a
real CuPy) on ``PYTHONPATH``, so the kernel sources, exactly as
``raw_kernels.kernel_source()`` gives them, are compiled with
``tests/cuda_cpu/cuda_cpu.h`` and launched by the project's own launch code.
Modes:

* ``plain``: g++; the model's own checks (barriers, warp masks, launch limits,
  argument types, dynamic shared memory and buffer guard bytes) and results;
* ``asan``: clang++ with ASan+UBSan, guard bytes poisoned;
* ``tsan``: clang++ with TSan, blocks on 4 threads at once, happens-before
  only at barriers and warp rendezvous (a missing barrier is a race);
* ``valgrind``: g++ under valgrind memcheck, exact-size buffers, fresh memory
  undefined.

Any finding (a non-zero exit or a sanitizer report) makes the exit non-zero.
``--sizes small`` shrinks the workload; ``--project DIR`` imports ``cuhouse``
from ``DIR`` (a mutated copy, see ``tests/cuda_cpu/seeded_bugs.py``).
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import time

import numpy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAKE_CUPY = os.path.join(ROOT, "tests", "cuda_cpu", "fake_cupy")
SIZES = {
    "full": {"rows": ((1, 1), (3, 7), (37, 129)), "blocks": ((3, 1), (9, 17), (2, 64), (3, 65), (1, 100))},
    "small": {"rows": ((1, 1), (3, 7), (17, 40)), "blocks": ((3, 1), (9, 17), (2, 33), (3, 65))},
}
GRID_STRIDE_PASS = 2
# What a finding looks like in the output, by kind (the first that matches names it).
FINDINGS = (
    ("race", re.compile(r"WARNING: ThreadSanitizer")),
    ("asan", re.compile(r"ERROR: AddressSanitizer")),
    ("ubsan", re.compile(r"runtime error:")),
    ("memcheck", re.compile(r"ERROR SUMMARY: [1-9]")),
    ("model", re.compile(r"KernelError")),
    ("result", re.compile(r"MISMATCH|[1-9]\d* failed")),
)


def evidence(output):
    """The line of ``output`` that best says what was found (for reports)."""
    for pattern in (
        r"KernelError: .*",
        r"SUMMARY: \w+Sanitizer: .*",
        r".*runtime error: .*",
        r"== (Invalid (read|write)|Conditional jump).*",
        r"MISMATCH .*",
        r"\d+ failed.*",
    ):
        match = re.search(pattern, output)
        if match:
            return match.group(0).strip()
    return output.strip().splitlines()[-1] if output.strip() else ""


def finding_kind(returncode, output):
    """``None`` for a clean run, else what was found: race, asan, ubsan, memcheck,
    model (the CPU model refused a launch), result (a wrong result), exit N."""
    for kind, pattern in FINDINGS:
        if pattern.search(output):
            return kind
    return None if returncode == 0 else "exit {}".format(returncode)


def workload(sizes):
    """Every kernel, float and double, twice: with the launchers' grids, then with
    grids of at most GRID_STRIDE_PASS blocks; the number of mismatches."""
    import cupy

    from cuhouse._gpu import primitives as _primitives
    from cuhouse._gpu import raw_kernels as _kernels

    cupy.cuda.set_allocator(None)
    rng = numpy.random.default_rng(0)
    failures = []

    def check(name, got, expected, tol):
        got = cupy.asnumpy(got)
        scale = max(float(numpy.abs(expected).max()), 1.0)
        if got.shape != expected.shape or not numpy.allclose(got, expected, rtol=0, atol=tol * scale):
            failures.append(name)

    default_grid = _kernels._MAX_GRID
    for grid in (default_grid, GRID_STRIDE_PASS):  # the second pass makes every grid-stride loop wrap
        _kernels._MAX_GRID = grid
        tag = "" if grid == default_grid else " grid<={}".format(grid)
        for dtype in (numpy.float32, numpy.float64):
            tol = 1e-4 if dtype == numpy.float32 else 1e-11
            for rows, d in SIZES[sizes]["rows"]:
                v = rng.standard_normal((rows, d)).astype(dtype)
                v[-1] = 0
                unit, norms = _kernels.row_norms(cupy.asarray(v), with_unit=True)
                expected_unit, expected = _primitives.unit_rows(v, numpy)
                check("row_norms {} {}x{}{}".format(dtype.__name__, rows, d, tag), norms, expected, tol)
                check("unit_rows {} {}x{}{}".format(dtype.__name__, rows, d, tag), unit, expected_unit, tol)
                check(
                    "normalize_rows {} {}x{}{}".format(dtype.__name__, rows, d, tag),
                    _kernels.normalize_rows(cupy.asarray(v), cupy.asarray(expected)),
                    expected_unit,
                    tol,
                )
            for count, k in SIZES[sizes]["blocks"]:
                y = rng.standard_normal((count, k, k + 3))
                y /= numpy.linalg.norm(y, axis=-1, keepdims=True)
                s = (numpy.triu(y @ numpy.swapaxes(y, -1, -2), 1) + 0.5 * numpy.eye(k)).astype(dtype)
                t = _primitives.upper_triangular_inverse(cupy.asarray(s), cupy)  # k > 64: the kernel on blocks
                expected_t = _primitives.upper_triangular_inverse(s, numpy)
                check("triangular_inverse {} {}x{}^2{}".format(dtype.__name__, count, k, tag), t, expected_t, tol)
                n = rng.standard_normal((count, k, k)).astype(dtype)
                check(
                    "cwy_gradient {} {}x{}^2{}".format(dtype.__name__, count, k, tag),
                    _kernels.cwy_gradient_coefficients(cupy.asarray(expected_t), cupy.asarray(n)),
                    _primitives.cwy_gradient_coefficients(expected_t, n, numpy),
                    tol * k,
                )
    _kernels._MAX_GRID = default_grid
    cupy.cuda.Device().synchronize()
    for name in failures:
        print("MISMATCH", name, file=sys.stderr)
    print("sanitizer_driver: {} kernel checks failed".format(len(failures)))
    return len(failures)


def _clang():
    """The clang++ whose sanitizer runtimes the CPU modes preload."""
    for name in (os.environ.get("CUDA_CPU_CLANG"), "clang++-19", "clang++"):
        if name and shutil.which(name):
            return name
    raise SystemExit("sanitizer_driver: no clang++ found (tools/kernels_on_cpu.sh installs clang-19)")


def _runtime(clang, name):
    path = subprocess.run([clang, "-print-file-name=" + name], capture_output=True, text=True).stdout.strip()
    if not os.path.isfile(path):
        raise SystemExit("sanitizer_driver: {} has no {}".format(clang, name))
    return path


# mode: (compiler, extra compile flags, sanitizer runtime to preload, environment)
CPU_MODES = {
    "plain": ("g++", "", None, {}),
    "asan": (
        "clang",
        "-fsanitize=address,undefined -fno-sanitize-recover=all -shared-libsan",
        "libclang_rt.asan-x86_64.so",
        {
            "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1:detect_stack_use_after_return=0",
            "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
        },
    ),
    "tsan": (
        "clang",
        "-fsanitize=thread -shared-libsan",
        "libclang_rt.tsan-x86_64.so",
        {"TSAN_OPTIONS": "halt_on_error=1:exitcode=66:report_signal_unsafe=0", "CUDA_CPU_CONCURRENT_BLOCKS": "4"},
    ),
    "valgrind": (
        "g++",
        "",
        None,
        {"CUDA_CPU_GUARD_BYTES": "0", "CUDA_CPU_UNDEFINED_MEMORY": "1", "PYTHONMALLOC": "malloc"},
    ),
}
VALGRIND = (
    "valgrind",
    "--tool=memcheck",
    "--error-exitcode=99",
    "--leak-check=no",
    "--track-origins=no",
    "--max-stackframe=4000000",
    "--suppressions=" + os.path.join(ROOT, "tests", "cuda_cpu", "python.supp"),
)


MODES = tuple(CPU_MODES)


def cpu_environment(mode):
    """``(environment, command prefix)`` for running Python on the CPU stand-in in ``mode``."""
    if mode not in CPU_MODES:
        raise SystemExit("sanitizer_driver: unknown mode {!r}; modes: {}".format(mode, ", ".join(MODES)))
    compiler, flags, runtime, settings = CPU_MODES[mode]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([FAKE_CUPY] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.pop("CUDA_CPU_CONCURRENT_BLOCKS", None)
    for threads in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[threads] = "1"  # BLAS thread pools are not what is checked (and confuse TSan)
    env["CUDA_CPU_CXX"] = _clang() if compiler == "clang" else compiler
    env["CUDA_CPU_CXXFLAGS"] = flags
    if runtime:
        env["CUDA_CPU_PRELOAD"] = _runtime(env["CUDA_CPU_CXX"], runtime)
    env.update(settings)
    return env, list(VALGRIND) if mode == "valgrind" else []


def prebuild(env, project):
    """Compiles the kernel module outside the sanitizer (the library is cached)."""
    env = dict(env)
    env.pop("CUDA_CPU_PRELOAD", None)
    code = (
        "import sys; sys.path[:0] = {!r}\n"
        "from cuhouse._gpu import raw_kernels; from cupy._compiler import build\n"
        "build(raw_kernels.kernel_source(), raw_kernels.COMPILE_OPTIONS, raw_kernels.name_expressions())"
    ).format([project] if project else [])
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    return result.returncode, result.stdout + result.stderr


def run_on_cpu(mode, command, project=None, quiet=False):
    """Runs ``command`` in ``mode``; returns ``(finding, seconds, output)``, the
    finding ``None`` or its kind (:func:`finding_kind`)."""
    env, prefix = cpu_environment(mode)
    started = time.monotonic()
    rc, output = prebuild(env, project)
    if rc == 0:
        preload = env.pop("CUDA_CPU_PRELOAD", None)
        if preload:
            env["LD_PRELOAD"] = preload
        result = subprocess.run(prefix + command, env=env, capture_output=True, text=True, cwd=ROOT)
        rc, output = result.returncode, result.stdout + result.stderr
    seconds = time.monotonic() - started
    finding = finding_kind(rc, output)
    if not quiet:
        sys.stdout.write(output)
    return finding, seconds, output


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--on-cpu", choices=MODES, help="run on the CPU stand-in of CuPy in this mode")
    parser.add_argument("--sizes", choices=sorted(SIZES), default="full")
    parser.add_argument("--project", help="import cuhouse from this directory")
    parser.add_argument("command", nargs="*", help="with --on-cpu: the command to run (default: this workload)")
    args = parser.parse_args(argv)
    if args.on_cpu:
        command = args.command or [sys.executable, os.path.abspath(__file__), "--sizes", args.sizes] + (
            ["--project", args.project] if args.project else []
        )
        finding, seconds, _ = run_on_cpu(args.on_cpu, command, args.project)
        print(
            "sanitizer_driver --on-cpu {}: {} in {:.1f} s".format(
                args.on_cpu, "FINDING ({})".format(finding) if finding else "clean", seconds
            )
        )
        return 1 if finding else 0
    if args.command:
        parser.error("a command is only taken with --on-cpu")
    if args.project:
        sys.path.insert(0, os.path.abspath(args.project))
        import cuhouse

        if not os.path.abspath(cuhouse.__file__).startswith(os.path.abspath(args.project)):
            raise SystemExit("sanitizer_driver: cuhouse came from {}, not {}".format(cuhouse.__file__, args.project))
    return 1 if workload(args.sizes) else 0


if __name__ == "__main__":
    sys.exit(main())
