//! The operations: the [`Op`] enum with ONNX attributes, static shape and
//! dtype inference, and (in the submodules) their execution on the kernels.

use std::sync::Arc;

use super::dtype::DType;
use super::error::{GraphError, Result};
use super::graph::Dim;
use super::tensor::{Tensor, TensorView};

pub(crate) mod elementwise;
pub(crate) mod exec;
pub(crate) mod infer;
pub(crate) mod linalg;
pub(crate) mod norm;
pub(crate) mod par;
pub(crate) mod pool;
pub(crate) mod shape;

/// Elementwise unary functions (ONNX op types in the docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unary {
    /// `Neg`
    Neg,
    /// `Abs`
    Abs,
    /// `Sqrt`
    Sqrt,
    /// `Reciprocal`
    Reciprocal,
    /// `Exp`
    Exp,
    /// `Log`
    Log,
    /// `Tanh`
    Tanh,
    /// `Erf`
    Erf,
    /// `Sigmoid`
    Sigmoid,
    /// `Relu`
    Relu,
    /// `Gelu` with `approximate="none"`: x * Phi(x) via erf.
    GeluErf,
    /// `Gelu` with `approximate="tanh"`.
    GeluTanh,
    /// SiLU / swish: x * sigmoid(x) (ONNX has no op; reported as `"Silu"`).
    Silu,
}

impl Unary {
    /// ONNX op type.
    pub const fn op_type(self) -> &'static str {
        match self {
            Unary::Neg => "Neg",
            Unary::Abs => "Abs",
            Unary::Sqrt => "Sqrt",
            Unary::Reciprocal => "Reciprocal",
            Unary::Exp => "Exp",
            Unary::Log => "Log",
            Unary::Tanh => "Tanh",
            Unary::Erf => "Erf",
            Unary::Sigmoid => "Sigmoid",
            Unary::Relu => "Relu",
            Unary::GeluErf | Unary::GeluTanh => "Gelu",
            Unary::Silu => "Silu",
        }
    }

    /// Scalar f64 definition (the reference the kernels are tested against).
    pub fn eval_f64(self, x: f64) -> f64 {
        match self {
            Unary::Neg => -x,
            Unary::Abs => x.abs(),
            Unary::Sqrt => x.sqrt(),
            Unary::Reciprocal => 1.0 / x,
            Unary::Exp => x.exp(),
            Unary::Log => x.ln(),
            Unary::Tanh => x.tanh(),
            Unary::Erf => erf_f64(x),
            Unary::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Unary::Relu => x.max(0.0),
            Unary::GeluErf => 0.5 * x * (1.0 + erf_f64(x / std::f64::consts::SQRT_2)),
            Unary::GeluTanh => {
                let c = (2.0 / std::f64::consts::PI).sqrt();
                0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
            }
            Unary::Silu => x / (1.0 + (-x).exp()),
        }
    }
}

