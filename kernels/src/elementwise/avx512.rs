//! The `avx512_core` level (16 lanes), also run for `avx512_core_bf16` and
//! `avx512_core_fp16`: `body.rs` instantiated on `__m512` with `__mmask16`
//! masks. bf16 stores use the same 16-lane integer round-to-nearest-even as
//! `convert::avx512` (the source of truth for that rounding; duplicated here so
//! it inlines into these kernels).
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
    fn exp2i(n: V) -> V {
        let e = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
        _mm512_castsi512_ps(_mm512_slli_epi32::<23>(e))
    }
    fn exponent_field(a: V) -> V {
        _mm512_cvtepi32_ps(_mm512_srli_epi32::<23>(_mm512_and_si512(
            _mm512_castps_si512(a),
            _mm512_set1_epi32(0x7F80_0000),
        )))
    }
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

    /// bf16 RNE of 16 lanes into their low 16 bits (as `convert::avx512::bf16_round_16`).
    fn bf16_round_16(x: __m512i) -> __m512i {
        let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(x), _mm512_set1_epi32(1));
        let rounded = _mm512_add_epi32(x, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
        let abs = _mm512_and_si512(x, _mm512_set1_epi32(0x7FFF_FFFF));
        let is_nan = _mm512_cmpgt_epi32_mask(abs, _mm512_set1_epi32(0x7F80_0000));
        let quiet = _mm512_or_si512(x, _mm512_set1_epi32(0x0040_0000));
        _mm512_srli_epi32::<16>(_mm512_mask_blend_epi32(is_nan, rounded, quiet))
    }

    /// # Safety
    /// `p` must be valid for 16 reads.
    unsafe fn load<T: Element>(p: *const T) -> V {
        // SAFETY: p is valid for 16 elements of T, whose size matches each arm's load width.
        unsafe {
            match T::DTYPE {
                FloatType::F32 => _mm512_loadu_ps(p.cast()),
                FloatType::Bf16 => {
                    let h = _mm256_loadu_si256(p.cast());
                    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
                }
                FloatType::F16 => _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())),
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
                FloatType::Bf16 => {
                    let r = bf16_round_16(_mm512_castps_si512(v));
                    _mm256_storeu_si256(p.cast(), _mm512_cvtepi32_epi16(r));
                }
                FloatType::F16 => _mm256_storeu_si256(
                    p.cast(),
                    _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v),
                ),
            }
        }
    }
}

include!("body.rs");
