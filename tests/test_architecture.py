"""The layering of the package, as tests: every module sits in a layer of :data:`LAYERS`, imports
only from its own layer or below (module-level and function-level imports alike), and the import
graph over ``cuhouse/`` has no cycle. Algorithms know nothing of the classes or the plan, checks
compute nothing, and only the GPU layer touches kernels. (The design page of the docs describes
the layers; this table is the authority.)"""

import ast
import inspect
import pathlib

import pytest

import cuhouse
from cuhouse.algorithms import ALGORITHMS

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "cuhouse"

# Bottom first. A module may import modules of its own layer or of a lower one; a new module
# must be added here (the test below names it).
LAYERS = (
    ("shapes, backend and type aliases", ("cuhouse._shapes", "cuhouse._backend", "cuhouse._typing")),
    (
        "checks, memory, realification, GPU primitives, cost model",
        (
            "cuhouse._validate",
            "cuhouse._memory",
            "cuhouse._complex",
            "cuhouse._gpu*",
            "cuhouse.calibration",
            "cuhouse.plan",
        ),
    ),
    ("algorithms", ("cuhouse.algorithms*",)),
    (
        "reflection storage (and its generic path), geqrf arrays, the small-size path, Dask chunking, torch autograd",
        (
            "cuhouse._reflections",
            "cuhouse._generic",
            "cuhouse._geqrf",
            "cuhouse._small",
            "cuhouse._reuse",
            "cuhouse._dask",
            "cuhouse._torch",
        ),
    ),
    ("the operator protocol and the lazy product", ("cuhouse._operator",)),
    ("Householder products", ("cuhouse.householder",)),
    ("spectral matrices", ("cuhouse.spectral",)),
    ("functions over matrices", ("cuhouse.autodiff", "cuhouse.flatten")),
    ("the public namespace", ("cuhouse",)),
    ("adapters and tools", ("cuhouse.torch*", "cuhouse.bench*", "cuhouse.__main__")),
)


def _module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py") if "kernels" not in p.relative_to(PACKAGE).parts}


def _layer(module):
    for i, (_, patterns) in enumerate(LAYERS):
        for pattern in patterns:
            if module == pattern or (pattern.endswith("*") and module.startswith(pattern[:-1])):
                return i
    return None


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


def _edges(source, module, package=False):
    """The cuhouse modules that ``source`` (the text of ``module``) imports anywhere, function bodies
    included: ``from X import y`` is an edge to the module ``X.y`` when there is one, else to ``X``."""
    parts = tuple(module.split(".")) + (("",) if package else ())
    edges = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            edges.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(parts[: len(parts) - node.level]) if node.level else ""
            target = ".".join(p for p in (base, node.module) if p)
            for alias in node.names:
                sub = "{}.{}".format(target, alias.name)
                edges.add(sub if sub in MODULES else target)
    return {e for e in edges if e in MODULES}


def _cycles(graph):
    """Every cycle a depth-first search meets, each as a list of module names ending where it began."""
    done, on_path, cycles = set(), [], []

    def visit(name):
        if name in on_path:
            cycles.append(on_path[on_path.index(name) :] + [name])
            return
        if name in done:
            return
        on_path.append(name)
        for target in sorted(graph[name]):
            visit(target)
        on_path.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)
    return cycles


GRAPH = {name: _edges(path.read_text(), name, path.name == "__init__.py") for name, path in MODULES.items()}


def test_every_module_has_a_layer():
    missing = [name for name in MODULES if _layer(name) is None]
    assert not missing, "add these modules to LAYERS: {}".format(missing)


def test_no_module_imports_from_a_higher_layer():
    upward = [
        "{} ({}) imports {} ({})".format(name, LAYERS[_layer(name)][0], target, LAYERS[_layer(target)][0])
        for name, targets in GRAPH.items()
        for target in sorted(targets)
        if _layer(target) > _layer(name)
    ]
    assert not upward, upward


def test_the_import_graph_has_no_cycle():
    assert not _cycles(GRAPH)


def test_the_checks_see_lazy_imports_and_cycles():
    """A function-level import is an edge (the base class once imported the lazy product that way),
    and a cycle through it is found."""
    lazy = "import numpy\n\ndef f():\n    from .householder import HouseholderProduct\n    from . import _shapes\n"
    assert _edges(lazy, "cuhouse._operator") == {"cuhouse.householder", "cuhouse._shapes"}
    assert _edges("from .algorithms import ALGORITHMS, _layout\n", "cuhouse._reflections") == {
        "cuhouse.algorithms",
        "cuhouse.algorithms._layout",
    }
    graph = dict(GRAPH, **{"cuhouse._operator": GRAPH["cuhouse._operator"] | {"cuhouse.householder"}})
    assert ["cuhouse._operator", "cuhouse.householder", "cuhouse._operator"] in _cycles(graph)


def test_the_operator_protocol_is_declared():
    assert cuhouse.Operator.__abstractmethods__ == {
        "shape",
        "dtype",
        "params",
        "backend",
        "check_finite",
        "T",
        "H",
        "conj",
        "inv",
        "slogdet",
        "_matmat",
        "_vjp_matmat",
        "_vjp_logabsdet",
    }
    for cls in (cuhouse.HouseholderProduct, cuhouse.Product, cuhouse.SVDMatrix, cuhouse.EighMatrix):
        assert not cls.__abstractmethods__, cls
        for name in ("matmul", "logdet", "__repr__"):
            assert getattr(cls, name) is getattr(cuhouse.Operator, name), (cls, name)


def test_a_matrix_that_omits_a_hook_cannot_be_made():
    class Incomplete(cuhouse.Operator):
        shape, dtype, params, backend, check_finite = (2, 2), None, (), "numpy", True
        T = H = None

        def conj(self):
            return self

        def inv(self):
            return self

        def slogdet(self):
            return None

        def _matmat(self, columns, transpose):
            return columns

        def _vjp_matmat(self, columns, transpose):
            return columns, None

    with pytest.raises(TypeError, match="_vjp_logabsdet"):
        Incomplete()


@pytest.mark.parametrize("name", sorted(p.name for p in (PACKAGE / "algorithms").glob("*.py")))
def test_algorithms_import_no_class_and_no_plan(name):
    imported = _imports(PACKAGE / "algorithms" / name)
    banned = {"cuhouse.plan", "cuhouse.householder", "cuhouse.spectral", "cuhouse._reflections", "cuhouse._operator"}
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


def test_tests_share_helpers_not_conftest():
    """Shared test code lives in tests/helpers.py; conftest.py holds fixtures only."""
    tests = pathlib.Path(__file__).resolve().parent
    statement = "from conftest " + "import"  # not written out, or this file would match itself
    importing = [p.name for p in tests.rglob("*.py") if statement in p.read_text()]
    assert not importing, "import from helpers instead: {}".format(importing)