/// erf in f64 (Abramowitz-Stegun 7.1.26 is too coarse for a reference, so
/// this uses the series below 2.5 and the continued fraction above).
pub fn erf_f64(x: f64) -> f64 {
    let a = x.abs();
    let r = if a < 2.5 {
        // erf(x) = 2/sqrt(pi) * sum (-1)^n x^(2n+1) / (n! (2n+1))
        let mut term = a;
        let mut sum = a;
        let x2 = a * a;
        let mut n = 0.0;
        loop {
            n += 1.0;
            term *= -x2 / n;
            let add = term / (2.0 * n + 1.0);
            sum += add;
            // `<=`, not `<`: at x == 0 (or deep subnormals) both sides are
            // 0 and `<` never held, so erf(0) looped forever.
            if add.abs() <= 1e-17 * sum.abs() {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc via Lentz continued fraction.
        let x2 = a * a;
        let mut f = a;
        let mut c = a;
        let mut d = 0.0;
        for k in 1..200 {
            let ak = k as f64 * 0.5;
            d = a + ak * d;
            d = 1.0 / d;
            c = a + ak / c;
            let delta = c * d;
            f *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        // erfc(a) = exp(-a^2)/sqrt(pi) / f
        1.0 - (-x2).exp() / std::f64::consts::PI.sqrt() / f
    };
    if x < 0.0 { -r } else { r }
}

/// Elementwise binary functions with numpy broadcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Binary {
    /// `Add`
    Add,
    /// `Sub`
    Sub,
    /// `Mul`
    Mul,
    /// `Div`
    Div,
    /// `Max` (two inputs)
    Max,
    /// `Min` (two inputs)
    Min,
    /// `Pow`
    Pow,
}

impl Binary {
    /// ONNX op type.
    pub const fn op_type(self) -> &'static str {
        match self {
            Binary::Add => "Add",
            Binary::Sub => "Sub",
            Binary::Mul => "Mul",
            Binary::Div => "Div",
            Binary::Max => "Max",
            Binary::Min => "Min",
            Binary::Pow => "Pow",
        }
    }

    /// Scalar f64 definition.
    pub fn eval_f64(self, a: f64, b: f64) -> f64 {
        match self {
            Binary::Add => a + b,
            Binary::Sub => a - b,
            Binary::Mul => a * b,
            Binary::Div => a / b,
            Binary::Max => a.max(b),
            Binary::Min => a.min(b),
            Binary::Pow => a.powf(b),
        }
    }
}

/// The reduction of a `Reduce*` op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceKind {
    /// `ReduceSum`
    Sum,
    /// `ReduceMean`
    Mean,
    /// `ReduceMax`
    Max,
}

/// ONNX `auto_pad`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum AutoPad {
    /// Explicit `pads`.
    #[default]
    NotSet,
    /// Output size ceil(in / stride); extra padding at the end.
    SameUpper,
    /// Output size ceil(in / stride); extra padding at the beginning.
    SameLower,
    /// No padding.
    Valid,
}

/// Attributes of `Conv` (1-D or 2-D). Empty vectors mean the ONNX defaults
/// (strides and dilations 1, pads 0, kernel shape from the weight).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ConvAttrs {
    /// Spatial kernel shape; empty = from the weight.
    pub kernel_shape: Vec<usize>,
    /// Strides per spatial axis.
    pub strides: Vec<usize>,
    /// ONNX layout: all begins, then all ends.
    pub pads: Vec<usize>,
    /// Dilations per spatial axis.
    pub dilations: Vec<usize>,
    /// Number of groups (0 is read as 1).
    pub group: usize,
    /// Automatic padding.
    pub auto_pad: AutoPad,
}

/// Attributes of `MaxPool` / `AveragePool` (1-D or 2-D).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct PoolAttrs {
    /// Spatial window shape (required).
    pub kernel_shape: Vec<usize>,
    /// Strides; empty = 1.
    pub strides: Vec<usize>,
    /// ONNX layout: all begins, then all ends; empty = 0.
    pub pads: Vec<usize>,
    /// Dilations (MaxPool); empty = 1.
    pub dilations: Vec<usize>,
    /// Automatic padding.
    pub auto_pad: AutoPad,
    /// Output size rounds up instead of down.
    pub ceil_mode: bool,
    /// AveragePool: divide by the full window, padding included.
    pub count_include_pad: bool,
}

