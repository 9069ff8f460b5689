"""The GPU layer: the operations that have a raw CUDA kernel, and the kernels.

* :mod:`.primitives` -- each operation written once against ``xp`` (the NumPy
  twin) plus the dispatch that sends CuPy input to its raw kernel; the only
  place that chooses between the two;
* :mod:`.raw_kernels` -- the only module that touches ``cupy.RawModule``:
  loads the sources, compiles them once (CuPy caches per device), launches;
* :mod:`.kernels` -- the CUDA sources themselves (``*.cu``, ``*.cuh``). In the
  repository they are the top-level ``kernels/`` folder, mapped onto this
  package by ``setup.cfg`` (``package_dir``), so that ``kernels/`` stays the
  one folder that ``kernel-hash`` and ``kernels/VALIDATION.md`` describe,
  while every install (wheel or editable) finds them inside the package.
"""
