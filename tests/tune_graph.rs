//! `autotune` on real op-graphs: the built-in digits MLP (the demo's case),
//! an fp16-overflowing chain, and a stack with one folded-offset layer.

use mixprec::demo;
use mixprec::graph::{
    CompileOptions, CompiledModel, DType, Dim, GemmAccumulation, Graph, GraphBuilder,
    PrecisionPlan, Tensor,
};
use mixprec::kernels::{FloatType, Isa, active_isa};
use mixprec::tune::{
    MixedPrecisionConfig, Strategy, Tolerance, TuneStatus, TunedModel, TuningConfig, autotune,
};

fn top1(model: &CompiledModel, x: &Tensor, labels: &[i64]) -> f64 {
    let out = model.run_ordered(&[("x", x)]).unwrap();
    let logits = out[0].to_f32_vec();
    let classes = logits.len() / labels.len();
    let correct = labels
        .iter()
        .enumerate()
        .filter(|(i, l)| {
            let row = &logits[i * classes..(i + 1) * classes];
            let arg = row
                .iter()
                .enumerate()
                .fold(0, |b, (j, v)| if *v > row[b] { j } else { b });
            arg as i64 == **l
        })
        .count();
    correct as f64 / labels.len() as f64
}

struct Digits {
    graph: Graph,
    x: Tensor,
    labels: Vec<i64>,
    calibration: Vec<(String, Tensor)>,
    expected: demo::ModelDescription,
}

/// The demo's model: 64-128-10 MLP, 540 test images; calibration from 32
/// training images (not in the test split), built as the demo builds it.
fn digits(key: &str) -> Digits {
    let m = demo::load(key).unwrap();
    let cal = demo::calibration_data(&m.description, 32).unwrap();
    Digits {
        graph: demo::graph_from_weights(&m.weights).unwrap(),
        x: Tensor::from_f32(&[m.test.n, 64], m.test.inputs.clone()).unwrap(),
        labels: m.test.labels.clone(),
        calibration: vec![(
            demo::INPUT_NAME.into(),
            Tensor::from_f32(&[cal.n, 64], cal.inputs).unwrap(),
        )],
        expected: m.description,
    }
}

/// Decisions from measured times are off so the asserted plans do not
/// depend on timing noise (the speed step is tested on a synthetic model).
fn bf16_config(strategy: Strategy, calibration: Option<Vec<(String, Tensor)>>) -> TuningConfig {
    TuningConfig {
        strategy,
        calibration,
        prefer_measured_speed: false,
        ..TuningConfig::new(
            MixedPrecisionConfig::new(vec![FloatType::Bf16, FloatType::F32]).unwrap(),
        )
    }
}

#[test]
fn digits_demo_keeps_layer0_in_fp32() {
    let d = digits("folded_off100");
    let eval = |m: &CompiledModel| top1(m, &d.x, &d.labels);
    let tuned = autotune(
        &d.graph,
        &bf16_config(Strategy::Default, Some(d.calibration.clone())),
        eval,
    )
    .unwrap();
    let r = &tuned.report;
    eprintln!("{r}");
    // The numbers the data's description gives for this model.
    let fp32 = d.expected.expected_accuracy("fp32").unwrap();
    let bf16 = d.expected.expected_accuracy("bf16").unwrap();
    assert!((r.baseline - fp32).abs() < 0.004, "baseline {}", r.baseline);
    assert_eq!(r.trials[0].description, "all bf16");
    assert!(!r.trials[0].passed);
    // The description's emulation rounds inputs and weights to bf16 and adds
    // the bias in f32, as the graph does; only the f32 summation order
    // differs, which may flip at most a borderline image or two.
    assert!(
        (r.trials[0].metric - bf16).abs() <= 2.0 / 540.0 + 1e-12,
        "all-bf16 {} vs the description's {bf16}",
        r.trials[0].metric
    );
    assert_eq!(r.status, TuneStatus::Passed);
    assert!(r.final_metric >= r.baseline * 0.99 - 1e-12);
    assert_eq!(tuned.plan.dtype_of("l0"), FloatType::F32);
    assert_eq!(tuned.plan.dtype_of("l1"), FloatType::Bf16);
    assert!(r.evaluations <= 4, "{} evaluations", r.evaluations);
    let l0 = r.nodes.iter().find(|n| n.name == "l0").unwrap();
    assert_eq!(l0.rank, Some(0));
    assert!(l0.reason.is_some());
    assert_eq!(
        r.fallbacks().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        ["l0"]
    );
    assert!(l0.time_f32_s.is_some() && l0.time_low_s.is_some());
    assert!(r.speedup.is_some());
    assert!(r.notes.iter().all(|n| !n.contains("synthetic")));

    // The plan saves and loads as JSON and gives the same model.
    let json = tuned.plan.to_json();
    let plan = PrecisionPlan::from_json(&json).unwrap();
    assert_eq!(plan, tuned.plan);
    let again = d.graph.compile(&plan).unwrap();
    assert_eq!(top1(&again, &d.x, &d.labels), r.final_metric);
    assert_eq!(top1(&tuned.model, &d.x, &d.labels), r.final_metric);
}

