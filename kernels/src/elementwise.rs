//! Elementwise unary and binary kernels over f32, bf16 and f16 storage.
