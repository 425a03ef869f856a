//! The `avx2` level (AVX2 + FMA + F16C, 8 lanes): `body.rs` instantiated on
//! `__m256`. bf16 stores use the 8-lane integer round-to-nearest-even of
//! `convert::avx2` (the source of truth for that rounding; restated here so it
//! inlines into these kernels).
//!
//! Every function here is reached only after `Isa::Avx2.require()` or via
//! `active_isa()` (see `elementwise::backend_call`).

// The polynomial coefficients in body.rs are kept as published / fitted.
#![allow(clippy::excessive_precision, clippy::approx_constant)]

use std::arch::x86_64::*;

use super::{BinaryOp, UnaryOp};
use crate::element::{Element, FloatType};
use crate::norm::ReduceOp;

type V = __m256;
type M = __m256;
const LANES: usize = 8;

macro_rules! simd {
    ($($item:item)*) => { $( #[inline] #[target_feature(enable = "avx2,fma,f16c")] $item )* };
}

simd! {
    fn splat(x: f32) -> V { _mm256_set1_ps(x) }
    fn add(a: V, b: V) -> V { _mm256_add_ps(a, b) }
    fn sub(a: V, b: V) -> V { _mm256_sub_ps(a, b) }
    fn mul(a: V, b: V) -> V { _mm256_mul_ps(a, b) }
    fn div(a: V, b: V) -> V { _mm256_div_ps(a, b) }
    fn sqrt(a: V) -> V { _mm256_sqrt_ps(a) }
    fn fma(a: V, b: V, c: V) -> V { _mm256_fmadd_ps(a, b, c) }
    fn max_raw(a: V, b: V) -> V { _mm256_max_ps(a, b) }
    fn min_raw(a: V, b: V) -> V { _mm256_min_ps(a, b) }
    fn and(a: V, b: V) -> V { _mm256_and_ps(a, b) }
    fn or(a: V, b: V) -> V { _mm256_or_ps(a, b) }
    fn xor(a: V, b: V) -> V { _mm256_xor_ps(a, b) }
    fn round_even(a: V) -> V { _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a) }
    fn exp2i(n: V) -> V {
        let e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
        _mm256_castsi256_ps(_mm256_slli_epi32::<23>(e))
    }
    fn exponent_field(a: V) -> V {
        _mm256_cvtepi32_ps(_mm256_srli_epi32::<23>(_mm256_and_si256(
            _mm256_castps_si256(a),
            _mm256_set1_epi32(0x7F80_0000),
        )))
    }
    /// `y * 2^n` in two exact-power steps (`2^n` alone may not be a normal
    /// f32): `y * 2^n1` is normal, so exact, and a subnormal result is rounded
    /// once, in the last multiply.
    fn scale2(y: V, n: V) -> V {
        let n1 = round_even(mul(n, splat(0.5)));
        let n2 = sub(n, n1);
        mul(mul(y, exp2i(n1)), exp2i(n2))
    }
    fn lt(a: V, b: V) -> M { _mm256_cmp_ps::<_CMP_LT_OQ>(a, b) }
    fn eq(a: V, b: V) -> M { _mm256_cmp_ps::<_CMP_EQ_OQ>(a, b) }
    fn isnan(a: V) -> M { _mm256_cmp_ps::<_CMP_UNORD_Q>(a, a) }
    fn select(m: M, a: V, b: V) -> V { _mm256_blendv_ps(b, a, m) }
    /// Lanes where `a` or `b` is a NaN (one compare for two vectors).
    fn unordered(a: V, b: V) -> M { _mm256_cmp_ps::<_CMP_UNORD_Q>(a, b) }
    fn any(m: M) -> bool { _mm256_movemask_ps(m) != 0 }
    /// The even and the odd elements of the 16 values `a` then `b`: a shuffle
    /// within 128-bit halves, then the halves' middle quarters swapped.
    fn deinterleave2(a: V, b: V) -> (V, V) {
        (
            swap_middle_quarters(_mm256_shuffle_ps::<0b10_00_10_00>(a, b)),
            swap_middle_quarters(_mm256_shuffle_ps::<0b11_01_11_01>(a, b)),
        )
    }
    fn swap_middle_quarters(v: V) -> V {
        _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(v)))
    }
    fn lanes_below(n: usize) -> M {
        let iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), iota))
    }
    fn to_array(v: V) -> [f32; LANES] {
        let mut out = [0.0; LANES];
        // SAFETY: out holds 8 f32.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
        out
    }

    /// bf16 round-to-nearest-even of 8 lanes, packed to 8 u16: the results of
    /// `convert::avx2::bf16_round_8` (checked over every f32 bit pattern)
    /// with one vector shift instead of three (Zen 4 runs shifts on two pipes
    /// only): NaN found by an FP compare, the high halves gathered by a byte
    /// shuffle and one qword permute.
    fn bf16_bits(v: V) -> __m128i {
        let x = _mm256_castps_si256(v);
        let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(x), _mm256_set1_epi32(1));
        let r = _mm256_add_epi32(_mm256_add_epi32(x, _mm256_set1_epi32(0x7FFF)), lsb);
        // A NaN is truncated with its quiet bit set (rounding could carry into the exponent).
        let quiet = _mm256_or_si256(x, _mm256_set1_epi32(0x0040_0000));
        let is_nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
        let r = _mm256_blendv_epi8(r, quiet, is_nan);
        let high_halves = _mm256_setr_epi8(
            2, 3, 6, 7, 10, 11, 14, 15, -1, -1, -1, -1, -1, -1, -1, -1, //
            2, 3, 6, 7, 10, 11, 14, 15, -1, -1, -1, -1, -1, -1, -1, -1,
        );
        let g = _mm256_shuffle_epi8(r, high_halves);
        _mm256_castsi256_si128(_mm256_permute4x64_epi64::<0b00_00_10_00>(g))
    }

    /// # Safety
    /// `p` must be valid for 8 reads.
    unsafe fn load<T: Element>(p: *const T) -> V {
        // SAFETY: p is valid for 8 elements of T, whose size matches each arm's load width.
        unsafe {
            match T::DTYPE {
                FloatType::F32 => _mm256_loadu_ps(p.cast()),
                // The 8 bf16 in both 128-bit halves, then each moved by a byte
                // shuffle into the high half of its lane, zeros below: no shift.
                FloatType::Bf16 => {
                    let h = _mm256_broadcastsi128_si256(_mm_loadu_si128(p.cast()));
                    let spread = _mm256_setr_epi8(
                        -1, -1, 0, 1, -1, -1, 2, 3, -1, -1, 4, 5, -1, -1, 6, 7, //
                        -1, -1, 8, 9, -1, -1, 10, 11, -1, -1, 12, 13, -1, -1, 14, 15,
                    );
                    _mm256_castsi256_ps(_mm256_shuffle_epi8(h, spread))
                }
                FloatType::F16 => _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
            }
        }
    }

    /// # Safety
    /// `p` must be valid for 8 writes.
    unsafe fn store<T: Element>(p: *mut T, v: V) {
        // SAFETY: p is valid for 8 elements of T, whose size matches each arm's store width.
        unsafe {
            match T::DTYPE {
                FloatType::F32 => _mm256_storeu_ps(p.cast(), v),
                FloatType::Bf16 => _mm_storeu_si128(p.cast(), bf16_bits(v)),
                FloatType::F16 => {
                    _mm_storeu_si128(p.cast(), _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v))
                }
            }
        }
    }

    /// The first `s.len()` (< 8) lanes from `s`, the rest zero.
    fn load_part<T: Element>(s: &[T]) -> V {
        let mut buf = [T::zeroed(); LANES];
        buf[..s.len()].copy_from_slice(s);
        // SAFETY: buf holds 8 elements.
        unsafe { load(buf.as_ptr()) }
    }

    /// Stores the first `d.len()` (< 8) lanes of `v` to `d`.
    fn store_part<T: Element>(d: &mut [T], v: V) {
        let mut buf = [T::zeroed(); LANES];
        // SAFETY: buf holds 8 elements.
        unsafe { store(buf.as_mut_ptr(), v) };
        d.copy_from_slice(&buf[..d.len()]);
    }
}

include!("body.rs");
