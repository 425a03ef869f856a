//! GEMM and GEMV kernels.
