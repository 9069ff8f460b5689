"""What the minimum- and newest-version CI jobs install, read from setup.cfg.

``python .ci/versions.py minimum-python``: a working interpreter of the oldest
Python that ``python_requires`` admits (on PATH as ``pythonX.Y``, or a pyenv
version); exit 1 with the reason when there is none.

``python .ci/versions.py newest-python``: the newest such interpreter found.

``python .ci/versions.py minimum-constraints``: one ``name==version`` line per
``install_requires`` entry with a lower bound (``numpy>=1.22`` gives
``numpy==1.22``), for ``pip install -c``.
"""

import configparser
import glob
import os
import pathlib
import re
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
LOWER_BOUND = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*>=\s*([0-9][^,;\s]*)")


def _options():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return config["options"]


def minimum_python():
    match = re.fullmatch(r"\s*>=\s*(\d+)\.(\d+)\s*", _options()["python_requires"])
    if not match:
        raise SystemExit("setup.cfg python_requires is not of the form '>=X.Y'")
    return int(match.group(1)), int(match.group(2))


def minimum_constraints():
    lines = []
    for requirement in _options()["install_requires"].strip().splitlines():
        match = LOWER_BOUND.match(requirement)
        if match:
            lines.append("{}=={}".format(match.group(1), match.group(3)))
    return lines


def _candidates(version):
    """Interpreters that may be Python ``version`` (X, Y): on PATH, then pyenv's."""
    found = shutil.which("python{}.{}".format(*version))
    if found:
        yield found
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    yield from sorted(glob.glob(os.path.join(root, "versions", "{}.{}.*".format(*version), "bin", "python")))


def interpreter(version):
    """A working interpreter of Python ``version`` with venv and pip, or None (pyenv shims may exist and fail)."""
    check = "import sys, venv, ensurepip; assert sys.version_info[:2] == {!r}".format(tuple(version))
    for candidate in _candidates(version):
        if subprocess.run([candidate, "-c", check], capture_output=True).returncode == 0:
            return candidate
    return None


def main(argv):
    command = argv[1] if len(argv) == 2 else ""
    if command == "minimum-constraints":
        print("\n".join(minimum_constraints()))
    elif command == "minimum-python":
        oldest = minimum_python()
        found = interpreter(oldest)
        if found is None:
            raise SystemExit("no Python {}.{} (setup.cfg python_requires) on PATH or in pyenv".format(*oldest))
        print(found)
    elif command == "newest-python":
        major, oldest = minimum_python()
        for minor in range(oldest + 30, oldest - 1, -1):
            found = interpreter((major, minor))
            if found:
                print(found)
                return 0
        raise SystemExit("no Python >= {}.{} found".format(major, oldest))
    else:
        raise SystemExit(__doc__)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