#[test]
fn digits_demo_strategies_compared() {
    let d = digits("folded_off100");
    let run = |s: Strategy| -> TunedModel {
        autotune(
            &d.graph,
            &bf16_config(s, Some(d.calibration.clone())),
            |m| top1(m, &d.x, &d.labels),
        )
        .unwrap()
    };
    let seq = run(Strategy::Sequential);
    // INC 3.x: all-bf16 fails, then the all-fp32 trial passes.
    assert_eq!(seq.report.status, TuneStatus::Passed);
    assert_eq!(seq.report.evaluations, 3);
    assert!(seq.plan.iter().all(|(_, t)| t == FloatType::F32));
    let ow = run(Strategy::OpWise);
    assert_eq!(ow.report.status, TuneStatus::Passed);
    assert_eq!(ow.plan.dtype_of("l0"), FloatType::F32);
    let def = run(Strategy::Default);
    assert!(def.report.evaluations <= ow.report.evaluations);
    eprintln!(
        "digits folded_off100: default {} evaluations, opwise {}, sequential {}",
        def.report.evaluations, ow.report.evaluations, seq.report.evaluations
    );
    // Without calibration inputs, the batch is captured from the baseline
    // evaluation, which still runs exactly once.
    let mut calls = 0;
    let cap = autotune(&d.graph, &bf16_config(Strategy::Default, None), |m| {
        calls += 1;
        top1(m, &d.x, &d.labels)
    })
    .unwrap();
    assert_eq!(calls, cap.report.evaluations);
    assert!(cap.report.notes.iter().any(|n| n.contains("captured")));
    assert!(cap.report.notes.iter().all(|n| !n.contains("synthetic")));
    assert_eq!(cap.report.status, TuneStatus::Passed);
    assert_eq!(cap.plan.dtype_of("l0"), FloatType::F32);
    // An evaluation that never runs the model leaves nothing to capture:
    // synthetic inputs are used and said so.
    let syn = autotune(&d.graph, &bf16_config(Strategy::Default, None), |_| 1.0).unwrap();
    assert!(syn.report.notes.iter().any(|n| n.contains("synthetic")));
}

#[test]
fn digits_plain_model_passes_all_bf16() {
    let d = digits("plain");
    let t = autotune(
        &d.graph,
        &bf16_config(Strategy::Default, Some(d.calibration.clone())),
        |m| top1(m, &d.x, &d.labels),
    )
    .unwrap();
    assert_eq!(t.report.status, TuneStatus::Passed);
    assert_eq!(t.report.evaluations, 2);
    assert!(t.plan.iter().all(|(_, d)| d == FloatType::Bf16));
}

