//! Elementwise and normalization throughput: GELU (erf), exp, add, softmax and
//! layer_norm at 4 Ki and 1 Mi elements, f32 vs bf16 storage (input and output),
//! scalar level vs the active level. Reported as elements per second.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use half::bf16;
use mixprec_kernels::elementwise::{BinaryOp, UnaryOp, binary_at, unary_at};
use mixprec_kernels::norm::{layer_norm_at, softmax_at};
use mixprec_kernels::{FloatSlice, FloatSliceMut, Isa, active_isa};

const COLS: usize = 4096;

enum Data {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
}

impl Data {
    fn new(bf: bool, v: &[f32]) -> Data {
        if bf {
            Data::Bf16(v.iter().map(|&x| bf16::from_f32(x)).collect())
        } else {
            Data::F32(v.to_vec())
        }
    }
    fn s(&self) -> FloatSlice<'_> {
        match self {
            Data::F32(v) => FloatSlice::F32(v),
            Data::Bf16(v) => FloatSlice::Bf16(v),
        }
    }
    fn m(&mut self) -> FloatSliceMut<'_> {
        match self {
            Data::F32(v) => FloatSliceMut::F32(v),
            Data::Bf16(v) => FloatSliceMut::Bf16(v),
        }
    }
}

fn bench(c: &mut Criterion) {
    let best = active_isa();
    let levels: Vec<Isa> = if best == Isa::Scalar {
        vec![Isa::Scalar]
    } else {
        vec![Isa::Scalar, best]
    };
    let gamma = vec![1.1f32; COLS];
    let beta = vec![0.1f32; COLS];
    for n in [4096usize, 1 << 20] {
        let src: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 2000) as f32 * 0.004 - 4.0)
            .collect();
        let mut g = c.benchmark_group(format!("elementwise/n={n}"));
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1))
            .throughput(Throughput::Elements(n as u64));
        for bf in [false, true] {
            let dt = if bf { "bf16" } else { "f32" };
            let (a, b) = (Data::new(bf, &src), Data::new(bf, &src));
            let mut y = Data::new(bf, &src);
            for &isa in &levels {
                let id = |op: &str| BenchmarkId::new(op, format!("{dt}/{isa}"));
                g.bench_function(id("gelu_erf"), |bch| {
                    bch.iter(|| unary_at(isa, UnaryOp::GeluErf, a.s(), y.m()).unwrap())
                });
                g.bench_function(id("exp"), |bch| {
                    bch.iter(|| unary_at(isa, UnaryOp::Exp, a.s(), y.m()).unwrap())
                });
                g.bench_function(id("add"), |bch| {
                    bch.iter(|| binary_at(isa, BinaryOp::Add, a.s(), b.s(), y.m()).unwrap())
                });
                g.bench_function(id("softmax"), |bch| {
                    bch.iter(|| softmax_at(isa, a.s(), y.m(), COLS, false).unwrap())
                });
                g.bench_function(id("layer_norm"), |bch| {
                    bch.iter(|| {
                        layer_norm_at(isa, a.s(), y.m(), COLS, &gamma, Some(&beta), 1e-5).unwrap()
                    })
                });
            }
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
