//! The error type of the ONNX importer.

use std::fmt;

/// Everything a `.onnx` or `.pb` file can get wrong, or that the importer does
/// not support. Variants about a node name the node, its op type and the
/// opset it was imported under.
#[derive(Debug)]
#[non_exhaustive]
pub enum OnnxError {
    /// Reading a file failed.
    Io {
        /// The path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file is larger than [`ImportOptions::max_model_bytes`](super::ImportOptions::max_model_bytes)
    /// allows; it was not read.
    TooLarge {
        /// The path (or `"<bytes>"`).
        path: String,
        /// Its size in bytes.
        size: u64,
        /// The limit in bytes.
        limit: u64,
    },
    /// The bytes are not a valid protobuf message of the expected type.
    Decode {
        /// The message expected, e.g. `ModelProto`.
        message: &'static str,
        /// The protobuf decoder's message.
        detail: String,
    },
    /// The model is structurally invalid (no graph, missing opset import,
    /// a value nobody produces, duplicate outputs, ...).
    InvalidModel {
        /// What is wrong.
        detail: String,
    },
    /// A tensor's dims, data type and payload do not agree (negative or
    /// overflowing dims, payload length not the dims product, ...).
    InvalidTensor {
        /// The tensor's name (or where it came from).
        name: String,
        /// What is wrong.
        detail: String,
    },
    /// A tensor or value of a data type the importer does not handle.
    UnsupportedDType {
        /// The tensor or value name.
        name: String,
        /// The ONNX data type name, e.g. `STRING`.
        dtype: String,
    },
    /// A tensor's external data could not be used (missing key, path leaving
    /// the model's folder, file too short, ...).
    ExternalData {
        /// The tensor's name.
        name: String,
        /// What is wrong.
        detail: String,
    },
    /// An op type (or domain) the importer does not support.
    UnsupportedOp {
        /// The node's name (or its first output when unnamed).
        node: String,
        /// The op type.
        op_type: String,
        /// The op's domain (`""` is the default `ai.onnx` domain).
        domain: String,
        /// The opset version imported for that domain.
        opset: i64,
    },
    /// A supported op used with an attribute, attribute value or input
    /// combination the importer does not support or that is invalid.
    UnsupportedAttribute {
        /// The node's name.
        node: String,
        /// The op type.
        op_type: String,
        /// The opset version.
        opset: i64,
        /// The attribute (or input) concerned.
        attribute: String,
        /// What is wrong.
        detail: String,
    },
    /// A node is malformed (wrong number of inputs, an input that must be a
    /// constant is not, shapes that cannot combine while folding, ...).
    InvalidNode {
        /// The node's name.
        node: String,
        /// The op type.
        op_type: String,
        /// The opset version.
        opset: i64,
        /// What is wrong.
        detail: String,
    },
    /// The op-graph layer rejected the imported graph.
    Graph(crate::graph::GraphError),
}

impl fmt::Display for OnnxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use OnnxError::*;
        match self {
            Io { path, source } => write!(f, "{path}: {source}"),
            TooLarge { path, size, limit } => write!(
                f,
                "{path}: {size} bytes is over the import limit of {limit} bytes"
            ),
            Decode { message, detail } => write!(f, "invalid ONNX {message}: {detail}"),
            InvalidModel { detail } => write!(f, "invalid ONNX model: {detail}"),
            InvalidTensor { name, detail } => write!(f, "invalid tensor `{name}`: {detail}"),
            UnsupportedDType { name, dtype } => {
                write!(
                    f,
                    "`{name}` has data type {dtype}, which mixprec does not import"
                )
            }
            ExternalData { name, detail } => {
                write!(f, "external data of tensor `{name}`: {detail}")
            }
            UnsupportedOp {
                node,
                op_type,
                domain,
                opset,
            } => {
                let d = if domain.is_empty() { "ai.onnx" } else { domain };
                write!(
                    f,
                    "node `{node}`: op {d}:{op_type} (opset {opset}) is not supported"
                )
            }
            UnsupportedAttribute {
                node,
                op_type,
                opset,
                attribute,
                detail,
            } => write!(
                f,
                "node `{node}` ({op_type}, opset {opset}): attribute `{attribute}`: {detail}"
            ),
            InvalidNode {
                node,
                op_type,
                opset,
                detail,
            } => {
                write!(f, "node `{node}` ({op_type}, opset {opset}): {detail}")
            }
            Graph(e) => write!(f, "op-graph: {e}"),
        }
    }
}

impl std::error::Error for OnnxError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OnnxError::Io { source, .. } => Some(source),
            OnnxError::Graph(e) => Some(e),
            _ => None,
        }
    }
}

impl From<crate::graph::GraphError> for OnnxError {
    fn from(e: crate::graph::GraphError) -> Self {
        OnnxError::Graph(e)
    }
}