/// `TuningConfig::bf16_gemm` reaches every candidate: each model the tuner
/// evaluates, and the one it returns, gives the bits of its plan compiled
/// with that mode; where the CPU has VDPBF16PS some candidate (the all-bf16
/// trial: layer 0's folded scaler cancels a large bias) differs from the
/// default mode's, so the check can fail.
#[test]
fn candidates_compile_with_the_configured_bf16_gemm() {
    let d = digits(demo::DEFAULT_MODEL);
    let widen = CompileOptions {
        bf16_gemm: GemmAccumulation::WidenToF32,
        ..Default::default()
    };
    let config = TuningConfig {
        bf16_gemm: GemmAccumulation::WidenToF32,
        ..bf16_config(Strategy::Default, Some(d.calibration.clone()))
    };
    let bits =
        |m: &CompiledModel| -> Vec<u32> { outputs(m, &d.x).iter().map(|v| v.to_bits()).collect() };
    let mut differing = 0;
    let t = autotune(&d.graph, &config, |m| {
        let want = d.graph.compile_with(m.plan(), &widen).unwrap();
        assert_eq!(bits(m), bits(&want), "{:?}", m.plan());
        if bits(m) != bits(&d.graph.compile(m.plan()).unwrap()) {
            differing += 1;
        }
        top1(m, &d.x, &d.labels)
    })
    .unwrap();
    assert_eq!(
        bits(&t.model),
        bits(&d.graph.compile_with(&t.plan, &widen).unwrap())
    );
    if active_isa() >= Isa::Avx512CoreBf16 {
        assert!(differing > 0, "no candidate told the modes apart");
    }
}

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let mut num = 0.0f64;
    let mut den = 0.0f64;
    for (&p, &q) in a.iter().zip(b) {
        if !p.is_finite() {
            return f64::INFINITY;
        }
        num += ((p - q) as f64).powi(2);
        den += (q as f64).powi(2);
    }
    (num / den).sqrt()
}

fn outputs(m: &CompiledModel, x: &Tensor) -> Vec<f32> {
    m.run_ordered(&[("x", x)]).unwrap()[0].to_f32_vec()
}

