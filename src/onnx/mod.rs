//! ONNX import: parse `.onnx` files (protobuf `ModelProto`) and turn them into
//! mixprec op-graphs.
//!
//! * [`proto`]: the hand-written `prost` messages for the part of `onnx.proto`
//!   the importer reads (no `protoc` needed to build).
//! * [`tensor`]: `TensorProto` payloads (raw and typed fields, external data)
//!   and ONNX test-data `.pb` files.
//!
//! Every file size, tensor dim product and payload length is checked before
//! use: malformed input gives an [`OnnxError`], never a panic.

mod error;
pub mod proto;
pub mod tensor;

use std::path::Path;

use prost::Message;

pub use error::OnnxError;
pub use tensor::{HostData, HostTensor, decode_tensor, load_tensor, tensor_from_proto};

/// Default for [`ImportOptions::max_model_bytes`]: 2 GiB, protobuf's own
/// ceiling for one message.
pub const DEFAULT_MAX_MODEL_BYTES: u64 = 2 << 30;

/// How [`load`] imports a model.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// Fuse exact op patterns (MatMul+Add, decomposed LayerNorm, GELU,
    /// Softmax) into single nodes. Each fusion is recorded.
    pub fuse: bool,
    /// Evaluate nodes whose inputs are all constants at load time.
    pub fold_constants: bool,
    /// Files (model and `.pb`) larger than this are refused before reading.
    pub max_model_bytes: u64,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            fuse: true,
            fold_constants: true,
            max_model_bytes: DEFAULT_MAX_MODEL_BYTES,
        }
    }
}

/// Decodes a serialized `ModelProto`, refusing more than `max_bytes` bytes.
pub fn decode_model(bytes: &[u8], max_bytes: u64) -> Result<proto::ModelProto, OnnxError> {
    if bytes.len() as u64 > max_bytes {
        return Err(OnnxError::TooLarge {
            path: "<bytes>".into(),
            size: bytes.len() as u64,
            limit: max_bytes,
        });
    }
    proto::ModelProto::decode(bytes).map_err(|e| OnnxError::Decode {
        message: "ModelProto",
        detail: e.to_string(),
    })
}

/// Reads and decodes a `.onnx` file, refusing files over `max_bytes` unread.
pub fn read_model(path: impl AsRef<Path>, max_bytes: u64) -> Result<proto::ModelProto, OnnxError> {
    let bytes = tensor::read_bounded(path.as_ref(), max_bytes)?;
    decode_model(&bytes, max_bytes)
}
