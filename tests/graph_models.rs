//! Whole models built with the builder: an MLP and a transformer encoder
//! block in f32 (against f64 references), bf16 and f16 plans (against f32),
//! cast insertion, determinism across thread counts, profiling, plans.

mod graph_common;

use std::collections::HashMap;

use graph_common::*;
use mixprec::graph::{
    Binary, CompileOptions, CompiledModel, DType, Dim, Graph, GraphBuilder, GraphError, Op,
    PrecisionPlan, Tensor, Unary,
};
use mixprec::kernels::FloatType;
use mixprec::kernels::gemm;

// Tolerances on max |plan - f32| / max |f32| over a model's output. bf16 keeps
// 8 significant bits (unit roundoff 2^-9 ~ 0.002), f16 11 (2^-12 ~ 0.00024);
// the models below round a value about ten times on its way to the output;
// measured errors were about a third of these bounds.
const TOL_BF16: f64 = 2e-2;
const TOL_F16: f64 = 3e-3;

struct Mlp {
    graph: Graph,
    w1: Vec<f64>,
    b1: Vec<f64>,
    w2: Vec<f64>,
    b2: Vec<f64>,
}

const D_IN: usize = 24;
const D_H: usize = 40;
const D_OUT: usize = 10;

fn mlp(seed: u64) -> Mlp {
    let mut rng = Rng::new(seed);
    let w1 = rng.tensor(&[D_H, D_IN], -0.3, 0.3);
    let b1 = rng.tensor(&[D_H], -0.1, 0.1);
    let w2 = rng.tensor(&[D_OUT, D_H], -0.3, 0.3);
    let b2 = rng.tensor(&[D_OUT], -0.1, 0.1);
    let mut g = GraphBuilder::new();
    let x = g.input("x", &[Dim::sym("batch"), D_IN.into()], DType::F32);
    let h = g.linear("fc1", x, &w1, Some(&b1)).unwrap();
    let h = g.relu("act1", h).unwrap();
    let y = g.linear("fc2", h, &w2, Some(&b2)).unwrap();
    g.output(y);
    Mlp {
        graph: g.finish().unwrap(),
        w1: f64s(&w1),
        b1: f64s(&b1),
        w2: f64s(&w2),
        b2: f64s(&b2),
    }
}

fn mlp_ref(m: &Mlp, x: &[f64], batch: usize) -> Vec<f64> {
    let mut out = Vec::new();
    for r in 0..batch {
        let xr = &x[r * D_IN..(r + 1) * D_IN];
        let h: Vec<f64> = (0..D_H)
            .map(|j| {
                (m.b1[j] + (0..D_IN).map(|i| xr[i] * m.w1[j * D_IN + i]).sum::<f64>()).max(0.0)
            })
            .collect();
        out.extend(
            (0..D_OUT).map(|j| m.b2[j] + (0..D_H).map(|i| h[i] * m.w2[j * D_H + i]).sum::<f64>()),
        );
    }
    out
}

fn run1(model: &CompiledModel, name: &str, x: &Tensor) -> Tensor {
    let mut out = model.run(&[(name, x)]).unwrap();
    assert_eq!(out.len(), 1);
    out.drain().next().unwrap().1
}

#[test]
fn mlp_f32_matches_reference_and_low_precision_plans_match_f32() {
    let m = mlp(11);
    let mut rng = Rng::new(12);
    for batch in [1, 7, 33] {
        let x = rng.tensor(&[batch, D_IN], -2.0, 2.0);
        let f32m = m
            .graph
            .compile(&PrecisionPlan::all(&m.graph, FloatType::F32))
            .unwrap();
        let y32 = run1(&f32m, "x", &x);
        assert_eq!(y32.shape(), &[batch, D_OUT]);
        assert_eq!(y32.dtype(), DType::F32);
        assert_close(
            &y32.to_f32_vec(),
            &mlp_ref(&m, &f64s(&x), batch),
            1e-5,
            1e-5,
            "mlp f32",
        );
        for (ty, tol) in [(FloatType::Bf16, TOL_BF16), (FloatType::F16, TOL_F16)] {
            let model = m.graph.compile(&PrecisionPlan::all(&m.graph, ty)).unwrap();
            let y = run1(&model, "x", &x);
            assert_eq!(y.dtype(), DType::F32, "outputs stay f32");
            let err = rel_max_err(&y.to_f32_vec(), &y32.to_f32_vec());
            assert!(err <= tol, "{ty:?}: rel err {err}");
            // It really ran in low precision: not bit-identical to f32.
            assert_ne!(y.to_f32_vec(), y32.to_f32_vec(), "{ty:?}");
        }
    }
}

