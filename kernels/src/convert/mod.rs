//! Bit-exact conversions between f32 and bf16 / IEEE binary16 (f16).
//!
//! # Numerics (identical on every dispatch path)
//! * f32 -> bf16 and f32 -> f16 round to nearest, ties to even. Subnormal
//!   inputs and outputs are kept (never flushed), the sign is kept (`-0.0`
//!   stays `-0.0`), and values past the largest finite value round to
//!   infinity exactly when round-to-nearest-even says so.
//! * A NaN becomes a quiet NaN with the same sign that keeps the top payload
//!   bits: for bf16 `(x >> 16) | 0x0040`, for f16
//!   `sign | 0x7E00 | (payload >> 13)`.
//! * bf16 -> f32 is exact bit for bit (a 16-bit shift), NaN payloads included.
//! * f16 -> f32 is exact for every non-NaN value; a NaN becomes a quiet NaN
//!   with the same sign and payload (F16C's behaviour, adopted everywhere).
//!
//! The scalar functions in [`bits`] are the definition; the exhaustive tests
//! check every SIMD path against them over all 2^32 f32 patterns, and check
//! them against `rustc_apfloat`'s IEEE implementation.
//!
//! # Paths
//! | level | f32 -> bf16 | f32 <-> f16 |
//! |---|---|---|
//! | `scalar` | integer RNE | integer RNE / exact widening |
//! | `avx2` | 8-lane integer RNE | F16C `vcvtps2ph` / `vcvtph2ps` |
//! | `avx512_core` | 16-lane integer RNE | 16-lane `vcvtps2ph` / `vcvtph2ps` |
//! | `avx512_core_bf16`, `avx512_core_fp16` | `vcvtne2ps2bf16` + subnormal patch | as `avx512_core` |
//!
//! At `avx512_core_fp16` the f16 conversions stay on `vcvtps2ph`: AVX512-FP16's
//! `vcvtps2phx` does the same work at the same width, and we had no
//! AVX512-FP16 machine to measure a gain on.
//!
//! At the AVX-512 levels, slices of at least [`STREAM_THRESHOLD_ELEMS`]
//! elements are written with non-temporal stores, which skip the
//! read-for-ownership of the destination once it no longer fits in cache.
//!
//! # Slices of `u16`
//! `half::bf16` and `half::f16` are `bytemuck::Pod`, so raw bit buffers convert
//! without copying:
//! ```
//! use half::bf16;
//! let src = [1.0f32, -2.5, 3.0e-39];
//! let mut bits = [0u16; 3];
//! mixprec_kernels::convert::f32_to_bf16(&src, bytemuck::cast_slice_mut::<u16, bf16>(&mut bits));
//! assert_eq!(bits[0], 0x3F80);
//! ```

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
pub(crate) use avx512::bf16_x32;
mod scalar;

use half::{bf16, f16};

use crate::isa::{Isa, IsaError, active_isa};

/// The scalar reference conversions on single values' raw bits.
pub mod bits {
    pub use super::scalar::{bf16_to_f32_bits, f16_to_f32_bits, f32_to_bf16_bits, f32_to_f16_bits};
}

/// Slices at least this long (in elements) are written with non-temporal
/// stores on the AVX-512 paths. 1 Mi elements is 4 MiB of f32, past the L2 of
/// the CPUs these paths target, where streaming measured faster.
pub const STREAM_THRESHOLD_ELEMS: usize = 1 << 20;

/// One of the four conversion kernels, for reporting and benchmarking.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Conversion {
    /// f32 -> bf16.
    F32ToBf16,
    /// bf16 -> f32.
    Bf16ToF32,
    /// f32 -> f16.
    F32ToF16,
    /// f16 -> f32.
    F16ToF32,
}

impl Conversion {
    /// All four conversions.
    pub const ALL: [Conversion; 4] = [
        Conversion::F32ToBf16,
        Conversion::Bf16ToF32,
        Conversion::F32ToF16,
        Conversion::F16ToF32,
    ];

    /// Short name such as `f32->bf16`.
    pub const fn name(self) -> &'static str {
        match self {
            Conversion::F32ToBf16 => "f32->bf16",
            Conversion::Bf16ToF32 => "bf16->f32",
            Conversion::F32ToF16 => "f32->f16",
            Conversion::F16ToF32 => "f16->f32",
        }
    }

    /// What runs for this conversion at `isa`.
    pub const fn implementation(self, isa: Isa) -> &'static str {
        use Conversion::*;
        match (isa, self) {
            (Isa::Scalar, F32ToBf16 | F32ToF16) => "scalar integer RNE",
            (Isa::Scalar, Bf16ToF32 | F16ToF32) => "scalar exact widening",
            (Isa::Avx2, F32ToBf16) => "avx2 8-lane integer RNE",
            (Isa::Avx2, Bf16ToF32) => "avx2 vpmovzxwd + shift",
            (Isa::Avx2, F32ToF16) => "f16c vcvtps2ph ymm",
            (Isa::Avx2, F16ToF32) => "f16c vcvtph2ps ymm",
            (Isa::Avx512Core, F32ToBf16) => "avx512 16-lane integer RNE",
            (Isa::Avx512CoreBf16 | Isa::Avx512CoreFp16, F32ToBf16) => {
                "vcvtne2ps2bf16 zmm + integer-RNE subnormal patch"
            }
            (_, Bf16ToF32) => "avx512 vpmovzxwd + shift",
            (_, F32ToF16) => "avx512 vcvtps2ph zmm",
            (_, F16ToF32) => "avx512 vcvtph2ps zmm",
        }
    }
}

fn check_lengths(src: usize, dst: usize) {
    assert_eq!(
        src, dst,
        "mixprec conversion: source has {src} elements but destination has {dst}"
    );
}