/// An operation with its attributes. Inputs follow ONNX order; trailing
/// optional inputs may be omitted.
#[derive(Clone, Debug)]
pub enum Op {
    /// `MatMul(A, B)`: numpy matmul, batched with broadcasting.
    MatMul,
    /// `Gemm(A, B, C?)`: alpha * A' * B' + beta * C, A and B 2-D.
    Gemm {
        /// Scale of the product.
        alpha: f32,
        /// Scale of C.
        beta: f32,
        /// Transpose A.
        trans_a: bool,
        /// Transpose B (`Linear` weights [out, in] use this).
        trans_b: bool,
    },
    /// `Conv(X, W, B?)`, NCW / NCHW.
    Conv(ConvAttrs),
    /// An elementwise unary function.
    Unary(Unary),
    /// An elementwise binary function with broadcasting.
    Binary(Binary),
    /// `Softmax` over one axis.
    Softmax {
        /// Axis (negative counts from the end).
        axis: i64,
    },
    /// `LogSoftmax` over one axis.
    LogSoftmax {
        /// Axis.
        axis: i64,
    },
    /// `LayerNormalization(X, Scale, B?)` over axes `axis..`.
    LayerNormalization {
        /// First normalized axis.
        axis: i64,
        /// Added to the variance.
        epsilon: f32,
    },
    /// `RMSNormalization(X, Scale)` over axes `axis..`.
    RmsNormalization {
        /// First normalized axis.
        axis: i64,
        /// Added to the mean square.
        epsilon: f32,
    },
    /// `ReduceSum` / `ReduceMean` / `ReduceMax`.
    Reduce {
        /// Which reduction.
        kind: ReduceKind,
        /// Axes; `None` = all.
        axes: Option<Vec<i64>>,
        /// Keep reduced axes as size 1.
        keepdims: bool,
    },
    /// `GlobalMaxPool`
    GlobalMaxPool,
    /// `GlobalAveragePool`
    GlobalAveragePool,
    /// `MaxPool`
    MaxPool(PoolAttrs),
    /// `AveragePool`
    AveragePool(PoolAttrs),
    /// `Gather(data, indices)` along an axis (embeddings use axis 0).
    Gather {
        /// Axis of `data`.
        axis: i64,
    },
    /// `Equal(A, B)` -> bool, with broadcasting.
    Equal,
    /// `Where(cond, X, Y)` with broadcasting.
    Where,
    /// `Cast` to a dtype.
    Cast {
        /// Target dtype.
        to: DType,
    },
    /// `Reshape(data, shape)`: 0 copies the input dim (unless `allowzero`), -1 is inferred.
    Reshape {
        /// ONNX `allowzero`.
        allowzero: bool,
    },
    /// `Transpose`
    Transpose {
        /// Permutation; `None` reverses the axes.
        perm: Option<Vec<usize>>,
    },
    /// `Flatten` to 2-D at `axis`.
    Flatten {
        /// Split point.
        axis: i64,
    },
    /// `Squeeze`
    Squeeze {
        /// Axes to drop; `None` = every size-1 axis.
        axes: Option<Vec<i64>>,
    },
    /// `Unsqueeze`
    Unsqueeze {
        /// Positions of the new axes in the output.
        axes: Vec<i64>,
    },
    /// `Concat` along an axis.
    Concat {
        /// Axis.
        axis: i64,
    },
    /// `Slice(data, starts, ends, axes?, steps?)`.
    Slice,
    /// `Expand(data, shape)`.
    Expand,
    /// `Shape` -> i64 dims `start..end`.
    Shape {
        /// First dim.
        start: i64,
        /// End dim (exclusive); `None` = rank.
        end: Option<i64>,
    },
    /// `Identity`
    Identity,
    /// `Constant`: a tensor baked into the graph.
    Constant {
        /// The value.
        value: Arc<Tensor>,
    },
}