#[test]
fn low_precision_node_rounds_its_inputs_and_output() {
    // One Gemm in bf16: the result must equal an f64 product of the
    // bf16-rounded inputs, rounded once to bf16 (f32 accumulation is exact
    // enough here: small integers times powers of two).
    let mut rng = Rng::new(13);
    let w = rng.tensor(&[5, 6], -1.0, 1.0);
    let mut g = GraphBuilder::new();
    let x = g.input("x", &[3.into(), 6.into()], DType::F32);
    let y = g.linear("fc", x, &w, None).unwrap();
    g.output(y);
    let graph = g.finish().unwrap();
    let xt = rng.tensor(&[3, 6], -1.0, 1.0);
    let model = graph
        .compile(&PrecisionPlan::all(&graph, FloatType::Bf16))
        .unwrap();
    let got = run1(&model, "x", &xt).to_f32_vec();
    let r = |v: f32| half::bf16::from_f32(v).to_f32() as f64;
    let (xv, wv) = (xt.to_f32_vec(), w.to_f32_vec());
    for i in 0..3 {
        for j in 0..5 {
            let exact: f64 = (0..6).map(|k| r(xv[i * 6 + k]) * r(wv[j * 6 + k])).sum();
            let want = half::bf16::from_f64(exact).to_f32();
            // f32 accumulation may differ from the f64 sum in the last f32
            // bits, which can flip a bf16 rounding: allow one bf16 ulp.
            let ulp = (want.abs() * 2f32.powi(-7)).max(1e-30);
            assert!(
                (got[i * 5 + j] - want).abs() <= ulp,
                "({i},{j}): {} vs {want}",
                got[i * 5 + j]
            );
            assert_eq!(
                half::bf16::from_f32(got[i * 5 + j]).to_f32(),
                got[i * 5 + j],
                "output is bf16-representable"
            );
        }
    }
}

struct Block {
    graph: Graph,
    params: HashMap<&'static str, (Vec<f64>, Vec<usize>)>,
}

const D: usize = 16;
const HEADS: usize = 2;
const DH: usize = D / HEADS;
const FF: usize = 32;

