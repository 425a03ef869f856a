//! The `avx512_core` level (16 lanes), also run for `avx512_core_bf16` and
//! `avx512_core_fp16`: `body.rs` instantiated on `__m512` with `__mmask16`
//! masks. bf16 stores use the 16-lane integer round-to-nearest-even of
//! `convert::avx512` (the source of truth for that rounding; restated here so it
//! inlines into these kernels). Partial vectors use masked loads and stores.
//!
//! Every function here is reached only after `Isa::Avx512Core.require()` (or a
//! higher level) or via `active_isa()` (see `elementwise::backend_call`).

// The polynomial coefficients in body.rs are kept as published / fitted.
#![allow(clippy::excessive_precision, clippy::approx_constant)]

use std::arch::x86_64::*;

use super::{BinaryOp, UnaryOp};
use crate::element::{Element, FloatType};
use crate::norm::ReduceOp;

type V = __m512;
type M = __mmask16;
const LANES: usize = 16;

macro_rules! simd {
    ($($item:item)*) => {
        $( #[inline] #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")] $item )*
    };
}

simd! {
    fn splat(x: f32) -> V { _mm512_set1_ps(x) }
    fn add(a: V, b: V) -> V { _mm512_add_ps(a, b) }
    fn sub(a: V, b: V) -> V { _mm512_sub_ps(a, b) }
    fn mul(a: V, b: V) -> V { _mm512_mul_ps(a, b) }
    fn div(a: V, b: V) -> V { _mm512_div_ps(a, b) }
    fn sqrt(a: V) -> V { _mm512_sqrt_ps(a) }
    fn fma(a: V, b: V, c: V) -> V { _mm512_fmadd_ps(a, b, c) }
    fn max_raw(a: V, b: V) -> V { _mm512_max_ps(a, b) }
    fn min_raw(a: V, b: V) -> V { _mm512_min_ps(a, b) }
    fn and(a: V, b: V) -> V { _mm512_and_ps(a, b) }
    fn or(a: V, b: V) -> V { _mm512_or_ps(a, b) }
    fn xor(a: V, b: V) -> V { _mm512_xor_ps(a, b) }
    fn round_even(a: V) -> V {
        _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a)
    }
    fn exponent_field(a: V) -> V {
        _mm512_cvtepi32_ps(_mm512_srli_epi32::<23>(_mm512_and_si512(
            _mm512_castps_si512(a),
            _mm512_set1_epi32(0x7F80_0000),
        )))
    }
    /// `y * 2^n` by one `vscalefps`, rounded once as IEEE multiplication is:
    /// the value the two-step `y * 2^n1 * 2^n2` of the other levels gives
    /// (its first step is exact), in 1 instruction instead of 11.
    fn scale2(y: V, n: V) -> V { _mm512_scalef_ps(y, n) }
    fn lt(a: V, b: V) -> M { _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, b) }
    fn eq(a: V, b: V) -> M { _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(a, b) }
    fn isnan(a: V) -> M { _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(a, a) }
    fn select(m: M, a: V, b: V) -> V { _mm512_mask_blend_ps(m, b, a) }
    fn lanes_below(n: usize) -> M { ((1u32 << n) - 1) as M }
    fn to_array(v: V) -> [f32; LANES] {
        let mut out = [0.0; LANES];
        // SAFETY: out holds 16 f32.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), v) };
        out
    }

    /// bf16 round-to-nearest-even of 16 lanes, packed to 16 u16: the results
    /// of `convert::avx512::bf16_round_16` (checked over every f32 bit
    /// pattern), written without shifts, which Zen 4 runs on two pipes only:
    /// `x + 0x7FFF + lsb` as a masked add of 0x8000 where the lsb is set, NaN
    /// quieted by a masked OR, and the high halves gathered by one `vpermw`.
    fn bf16_bits(v: V) -> __m256i {
        let x = _mm512_castps_si512(v);
        let odd = _mm512_test_epi32_mask(x, _mm512_set1_epi32(0x1_0000));
        let r = _mm512_add_epi32(x, _mm512_set1_epi32(0x7FFF));
        let r = _mm512_mask_add_epi32(r, odd, x, _mm512_set1_epi32(0x8000));
        // A NaN is truncated with its quiet bit set (rounding could carry into the exponent).
        let is_nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
        let r = _mm512_mask_or_epi32(r, is_nan, x, _mm512_set1_epi32(0x0040_0000));
        let high_halves = _mm512_set_epi16(
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, //
            31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1,
        );
        _mm512_castsi512_si256(_mm512_permutexvar_epi16(high_halves, r))
    }

    /// 16 lanes of a 16-bit type from their bits.
    fn widen<T: Element>(h: __m256i) -> V {
        match T::DTYPE {
            // bf16 bits into the high half of each lane, zeros below, by one `vpermw`.
            FloatType::Bf16 => {
                let spread = _mm512_set_epi16(
                    15, 0, 14, 0, 13, 0, 12, 0, 11, 0, 10, 0, 9, 0, 8, 0, //
                    7, 0, 6, 0, 5, 0, 4, 0, 3, 0, 2, 0, 1, 0, 0, 0,
                );
                let h = _mm512_castsi256_si512(h);
                _mm512_castsi512_ps(_mm512_maskz_permutexvar_epi16(0xAAAA_AAAA, spread, h))
            }
            _ => _mm512_cvtph_ps(h),
        }
    }

    /// 16 lanes rounded to a 16-bit type's bits.
    fn narrow<T: Element>(v: V) -> __m256i {
        match T::DTYPE {
            FloatType::Bf16 => bf16_bits(v),
            _ => _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v),
        }
    }

    /// # Safety
    /// `p` must be valid for 16 reads.
    unsafe fn load<T: Element>(p: *const T) -> V {
        // SAFETY: p is valid for 16 elements of T, whose size matches each arm's load width.
        unsafe {
            match T::DTYPE {
                FloatType::F32 => _mm512_loadu_ps(p.cast()),
                _ => widen::<T>(_mm256_loadu_si256(p.cast())),
            }
        }
    }

    /// # Safety
    /// `p` must be valid for 16 writes.
    unsafe fn store<T: Element>(p: *mut T, v: V) {
        // SAFETY: p is valid for 16 elements of T, whose size matches each arm's store width.
        unsafe {
            match T::DTYPE {
                FloatType::F32 => _mm512_storeu_ps(p.cast(), v),
                _ => _mm256_storeu_si256(p.cast(), narrow::<T>(v)),
            }
        }
    }

    /// The first `s.len()` (< 16) lanes from `s`, the rest zero.
    fn load_part<T: Element>(s: &[T]) -> V {
        let m = lanes_below(s.len());
        // SAFETY: masked loads touch only the lanes in `m`, all inside `s`.
        unsafe {
            match T::DTYPE {
                FloatType::F32 => _mm512_maskz_loadu_ps(m, s.as_ptr().cast()),
                _ => widen::<T>(_mm256_maskz_loadu_epi16(m, s.as_ptr().cast())),
            }
        }
    }

    /// Stores the first `d.len()` (< 16) lanes of `v` to `d`.
    fn store_part<T: Element>(d: &mut [T], v: V) {
        let m = lanes_below(d.len());
        // SAFETY: masked stores touch only the lanes in `m`, all inside `d`.
        unsafe {
            match T::DTYPE {
                FloatType::F32 => _mm512_mask_storeu_ps(d.as_mut_ptr().cast(), m, v),
                _ => _mm256_mask_storeu_epi16(d.as_mut_ptr().cast(), m, narrow::<T>(v)),
            }
        }
    }
}

include!("body.rs");
