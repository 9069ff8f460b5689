"""``cupy_backends.cuda.libs`` of the CPU stand-in: cuBLAS constants and cuSOLVER's ``?ormqr``."""
