//! Named tensors from and to safetensors files.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use safetensors::{Dtype, SafeTensors, View};

use super::dtype::DType;
use super::error::{GraphError, Result};
use super::tensor::Tensor;

/// A set of named tensors, e.g. a model's weights loaded from safetensors.
/// Every accessor checks and returns typed errors; corrupt or truncated
/// files give [`GraphError::SafeTensors`], never a panic.
#[derive(Clone, Debug, Default)]
pub struct Weights {
    tensors: BTreeMap<String, Arc<Tensor>>,
    metadata: HashMap<String, String>,
}

fn from_st_dtype(name: &str, d: Dtype) -> Result<DType> {
    Ok(match d {
        Dtype::F32 => DType::F32,
        Dtype::BF16 => DType::Bf16,
        Dtype::F16 => DType::F16,
        Dtype::I64 => DType::I64,
        Dtype::I32 => DType::I32,
        Dtype::BOOL => DType::Bool,
        other => {
            return Err(GraphError::UnsupportedDType {
                name: name.to_string(),
                dtype: format!("{other:?}"),
            });
        }
    })
}

fn to_st_dtype(d: DType) -> Dtype {
    match d {
        DType::F32 => Dtype::F32,
        DType::Bf16 => Dtype::BF16,
        DType::F16 => Dtype::F16,
        DType::I64 => Dtype::I64,
        DType::I32 => Dtype::I32,
        DType::Bool => Dtype::BOOL,
    }
}

struct StView<'a>(&'a Tensor);

impl View for StView<'_> {
    fn dtype(&self) -> Dtype {
        to_st_dtype(self.0.dtype())
    }
    fn shape(&self) -> &[usize] {
        self.0.shape()
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.0.bytes())
    }
    fn data_len(&self) -> usize {
        self.0.byte_len()
    }
}

impl Weights {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses safetensors bytes (copied into aligned tensors).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| GraphError::SafeTensors {
            detail: e.to_string(),
        })?;
        let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| GraphError::SafeTensors {
            detail: e.to_string(),
        })?;
        let mut w = Weights {
            tensors: BTreeMap::new(),
            metadata: meta.metadata().clone().unwrap_or_default(),
        };
        for (name, view) in st.iter() {
            let dtype = from_st_dtype(name, view.dtype())?;
            let t = Tensor::from_bytes(dtype, view.shape(), view.data()).map_err(|_| {
                GraphError::SafeTensors {
                    detail: format!(
                        "tensor `{name}`: data length does not match shape {:?}",
                        view.shape()
                    ),
                }
            })?;
            w.tensors.insert(name.to_string(), Arc::new(t));
        }
        Ok(w)
    }

    /// Reads a safetensors file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let p = path.as_ref();
        let bytes = std::fs::read(p).map_err(|e| GraphError::Io {
            path: p.display().to_string(),
            source: e,
        })?;
        Self::from_bytes(&bytes)
    }

    /// The tensor `name` of any dtype and shape.
    pub fn tensor(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .map(|t| t.as_ref())
            .ok_or_else(|| GraphError::MissingTensor {
                name: name.to_string(),
            })
    }

    /// The tensor `name`, shared (for [`super::GraphBuilder::initializer_arc`]).
    pub fn tensor_arc(&self, name: &str) -> Result<Arc<Tensor>> {
        self.tensors
            .get(name)
            .cloned()
            .ok_or_else(|| GraphError::MissingTensor {
                name: name.to_string(),
            })
    }

    /// The floating-point tensor `name` with exactly `shape`; errors with
    /// [`GraphError::MissingTensor`], [`GraphError::WeightDType`] (not f32,
    /// bf16 or f16) or [`GraphError::WeightShape`].
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<&Tensor> {
        let t = self.tensor(name)?;
        if !t.dtype().is_float() {
            return Err(GraphError::WeightDType {
                name: name.to_string(),
                expected: DType::F32,
                actual: t.dtype(),
            });
        }
        if t.shape() != shape {
            return Err(GraphError::WeightShape {
                name: name.to_string(),
                expected: shape.to_vec(),
                actual: t.shape().to_vec(),
            });
        }
        Ok(t)
    }

    /// The tensor `name` with exactly `dtype` and `shape`.
    pub fn get_typed(&self, name: &str, dtype: DType, shape: &[usize]) -> Result<&Tensor> {
        let t = self.tensor(name)?;
        if t.dtype() != dtype {
            return Err(GraphError::WeightDType {
                name: name.to_string(),
                expected: dtype,
                actual: t.dtype(),
            });
        }
        if t.shape() != shape {
            return Err(GraphError::WeightShape {
                name: name.to_string(),
                expected: shape.to_vec(),
                actual: t.shape().to_vec(),
            });
        }
        Ok(t)
    }

    /// Adds or replaces a tensor.
    pub fn insert(&mut self, name: impl Into<String>, t: Tensor) {
        self.tensors.insert(name.into(), Arc::new(t));
    }

    /// (name, tensor) pairs sorted by name; `run` takes them as inputs:
    /// `model.run(&weights.iter().collect::<Vec<_>>())`.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v.as_ref()))
    }

    /// Removes and returns a tensor.
    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        self.tensors
            .remove(name)
            .map(|t| Arc::try_unwrap(t).unwrap_or_else(|t| (*t).clone()))
    }

    /// Sets a `__metadata__` string written by `to_bytes` / `save`.
    pub fn set_metadata(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.metadata.insert(key.into(), value.into());
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The file's `__metadata__` strings.
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// Serializes to safetensors bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let meta = if self.metadata.is_empty() {
            None
        } else {
            Some(self.metadata.clone())
        };
        safetensors::serialize(
            self.tensors.iter().map(|(k, v)| (k.as_str(), StView(v))),
            &meta,
        )
        .map_err(|e| GraphError::SafeTensors {
            detail: e.to_string(),
        })
    }

    /// Writes a safetensors file atomically (temporary file, then rename).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let p = path.as_ref();
        let io = |e| GraphError::Io {
            path: p.display().to_string(),
            source: e,
        };
        let bytes = self.to_bytes()?;
        let dir = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        std::io::Write::write_all(&mut tmp, &bytes).map_err(io)?;
        tmp.persist(p).map_err(|e| io(e.error))?;
        Ok(())
    }
}

impl<S: Into<String>> FromIterator<(S, Tensor)> for Weights {
    fn from_iter<I: IntoIterator<Item = (S, Tensor)>>(iter: I) -> Self {
        let mut w = Weights::new();
        for (k, t) in iter {
            w.insert(k, t);
        }
        w
    }
}