fn encoder_block(seed: u64) -> Block {
    let mut rng = Rng::new(seed);
    let mut params = HashMap::new();
    let mut t = |name: &'static str, shape: &[usize], lo: f32, hi: f32| {
        let t = rng.tensor(shape, lo, hi);
        params.insert(name, (f64s(&t), shape.to_vec()));
        t
    };
    let (g1, b1) = (t("ln1.g", &[D], 0.8, 1.2), t("ln1.b", &[D], -0.1, 0.1));
    let wq = t("wq", &[D, D], -0.4, 0.4);
    let wk = t("wk", &[D, D], -0.4, 0.4);
    let wv = t("wv", &[D, D], -0.4, 0.4);
    let wo = t("wo", &[D, D], -0.4, 0.4);
    let bq = t("bq", &[D], -0.1, 0.1);
    let bo = t("bo", &[D], -0.1, 0.1);
    let (g2, b2) = (t("ln2.g", &[D], 0.8, 1.2), t("ln2.b", &[D], -0.1, 0.1));
    let w1 = t("w1", &[D, FF], -0.4, 0.4);
    let bf1 = t("b1", &[FF], -0.1, 0.1);
    let w2 = t("w2", &[FF, D], -0.3, 0.3);
    let bf2 = t("b2", &[D], -0.1, 0.1);

    let mut g = GraphBuilder::new();
    let x = g.input(
        "x",
        &[Dim::sym("batch"), Dim::sym("seq"), D.into()],
        DType::F32,
    );
    let h = g.layer_norm("ln1", x, &g1, Some(&b1), 1e-5).unwrap();
    let proj = |g: &mut GraphBuilder, name: &str, w: &Tensor, b: Option<&Tensor>, x| {
        let wid = g.initializer(&format!("{name}.w"), w.clone());
        let y = g.matmul(name, x, wid).unwrap();
        match b {
            Some(b) => {
                let bid = g.initializer(&format!("{name}.b"), b.clone());
                g.add(&format!("{name}.add"), y, bid).unwrap()
            }
            None => y,
        }
    };
    let q = proj(&mut g, "q", &wq, Some(&bq), h);
    let k = proj(&mut g, "k", &wk, None, h);
    let v = proj(&mut g, "v", &wv, None, h);
    let heads = [0, 0, HEADS as i64, DH as i64];
    let q = g.reshape("q.split", q, &heads).unwrap();
    let q = g.transpose("q.t", q, &[0, 2, 1, 3]).unwrap();
    let k = g.reshape("k.split", k, &heads).unwrap();
    let k = g.transpose("k.t", k, &[0, 2, 3, 1]).unwrap();
    let v = g.reshape("v.split", v, &heads).unwrap();
    let v = g.transpose("v.t", v, &[0, 2, 1, 3]).unwrap();
    let s = g.matmul("scores", q, k).unwrap();
    let scale = g.initializer("scale", Tensor::scalar_f32(1.0 / (DH as f32).sqrt()));
    let s = g.mul("scaled", s, scale).unwrap();
    let p = g.softmax("attn", s, -1).unwrap();
    let c = g.matmul("context", p, v).unwrap();
    let c = g.transpose("context.t", c, &[0, 2, 1, 3]).unwrap();
    let c = g.reshape("context.merge", c, &[0, 0, -1]).unwrap();
    let o = proj(&mut g, "o", &wo, Some(&bo), c);
    let x1 = g.add("residual1", x, o).unwrap();
    let h2 = g.layer_norm("ln2", x1, &g2, Some(&b2), 1e-5).unwrap();
    let f = proj(&mut g, "ff1", &w1, Some(&bf1), h2);
    let f = g.gelu("gelu", f).unwrap();
    let f = proj(&mut g, "ff2", &w2, Some(&bf2), f);
    let y = g.add("residual2", x1, f).unwrap();
    g.output(y);
    Block {
        graph: g.finish().unwrap(),
        params,
    }
}

