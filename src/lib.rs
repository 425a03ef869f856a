//! mixprec: mixed-precision (bf16 / fp16 with fp32 fallback) neural-network
//! inference on x86 CPUs.
//!
//! * [`kernels`]: the `mixprec-kernels` crate (conversions, GEMM, elementwise
//!   and normalization kernels with runtime ISA dispatch).
//! * [`graph`]: the op-graph, its builder, safetensors weights and the
//!   executor that runs each node in the dtype a precision plan gives it.
//! * [`tune`]: the accuracy-driven mixed-precision tuner.
//! * [`plot`]: SVG pictures of `bench` (a roofline) and `tune` results.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub use mixprec_kernels as kernels;

pub mod cli;
pub mod demo;
#[doc(hidden)]
pub mod fuzzing;
pub mod graph;
pub mod onnx;
pub mod plot;
pub mod safetensors_stream;
pub mod tune;

/// The README's Rust examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
