//! The SVG pictures: well-formed XML, one mark per kernel / evaluation /
//! node, the axis labels and titles, and typed errors (no panic) on empty or
//! invalid input.

use mixprec::plot::{
    PlotError, PointFamily, RooflineInput, RooflinePoint, points_from, roofline_svg, tuning_svg,
};
use mixprec::tune::{NodeReport, TrialRecord, TuneStatus, TuningReport};

/// Parses `svg` and returns (number of `<circle>`s, every `<text>`'s content).
fn inspect(svg: &str) -> (usize, Vec<String>) {
    let doc = roxmltree::Document::parse(svg).expect("the SVG is well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let circles = doc
        .descendants()
        .filter(|n| n.tag_name().name() == "circle")
        .count();
    let texts = doc
        .descendants()
        .filter(|n| n.tag_name().name() == "text")
        .map(|n| n.text().unwrap_or("").trim().to_string())
        .collect();
    (circles, texts)
}

fn count_exact(texts: &[String], s: &str) -> usize {
    texts.iter().filter(|t| *t == s).count()
}

fn any_contains(texts: &[String], s: &str) -> bool {
    texts.iter().any(|t| t.contains(s))
}

fn point(label: &str, family: PointFamily, intensity: f64, gflops: f64) -> RooflinePoint {
    RooflinePoint {
        label: label.into(),
        family,
        intensity,
        gflops,
        detail: format!("{gflops} GFLOP/s"),
    }
}

fn roofline_input() -> RooflineInput {
    RooflineInput {
        cpu_model: "Test CPU 9000 <fast & cheap>".into(),
        isa: "avx512_core_bf16".into(),
        compute_ceilings: vec![
            ("f32 FMA".into(), Some(200.0)),
            ("bf16 dot".into(), Some(400.0)),
            ("f16 FMA".into(), None),
        ],
        memory_ceilings: vec![("DRAM".into(), 40.0), ("L2".into(), 300.0)],
        points: vec![
            point("f32->bf16 n=16M", PointFamily::Conversion, 1.0 / 6.0, 5.0),
            point("bf16->f32 n=16M", PointFamily::Conversion, 1.0 / 6.0, 5.5),
            point("gemm f32 1024", PointFamily::Gemm, 170.0, 180.0),
            point("gemm bf16 1024", PointFamily::Gemm, 250.0, 350.0),
            point("gemv bf16 4096", PointFamily::Gemv, 1.0, 35.0),
        ],
        notes: vec!["conversions: one op per element".into()],
    }
}

#[test]
fn roofline_has_a_dot_per_kernel_axis_labels_and_title() {
    let input = roofline_input();
    let svg = roofline_svg(&input).unwrap();
    let (circles, texts) = inspect(&svg);
    // One dot on the chart and one in the key per kernel, nothing else round.
    assert_eq!(circles, 2 * input.points.len());
    assert!(texts.contains(&"arithmetic intensity (FLOP/byte)".to_string()));
    assert!(texts.contains(&"GFLOP/s".to_string()));
    // The title, with the markup characters of the CPU name escaped and read back.
    assert!(
        any_contains(&texts, "Test CPU 9000 <fast & cheap>")
            && any_contains(&texts, "avx512_core_bf16"),
        "{texts:?}"
    );
    for p in &input.points {
        assert!(any_contains(&texts, &p.label), "{} missing", p.label);
    }
    // Every point is numbered on the chart (axis ticks may share a number).
    for i in 1..=input.points.len() {
        assert!(count_exact(&texts, &i.to_string()) >= 1, "label {i}");
    }
    assert!(any_contains(&texts, "f16 FMA: not available on this CPU"));
    assert!(any_contains(&texts, "DRAM 40 GB/s"));
    assert!(any_contains(&texts, "bf16 dot 400 GFLOP/s"));
    assert!(any_contains(&texts, "conversions: one op per element"));
}

#[test]
fn roofline_from_bench_rows() {
    let rows = [
        ("memcpy (reference)", "bytes=16384", 60.0, "GB/s"),
        ("convert f32->bf16", "n=4096", 20.0, "Gelem/s"),
        ("convert f16->f32", "n=16777216", 4.0, "Gelem/s"),
        ("vfmadd231ps zmm", "threads=2", 230.0, "GFLOP/s (peak)"),
        ("gemm bf16", "1024x1024x1024", 300.0, "GFLOP/s"),
        ("gemv f32", "1x4096x4096", 10.0, "GFLOP/s"),
        ("model", "model=builtin batch=540", 0.2, "ms (median)"),
    ];
    let points = points_from(&rows);
    let labels: Vec<&str> = points.iter().map(|p| p.label.as_str()).collect();
    assert_eq!(
        labels,
        [
            "f32->bf16 n=4K",
            "f16->f32 n=16M",
            "gemm bf16 1024x1024x1024",
            "gemv f32 1x4096x4096"
        ]
    );
    // GEMV in f32: about 2 FLOP per 4-byte weight.
    assert!((points[3].intensity - 0.5).abs() < 0.01);
    let svg = roofline_svg(&RooflineInput {
        cpu_model: "cpu".into(),
        isa: "avx2".into(),
        compute_ceilings: vec![("f32".into(), Some(230.0))],
        memory_ceilings: vec![("DRAM".into(), 30.0)],
        points,
        notes: vec![],
    })
    .unwrap();
    let (circles, texts) = inspect(&svg);
    assert_eq!(circles, 8);
    assert!(any_contains(&texts, "20 Gelem/s = 120 GB/s"));
}

#[test]
fn roofline_edge_cases_are_pictures_or_typed_errors() {
    assert!(matches!(
        roofline_svg(&RooflineInput::default()),
        Err(PlotError::Empty(_))
    ));
    // Only unavailable ceilings: still nothing to draw.
    let only_missing = RooflineInput {
        compute_ceilings: vec![("f16".into(), None)],
        ..RooflineInput::default()
    };
    assert!(matches!(
        roofline_svg(&only_missing),
        Err(PlotError::Empty(_))
    ));
    // Ceilings without points, or points without ceilings: a picture.
    let ceilings_only = RooflineInput {
        points: vec![],
        ..roofline_input()
    };
    let (circles, texts) = inspect(&roofline_svg(&ceilings_only).unwrap());
    assert_eq!(circles, 0);
    assert!(texts.contains(&"GFLOP/s".to_string()));
    let points_only = RooflineInput {
        compute_ceilings: vec![],
        memory_ceilings: vec![],
        ..roofline_input()
    };
    let (circles, _) = inspect(&roofline_svg(&points_only).unwrap());
    assert_eq!(circles, 10);
    // A single point.
    let one = RooflineInput {
        points: vec![point("x", PointFamily::Other, 2.0, 3.0)],
        ..RooflineInput::default()
    };
    assert_eq!(inspect(&roofline_svg(&one).unwrap()).0, 2);

    for (bad, value) in [
        (f64::NAN, "NaN"),
        (0.0, "0"),
        (-1.0, "-1"),
        (f64::INFINITY, "inf"),
    ] {
        let mut input = roofline_input();
        input.points[2].gflops = bad;
        match roofline_svg(&input) {
            Err(PlotError::InvalidValue { what, value: v }) => {
                assert!(what.contains("gemm f32 1024"), "{what}");
                assert_eq!(format!("{v}"), value);
            }
            other => panic!("{bad}: {other:?}"),
        }
        let mut input = roofline_input();
        input.memory_ceilings[0].1 = bad;
        assert!(matches!(
            roofline_svg(&input),
            Err(PlotError::InvalidValue { .. })
        ));
        let mut input = roofline_input();
        input.compute_ceilings[0].1 = Some(bad);
        let e = roofline_svg(&input).unwrap_err();
        assert!(e.to_string().contains("f32 FMA"), "{e}");
    }
}

fn node(name: &str, dtype: &str, sensitivity: Option<f64>, t32: f64, tlow: f64) -> NodeReport {
    NodeReport {
        name: name.into(),
        op_type: "Gemm".into(),
        dtype: dtype.into(),
        searched: true,
        sensitivity,
        rank: None,
        time_f32_s: Some(t32),
        time_low_s: Some(tlow),
        reason: (dtype == "f32").then(|| "sensitive".to_string()),
    }
}

fn trial(index: usize, fp32: &[&str], metric: f64, passed: bool) -> TrialRecord {
    TrialRecord {
        index,
        phase: "test".into(),
        description: if fp32.is_empty() {
            "all bf16".into()
        } else {
            format!("fp32: {}", fp32.join(", "))
        },
        fp32_nodes: fp32.iter().map(|s| s.to_string()).collect(),
        low_nodes: 5 - fp32.len(),
        metric,
        passed,
        seconds: 0.01,
    }
}

fn report() -> TuningReport {
    TuningReport {
        status: TuneStatus::Passed,
        strategy: "default".into(),
        tolerance: "1% relative".into(),
        higher_is_better: true,
        baseline: 0.98,
        final_metric: 0.975,
        evaluations: 4,
        calibration_passes: 3,
        trials: vec![
            trial(1, &[], 0.88, false),
            trial(2, &["fc0", "fc1"], 0.979, true),
            trial(3, &["fc0"], 0.975, true),
        ],
        nodes: vec![
            node("fc0", "f32", Some(0.3), 2e-4, 1e-4),
            node("relu0", "bf16", None, 1e-5, 1e-5),
            node("fc1", "bf16", Some(2e-3), 3e-4, 1.5e-4),
            node("fc2", "bf16", Some(1e-3), 1e-4, 5e-5),
            node("head", "bf16", Some(0.0), 1e-5, 1e-5),
        ],
        latency_fp32_s: Some(1e-3),
        latency_final_s: Some(6e-4),
        speedup: Some(1.67),
        seconds: 0.1,
        notes: vec![],
    }
}

#[test]
fn tuning_picture_marks_every_evaluation_and_names_every_node() {
    let r = report();
    let svg = tuning_svg(&r).unwrap();
    let (circles, texts) = inspect(&svg);
    // A dot per evaluation (baseline + 3 trials), the ring on the chosen one
    // and the ring in the legend.
    assert_eq!(circles, r.evaluations + 2);
    for n in &r.nodes {
        assert_eq!(count_exact(&texts, &n.name), 1, "{} in {texts:?}", n.name);
    }
    assert!(texts.contains(&"evaluation (0 = fp32 baseline)".to_string()));
    assert!(texts.contains(&"metric (higher is better)".to_string()));
    assert!(texts.contains(&"sensitivity".to_string()));
    assert!(texts.contains(&"% of fp32 time".to_string()));
    assert!(texts.contains(&"chosen plan".to_string()));
    // 1% below the 0.98 baseline.
    assert!(texts.contains(&"tolerance 0.9702".to_string()), "{texts:?}");
    assert!(any_contains(&texts, "Tuning: passed"));
    assert!(texts.contains(&"f32 (1)".to_string()));
    assert!(texts.contains(&"bf16 (4)".to_string()));
    assert!(texts.contains(&"fp32: fc0".to_string()));
}

#[test]
fn tuning_picture_lower_is_better_and_absolute_tolerance() {
    let mut r = report();
    r.higher_is_better = false;
    r.tolerance = "0.05 absolute".into();
    r.baseline = 0.1;
    r.final_metric = 0.12;
    r.trials = vec![trial(1, &[], 0.3, false), trial(2, &["fc0"], 0.12, true)];
    r.evaluations = 3;
    let (circles, texts) = inspect(&tuning_svg(&r).unwrap());
    assert_eq!(circles, 3 + 2);
    assert!(texts.contains(&"metric (lower is better)".to_string()));
    assert!(texts.contains(&"tolerance 0.1500".to_string()), "{texts:?}");
}

#[test]
fn tuning_picture_without_trials_or_nodes() {
    let mut r = report();
    r.trials.clear();
    r.evaluations = 1;
    r.final_metric = r.baseline;
    for n in &mut r.nodes {
        n.dtype = "f32".into();
    }
    let (circles, texts) = inspect(&tuning_svg(&r).unwrap());
    // The baseline, ringed: with every node in fp32 it is the returned plan
    // (and the legend's ring).
    assert_eq!(circles, 3);
    assert!(any_contains(&texts, "no trials"));

    r.nodes.clear();
    let (_, texts) = inspect(&tuning_svg(&r).unwrap());
    assert!(any_contains(&texts, "no lowerable nodes"));

    // An unreadable tolerance and NaN metrics still give a picture.
    r.tolerance = "something else".into();
    r.baseline = f64::NAN;
    r.final_metric = f64::NAN;
    r.status = TuneStatus::ToleranceNotMet;
    r.trials = vec![trial(1, &[], f64::NAN, false)];
    r.evaluations = 2;
    let (circles, texts) = inspect(&tuning_svg(&r).unwrap());
    // Two dots, the ring on trial 1 (its fp32 set and NaN metric match the
    // returned plan's) and the legend's ring.
    assert_eq!(circles, 4);
    assert!(texts.contains(&"NaN".to_string()));
    assert!(texts.contains(&"no tolerance line".to_string()));
}

#[test]
fn tuning_picture_thins_out_names_of_large_graphs() {
    let mut r = report();
    r.nodes = (0..400)
        .map(|i| {
            node(
                &format!("layer{i}"),
                if i % 50 == 7 { "f32" } else { "bf16" },
                Some(1e-4 * (1 + i % 17) as f64),
                1e-5,
                5e-6,
            )
        })
        .collect();
    r.trials = vec![trial(1, &[], 0.5, false)];
    r.evaluations = 2;
    let (_, texts) = inspect(&tuning_svg(&r).unwrap());
    let shown = texts.iter().filter(|t| t.starts_with("layer")).count();
    assert!(shown > 20 && shown < 400, "{shown} names");
    // The fallen-back nodes are named first, so all of them are.
    for i in (0..400).filter(|i| i % 50 == 7) {
        assert_eq!(count_exact(&texts, &format!("layer{i}")), 1, "layer{i}");
    }
    assert!(any_contains(&texts, "names shown"));
}
