"""CuPy API audit, without a device: every ``xp.<name>``, ``cupy.<name>`` and ``cupy_module().<name>``
the package uses (found in the syntax tree of ``cuhouse/``) exists in the
installed CuPy, and every call passes only arguments its signature takes.
CuPy imports without a GPU, so this runs wherever ``cupy-cuda13x`` is
installed (``pip install -e .[cuda13]``; CI does); it is skipped otherwise."""

import ast
import importlib.util
import inspect
import pathlib
import re
import types

import pytest

import cuhouse

PACKAGE = pathlib.Path(cuhouse.__file__).parent
ROOTS = ("xp", "cupy")
# The generic Array API path runs only on libraries other than NumPy and CuPy (CuPy keeps its own
# path and raw kernels), so its ``xp`` is never CuPy.
GENERIC_ONLY = ("cuhouse/_generic.py", "cuhouse/algorithms/portable.py")
# ``device=`` is passed only when ``_backend.device_of`` gives a device, which it never does for a
# CuPy array (CuPy places arrays on the current device): such a keyword never reaches CuPy.
GENERIC_KEYWORDS = ("device",)


def _cupy():
    try:
        import cupy
    except ImportError:
        return None
    return None if getattr(cupy, "__cuda_cpu__", False) else cupy  # never audit the CPU stand-in


cupy = _cupy()
pytestmark = pytest.mark.skipif(
    cupy is None, reason="needs CuPy installed (pip install -e .[cuda13]); no device needed"
)


def _chain(node):
    """``("xp", "linalg", "solve")`` for ``xp.linalg.solve`` (``cupy_module().x`` counts as
    ``cupy.x``); None for other expressions."""
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "cupy_module":
        node = ast.Name(id="cupy")  # cupy_module().RawModule is cupy.RawModule
    if isinstance(node, ast.Name) and node.id in ROOTS and names:
        return (node.id,) + tuple(reversed(names))
    return None


def uses():
    """``[(path:line, chain, call or None)]`` for every outermost ``xp.``/``cupy.`` attribute chain."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if str(path.relative_to(PACKAGE.parent)) in GENERIC_ONLY:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        calls = {id(node.func): node for node in ast.walk(tree) if isinstance(node, ast.Call)}
        inner = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and id(node) not in inner:
                chain = _chain(node)
                if chain:
                    where = "{}:{}".format(path.relative_to(PACKAGE.parent), node.lineno)
                    found.append((where, chain, calls.get(id(node))))
    return found


def _resolve(chain):
    target = cupy
    for name in chain[1:]:
        if target is cupy and name in ON_DEMAND:
            target = _functions_from_source("cupy." + name)
            continue
        target = getattr(target, name)
    return target


# Submodules CuPy loads on demand whose import needs the CUDA libraries (cupy.cublas loads cuBLAS),
# absent where the audit runs: their functions are read from the source, signatures included.
ON_DEMAND = ("cublas",)


def _functions_from_source(module):
    """The top-level functions of ``module``'s source as stubs with the same signatures."""
    source = pathlib.Path(importlib.util.find_spec(module).origin).read_text(encoding="utf-8")
    namespace = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef):
            node.body, node.decorator_list = [ast.Pass()], []
            try:
                tree = ast.fix_missing_locations(ast.Module(body=[node], type_ignores=[]))
                exec(compile(tree, module, "exec"), namespace)
            except NameError:  # a default that names something of the module: not a function we call
                continue
    return types.SimpleNamespace(**{k: v for k, v in namespace.items() if not k.startswith("__")})


def _signature(target):
    """The signature of ``target``; for Cython classes, parsed from the first
    docstring line Cython embeds (``RawModule(str code=None, *, ...)``)."""
    try:
        return inspect.signature(target)
    except (TypeError, ValueError):
        pass
    first = (getattr(target, "__doc__", None) or "").split("\n", 1)[0]
    match = re.match(r"^[\w.]+\((.*)\)$", first)  # RawModule(...) or Graph.launch(self, ...)
    if not match:
        return None
    parameters, kind = [], inspect.Parameter.POSITIONAL_OR_KEYWORD
    for text in filter(None, (t.strip() for t in match.group(1).split(","))):
        if text == "*":
            kind = inspect.Parameter.KEYWORD_ONLY
            continue
        declaration, _, default = text.partition("=")
        name = declaration.split()[-1].lstrip("*")
        parameters.append(inspect.Parameter(name, kind, default=default or inspect.Parameter.empty))
    return inspect.Signature(parameters)


def _problem(chain, call):
    """A sentence when ``chain`` is missing from CuPy or ``call`` does not fit its signature."""
    name = ".".join(chain)
    if chain[1:] == ("__name__",):
        return None
    try:
        target = _resolve(chain)
    except AttributeError:
        return "{} does not exist in CuPy {}".format(name, cupy.__version__)
    if call is None:
        return None
    if isinstance(target, cupy.ufunc):
        allowed = {"out", "dtype", "casting"}
        bad = [k.arg for k in call.keywords if k.arg not in allowed]
        return "{} is a ufunc without the keyword(s) {}".format(name, bad) if bad else None
    signature = _signature(target)
    if signature is None:
        return "{}: CuPy gives no signature to check the call against".format(name) if call.keywords else None
    starred = any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords)
    positional = [] if starred else [None] * len(call.args)
    keywords = {k.arg: None for k in call.keywords if k.arg and k.arg not in GENERIC_KEYWORDS}
    try:
        signature.bind_partial(*positional, **keywords)
    except TypeError as exc:
        return "{}{}: {}".format(name, signature, exc)
    return None


def test_the_audit_sees_the_package_uses_of_cupy():
    chains = {chain for _, chain, _ in uses()}
    assert ("cupy", "RawModule") in chains and ("xp", "einsum") in chains
    assert len(chains) >= 40


def test_every_cupy_name_the_package_uses_exists_and_takes_its_arguments():
    problems = [
        "{}: {}".format(where, problem)
        for where, chain, call in uses()
        for problem in [_problem(chain, call)]
        if problem
    ]
    assert not problems, "\n".join(problems)


def test_the_audit_reports_a_missing_name_and_a_wrong_keyword():
    call = ast.parse("xp.zeros(3, dtype=float, shape_typo=1)").body[0].value
    assert "shape_typo" in _problem(("xp", "zeros"), call)
    assert "does not exist" in _problem(("xp", "no_such_function"), None)


# CuPy calls the package makes on objects the syntax-tree audit cannot follow (a stream, a graph,
# an array's device): (owner chain, member, keywords the package passes).
METHODS = (
    (("cuda", "Stream"), "begin_capture", ()),
    (("cuda", "Stream"), "end_capture", ()),
    (("cuda", "Stream"), "__enter__", ()),
    (("cuda", "Graph"), "launch", ("stream",)),
    (("cuda", "Device"), "__enter__", ()),
    (("ndarray",), "device", ()),
    (("cublas",), "gemm", ("out", "alpha", "beta")),
)


@pytest.mark.parametrize("owner, member, keywords", METHODS, ids=[".".join(m[0] + (m[1],)) for m in METHODS])
def test_the_cupy_methods_used_on_streams_graphs_and_devices_exist(owner, member, keywords):
    target = getattr(_resolve(("cupy",) + owner), member)
    if keywords:
        signature = _signature(target)
        assert signature is not None, "{}: no signature to check".format(member)
        signature.bind_partial(**{k: None for k in keywords})
