//! Exhaustive conversion tests: every one of the 2^32 f32 bit patterns and
//! every 2^16 bf16/f16 pattern.
//!
//! The SIMD tests run the *default* dispatch (the active level), so CI runs
//! this file once per level with `MIXPREC_MAX_CPU_ISA` capping it. The oracle
//! tests (names start with `oracle_`) check the scalar reference against
//! `rustc_apfloat`, an independent IEEE-754 implementation; they do not depend
//! on the level, so the capped re-runs skip them. Run in release: in debug
//! builds these take many minutes.

use half::{bf16, f16};
use mixprec_kernels::convert::{self, bits};
use rustc_apfloat::ieee::{BFloat, Half, Single};
use rustc_apfloat::{Float, FloatConvert};
use std::sync::atomic::{AtomicU32, Ordering};

/// Number of f32 patterns per work item.
const CHUNK: u32 = 1 << 16;

/// Calls `check(first_bits, chunk_of_f32)` for every chunk of the 2^32 patterns,
/// spread over all cores. Each worker returns the first failure it saw.
fn for_all_f32_chunks(check: impl Fn(u32, &[f32]) -> Option<String> + Sync) {
    let next = AtomicU32::new(0);
    let chunks = (1u64 << 32) / CHUNK as u64;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let failures: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut buf = vec![0f32; CHUNK as usize];
                    loop {
                        let chunk = next.fetch_add(1, Ordering::Relaxed);
                        if chunk as u64 >= chunks {
                            return None;
                        }
                        let first = chunk * CHUNK;
                        for (i, x) in buf.iter_mut().enumerate() {
                            *x = f32::from_bits(first + i as u32);
                        }
                        if let Some(failure) = check(first, &buf) {
                            return Some(failure);
                        }
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .filter_map(|w| w.join().unwrap())
            .collect()
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn first_mismatch(input: &[f32], got: &[u16], want: impl Fn(u32) -> u16) -> Option<String> {
    input.iter().zip(got).find_map(|(x, &g)| {
        let w = want(x.to_bits());
        (g != w).then(|| format!("input {:#010x}: got {g:#06x}, want {w:#06x}", x.to_bits()))
    })
}

#[test]
fn f32_to_bf16_active_path_matches_scalar_on_all_patterns() {
    for_all_f32_chunks(|_, input| {
        let mut out = vec![bf16::ZERO; input.len()];
        convert::f32_to_bf16(input, &mut out);
        first_mismatch(input, bytemuck::cast_slice(&out), bits::f32_to_bf16_bits)
    });
}

#[test]
fn f32_to_f16_active_path_matches_scalar_on_all_patterns() {
    for_all_f32_chunks(|_, input| {
        let mut out = vec![f16::ZERO; input.len()];
        convert::f32_to_f16(input, &mut out);
        first_mismatch(input, bytemuck::cast_slice(&out), bits::f32_to_f16_bits)
    });
}

#[test]
fn active_path_widens_every_16_bit_pattern_like_scalar() {
    let all: Vec<u16> = (0..=u16::MAX).collect();
    let mut wide = vec![0f32; all.len()];
    convert::bf16_to_f32(bytemuck::cast_slice(&all), &mut wide);
    for (&h, w) in all.iter().zip(&wide) {
        assert_eq!(w.to_bits(), bits::bf16_to_f32_bits(h), "bf16 {h:#06x}");
    }
    convert::f16_to_f32(bytemuck::cast_slice(&all), &mut wide);
    for (&h, w) in all.iter().zip(&wide) {
        assert_eq!(w.to_bits(), bits::f16_to_f32_bits(h), "f16 {h:#06x}");
    }
}

#[test]
fn bf16_round_trip_is_identity_for_every_non_nan_pattern() {
    let all: Vec<u16> = (0..=u16::MAX).collect();
    let mut wide = vec![0f32; all.len()];
    let mut back = vec![bf16::ZERO; all.len()];
    convert::bf16_to_f32(bytemuck::cast_slice(&all), &mut wide);
    convert::f32_to_bf16(&wide, &mut back);
    for (&h, b) in all.iter().zip(&back) {
        if !bf16::from_bits(h).is_nan() {
            assert_eq!(b.to_bits(), h);
        }
    }
    let mut back16 = vec![f16::ZERO; all.len()];
    convert::f16_to_f32(bytemuck::cast_slice(&all), &mut wide);
    convert::f32_to_f16(&wide, &mut back16);
    for (&h, b) in all.iter().zip(&back16) {
        if !f16::from_bits(h).is_nan() {
            assert_eq!(b.to_bits(), h);
        }
    }
}

/// The NaN contract, stated independently of the scalar code: same sign,
/// quiet bit set, the top payload bits that fit kept.
fn nan_contract(x: u32, payload_bits: u32, exp_mask: u16) -> u16 {
    let sign = ((x >> 31) as u16) << 15;
    let quiet = 1u16 << (payload_bits - 1);
    let payload = ((x & 0x007F_FFFF) >> (23 - payload_bits)) as u16;
    sign | exp_mask | quiet | payload
}

#[test]
fn oracle_scalar_f32_to_bf16_matches_apfloat_on_all_patterns() {
    for_all_f32_chunks(|_, input| {
        first_mismatch(
            input,
            &input
                .iter()
                .map(|x| bits::f32_to_bf16_bits(x.to_bits()))
                .collect::<Vec<_>>(),
            |x| {
                if f32::from_bits(x).is_nan() {
                    return nan_contract(x, 7, 0x7F80);
                }
                let single = Single::from_bits(x as u128);
                let converted: BFloat = single.convert(&mut false).value;
                converted.to_bits() as u16
            },
        )
    });
}

#[test]
fn oracle_scalar_f32_to_f16_matches_apfloat_on_all_patterns() {
    for_all_f32_chunks(|_, input| {
        first_mismatch(
            input,
            &input
                .iter()
                .map(|x| bits::f32_to_f16_bits(x.to_bits()))
                .collect::<Vec<_>>(),
            |x| {
                if f32::from_bits(x).is_nan() {
                    return nan_contract(x, 10, 0x7C00);
                }
                let single = Single::from_bits(x as u128);
                let converted: Half = single.convert(&mut false).value;
                converted.to_bits() as u16
            },
        )
    });
}

#[test]
fn oracle_scalar_widening_matches_apfloat_on_all_16_bit_patterns() {
    for h in 0..=u16::MAX {
        let from_bf16: Single = BFloat::from_bits(h as u128).convert(&mut false).value;
        let from_f16: Single = Half::from_bits(h as u128).convert(&mut false).value;
        if bf16::from_bits(h).is_nan() {
            assert_eq!(
                bits::bf16_to_f32_bits(h),
                (h as u32) << 16,
                "bf16 NaN {h:#06x} keeps its bits"
            );
        } else {
            assert_eq!(
                bits::bf16_to_f32_bits(h) as u128,
                from_bf16.to_bits(),
                "bf16 {h:#06x}"
            );
        }
        if f16::from_bits(h).is_nan() {
            let want = ((h as u32 & 0x8000) << 16) | 0x7FC0_0000 | ((h as u32 & 0x03FF) << 13);
            assert_eq!(
                bits::f16_to_f32_bits(h),
                want,
                "f16 NaN {h:#06x} is quieted"
            );
        } else {
            assert_eq!(
                bits::f16_to_f32_bits(h) as u128,
                from_f16.to_bits(),
                "f16 {h:#06x}"
            );
        }
    }
}
