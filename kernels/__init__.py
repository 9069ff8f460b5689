"""The CUDA sources, importable as ``cuhouse._gpu.kernels`` (see ``setup.cfg``)."""
