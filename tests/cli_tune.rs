//! End-to-end tests of `mixprec tune`, `run` and `bench --model` through the
//! built binary: the built-in demo (all-bf16 rejected, final plan within
//! tolerance, complete report), `run` under the saved plan against the same
//! plan compiled in-process, an ONNX model from the backend test data, and
//! every bad-input case (non-zero exit, one `error:` line, no output file).

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mixprec::demo;
use mixprec::graph::{
    CompileOptions, DType, Dim, FloatType, GemmAccumulation, PrecisionPlan, Tensor,
};
use mixprec::kernels::{Isa, active_isa};
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use serde_json::Value;

fn mixprec(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mixprec"))
        .args(args)
        .env_remove("MIXPREC_MAX_CPU_ISA")
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("the mixprec binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Non-zero exit, exactly one stderr line starting with `error:`, and no
/// panic or backtrace.
fn assert_one_error_line(o: &Output, what: &str) -> String {
    let err = stderr(o);
    assert!(!o.status.success(), "{what}: exited 0; stderr {err}");
    let error_lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(error_lines.len(), 1, "{what}: {err}");
    assert!(error_lines[0].starts_with("error: "), "{what}: {err}");
    for bad in ["panicked", "backtrace", "RUST_BACKTRACE"] {
        assert!(!err.contains(bad), "{what}: {err}");
    }
    error_lines[0].to_string()
}

fn files_in(dir: &Path) -> BTreeSet<PathBuf> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The bits of the little-endian f32 values in `bytes`.
fn f32_bits(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Writes a safetensors file of `(name, dtype, shape, bytes)`.
fn write_st(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(&str, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (*n, TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, &None, path).unwrap();
}

/// Reads every tensor of a safetensors file as (dtype, shape, bytes).
fn read_st(path: &Path) -> HashMap<String, (Dtype, Vec<usize>, Vec<u8>)> {
    let bytes = fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                (v.dtype(), v.shape().to_vec(), v.data().to_vec()),
            )
        })
        .collect()
}

/// Top-1 accuracy of logits `[n, 10]` against labels, computed here.
fn top1(logits: &[f32], labels: &[i64]) -> f64 {
    let hits = logits
        .chunks(demo::NUM_CLASSES)
        .zip(labels)
        .filter(|(row, l)| {
            let mut best = 0;
            for (j, v) in row.iter().enumerate() {
                if *v > row[best] {
                    best = j;
                }
            }
            best as i64 == **l
        })
        .count();
    hits as f64 / labels.len() as f64
}

struct Tuned {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    plan: PathBuf,
    report: Value,
    stdout: String,
}

/// `mixprec tune` with no model or data options: the built-in demo.
fn tune_demo() -> Tuned {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let plan = dir.join("plan.json");
    let report = dir.join("report.json");
    let o = mixprec(&["tune", "--plan-out", p(&plan), "--report-out", p(&report)]);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    // The progress bar is hidden when stderr is not a terminal.
    assert_eq!(stderr(&o), "", "stderr of a successful scripted run");
    let report: Value = serde_json::from_str(&fs::read_to_string(&report).unwrap()).unwrap();
    Tuned {
        _dir: tmp,
        dir,
        plan,
        report,
        stdout: stdout(&o),
    }
}

#[test]
fn demo_tune_rejects_all_bf16_and_keeps_layer0_in_fp32() {
    let t = tune_demo();
    let r = &t.report;
    let m = demo::load(demo::DEFAULT_MODEL).unwrap();
    let expected_fp32 = m.description.expected_accuracy("fp32").unwrap();

    for key in [
        "status",
        "baseline",
        "final",
        "evaluations",
        "speedup",
        "nodes",
    ] {
        assert!(r.get(key).is_some(), "report.json lacks `{key}`: {r}");
    }
    let baseline = r["baseline"].as_f64().unwrap();
    let fin = r["final"].as_f64().unwrap();
    assert!(
        (baseline - expected_fp32).abs() < 0.004,
        "baseline {baseline}"
    );
    assert_eq!(r["status"], "passed");
    assert!(fin >= baseline * 0.99 - 1e-12, "final {fin} vs {baseline}");
    assert_eq!(r["bf16_gemm"], "auto", "the default GEMM mode is reported");

    // The first trial is all-bf16 and fails by far more than 1%.
    let trials = r["trials"].as_array().unwrap();
    assert_eq!(trials[0]["description"], "all bf16");
    assert_eq!(trials[0]["passed"], false);
    let all_bf16 = trials[0]["metric"].as_f64().unwrap();
    assert!(all_bf16 < baseline * 0.99, "all-bf16 {all_bf16}");
    assert_eq!(
        r["evaluations"].as_u64().unwrap() as usize,
        trials.len() + 1,
        "evaluations = baseline + trials"
    );
    assert!(r["speedup"].as_f64().is_some_and(|s| s > 0.0), "{r}");

    // Every lowerable node of the graph is reported, with its dtype.
    let graph = demo::graph(demo::DEFAULT_MODEL).unwrap();
    let nodes = r["nodes"].as_array().unwrap();
    let reported: BTreeSet<&str> = nodes.iter().map(|n| n["name"].as_str().unwrap()).collect();
    let lowerable: BTreeSet<String> = graph
        .lowerable_nodes()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(
        reported,
        lowerable
            .iter()
            .map(String::as_str)
            .collect::<BTreeSet<_>>()
    );
    for n in nodes {
        assert!(n["op_type"].as_str().is_some_and(|s| !s.is_empty()), "{n}");
        assert!(
            ["f32", "bf16", "f16"].contains(&n["dtype"].as_str().unwrap()),
            "{n}"
        );
    }
    let dtype = |name: &str| {
        nodes.iter().find(|n| n["name"] == name).unwrap()["dtype"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(dtype("l0"), "f32");
    assert_eq!(dtype("l1"), "bf16");
    assert!(
        nodes.iter().find(|n| n["name"] == "l0").unwrap()["reason"].is_string(),
        "the fallback says why"
    );

    // The saved plan agrees with the report, and recomputing the accuracy
    // under it here gives the reported final metric.
    let plan = PrecisionPlan::load(&t.plan).unwrap();
    for n in nodes {
        let name = n["name"].as_str().unwrap();
        assert_eq!(plan.dtype_of(name).name(), n["dtype"].as_str().unwrap());
    }
    let x = Tensor::from_f32(&[m.test.n, demo::NUM_FEATURES], &m.test.inputs).unwrap();
    let out = graph
        .compile(&plan)
        .unwrap()
        .run_ordered(&[("x", &x)])
        .unwrap();
    // Compare counts: the JSON float may be one ulp off after parsing.
    let acc = top1(&out[0].to_f32_vec(), &m.test.labels);
    assert!(
        (acc - fin).abs() < 1e-9,
        "recomputed {acc} vs reported {fin}"
    );

    // The table shows the rejected trial, the fallback and the speedup.
    let s = &t.stdout;
    assert!(
        s.lines()
            .any(|l| l.contains("all bf16") && l.trim_end().ends_with("fail")),
        "{s}"
    );
    assert!(s.contains("status:        passed"), "{s}");
    assert!(
        s.lines().any(|l| l.trim_start().starts_with("l0 (Gemm)")),
        "{s}"
    );
    assert!(s.contains("speedup:"), "{s}");
    assert!(s.contains("plan written to"), "{s}");
    // Only the two requested files were written (no temporaries left).
    assert_eq!(
        files_in(&t.dir),
        BTreeSet::from([t.dir.join("plan.json"), t.dir.join("report.json")])
    );
}

#[test]
fn run_with_the_saved_plan_matches_in_process() {
    let t = tune_demo();
    let m = demo::load(demo::DEFAULT_MODEL).unwrap();
    let n = 100;
    let x: Vec<f32> = m.test.inputs[..n * demo::NUM_FEATURES].to_vec();
    let input = t.dir.join("in.safetensors");
    let output = t.dir.join("out.safetensors");
    write_st(
        &input,
        &[("x", Dtype::F32, vec![n, demo::NUM_FEATURES], f32_bytes(&x))],
    );
    let input_before = fs::read(&input).unwrap();
    let o = mixprec(&[
        "run",
        "--model",
        "builtin",
        "--plan",
        p(&t.plan),
        "--input",
        p(&input),
        "--output",
        p(&output),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(fs::read(&input).unwrap(), input_before, "input untouched");

    let graph = demo::graph(demo::DEFAULT_MODEL).unwrap();
    let plan = PrecisionPlan::load(&t.plan).unwrap();
    assert_eq!(
        plan.dtype_of("l1"),
        FloatType::Bf16,
        "fixture: a mixed plan"
    );
    let xt = Tensor::from_f32(&[n, demo::NUM_FEATURES], &x).unwrap();
    let expected = graph
        .compile(&plan)
        .unwrap()
        .run_ordered(&[("x", &xt)])
        .unwrap();
    let got = read_st(&output);
    let names = graph.output_names();
    assert_eq!(got.len(), names.len());
    for (name, want) in names.iter().zip(&expected) {
        let (dtype, shape, bytes) = &got[*name];
        assert_eq!(*dtype, Dtype::F32, "outputs are written in f32");
        assert_eq!(shape.as_slice(), want.shape());
        let want_bits: Vec<u32> = want.to_f32_vec().iter().map(|v| v.to_bits()).collect();
        assert_eq!(
            f32_bits(bytes),
            want_bits,
            "output `{name}` differs bitwise"
        );
    }
    // And the plan matters: fp32 outputs differ from the plan's.
    let fp32 = graph
        .compile(&PrecisionPlan::new())
        .unwrap()
        .run_ordered(&[("x", &xt)])
        .unwrap();
    assert_ne!(fp32[0].to_f32_vec(), expected[0].to_f32_vec());

    // `--bf16-gemm widen` runs bf16 layers with f32 FMAs on widened
    // operands: the bits of the plan compiled so in-process, which differ
    // from the default's where the CPU has VDPBF16PS (all-bf16: layer 0's
    // folded scaler cancels a large bias, so its sums' last bits show).
    let all_bf16 = PrecisionPlan::all(&graph, FloatType::Bf16);
    let plan_path = t.dir.join("all-bf16.json");
    fs::write(&plan_path, all_bf16.to_json()).unwrap();
    let run_cli = |mode: &str| {
        let out = t.dir.join(format!("{mode}.safetensors"));
        let o = mixprec(&[
            "run",
            "--model",
            "builtin",
            "--plan",
            p(&plan_path),
            "--input",
            p(&input),
            "--output",
            p(&out),
            "--bf16-gemm",
            mode,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        f32_bits(&read_st(&out)[names[0]].2)
    };
    let in_process = |bf16_gemm| {
        let options = CompileOptions {
            bf16_gemm,
            ..Default::default()
        };
        let out = graph
            .compile_with(&all_bf16, &options)
            .unwrap()
            .run_ordered(&[("x", &xt)])
            .unwrap();
        out[0]
            .to_f32_vec()
            .iter()
            .map(|v| v.to_bits())
            .collect::<Vec<u32>>()
    };
    let (widened, auto) = (run_cli("widen"), run_cli("auto"));
    assert_eq!(widened, in_process(GemmAccumulation::WidenToF32), "widen");
    assert_eq!(auto, in_process(GemmAccumulation::Auto), "auto");
    if active_isa() >= Isa::Avx512CoreBf16 {
        assert_ne!(widened, auto, "widening differs from VDPBF16PS");
    }
}

#[test]
fn bench_model_reports_fp32_and_plan_rows() {
    let t = tune_demo();
    let o = mixprec(&[
        "bench",
        "--model",
        "builtin",
        "--plan",
        p(&t.plan),
        "--batch",
        "64",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        rows.len(),
        4,
        "latency and throughput for fp32 and the plan"
    );
    for r in &rows {
        assert_eq!(r["kernel"], "model");
        assert_eq!(r["isa"], mixprec::kernels::isa::active_isa().name());
        assert!(r["peak_fraction"].is_null());
        assert!(
            r["value"]
                .as_f64()
                .is_some_and(|v| v > 0.0 && v.is_finite())
        );
        assert!(r["shape"].as_str().unwrap().contains("batch=64"), "{r}");
    }
    let latency = |plan: &str| {
        rows.iter()
            .find(|r| r["unit"] == "ms (median)" && r["shape"].as_str().unwrap().contains(plan))
            .unwrap_or_else(|| panic!("no latency row for {plan}"))["value"]
            .as_f64()
            .unwrap()
    };
    let tput = rows
        .iter()
        .find(|r| r["unit"] == "samples/s" && r["shape"].as_str().unwrap().contains("plan=fp32"))
        .unwrap()["value"]
        .as_f64()
        .unwrap();
    // Throughput is the batch over the same median latency.
    let lat = latency("plan=fp32");
    assert!((tput - 64.0 / (lat / 1e3)).abs() <= 1e-6 * tput);
    assert!(latency(p(&t.plan)) > 0.0);
}

/// A run of `args` (relative paths resolved in `dir`) must fail cleanly and
/// leave `dir` as it was.
fn assert_fails_cleanly(dir: &Path, args: &[&str], what: &str, phrase: &str) {
    let before = files_in(dir);
    let o = Command::new(env!("CARGO_BIN_EXE_mixprec"))
        .args(args)
        .current_dir(dir)
        .env_remove("MIXPREC_MAX_CPU_ISA")
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let line = assert_one_error_line(&o, what);
    assert!(
        line.to_lowercase().contains(&phrase.to_lowercase()),
        "{what}: `{line}` lacks `{phrase}`"
    );
    assert_eq!(files_in(dir), before, "{what}: files changed");
}

#[test]
fn bad_inputs_fail_with_one_error_line_and_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let x: Vec<f32> = (0..4 * 64).map(|i| (i % 17) as f32 + 100.0).collect();
    write_st(
        &dir.join("in.safetensors"),
        &[("x", Dtype::F32, vec![4, 64], f32_bytes(&x))],
    );
    write_st(
        &dir.join("noinput.safetensors"),
        &[("y", Dtype::F32, vec![4, 64], f32_bytes(&x))],
    );
    write_st(
        &dir.join("shape.safetensors"),
        &[("x", Dtype::F32, vec![4, 63], f32_bytes(&x[..4 * 63]))],
    );
    let ints: Vec<u8> = (0..4 * 64).flat_map(|i: i32| i.to_le_bytes()).collect();
    write_st(
        &dir.join("dtype.safetensors"),
        &[("x", Dtype::I32, vec![4, 64], ints)],
    );
    let labels: Vec<u8> = [1i64, 2, 3].iter().flat_map(|v| v.to_le_bytes()).collect();
    write_st(
        &dir.join("labels.safetensors"),
        &[
            ("x", Dtype::F32, vec![4, 64], f32_bytes(&x)),
            ("labels", Dtype::I64, vec![3], labels),
        ],
    );
    fs::write(
        dir.join("bad.onnx"),
        b"\x08\x07\x12\xffnot a protobuf at all",
    )
    .unwrap();
    fs::write(dir.join("bad.json"), b"{\"nodes\": {\"l0\": ").unwrap();
    fs::write(dir.join("unknown.json"), b"{\"nodes\": {\"l7\": \"bf16\"}}").unwrap();
    fs::write(
        dir.join("baddtype.json"),
        b"{\"nodes\": {\"l0\": \"int8\"}}",
    )
    .unwrap();
    fs::write(
        dir.join("garbage.safetensors"),
        b"\xff\xff\xff\xff\xff\xff\xff\x7f{",
    )
    .unwrap();
    let run = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut v = vec!["run", "--output", "out.safetensors"];
        v.extend_from_slice(extra);
        v
    };
    let cases: Vec<(Vec<&str>, &str, &str)> = vec![
        (
            run(&["--model", "missing.onnx", "--input", "in.safetensors"]),
            "missing model file",
            "missing.onnx",
        ),
        (
            vec![
                "tune",
                "--model",
                "missing.onnx",
                "--data",
                "in.safetensors",
                "--plan-out",
                "p.json",
            ],
            "tune: missing model file",
            "missing.onnx",
        ),
        (
            run(&["--model", "bad.onnx", "--input", "in.safetensors"]),
            "malformed ONNX bytes",
            "bad.onnx",
        ),
        (
            run(&["--plan", "bad.json", "--input", "in.safetensors"]),
            "malformed plan JSON",
            "bad.json",
        ),
        (
            run(&["--plan", "baddtype.json", "--input", "in.safetensors"]),
            "plan with an unknown dtype",
            "int8",
        ),
        (
            run(&["--plan", "unknown.json", "--input", "in.safetensors"]),
            "plan naming an unknown node",
            "l7",
        ),
        (
            run(&["--plan", "nothere.json", "--input", "in.safetensors"]),
            "missing plan file",
            "nothere.json",
        ),
        (
            run(&["--input", "noinput.safetensors"]),
            "data missing an input",
            "no tensor `x`",
        ),
        (
            run(&["--input", "shape.safetensors"]),
            "data with the wrong shape",
            "[4, 63]",
        ),
        (
            run(&["--input", "dtype.safetensors"]),
            "data with the wrong dtype",
            "i32",
        ),
        (
            run(&["--input", "garbage.safetensors"]),
            "malformed safetensors",
            "garbage.safetensors",
        ),
        (
            run(&["--input", "missing.safetensors"]),
            "missing input file",
            "missing.safetensors",
        ),
        (
            vec![
                "tune",
                "--data",
                "noinput.safetensors",
                "--report-out",
                "r.json",
            ],
            "tune: data missing an input",
            "no tensor `x`",
        ),
        (
            vec![
                "tune",
                "--data",
                "shape.safetensors",
                "--plan-out",
                "p.json",
            ],
            "tune: data with the wrong shape",
            "[4, 63]",
        ),
        (
            vec!["tune", "--data", "in.safetensors", "--plan-out", "p.json"],
            "tune: top1 without labels",
            "labels",
        ),
        (
            vec![
                "tune",
                "--data",
                "labels.safetensors",
                "--plan-out",
                "p.json",
            ],
            "tune: labels of the wrong length",
            "labels",
        ),
        (vec!["tune", "--bogus"], "unknown option", "--bogus"),
        (vec!["tune", "--max-trials", "0"], "zero max trials", "0"),
        (
            vec![
                "run",
                "--input",
                "in.safetensors",
                "--output",
                "nodir/out.safetensors",
            ],
            "unwritable output dir (run)",
            "nodir",
        ),
        (
            vec![
                "tune",
                "--plan-out",
                "nodir/plan.json",
                "--report-out",
                "r.json",
            ],
            "unwritable output dir (tune)",
            "nodir",
        ),
        (
            vec![
                "run",
                "--input",
                "in.safetensors",
                "--output",
                "in.safetensors",
            ],
            "output over the input",
            "input",
        ),
    ];
    for (args, what, phrase) in &cases {
        assert_fails_cleanly(dir, args, what, phrase);
    }
    // Nothing named like an output appeared in any case.
    for f in ["out.safetensors", "p.json", "r.json"] {
        assert!(!dir.join(f).exists(), "{f} exists");
    }
}

/// The ONNX backend test data, when the environment points at it.
fn onnx_model(case: &str) -> Option<PathBuf> {
    let base = std::env::var_os("MIXPREC_ONNX_BACKEND_DIR").map(PathBuf::from)?;
    let path = base.join("pytorch-converted").join(case).join("model.onnx");
    path.is_file().then_some(path)
}

/// Deterministic values in [-1, 1).
fn stream(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

#[test]
fn onnx_model_tunes_and_runs() {
    let Some(model) = onnx_model("test_Linear") else {
        println!("skipping ONNX CLI test: MIXPREC_ONNX_BACKEND_DIR not set or test_Linear absent");
        return;
    };
    let imported = mixprec::onnx::load(&model, &mixprec::onnx::ImportOptions::default()).unwrap();
    let graph = imported.graph;
    // Eval data for every graph input, by name, shaped as declared.
    let mut tensors = Vec::new();
    let mut inputs = Vec::new();
    for (k, &id) in graph.inputs().iter().enumerate() {
        let info = graph.value(id);
        assert_eq!(info.dtype, DType::F32, "fixture: float inputs");
        let shape: Vec<usize> = info
            .shape
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => *n,
                Dim::Symbolic(_) => 16,
            })
            .collect();
        let v = stream(7 + k as u64, shape.iter().product());
        inputs.push((info.name.clone(), Tensor::from_f32(&shape, &v).unwrap()));
        tensors.push((info.name.clone(), Dtype::F32, shape, f32_bytes(&v)));
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("eval.safetensors");
    let named: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), *d, s.clone(), b.clone()))
        .collect();
    write_st(&data, &named);
    let plan = tmp.path().join("plan.json");
    let report = tmp.path().join("report.json");

    for metric in ["cosine", "mse", "agreement"] {
        let o = mixprec(&[
            "tune",
            "--model",
            p(&model),
            "--data",
            p(&data),
            "--metric",
            metric,
            "--dtype",
            "bf16,fp16",
            "--plan-out",
            p(&plan),
            "--report-out",
            p(&report),
        ]);
        assert!(o.status.success(), "{metric}: {}", stderr(&o));
        let r: Value = serde_json::from_str(&fs::read_to_string(&report).unwrap()).unwrap();
        assert_eq!(r["metric"], metric);
        assert_eq!(r["status"], "passed", "{metric}: {r}");
        let nodes = r["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), graph.lowerable_nodes().len());
        let (baseline, fin) = (
            r["baseline"].as_f64().unwrap(),
            r["final"].as_f64().unwrap(),
        );
        match metric {
            // fp32 against itself: cosine 1, mse 0, full agreement.
            "mse" => {
                assert_eq!(baseline, 0.0);
                assert_eq!(r["higher_is_better"], false);
                assert!(r["tolerance"].as_str().unwrap().contains("absolute"), "{r}");
                assert!(fin >= 0.0);
            }
            _ => {
                assert!((baseline - 1.0).abs() < 1e-9, "{metric}: {baseline}");
                assert!(fin >= 0.99 * baseline - 1e-12, "{metric}: {fin}");
            }
        }
    }

    // `run` under the last saved plan equals the same plan compiled here.
    let saved = PrecisionPlan::load(&plan).unwrap();
    let out = tmp.path().join("out.safetensors");
    let o = mixprec(&[
        "run",
        "--model",
        p(&model),
        "--plan",
        p(&plan),
        "--input",
        p(&data),
        "--output",
        p(&out),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let refs: Vec<(&str, &Tensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let expected = graph.compile(&saved).unwrap().run_ordered(&refs).unwrap();
    let got = read_st(&out);
    for (name, want) in graph.output_names().iter().zip(&expected) {
        let (dtype, shape, bytes) = &got[*name];
        assert_eq!(*dtype, Dtype::F32);
        assert_eq!(shape.as_slice(), want.shape());
        let want: Vec<u8> = f32_bytes(&want.to_f32_vec());
        assert_eq!(bytes, &want, "output `{name}`");
    }

    // top1 needs labels, which this data does not have.
    let o = mixprec(&["tune", "--model", p(&model), "--data", p(&data)]);
    let line = assert_one_error_line(&o, "top1 without labels");
    assert!(line.contains("labels"), "{line}");
}

#[test]
fn tune_svg_draws_the_picture_and_a_failed_picture_keeps_plan_and_report() {
    let tmp = tempfile::tempdir().unwrap();
    let (plan, report, svg) = (
        tmp.path().join("plan.json"),
        tmp.path().join("report.json"),
        tmp.path().join("tuning.svg"),
    );
    let args = |svg: &Path| {
        mixprec(&[
            "tune",
            "--plan-out",
            p(&plan),
            "--report-out",
            p(&report),
            "--svg",
            p(svg),
        ])
    };
    let o = args(&svg);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = fs::read_to_string(&svg).unwrap();
    let doc = roxmltree::Document::parse(&text).expect("the picture is well-formed XML");
    for node in demo::NODE_NAMES {
        assert!(
            doc.descendants()
                .any(|n| n.text().map(str::trim) == Some(node)),
            "node {node} is labelled"
        );
    }

    // A picture that cannot be written is one clear error, after the plan
    // and the report are already in place.
    fs::remove_file(&plan).unwrap();
    fs::remove_file(&report).unwrap();
    let o = args(&tmp.path().join("no-such-dir").join("tuning.svg"));
    let err = assert_one_error_line(&o, "unwritable picture");
    assert!(err.contains("no-such-dir"), "{err}");
    assert!(plan.exists() && report.exists(), "plan and report survive");
}

#[test]
fn bench_model_profile_breaks_each_plan_down() {
    let o = mixprec(&["bench", "--model", "builtin", "--batch", "32", "--profile"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let m = demo::load(demo::DEFAULT_MODEL).unwrap();
    let graph = demo::graph_from_weights(&m.weights).unwrap();
    let nodes: BTreeSet<String> = graph.nodes().iter().map(|n| n.name.clone()).collect();
    for plan in ["fp32", "all-bf16"] {
        let head = format!("plan {plan}: ");
        let at = text
            .find(&head)
            .unwrap_or_else(|| panic!("no profile of {plan} in\n{text}"));
        let section: Vec<&str> = text[at..].lines().take_while(|l| !l.is_empty()).collect();
        let total: f64 = section[0][head.len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let ops_at = section.iter().position(|l| l.ends_with("op type")).unwrap();
        let nodes_at = section
            .iter()
            .position(|l| l.ends_with("slowest steps"))
            .unwrap();
        // The op types' times add up to (at most) the whole run's.
        let by_op: f64 = section[ops_at + 1..nodes_at]
            .iter()
            .map(|l| l.split_whitespace().next().unwrap().parse::<f64>().unwrap())
            .sum();
        assert!(
            by_op > 0.0 && by_op <= total * 1.001 + 1e-3,
            "{plan}: {by_op} vs {total}"
        );
        // The slowest steps are the graph's nodes (or inserted casts), slowest first.
        let steps: Vec<(f64, &str)> = section[nodes_at + 1..]
            .iter()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f[0].parse().unwrap(), f[3])
            })
            .collect();
        assert!(!steps.is_empty() && steps.len() <= 10, "{plan}: {steps:?}");
        assert!(
            steps.windows(2).all(|w| w[0].0 >= w[1].0),
            "{plan}: {steps:?}"
        );
        for (_, name) in &steps {
            assert!(
                nodes.contains(*name) || name.starts_with("cast:"),
                "{plan}: {name} is not a node"
            );
        }
    }
}
