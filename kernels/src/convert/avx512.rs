//! AVX-512 conversions, 32 elements per step.
//!
//! * `avx512_core`: 16-lane integer round-to-nearest-even for bf16,
//!   `vcvtps2ph`/`vcvtph2ps` for f16.
//! * `avx512_core_bf16`: `vcvtne2ps2bf16` (two vectors in, one out). That
//!   instruction treats subnormal inputs as zero, so any step containing a lane
//!   with a zero exponent is redone with the integer path for those lanes;
//!   steps without such lanes (nearly all real data) pay one test and a
//!   not-taken branch.
//!
//! Large outputs are written with non-temporal stores (see
//! [`super::STREAM_THRESHOLD_ELEMS`]). The alignment prologue goes through
//! the scalar reference; f32 -> bf16/f16 tails are one masked step (a GEMM
//! or convolution epilogue stores many short row segments). Callers must have checked the level with
//! `Isa::require` (see `convert::mod`).

use std::arch::x86_64::*;

use super::{STREAM_THRESHOLD_ELEMS, scalar};

/// Number of leading elements of `ptr` (element size `elem`) to skip before
/// it is 64-byte aligned, capped at `n`.
fn to_alignment(ptr: *const u8, elem: usize, n: usize) -> usize {
    let misalign = ptr as usize % 64;
    if misalign == 0 {
        return 0;
    }
    // Element pointers are always aligned to their own size, so this divides.
    ((64 - misalign) / elem).min(n)
}

/// Stores 64 bytes, streaming past the cache when asked.
///
/// # Safety
/// `p` must be valid for 64 bytes of writes; when `stream` is set it must be 64-byte aligned.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn store(p: *mut __m512i, v: __m512i, stream: bool) {
    // SAFETY: forwarded from the caller's contract.
    unsafe {
        if stream {
            _mm512_stream_si512(p, v);
        } else {
            _mm512_storeu_si512(p, v);
        }
    }
}

/// Lane masks for a tail of `rem < 32` elements: the first and second 16
/// f32 lanes, and the 32 u16 output lanes.
#[inline(always)]
fn tail_masks(rem: usize) -> (u16, u16, u32) {
    debug_assert!(rem < 32);
    let first = if rem >= 16 { 0xFFFF } else { (1u16 << rem) - 1 };
    let second = if rem > 16 {
        (1u16 << (rem - 16)) - 1
    } else {
        0
    };
    (first, second, (1u32 << rem) - 1)
}

/// bf16 RNE of 16 f32 lanes, returned in the low 16 bits of each lane.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
fn bf16_round_16(x: __m512i) -> __m512i {
    let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(x), _mm512_set1_epi32(1));
    let rounded = _mm512_add_epi32(x, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
    let abs = _mm512_and_si512(x, _mm512_set1_epi32(0x7FFF_FFFF));
    let is_nan = _mm512_cmpgt_epi32_mask(abs, _mm512_set1_epi32(0x7F80_0000));
    let quiet = _mm512_or_si512(x, _mm512_set1_epi32(0x0040_0000));
    _mm512_srli_epi32::<16>(_mm512_mask_blend_epi32(is_nan, rounded, quiet))
}

/// Integer-RNE bf16 of 32 f32 lanes (`a` then `b`), packed into 32 u16.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
fn bf16_round_32(a: __m512i, b: __m512i) -> __m512i {
    let lo = _mm512_cvtepi32_epi16(bf16_round_16(a));
    let hi = _mm512_cvtepi32_epi16(bf16_round_16(b));
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
}

