//! AVX2 + F16C conversions: 8 lanes; integer round-to-nearest-even for bf16,
//! `vcvtps2ph`/`vcvtph2ps` for f16. Tails go through the scalar reference.
//!
//! Callers must have checked `Isa::Avx2.require()` (see `convert::mod`).

use std::arch::x86_64::*;

use super::scalar;

/// bf16 RNE of 8 f32 lanes, matching `scalar::f32_to_bf16_bits` lane for lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bf16_round_8(x: __m256i) -> __m256i {
    let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(x), _mm256_set1_epi32(1));
    let rounded = _mm256_add_epi32(x, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF)));
    let abs = _mm256_and_si256(x, _mm256_set1_epi32(0x7FFF_FFFF));
    // Both sides are non-negative as i32, so a signed compare is exact.
    let is_nan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7F80_0000));
    let quiet = _mm256_or_si256(x, _mm256_set1_epi32(0x0040_0000));
    _mm256_srli_epi32::<16>(_mm256_blendv_epi8(rounded, quiet, is_nan))
}

/// Converts `src` to bf16 bits in `dst` (equal lengths, checked by the caller).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn f32_to_bf16(src: &[f32], dst: &mut [u16]) {
    let n = src.len().min(dst.len());
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 <= n bounds both 8-lane loads of src and the 32-byte store to dst.
        unsafe {
            let a = _mm256_loadu_si256(src.as_ptr().add(i).cast());
            let b = _mm256_loadu_si256(src.as_ptr().add(i + 8).cast());
            let packed = _mm256_packus_epi32(bf16_round_8(a), bf16_round_8(b));
            // packus interleaves 128-bit halves: [a0 b0 a1 b1] -> [a0 a1 b0 b1].
            let ordered = _mm256_permute4x64_epi64::<0b11_01_10_00>(packed);
            _mm256_storeu_si256(dst.as_mut_ptr().add(i).cast(), ordered);
        }
        i += 16;
    }
    scalar::f32_to_bf16(&src[i..n], &mut dst[i..n]);
}

/// Widens bf16 bits to f32 (a 16-bit left shift, so exact).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn bf16_to_f32(src: &[u16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n bounds the 16-byte load and the 32-byte store.
        unsafe {
            let h = _mm_loadu_si128(src.as_ptr().add(i).cast());
            let w = _mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h));
            _mm256_storeu_si256(dst.as_mut_ptr().add(i).cast(), w);
        }
        i += 8;
    }
    scalar::bf16_to_f32(&src[i..n], &mut dst[i..n]);
}

/// Converts f32 to f16 bits with F16C (RNE immediate, so MXCSR is not consulted).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn f32_to_f16(src: &[f32], dst: &mut [u16]) {
    let n = src.len().min(dst.len());
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 <= n bounds both 8-lane loads and the 32-byte store.
        unsafe {
            let a =
                _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(src.as_ptr().add(i)));
            let b = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(
                src.as_ptr().add(i + 8),
            ));
            _mm256_storeu_si256(dst.as_mut_ptr().add(i).cast(), _mm256_set_m128i(b, a));
        }
        i += 16;
    }
    scalar::f32_to_f16(&src[i..n], &mut dst[i..n]);
}

/// Widens f16 bits to f32 with F16C (exact; NaNs are quieted).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn f16_to_f32(src: &[u16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n bounds the 16-byte load and the 32-byte store.
        unsafe {
            let h = _mm_loadu_si128(src.as_ptr().add(i).cast());
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        }
        i += 8;
    }
    scalar::f16_to_f32(&src[i..n], &mut dst[i..n]);
}
