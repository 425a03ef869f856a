//! The scalar level: `body.rs` instantiated with one lane. This is the
//! reference the SIMD levels are tested against bit for bit; it uses
//! `f32::mul_add` (a true fused multiply-add) wherever the vector code uses
//! FMA, so the operation sequences are identical.

// The polynomial coefficients in body.rs are kept as published / fitted.
#![allow(clippy::excessive_precision, clippy::approx_constant)]

use super::{BinaryOp, UnaryOp};
use crate::element::Element;
use crate::norm::ReduceOp;

type V = f32;
type M = bool;
const LANES: usize = 1;

macro_rules! simd {
    ($($item:item)*) => { $( #[inline] $item )* };
}

fn splat(x: f32) -> V {
    x
}
fn add(a: V, b: V) -> V {
    a + b
}
fn sub(a: V, b: V) -> V {
    a - b
}
fn mul(a: V, b: V) -> V {
    a * b
}
fn div(a: V, b: V) -> V {
    a / b
}
fn sqrt(a: V) -> V {
    a.sqrt()
}
/// `a * b + c` with one rounding.
fn fma(a: V, b: V, c: V) -> V {
    a.mul_add(b, c)
}
/// x86 `maxps` semantics: `a > b ? a : b` (so b when either is NaN).
fn max_raw(a: V, b: V) -> V {
    if a > b { a } else { b }
}
/// x86 `minps` semantics: `a < b ? a : b`.
fn min_raw(a: V, b: V) -> V {
    if a < b { a } else { b }
}
fn and(a: V, b: V) -> V {
    f32::from_bits(a.to_bits() & b.to_bits())
}
fn or(a: V, b: V) -> V {
    f32::from_bits(a.to_bits() | b.to_bits())
}
fn xor(a: V, b: V) -> V {
    f32::from_bits(a.to_bits() ^ b.to_bits())
}
fn round_even(a: V) -> V {
    a.round_ties_even()
}
/// `2^n` for integral `n` in [-126, 127] (garbage, never used, for NaN).
fn exp2i(n: V) -> V {
    f32::from_bits(((n as i32 + 127) as u32) << 23)
}
/// `y * 2^n` in two exact-power steps (`2^n` alone may not be a normal
/// f32): `y * 2^n1` is normal, so exact, and a subnormal result is rounded
/// once, in the last multiply.
fn scale2(y: V, n: V) -> V {
    let n1 = round_even(mul(n, splat(0.5)));
    let n2 = sub(n, n1);
    mul(mul(y, exp2i(n1)), exp2i(n2))
}
/// The biased exponent field as a float.
fn exponent_field(a: V) -> V {
    ((a.to_bits() >> 23) & 0xFF) as f32
}
fn lt(a: V, b: V) -> M {
    a < b
}
fn eq(a: V, b: V) -> M {
    a == b
}
fn isnan(a: V) -> M {
    a.is_nan()
}
fn select(m: M, a: V, b: V) -> V {
    if m { a } else { b }
}
/// Whether `a` or `b` is a NaN.
fn unordered(a: V, b: V) -> M {
    a.is_nan() || b.is_nan()
}
fn any(m: M) -> bool {
    m
}
/// The even and the odd elements of the two values `a` then `b`.
fn deinterleave2(a: V, b: V) -> (V, V) {
    (a, b)
}
fn lanes_below(n: usize) -> M {
    n > 0
}
fn to_array(v: V) -> [f32; LANES] {
    [v]
}
/// # Safety
/// `p` must be valid for one read.
unsafe fn load<T: Element>(p: *const T) -> V {
    // SAFETY: forwarded from the caller.
    unsafe { p.read() }.to_f32()
}
/// # Safety
/// `p` must be valid for one write.
unsafe fn store<T: Element>(p: *mut T, v: V) {
    // SAFETY: forwarded from the caller.
    unsafe { p.write(T::from_f32(v)) }
}

/// A partial one-lane vector: `s` is empty, so this is the zero padding.
fn load_part<T: Element>(s: &[T]) -> V {
    s.first().map_or(0.0, |x| x.to_f32())
}
/// A partial one-lane vector: `d` is empty, so nothing is stored.
fn store_part<T: Element>(d: &mut [T], v: V) {
    if let Some(o) = d.first_mut() {
        *o = T::from_f32(v);
    }
}

include!("body.rs");

/// The scalar reference of one unary op on one value: the same functions the
/// kernels' loops apply (`unary` in `body.rs`), so tests that compare every
/// level with this also check that the two op tables agree.
pub(crate) fn unary_value(op: UnaryOp, x: f32) -> f32 {
    match op {
        UnaryOp::Neg => neg_v(x),
        UnaryOp::Abs => abs_v(x),
        UnaryOp::Sqrt => sqrt(x),
        UnaryOp::Reciprocal => recip_v(x),
        UnaryOp::Exp => exp_v(x),
        UnaryOp::Log => log_v(x),
        UnaryOp::Tanh => tanh_v(x),
        UnaryOp::Erf => erf_v(x),
        UnaryOp::Sigmoid => sigmoid_v(x),
        UnaryOp::Relu => relu_v(x),
        UnaryOp::GeluErf => gelu_erf_v(x),
        UnaryOp::GeluTanh => gelu_tanh_v(x),
        UnaryOp::Silu => silu_v(x),
    }
}

/// The scalar reference of one binary op on one value pair (as `binary_map!`).
pub(crate) fn binary_value(op: BinaryOp, a: f32, b: f32) -> f32 {
    match op {
        BinaryOp::Add => add(a, b),
        BinaryOp::Sub => sub(a, b),
        BinaryOp::Mul => mul(a, b),
        BinaryOp::Div => div(a, b),
        BinaryOp::Max => max_v(a, b),
        BinaryOp::Min => min_v(a, b),
        BinaryOp::Pow => a.powf(b),
    }
}
