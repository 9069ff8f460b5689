"""The seeded-bug check: each mutant is one bug typical of CUDA kernels,
applied to a temporary copy of the real sources (``kernels/`` and
``cuhouse/``); every mode of ``tools/sanitizer_driver.py --on-cpu`` runs the
small workload on it. A mutant is caught when at least one mode reports a
finding. Prints the table (mutant x mode) and a totals line; exits non-zero
when a mutant survives, or when a mutant no longer applies (its text left the
sources: update the mutant with the kernel).

    python tests/cuda_cpu/seeded_bugs.py [--modes plain,asan,tsan,valgrind] [--first-catch]

``--first-catch`` stops trying modes on a mutant once one caught it (the
other cells read ``-``).
"""

import argparse
import concurrent.futures
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import sanitizer_driver  # noqa: E402

# (name, file relative to the project root, text, replacement)
MUTANTS = (
    (
        "removed __syncthreads",
        "kernels/cwy_gradient.cu",
        "__syncthreads();\n            for (int q = 0; q < CUHOUSE_TILE; ++q) {\n                acc += n_tile",
        "for (int q = 0; q < CUHOUSE_TILE; ++q) {\n                acc += n_tile",
    ),
    (
        "barrier in a divergent branch",
        "kernels/triangular_inverse.cu",
        "        __syncthreads();  // the copy below reads every column of the tile",
        "        if ((int)threadIdx.x < k) __syncthreads();",
    ),
    (
        "shared memory out-of-bounds write",
        "kernels/cwy_gradient.cu",
        "m_tile[ty][tx] = (a < k",
        "m_tile[ty + 1][tx] = (a < k",
    ),
    (
        "global out-of-bounds read",
        "kernels/row_norms.cu",
        "const T norm = norms[e / d];",
        "const T norm = norms[e / d + 1];",
    ),
    ("global out-of-bounds write", "kernels/row_norms.cu", "norms[row] = norm;", "norms[row + 1] = norm;"),
    (
        "two blocks write the same output",
        "kernels/triangular_inverse.cu",
        "for (cuhouse_index first = (cuhouse_index)blockIdx.x * group; first < count; first += gridDim.x * group)",
        "for (cuhouse_index first = (cuhouse_index)(blockIdx.x / 2) * group; first < count;\n"
        "         first += (gridDim.x + 1) / 2 * group)",
    ),
    (
        "shuffle with a partial-warp mask",
        "kernels/common.cuh",
        "value += __shfl_xor_sync(CUHOUSE_FULL_MASK, value, offset);",
        "value += __shfl_xor_sync(0x0000ffffu, value, offset);",
    ),
    (
        "shuffle reads a lane outside its mask",
        "kernels/common.cuh",
        "value = max(value, __shfl_xor_sync(CUHOUSE_FULL_MASK, value, offset));",
        "value = max(value, __shfl_xor_sync((threadIdx.x % CUHOUSE_WARP) < 16 ? 0x0000ffffu : 0xffff0000u, "
        "value, offset));",
    ),
    ("grid-stride loop bound off by one", "kernels/row_norms.cu", "e < total; e += step", "e <= total; e += step"),
    (
        "grid-stride step off by one",
        "kernels/row_norms.cu",
        "row < rows; row += row_step)",
        "row < rows; row += row_step + 1)",
    ),
    (
        "int passed where C++ takes 64 bits",
        "cuhouse/_gpu/raw_kernels.py",
        "args = (s, numpy.int64(count), numpy.int32(k), t)",
        "args = (s, numpy.int64(count), numpy.int64(k), t)",
    ),
    (
        "wrong dynamic shared memory size",
        "cuhouse/_gpu/raw_kernels.py",
        "shared_mem=per_block * tile_bytes\n",
        "shared_mem=tile_bytes\n",
    ),
    (
        "tile load without its column bound",
        "kernels/cwy_gradient.cu",
        "n_tile[ty][tx] = (a < k && b < k) ?",
        "n_tile[ty][tx] = (a < k) ?",
    ),
)


