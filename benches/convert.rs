//! Conversion throughput: every available level and the `half` crate's slice
//! conversions in the same run, at n = 4096 (in cache) and n = 16 Mi (memory
//! bound, where the non-temporal stores matter). Throughput is in elements.
//!
//! `cargo bench --bench convert`; figures go in the issue notes.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use mixprec_kernels::Isa;
use mixprec_kernels::convert;

const SIZES: [usize; 2] = [4096, 16 << 20];

fn input(n: usize) -> Vec<f32> {
    // Normal values of mixed sign and magnitude: the common case for activations.
    (0..n)
        .map(|i| ((i as f32) * 0.618).sin() * 1000.0)
        .collect()
}

fn bench_narrowing(c: &mut Criterion) {
    for (name, to_bf16) in [("f32->bf16", true), ("f32->f16", false)] {
        let mut group = c.benchmark_group(name);
        for n in SIZES {
            let src = input(n);
            let mut dst = vec![0u16; n];
            group.throughput(Throughput::Elements(n as u64));
            for isa in Isa::available() {
                group.bench_with_input(BenchmarkId::new(isa.name(), n), &n, |b, _| {
                    b.iter(|| {
                        if to_bf16 {
                            convert::f32_to_bf16_at(
                                isa,
                                black_box(&src),
                                bytemuck::cast_slice_mut(&mut dst),
                            )
                        } else {
                            convert::f32_to_f16_at(
                                isa,
                                black_box(&src),
                                bytemuck::cast_slice_mut(&mut dst),
                            )
                        }
                        .unwrap()
                    })
                });
            }
            group.bench_with_input(BenchmarkId::new("half", n), &n, |b, _| {
                b.iter(|| {
                    if to_bf16 {
                        bytemuck::cast_slice_mut::<u16, bf16>(&mut dst)
                            .convert_from_f32_slice(black_box(&src))
                    } else {
                        bytemuck::cast_slice_mut::<u16, f16>(&mut dst)
                            .convert_from_f32_slice(black_box(&src))
                    }
                })
            });
        }
        group.finish();
    }
}

fn bench_widening(c: &mut Criterion) {
    for (name, from_bf16) in [("bf16->f32", true), ("f16->f32", false)] {
        let mut group = c.benchmark_group(name);
        for n in SIZES {
            let wide = input(n);
            let src_bf16: Vec<bf16> = wide.iter().map(|&x| bf16::from_f32(x)).collect();
            let src_f16: Vec<f16> = wide.iter().map(|&x| f16::from_f32(x)).collect();
            let mut dst = vec![0f32; n];
            group.throughput(Throughput::Elements(n as u64));
            for isa in Isa::available() {
                group.bench_with_input(BenchmarkId::new(isa.name(), n), &n, |b, _| {
                    b.iter(|| {
                        if from_bf16 {
                            convert::bf16_to_f32_at(isa, black_box(&src_bf16), &mut dst)
                        } else {
                            convert::f16_to_f32_at(isa, black_box(&src_f16), &mut dst)
                        }
                        .unwrap()
                    })
                });
            }
            group.bench_with_input(BenchmarkId::new("half", n), &n, |b, _| {
                b.iter(|| {
                    if from_bf16 {
                        black_box(&src_bf16).convert_to_f32_slice(&mut dst)
                    } else {
                        black_box(&src_f16).convert_to_f32_slice(&mut dst)
                    }
                })
            });
        }
        group.finish();
    }
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_narrowing, bench_widening
}
criterion_main!(benches);
