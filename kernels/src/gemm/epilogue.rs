//! The fused epilogue shared by every GEMM path, and the f32 `erf` it needs.
//!
//! Per element, in this order and without fused multiply-adds, so that every
//! path computes the same function of the f32 accumulator:
//! `v = alpha * acc; if beta != 0 { v = v + beta * c_old }; if bias { v = v + bias[j] };
//! v = act(v); c = O::from_f32(v)`.

use super::Activation;

/// `sqrt(2 / pi)`, the GELU-tanh constant.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;

/// ReLU with NaN kept: `x` if `x > 0`, NaN if `x` is NaN, `+0.0` otherwise.
#[inline(always)]
pub(crate) fn relu(x: f32) -> f32 {
    if x > 0.0 || x.is_nan() { x } else { 0.0 }
}

/// `0.5 * x * (1 + erf(x / sqrt 2))`.
#[inline]
pub(crate) fn gelu_erf(x: f32) -> f32 {
    (0.5 * x) * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))`, with `tanhf` from the platform libm.
#[inline]
pub(crate) fn gelu_tanh(x: f32) -> f32 {
    let inner = SQRT_2_OVER_PI * (x + 0.044_715 * (x * x * x));
    (0.5 * x) * (1.0 + inner.tanh())
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
    act: Activation,
) -> f32 {
    let mut v = alpha * acc;
    if beta != 0.0 {
        v += beta * c_old();
    }
    if let Some(b) = bias {
        v += b;
    }
    activate(act, v)
}

/// Error function in f32.
///
/// Two minimax approximations (N. Juffa's `erff`, public domain on Stack
/// Overflow): for `|x| <= 0.927734375` an odd polynomial `x + x * p(x^2)`,
/// above it `1 - exp(q(|x|))` with a degree-7 polynomial `q`, both evaluated
/// with fused multiply-adds. Measured against glibc's double-precision `erf`
/// (see the tests) the error stays within 2 ulp of the f32 result, i.e.
/// about 1.2e-7 relative; `erf(+-inf) = +-1`, `erf(NaN) = NaN`, `erf(-0) = -0`.
pub(crate) fn erf(a: f32) -> f32 {
    let t = a.abs();
    let s = a * a;
    if t > 0.927_734_4 {
        let mut r = (-1.728_534_7e-5_f32).mul_add(t, 3.831_971_3e-4);
        let u = (-3.883_964_4e-3_f32).mul_add(t, 2.425_462_2e-2);
        r = r.mul_add(s, u);
        r = r.mul_add(t, -1.067_778_8e-1);
        r = r.mul_add(t, -6.348_467e-1);
        r = r.mul_add(t, -1.287_175_1e-1);
        r = r.mul_add(t, -t);
        // exp of a very negative argument is 0, giving exactly 1 for large |x|.
        (1.0 - r.exp()).copysign(a)
    } else {
        let mut r = -5.967_617e-4_f32;
        r = r.mul_add(s, 4.991_194_2e-3);
        r = r.mul_add(s, -2.676_813_5e-2);
        r = r.mul_add(s, 1.128_199_3e-1);
        r = r.mul_add(s, -3.761_253_4e-1);
        r = r.mul_add(s, 1.283_791_7e-1);
        r.mul_add(a, a)
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    unsafe extern "C" {
        // The platform libm's double-precision erf, as the reference.
        #[link_name = "erf"]
        fn erf64_libm(x: f64) -> f64;
    }

    fn ulp_diff(x: f32, reference: f64) -> f64 {
        let r = reference as f32;
        let ulp = if r == 0.0 {
            f32::from_bits(1)
        } else {
            f32::from_bits(r.abs().to_bits() + 1) - r.abs()
        };
        (x as f64 - reference).abs() / ulp as f64
    }

    #[test]
    fn erf_is_within_two_ulp_of_libm_double() {
        let mut worst = 0.0f64;
        // Dense sweep over [-6, 6] plus tiny values.
        let mut x = -6.0f32;
        while x <= 6.0 {
            // SAFETY: erf is a pure libm function.
            let reference = unsafe { erf64_libm(x as f64) };
            worst = worst.max(ulp_diff(erf(x), reference));
            x += 1.0 / 4096.0 + 1e-7;
        }
        for bits in (0..0x3F80_0000u32).step_by(9973) {
            let x = f32::from_bits(bits);
            // SAFETY: as above.
            let reference = unsafe { erf64_libm(x as f64) };
            worst = worst.max(ulp_diff(erf(x), reference));
        }
        assert!(worst <= 2.0, "erf worst error {worst} ulp");
        assert_eq!(erf(f32::INFINITY), 1.0);
        assert_eq!(erf(f32::NEG_INFINITY), -1.0);
        assert!(erf(f32::NAN).is_nan());
        assert!(erf(-0.0).is_sign_negative());
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