fn block_ref(b: &Block, x: &[f64], batch: usize, seq: usize) -> Vec<f64> {
    let p = |n: &str| &b.params[n].0;
    let ln = |x: &[f64], g: &[f64], bb: &[f64]| -> Vec<f64> {
        x.chunks(D)
            .flat_map(|r| {
                let m = r.iter().sum::<f64>() / D as f64;
                let v = r.iter().map(|a| (a - m).powi(2)).sum::<f64>() / D as f64;
                (0..D)
                    .map(move |j| (r[j] - m) / (v + 1e-5).sqrt() * g[j] + bb[j])
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let lin = |x: &[f64], w: &[f64], bias: Option<&[f64]>, din: usize, dout: usize| -> Vec<f64> {
        x.chunks(din)
            .flat_map(|r| {
                (0..dout)
                    .map(|j| {
                        bias.map_or(0.0, |b| b[j])
                            + (0..din).map(|i| r[i] * w[i * dout + j]).sum::<f64>()
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let h = ln(x, p("ln1.g"), p("ln1.b"));
    let q = lin(&h, p("wq"), Some(p("bq")), D, D);
    let k = lin(&h, p("wk"), None, D, D);
    let v = lin(&h, p("wv"), None, D, D);
    let mut ctx = vec![0.0; batch * seq * D];
    for bi in 0..batch {
        for hd in 0..HEADS {
            for i in 0..seq {
                let at = |t: &Vec<f64>, s: usize, d: usize| t[(bi * seq + s) * D + hd * DH + d];
                let sc: Vec<f64> = (0..seq)
                    .map(|j| {
                        (0..DH).map(|d| at(&q, i, d) * at(&k, j, d)).sum::<f64>()
                            / (DH as f64).sqrt()
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = sc.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..DH {
                    ctx[(bi * seq + i) * D + hd * DH + d] =
                        (0..seq).map(|j| e[j] / z * at(&v, j, d)).sum();
                }
            }
        }
    }
    let o = lin(&ctx, p("wo"), Some(p("bo")), D, D);
    let x1: Vec<f64> = x.iter().zip(&o).map(|(a, b)| a + b).collect();
    let h2 = ln(&x1, p("ln2.g"), p("ln2.b"));
    let f = lin(&h2, p("w1"), Some(p("b1")), D, FF);
    let f: Vec<f64> = f.iter().map(|&v| Unary::GeluErf.eval_f64(v)).collect();
    let f = lin(&f, p("w2"), Some(p("b2")), FF, D);
    x1.iter().zip(&f).map(|(a, b)| a + b).collect()
}

#[test]
fn transformer_block_in_f32_bf16_f16() {
    let b = encoder_block(21);
    let mut rng = Rng::new(22);
    let f32m = b.graph.compile(&PrecisionPlan::new()).unwrap();
    let bf = b
        .graph
        .compile(&PrecisionPlan::all(&b.graph, FloatType::Bf16))
        .unwrap();
    let hf = b
        .graph
        .compile(&PrecisionPlan::all(&b.graph, FloatType::F16))
        .unwrap();
    for (batch, seq) in [(1, 1), (2, 5), (3, 7)] {
        let x = rng.tensor(&[batch, seq, D], -1.5, 1.5);
        let y32 = run1(&f32m, "x", &x);
        assert_eq!(y32.shape(), &[batch, seq, D]);
        assert_close(
            &y32.to_f32_vec(),
            &block_ref(&b, &f64s(&x), batch, seq),
            2e-5,
            2e-5,
            "block f32",
        );
        for (m, tol, ty) in [(&bf, TOL_BF16, "bf16"), (&hf, TOL_F16, "f16")] {
            let y = run1(m, "x", &x);
            let err = rel_max_err(&y.to_f32_vec(), &y32.to_f32_vec());
            assert!(err <= tol, "{ty} batch {batch} seq {seq}: rel err {err}");
        }
    }
    // Data-movement nodes are not in plans; compute nodes are.
    let lowerable: Vec<String> = b
        .graph
        .lowerable_nodes()
        .into_iter()
        .map(|n| n.name)
        .collect();
    for name in [
        "ln1",
        "q",
        "q.add",
        "scores",
        "scaled",
        "attn",
        "context",
        "gelu",
        "residual2",
    ] {
        assert!(lowerable.contains(&name.to_string()), "{name}");
    }
    for name in ["q.split", "q.t", "context.merge"] {
        assert!(!lowerable.contains(&name.to_string()), "{name}");
    }
    // An all-bf16 block casts only at its input and output (movement ops
    // keep bf16, weights were converted at compile time).
    assert_eq!(bf.num_runtime_casts(), 2, "{:?}", bf.casts());
}

#[test]
fn casts_inserted_for_a_mixed_plan() {
    let m = mlp(31);
    let g = &m.graph;
    let count = |plan: &PrecisionPlan| {
        let model = g.compile(plan).unwrap();
        (
            model.num_runtime_casts(),
            model.casts().iter().filter(|c| c.at_compile_time).count(),
        )
    };
    assert_eq!(count(&PrecisionPlan::new()), (0, 0));
    // x -> bf16 and fc2 -> f32 at run time; four weights converted once.
    assert_eq!(count(&PrecisionPlan::all(g, FloatType::Bf16)), (2, 4));
    // fc1 bf16, act1 f32, fc2 bf16: x->bf16, fc1->f32, act1->bf16, fc2->f32.
    let mut mixed = PrecisionPlan::new();
    mixed
        .set("fc1", FloatType::Bf16)
        .set("act1", FloatType::F32)
        .set("fc2", FloatType::Bf16);
    assert_eq!(count(&mixed), (4, 4));
    // Only the first layer in f32: fc1's output is cast once for act1.
    let mut p = PrecisionPlan::all(g, FloatType::F16);
    p.set("fc1", FloatType::F32);
    assert_eq!(count(&p), (2, 2));
    // A mixed plan still computes the right thing.
    let x = Rng::new(32).tensor(&[4, D_IN], -1.0, 1.0);
    let y = run1(&g.compile(&mixed).unwrap(), "x", &x);
    let err = rel_max_err(
        &y.to_f32_vec(),
        &mlp_ref(&m, &f64s(&x), 4)
            .iter()
            .map(|&v| v as f32)
            .collect::<Vec<_>>(),
    );
    assert!(err <= TOL_BF16, "{err}");
}

/// `x` read through two Reshapes by f16 MatMuls, and through one of them
/// by an f32 Relu; `x` is stored in `x_dtype`.
fn two_views_of_x(x_dtype: DType, rng: &mut Rng) -> Graph {
    let mut g = GraphBuilder::new();
    let x = g.input("x", &[4.into(), 6.into()], x_dtype);
    let a = g.reshape("a", x, &[2, 12]).unwrap();
    let b = g.reshape("b", x, &[8, 3]).unwrap();
    let ra = g.relu("ra", a).unwrap();
    let ty = x_dtype.float_type().unwrap();
    let mut weight = |name: &str, shape: &[usize]| {
        let w = rng.tensor(shape, -1.0, 1.0).to_float_type(ty).unwrap();
        g.initializer(name, w)
    };
    let (wa, wb) = (weight("wa", &[12, 5]), weight("wb", &[3, 7]));
    let ma = g.matmul("ma", a, wa).unwrap();
    let mb = g.matmul("mb", b, wb).unwrap();
    for v in [ra, ma, mb] {
        g.output(v);
    }
    g.finish().unwrap()
}

/// Views of one value that f16 nodes read share one cast of that value:
/// the Reshapes run again on the cast (a view moves no elements), and the
/// f32 reader keeps the f32 view. The results are those of the same graph
/// fed the value already in f16.
#[test]
fn views_of_a_value_share_its_cast() {
    let graph = two_views_of_x(DType::F32, &mut Rng::new(41));
    let mut plan = PrecisionPlan::all(&graph, FloatType::F16);
    plan.set("ra", FloatType::F32);
    let model = graph.compile(&plan).unwrap();
    let mut runtime: Vec<String> = model
        .casts()
        .iter()
        .filter(|c| !c.at_compile_time)
        .map(|c| c.value.clone())
        .collect();
    runtime.sort();
    assert_eq!(runtime, ["ma", "mb", "x"], "{:?}", model.casts());
    let x = Rng::new(42).tensor(&[4, 6], -2.0, 2.0);
    let out = model.run(&[("x", &x)]).unwrap();
    let f16_graph = two_views_of_x(DType::F16, &mut Rng::new(41));
    let x16 = x.to_float_type(FloatType::F16).unwrap();
    let mut want = f16_graph
        .compile(&PrecisionPlan::all(&f16_graph, FloatType::F16))
        .unwrap()
        .run(&[("x", &x16)])
        .unwrap();
    let bits = |t: &Tensor| {
        t.to_f32_vec()
            .iter()
            .map(|v| v.to_bits())
            .collect::<Vec<_>>()
    };
    for name in ["ma", "mb"] {
        assert_eq!(
            bits(&out[name]),
            bits(&want.remove(name).unwrap()),
            "{name}"
        );
    }
    let relu: Vec<f32> = x.to_f32_vec().iter().map(|v| v.max(0.0)).collect();
    assert_eq!(
        out["ra"].to_f32_vec(),
        relu,
        "the f32 Relu reads the f32 view"
    );
    assert_eq!(out["ra"].shape(), [2, 12]);
}

/// A graph output that is a view (Identity, as ONNX import names outputs)
/// of an f16 value: its f32 output is the view of that value's cast, and
/// the f16 view step left unread by that is not run (it copied its input,
/// which the cast reads after it). The output keeps the f16 values' bits.
#[test]
fn an_unread_view_of_a_cast_output_is_not_run() {
    let mut g = GraphBuilder::new();
    let x = g.input("x", &[4.into(), 6.into()], DType::F32);
    let r = g.relu("r", x).unwrap();
    let y = g.node1("y", Op::Identity, &[r]).unwrap();
    g.output(y);
    let graph = g.finish().unwrap();
    let model = graph
        .compile(&PrecisionPlan::all(&graph, FloatType::F16))
        .unwrap();
    let x = Rng::new(43).tensor(&[4, 6], -2.0, 2.0);
    let (out, profile) = model.run_profiled(&[("x", &x)]).unwrap();
    let steps: Vec<(&str, bool)> = profile
        .entries
        .iter()
        .map(|e| (e.name.as_str(), e.inserted_cast))
        .collect();
    assert_eq!(
        steps,
        [
            ("cast:x->f16", true),
            ("r", false),
            ("cast:r->f32", true),
            ("y", false)
        ],
        "{profile:?}"
    );
    let want: Vec<f32> = x
        .to_f32_vec()
        .iter()
        .map(|&v| half::f16::from_f32(v.max(0.0)).to_f32())
        .collect();
    assert_eq!(out["y"].dtype(), DType::F32);
    assert_eq!(out["y"].to_f32_vec(), want);
}

#[test]
fn one_cast_shared_by_all_consumers_and_no_cast_pairs() {
    let mut g = GraphBuilder::new();
    let x = g.input("x", &[4.into()], DType::F32);
    let a = g.node1("a", Op::Unary(Unary::Relu), &[x]).unwrap();
    let b = g.node1("b", Op::Unary(Unary::Neg), &[x]).unwrap();
    let c = g.node1("c", Op::Binary(Binary::Add), &[a, b]).unwrap();
    // An explicit widening Cast followed by a bf16 consumer: the consumer
    // reads the bf16 original, no f32 -> bf16 cast is inserted.
    let up = g.node1("up", Op::Cast { to: DType::F32 }, &[c]).unwrap();
    let d = g.node1("d", Op::Unary(Unary::Abs), &[up]).unwrap();
    g.output(d);
    let graph = g.finish().unwrap();
    let mut plan = PrecisionPlan::all(&graph, FloatType::Bf16);
    plan.set("c", FloatType::Bf16);
    let model = graph.compile(&plan).unwrap();
    let casts: Vec<(String, DType, DType)> = model
        .casts()
        .iter()
        .map(|c| (c.value.clone(), c.from, c.to))
        .collect();
    assert_eq!(
        casts,
        vec![
            ("x".to_string(), DType::F32, DType::Bf16),
            ("d".to_string(), DType::Bf16, DType::F32)
        ],
        "x cast once for a and b; no cast after `up`"
    );
    let xt = Tensor::from_f32(&[4], vec![1.0, -2.0, 3.0, -4.5]).unwrap();
    let y = run1(&model, "x", &xt);
    // relu(x) + (-x) = 0 for x > 0, -x... then abs.
    assert_eq!(y.to_f32_vec(), vec![0.0, 2.0, 0.0, 4.5]);
}

#[test]
fn f32_plans_are_bitwise_identical_for_any_thread_count() {
    // Large enough that the GEMMs split work across threads, and that the
    // elementwise, softmax, LayerNorm and cast steps split their rows
    // (from 2^18 elements per part: the attention scores here have 2^20).
    let b = encoder_block(41);
    let x = Rng::new(42).tensor(&[8, 256, D], -1.0, 1.0);
    let m = mlp(43);
    let xm = Rng::new(44).tensor(&[4096, D_IN], -1.0, 1.0);
    let models = [
        (b.graph.compile(&PrecisionPlan::new()).unwrap(), &x),
        (m.graph.compile(&PrecisionPlan::new()).unwrap(), &xm),
        (
            m.graph
                .compile(&PrecisionPlan::all(&m.graph, FloatType::Bf16))
                .unwrap(),
            &xm,
        ),
    ];
    let before = gemm::num_threads();
    let mut results = Vec::new();
    for threads in [1, 2, 3, 1] {
        gemm::set_num_threads(threads);
        results.push(
            models
                .iter()
                .map(|(model, x)| run1(model, "x", x).to_f32_vec())
                .collect::<Vec<_>>(),
        );
    }
    gemm::set_num_threads(before);
    for r in &results[1..] {
        for (a, b) in r.iter().zip(&results[0]) {
            let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "outputs differ between thread counts");
        }
    }
}

#[test]
fn compiled_model_is_send_sync_and_runs_from_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<CompiledModel>();
    let m = mlp(51);
    let model = m
        .graph
        .compile(&PrecisionPlan::all(&m.graph, FloatType::Bf16))
        .unwrap();
    let x = Rng::new(52).tensor(&[9, D_IN], -1.0, 1.0);
    let want = run1(&model, "x", &x).to_f32_vec();
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..3)
            .map(|_| s.spawn(|| run1(&model, "x", &x).to_f32_vec()))
            .collect();
        for h in hs {
            assert_eq!(h.join().unwrap(), want);
        }
    });
}

#[test]
fn profiling_reports_every_step() {
    let m = mlp(61);
    let plan = PrecisionPlan::all(&m.graph, FloatType::Bf16);
    let unfused = CompileOptions {
        keep_all_steps: true,
        ..Default::default()
    };
    let model = m.graph.compile_with(&plan, &unfused).unwrap();
    let x = Rng::new(62).tensor(&[5, D_IN], -1.0, 1.0);
    let (out, prof) = model.run_profiled(&[("x", &x)]).unwrap();
    assert_eq!(out["fc2"].to_f32_vec(), run1(&model, "x", &x).to_f32_vec());
    let names: Vec<&str> = prof.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        vec!["cast:x->bf16", "fc1", "act1", "fc2", "cast:fc2->f32"]
    );
    // By default the Relu act1 runs in fc1's epilogue: no step of its own.
    let fused = m.graph.compile(&plan).unwrap();
    let (fused_out, fused_prof) = fused.run_profiled(&[("x", &x)]).unwrap();
    assert_eq!(fused_out["fc2"].to_f32_vec(), out["fc2"].to_f32_vec());
    let fused_names: Vec<&str> = fused_prof.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        fused_names,
        vec!["cast:x->bf16", "fc1", "fc2", "cast:fc2->f32"]
    );
    let fc1 = &prof.entries[1];
    assert_eq!(
        (fc1.op_type, fc1.dtype, fc1.inserted_cast),
        ("Gemm", DType::Bf16, false)
    );
    // fc1 reads x (5x24 bf16), W (40x24 bf16), b (40 bf16), writes 5x40 bf16.
    assert_eq!(fc1.bytes, 2 * (5 * 24 + 40 * 24 + 40 + 5 * 40));
    assert!(prof.entries[0].inserted_cast);
    assert!(prof.total_seconds >= prof.entries.iter().map(|e| e.seconds).sum::<f64>());
}

#[test]
fn plans_validate_and_round_trip_as_json() {
    let m = mlp(71);
    let g = &m.graph;
    let mut plan = PrecisionPlan::all(g, FloatType::Bf16);
    plan.set("fc2", FloatType::F16);
    let json = plan.to_json();
    assert!(json.contains("\"fc2\": \"f16\""), "{json}");
    assert_eq!(PrecisionPlan::from_json(&json).unwrap(), plan);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plan.json");
    plan.save(&path).unwrap();
    assert_eq!(PrecisionPlan::load(&path).unwrap(), plan);
    assert!(matches!(
        PrecisionPlan::from_json(r#"{"nodes": {"fc1": "fp8"}}"#),
        Err(GraphError::PlanFormat { .. })
    ));
    let mut bad = plan.clone();
    bad.set("nope", FloatType::Bf16);
    assert!(matches!(g.compile(&bad), Err(GraphError::UnknownNode { name }) if name == "nope"));
    // Lowering a data-movement node is refused.
    let b = encoder_block(72);
    let mut p = PrecisionPlan::new();
    p.set("q.t", FloatType::Bf16);
    assert!(
        matches!(b.graph.compile(&p), Err(GraphError::NotLowerable { name, op_type: "Transpose" }) if name == "q.t")
    );
    let lw = g.lowerable_nodes();
    let pairs: Vec<(&str, &str)> = lw.iter().map(|n| (n.name.as_str(), n.op_type)).collect();
    assert_eq!(
        pairs,
        vec![("fc1", "Gemm"), ("act1", "Relu"), ("fc2", "Gemm")]
    );
    assert_eq!(plan.counts()[&FloatType::Bf16], 2);
}

#[test]
fn outputs_in_node_dtype_when_asked() {
    let m = mlp(81);
    let plan = PrecisionPlan::all(&m.graph, FloatType::Bf16);
    let model = m
        .graph
        .compile_with(
            &plan,
            &CompileOptions {
                outputs_in_node_dtype: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(model.num_runtime_casts(), 1);
    let x = Rng::new(82).tensor(&[3, D_IN], -1.0, 1.0);
    let y = run1(&model, "x", &x);
    assert_eq!(y.dtype(), DType::Bf16);
    let y32 = run1(&m.graph.compile(&plan).unwrap(), "x", &x);
    assert_eq!(
        y.to_f32_vec(),
        y32.to_f32_vec(),
        "the f32 output is the exact widening"
    );
}