/// Deterministic values in [lo, hi).
fn stream(seed: u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            lo + (hi - lo) * ((s >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

#[test]
fn fp16_overflow_chain_in_the_graph() {
    // x in [100, 700): *100 exceeds f16's 65504, *10 more so; *1e-4 brings
    // it back to ~70.
    let mut g = GraphBuilder::new();
    let x = g.input("x", &[Dim::sym("batch"), 4.into()], DType::F32);
    let c = |g: &mut GraphBuilder, name: &str, v: f32| g.initializer(name, Tensor::scalar_f32(v));
    let one = c(&mut g, "one", 1.0);
    let k100 = c(&mut g, "k100", 100.0);
    let k10 = c(&mut g, "k10", 10.0);
    let kdown = c(&mut g, "kdown", 1e-4);
    let h = g.add("pre", x, one).unwrap();
    let h = g.mul("mul100", h, k100).unwrap();
    let h = g.mul("mul10", h, k10).unwrap();
    let h = g.mul("down", h, kdown).unwrap();
    let y = g.add("post", h, one).unwrap();
    g.output(y);
    let graph = g.finish().unwrap();
    let xe = Tensor::from_f32(&[64, 4], stream(3, 256, 100.0, 700.0)).unwrap();
    let xc = Tensor::from_f32(&[4, 4], stream(5, 16, 100.0, 700.0)).unwrap();
    let y0 = outputs(&graph.compile(&PrecisionPlan::new()).unwrap(), &xe);
    let config = |d: FloatType| TuningConfig {
        tolerance: Tolerance::Absolute(0.01),
        higher_is_better: false,
        prefer_measured_speed: false,
        calibration: Some(vec![("x".into(), xc.clone())]),
        ..TuningConfig::new(MixedPrecisionConfig::new(vec![d, FloatType::F32]).unwrap())
    };
    let t16 = autotune(&graph, &config(FloatType::F16), |m| {
        rel_err(&outputs(m, &xe), &y0)
    })
    .unwrap();
    let r = &t16.report;
    assert_eq!(r.status, TuneStatus::Passed, "{r}");
    assert!(!r.trials[0].passed);
    for n in ["mul100", "mul10", "down"] {
        assert_eq!(t16.plan.dtype_of(n), FloatType::F32, "{n}\n{r}");
    }
    for n in ["pre", "post"] {
        assert_eq!(t16.plan.dtype_of(n), FloatType::F16, "{n}\n{r}");
    }
    let tb = autotune(&graph, &config(FloatType::Bf16), |m| {
        rel_err(&outputs(m, &xe), &y0)
    })
    .unwrap();
    assert_eq!(tb.report.status, TuneStatus::Passed);
    assert!(
        tb.plan.iter().all(|(_, d)| d == FloatType::Bf16),
        "{}",
        tb.report
    );
}

#[test]
fn one_folded_layer_among_many_in_the_graph() {
    let n_layers = 16usize;
    let (inp, width) = (64usize, 16usize);
    let w0 = stream(11, width * inp, -0.1, 0.1);
    let b = stream(12, width, -1.0, 1.0);
    let b0: Vec<f32> = (0..width)
        .map(|o| b[o] - (0..inp).map(|i| w0[o * inp + i] * 200.0).sum::<f32>())
        .collect();
    let mut g = GraphBuilder::new();
    let x = g.input("x", &[Dim::sym("batch"), inp.into()], DType::F32);
    let mut h = g
        .linear(
            "l00",
            x,
            &Tensor::from_f32(&[width, inp], w0).unwrap(),
            Some(&Tensor::from_f32(&[width], b0).unwrap()),
        )
        .unwrap();
    for k in 1..n_layers {
        let noise = stream(100 + k as u64, width * width, -0.02, 0.02);
        let w: Vec<f32> = noise
            .iter()
            .enumerate()
            .map(|(j, e)| e + if j / width == j % width { 1.0 } else { 0.0 })
            .collect();
        let bk = stream(200 + k as u64, width, -0.1, 0.1);
        h = g
            .linear(
                &format!("l{k:02}"),
                h,
                &Tensor::from_f32(&[width, width], w).unwrap(),
                Some(&Tensor::from_f32(&[width], bk).unwrap()),
            )
            .unwrap();
    }
    g.output(h);
    let graph = g.finish().unwrap();
    // Integer pixels 0..8 plus the sensor offset 200 (exact in bf16).
    let pixels = |seed, n: usize| -> Tensor {
        let v: Vec<f32> = stream(seed, n * inp, 0.0, 9.0)
            .into_iter()
            .map(|p| p.floor() + 200.0)
            .collect();
        Tensor::from_f32(&[n, inp], v).unwrap()
    };
    let xe = pixels(21, 128);
    let xc = pixels(22, 8);
    let y0 = outputs(&graph.compile(&PrecisionPlan::new()).unwrap(), &xe);
    let config = TuningConfig {
        tolerance: Tolerance::Absolute(0.03),
        higher_is_better: false,
        prefer_measured_speed: false,
        calibration: Some(vec![("x".into(), xc)]),
        ..TuningConfig::default()
    };
    let t = autotune(&graph, &config, |m| rel_err(&outputs(m, &xe), &y0)).unwrap();
    let r = &t.report;
    let limit = (n_layers as f64).log2().ceil() as usize + 3;
    assert_eq!(r.status, TuneStatus::Passed, "{r}");
    assert!(!r.trials[0].passed, "fixture: all-bf16 must fail\n{r}");
    assert!(r.evaluations <= limit, "{} > {limit}\n{r}", r.evaluations);
    assert_eq!(t.plan.dtype_of("l00"), FloatType::F32);
    assert_eq!(
        r.fallbacks().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        ["l00"]
    );
    // A reported pass is a pass when evaluated again.
    assert!(rel_err(&outputs(&t.model, &xe), &y0) <= 0.03);
    let ow = autotune(
        &graph,
        &TuningConfig {
            strategy: Strategy::OpWise,
            ..config.clone()
        },
        |m| rel_err(&outputs(m, &xe), &y0),
    )
    .unwrap();
    assert_eq!(ow.plan.dtype_of("l00"), FloatType::F32);
    assert!(ow.report.evaluations > r.evaluations);
    eprintln!(
        "folded stack N={n_layers}: default {} evaluations, opwise {}",
        r.evaluations, ow.report.evaluations
    );
}