macro_rules! dispatch {
    ($isa:expr, $src:expr, $dst:expr, $scalar:path, $avx2:path, $avx512:path, $native:path) => {{
        let (isa, src, dst) = ($isa, $src, $dst);
        match isa {
            Isa::Scalar => $scalar(src, dst),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: callers pass either `active_isa()` or a level that passed
            // `Isa::require`, so the CPU supports `isa` and every feature the
            // called function enables (this arm and the two below).
            Isa::Avx2 => unsafe { $avx2(src, dst) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as for Avx2.
            Isa::Avx512Core => unsafe { $avx512(src, dst) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as for Avx2.
            Isa::Avx512CoreBf16 | Isa::Avx512CoreFp16 => unsafe { $native(src, dst) },
            #[cfg(not(target_arch = "x86_64"))]
            _ => unreachable!("no level above scalar is ever detected on this target"),
        }
    }};
}

fn run_f32_to_bf16(isa: Isa, src: &[f32], dst: &mut [bf16]) {
    check_lengths(src.len(), dst.len());
    let dst: &mut [u16] = bytemuck::cast_slice_mut(dst);
    dispatch!(
        isa,
        src,
        dst,
        scalar::f32_to_bf16,
        avx2::f32_to_bf16,
        avx512::f32_to_bf16,
        avx512::f32_to_bf16_native
    )
}

fn run_bf16_to_f32(isa: Isa, src: &[bf16], dst: &mut [f32]) {
    check_lengths(src.len(), dst.len());
    let src: &[u16] = bytemuck::cast_slice(src);
    dispatch!(
        isa,
        src,
        dst,
        scalar::bf16_to_f32,
        avx2::bf16_to_f32,
        avx512::bf16_to_f32,
        avx512::bf16_to_f32
    )
}

fn run_f32_to_f16(isa: Isa, src: &[f32], dst: &mut [f16]) {
    check_lengths(src.len(), dst.len());
    let dst: &mut [u16] = bytemuck::cast_slice_mut(dst);
    dispatch!(
        isa,
        src,
        dst,
        scalar::f32_to_f16,
        avx2::f32_to_f16,
        avx512::f32_to_f16,
        avx512::f32_to_f16
    )
}

fn run_f16_to_f32(isa: Isa, src: &[f16], dst: &mut [f32]) {
    check_lengths(src.len(), dst.len());
    let src: &[u16] = bytemuck::cast_slice(src);
    dispatch!(
        isa,
        src,
        dst,
        scalar::f16_to_f32,
        avx2::f16_to_f32,
        avx512::f16_to_f32,
        avx512::f16_to_f32
    )
}

/// Converts `src` to bf16 into `dst` on the active ISA level.
///
/// # Panics
/// If `src.len() != dst.len()` (as `copy_from_slice` does): a programmer error.
pub fn f32_to_bf16(src: &[f32], dst: &mut [bf16]) {
    run_f32_to_bf16(active_isa(), src, dst)
}

/// Widens bf16 `src` into f32 `dst` on the active ISA level.
///
/// # Panics
/// If `src.len() != dst.len()`.
pub fn bf16_to_f32(src: &[bf16], dst: &mut [f32]) {
    run_bf16_to_f32(active_isa(), src, dst)
}

/// Converts `src` to f16 into `dst` on the active ISA level.
///
/// # Panics
/// If `src.len() != dst.len()`.
pub fn f32_to_f16(src: &[f32], dst: &mut [f16]) {
    run_f32_to_f16(active_isa(), src, dst)
}

/// Widens f16 `src` into f32 `dst` on the active ISA level.
///
/// # Panics
/// If `src.len() != dst.len()`.
pub fn f16_to_f32(src: &[f16], dst: &mut [f32]) {
    run_f16_to_f32(active_isa(), src, dst)
}

/// [`f32_to_bf16`] at an explicit level; errors if this CPU lacks it.
///
/// # Panics
/// If `src.len() != dst.len()`.
pub fn f32_to_bf16_at(isa: Isa, src: &[f32], dst: &mut [bf16]) -> Result<(), IsaError> {
    run_f32_to_bf16(isa.require()?, src, dst);
    Ok(())
}

/// [`bf16_to_f32`] at an explicit level; errors if this CPU lacks it.
///
/// # Panics
/// If `src.len() != dst.len()`.
pub fn bf16_to_f32_at(isa: Isa, src: &[bf16], dst: &mut [f32]) -> Result<(), IsaError> {
    run_bf16_to_f32(isa.require()?, src, dst);
    Ok(())
}

/// [`f32_to_f16`] at an explicit level; errors if this CPU lacks it.
///
/// # Panics
/// If `src.len() != dst.len()`.
pub fn f32_to_f16_at(isa: Isa, src: &[f32], dst: &mut [f16]) -> Result<(), IsaError> {
    run_f32_to_f16(isa.require()?, src, dst);
    Ok(())
}

/// [`f16_to_f32`] at an explicit level; errors if this CPU lacks it.
///
/// # Panics
/// If `src.len() != dst.len()`.
pub fn f16_to_f32_at(isa: Isa, src: &[f16], dst: &mut [f32]) -> Result<(), IsaError> {
    run_f16_to_f32(isa.require()?, src, dst);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "source has 3 elements but destination has 2")]
    fn length_mismatch_panics_clearly() {
        f32_to_bf16(&[1.0; 3], &mut [bf16::ZERO; 2]);
    }

    #[test]
    fn explicit_level_above_detection_is_an_error() {
        for isa in Isa::ALL {
            let r = f32_to_f16_at(isa, &[1.0], &mut [f16::ZERO]);
            assert_eq!(r.is_ok(), isa.is_available(), "{isa}");
        }
    }
}
