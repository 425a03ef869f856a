//! Elementwise and normalization throughput, in elements per second.
//!
//! * `add` (two slices) and `add_splat` (slice + scalar) at n = 2 Ki (f32: 24 KiB
//!   in all, in a 32 KiB L1d), 4 Ki (48 KiB, from L2) and 4 Mi (memory bound),
//!   f32 and bf16 storage (inputs and output);
//! * `exp`, `gelu_erf`, `gelu_tanh` at 4 Ki (compute bound);
//! * `softmax`, `layer_norm`, `rms_norm`, `reduce_sum` on 64 rows of 768.
//!
//! Buffers are 64-byte aligned. Levels: every distinct implementation among
//! `avx2` and the active level (`MIXPREC_MAX_CPU_ISA=avx2` leaves only avx2),
//! plus `scalar` up to n = 4 Ki.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use half::bf16;
use mixprec_kernels::elementwise::{
    BinaryOp, UnaryOp, binary_at, binary_scalar_rhs_at, implementation, unary_at,
};
use mixprec_kernels::norm::{ReduceOp, layer_norm_at, reduce_rows_at, rms_norm_at, softmax_at};
use mixprec_kernels::{FloatSlice, FloatSliceMut, Isa, active_isa};

/// Row length of the normalization cases (BERT-base hidden size).
const COLS: usize = 768;
const ROWS: usize = 64;
const L1: usize = 2048;
const SMALL: usize = 4096;
const LARGE: usize = 4 << 20;

/// A buffer starting on a 64-byte boundary, as the graph's tensors do (a
/// plain `Vec` start is only 16-byte aligned, which splits every other
/// vector access across two cache lines).
enum Data {
    F32(Vec<f32>, usize),
    Bf16(Vec<bf16>, usize),
}

fn aligned<T: Copy>(v: Vec<T>, fill: T) -> (Vec<T>, usize) {
    let n = v.len();
    let mut buf = vec![fill; n + 64];
    let off = buf.as_ptr().align_offset(64);
    buf[off..off + n].copy_from_slice(&v);
    (buf, off)
}

impl Data {
    fn new(bf: bool, v: &[f32]) -> Data {
        if bf {
            let (b, o) = aligned(v.iter().map(|&x| bf16::from_f32(x)).collect(), bf16::ZERO);
            Data::Bf16(b, o)
        } else {
            let (b, o) = aligned(v.to_vec(), 0.0);
            Data::F32(b, o)
        }
    }
    fn s(&self) -> FloatSlice<'_> {
        match self {
            Data::F32(v, o) => FloatSlice::F32(&v[*o..v.len() - 64 + o]),
            Data::Bf16(v, o) => FloatSlice::Bf16(&v[*o..v.len() - 64 + o]),
        }
    }
    fn m(&mut self) -> FloatSliceMut<'_> {
        match self {
            Data::F32(v, o) => {
                let end = v.len() - 64 + *o;
                FloatSliceMut::F32(&mut v[*o..end])
            }
            Data::Bf16(v, o) => {
                let end = v.len() - 64 + *o;
                FloatSliceMut::Bf16(&mut v[*o..end])
            }
        }
    }
}

fn values(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919) % 2000) as f32 * 0.004 - 4.0)
        .collect()
}

/// Levels to compare at `n` elements.
fn levels(n: usize) -> Vec<Isa> {
    let mut v = Vec::new();
    if n <= SMALL {
        v.push(Isa::Scalar);
    }
    for isa in [Isa::Avx2, active_isa()] {
        if isa.is_available()
            && isa != Isa::Scalar
            && !v.iter().any(|&l| implementation(l) == implementation(isa))
        {
            v.push(isa);
        }
    }
    v
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("ew");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    for n in [L1, SMALL, LARGE] {
        let src = values(n);
        g.throughput(Throughput::Elements(n as u64));
        for bf in [false, true] {
            let dt = if bf { "bf16" } else { "f32" };
            let (a, b) = (Data::new(bf, &src), Data::new(bf, &src));
            let mut y = Data::new(bf, &src);
            for isa in levels(n) {
                let id = |op: &str| BenchmarkId::new(op, format!("{dt}/n={n}/{isa}"));
                g.bench_function(id("add"), |bch| {
                    bch.iter(|| binary_at(isa, BinaryOp::Add, a.s(), b.s(), y.m()).unwrap())
                });
                g.bench_function(id("add_splat"), |bch| {
                    bch.iter(|| {
                        binary_scalar_rhs_at(isa, BinaryOp::Add, a.s(), 0.5, y.m()).unwrap()
                    })
                });
                if n != SMALL {
                    continue;
                }
                for (name, op) in [
                    ("exp", UnaryOp::Exp),
                    ("gelu_erf", UnaryOp::GeluErf),
                    ("gelu_tanh", UnaryOp::GeluTanh),
                ] {
                    g.bench_function(id(name), |bch| {
                        bch.iter(|| unary_at(isa, op, a.s(), y.m()).unwrap())
                    });
                }
            }
        }
    }

    let n = ROWS * COLS;
    let src = values(n);
    let gamma = vec![1.1f32; COLS];
    let beta = vec![0.1f32; COLS];
    g.throughput(Throughput::Elements(n as u64));
    for bf in [false, true] {
        let dt = if bf { "bf16" } else { "f32" };
        let a = Data::new(bf, &src);
        let mut y = Data::new(bf, &src);
        let mut sums = Data::new(bf, &[0.0; ROWS]);
        for isa in levels(SMALL) {
            let id = |op: &str| BenchmarkId::new(op, format!("{dt}/{ROWS}x{COLS}/{isa}"));
            g.bench_function(id("softmax"), |bch| {
                bch.iter(|| softmax_at(isa, a.s(), y.m(), COLS, false).unwrap())
            });
            g.bench_function(id("layer_norm"), |bch| {
                bch.iter(|| {
                    layer_norm_at(isa, a.s(), y.m(), COLS, &gamma, Some(&beta), 1e-5).unwrap()
                })
            });
            g.bench_function(id("rms_norm"), |bch| {
                bch.iter(|| rms_norm_at(isa, a.s(), y.m(), COLS, &gamma, 1e-5).unwrap())
            });
            g.bench_function(id("reduce_sum"), |bch| {
                bch.iter(|| reduce_rows_at(isa, ReduceOp::Sum, a.s(), COLS, sums.m()).unwrap())
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