#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
pub(super) fn f32_to_bf16(src: &[f32], dst: &mut [u16]) {
    let n = src.len().min(dst.len());
    let stream = n >= STREAM_THRESHOLD_ELEMS;
    let head = if stream {
        to_alignment(dst.as_ptr().cast(), 2, n)
    } else {
        0
    };
    scalar::f32_to_bf16(&src[..head], &mut dst[..head]);
    let mut i = head;
    while i + 32 <= n {
        // SAFETY: i + 32 <= n bounds both 64-byte loads and the 64-byte store;
        // when streaming, dst + i is 64-byte aligned (head, then steps of 64 bytes).
        unsafe {
            let a = _mm512_loadu_si512(src.as_ptr().add(i).cast());
            let b = _mm512_loadu_si512(src.as_ptr().add(i + 16).cast());
            store(dst.as_mut_ptr().add(i).cast(), bf16_round_32(a, b), stream);
        }
        i += 32;
    }
    if stream {
        _mm_sfence();
    }
    if i < n {
        let (ma, mb, m32) = tail_masks(n - i);
        // SAFETY: the masks cover only src[i..n] and dst[i..n]; masked-off
        // lanes are not accessed (wrapping_add: the second half may start
        // past the end when its mask is empty).
        unsafe {
            let a = _mm512_maskz_loadu_epi32(ma, src.as_ptr().add(i).cast());
            let b = _mm512_maskz_loadu_epi32(mb, src.as_ptr().wrapping_add(i + 16).cast());
            _mm512_mask_storeu_epi16(dst.as_mut_ptr().add(i).cast(), m32, bf16_round_32(a, b));
        }
    }
}

