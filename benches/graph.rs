//! Op-graph inference latency: an MLP (784-512-512-10, batch 64) and a
//! transformer encoder block (d 256, 4 heads, FF 1024, batch 4 x seq 64) under
//! all-f32, all-bf16 and all-f16 plans, and a conv net (three 3x3 64->64
//! pad-1 Conv + Relu on 8x64x56x56, the benches/onnx_vs_ort.py case), on the
//! active ISA level with the default thread count. Also prints one profiled run's per-op-type split.

use std::collections::BTreeMap;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use mixprec::graph::{ConvAttrs, DType, Dim, Graph, GraphBuilder, PrecisionPlan, Tensor};
use mixprec::kernels::FloatType;

struct Rng(u64);
impl Rng {
    fn tensor(&mut self, shape: &[usize], scale: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                ((self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect();
        Tensor::from_f32(shape, v).unwrap()
    }
}

fn mlp(rng: &mut Rng) -> Graph {
    let mut g = GraphBuilder::new();
    let x = g.input("x", &[Dim::sym("batch"), 784.into()], DType::F32);
    let mut h = x;
    for (i, (din, dout)) in [(784, 512), (512, 512), (512, 10)].into_iter().enumerate() {
        let w = rng.tensor(&[dout, din], 0.05);
        let b = rng.tensor(&[dout], 0.05);
        h = g.linear(&format!("fc{i}"), h, &w, Some(&b)).unwrap();
        if i < 2 {
            h = g.relu(&format!("act{i}"), h).unwrap();
        }
    }
    g.output(h);
    g.finish().unwrap()
}

fn block(rng: &mut Rng, d: usize, heads: usize, ff: usize) -> Graph {
    let dh = d / heads;
    let mut g = GraphBuilder::new();
    let x = g.input(
        "x",
        &[Dim::sym("batch"), Dim::sym("seq"), d.into()],
        DType::F32,
    );
    let ones = Tensor::from_f32(&[d], vec![1.0; d]).unwrap();
    let zeros = Tensor::from_f32(&[d], vec![0.0; d]).unwrap();
    let h = g.layer_norm("ln1", x, &ones, Some(&zeros), 1e-5).unwrap();
    let mut proj = |g: &mut GraphBuilder, name: &str, x, din: usize, dout: usize| {
        let w = g.initializer(&format!("{name}.w"), rng.tensor(&[din, dout], 0.1));
        let b = g.initializer(&format!("{name}.b"), rng.tensor(&[dout], 0.1));
        let y = g.matmul(name, x, w).unwrap();
        g.add(&format!("{name}.add"), y, b).unwrap()
    };
    let q = proj(&mut g, "q", h, d, d);
    let k = proj(&mut g, "k", h, d, d);
    let v = proj(&mut g, "v", h, d, d);
    let split = [0, 0, heads as i64, dh as i64];
    let q = g.reshape("q.split", q, &split).unwrap();
    let q = g.transpose("q.t", q, &[0, 2, 1, 3]).unwrap();
    let k = g.reshape("k.split", k, &split).unwrap();
    let k = g.transpose("k.t", k, &[0, 2, 3, 1]).unwrap();
    let v = g.reshape("v.split", v, &split).unwrap();
    let v = g.transpose("v.t", v, &[0, 2, 1, 3]).unwrap();
    let s = g.matmul("scores", q, k).unwrap();
    let scale = g.initializer("scale", Tensor::scalar_f32(1.0 / (dh as f32).sqrt()));
    let s = g.mul("scaled", s, scale).unwrap();
    let p = g.softmax("attn", s, -1).unwrap();
    let c = g.matmul("context", p, v).unwrap();
    let c = g.transpose("context.t", c, &[0, 2, 1, 3]).unwrap();
    let c = g.reshape("context.merge", c, &[0, 0, -1]).unwrap();
    let o = proj(&mut g, "o", c, d, d);
    let x1 = g.add("residual1", x, o).unwrap();
    let h2 = g.layer_norm("ln2", x1, &ones, Some(&zeros), 1e-5).unwrap();
    let f = proj(&mut g, "ff1", h2, d, ff);
    let f = g.gelu("gelu", f).unwrap();
    let f = proj(&mut g, "ff2", f, ff, d);
    let y = g.add("residual2", x1, f).unwrap();
    g.output(y);
    g.finish().unwrap()
}

fn convnet(rng: &mut Rng, ch: usize, layers: usize) -> Graph {
    let mut g = GraphBuilder::new();
    let x = g.input(
        "x",
        &[Dim::sym("batch"), ch.into(), 56.into(), 56.into()],
        DType::F32,
    );
    let mut h = x;
    for i in 0..layers {
        let w = rng.tensor(&[ch, ch, 3, 3], 0.05);
        let b = rng.tensor(&[ch], 0.05);
        let attrs = ConvAttrs {
            pads: vec![1, 1, 1, 1],
            ..Default::default()
        };
        h = g.conv(&format!("conv{i}"), h, &w, Some(&b), attrs).unwrap();
        h = g.relu(&format!("relu{i}"), h).unwrap();
    }
    g.output(h);
    g.finish().unwrap()
}

fn bench_graph(c: &mut Criterion) {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let cases = [
        (
            "mlp_784_512_512_10_b64",
            mlp(&mut rng),
            rng.tensor(&[64, 784], 1.0),
        ),
        (
            "encoder_d256_h4_ff1024_b4_s64",
            block(&mut rng, 256, 4, 1024),
            rng.tensor(&[4, 64, 256], 1.0),
        ),
        (
            "convnet_3x3_64_b8_56x56",
            convnet(&mut rng, 64, 3),
            rng.tensor(&[8, 64, 56, 56], 1.0),
        ),
    ];
    let mut group = c.benchmark_group("graph");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    for (name, graph, x) in &cases {
        for ty in [FloatType::F32, FloatType::Bf16, FloatType::F16] {
            let model = graph.compile(&PrecisionPlan::all(graph, ty)).unwrap();
            let (_, prof) = model.run_profiled(&[("x", x)]).unwrap();
            let mut by_type: BTreeMap<&str, f64> = BTreeMap::new();
            for e in &prof.entries {
                *by_type.entry(e.op_type).or_default() += e.seconds * 1e6;
            }
            let split: Vec<String> = by_type
                .iter()
                .map(|(k, v)| format!("{k} {v:.0}us"))
                .collect();
            eprintln!("{name} {}: {}", ty.name(), split.join(", "));
            group.bench_with_input(BenchmarkId::new(*name, ty.name()), x, |b, x| {
                b.iter(|| model.run(&[("x", x)]).unwrap());
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_graph);
criterion_main!(benches);
