//! Elementwise unary and binary kernels over f32, bf16 and f16 storage.
//!
//! # Numerics
//! Every element is widened to f32 exactly ([`Element::to_f32`]), computed in
//! f32, and rounded once on store per the conversion contract
//! ([`Element::from_f32`]: round to nearest even, subnormals kept, NaN quieted).
//! Input and output dtypes may differ.
//!
//! **Every dispatch level gives bit-identical results** for every op, except
//! for the payload and sign of a NaN result, which are unspecified (a NaN is
//! always returned where one is due). This holds because the scalar reference
//! and the SIMD paths are one kernel source instantiated per level (see
//! `body.rs`): the same operations, in the same order, with explicit fused
//! multiply-adds (`f32::mul_add` on the scalar level). The transcendental
//! functions are therefore our own polynomial approximations on every level,
//! not the platform libm; their accuracy against exact math, checked by the
//! tests against f64 references, is stated on [`UnaryOp`]. [`BinaryOp::Pow`] is
//! the exception: it calls the platform `powf` on every level, so it is also
//! identical across levels on one machine, but its accuracy is libm's.
//!
//! All error bounds below are for f32 output; a bf16 or f16 output is the f32
//! result rounded once more (so within half an output ulp of it).
//!
//! # Paths
//! | level | lanes | bf16 load / store | f16 load / store |
//! |---|---|---|---|
//! | `scalar` | 1 | exact shift / integer RNE | exact widening / integer RNE |
//! | `avx2` | 8 | `vpmovzxwd` + shift / 8-lane integer RNE | F16C `vcvtph2ps` / `vcvtps2ph` |
//! | `avx512_core` and above | 16 | `vpermw` / 16-lane integer RNE, `vpermw` | `vcvtph2ps` / `vcvtps2ph` zmm |
//!
//! `avx512_core_bf16` and `avx512_core_fp16` run the `avx512_core` code: the
//! kernels are bound by loads, stores and f32 arithmetic, which AVX512-FP16
//! does not speed up (and no AVX512-FP16 machine was available to test native
//! FP16 code), and AVX512_BF16's `vcvtneps2bf16` flushes subnormal inputs to
//! zero, so it cannot give the conversion contract's rounding.
//!
//! Each op and operand kind (slice or broadcast scalar) has its own loop,
//! unrolled by four vectors for the cheap ops; the end of a slice shorter than
//! a vector goes through the same vector code once, with masked loads and
//! stores at the AVX-512 level and a zero-padded stack buffer below it. The
//! AVX-512 level forms `2^n` scalings in `exp` (and the ops built on it) with
//! `vscalefps`, which rounds exactly as the other levels' two exact-power
//! multiplies do.

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512;
pub(crate) mod scalar;

use crate::element::{Element, FloatSlice, FloatSliceMut};
use crate::isa::{Isa, IsaError, active_isa};

