//! The fused epilogue shared by every GEMM path.
//!
//! Per element, in this order and without fused multiply-adds, so that every
//! path computes the same function of the f32 accumulator:
//! `v = alpha * acc; if beta != 0 { v = v + beta * c_old }; if bias { v = v + bias[j] };
//! if row_bias { v = v + row_bias[i] }; v = act(v); c = O::from_f32(v)`.

use super::Activation;
use crate::elementwise::UnaryOp;

/// ReLU with NaN kept: `x` if `x > 0`, NaN if `x` is NaN, `+0.0` otherwise.
#[inline(always)]
pub(crate) fn relu(x: f32) -> f32 {
    if x > 0.0 || x.is_nan() { x } else { 0.0 }
}

/// GELU (erf form) exactly as the elementwise kernels compute it, so a fused
/// Linear+GELU equals a Linear followed by a GELU node bit for bit.
#[inline]
pub(crate) fn gelu_erf(x: f32) -> f32 {
    UnaryOp::GeluErf.apply(x)
}

/// GELU (tanh form), shared with the elementwise kernels like [`gelu_erf`].
#[inline]
pub(crate) fn gelu_tanh(x: f32) -> f32 {
    UnaryOp::GeluTanh.apply(x)
}

/// Applies the activation.
#[inline(always)]
pub(crate) fn activate(act: Activation, v: f32) -> f32 {
    match act {
        Activation::Identity => v,
        Activation::Relu => relu(v),
        Activation::GeluErf => gelu_erf(v),
        Activation::GeluTanh => gelu_tanh(v),
    }
}

/// The whole epilogue for one element; `c_old` is only read when `beta != 0`.
#[inline(always)]
pub(crate) fn finish(
    acc: f32,
    alpha: f32,
    beta: f32,
    c_old: impl FnOnce() -> f32,
    bias: Option<f32>,
    row_bias: Option<f32>,
    act: Activation,
) -> f32 {
    let mut v = alpha * acc;
    if beta != 0.0 {
        v += beta * c_old();
    }
    if let Some(b) = bias {
        v += b;
    }
    if let Some(b) = row_bias {
        v += b;
    }
    activate(act, v)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    unsafe extern "C" {
        // The platform libm's double-precision erf, as the reference.
        #[link_name = "erf"]
        fn erf64_libm(x: f64) -> f64;
    }

    #[test]
    fn gelu_matches_double_formulas() {
        for i in -400..=400 {
            let x = i as f32 / 50.0;
            let xd = x as f64;
            // SAFETY: pure libm function.
            let e = 0.5 * xd * (1.0 + unsafe { erf64_libm(xd / std::f64::consts::SQRT_2) });
            let inner = (2.0 / std::f64::consts::PI).sqrt() * (xd + 0.044715 * xd * xd * xd);
            let t = 0.5 * xd * (1.0 + inner.tanh());
            let tol = |r: f64| 4.0 * f32::EPSILON as f64 * (r.abs() + xd.abs() * 0.5);
            assert!((gelu_erf(x) as f64 - e).abs() <= tol(e), "gelu_erf({x})");
            assert!((gelu_tanh(x) as f64 - t).abs() <= tol(t), "gelu_tanh({x})");
        }
        assert_eq!(relu(-0.0).to_bits(), 0);
        assert!(relu(f32::NAN).is_nan());
    }
}