/// The bf16 of 32 f32 lanes (`a` then `b`) as 32 u16, with the bits of every
/// f32 -> bf16 path: `VCVTNE2PS2BF16` (RNE, NaN quieted) except on lanes
/// with a zero exponent, where the instruction flushes subnormals to zero
/// and the integer RNE is taken instead. Shared by the conversion and by
/// epilogues that round a tile's registers straight to bf16.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")]
pub(crate) fn bf16_x32(a: __m512, b: __m512) -> __m512i {
    let exponent = _mm512_set1_epi32(0x7F80_0000);
    // SAFETY: __m512bh and __m512i are both 512 plain bits; the transmute
    // only relabels the lanes.
    let hw: __m512i = unsafe { std::mem::transmute(_mm512_cvtne2ps_pbh(b, a)) };
    let (ai, bi) = (_mm512_castps_si512(a), _mm512_castps_si512(b));
    // Lanes with a zero exponent (zeros and subnormals): the hardware
    // flushed the subnormals, so take the integer result there.
    let za = _mm512_testn_epi32_mask(ai, exponent);
    let zb = _mm512_testn_epi32_mask(bi, exponent);
    if (za | zb) == 0 {
        hw
    } else {
        let lanes = (za as u32) | ((zb as u32) << 16);
        _mm512_mask_blend_epi16(lanes, hw, bf16_round_32(ai, bi))
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")]
pub(super) fn f32_to_bf16_native(src: &[f32], dst: &mut [u16]) {
    let n = src.len().min(dst.len());
    let stream = n >= STREAM_THRESHOLD_ELEMS;
    let head = if stream {
        to_alignment(dst.as_ptr().cast(), 2, n)
    } else {
        0
    };
    scalar::f32_to_bf16(&src[..head], &mut dst[..head]);
    let mut i = head;
    while i + 32 <= n {
        // SAFETY: i + 32 <= n bounds both 64-byte loads and the 64-byte store;
        // when streaming, dst + i is 64-byte aligned. __m512bh and __m512i are
        // both 512 plain bits, so the transmute only relabels the lanes.
        unsafe {
            let a = _mm512_loadu_ps(src.as_ptr().add(i));
            let b = _mm512_loadu_ps(src.as_ptr().add(i + 16));
            store(dst.as_mut_ptr().add(i).cast(), bf16_x32(a, b), stream);
        }
        i += 32;
    }
    if stream {
        _mm_sfence();
    }
    if i < n {
        let (ma, mb, m32) = tail_masks(n - i);
        // SAFETY: the masks cover only src[i..n] and dst[i..n]; masked-off
        // lanes are not accessed. They load as 0.0, whose zero exponent sends
        // the step through the integer patch, which is exact for every lane.
        unsafe {
            let a = _mm512_maskz_loadu_ps(ma, src.as_ptr().add(i));
            let b = _mm512_maskz_loadu_ps(mb, src.as_ptr().wrapping_add(i + 16));
            _mm512_mask_storeu_epi16(dst.as_mut_ptr().add(i).cast(), m32, bf16_x32(a, b));
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
pub(super) fn bf16_to_f32(src: &[u16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let stream = n >= STREAM_THRESHOLD_ELEMS;
    let head = if stream {
        to_alignment(dst.as_ptr().cast(), 4, n)
    } else {
        0
    };
    scalar::bf16_to_f32(&src[..head], &mut dst[..head]);
    let mut i = head;
    while i + 32 <= n {
        // SAFETY: i + 32 <= n bounds the 64-byte load and both 64-byte stores;
        // when streaming, dst + i is 64-byte aligned.
        unsafe {
            let h = _mm512_loadu_si512(src.as_ptr().add(i).cast());
            let lo = _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(h)));
            let hi =
                _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64::<1>(h)));
            store(dst.as_mut_ptr().add(i).cast(), lo, stream);
            store(dst.as_mut_ptr().add(i + 16).cast(), hi, stream);
        }
        i += 32;
    }
    if stream {
        _mm_sfence();
    }
    scalar::bf16_to_f32(&src[i..n], &mut dst[i..n]);
}

#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,f16c")]
pub(super) fn f32_to_f16(src: &[f32], dst: &mut [u16]) {
    let n = src.len().min(dst.len());
    let stream = n >= STREAM_THRESHOLD_ELEMS;
    let head = if stream {
        to_alignment(dst.as_ptr().cast(), 2, n)
    } else {
        0
    };
    scalar::f32_to_f16(&src[..head], &mut dst[..head]);
    let mut i = head;
    while i + 32 <= n {
        // SAFETY: i + 32 <= n bounds both loads and the store; when streaming,
        // dst + i is 64-byte aligned.
        unsafe {
            let a =
                _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm512_loadu_ps(src.as_ptr().add(i)));
            let b = _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm512_loadu_ps(
                src.as_ptr().add(i + 16),
            ));
            let both = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(a), b);
            store(dst.as_mut_ptr().add(i).cast(), both, stream);
        }
        i += 32;
    }
    if stream {
        _mm_sfence();
    }
    if i < n {
        let (ma, mb, m32) = tail_masks(n - i);
        // SAFETY: the masks cover only src[i..n] and dst[i..n]; masked-off
        // lanes are not accessed.
        unsafe {
            let a = _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm512_maskz_loadu_ps(
                ma,
                src.as_ptr().add(i),
            ));
            let b = _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm512_maskz_loadu_ps(
                mb,
                src.as_ptr().wrapping_add(i + 16),
            ));
            let both = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(a), b);
            _mm512_mask_storeu_epi16(dst.as_mut_ptr().add(i).cast(), m32, both);
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,f16c")]
pub(super) fn f16_to_f32(src: &[u16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let stream = n >= STREAM_THRESHOLD_ELEMS;
    let head = if stream {
        to_alignment(dst.as_ptr().cast(), 4, n)
    } else {
        0
    };
    scalar::f16_to_f32(&src[..head], &mut dst[..head]);
    let mut i = head;
    while i + 32 <= n {
        // SAFETY: i + 32 <= n bounds the load and both stores; when streaming,
        // dst + i is 64-byte aligned.
        unsafe {
            let h = _mm512_loadu_si512(src.as_ptr().add(i).cast());
            let lo = _mm512_cvtph_ps(_mm512_castsi512_si256(h));
            let hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(h));
            store(
                dst.as_mut_ptr().add(i).cast(),
                _mm512_castps_si512(lo),
                stream,
            );
            store(
                dst.as_mut_ptr().add(i + 16).cast(),
                _mm512_castps_si512(hi),
                stream,
            );
        }
        i += 32;
    }
    if stream {
        _mm_sfence();
    }
    scalar::f16_to_f32(&src[i..n], &mut dst[i..n]);
}
