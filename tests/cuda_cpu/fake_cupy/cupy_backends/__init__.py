"""``cupy_backends`` of the CPU stand-in of CuPy: the few raw library bindings cuhouse's bench calls."""
