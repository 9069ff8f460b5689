"""The tree's own tools for a device run: the kernel hash, the kernel sources found from a
plain checkout, and tools/gpu_check.sh's record-keeping (its full run is CI's
``bash tools/gpu_check.sh --dry-run``)."""

import hashlib
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
try:
    import kernel_hash
finally:
    sys.path.pop(0)


def test_kernel_hash_is_the_sha256_of_paths_and_bytes_in_sorted_order(tmp_path):
    (tmp_path / "kernels" / "sub").mkdir(parents=True)
    files = {"kernels/b.cuh": b"// b\n", "kernels/a.cu": b"int a;", "kernels/sub/c.h": b"#pragma once\n"}
    for path, data in files.items():
        (tmp_path / path).write_bytes(data)
    (tmp_path / "kernels" / "VALIDATION.md").write_text("not hashed")
    (tmp_path / "kernels" / "__init__.py").write_text("")
    expected = hashlib.sha256(b"".join(p.encode() + b"\n" + files[p] for p in sorted(files))).hexdigest()
    assert kernel_hash.kernel_hash(str(tmp_path)) == expected


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="needs sha256sum (coreutils) for the shell version")
def test_kernel_hash_matches_the_shell_pipeline_on_the_real_kernels():
    pipeline = (
        "find kernels -type f \\( -name '*.cu' -o -name '*.cuh' -o -name '*.h' \\) | LC_ALL=C sort | "
        "while read -r f; do printf '%s\\n' \"$f\"; cat \"$f\"; done | sha256sum | cut -d' ' -f1"
    )
    shell = subprocess.run(["bash", "-c", pipeline], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    printed = subprocess.run([sys.executable, str(ROOT / "tools" / "kernel_hash.py")], capture_output=True, text=True)
    assert printed.stdout.strip() == shell.strip() == kernel_hash.kernel_hash(str(ROOT))


def _plain_copy(tmp_path, with_kernels=True):
    """The package (and kernels/) copied without installing, as a device run gets the tree."""
    shutil.copytree(ROOT / "cuhouse", tmp_path / "cuhouse", ignore=shutil.ignore_patterns("__pycache__"))
    if with_kernels:
        shutil.copytree(ROOT / "kernels", tmp_path / "kernels", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


# A finder that hides the editable install's mapped package, as on a machine where cuhouse is not installed.
_NO_MAPPED_PACKAGE = """
import importlib.abc, sys
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "cuhouse._gpu.kernels":
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Hide())
sys.path.insert(0, sys.argv[1])
import cuhouse
assert cuhouse.__file__.startswith(sys.argv[1]), cuhouse.__file__
from cuhouse._gpu import raw_kernels
"""


def test_a_plain_checkout_finds_its_kernels_beside_the_package(tmp_path):
    copy = _plain_copy(tmp_path)
    code = _NO_MAPPED_PACKAGE + "print(raw_kernels.kernel_directory()); print(len(raw_kernels.kernel_source()))"
    out = subprocess.run([sys.executable, "-c", code, str(copy)], capture_output=True, text=True, check=True).stdout
    directory, length = out.split()
    assert pathlib.Path(directory) == copy / "kernels"
    assert int(length) > 1000 and "cuhouse_row_norms" in (copy / "kernels" / "row_norms.cu").read_text()


def test_missing_kernel_sources_are_an_import_error_saying_where_it_looked(tmp_path):
    copy = _plain_copy(tmp_path, with_kernels=False)
    code = _NO_MAPPED_PACKAGE + "raw_kernels.kernel_directory()"
    result = subprocess.run([sys.executable, "-c", code, str(copy)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "ImportError: the CUDA sources of cuhouse were not found" in result.stderr
    assert str(copy / "kernels") in result.stderr and "row_norms.cu" in result.stderr


def test_gpu_check_without_git_records_the_stamped_commit_and_fails_when_nothing_ran(tmp_path):
    """With no time budget every step is refused, so this runs in a second: the record is still
    written to the output folder, with the commit from .gpu_check_commit, and the exit is 1."""
    tree = tmp_path / "tree"
    for part in ("tools", "kernels"):  # what the script reads; no .git
        shutil.copytree(ROOT / part, tree / part, ignore=shutil.ignore_patterns("__pycache__"))
    (tree / ".gpu_check_commit").write_text("0123abc (with uncommitted changes)\n")
    out = tmp_path / "out"
    env = dict(os.environ, GPU_CHECK_BUDGET="0", PYTHON=sys.executable)
    result = subprocess.run(
        ["bash", "tools/gpu_check.sh", "--dry-run", str(out)], cwd=tree, env=env, capture_output=True, text=True
    )
    assert result.returncode == 1, result.stdout + result.stderr
    entry = (out / "entry.md").read_text()
    assert "- commit: 0123abc (with uncommitted changes) (from .gpu_check_commit)" in entry
    assert "pytest (no time left)" in entry and "(not a device run)" in entry
    assert "kernel-sha256: {}".format(kernel_hash.kernel_hash(str(tree))) in entry
    assert (out / "VALIDATION.md").read_text().endswith(entry)
    assert sorted(p.name for p in out.iterdir()) == [
        "VALIDATION.md",
        "bench.log",
        "compile.log",
        "entry.md",
        "memcheck.log",
        "pytest.log",
        "racecheck.log",
    ]


def test_gpu_check_refuses_an_unknown_option():
    result = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), "--fast"], capture_output=True, text=True)
    assert result.returncode == 2 and "unknown option --fast" in result.stderr
