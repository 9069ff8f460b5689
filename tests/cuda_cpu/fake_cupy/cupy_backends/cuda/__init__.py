"""``cupy_backends.cuda`` of the CPU stand-in."""
