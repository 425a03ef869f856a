//! ONNX `TensorProto` to host tensors: every payload encoding, external data,
//! and the `input_i.pb` / `output_i.pb` files of ONNX test data sets.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path};

use half::{bf16, f16};
use prost::Message;

use super::error::OnnxError;
use super::proto::{TensorProto, data_location, data_type};

/// The element storage of a [`HostTensor`].
#[derive(Clone, Debug, PartialEq)]
pub enum HostData {
    /// f32 (also the landing type of ONNX DOUBLE, see [`HostTensor::from_f64`]).
    F32(Vec<f32>),
    /// IEEE binary16.
    F16(Vec<f16>),
    /// bfloat16.
    Bf16(Vec<bf16>),
    /// i64 (ONNX INT64, UINT32, and UINT64 values that fit).
    I64(Vec<i64>),
    /// i32 (ONNX INT32, and INT8/UINT8/INT16/UINT16 widened losslessly).
    I32(Vec<i32>),
    /// Booleans.
    Bool(Vec<bool>),
}

impl HostData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            HostData::F32(v) => v.len(),
            HostData::F16(v) => v.len(),
            HostData::Bf16(v) => v.len(),
            HostData::I64(v) => v.len(),
            HostData::I32(v) => v.len(),
            HostData::Bool(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type's short name (`f32`, `f16`, `bf16`, `i64`, `i32`, `bool`).
    pub fn type_name(&self) -> &'static str {
        match self {
            HostData::F32(_) => "f32",
            HostData::F16(_) => "f16",
            HostData::Bf16(_) => "bf16",
            HostData::I64(_) => "i64",
            HostData::I32(_) => "i32",
            HostData::Bool(_) => "bool",
        }
    }

    /// Whether the elements are floating point.
    pub fn is_float(&self) -> bool {
        matches!(
            self,
            HostData::F32(_) | HostData::F16(_) | HostData::Bf16(_)
        )
    }
}

/// A tensor decoded from ONNX, held in plain vectors: initializers,
/// `Constant` values, folded constants and test-data tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    /// Row-major dims (empty for a scalar).
    pub shape: Vec<usize>,
    /// The elements.
    pub data: HostData,
    /// Whether the file held ONNX DOUBLE values that were rounded to f32
    /// (mixprec has no f64 tensors).
    pub from_f64: bool,
}

impl HostTensor {
    /// An f32 tensor. Panics if `data.len()` is not the shape's product
    /// (a programmer error, like `copy_from_slice`).
    pub fn f32(shape: &[usize], data: Vec<f32>) -> HostTensor {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "HostTensor::f32: length"
        );
        HostTensor {
            shape: shape.to_vec(),
            data: HostData::F32(data),
            from_f64: false,
        }
    }

    /// An i64 tensor. Panics if `data.len()` is not the shape's product.
    pub fn i64(shape: &[usize], data: Vec<i64>) -> HostTensor {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "HostTensor::i64: length"
        );
        HostTensor {
            shape: shape.to_vec(),
            data: HostData::I64(data),
            from_f64: false,
        }
    }

    /// A bool tensor. Panics if `data.len()` is not the shape's product.
    pub fn bool(shape: &[usize], data: Vec<bool>) -> HostTensor {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "HostTensor::bool: length"
        );
        HostTensor {
            shape: shape.to_vec(),
            data: HostData::Bool(data),
            from_f64: false,
        }
    }

    /// An f32 tensor rounded from f64 values, marked [`from_f64`](Self::from_f64).
    pub fn from_f64(shape: &[usize], data: &[f64]) -> HostTensor {
        let mut t = HostTensor::f32(shape, data.iter().map(|&v| v as f32).collect());
        t.from_f64 = true;
        t
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Copies into an op-graph tensor of the same element type.
    pub fn to_tensor(&self) -> Result<crate::graph::Tensor, OnnxError> {
        super::lower::to_tensor(self)
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The elements widened to f32 (integers as `as f32`, booleans 0/1).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match &self.data {
            HostData::F32(v) => v.clone(),
            HostData::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            HostData::Bf16(v) => v.iter().map(|x| x.to_f32()).collect(),
            HostData::I64(v) => v.iter().map(|&x| x as f32).collect(),
            HostData::I32(v) => v.iter().map(|&x| x as f32).collect(),
            HostData::Bool(v) => v.iter().map(|&x| x as u8 as f32).collect(),
        }
    }

    /// The elements as i64 (floats truncate toward zero, booleans 0/1).
    pub fn to_i64_vec(&self) -> Vec<i64> {
        match &self.data {
            HostData::I64(v) => v.clone(),
            HostData::I32(v) => v.iter().map(|&x| x as i64).collect(),
            HostData::Bool(v) => v.iter().map(|&x| x as i64).collect(),
            _ => self.to_f32_vec().iter().map(|&x| x as i64).collect(),
        }
    }
}

