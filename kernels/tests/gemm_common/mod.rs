//! Test helpers shared by the GEMM test files (`mod gemm_common;`): a
//! deterministic generator, strided and transposed test matrices, and the f64
//! references of the epilogue's activation and store rounding.
#![allow(dead_code)]

use mixprec_kernels::Element;
use mixprec_kernels::gemm::{Activation, Epilogue, MatRef};

/// f32 unit roundoff.
pub const U: f64 = 1.0 / (1u64 << 24) as f64;

/// The f64 reference of C[i, j] and the tolerance a path must meet:
/// `2(k+2)u|alpha|(|A||B|)` for the f32 accumulation, plus `extra` (a
/// path's own term, e.g. Bf16Dot's flushed subnormals), plus the epilogue's
/// rounded additions, the activation's slope and the store's rounding of
/// type `O`. `c_old` is C's old value (read when `beta != 0`).
#[allow(clippy::too_many_arguments)]
pub fn reference<T: Element, O: Element>(
    a: &Stored<T>,
    b: &Stored<T>,
    (i, j, k): (usize, usize, usize),
    alpha: f32,
    beta: f32,
    c_old: f32,
    ep: &Epilogue,
    extra: f64,
) -> (f64, f64) {
    let (rel, abs) = store_err::<O>();
    let (mut acc, mut mag) = (0.0f64, 0.0f64);
    for p in 0..k {
        acc += a.at(i, p) * b.at(p, j);
        mag += (a.at(i, p) * b.at(p, j)).abs();
    }
    let alpha = alpha as f64;
    let (acc, mag) = if alpha == 0.0 {
        (0.0, 0.0)
    } else {
        (alpha * acc, alpha.abs() * mag)
    };
    let old = if beta != 0.0 {
        beta as f64 * c_old as f64
    } else {
        0.0
    };
    let bj = ep.bias.map_or(0.0, |b| b[j] as f64) + ep.row_bias.map_or(0.0, |b| b[i] as f64);
    let pre = acc + old + bj;
    // The two biases are separate rounded additions: a partial sum is as
    // large as either bias even when they cancel.
    let bias_abs = ep.bias.map_or(0.0, |b| (b[j] as f64).abs())
        + ep.row_bias.map_or(0.0, |b| (b[i] as f64).abs());
    let pre_tol = 2.0 * (k as f64 + 2.0) * U * mag
        + alpha.abs() * extra
        + 8.0 * U * (acc.abs() + old.abs() + bias_abs);
    let (want, slope) = act64(ep.activation, pre);
    let tol = slope * pre_tol + 8.0 * U * want.abs() + 2.0 * (rel * want.abs() + abs) + 1e-30;
    (want, tol)
}

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
