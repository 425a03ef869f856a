//! Owned, contiguous, 64-byte-aligned tensors, and borrowed views of
//! caller-owned buffers.

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytemuck::{Pod, Zeroable};
use half::{bf16, f16};
use mixprec_kernels::{FloatSlice, FloatSliceMut, FloatType, convert};

use super::dtype::DType;
use super::error::{GraphError, Result};

/// One cache line of storage. A `Vec<Block>` is 64-byte aligned, and
/// `bytemuck` views it as any element type without `unsafe`.
#[repr(C, align(64))]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct Block([u8; 64]);

const BLOCK: usize = 64;

fn blocks_for(bytes: usize) -> usize {
    bytes.div_ceil(BLOCK)
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::bf16 {}
    impl Sealed for half::f16 {}
    impl Sealed for i64 {}
    impl Sealed for i32 {}
}

/// A Rust type that is the storage of one [`DType`]: `f32`, `half::bf16`,
/// `half::f16`, `i64`, `i32`. (Booleans are bytes; see [`Tensor::from_bool`].)
pub trait TensorElement: Pod + sealed::Sealed {
    /// The dtype this type stores.
    const DTYPE: DType;
}
impl TensorElement for f32 {
    const DTYPE: DType = DType::F32;
}
impl TensorElement for bf16 {
    const DTYPE: DType = DType::Bf16;
}
impl TensorElement for f16 {
    const DTYPE: DType = DType::F16;
}
impl TensorElement for i64 {
    const DTYPE: DType = DType::I64;
}
impl TensorElement for i32 {
    const DTYPE: DType = DType::I32;
}

/// A dense tensor: shape, dtype and contiguous row-major storage whose first
/// element is 64-byte aligned.
///
/// A rank-0 tensor (shape `[]`) holds one element.
#[derive(Clone)]
pub struct Tensor {
    shape: Vec<usize>,
    dtype: DType,
    data: Vec<Block>,
}

/// Number of elements of a shape (1 for rank 0). A product that overflows
/// `usize` saturates to `usize::MAX`, which no real buffer matches, so length
/// checks against it fail instead of wrapping to a small count.
pub fn numel(shape: &[usize]) -> usize {
    if shape.contains(&0) {
        return 0;
    }
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .unwrap_or(usize::MAX)
}

static MAX_TENSOR_BYTES: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_TENSOR_BYTES);

/// Default of [`max_tensor_bytes`]: 4 GiB.
pub const DEFAULT_MAX_TENSOR_BYTES: usize = 4 << 30;

/// Sets the largest tensor (in bytes) a node may produce when a graph is
/// compiled or run; a larger output is a [`GraphError::Runtime`] error naming
/// the node, raised before anything is allocated. It guards against models
/// whose shape computations (Expand, Tile, ConstantOfShape, ...) ask for
/// absurd sizes. Process-wide; `0` restores the default.
pub fn set_max_tensor_bytes(bytes: usize) {
    let v = if bytes == 0 {
        DEFAULT_MAX_TENSOR_BYTES
    } else {
        bytes
    };
    MAX_TENSOR_BYTES.store(v, Ordering::Relaxed);
}

/// The current limit set by [`set_max_tensor_bytes`].
pub fn max_tensor_bytes() -> usize {
    MAX_TENSOR_BYTES.load(Ordering::Relaxed)
}

/// Checks that `len` elements fill `shape`: [`GraphError::ShapeOverflow`] if
/// the product of `shape` overflows `usize`, [`GraphError::DataLength`] if it
/// differs from `len`.
fn check_len(shape: &[usize], len: usize) -> Result<()> {
    let n = if shape.contains(&0) {
        Some(0)
    } else {
        shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
    };
    match n {
        None => Err(GraphError::ShapeOverflow {
            shape: shape.to_vec(),
        }),
        Some(n) if n != len => Err(GraphError::DataLength {
            shape: shape.to_vec(),
            expected: n,
            actual: len,
        }),
        Some(_) => Ok(()),
    }
}

/// Bytes of a `dtype` tensor of `shape`, `None` on overflow.
pub(crate) fn checked_bytes(dtype: DType, shape: &[usize]) -> Option<usize> {
    numel(shape)
        .checked_mul(dtype.size())
        .filter(|_| numel(shape) != usize::MAX)
}