/// Decodes one serialized `TensorProto` (the format of the `input_i.pb` and
/// `output_i.pb` files in ONNX test data sets). Rejects inputs over
/// `max_bytes` before decoding.
pub fn decode_tensor(bytes: &[u8], max_bytes: u64) -> Result<(String, HostTensor), OnnxError> {
    if bytes.len() as u64 > max_bytes {
        return Err(OnnxError::TooLarge {
            path: "<bytes>".into(),
            size: bytes.len() as u64,
            limit: max_bytes,
        });
    }
    let proto = TensorProto::decode(bytes).map_err(|e| OnnxError::Decode {
        message: "TensorProto",
        detail: e.to_string(),
    })?;
    let name = proto.name.clone().unwrap_or_default();
    let t = tensor_from_proto(&proto, None)?;
    Ok((name, t))
}

/// Reads a `.pb` file holding one serialized `TensorProto`; returns its name
/// (often empty) and the tensor. Files over `max_bytes` are refused unread.
pub fn load_tensor(
    path: impl AsRef<Path>,
    max_bytes: u64,
) -> Result<(String, HostTensor), OnnxError> {
    let path = path.as_ref();
    let bytes = read_bounded(path, max_bytes)?;
    decode_tensor(&bytes, max_bytes)
}

/// Reads a whole file after checking its size against `limit`.
pub(crate) fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, OnnxError> {
    let io = |source| OnnxError::Io {
        path: path.display().to_string(),
        source,
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > limit {
        return Err(OnnxError::TooLarge {
            path: path.display().to_string(),
            size,
            limit,
        });
    }
    let mut f = File::open(path).map_err(io)?;
    let mut bytes = Vec::with_capacity(size as usize);
    // `take` guards against a file that grows between metadata and read.
    (&mut f)
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(OnnxError::TooLarge {
            path: path.display().to_string(),
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

/// Bytes per element of the data types stored in `raw_data` that mixprec
/// imports; `None` for the others.
fn raw_elem_size(dt: i32) -> Option<usize> {
    Some(match dt {
        data_type::FLOAT | data_type::INT32 | data_type::UINT32 => 4,
        data_type::DOUBLE | data_type::INT64 | data_type::UINT64 => 8,
        data_type::FLOAT16 | data_type::BFLOAT16 | data_type::INT16 | data_type::UINT16 => 2,
        data_type::INT8 | data_type::UINT8 | data_type::BOOL => 1,
        _ => return None,
    })
}

/// Converts a `TensorProto` into a host tensor. `base_dir` is the folder of
/// the model file, where external data files live; without it, a tensor with
/// external data is an error.
///
/// Every declared dim must be non-negative, their product must not overflow,
/// and the payload must hold exactly that many elements.
pub fn tensor_from_proto(
    t: &TensorProto,
    base_dir: Option<&Path>,
) -> Result<HostTensor, OnnxError> {
    let name = t.name.clone().unwrap_or_default();
    let invalid = |detail: String| OnnxError::InvalidTensor {
        name: name.clone(),
        detail,
    };
    let mut shape = Vec::with_capacity(t.dims.len());
    let mut numel: usize = 1;
    for &d in &t.dims {
        let d =
            usize::try_from(d).map_err(|_| invalid(format!("negative dim {d} in {:?}", t.dims)))?;
        numel = numel
            .checked_mul(d)
            .ok_or_else(|| invalid(format!("dims {:?} overflow the address space", t.dims)))?;
        shape.push(d);
    }
    let dt = t.data_type.unwrap_or(data_type::UNDEFINED);
    let Some(esize) = raw_elem_size(dt) else {
        return Err(OnnxError::UnsupportedDType {
            name,
            dtype: data_type::name(dt),
        });
    };
    let nbytes = numel
        .checked_mul(esize)
        .ok_or_else(|| invalid(format!("dims {:?} overflow the address space", t.dims)))?;

    let external = t.data_location == Some(data_location::EXTERNAL);
    let raw: Option<Vec<u8>> = if external {
        Some(read_external(t, &name, base_dir, nbytes)?)
    } else {
        None
    };
    let raw = raw.as_deref().or(t.raw_data.as_deref());

    if let Some(raw) = raw {
        if raw.len() != nbytes {
            return Err(invalid(format!(
                "dims {:?} of {} need {nbytes} bytes, raw_data has {}",
                t.dims,
                data_type::name(dt),
                raw.len()
            )));
        }
        return Ok(from_raw(dt, shape, raw));
    }

    // Typed fields: the element count must match the dims exactly.
    let check = |n: usize| {
        if n == numel {
            Ok(())
        } else {
            Err(invalid(format!(
                "dims {:?} need {numel} elements, the {} payload has {n}",
                t.dims,
                data_type::name(dt)
            )))
        }
    };
    let data = match dt {
        data_type::FLOAT => {
            check(t.float_data.len())?;
            HostData::F32(t.float_data.clone())
        }
        data_type::DOUBLE => {
            check(t.double_data.len())?;
            return Ok(HostTensor::from_f64(&shape, &t.double_data));
        }
        data_type::INT64 => {
            check(t.int64_data.len())?;
            HostData::I64(t.int64_data.clone())
        }
        data_type::UINT32 | data_type::UINT64 => {
            check(t.uint64_data.len())?;
            let mut v = Vec::with_capacity(numel);
            for &x in &t.uint64_data {
                v.push(
                    i64::try_from(x)
                        .map_err(|_| invalid(format!("UINT64 value {x} does not fit in i64")))?,
                );
            }
            HostData::I64(v)
        }
        data_type::INT32
        | data_type::INT16
        | data_type::INT8
        | data_type::UINT16
        | data_type::UINT8 => {
            check(t.int32_data.len())?;
            HostData::I32(t.int32_data.clone())
        }
        data_type::BOOL => {
            check(t.int32_data.len())?;
            HostData::Bool(t.int32_data.iter().map(|&x| x != 0).collect())
        }
        // 16-bit floats travel bit-wise in the low half of int32_data.
        data_type::FLOAT16 => {
            check(t.int32_data.len())?;
            HostData::F16(
                t.int32_data
                    .iter()
                    .map(|&x| f16::from_bits(x as u16))
                    .collect(),
            )
        }
        data_type::BFLOAT16 => {
            check(t.int32_data.len())?;
            HostData::Bf16(
                t.int32_data
                    .iter()
                    .map(|&x| bf16::from_bits(x as u16))
                    .collect(),
            )
        }
        _ => unreachable!("raw_elem_size accepted only the types above"),
    };
    Ok(HostTensor {
        shape,
        data,
        from_f64: false,
    })
}

/// Decodes little-endian packed elements; `raw.len()` was checked.
fn from_raw(dt: i32, shape: Vec<usize>, raw: &[u8]) -> HostTensor {
    fn le<const N: usize, T>(raw: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
        raw.chunks_exact(N)
            .map(|c| f(c.try_into().expect("chunk of N")))
            .collect()
    }
    let data = match dt {
        data_type::FLOAT => HostData::F32(le(raw, f32::from_le_bytes)),
        data_type::DOUBLE => {
            let v: Vec<f64> = le(raw, f64::from_le_bytes);
            return HostTensor::from_f64(&shape, &v);
        }
        data_type::INT64 => HostData::I64(le(raw, i64::from_le_bytes)),
        // Values of u64 past i64::MAX wrap; no index or shape gets there.
        data_type::UINT64 => HostData::I64(le(raw, |b| u64::from_le_bytes(b) as i64)),
        data_type::UINT32 => HostData::I64(le(raw, |b| u32::from_le_bytes(b) as i64)),
        data_type::INT32 => HostData::I32(le(raw, i32::from_le_bytes)),
        data_type::INT16 => HostData::I32(le(raw, |b| i16::from_le_bytes(b) as i32)),
        data_type::UINT16 => HostData::I32(le(raw, |b| u16::from_le_bytes(b) as i32)),
        data_type::INT8 => HostData::I32(raw.iter().map(|&b| b as i8 as i32).collect()),
        data_type::UINT8 => HostData::I32(raw.iter().map(|&b| b as i32).collect()),
        data_type::BOOL => HostData::Bool(raw.iter().map(|&b| b != 0).collect()),
        data_type::FLOAT16 => HostData::F16(le(raw, |b| f16::from_bits(u16::from_le_bytes(b)))),
        data_type::BFLOAT16 => HostData::Bf16(le(raw, |b| bf16::from_bits(u16::from_le_bytes(b)))),
        _ => unreachable!("raw_elem_size accepted only the types above"),
    };
    HostTensor {
        shape,
        data,
        from_f64: false,
    }
}

/// Reads the `nbytes` of a tensor stored in a file next to the model.
///
/// The location must be a relative path that stays inside `base_dir`: no
/// absolute paths, no `..`, and (after resolving symlinks) still under it.
fn read_external(
    t: &TensorProto,
    name: &str,
    base_dir: Option<&Path>,
    nbytes: usize,
) -> Result<Vec<u8>, OnnxError> {
    let err = |detail: String| OnnxError::ExternalData {
        name: name.to_string(),
        detail,
    };
    let Some(base) = base_dir else {
        return Err(err(
            "the model was not loaded from a file, so external data has no folder".into(),
        ));
    };
    let mut location = None;
    let mut offset: u64 = 0;
    let mut length: Option<u64> = None;
    for e in &t.external_data {
        let v = e.value.as_deref().unwrap_or("");
        match e.key.as_deref().unwrap_or("") {
            "location" => location = Some(v.to_string()),
            "offset" => {
                offset = v
                    .parse()
                    .map_err(|_| err(format!("offset `{v}` is not a number")))?
            }
            "length" => {
                length = Some(
                    v.parse()
                        .map_err(|_| err(format!("length `{v}` is not a number")))?,
                )
            }
            _ => {} // checksum and unknown keys are informational
        }
    }
    let location = location.ok_or_else(|| err("no `location` key".into()))?;
    let rel = Path::new(&location);
    if location.is_empty()
        || rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(err(format!(
            "location `{location}` must be a relative path inside the model's folder"
        )));
    }
    let path = base.join(rel);
    let io = |e: std::io::Error| err(format!("{}: {e}", path.display()));
    let canon_base = base.canonicalize().map_err(io)?;
    let canon = path.canonicalize().map_err(io)?;
    if !canon.starts_with(&canon_base) {
        return Err(err(format!(
            "location `{location}` resolves outside the model's folder"
        )));
    }
    if let Some(len) = length
        && len != nbytes as u64
    {
        return Err(err(format!(
            "length {len} but the dims need {nbytes} bytes"
        )));
    }
    let mut f = File::open(&canon).map_err(io)?;
    let size = f.metadata().map_err(io)?.len();
    let end = offset
        .checked_add(nbytes as u64)
        .ok_or_else(|| err("offset + length overflows".into()))?;
    if end > size {
        return Err(err(format!(
            "needs bytes {offset}..{end} but {} has {size}",
            path.display()
        )));
    }
    f.seek(SeekFrom::Start(offset)).map_err(io)?;
    let mut buf = vec![0u8; nbytes];
    f.read_exact(&mut buf).map_err(io)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::proto::StringStringEntryProto;

    fn raw_f32(dims: &[i64], v: &[f32]) -> TensorProto {
        TensorProto {
            dims: dims.to_vec(),
            data_type: Some(data_type::FLOAT),
            raw_data: Some(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            ..Default::default()
        }
    }

    #[test]
    fn raw_and_typed_payloads_agree() {
        let v = [1.5f32, -2.0, 3.25, 0.0, 7.0, -0.5];
        let raw = tensor_from_proto(&raw_f32(&[2, 3], &v), None).unwrap();
        let typed = TensorProto {
            dims: vec![2, 3],
            data_type: Some(data_type::FLOAT),
            float_data: v.to_vec(),
            ..Default::default()
        };
        assert_eq!(tensor_from_proto(&typed, None).unwrap(), raw);
        assert_eq!(raw.shape, vec![2, 3]);
        // f16 in int32_data holds the bit pattern.
        let h = TensorProto {
            dims: vec![2],
            data_type: Some(data_type::FLOAT16),
            int32_data: vec![
                f16::from_f32(1.5).to_bits() as i32,
                f16::from_f32(-3.0).to_bits() as i32,
            ],
            ..Default::default()
        };
        assert_eq!(
            tensor_from_proto(&h, None).unwrap().to_f32_vec(),
            vec![1.5, -3.0]
        );
        let d = TensorProto {
            dims: vec![],
            data_type: Some(data_type::DOUBLE),
            double_data: vec![0.1],
            ..Default::default()
        };
        let d = tensor_from_proto(&d, None).unwrap();
        assert!(d.from_f64 && d.shape.is_empty());
        assert_eq!(d.to_f32_vec(), vec![0.1f64 as f32]);
    }

    #[test]
    fn bad_dims_are_typed_errors() {
        let mut t = raw_f32(&[2, 3], &[1.0; 5]);
        assert!(matches!(
            tensor_from_proto(&t, None),
            Err(OnnxError::InvalidTensor { .. })
        ));
        t.dims = vec![-1, 5];
        assert!(matches!(
            tensor_from_proto(&t, None),
            Err(OnnxError::InvalidTensor { .. })
        ));
        t.dims = vec![i64::MAX, i64::MAX, 4];
        assert!(matches!(
            tensor_from_proto(&t, None),
            Err(OnnxError::InvalidTensor { .. })
        ));
        t.dims = vec![1 << 40, 1 << 20];
        assert!(matches!(
            tensor_from_proto(&t, None),
            Err(OnnxError::InvalidTensor { .. })
        ));
        let s = TensorProto {
            dims: vec![1],
            data_type: Some(data_type::STRING),
            string_data: vec![b"a".to_vec()],
            ..Default::default()
        };
        assert!(matches!(
            tensor_from_proto(&s, None),
            Err(OnnxError::UnsupportedDType { .. })
        ));
    }

    #[test]
    fn external_data_reads_inside_the_folder_only() {
        let dir = tempfile::tempdir().unwrap();
        let vals = [1.0f32, 2.0, 3.0, 4.0];
        let mut bytes = vec![0u8; 8];
        bytes.extend(vals.iter().flat_map(|x| x.to_le_bytes()));
        std::fs::write(dir.path().join("w.bin"), &bytes).unwrap();
        let kv = |k: &str, v: &str| StringStringEntryProto {
            key: Some(k.into()),
            value: Some(v.into()),
        };
        let mut t = TensorProto {
            name: Some("w".into()),
            dims: vec![4],
            data_type: Some(data_type::FLOAT),
            data_location: Some(data_location::EXTERNAL),
            external_data: vec![
                kv("location", "w.bin"),
                kv("offset", "8"),
                kv("length", "16"),
            ],
            ..Default::default()
        };
        assert_eq!(
            tensor_from_proto(&t, Some(dir.path()))
                .unwrap()
                .to_f32_vec(),
            vals.to_vec()
        );
        assert!(matches!(
            tensor_from_proto(&t, None),
            Err(OnnxError::ExternalData { .. })
        ));
        t.external_data[1] = kv("offset", "12");
        assert!(matches!(
            tensor_from_proto(&t, Some(dir.path())),
            Err(OnnxError::ExternalData { .. })
        ));
        for bad in ["../w.bin", "/etc/passwd", "sub/../../w.bin"] {
            t.external_data = vec![kv("location", bad)];
            let e = tensor_from_proto(&t, Some(dir.path()));
            assert!(
                matches!(e, Err(OnnxError::ExternalData { .. })),
                "{bad}: {e:?}"
            );
        }
        #[cfg(unix)]
        {
            let outside = tempfile::tempdir().unwrap();
            std::fs::write(outside.path().join("x.bin"), [0u8; 16]).unwrap();
            std::os::unix::fs::symlink(outside.path().join("x.bin"), dir.path().join("link.bin"))
                .unwrap();
            t.external_data = vec![kv("location", "link.bin")];
            assert!(matches!(
                tensor_from_proto(&t, Some(dir.path())),
                Err(OnnxError::ExternalData { .. })
            ));
        }
    }
}
