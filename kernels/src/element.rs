//! The three floating-point storage types the kernels accept, as a trait for
//! generic kernels and as slice enums for code that picks the dtype at run
//! time (the op-graph executor).

use half::{bf16, f16};

use crate::convert::bits;

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::bf16 {}
    impl Sealed for half::f16 {}
}

/// A floating-point storage type: `f32`, `half::bf16` or `half::f16`.
///
/// Conversions follow the crate's numerics contract (round to nearest even,
/// subnormals kept, NaN quieted); see [`crate::convert`].
pub trait Element:
    bytemuck::Pod + Copy + Send + Sync + PartialEq + std::fmt::Debug + sealed::Sealed + 'static
{
    /// Which of the three types this is.
    const DTYPE: FloatType;
    /// Widens to f32 (exact).
    fn to_f32(self) -> f32;
    /// Rounds from f32 per the contract.
    fn from_f32(x: f32) -> Self;
}

impl Element for f32 {
    const DTYPE: FloatType = FloatType::F32;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x
    }
}

impl Element for bf16 {
    const DTYPE: FloatType = FloatType::Bf16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits(bits::bf16_to_f32_bits(self.to_bits()))
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        bf16::from_bits(bits::f32_to_bf16_bits(x.to_bits()))
    }
}

impl Element for f16 {
    const DTYPE: FloatType = FloatType::F16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits(bits::f16_to_f32_bits(self.to_bits()))
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        f16::from_bits(bits::f32_to_f16_bits(x.to_bits()))
    }
}

/// A floating-point storage type chosen at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FloatType {
    /// IEEE binary32.
    F32,
    /// bfloat16: f32's exponent range, 8 significant bits.
    Bf16,
    /// IEEE binary16: 11 significant bits, max 65504.
    F16,
}

impl FloatType {
    /// Lower-case name: `f32`, `bf16`, `f16`.
    pub const fn name(self) -> &'static str {
        match self {
            FloatType::F32 => "f32",
            FloatType::Bf16 => "bf16",
            FloatType::F16 => "f16",
        }
    }

    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            FloatType::F32 => 4,
            FloatType::Bf16 | FloatType::F16 => 2,
        }
    }
}

/// A read-only slice of any [`Element`] type.
#[derive(Clone, Copy, Debug)]
pub enum FloatSlice<'a> {
    /// f32 data.
    F32(&'a [f32]),
    /// bf16 data.
    Bf16(&'a [bf16]),
    /// f16 data.
    F16(&'a [f16]),
}

/// A mutable slice of any [`Element`] type.
#[derive(Debug)]
pub enum FloatSliceMut<'a> {
    /// f32 data.
    F32(&'a mut [f32]),
    /// bf16 data.
    Bf16(&'a mut [bf16]),
    /// f16 data.
    F16(&'a mut [f16]),
}

impl FloatSlice<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            FloatSlice::F32(s) => s.len(),
            FloatSlice::Bf16(s) => s.len(),
            FloatSlice::F16(s) => s.len(),
        }
    }

    /// Whether the slice is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type.
    pub fn dtype(&self) -> FloatType {
        match self {
            FloatSlice::F32(_) => FloatType::F32,
            FloatSlice::Bf16(_) => FloatType::Bf16,
            FloatSlice::F16(_) => FloatType::F16,
        }
    }
}

impl FloatSliceMut<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            FloatSliceMut::F32(s) => s.len(),
            FloatSliceMut::Bf16(s) => s.len(),
            FloatSliceMut::F16(s) => s.len(),
        }
    }

    /// Whether the slice is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type.
    pub fn dtype(&self) -> FloatType {
        match self {
            FloatSliceMut::F32(_) => FloatType::F32,
            FloatSliceMut::Bf16(_) => FloatType::Bf16,
            FloatSliceMut::F16(_) => FloatType::F16,
        }
    }
}

impl<'a> From<&'a [f32]> for FloatSlice<'a> {
    fn from(s: &'a [f32]) -> Self {
        FloatSlice::F32(s)
    }
}
impl<'a> From<&'a [bf16]> for FloatSlice<'a> {
    fn from(s: &'a [bf16]) -> Self {
        FloatSlice::Bf16(s)
    }
}
impl<'a> From<&'a [f16]> for FloatSlice<'a> {
    fn from(s: &'a [f16]) -> Self {
        FloatSlice::F16(s)
    }
}
impl<'a> From<&'a mut [f32]> for FloatSliceMut<'a> {
    fn from(s: &'a mut [f32]) -> Self {
        FloatSliceMut::F32(s)
    }
}
impl<'a> From<&'a mut [bf16]> for FloatSliceMut<'a> {
    fn from(s: &'a mut [bf16]) -> Self {
        FloatSliceMut::Bf16(s)
    }
}
impl<'a> From<&'a mut [f16]> for FloatSliceMut<'a> {
    fn from(s: &'a mut [f16]) -> Self {
        FloatSliceMut::F16(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_conversions_follow_the_contract() {
        assert_eq!(bf16::from_f32(1.0 + 1.0 / 256.0).to_f32(), 1.0); // tie to even
        assert_eq!(f16::from_f32(65520.0).to_f32(), f32::INFINITY);
        assert!(bf16::from_f32(f32::NAN).to_f32().is_nan());
        let data = [bf16::ONE; 3];
        let s = FloatSlice::from(&data[..]);
        assert_eq!((s.len(), s.dtype()), (3, FloatType::Bf16));
    }
}
