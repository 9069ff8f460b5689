"""Prints the sha256 of the project's CUDA sources, the hash kernels/VALIDATION.md records.

Every file under ``kernels/`` ending in ``.cu``, ``.cuh`` or ``.h``, in
sorted (bytewise) path order, contributes its path relative to the project
root, a newline, and its bytes. This is the algorithm of the session tool
``kernel-hash``; this copy lives in the tree so that a device run, which
gets only the tree, computes the same hash.

    python tools/kernel_hash.py [PROJECT_ROOT]     # default: the root of this checkout
"""

import hashlib
import os
import sys

SUFFIXES = (".cu", ".cuh", ".h")


def kernel_hash(root):
    """The hex sha256 of the kernel sources under ``root``/kernels."""
    paths = []
    for directory, _, files in os.walk(os.path.join(root, "kernels")):
        for name in files:
            if name.endswith(SUFFIXES):
                paths.append(os.path.relpath(os.path.join(directory, name), root).replace(os.sep, "/"))
    digest = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.encode()):
        digest.update(path.encode() + b"\n")
        with open(os.path.join(root, path), "rb") as source:
            digest.update(source.read())
    return digest.hexdigest()


if __name__ == "__main__":
    print(
        kernel_hash(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    )
