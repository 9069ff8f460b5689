"""The examples of the README and of the documentation pages run, and print what they say.

Every ``>>>`` example is a doctest: its printed output is compared with the
page (``...`` matches anything, whitespace is normalized). A page's examples
share one namespace, in page order.

- ``docs/**/*.rst``: the whole page is one doctest. A comment line
  ``.. doctest-requires: torch, dask`` skips the page when one of those
  modules is missing.
- The docstrings of the public names (``cuhouse.__all__``, ``cuhouse.torch.__all__``)
  and of their methods: their Examples sections.
- ``README.md``: every fenced block whose info string starts with ``python``
  (or ``pycon``), each on its own (a block starts with its imports); words
  after it (```` ```python torch ````) name the modules the block needs. A
  block with ``>>>`` prompts is a doctest, any other block runs as a script.
"""

import doctest
import importlib.util
import pathlib
import re

import pytest

import cuhouse

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.rst") if "generated" not in p.relative_to(DOCS).parts)
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
PARSER = doctest.DocTestParser()
REQUIRES = re.compile(r"^\.\. doctest-requires: *(.+)$", re.M)
FENCE = re.compile(r"^```(python|pycon)([^\n]*)\n(.*?)^```$", re.M | re.S)


def _require(modules, where):
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip("{} needs {} (not installed)".format(where, ", ".join(missing)))


def _run(text, globs, name, path, lineno=0):
    """Run the ``>>>`` examples of ``text`` in ``globs``; fail with doctest's report."""
    test = PARSER.get_doctest(text, globs, name, str(path), lineno)
    assert test.examples, "{} has no >>> examples".format(name)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report = []
    runner.run(test, out=report.append, clear_globs=False)
    result = runner.summarize(verbose=False)
    assert not result.failed, "".join(report)
    return result.attempted


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_page_examples(page):
    text = page.read_text()
    if not PARSER.get_examples(text):
        pytest.skip("no examples on this page")
    for line in REQUIRES.findall(text):
        _require([m.strip() for m in line.split(",") if m.strip()], page.name)
    _run(text, {"__name__": "__main__"}, page.stem, page)


def _public(module):
    """``(qualified name, object)`` of every public name of ``module``."""
    return [("{}.{}".format(module.__name__, name), getattr(module, name)) for name in module.__all__]


# cuhouse.torch's docstrings run where torch is installed (the torch extra)
PUBLIC = _public(cuhouse) + (
    _public(importlib.import_module("cuhouse.torch")) if importlib.util.find_spec("torch") else []
)


@pytest.mark.parametrize("name, obj", PUBLIC, ids=[name for name, _ in PUBLIC])
def test_docstring_examples(name, obj):
    tests = [t for t in doctest.DocTestFinder().find(obj, name) if t.examples]
    if not tests:
        pytest.skip("no examples in {}'s docstrings".format(name))
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report = []
    for test in tests:
        runner.run(test, out=report.append)
    assert not runner.summarize(verbose=False).failed, "".join(report)


def _readme_blocks():
    text = (ROOT / "README.md").read_text()
    return [
        (match.group(2).split(), match.group(3), text.count("\n", 0, match.start(3))) for match in FENCE.finditer(text)
    ]


README_BLOCKS = _readme_blocks()


def test_readme_has_checked_examples():
    assert any(">>>" in block for _, block, _ in README_BLOCKS), "README.md has no >>> examples"


@pytest.mark.parametrize("needs, block, lineno", README_BLOCKS, ids=["line{}".format(b[2] + 1) for b in README_BLOCKS])
def test_readme_block(needs, block, lineno):
    _require(needs, "README.md line {}".format(lineno + 1))
    globs = {"__name__": "__main__"}
    if ">>>" in block:
        _run(block, globs, "README.md:{}".format(lineno + 1), ROOT / "README.md", lineno)
    else:
        exec(compile("\n" * lineno + block, str(ROOT / "README.md"), "exec"), globs)