/// An elementwise function of one f32 value.
///
/// Accuracy is measured against the exact function (f64 references in the
/// tests) and applies to every dispatch level, since all levels agree bit for
/// bit. "ulp" is the unit in the last place of the exact result in f32; a
/// result that is subnormal in f32 may additionally be off by up to 2^-126
/// (relative bounds do not hold below `f32::MIN_POSITIVE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// `-x` (flips the sign bit; exact).
    Neg,
    /// `|x|` (clears the sign bit; exact).
    Abs,
    /// `sqrt(x)`, correctly rounded (IEEE); `sqrt(-0) = -0`, negative -> NaN.
    Sqrt,
    /// `1 / x`, correctly rounded (IEEE division).
    Reciprocal,
    /// `e^x`: Cephes-style range reduction `x = n ln2 + r` and a degree-6
    /// polynomial; within 1.01 ulp (measured 1.004). Overflows to `inf` above ~88.72, gives
    /// subnormals down to ~-103.3 and `0` below; `exp(-inf) = 0`.
    Exp,
    /// Natural logarithm (Cephes `logf` polynomial on the mantissa); within 1
    /// ulp (measured 0.76). `log(±0) = -inf`, `log(x < 0) = NaN`, `log(inf) = inf`;
    /// subnormal inputs are handled exactly.
    Log,
    /// `tanh(x)`: odd polynomial for `|x| < 0.625`, `1 - 2 / (e^(2|x|) + 1)`
    /// above; within 2 ulp (measured 1.21); saturates to `±1` (never NaN) for large `|x|`.
    Tanh,
    /// `erf(x)`: `x * P(x^2)` (degree 8) for `|x| < 1.5`, `1 - Q(|x| - 2.71)`
    /// (degree 12, fitted to `erfc`) up to 3.92, `±1` beyond; absolute error
    /// below 1.75e-7 (measured 1.68e-7, 2.8 ulp, near the 1.5 switch).
    /// `erf(-0) = -0`.
    Erf,
    /// `1 / (1 + e^-x)`, computed as `e / (1 + e)` with `e = e^x` for `x < 0`
    /// so small results keep their relative accuracy; within 3 ulp (measured 2.3).
    Sigmoid,
    /// `max(x, 0)`: `relu(-0) = +0`, `relu(NaN) = NaN` (exact).
    Relu,
    /// `0.5 x (1 + erf(x / sqrt 2))` (as PyTorch's default GELU). Absolute
    /// error at most `1e-7 * |x| + 2 ulp`; for `x < -2` the `1 + erf`
    /// cancellation means the relative error of the (tiny) result can be large.
    /// `gelu(-inf) = -0`, `gelu(inf) = inf`.
    GeluErf,
    /// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`, evaluated as the
    /// identical `x * sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3))`, which has no
    /// `1 + tanh` cancellation for negative `x`. Within `4 + 3|v|` ulp, where
    /// `v = 2 sqrt(2/pi) (x + 0.044715 x^3)`: the f32 rounding of `v` (and of
    /// the constants) is amplified by `e^v` for large negative `x`, so e.g.
    /// 233 ulp at `x = -9.8` (where the result is about -1e-35).
    /// `gelu(-inf) = -0`.
    GeluTanh,
    /// `x * sigmoid(x)` (SiLU / swish), computed as `x e / (1 + e)` for
    /// `x < 0` (with an exponent bias so results near underflow keep their
    /// bits); within 4 ulp (measured 3.1). `silu(-inf) = -0`.
    Silu,
}

impl UnaryOp {
    /// Every unary op.
    pub const ALL: [UnaryOp; 13] = [
        UnaryOp::Neg,
        UnaryOp::Abs,
        UnaryOp::Sqrt,
        UnaryOp::Reciprocal,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Tanh,
        UnaryOp::Erf,
        UnaryOp::Sigmoid,
        UnaryOp::Relu,
        UnaryOp::GeluErf,
        UnaryOp::GeluTanh,
        UnaryOp::Silu,
    ];

    /// Lower-case name, as used in reports (`gelu_erf`, `exp`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Abs => "abs",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Reciprocal => "reciprocal",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Erf => "erf",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Relu => "relu",
            UnaryOp::GeluErf => "gelu_erf",
            UnaryOp::GeluTanh => "gelu_tanh",
            UnaryOp::Silu => "silu",
        }
    }

    /// Whether the result is the correctly rounded (or exact) value, so every
    /// implementation anywhere must agree with it bit for bit.
    pub const fn is_exactly_rounded(self) -> bool {
        matches!(
            self,
            UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Sqrt | UnaryOp::Reciprocal | UnaryOp::Relu
        )
    }

    /// The op on one value: the scalar reference, bit-identical to what the
    /// slice kernels compute for each element (NaN payloads aside).
    pub fn apply(self, x: f32) -> f32 {
        scalar::unary_value(self, x)
    }
}

/// An elementwise function of two f32 values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// `a + b` (IEEE, correctly rounded).
    Add,
    /// `a - b` (IEEE, correctly rounded).
    Sub,
    /// `a * b` (IEEE, correctly rounded).
    Mul,
    /// `a / b` (IEEE, correctly rounded).
    Div,
    /// IEEE 754-2019 `maximum`: NaN if either input is NaN, and `-0 < +0`, so
    /// the result does not depend on the argument order.
    Max,
    /// IEEE 754-2019 `minimum`: NaN if either input is NaN, and `-0 < +0`.
    Min,
    /// `a^b` by the platform libm's `powf` (C99 special cases: `pow(x, 0) =
    /// 1`, `pow(1, y) = 1` even for NaN, negative `a` with non-integer `b` is
    /// NaN), on every level.
    Pow,
}

impl BinaryOp {
    /// Every binary op.
    pub const ALL: [BinaryOp; 7] = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Max,
        BinaryOp::Min,
        BinaryOp::Pow,
    ];

    /// Lower-case name (`add`, `max`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Max => "max",
            BinaryOp::Min => "min",
            BinaryOp::Pow => "pow",
        }
    }

    /// The op on one pair of values: the scalar reference (NaN payloads aside).
    pub fn apply(self, a: f32, b: f32) -> f32 {
        scalar::binary_value(self, a, b)
    }
}

