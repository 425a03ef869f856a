//! `mixprec-kernels`: bit-exact bf16/fp16 conversions and the compute kernels
//! of mixprec, with a scalar reference and x86 SIMD paths chosen at run time.
//!
//! Every kernel family dispatches on [`isa::active_isa`], the highest level
//! this CPU supports, capped by the `MIXPREC_MAX_CPU_ISA` environment
//! variable. Each family also offers an `*_at(isa, ...)` entry point that runs
//! one explicit level and returns [`isa::IsaError::Unsupported`] where the CPU
//! lacks it, for tests, benchmarks and users who must pin behaviour.
//!
//! All `unsafe` code of mixprec lives in this crate, in the per-ISA modules;
//! every `#[target_feature]` function is reached only after detection.
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod conv;
pub mod convert;
pub mod dot;
pub mod element;
pub mod elementwise;
pub mod gemm;
pub mod isa;
pub mod norm;
pub mod peak;
pub mod pool;

pub use element::{Element, FloatSlice, FloatSliceMut, FloatType};
pub use isa::{Isa, IsaError, active_isa, detected_isa};
