//! Scalar reference conversions: the definition every SIMD path must match bit for bit.
//!
//! Written on raw bits rather than via `half` so the reference does not depend
//! on another crate's choices; the exhaustive tests then check it against an
//! independent IEEE implementation (`rustc_apfloat`).

/// f32 bits -> bf16 bits: round to nearest even; NaN -> quiet NaN, same sign,
/// top 7 payload bits kept.
#[inline(always)]
pub const fn f32_to_bf16_bits(x: u32) -> u16 {
    if x & 0x7FFF_FFFF > 0x7F80_0000 {
        return ((x >> 16) | 0x0040) as u16;
    }
    // Adding 0x7FFF plus the lowest kept bit rounds ties to even; a carry out
    // of the mantissa bumps the exponent, and out of the largest finite value
    // lands exactly on infinity, which is what RNE requires.
    let lsb = (x >> 16) & 1;
    (x.wrapping_add(0x7FFF + lsb) >> 16) as u16
}

/// bf16 bits -> f32 bits: exact (bf16 is the top half of an f32), NaN payloads included.
#[inline(always)]
pub const fn bf16_to_f32_bits(h: u16) -> u32 {
    (h as u32) << 16
}

/// f32 bits -> IEEE binary16 bits: round to nearest even, subnormal results
/// kept, overflow to infinity; NaN -> quiet NaN, same sign, top 9 payload bits kept
/// (what F16C's `vcvtps2ph` does).
#[inline(always)]
pub const fn f32_to_f16_bits(x: u32) -> u16 {
    let sign = ((x >> 16) & 0x8000) as u16;
    let abs = x & 0x7FFF_FFFF;
    if abs > 0x7F80_0000 {
        return sign | 0x7E00 | ((abs >> 13) & 0x03FF) as u16;
    }
    // 0x477F_F000 is the midpoint between f16::MAX (65504) and 65536: it and
    // everything above round to infinity (the tie goes to the even infinity).
    if abs >= 0x477F_F000 {
        return sign | 0x7C00;
    }
    let exp = (abs >> 23) as i32;
    if exp >= 113 {
        // Normal result: rebias the exponent (127 -> 15) and round 13 bits away.
        let rebased = abs - (112 << 23);
        let lsb = (rebased >> 13) & 1;
        return sign | ((rebased + 0x0FFF + lsb) >> 13) as u16;
    }
    // Subnormal (or zero) result: value = mantissa_with_hidden * 2^(exp-150),
    // f16 subnormal unit is 2^-24, so shift right by (126 - exp), at least 14.
    if exp < 102 {
        // Below half the smallest f16 subnormal (2^-25): rounds to zero.
        return sign;
    }
    let mant = (abs & 0x007F_FFFF) | 0x0080_0000;
    let shift = (126 - exp) as u32;
    let half = 1u32 << (shift - 1);
    let kept = mant >> shift;
    let rest = mant & ((1u32 << shift) - 1);
    let round_up = rest > half || (rest == half && (kept & 1) == 1);
    // A carry out of the subnormal range produces the smallest normal, correctly.
    sign | (kept + round_up as u32) as u16
}

/// IEEE binary16 bits -> f32 bits: exact for every finite value and infinity;
/// a NaN becomes a quiet NaN with the same sign and payload (what `vcvtph2ps` does).
#[inline(always)]
pub const fn f16_to_f32_bits(h: u16) -> u32 {
    let sign = ((h & 0x8000) as u32) << 16;
    let exp = ((h >> 10) & 0x1F) as u32;
    let mant = (h & 0x03FF) as u32;
    match exp {
        0 if mant == 0 => sign,
        0 => {
            // Subnormal: normalise. The value is mant * 2^-24.
            let lz = mant.leading_zeros() - 22; // zeros within the 10-bit field
            let mant = (mant << (lz + 1)) & 0x03FF;
            sign | ((113 - lz - 1) << 23) | (mant << 13)
        }
        0x1F if mant == 0 => sign | 0x7F80_0000,
        0x1F => sign | 0x7FC0_0000 | (mant << 13),
        _ => sign | ((exp + 112) << 23) | (mant << 13),
    }
}

pub(crate) fn f32_to_bf16(src: &[f32], dst: &mut [u16]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = f32_to_bf16_bits(s.to_bits());
    }
}

pub(crate) fn bf16_to_f32(src: &[u16], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = f32::from_bits(bf16_to_f32_bits(*s));
    }
}

pub(crate) fn f32_to_f16(src: &[f32], dst: &mut [u16]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = f32_to_f16_bits(s.to_bits());
    }
}

pub(crate) fn f16_to_f32(src: &[u16], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = f32::from_bits(f16_to_f32_bits(*s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_spot_values() {
        assert_eq!(f32_to_bf16_bits(1.0f32.to_bits()), 0x3F80);
        // Tie 1 + 2^-8 between 1.0 (even) and 1 + 2^-7 (odd): goes to even.
        assert_eq!(f32_to_bf16_bits(0x3F80_8000), 0x3F80);
        assert_eq!(f32_to_bf16_bits(0x3F81_8000), 0x3F82);
        assert_eq!(f32_to_bf16_bits(f32::MAX.to_bits()), 0x7F80);
        assert_eq!(f32_to_bf16_bits(0x0000_0001), 0x0000);
        assert_eq!(f32_to_bf16_bits(0x8000_8001), 0x8001);
        assert_eq!(f32_to_bf16_bits(0xFF80_0001), 0xFFC0);
    }

    #[test]
    fn f16_spot_values() {
        assert_eq!(f32_to_f16_bits(1.0f32.to_bits()), 0x3C00);
        assert_eq!(f32_to_f16_bits(65504.0f32.to_bits()), 0x7BFF);
        assert_eq!(f32_to_f16_bits(65519.996f32.to_bits()), 0x7BFF);
        assert_eq!(f32_to_f16_bits(65520.0f32.to_bits()), 0x7C00);
        // Powers of two as bit patterns: exact on every platform, Miri included
        // (which perturbs `powi`).
        assert_eq!(f32_to_f16_bits(0x3380_0000), 0x0001); // 2^-24
        assert_eq!(f32_to_f16_bits(0x3300_0000), 0x0000); // 2^-25: tie to even (0)
        assert_eq!(f32_to_f16_bits(0x3340_0000), 0x0001); // 1.5 * 2^-25
        assert_eq!(f32_to_f16_bits(0x3880_0000), 0x0400); // 2^-14
        assert_eq!(f32_to_f16_bits((-0.0f32).to_bits()), 0x8000);
        assert_eq!(f32_to_f16_bits(0x7F80_0001), 0x7E00);
        assert_eq!(f16_to_f32_bits(0x0001), 0x3380_0000);
        assert_eq!(f16_to_f32_bits(0x03FF), 0x387F_C000); // 1023 * 2^-24
        assert_eq!(f16_to_f32_bits(0xFC00), f32::NEG_INFINITY.to_bits());
        assert_eq!(f16_to_f32_bits(0x7C01), 0x7FC0_2000);
    }
}