impl Op {
    /// The ONNX op type (`"Gemm"`, `"Relu"`, ...).
    pub fn op_type(&self) -> &'static str {
        match self {
            Op::MatMul => "MatMul",
            Op::Gemm { .. } => "Gemm",
            Op::Conv(_) => "Conv",
            Op::Unary(u) => u.op_type(),
            Op::Binary(b) => b.op_type(),
            Op::Softmax { .. } => "Softmax",
            Op::LogSoftmax { .. } => "LogSoftmax",
            Op::LayerNormalization { .. } => "LayerNormalization",
            Op::RmsNormalization { .. } => "RMSNormalization",
            Op::Reduce {
                kind: ReduceKind::Sum,
                ..
            } => "ReduceSum",
            Op::Reduce {
                kind: ReduceKind::Mean,
                ..
            } => "ReduceMean",
            Op::Reduce {
                kind: ReduceKind::Max,
                ..
            } => "ReduceMax",
            Op::GlobalMaxPool => "GlobalMaxPool",
            Op::GlobalAveragePool => "GlobalAveragePool",
            Op::MaxPool(_) => "MaxPool",
            Op::AveragePool(_) => "AveragePool",
            Op::Gather { .. } => "Gather",
            Op::Equal => "Equal",
            Op::Where => "Where",
            Op::Cast { .. } => "Cast",
            Op::Reshape { .. } => "Reshape",
            Op::Transpose { .. } => "Transpose",
            Op::Flatten { .. } => "Flatten",
            Op::Squeeze { .. } => "Squeeze",
            Op::Unsqueeze { .. } => "Unsqueeze",
            Op::Concat { .. } => "Concat",
            Op::Slice => "Slice",
            Op::Expand => "Expand",
            Op::Shape { .. } => "Shape",
            Op::Identity => "Identity",
            Op::Constant { .. } => "Constant",
        }
    }

    /// Whether the op does floating-point arithmetic (and so takes a
    /// precision from the plan when its output is floating point). Data
    /// movement ops (Reshape, Transpose, Gather, Concat, ...) instead keep
    /// whatever storage dtype their input arrives in.
    pub fn is_float_compute(&self) -> bool {
        matches!(
            self,
            Op::MatMul
                | Op::Gemm { .. }
                | Op::Conv(_)
                | Op::Unary(_)
                | Op::Binary(_)
                | Op::Softmax { .. }
                | Op::LogSoftmax { .. }
                | Op::LayerNormalization { .. }
                | Op::RmsNormalization { .. }
                | Op::Reduce { .. }
                | Op::GlobalMaxPool
                | Op::GlobalAveragePool
                | Op::MaxPool(_)
                | Op::AveragePool(_)
        )
    }

    /// (min, max) number of inputs.
    pub fn arity(&self) -> (usize, usize) {
        match self {
            Op::MatMul
            | Op::Binary(_)
            | Op::Equal
            | Op::Gather { .. }
            | Op::Reshape { .. }
            | Op::Expand => (2, 2),
            Op::Gemm { .. } | Op::Conv(_) | Op::LayerNormalization { .. } => (2, 3),
            Op::RmsNormalization { .. } => (2, 2),
            Op::Where => (3, 3),
            Op::Concat { .. } => (1, usize::MAX),
            Op::Slice => (3, 5),
            Op::Constant { .. } => (0, 0),
            _ => (1, 1),
        }
    }

    /// Which inputs are floating-point data the op computes on (and so are
    /// stored in the node's precision). Index inputs (Gather indices, shape
    /// and slice parameters, Where's condition) are not.
    pub(crate) fn float_data_input(&self, i: usize) -> bool {
        match self {
            Op::Gather { .. } | Op::Reshape { .. } | Op::Expand | Op::Slice => i == 0,
            Op::Where => i > 0,
            Op::Shape { .. } => false,
            _ => true,
        }
    }

    pub(crate) fn check_arity(&self, node: &str, n: usize) -> Result<()> {
        let (lo, hi) = self.arity();
        if n < lo || n > hi {
            let expected = if lo == hi {
                lo.to_string()
            } else if hi == usize::MAX {
                format!("at least {lo}")
            } else {
                format!("{lo} to {hi}")
            };
            return Err(GraphError::Arity {
                node: node.to_string(),
                op_type: self.op_type(),
                expected,
                actual: n,
            });
        }
        Ok(())
    }
}

/// A value's static type while inferring.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Meta {
    pub dtype: DType,
    pub shape: Vec<Dim>,
}

impl Meta {
    pub fn of(t: &Tensor) -> Meta {
        Meta::of_view(&t.view())
    }

    pub fn of_view(t: &TensorView<'_>) -> Meta {
        Meta {
            dtype: t.dtype(),
            shape: super::graph::fixed_shape(t.shape()),
        }
    }
}