def project_copy(directory):
    """``directory/cuhouse`` as the installed package: ``cuhouse/`` with ``kernels/`` as ``_gpu/kernels``."""
    shutil.copytree(
        os.path.join(ROOT, "cuhouse"), os.path.join(directory, "cuhouse"), ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(
        os.path.join(ROOT, "kernels"),
        os.path.join(directory, "cuhouse", "_gpu", "kernels"),
        ignore=shutil.ignore_patterns("__pycache__", "*.md"),
    )


def installed_path(relative):
    return relative.replace("kernels/", "cuhouse/_gpu/kernels/", 1) if relative.startswith("kernels/") else relative


def apply(directory, relative, text, replacement):
    path = os.path.join(directory, installed_path(relative))
    with open(path, encoding="utf-8") as source:
        content = source.read()
    if content.count(text) != 1:
        raise SystemExit(
            "seeded_bugs: the mutant's text occurs {} times in {} (expected once):\n{}".format(
                content.count(text), relative, text
            )
        )
    with open(path, "w", encoding="utf-8") as source:
        source.write(content.replace(text, replacement))


def try_mutant(mutant, modes, first_catch):
    """``(cells, seconds per mode, evidence)`` for one mutant: each mode's finding
    on it (``-`` where not run), and the report line of the first mode that caught it."""
    name, relative, text, replacement = mutant
    cells, seconds, first = [], {}, ""
    with tempfile.TemporaryDirectory() as directory:
        project_copy(directory)
        apply(directory, relative, text, replacement)
        for mode in modes:
            if first_catch and any(c.startswith("caught") for c in cells):
                cells.append("-")
                continue
            command = [
                sys.executable,
                os.path.join(ROOT, "tools", "sanitizer_driver.py"),
                "--sizes",
                "small",
                "--project",
                directory,
            ]
            finding, seconds[mode], output = sanitizer_driver.run_on_cpu(mode, command, directory, quiet=True)
            cells.append("caught:" + finding if finding else "missed")
            if finding and not first:
                first = "{} ({}): {}".format(name, mode, sanitizer_driver.evidence(output)[:160])
    return cells, seconds, first


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default=",".join(sanitizer_driver.MODES))
    parser.add_argument("--first-catch", action="store_true")
    parser.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="mutants tried at once")
    args = parser.parse_args(argv)
    modes = args.modes.split(",")
    for mutant in MUTANTS:  # every mutant still applies, before anything runs
        with tempfile.TemporaryDirectory() as directory:
            os.makedirs(os.path.dirname(os.path.join(directory, installed_path(mutant[1]))))
            shutil.copy(os.path.join(ROOT, mutant[1]), os.path.join(directory, installed_path(mutant[1])))
            apply(directory, *mutant[1:])
    width = max(len(m[0]) for m in MUTANTS)
    print("{:<{w}}  {}".format("mutant", "  ".join("{:<15}".format(m) for m in modes), w=width).rstrip(), flush=True)
    survivors, total, evidence = [], {m: 0.0 for m in modes}, []
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        results = pool.map(lambda mutant: try_mutant(mutant, modes, args.first_catch), MUTANTS)
        for mutant, (cells, seconds, first) in zip(MUTANTS, results):
            evidence.append(first)
            for mode, spent in seconds.items():
                total[mode] += spent
            if not any(c.startswith("caught") for c in cells):
                survivors.append(mutant[0])
            print(
                "{:<{w}}  {}".format(mutant[0], "  ".join("{:<15}".format(c) for c in cells), w=width).rstrip(),
                flush=True,
            )
    print("\nfirst report per mutant:\n" + "\n".join(filter(None, evidence)) + "\n")
    print("time per mode (summed over mutants): " + ", ".join("{} {:.0f} s".format(m, s) for m, s in total.items()))
    print(
        "seeded bugs: {} mutants, {} caught, {} survived{}".format(
            len(MUTANTS),
            len(MUTANTS) - len(survivors),
            len(survivors),
            "" if not survivors else " ({})".format("; ".join(survivors)),
        )
    )
    return 1 if survivors else 0


if __name__ == "__main__":
    started = time.monotonic()
    status = main()
    print("seeded_bugs: {:.0f} s".format(time.monotonic() - started))
    sys.exit(status)
