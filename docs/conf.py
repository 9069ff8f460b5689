"""Sphinx configuration: ``python -m sphinx -W -b html docs <out>`` (the ``docs`` extra)."""

import importlib.util
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout's cuhouse, also without an install

import cuhouse  # noqa: E402

project = "cuhouse"
author = "the cuhouse developers"
copyright = "2026, " + author
version = release = cuhouse.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
]

# cuhouse.torch imports torch at import time; without the torch extra its pages
# are still built from the docstrings, against a stand-in torch.
autodoc_mock_imports = [] if importlib.util.find_spec("torch") else ["torch"]

autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "none"  # numpydoc's Parameters and Returns sections carry the types
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = False

templates_path = ["_templates"]
exclude_patterns = ["_build", "api/generated/*.inc", "vocabulary.rst"]  # included by design.rst
default_role = "literal"  # `x` in the pages is code, as in the docstrings
pygments_style = "sphinx"

html_theme = "alabaster"
html_static_path = ["_static"]
html_title = "cuhouse " + release
html_theme_options = {
    "description": "Orthogonal and SVD-parameterized matrices as Householder products",
    "fixed_sidebar": True,
}