impl Tensor {
    /// A tensor of zeros (all-zero bits: 0.0, 0 or false).
    ///
    /// Panics if the byte size of `shape` overflows `usize` (a programmer
    /// error: shapes from files and models are checked before this).
    pub fn zeros(dtype: DType, shape: &[usize]) -> Tensor {
        let bytes = checked_bytes(dtype, shape)
            .unwrap_or_else(|| panic!("Tensor::zeros: shape {shape:?} overflows usize"));
        Tensor {
            shape: shape.to_vec(),
            dtype,
            data: bytemuck::zeroed_vec(blocks_for(bytes)),
        }
    }

    /// Builds a tensor around storage taken from a buffer pool; its contents
    /// are unspecified until written.
    pub(crate) fn from_blocks(dtype: DType, shape: &[usize], mut data: Vec<Block>) -> Tensor {
        let bytes = checked_bytes(dtype, shape).expect("pool shapes are size-checked");
        let blocks = blocks_for(bytes);
        data.resize(blocks, Block::zeroed());
        Tensor {
            shape: shape.to_vec(),
            dtype,
            data,
        }
    }

    /// Gives the storage back (for a buffer pool).
    pub(crate) fn into_blocks(self) -> Vec<Block> {
        self.data
    }

    /// Copies `data` into a new tensor of the given shape.
    ///
    /// Errors with [`GraphError::DataLength`] when `data.len()` is not the
    /// product of `shape`, [`GraphError::ShapeOverflow`] when that product
    /// overflows `usize`. To use `data` in place instead, see
    /// [`TensorView::from_slice`].
    pub fn from_slice<T: TensorElement>(shape: &[usize], data: &[T]) -> Result<Tensor> {
        check_len(shape, data.len())?;
        let mut t = Tensor::zeros(T::DTYPE, shape);
        t.bytes_mut().copy_from_slice(bytemuck::cast_slice(data));
        Ok(t)
    }

    /// An f32 tensor from a vector (or slice) of values.
    pub fn from_f32(shape: &[usize], data: impl AsRef<[f32]>) -> Result<Tensor> {
        Tensor::from_slice(shape, data.as_ref())
    }

    /// A bf16 tensor from `half::bf16` values.
    pub fn from_bf16(shape: &[usize], data: &[bf16]) -> Result<Tensor> {
        Tensor::from_slice(shape, data)
    }

    /// An f16 tensor from `half::f16` values.
    pub fn from_f16(shape: &[usize], data: &[f16]) -> Result<Tensor> {
        Tensor::from_slice(shape, data)
    }

    /// An i64 tensor.
    pub fn from_i64(shape: &[usize], data: &[i64]) -> Result<Tensor> {
        Tensor::from_slice(shape, data)
    }

    /// An i32 tensor.
    pub fn from_i32(shape: &[usize], data: &[i32]) -> Result<Tensor> {
        Tensor::from_slice(shape, data)
    }

    /// A bool tensor.
    pub fn from_bool(shape: &[usize], data: &[bool]) -> Result<Tensor> {
        check_len(shape, data.len())?;
        let mut t = Tensor::zeros(DType::Bool, shape);
        for (d, &b) in t.bytes_mut().iter_mut().zip(data) {
            *d = b as u8;
        }
        Ok(t)
    }

    /// A rank-0 f32 tensor.
    pub fn scalar_f32(x: f32) -> Tensor {
        Tensor::from_f32(&[], [x]).expect("one element")
    }

    /// A rank-1 i64 tensor (shape `[data.len()]`), as shape inputs want.
    pub fn vec_i64(data: &[i64]) -> Tensor {
        Tensor::from_i64(&[data.len()], data).expect("length matches")
    }

    /// Builds a tensor of `dtype` from raw little-endian bytes (e.g. a
    /// safetensors or ONNX raw_data buffer; any alignment).
    pub fn from_bytes(dtype: DType, shape: &[usize], bytes: &[u8]) -> Result<Tensor> {
        let n = numel(shape);
        if checked_bytes(dtype, shape) != Some(bytes.len()) {
            return Err(GraphError::DataLength {
                shape: shape.to_vec(),
                expected: n,
                actual: bytes.len() / dtype.size(),
            });
        }
        let mut t = Tensor::zeros(dtype, shape);
        t.bytes_mut().copy_from_slice(bytes);
        Ok(t)
    }

