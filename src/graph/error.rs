//! The one error type of the graph layer.

use std::fmt;

use super::dtype::DType;

/// Everything a user, a model or a weights file can get wrong in the graph
/// layer. Variants about a node carry its name, so reports point at it.
#[derive(Debug)]
#[non_exhaustive]
pub enum GraphError {
    /// A tensor accessor or kernel was given a tensor of another dtype.
    DTypeMismatch {
        /// What was being done.
        context: String,
        /// The dtype needed.
        expected: DType,
        /// The dtype found.
        actual: DType,
    },
    /// Data length does not match the product of the shape.
    DataLength {
        /// The shape given.
        shape: Vec<usize>,
        /// Elements needed.
        expected: usize,
        /// Elements given.
        actual: usize,
    },
    /// The product of a shape overflows `usize`.
    ShapeOverflow {
        /// The shape given.
        shape: Vec<usize>,
    },
    /// Raw bytes for a [`TensorView`](super::TensorView) do not start at a
    /// multiple of the element size, so they cannot be read in place.
    Misaligned {
        /// The dtype asked for.
        dtype: DType,
        /// The alignment it needs, in bytes.
        align: usize,
    },
    /// Two nodes, two values, or a node and a graph input share a name.
    DuplicateName {
        /// `"node"` or `"value"`.
        kind: &'static str,
        /// The name used twice.
        name: String,
    },
    /// A node reads a value nobody produces (or a graph output names one).
    UnknownValue {
        /// The node (or `"<graph output>"`).
        node: String,
        /// The value name (or id) it asked for.
        value: String,
    },
    /// The graph has a cycle through these nodes.
    Cycle {
        /// Nodes left when topological sorting stopped.
        nodes: Vec<String>,
    },
    /// The graph declares no outputs.
    NoOutputs,
    /// A node got the wrong number of inputs.
    Arity {
        /// Node name.
        node: String,
        /// ONNX op type.
        op_type: &'static str,
        /// What the op accepts, e.g. `"2"` or `"2..=3"`.
        expected: String,
        /// Inputs given.
        actual: usize,
    },
    /// Input shapes a node cannot combine (checked at build and at run time).
    ShapeMismatch {
        /// Node name.
        node: String,
        /// What does not fit.
        detail: String,
    },
    /// Input dtypes a node does not accept.
    InvalidDType {
        /// Node name.
        node: String,
        /// What does not fit.
        detail: String,
    },
    /// An attribute value the op does not accept.
    InvalidAttribute {
        /// Node name.
        node: String,
        /// What is wrong.
        detail: String,
    },
    /// A node failed while running on concrete data (e.g. an index out of range).
    Runtime {
        /// Node name.
        node: String,
        /// What went wrong.
        detail: String,
    },
    /// A precision plan names a node the graph does not have.
    UnknownNode {
        /// The name in the plan.
        name: String,
    },
    /// A precision plan lowers a node that is not a floating-point compute node.
    NotLowerable {
        /// Node name.
        name: String,
        /// Its op type.
        op_type: &'static str,
    },
    /// `run` was given an input name the graph does not have.
    UnknownInput {
        /// The name given.
        name: String,
    },
    /// `run` was not given a graph input.
    MissingInput {
        /// The graph input's name.
        name: String,
    },
    /// An input tensor's shape does not fit the graph input's declared shape.
    InputShape {
        /// Input name.
        name: String,
        /// Declared shape, e.g. `[batch, 64]`.
        expected: String,
        /// Shape given.
        actual: Vec<usize>,
    },
    /// An input tensor's dtype differs from the graph input's.
    InputDType {
        /// Input name.
        name: String,
        /// Declared dtype.
        expected: DType,
        /// Dtype given.
        actual: DType,
    },
    /// A symbolic dimension got two different sizes in one run.
    SymbolConflict {
        /// The symbol, e.g. `batch`.
        symbol: String,
        /// First size seen.
        first: usize,
        /// Conflicting size.
        second: usize,
    },
    /// A weights file has no tensor of this name.
    MissingTensor {
        /// The tensor name.
        name: String,
    },
    /// A weight tensor has another shape than the model needs.
    WeightShape {
        /// The tensor name.
        name: String,
        /// Shape needed.
        expected: Vec<usize>,
        /// Shape in the file.
        actual: Vec<usize>,
    },
    /// A weight tensor has another dtype than the model needs.
    WeightDType {
        /// The tensor name.
        name: String,
        /// Dtype needed.
        expected: DType,
        /// Dtype in the file.
        actual: DType,
    },
    /// A safetensors tensor of a dtype mixprec does not handle (e.g. u8, f64).
    UnsupportedDType {
        /// The tensor name.
        name: String,
        /// The dtype as safetensors names it.
        dtype: String,
    },
    /// A safetensors file is truncated, corrupt or otherwise unreadable.
    SafeTensors {
        /// The parser's message.
        detail: String,
    },
    /// A plan file is not valid JSON for a plan.
    PlanFormat {
        /// The parser's message.
        detail: String,
    },
    /// Reading or writing a file failed.
    Io {
        /// The path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl fmt::Display for GraphError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use GraphError::*;
        match self {
            DTypeMismatch {
                context,
                expected,
                actual,
            } => {
                write!(f, "{context}: expected dtype {expected}, got {actual}")
            }
            DataLength {
                shape,
                expected,
                actual,
            } => write!(
                f,
                "shape {shape:?} needs {expected} elements, data has {actual}"
            ),
            ShapeOverflow { shape } => {
                write!(f, "the element count of shape {shape:?} overflows usize")
            }
            Misaligned { dtype, align } => write!(
                f,
                "{dtype} data at this address is not {align}-byte aligned and cannot be viewed \
                 in place (Tensor::from_bytes copies it)"
            ),
            DuplicateName { kind, name } => write!(f, "duplicate {kind} name `{name}`"),
            UnknownValue { node, value } => {
                write!(f, "node `{node}` reads unknown value `{value}`")
            }
            Cycle { nodes } => write!(f, "the graph has a cycle through nodes {nodes:?}"),
            NoOutputs => f.write_str("the graph declares no outputs"),
            Arity {
                node,
                op_type,
                expected,
                actual,
            } => write!(
                f,
                "node `{node}` ({op_type}) takes {expected} inputs, got {actual}"
            ),
            ShapeMismatch { node, detail } => write!(f, "node `{node}`: shape mismatch: {detail}"),
            InvalidDType { node, detail } => write!(f, "node `{node}`: dtype error: {detail}"),
            InvalidAttribute { node, detail } => {
                write!(f, "node `{node}`: invalid attribute: {detail}")
            }
            Runtime { node, detail } => write!(f, "node `{node}` failed: {detail}"),
            UnknownNode { name } => write!(f, "the precision plan names unknown node `{name}`"),
            NotLowerable { name, op_type } => write!(
                f,
                "the precision plan lowers node `{name}` ({op_type}), which is not a floating-point compute node"
            ),
            UnknownInput { name } => write!(f, "the graph has no input named `{name}`"),
            MissingInput { name } => write!(f, "graph input `{name}` was not given"),
            InputShape {
                name,
                expected,
                actual,
            } => write!(
                f,
                "input `{name}` has shape {actual:?}, the graph expects {expected}"
            ),
            InputDType {
                name,
                expected,
                actual,
            } => write!(
                f,
                "input `{name}` has dtype {actual}, the graph expects {expected}"
            ),
            SymbolConflict {
                symbol,
                first,
                second,
            } => write!(
                f,
                "dimension `{symbol}` is {first} in one input and {second} in another"
            ),
            MissingTensor { name } => write!(f, "the weights have no tensor `{name}`"),
            WeightShape {
                name,
                expected,
                actual,
            } => write!(
                f,
                "weight `{name}` has shape {actual:?}, expected {expected:?}"
            ),
            WeightDType {
                name,
                expected,
                actual,
            } => write!(f, "weight `{name}` has dtype {actual}, expected {expected}"),
            UnsupportedDType { name, dtype } => {
                write!(f, "tensor `{name}` has unsupported dtype {dtype}")
            }
            SafeTensors { detail } => write!(f, "invalid safetensors data: {detail}"),
            PlanFormat { detail } => write!(f, "invalid precision plan: {detail}"),
            Io { path, source } => write!(f, "{path}: {source}"),
        }
    }
}

impl std::error::Error for GraphError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            GraphError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Shorthand for results of the graph layer.
pub type Result<T, E = GraphError> = std::result::Result<T, E>;