/// One operand of [`BinaryOp::Pow`]: a slice, or one value broadcast to every element.
enum Src<'a, T> {
    Slice(&'a [T]),
    Splat(f32),
}

fn check_len(what: &str, got: usize, want: usize) {
    assert_eq!(
        got, want,
        "mixprec elementwise: {what} has {got} elements but the output has {want}"
    );
}

/// Calls `$f::<I, O>(args...)` in the backend chosen by `$isa`, with `I` and
/// `O` taken from the slices' dtypes.
macro_rules! backend_call {
    ($isa:expr, $f:ident ($($arg:expr),*)) => {
        backend_call!($isa, $f::<>($($arg),*))
    };
    ($isa:expr, $f:ident :: <$($t:ty),*> ($($arg:expr),*)) => {{
        match $isa {
            Isa::Scalar => scalar::$f::<$($t),*>($($arg),*),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: callers pass `active_isa()` or a level that passed
            // `Isa::require`, so the CPU has every feature the called
            // function enables (this arm and the next).
            Isa::Avx2 => unsafe { avx2::$f::<$($t),*>($($arg),*) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as for Avx2.
            Isa::Avx512Core | Isa::Avx512CoreBf16 | Isa::Avx512CoreFp16 => unsafe {
                avx512::$f::<$($t),*>($($arg),*)
            },
            #[cfg(not(target_arch = "x86_64"))]
            _ => unreachable!("no level above scalar is ever detected on this target"),
        }
    }};
}
pub(crate) use backend_call;

/// Expands `$body` once per output dtype with `$O` bound to the element type
/// and `$y` to the typed output slice.
macro_rules! with_out {
    ($out:expr, |$y:ident : $O:ident| $body:expr) => {
        match $out {
            FloatSliceMut::F32($y) => {
                type $O = f32;
                $body
            }
            FloatSliceMut::Bf16($y) => {
                type $O = half::bf16;
                $body
            }
            FloatSliceMut::F16($y) => {
                type $O = half::f16;
                $body
            }
        }
    };
}
pub(crate) use with_out;

/// Like [`with_out`] for an input slice.
macro_rules! with_in {
    ($inp:expr, |$x:ident : $I:ident| $body:expr) => {
        match $inp {
            FloatSlice::F32($x) => {
                type $I = f32;
                $body
            }
            FloatSlice::Bf16($x) => {
                type $I = half::bf16;
                $body
            }
            FloatSlice::F16($x) => {
                type $I = half::f16;
                $body
            }
        }
    };
}
pub(crate) use with_in;

fn run_unary(isa: Isa, op: UnaryOp, x: FloatSlice, y: FloatSliceMut) {
    check_len("input", x.len(), y.len());
    with_in!(x, |x: I| with_out!(y, |y: O| backend_call!(
        isa,
        unary::<I, O>(op, x, y)
    )))
}

/// `Pow` runs the same per-element libm call on every level.
fn pow_slices<A: Element, B: Element, O: Element>(a: Src<A>, b: Src<B>, y: &mut [O]) {
    fn get<T: Element>(s: &Src<'_, T>, i: usize) -> f32 {
        match s {
            Src::Slice(v) => v[i].to_f32(),
            Src::Splat(c) => *c,
        }
    }
    for (i, out) in y.iter_mut().enumerate() {
        *out = O::from_f32(get(&a, i).powf(get(&b, i)));
    }
}

fn run_binary_slices(isa: Isa, op: BinaryOp, a: FloatSlice, b: FloatSlice, y: FloatSliceMut) {
    check_len("left operand", a.len(), y.len());
    check_len("right operand", b.len(), y.len());
    with_in!(a, |a: A| with_in!(b, |b: B| with_out!(y, |y: O| {
        if op == BinaryOp::Pow {
            pow_slices(Src::Slice(a), Src::Slice(b), y)
        } else {
            backend_call!(isa, binary::<A, B, O>(op, a, b, y))
        }
    })))
}

fn run_binary_rhs(isa: Isa, op: BinaryOp, a: FloatSlice, b: f32, y: FloatSliceMut) {
    check_len("left operand", a.len(), y.len());
    with_in!(a, |a: A| with_out!(y, |y: O| {
        if op == BinaryOp::Pow {
            pow_slices::<A, f32, O>(Src::Slice(a), Src::Splat(b), y)
        } else {
            backend_call!(isa, binary_splat_rhs::<A, O>(op, a, b, y))
        }
    }))
}

fn run_binary_lhs(isa: Isa, op: BinaryOp, a: f32, b: FloatSlice, y: FloatSliceMut) {
    check_len("right operand", b.len(), y.len());
    with_in!(b, |b: B| with_out!(y, |y: O| {
        if op == BinaryOp::Pow {
            pow_slices::<f32, B, O>(Src::Splat(a), Src::Slice(b), y)
        } else {
            backend_call!(isa, binary_splat_lhs::<B, O>(op, a, b, y))
        }
    }))
}

/// What the elementwise kernels run at `isa` (for `mixprec info`).
pub const fn implementation(isa: Isa) -> &'static str {
    match isa {
        Isa::Scalar => "scalar f32 math, integer-RNE stores",
        Isa::Avx2 => "avx2 8-lane f32 math (f16 via F16C)",
        // See the module docs: the higher levels run the avx512_core code.
        Isa::Avx512Core | Isa::Avx512CoreBf16 | Isa::Avx512CoreFp16 => {
            "avx512 16-lane f32 math (avx512_core code)"
        }
    }
}