    /// A borrowed view of this tensor (no copy), the form the executor's ops
    /// read their inputs in.
    pub fn view(&self) -> TensorView<'_> {
        TensorView {
            shape: Cow::Borrowed(&self.shape),
            dtype: self.dtype,
            bytes: self.bytes(),
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        numel(&self.shape)
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Size of the data in bytes.
    pub fn byte_len(&self) -> usize {
        self.len() * self.dtype.size()
    }

    /// The raw little-endian bytes of the elements.
    pub fn bytes(&self) -> &[u8] {
        let n = self.byte_len();
        &bytemuck::cast_slice::<Block, u8>(&self.data)[..n]
    }

    /// The raw bytes, mutably.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        let n = self.byte_len();
        &mut bytemuck::cast_slice_mut::<Block, u8>(&mut self.data)[..n]
    }

    /// The same data under another shape with the same element count.
    pub fn reshape(mut self, shape: &[usize]) -> Result<Tensor> {
        if numel(shape) != self.len() {
            return Err(GraphError::DataLength {
                shape: shape.to_vec(),
                expected: numel(shape),
                actual: self.len(),
            });
        }
        self.shape = shape.to_vec();
        Ok(self)
    }

    pub(crate) fn set_shape(&mut self, shape: &[usize]) {
        debug_assert_eq!(numel(shape), self.len());
        self.shape = shape.to_vec();
    }

    /// The elements as `T`, without copying; errors if `T` is not this dtype.
    pub fn as_slice<T: TensorElement>(&self) -> Result<&[T]> {
        if T::DTYPE != self.dtype {
            return Err(GraphError::DTypeMismatch {
                context: "Tensor::as_slice".into(),
                expected: T::DTYPE,
                actual: self.dtype,
            });
        }
        Ok(&bytemuck::cast_slice::<Block, T>(&self.data)[..self.len()])
    }

    /// The elements as `T`, mutably; errors if `T` is not this dtype.
    pub fn as_slice_mut<T: TensorElement>(&mut self) -> Result<&mut [T]> {
        if T::DTYPE != self.dtype {
            return Err(GraphError::DTypeMismatch {
                context: "Tensor::as_slice_mut".into(),
                expected: T::DTYPE,
                actual: self.dtype,
            });
        }
        let n = self.len();
        Ok(&mut bytemuck::cast_slice_mut::<Block, T>(&mut self.data)[..n])
    }

    /// The f32 elements; errors unless the dtype is f32.
    pub fn as_f32(&self) -> Result<&[f32]> {
        self.as_slice()
    }

    /// The bf16 elements; errors unless the dtype is bf16.
    pub fn as_bf16(&self) -> Result<&[bf16]> {
        self.as_slice()
    }

    /// The f16 elements; errors unless the dtype is f16.
    pub fn as_f16(&self) -> Result<&[f16]> {
        self.as_slice()
    }

    /// The i64 elements; errors unless the dtype is i64.
    pub fn as_i64(&self) -> Result<&[i64]> {
        self.as_slice()
    }

    /// The i32 elements; errors unless the dtype is i32.
    pub fn as_i32(&self) -> Result<&[i32]> {
        self.as_slice()
    }

    /// The booleans as bytes (0 or 1); errors unless the dtype is bool.
    pub fn as_bool_bytes(&self) -> Result<&[u8]> {
        if self.dtype != DType::Bool {
            return Err(GraphError::DTypeMismatch {
                context: "Tensor::as_bool_bytes".into(),
                expected: DType::Bool,
                actual: self.dtype,
            });
        }
        Ok(self.bytes())
    }

