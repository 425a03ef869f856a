//! Test helpers shared by the GEMM test files (`mod gemm_common;`): a
//! deterministic generator, strided and transposed test matrices, and the f64
//! references of the epilogue's activation and store rounding.
#![allow(dead_code)]

use mixprec_kernels::Element;
use mixprec_kernels::gemm::{Activation, MatRef};

/// Small deterministic generator so fixed cases need no proptest.
pub struct Lcg(pub u64);
impl Lcg {
    pub fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// A matrix stored with padding, optionally stored transposed and viewed with `.t()`.
pub struct Stored<T> {
    pub data: Vec<T>,
    pub rows: usize,
    pub cols: usize,
    pub stride: usize,
    pub transposed: bool,
}

impl<T: Element> Stored<T> {
    pub fn new(
        rng: &mut Lcg,
        rows: usize,
        cols: usize,
        pad: usize,
        transposed: bool,
        scale: f32,
    ) -> Self {
        let (sr, sc) = if transposed {
            (cols, rows)
        } else {
            (rows, cols)
        };
        let stride = sc + pad;
        let data = (0..sr * stride)
            .map(|_| T::from_f32(rng.next() * scale))
            .collect();
        Stored {
            data,
            rows,
            cols,
            stride,
            transposed,
        }
    }
    pub fn view(&self) -> MatRef<'_, T> {
        if self.transposed {
            MatRef::new(&self.data, self.cols, self.rows, self.stride)
                .unwrap()
                .t()
        } else {
            MatRef::new(&self.data, self.rows, self.cols, self.stride).unwrap()
        }
    }
    pub fn at(&self, i: usize, j: usize) -> f64 {
        let idx = if self.transposed {
            j * self.stride + i
        } else {
            i * self.stride + j
        };
        self.data[idx].to_f32() as f64
    }
}

unsafe extern "C" {
    // The platform libm's double-precision erf, as the reference.
    #[link_name = "erf"]
    fn erf64_libm(x: f64) -> f64;
}

pub fn erf64(x: f64) -> f64 {
    // SAFETY: erf is a pure libm function.
    unsafe { erf64_libm(x) }
}

pub fn act64(act: Activation, v: f64) -> (f64, f64) {
    // (value, slope bound used to propagate the pre-activation error)
    match act {
        Activation::Identity => (v, 1.0),
        Activation::Relu => (v.max(0.0), 1.0),
        Activation::GeluErf => (0.5 * v * (1.0 + erf64(v / std::f64::consts::SQRT_2)), 1.2),
        Activation::GeluTanh => {
            let inner = (2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v);
            (0.5 * v * (1.0 + inner.tanh()), 1.2)
        }
    }
}

/// Store rounding: (relative, absolute) half-ulp-ish bounds of O.
pub fn store_err<O: Element>() -> (f64, f64) {
    match std::mem::size_of::<O>() {
        4 => (0.0, 0.0),
        _ if O::from_f32(1.0 + 1.0 / 512.0).to_f32() != 1.0 => {
            (1.0 / 2048.0, 1.0 / (1u64 << 25) as f64)
        } // f16
        _ => (1.0 / 256.0, 0.0), // bf16
    }
}
