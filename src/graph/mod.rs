//! The op-graph: tensors, named ops, builder, safetensors weights, precision
//! plans, and the executor that runs each node in the dtype its plan gives.
//!
//! ```
//! use mixprec::graph::{DType, Dim, GraphBuilder, PrecisionPlan, Tensor};
//! use mixprec::kernels::FloatType;
//! # fn main() -> Result<(), mixprec::graph::GraphError> {
//! let w = Tensor::from_f32(&[3, 4], vec![0.5; 12])?;
//! let mut g = GraphBuilder::new();
//! let x = g.input("x", &[Dim::sym("batch"), 4.into()], DType::F32);
//! let y = g.linear("fc", x, &w, None)?;
//! let y = g.relu("act", y)?;
//! g.output(y);
//! let graph = g.finish()?;
//! let model = graph.compile(&PrecisionPlan::all(&graph, FloatType::Bf16))?;
//! let x = Tensor::from_f32(&[2, 4], vec![1.0; 8])?;
//! let out = model.run(&[("x", &x)])?;
//! assert_eq!(out["act"].to_f32_vec(), vec![2.0; 6]);
//! # Ok(()) }
//! ```
//!
//! # Borrowed data
//! [`CompiledModel::run_views`] runs on [`TensorView`]s: a shape and dtype
//! over the caller's own `&[half::bf16]`, `&[half::f16]`, `&[f32]`, integer
//! or bool slice (or aligned raw bytes, e.g. from a safetensors file), read in
//! place with no copy. Views need no 64-byte alignment, since the kernels use
//! unaligned loads; only [`Tensor`]'s own storage is aligned. Inside the
//! executor every op reads its inputs as views too (of graph inputs,
//! constants, or earlier results), and a Reshape/Flatten/Squeeze/Unsqueeze/
//! Identity of borrowed data stays a view. Outputs are owned [`Tensor`]s.
//!
//! ```
//! use half::bf16;
//! use mixprec::graph::{DType, GraphBuilder, PrecisionPlan, TensorView};
//! use mixprec::kernels::FloatType;
//! # fn main() -> Result<(), mixprec::graph::GraphError> {
//! let mut g = GraphBuilder::new();
//! let x = g.input("x", &[2.into(), 3.into()], DType::Bf16);
//! let y = g.softmax("sm", x, -1)?;
//! g.output(y);
//! let graph = g.finish()?;
//! let model = graph.compile(&PrecisionPlan::all(&graph, FloatType::Bf16))?;
//! let logits = [0.0f32, 0.0, 0.0, 1.0, 1.0, 1.0].map(bf16::from_f32);
//! let out = model.run_views(&[("x", TensorView::from_bf16(&[2, 3], &logits)?)])?;
//! let p = out["sm"].to_f32_vec();
//! assert!(p.iter().all(|&v| (v - 1.0 / 3.0).abs() < 1e-2));
//! # Ok(()) }
//! ```
//!
//! # Numerics
//! A node in bf16 or f16 stores its inputs (weights included) and its outputs
//! in that type and computes in f32 inside the kernels (GEMM accumulation,
//! reductions, softmax and normalization statistics), rounding each output
//! once. The one exception is the constant bias of a Gemm/Linear node with
//! constant weights: it is added to the f32 accumulator in f32, as oneDNN
//! does, because a large bias that cancels a large product (an input scaler
//! folded into the layer) loses its signal when rounded. Conv biases are
//! stored in the node's dtype. Data-movement ops keep their input's dtype. Graph
//! inputs and outputs keep their declared dtypes unless
//! [`CompileOptions::outputs_in_node_dtype`] is set.

mod builder;
mod compile;
mod dtype;
mod error;
#[allow(clippy::module_inception)]
mod graph;
pub mod ops;
mod plan;
mod profile;
mod tensor;
mod weights;

pub use builder::GraphBuilder;
pub use compile::{CastInfo, CompileOptions, CompiledModel, GemmAccumulation};
pub use dtype::{DType, parse_float_type};
pub use error::{GraphError, Result};
pub use graph::{Dim, Graph, LowerableNode, Node, ValueId, ValueInfo, fixed_shape, shape_string};
pub use mixprec_kernels::FloatType;
pub use ops::{AutoPad, Binary, ConvAttrs, Op, PoolAttrs, ReduceKind, Unary, erf_f64};
pub use plan::PrecisionPlan;
pub use profile::{Profile, ProfileEntry};
pub use tensor::{
    DEFAULT_MAX_TENSOR_BYTES, Tensor, TensorElement, TensorView, max_tensor_bytes, numel,
    set_max_tensor_bytes,
};
pub use weights::Weights;