    /// A kernel view of a floating-point tensor; `None` for other dtypes.
    pub fn as_float_slice(&self) -> Option<FloatSlice<'_>> {
        let n = self.len();
        Some(match self.dtype {
            DType::F32 => FloatSlice::F32(&bytemuck::cast_slice(&self.data)[..n]),
            DType::Bf16 => FloatSlice::Bf16(&bytemuck::cast_slice(&self.data)[..n]),
            DType::F16 => FloatSlice::F16(&bytemuck::cast_slice(&self.data)[..n]),
            _ => return None,
        })
    }

    /// A mutable kernel view of a floating-point tensor; `None` for other dtypes.
    pub fn as_float_slice_mut(&mut self) -> Option<FloatSliceMut<'_>> {
        let n = self.len();
        Some(match self.dtype {
            DType::F32 => FloatSliceMut::F32(&mut bytemuck::cast_slice_mut(&mut self.data)[..n]),
            DType::Bf16 => FloatSliceMut::Bf16(&mut bytemuck::cast_slice_mut(&mut self.data)[..n]),
            DType::F16 => FloatSliceMut::F16(&mut bytemuck::cast_slice_mut(&mut self.data)[..n]),
            _ => return None,
        })
    }

    /// All elements widened to f32 (exact for bf16/f16; integers convert as
    /// `as f32`; booleans give 0.0/1.0).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        self.view().to_f32_vec()
    }

    /// All elements as i64 (floats truncate toward zero like `as i64`;
    /// booleans give 0/1).
    pub fn to_i64_vec(&self) -> Vec<i64> {
        self.view().to_i64_vec()
    }

    /// A copy converted to another float type with the kernels' rounding
    /// (round to nearest even). Errors if this tensor is not floating point.
    pub fn to_float_type(&self, to: FloatType) -> Result<Tensor> {
        let src = self
            .as_float_slice()
            .ok_or_else(|| GraphError::DTypeMismatch {
                context: "Tensor::to_float_type".into(),
                expected: DType::F32,
                actual: self.dtype,
            })?;
        let mut out = Tensor::zeros(to.into(), &self.shape);
        convert_float(src, out.as_float_slice_mut().expect("float"));
        Ok(out)
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor({}, {:?}", self.dtype, self.shape)?;
        if self.len() <= 16 {
            match self.dtype {
                DType::I64 | DType::I32 | DType::Bool => write!(f, ", {:?}", self.to_i64_vec())?,
                _ => write!(f, ", {:?}", self.to_f32_vec())?,
            }
        }
        f.write_str(")")
    }
}

/// A borrowed tensor: a shape and a dtype over elements that live in the
/// caller's buffer (a `&[half::bf16]`, a memory-mapped safetensors file, or a
/// [`Tensor`]), read in place.
///
/// [`CompiledModel::run_views`](super::CompiledModel::run_views) runs a
/// model on views without copying its inputs, and the executor hands every
/// op its inputs as views. Unlike [`Tensor`], a view needs no 64-byte
/// alignment: the kernels use unaligned loads, so any slice of elements
/// works, including a sub-slice such as `&buf[1..]`. The constructors take
/// typed slices (or check the alignment of raw bytes), so the elements are
/// always aligned to their own size.
///
/// ```
/// use half::bf16;
/// use mixprec::graph::{DType, TensorView};
/// # fn main() -> Result<(), mixprec::graph::GraphError> {
/// let buf: Vec<bf16> = (0..6).map(|i| bf16::from_f32(i as f32)).collect();
/// let v = TensorView::from_bf16(&[2, 3], &buf)?;
/// assert_eq!(v.dtype(), DType::Bf16);
/// assert_eq!(v.as_bf16()?.as_ptr(), buf.as_ptr()); // the caller's memory
/// assert_eq!(v.to_f32_vec(), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
/// assert!(TensorView::from_bf16(&[4, 2], &buf).is_err()); // 8 != 6 elements
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TensorView<'a> {
    // Borrowed from a Tensor; owned (a few words) when built from a caller's
    // shape or re-shaped by the executor, so a view never borrows a temporary.
    shape: Cow<'a, [usize]>,
    dtype: DType,
    // Invariant: aligned for the element type of `dtype` and exactly
    // `numel(shape) * dtype.size()` long, so `bytemuck` casts cannot fail.
    bytes: &'a [u8],
}

