//! Element types of graph tensors.

use std::fmt;

use mixprec_kernels::FloatType;
use serde::{Deserialize, Serialize};

/// The element type of a tensor or graph value.
///
/// The three floating-point types are the storage types the kernels accept;
/// the integer and boolean types carry indices, shapes and masks and are never
/// lowered by a precision plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// bfloat16.
    Bf16,
    /// IEEE binary16.
    F16,
    /// Signed 64-bit integer (ONNX's index and shape type).
    I64,
    /// Signed 32-bit integer.
    I32,
    /// Boolean, stored as one byte holding 0 or 1.
    Bool,
}

impl DType {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::Bf16 | DType::F16 => 2,
            DType::I64 => 8,
            DType::Bool => 1,
        }
    }

    /// Lower-case name: `f32`, `bf16`, `f16`, `i64`, `i32`, `bool`.
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::Bf16 => "bf16",
            DType::F16 => "f16",
            DType::I64 => "i64",
            DType::I32 => "i32",
            DType::Bool => "bool",
        }
    }

    /// Whether this is one of the three floating-point types.
    pub const fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::Bf16 | DType::F16)
    }

    /// Whether this is an integer type.
    pub const fn is_int(self) -> bool {
        matches!(self, DType::I64 | DType::I32)
    }

    /// The kernels' float type, for the floating-point dtypes.
    pub const fn float_type(self) -> Option<FloatType> {
        match self {
            DType::F32 => Some(FloatType::F32),
            DType::Bf16 => Some(FloatType::Bf16),
            DType::F16 => Some(FloatType::F16),
            _ => None,
        }
    }
}

impl From<FloatType> for DType {
    fn from(f: FloatType) -> Self {
        match f {
            FloatType::F32 => DType::F32,
            FloatType::Bf16 => DType::Bf16,
            FloatType::F16 => DType::F16,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Parses `f32`/`fp32`/`float32`, `bf16`/`bfloat16`, `f16`/`fp16`/`float16`
/// (case-insensitive) into a [`FloatType`], as plans and command lines spell them.
pub fn parse_float_type(s: &str) -> Option<FloatType> {
    match s.to_ascii_lowercase().as_str() {
        "f32" | "fp32" | "float32" | "float" => Some(FloatType::F32),
        "bf16" | "bfloat16" => Some(FloatType::Bf16),
        "f16" | "fp16" | "float16" | "half" => Some(FloatType::F16),
        _ => None,
    }
}
