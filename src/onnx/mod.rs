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
mod fold;
mod fuse;
mod ir;
mod lower;
pub mod proto;
pub mod tensor;

use std::path::Path;

use prost::Message;

pub use error::OnnxError;
pub use fuse::Fusion;
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

/// A model imported into an op-graph.
#[derive(Debug)]
pub struct ImportedModel {
    /// The op-graph, ready for `compile`.
    pub graph: crate::graph::Graph,
    /// Graph input names, in ONNX `graph.input` order (initializers excluded);
    /// the `i`-th entry is fed by a test set's `input_i.pb`.
    pub inputs: Vec<String>,
    /// Graph output value names, in ONNX `graph.output` order. Each is the
    /// ONNX output name unless another value already had that name.
    pub outputs: Vec<String>,
    /// The default-domain opset the model was imported under.
    pub opset: i64,
    /// The fusions performed (empty with `fuse: false`).
    pub fusions: Vec<Fusion>,
    /// ONNX nodes lowered to several graph nodes (BatchNormalization,
    /// PRelu, Pad, ...): (ONNX node name, graph node names).
    pub expansions: Vec<(String, Vec<String>)>,
    /// Number of ONNX nodes evaluated at load time.
    pub folded: usize,
    /// Things the user should know (e.g. f64 data imported as f32).
    pub notes: Vec<String>,
}

/// Loads a `.onnx` file; external data files are looked up next to it.
pub fn load(path: impl AsRef<Path>, opts: &ImportOptions) -> Result<ImportedModel, OnnxError> {
    let path = path.as_ref();
    let model = read_model(path, opts.max_model_bytes)?;
    import_model(&model, path.parent(), opts)
}

/// Imports a model from bytes. `base_dir` is where external data files are
/// (`None`: a model with external data is an error).
pub fn load_bytes(
    bytes: &[u8],
    base_dir: Option<&Path>,
    opts: &ImportOptions,
) -> Result<ImportedModel, OnnxError> {
    let model = decode_model(bytes, opts.max_model_bytes)?;
    import_model(&model, base_dir, opts)
}

/// Imports a decoded model.
pub fn import_model(
    model: &proto::ModelProto,
    base_dir: Option<&Path>,
    opts: &ImportOptions,
) -> Result<ImportedModel, OnnxError> {
    let mut g = ir::IGraph::from_model(model, base_dir)?;
    let mut notes = Vec::new();
    let f64_inputs: Vec<&str> = g
        .inputs
        .iter()
        .chain(&g.outputs)
        .filter(|v| v.elem_type == proto::data_type::DOUBLE)
        .map(|v| v.name.as_str())
        .collect();
    if !f64_inputs.is_empty() || g.consts.values().any(|t| t.from_f64) {
        notes.push(format!(
            "DOUBLE (f64) data is imported as f32 (mixprec has no f64 tensors); f64 values: {f64_inputs:?}"
        ));
    }
    let folded = if opts.fold_constants {
        fold::fold(&mut g)?
    } else {
        0
    };
    let fusions = if opts.fuse {
        fuse::fuse(&mut g)
    } else {
        Vec::new()
    };
    g.remove_dead();
    let lowered = lower::Lower::run(&g)?;
    Ok(ImportedModel {
        graph: lowered.graph,
        inputs: lowered.inputs,
        outputs: lowered.outputs,
        opset: g.opset,
        fusions,
        expansions: lowered.expansions,
        folded,
        notes,
    })
}