impl<'a> TensorView<'a> {
    /// Views `data` as a tensor of the given shape, without copying.
    ///
    /// Errors with [`GraphError::DataLength`] when `data.len()` is not the
    /// product of `shape`, [`GraphError::ShapeOverflow`] when that product
    /// overflows `usize`.
    pub fn from_slice<T: TensorElement>(shape: &[usize], data: &'a [T]) -> Result<Self> {
        check_len(shape, data.len())?;
        Ok(TensorView {
            shape: Cow::Owned(shape.to_vec()),
            dtype: T::DTYPE,
            bytes: bytemuck::cast_slice(data),
        })
    }

    /// An f32 view.
    pub fn from_f32(shape: &[usize], data: &'a [f32]) -> Result<Self> {
        Self::from_slice(shape, data)
    }

    /// A bf16 view of `half::bf16` values.
    pub fn from_bf16(shape: &[usize], data: &'a [bf16]) -> Result<Self> {
        Self::from_slice(shape, data)
    }

    /// An f16 view of `half::f16` values.
    pub fn from_f16(shape: &[usize], data: &'a [f16]) -> Result<Self> {
        Self::from_slice(shape, data)
    }

    /// An i64 view.
    pub fn from_i64(shape: &[usize], data: &'a [i64]) -> Result<Self> {
        Self::from_slice(shape, data)
    }

    /// An i32 view.
    pub fn from_i32(shape: &[usize], data: &'a [i32]) -> Result<Self> {
        Self::from_slice(shape, data)
    }

    /// A bool view (`bool` is one byte, 0 or 1, as bool tensors store it).
    pub fn from_bool(shape: &[usize], data: &'a [bool]) -> Result<Self> {
        check_len(shape, data.len())?;
        Ok(TensorView {
            shape: Cow::Owned(shape.to_vec()),
            dtype: DType::Bool,
            bytes: bytemuck::cast_slice(data),
        })
    }

    /// Views raw little-endian bytes (e.g. `safetensors::tensor::TensorView::data()`)
    /// as a tensor of `dtype`, without copying.
    ///
    /// Errors with [`GraphError::DataLength`] / [`GraphError::ShapeOverflow`]
    /// like [`TensorView::from_slice`] (a byte count that is not a whole number
    /// of elements is a `DataLength` error too), and with
    /// [`GraphError::Misaligned`] when `bytes` does not start at a multiple of
    /// the element size; [`Tensor::from_bytes`] copies such data instead. A
    /// bool view's bytes must be 0 or 1.
    pub fn from_bytes(dtype: DType, shape: &[usize], bytes: &'a [u8]) -> Result<Self> {
        let size = dtype.size();
        if !bytes.len().is_multiple_of(size) {
            return Err(GraphError::DataLength {
                shape: shape.to_vec(),
                expected: numel(shape),
                actual: bytes.len() / size,
            });
        }
        check_len(shape, bytes.len() / size)?;
        // An empty slice may dangle anywhere, so it is swapped for one that
        // is aligned for every element type rather than rejected.
        let bytes = if bytes.is_empty() {
            bytemuck::cast_slice::<u64, u8>(&[])
        } else if !(bytes.as_ptr() as usize).is_multiple_of(size) {
            return Err(GraphError::Misaligned { dtype, align: size });
        } else {
            bytes
        };
        Ok(TensorView {
            shape: Cow::Owned(shape.to_vec()),
            dtype,
            bytes,
        })
    }

