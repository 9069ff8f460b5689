"""The layering of DESIGN.md: algorithms know nothing of the classes or the plan,
checks compute nothing, and only the GPU layer touches kernels."""

import ast
import inspect
import pathlib

import pytest

from cuhouse.algorithms import ALGORITHMS

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "cuhouse"


def _imports(path):
    """Every module name a file imports, relative imports resolved against the package."""
    tree = ast.parse(path.read_text())
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(parts[: len(parts) - node.level]) if node.level else ""
            module = ".".join(p for p in (base, node.module) if p)
            names.update("{}.{}".format(module, alias.name) for alias in node.names)
            names.add(module)
    return names


@pytest.mark.parametrize("name", sorted(p.name for p in (PACKAGE / "algorithms").glob("*.py")))
def test_algorithms_import_no_class_and_no_plan(name):
    imported = _imports(PACKAGE / "algorithms" / name)
    banned = {"cuhouse.plan", "cuhouse.householder", "cuhouse.spectral", "cuhouse.product", "cuhouse._operator"}
    assert not {m for m in imported if any(m == b or m.startswith(b + ".") for b in banned)}


def test_checks_compute_nothing():
    assert not {m for m in _imports(PACKAGE / "_validate.py") if m.startswith("cuhouse._gpu")}


def test_only_the_gpu_layer_touches_kernels():
    for path in PACKAGE.rglob("*.py"):
        if "_gpu" in path.parts:
            continue
        assert not {m for m in _imports(path) if m.startswith("cuhouse._gpu.raw_kernels")}, path
        assert "RawModule" not in path.read_text(), path


def test_every_backward_has_one_signature():
    signatures = {tuple(inspect.signature(module.backward).parameters)[1:] for module in ALGORITHMS.values()}
    assert len(signatures) == 1, signatures


def test_kernel_sources_are_package_data_without_a_symlink():
    from cuhouse._gpu import raw_kernels

    directory = pathlib.Path(str(raw_kernels.kernel_directory()))
    assert not (PACKAGE / "kernels").exists() and not directory.is_symlink()
    assert {p.name for p in directory.glob("*.cu")} == set(raw_kernels.KERNEL_SOURCES)
