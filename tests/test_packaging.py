"""The files a package carries: one version, py.typed shipped, the license named and present."""

import configparser
import importlib.metadata
import pathlib

import pytest

import cuhouse

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _setup_cfg():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return config


def test_the_version_is_written_once():
    assert _setup_cfg()["metadata"]["version"] == "attr: cuhouse.__version__"
    try:
        installed = importlib.metadata.version("cuhouse")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("cuhouse is not installed (run from a checkout)")
    assert installed == cuhouse.__version__


def test_py_typed_is_package_data():
    assert (pathlib.Path(cuhouse.__file__).parent / "py.typed").is_file()
    assert "py.typed" in _setup_cfg()["options.package_data"]["cuhouse"]


def test_license_file_matches_the_metadata():
    metadata = _setup_cfg()["metadata"]
    assert metadata["license"] == "BSD-3-Clause" and metadata["license_files"] == "LICENSE"
    assert (ROOT / "LICENSE").read_text().startswith("BSD 3-Clause License")