    /// A view of the same data borrowed from this one (cheap: the shape is
    /// borrowed, not copied).
    pub fn view(&self) -> TensorView<'_> {
        TensorView {
            shape: Cow::Borrowed(&self.shape),
            dtype: self.dtype,
            bytes: self.bytes,
        }
    }

    /// The same data under another shape with the same element count.
    pub fn reshape(self, shape: &[usize]) -> Result<Self> {
        check_len(shape, self.len())?;
        Ok(self.with_shape(shape))
    }

    /// [`TensorView::reshape`] for shapes already checked (the executor's
    /// view ops, whose output shape inference guarantees the count).
    pub(crate) fn with_shape(self, shape: &[usize]) -> Self {
        debug_assert_eq!(numel(shape), self.len());
        TensorView {
            shape: Cow::Owned(shape.to_vec()),
            ..self
        }
    }

    /// Copies the elements into an owned, 64-byte-aligned [`Tensor`].
    pub fn to_owned(&self) -> Tensor {
        let mut t = Tensor::zeros(self.dtype, &self.shape);
        t.bytes_mut().copy_from_slice(self.bytes);
        t
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.bytes.len() / self.dtype.size()
    }

    /// Whether the view has no elements.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Size of the data in bytes.
    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    /// The raw little-endian bytes of the elements.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The elements as `T` (the caller's memory); errors if `T` is not this
    /// dtype.
    pub fn as_slice<T: TensorElement>(&self) -> Result<&'a [T]> {
        if T::DTYPE != self.dtype {
            return Err(GraphError::DTypeMismatch {
                context: "TensorView::as_slice".into(),
                expected: T::DTYPE,
                actual: self.dtype,
            });
        }
        Ok(bytemuck::cast_slice(self.bytes))
    }

    /// The f32 elements; errors unless the dtype is f32.
    pub fn as_f32(&self) -> Result<&'a [f32]> {
        self.as_slice()
    }

    /// The bf16 elements; errors unless the dtype is bf16.
    pub fn as_bf16(&self) -> Result<&'a [bf16]> {
        self.as_slice()
    }

    /// The f16 elements; errors unless the dtype is f16.
    pub fn as_f16(&self) -> Result<&'a [f16]> {
        self.as_slice()
    }

    /// The i64 elements; errors unless the dtype is i64.
    pub fn as_i64(&self) -> Result<&'a [i64]> {
        self.as_slice()
    }

    /// The i32 elements; errors unless the dtype is i32.
    pub fn as_i32(&self) -> Result<&'a [i32]> {
        self.as_slice()
    }

    /// The booleans as bytes (0 or 1); errors unless the dtype is bool.
    pub fn as_bool_bytes(&self) -> Result<&'a [u8]> {
        if self.dtype != DType::Bool {
            return Err(GraphError::DTypeMismatch {
                context: "TensorView::as_bool_bytes".into(),
                expected: DType::Bool,
                actual: self.dtype,
            });
        }
        Ok(self.bytes)
    }

    /// A kernel view of floating-point data; `None` for other dtypes.
    pub fn as_float_slice(&self) -> Option<FloatSlice<'a>> {
        let b = self.bytes;
        Some(match self.dtype {
            DType::F32 => FloatSlice::F32(bytemuck::cast_slice(b)),
            DType::Bf16 => FloatSlice::Bf16(bytemuck::cast_slice(b)),
            DType::F16 => FloatSlice::F16(bytemuck::cast_slice(b)),
            _ => return None,
        })
    }

    /// All elements widened to f32 (exact for bf16/f16; integers convert as
    /// `as f32`; booleans give 0.0/1.0).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match self.dtype {
            DType::F32 | DType::Bf16 | DType::F16 => {
                let mut out = vec![0f32; self.len()];
                float_to_f32(self.as_float_slice().expect("float"), &mut out);
                out
            }
            DType::I64 => self
                .as_i64()
                .expect("i64")
                .iter()
                .map(|&v| v as f32)
                .collect(),
            DType::I32 => self
                .as_i32()
                .expect("i32")
                .iter()
                .map(|&v| v as f32)
                .collect(),
            DType::Bool => self.bytes.iter().map(|&v| v as f32).collect(),
        }
    }

    /// All elements as i64 (floats truncate toward zero like `as i64`;
    /// booleans give 0/1).
    pub fn to_i64_vec(&self) -> Vec<i64> {
        match self.dtype {
            DType::I64 => self.as_i64().expect("i64").to_vec(),
            DType::I32 => self
                .as_i32()
                .expect("i32")
                .iter()
                .map(|&v| v as i64)
                .collect(),
            DType::Bool => self.bytes.iter().map(|&v| v as i64).collect(),
            _ => self.to_f32_vec().iter().map(|&v| v as i64).collect(),
        }
    }
}

impl<'a> From<&'a Tensor> for TensorView<'a> {
    fn from(t: &'a Tensor) -> Self {
        t.view()
    }
}

impl fmt::Debug for TensorView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TensorView({}, {:?}", self.dtype, self.shape)?;
        if self.len() <= 16 {
            match self.dtype {
                DType::I64 | DType::I32 | DType::Bool => write!(f, ", {:?}", self.to_i64_vec())?,
                _ => write!(f, ", {:?}", self.to_f32_vec())?,
            }
        }
        f.write_str(")")
    }
}