/// `y[i] = op(x[i])` on the active ISA level.
///
/// # Panics
/// If `x.len() != y.len()` (a programmer error, as with `copy_from_slice`).
pub fn unary(op: UnaryOp, x: FloatSlice, y: FloatSliceMut) {
    run_unary(active_isa(), op, x, y)
}

/// `y[i] = a[i] op b[i]` on the active ISA level.
///
/// # Panics
/// If `a`, `b` and `y` do not all have the same length.
pub fn binary(op: BinaryOp, a: FloatSlice, b: FloatSlice, y: FloatSliceMut) {
    run_binary_slices(active_isa(), op, a, b, y)
}

/// `y[i] = a[i] op b` on the active ISA level.
///
/// # Panics
/// If `a.len() != y.len()`.
pub fn binary_scalar_rhs(op: BinaryOp, a: FloatSlice, b: f32, y: FloatSliceMut) {
    run_binary_rhs(active_isa(), op, a, b, y)
}

/// `y[i] = a op b[i]` on the active ISA level.
///
/// # Panics
/// If `b.len() != y.len()`.
pub fn binary_scalar_lhs(op: BinaryOp, a: f32, b: FloatSlice, y: FloatSliceMut) {
    run_binary_lhs(active_isa(), op, a, b, y)
}

/// [`unary`] at an explicit level; errors if this CPU lacks it.
///
/// # Panics
/// If `x.len() != y.len()`.
pub fn unary_at(isa: Isa, op: UnaryOp, x: FloatSlice, y: FloatSliceMut) -> Result<(), IsaError> {
    run_unary(isa.require()?, op, x, y);
    Ok(())
}

/// [`binary`] at an explicit level; errors if this CPU lacks it.
///
/// # Panics
/// If `a`, `b` and `y` do not all have the same length.
pub fn binary_at(
    isa: Isa,
    op: BinaryOp,
    a: FloatSlice,
    b: FloatSlice,
    y: FloatSliceMut,
) -> Result<(), IsaError> {
    run_binary_slices(isa.require()?, op, a, b, y);
    Ok(())
}

/// [`binary_scalar_rhs`] at an explicit level; errors if this CPU lacks it.
///
/// # Panics
/// If `a.len() != y.len()`.
pub fn binary_scalar_rhs_at(
    isa: Isa,
    op: BinaryOp,
    a: FloatSlice,
    b: f32,
    y: FloatSliceMut,
) -> Result<(), IsaError> {
    run_binary_rhs(isa.require()?, op, a, b, y);
    Ok(())
}

/// [`binary_scalar_lhs`] at an explicit level; errors if this CPU lacks it.
///
/// # Panics
/// If `b.len() != y.len()`.
pub fn binary_scalar_lhs_at(
    isa: Isa,
    op: BinaryOp,
    a: f32,
    b: FloatSlice,
    y: FloatSliceMut,
) -> Result<(), IsaError> {
    run_binary_lhs(isa.require()?, op, a, b, y);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "input has 3 elements but the output has 2")]
    fn length_mismatch_panics_clearly() {
        unary(
            UnaryOp::Exp,
            FloatSlice::F32(&[1.0; 3]),
            FloatSliceMut::F32(&mut [0.0; 2]),
        );
    }

    #[test]
    fn explicit_level_above_detection_is_an_error() {
        for isa in Isa::ALL {
            let r = unary_at(
                isa,
                UnaryOp::Relu,
                FloatSlice::F32(&[1.0]),
                FloatSliceMut::F32(&mut [0.0]),
            );
            assert_eq!(r.is_ok(), isa.is_available(), "{isa}");
        }
    }
}
