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
    /// Lanes where `a` or `b` is a NaN (one compare for two vectors).
    fn unordered(a: V, b: V) -> M { _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(a, b) }
    fn any(m: M) -> bool { m != 0 }
    /// The even and the odd elements of the 32 values `a` then `b`, one
    /// `vpermt2ps` each.
    fn deinterleave2(a: V, b: V) -> (V, V) {
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        (_mm512_permutex2var_ps(a, even, b), _mm512_permutex2var_ps(a, odd, b))
    }
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

simd! {
    /// Max pooling at column stride 2 with a 3-column window from padded
    /// column 0 (`pad_left` 1) or a 2-column one (`pad_left` 0), column
    /// dilation 1, any rows (`crate::pool::max_pool_plane`'s common case:
    /// ResNet's and VGG's pools), all in registers: each output row's input
    /// rows are folded column by column (aligned loads, no stores between),
    /// then the even and odd columns are separated by `vpermt2ps` and the
    /// window's columns folded, the left column (`pad_left` 1) by `valignd`
    /// from the previous block. That fold order is not the row-major one,
    /// which gives the same bits unless the plane holds a NaN or a -0 (then
    /// equal values can differ in sign or payload): returns false, with
    /// `out` partly written, if one is found (checked on every loaded
    /// vector), for the caller to run the order-keeping path.
    pub(crate) fn max_pool_stride2(
        win: &crate::pool::PoolWindow,
        src: &[f32],
        out: &mut [f32],
    ) -> bool {
        let crate::pool::PoolWindow {
            h,
            w,
            oh,
            ow,
            kernel: [kh, kw],
            strides: [sh, _],
            dilations: [dh, _],
            pad_begin: [pad_top, pad_left],
        } = *win;
        assert!(
            src.len() >= h * w && out.len() == oh * ow,
            "mixprec max_pool_stride2: {} inputs, {} outputs for {win:?}",
            src.len(),
            out.len()
        );
        let left_column = match (kw, pad_left) {
            (3, 1) => true,
            (2, 0) => false,
            _ => panic!("mixprec max_pool_stride2: not its window: {win:?}"),
        };
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        let neg_inf = _mm512_set1_ps(f32::NEG_INFINITY);
        // Quiet and signalling NaNs, -0 (`vfpclassps` categories 0, 7, 2).
        const NAN_OR_NEG_ZERO: i32 = 0x01 | 0x80 | 0x04;
        let mut seen: __mmask16 = 0;
        let mut rows = Vec::with_capacity(kh);
        // The lanes of the 16 input columns from `c` that lie in the row.
        let lanes_from = |c: usize| -> __mmask16 {
            let n = w.saturating_sub(c).min(LANES);
            ((1u32 << n) - 1) as __mmask16
        };
        for (i, out_row) in out.chunks_exact_mut(ow).enumerate() {
            rows.clear();
            for ki in 0..kh {
                let y = i * sh + ki * dh;
                if y >= pad_top && y - pad_top < h {
                    rows.push(&src[(y - pad_top) * w..][..w]);
                }
            }
            // Input column 2j - 1 of output j, for the block's first output.
            let mut prev_odd = neg_inf;
            for (m, dst) in out_row.chunks_mut(LANES).enumerate() {
                let c = 2 * LANES * m;
                let (mask_a, mask_b) = (lanes_from(c), lanes_from(c + LANES));
                let (mut a, mut b) = (neg_inf, neg_inf);
                for row in &rows {
                    // SAFETY: masked loads read only the lanes in the mask,
                    // columns inside the row; the others are not accessed.
                    let (va, vb) = unsafe {
                        (
                            _mm512_mask_loadu_ps(neg_inf, mask_a, row.as_ptr().wrapping_add(c)),
                            _mm512_mask_loadu_ps(
                                neg_inf,
                                mask_b,
                                row.as_ptr().wrapping_add(c + LANES),
                            ),
                        )
                    };
                    seen |= _mm512_fpclass_ps_mask::<NAN_OR_NEG_ZERO>(va)
                        | _mm512_fpclass_ps_mask::<NAN_OR_NEG_ZERO>(vb);
                    a = _mm512_max_ps(va, a);
                    b = _mm512_max_ps(vb, b);
                }
                // Columns c + 2t and c + 2t + 1 of the block's outputs t.
                let evens = _mm512_permutex2var_ps(a, even, b);
                let odds = _mm512_permutex2var_ps(a, odd, b);
                let mut acc = _mm512_max_ps(odds, evens);
                if left_column {
                    // Column c + 2t - 1: the odd columns one lane later.
                    let left = _mm512_castsi512_ps(_mm512_alignr_epi32::<15>(
                        _mm512_castps_si512(odds),
                        _mm512_castps_si512(prev_odd),
                    ));
                    acc = _mm512_max_ps(left, acc);
                    prev_odd = odds;
                }
                if dst.len() == LANES {
                    // SAFETY: dst holds 16 values.
                    unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), acc) };
                } else {
                    store_part(dst, acc);
                }
            }
        }
        seen == 0
    }
}
