//! Helpers shared by the elementwise and norm tests.
#![allow(dead_code)]

use half::{bf16, f16};
use mixprec_kernels::{FloatSlice, FloatSliceMut, FloatType};

pub const DTYPES: [FloatType; 3] = [FloatType::F32, FloatType::Bf16, FloatType::F16];

/// An owned buffer of one of the three storage types.
#[derive(Clone, Debug)]
pub enum Buf {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
    F16(Vec<f16>),
}

impl Buf {
    /// `values` rounded to `t` per the conversion contract.
    pub fn from_f32(t: FloatType, values: &[f32]) -> Buf {
        match t {
            FloatType::F32 => Buf::F32(values.to_vec()),
            FloatType::Bf16 => Buf::Bf16(values.iter().map(|&v| bf16::from_f32(v)).collect()),
            FloatType::F16 => Buf::F16(values.iter().map(|&v| f16::from_f32(v)).collect()),
        }
    }

    /// `n` elements filled with a sentinel that no kernel produces from finite data here.
    pub fn filled(t: FloatType, n: usize) -> Buf {
        Buf::from_f32(t, &vec![12345.0; n])
    }

    pub fn len(&self) -> usize {
        match self {
            Buf::F32(v) => v.len(),
            Buf::Bf16(v) => v.len(),
            Buf::F16(v) => v.len(),
        }
    }

    pub fn slice(&self, r: std::ops::Range<usize>) -> FloatSlice<'_> {
        match self {
            Buf::F32(v) => FloatSlice::F32(&v[r]),
            Buf::Bf16(v) => FloatSlice::Bf16(&v[r]),
            Buf::F16(v) => FloatSlice::F16(&v[r]),
        }
    }

    pub fn slice_mut(&mut self, r: std::ops::Range<usize>) -> FloatSliceMut<'_> {
        match self {
            Buf::F32(v) => FloatSliceMut::F32(&mut v[r]),
            Buf::Bf16(v) => FloatSliceMut::Bf16(&mut v[r]),
            Buf::F16(v) => FloatSliceMut::F16(&mut v[r]),
        }
    }

    /// Element `i` widened to f32.
    pub fn get(&self, i: usize) -> f32 {
        match self {
            Buf::F32(v) => v[i],
            Buf::Bf16(v) => v[i].to_f32(),
            Buf::F16(v) => v[i].to_f32(),
        }
    }

    pub fn to_vec(&self) -> Vec<f32> {
        (0..self.len()).map(|i| self.get(i)).collect()
    }
}

/// Rounds `x` to `t` and widens back: what storing an f32 result in `t` gives.
pub fn round_to(t: FloatType, x: f32) -> f32 {
    match t {
        FloatType::F32 => x,
        FloatType::Bf16 => bf16::from_f32(x).to_f32(),
        FloatType::F16 => f16::from_f32(x).to_f32(),
    }
}

/// Equal bit for bit, or both NaN (NaN payloads are unspecified).
pub fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// Deterministic xorshift generator, so failures reproduce.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }
}

/// Values every kernel must get right: zeros, infinities, NaNs, subnormals,
/// extremes, and the thresholds of the approximations.
pub fn specials() -> Vec<f32> {
    let mut v = vec![
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7F80_0001), // signalling NaN
        f32::from_bits(1),
        -f32::from_bits(1),
        f32::from_bits(0x0040_0000),
        f32::MIN_POSITIVE,
        -f32::MIN_POSITIVE,
        f32::MAX,
        f32::MIN,
        1e30,
        -1e30,
        1e-30,
        1.0,
        -1.0,
        0.5,
        2.0,
        88.72283,
        88.7229,
        89.0,
        -87.0,
        -103.0,
        -103.9,
        -104.0,
        -150.0,
        0.625,
        -0.625,
        1.5,
        3.92,
        -3.92,
        5.5,
        -5.6,
        9.0,
        -9.0,
        20.0,
        -20.0,
        -200.0,
        -1000.0,
        65504.0,
        65520.0,
        6e-8,
        std::f32::consts::FRAC_1_SQRT_2,
    ];
    let neg: Vec<f32> = v.iter().map(|x| -x).collect();
    v.extend(neg);
    v
}

/// A mixed pool: specials, then values at many scales and signs.
pub fn pool(rng: &mut Rng, n: usize) -> Vec<f32> {
    let s = specials();
    (0..n)
        .map(|i| match rng.next_u64() % 8 {
            0 => s[i % s.len()],
            1 => rng.range(-1.0, 1.0),
            2 => rng.range(-6.0, 6.0),
            3 => rng.range(-100.0, 100.0),
            4 => f32::from_bits(rng.next_u64() as u32),
            5 => rng.range(-3e4, 3e4),
            _ => rng.range(-12.0, 12.0),
        })
        .collect()
}
