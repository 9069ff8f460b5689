"""cuBLAS enumerations, as ``cupy_backends.cuda.libs.cublas`` defines them."""

CUBLAS_OP_N, CUBLAS_OP_T, CUBLAS_OP_C = 0, 1, 2
CUBLAS_SIDE_LEFT, CUBLAS_SIDE_RIGHT = 0, 1