/// Widens any float slice into f32 with the conversion kernels.
///
/// # Panics
/// If the lengths differ.
pub(crate) fn float_to_f32(src: FloatSlice<'_>, dst: &mut [f32]) {
    match src {
        FloatSlice::F32(s) => dst.copy_from_slice(s),
        FloatSlice::Bf16(s) => convert::bf16_to_f32(s, dst),
        FloatSlice::F16(s) => convert::f16_to_f32(s, dst),
    }
}

/// Rounds f32 values into any float slice (round to nearest even).
///
/// # Panics
/// If the lengths differ.
pub(crate) fn f32_to_float(src: &[f32], dst: FloatSliceMut<'_>) {
    match dst {
        FloatSliceMut::F32(d) => d.copy_from_slice(src),
        FloatSliceMut::Bf16(d) => convert::f32_to_bf16(src, d),
        FloatSliceMut::F16(d) => convert::f32_to_f16(src, d),
    }
}

/// Converts between any two float types; bf16 <-> f16 goes through f32, which
/// is exact on the widening side, so it rounds once.
///
/// # Panics
/// If the lengths differ.
pub(crate) fn convert_float(src: FloatSlice<'_>, dst: FloatSliceMut<'_>) {
    match (src, dst) {
        (FloatSlice::F32(s), d) => f32_to_float(s, d),
        (s, FloatSliceMut::F32(d)) => float_to_f32(s, d),
        (FloatSlice::Bf16(s), FloatSliceMut::Bf16(d)) => d.copy_from_slice(s),
        (FloatSlice::F16(s), FloatSliceMut::F16(d)) => d.copy_from_slice(s),
        (s, d) => {
            // Chunked so a large tensor does not need a full f32 copy.
            let mut tmp = vec![0f32; s.len().min(4096)];
            let n = s.len();
            let mut d = d;
            let mut i = 0;
            while i < n {
                let e = (i + 4096).min(n);
                let t = &mut tmp[..e - i];
                float_to_f32(sub(s, i, e), t);
                f32_to_float(t, sub_mut(&mut d, i, e));
                i = e;
            }
        }
    }
}

/// `s[start..end]` of a float slice.
pub(crate) fn sub(s: FloatSlice<'_>, start: usize, end: usize) -> FloatSlice<'_> {
    match s {
        FloatSlice::F32(x) => FloatSlice::F32(&x[start..end]),
        FloatSlice::Bf16(x) => FloatSlice::Bf16(&x[start..end]),
        FloatSlice::F16(x) => FloatSlice::F16(&x[start..end]),
    }
}

/// `s[start..end]` of a mutable float slice.
pub(crate) fn sub_mut<'a>(
    s: &'a mut FloatSliceMut<'_>,
    start: usize,
    end: usize,
) -> FloatSliceMut<'a> {
    match s {
        FloatSliceMut::F32(x) => FloatSliceMut::F32(&mut x[start..end]),
        FloatSliceMut::Bf16(x) => FloatSliceMut::Bf16(&mut x[start..end]),
        FloatSliceMut::F16(x) => FloatSliceMut::F16(&mut x[start..end]),
    }
}

/// Element `i` of a float slice, widened to f32.
pub(crate) fn get_f32(s: FloatSlice<'_>, i: usize) -> f32 {
    match s {
        FloatSlice::F32(x) => x[i],
        FloatSlice::Bf16(x) => x[i].to_f32(),
        FloatSlice::F16(x) => x[i].to_f32(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_is_aligned_and_typed() {
        let t = Tensor::from_f32(&[2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        assert_eq!(t.as_f32().unwrap().as_ptr() as usize % 64, 0);
        assert!(matches!(t.as_i64(), Err(GraphError::DTypeMismatch { .. })));
        assert!(Tensor::from_f32(&[2, 2], vec![1.0]).is_err());
        let b = t.to_float_type(FloatType::Bf16).unwrap();
        assert_eq!(b.to_f32_vec(), t.to_f32_vec());
        let h = b.to_float_type(FloatType::F16).unwrap();
        assert_eq!(h.to_f32_vec(), t.to_f32_vec());
    }
}
