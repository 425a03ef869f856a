//! Peak arithmetic rate of this CPU, measured with register-only loops, so
//! GEMM figures can be read as a fraction of what the silicon does.
//!
//! Each loop runs 12 independent accumulator chains (enough to hide a 4-cycle
//! latency at two issues per cycle) of one instruction:
//! `vfmadd231ps zmm` (32 flops) or `vdpbf16ps zmm` (64 flops: 32 bf16 products
//! and their pairwise sums into 16 f32). `vfmadd231ph` needs AVX512-FP16.

#[cfg(target_arch = "x86_64")]
use std::time::Instant;

#[cfg(target_arch = "x86_64")]
use crate::isa::Isa;

/// Which instruction to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeakKind {
    /// `vfmadd231ps zmm` (AVX-512 F), 32 flops each.
    F32Fma,
    /// `vdpbf16ps zmm` (AVX512_BF16), 64 flops each.
    Bf16Dot,
    /// `vfmadd231ph zmm` (AVX512-FP16), 64 flops each; not implemented.
    F16Fma,
}

impl PeakKind {
    /// Short name for reports.
    pub const fn name(self) -> &'static str {
        match self {
            PeakKind::F32Fma => "vfmadd231ps zmm",
            PeakKind::Bf16Dot => "vdpbf16ps zmm",
            PeakKind::F16Fma => "vfmadd231ph zmm",
        }
    }
}

/// Iterations of the 12-instruction body per timing run.
#[cfg(target_arch = "x86_64")]
const ITERS: u64 = 20_000_000;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn loop_fma(iters: u64) {
    // SAFETY: only zmm registers and the loop counter are touched; the caller
    // checked AVX-512 F.
    unsafe {
        std::arch::asm!(
            "vxorps zmm0, zmm0, zmm0",
            "2:",
            "vfmadd231ps zmm1, zmm0, zmm0", "vfmadd231ps zmm2, zmm0, zmm0",
            "vfmadd231ps zmm3, zmm0, zmm0", "vfmadd231ps zmm4, zmm0, zmm0",
            "vfmadd231ps zmm5, zmm0, zmm0", "vfmadd231ps zmm6, zmm0, zmm0",
            "vfmadd231ps zmm7, zmm0, zmm0", "vfmadd231ps zmm8, zmm0, zmm0",
            "vfmadd231ps zmm9, zmm0, zmm0", "vfmadd231ps zmm10, zmm0, zmm0",
            "vfmadd231ps zmm11, zmm0, zmm0", "vfmadd231ps zmm12, zmm0, zmm0",
            "dec {n}",
            "jnz 2b",
            n = inout(reg) iters => _,
            out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _,
            out("zmm5") _, out("zmm6") _, out("zmm7") _, out("zmm8") _, out("zmm9") _,
            out("zmm10") _, out("zmm11") _, out("zmm12") _,
            options(nostack, nomem),
        );
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
fn loop_dpbf16(iters: u64) {
    // SAFETY: as `loop_fma`; the caller checked AVX512_BF16.
    unsafe {
        std::arch::asm!(
            "vxorps zmm0, zmm0, zmm0",
            "2:",
            "vdpbf16ps zmm1, zmm0, zmm0", "vdpbf16ps zmm2, zmm0, zmm0",
            "vdpbf16ps zmm3, zmm0, zmm0", "vdpbf16ps zmm4, zmm0, zmm0",
            "vdpbf16ps zmm5, zmm0, zmm0", "vdpbf16ps zmm6, zmm0, zmm0",
            "vdpbf16ps zmm7, zmm0, zmm0", "vdpbf16ps zmm8, zmm0, zmm0",
            "vdpbf16ps zmm9, zmm0, zmm0", "vdpbf16ps zmm10, zmm0, zmm0",
            "vdpbf16ps zmm11, zmm0, zmm0", "vdpbf16ps zmm12, zmm0, zmm0",
            "dec {n}",
            "jnz 2b",
            n = inout(reg) iters => _,
            out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _,
            out("zmm5") _, out("zmm6") _, out("zmm7") _, out("zmm8") _, out("zmm9") _,
            out("zmm10") _, out("zmm11") _, out("zmm12") _,
            options(nostack, nomem),
        );
    }
}

/// GFLOP/s of `kind` on `threads` threads together (best of 3 runs of about
/// 0.1 s), or `None` where this CPU (or this build) cannot run it.
pub fn peak_gflops(kind: PeakKind, threads: usize) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        let (run, flops): (fn(u64), f64) = match kind {
            PeakKind::F32Fma if Isa::Avx512Core.is_available() => (
                // SAFETY: AVX-512 F checked just above.
                |n| unsafe { loop_fma(n) },
                32.0,
            ),
            PeakKind::Bf16Dot if Isa::Avx512CoreBf16.is_available() => (
                // SAFETY: AVX512_BF16 checked just above.
                |n| unsafe { loop_dpbf16(n) },
                64.0,
            ),
            _ => return None,
        };
        let threads = threads.max(1);
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            let start = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..threads {
                    s.spawn(|| run(ITERS));
                }
            });
            best = best.min(start.elapsed().as_secs_f64());
        }
        Some(threads as f64 * ITERS as f64 * 12.0 * flops / best / 1e9)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (kind, threads);
        None
    }
}
