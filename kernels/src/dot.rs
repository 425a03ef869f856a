//! Dot products of f32, bf16 and f16 slices with f32 accumulation.
