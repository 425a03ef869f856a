//! Memory ceilings for the roofline: read bandwidth of a buffer that lives in
//! DRAM and of one that fits the L2 cache, measured with plain safe Rust.
//!
//! The loop is a wrapping `u64` sum over 16 lanes, which the compiler
//! vectorises (integer addition is associative). This crate
//! is built for baseline x86-64, so the loads are 16-byte SSE2 loads: two a
//! cycle are enough to stream from DRAM and from L2 (Zen 4's L2 delivers 32
//! bytes a cycle), but not from L1, which is why no L1 ceiling is offered.

use std::hint::black_box;
use std::sync::Barrier;
use std::time::Instant;

/// Bytes the DRAM ceiling reads in all (split among the threads): far past
/// any last-level cache of this class of CPU.
pub const DRAM_BYTES: usize = 256 << 20;
/// Bytes each thread reads for the L2 ceiling: half of Zen 4's 1 MiB L2 (and
/// of most current server cores' L2), so it stays resident.
pub const L2_BYTES_PER_THREAD: usize = 512 << 10;

/// Read bandwidth of this machine at two levels of the memory hierarchy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BandwidthCeilings {
    /// GB/s (1e9 bytes) reading a 256 MiB buffer (`DRAM_BYTES`).
    pub dram_gbps: f64,
    /// GB/s reading 512 KiB per thread (`L2_BYTES_PER_THREAD`), over and over.
    pub l2_gbps: f64,
    /// Threads that read together.
    pub threads: usize,
}

/// Measures [`BandwidthCeilings`] with `threads` threads (at least 1) reading
/// at once; about half a second.
pub fn measure_bandwidth(threads: usize) -> BandwidthCeilings {
    let threads = threads.max(1);
    BandwidthCeilings {
        dram_gbps: read_bandwidth_gbps(DRAM_BYTES / threads, threads, 8),
        l2_gbps: read_bandwidth_gbps(L2_BYTES_PER_THREAD, threads, 7),
        threads,
    }
}

/// Total GB/s of `threads` threads each summing its own `bytes_per_thread`
/// buffer: each of `reps` repetitions starts all threads together and reads
/// each buffer enough times to last a few milliseconds; each thread's best
/// repetition counts.
pub fn read_bandwidth_gbps(bytes_per_thread: usize, threads: usize, reps: usize) -> f64 {
    let threads = threads.max(1);
    let words = (bytes_per_thread / 8).max(1);
    let bytes = (words * 8) as f64;
    // Enough passes that one repetition reads ~64 MiB per thread.
    let passes = ((64usize << 20) / (words * 8)).max(1);
    let barrier = Barrier::new(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || {
                    // Allocated and first touched by the thread that reads it,
                    // so its pages are local to that thread's memory node.
                    let data: Vec<u64> = (0..words as u64).map(|i| i ^ t as u64).collect();
                    black_box(sum(&data));
                    let mut best = f64::INFINITY;
                    for _ in 0..reps.max(1) {
                        barrier.wait();
                        let start = Instant::now();
                        for _ in 0..passes {
                            // `black_box` hides that the data is unchanged,
                            // so every pass really reads it.
                            black_box(sum(black_box(&data)));
                        }
                        best = best.min(start.elapsed().as_secs_f64());
                    }
                    bytes * passes as f64 / best / 1e9
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bandwidth thread does not panic"))
            .sum()
    })
}

/// Wrapping sum with 16 independent lanes, so the vectorised loop keeps
/// several loads in flight instead of waiting on one accumulator (twice the
/// L2 rate of a plain `fold` here).
fn sum(data: &[u64]) -> u64 {
    let mut acc = [0u64; 16];
    let chunks = data.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = a.wrapping_add(x);
        }
    }
    acc.iter().chain(rest).fold(0u64, |a, &x| a.wrapping_add(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_wraps() {
        assert_eq!(sum(&[u64::MAX, 2]), 1);
        // Lengths that leave a remainder after the 16-lane chunks.
        for n in [0usize, 1, 15, 16, 17, 100] {
            let v: Vec<u64> = (1..=n as u64).collect();
            assert_eq!(sum(&v), (n * (n + 1) / 2) as u64, "n = {n}");
        }
    }

    #[test]
    fn small_bandwidth_measurement_is_positive() {
        let g = read_bandwidth_gbps(64 << 10, 2, 1);
        assert!(g.is_finite() && g > 0.0, "{g}");
    }
}
