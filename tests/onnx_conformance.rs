//! The ONNX project's backend test data (`../shared/onnx-backend`, see its
//! README): every case whose ops mixprec imports runs in f32 against the
//! reference outputs, then in all-bf16 and all-f16 plans.
//!
//! The data is found through `MIXPREC_ONNX_BACKEND_DIR` (CI sets it), or
//! `../shared/onnx-backend` next to the repository; without it the test
//! prints a skip line and passes.

use std::path::{Path, PathBuf};

use mixprec::graph::{DType, FloatType, PrecisionPlan, Tensor};
use mixprec::onnx::{self, ImportOptions};

/// f32: `|out - ref| <= ATOL + RTOL * |ref|` (numpy's assert_allclose), as the
/// ONNX backend runner, with atol raised from 1e-7 to 1e-5 because mixprec's
/// exp/tanh/erf kernels are polynomial approximations with ~1e-7 relative error.
const F32_RTOL: f32 = 1e-3;
const F32_ATOL: f32 = 1e-5;

/// Low-precision plans: error relative to the output's scale (max |ref|),
/// per element `|out - ref| <= tol * (max|ref| + |ref|) + ATOL`. bf16 keeps 8
/// significant bits (2^-9 = 2e-3 relative rounding per stored value), f16 11;
/// a node rounds its inputs, weights and output, and errors add over a few
/// nodes, so the bounds are 2e-2 for bf16 and 4e-3 for f16.
const BF16_TOL: f32 = 2e-2;
const F16_TOL: f32 = 4e-3;

/// Cases that do not run, with the reason and a piece of the error message
/// the importer gives (so a case failing in a new way is noticed).
const EXPECTED_SKIP: &[(&str, &str, &str)] = &[
    (
        "test_AvgPool3d",
        "3-D pooling (the op-graph pools 1-D and 2-D)",
        "3-D pooling",
    ),
    ("test_AvgPool3d_stride", "3-D pooling", "3-D pooling"),
    (
        "test_AvgPool3d_stride1_pad0_gpu_input",
        "3-D pooling",
        "3-D pooling",
    ),
    ("test_MaxPool3d", "3-D pooling", "3-D pooling"),
    ("test_MaxPool3d_stride", "3-D pooling", "3-D pooling"),
    (
        "test_MaxPool3d_stride_padding",
        "3-D pooling",
        "3-D pooling",
    ),
    (
        "test_Conv3d",
        "3-D convolution (the op-graph convolves 1-D and 2-D)",
        "3-D convolution",
    ),
    ("test_Conv3d_dilated", "3-D convolution", "3-D convolution"),
    (
        "test_Conv3d_dilated_strided",
        "3-D convolution",
        "3-D convolution",
    ),
    ("test_Conv3d_groups", "3-D convolution", "3-D convolution"),
    ("test_Conv3d_no_bias", "3-D convolution", "3-D convolution"),
    ("test_Conv3d_stride", "3-D convolution", "3-D convolution"),
    (
        "test_Conv3d_stride_padding",
        "3-D convolution",
        "3-D convolution",
    ),
    (
        "test_ConvTranspose2d",
        "ConvTranspose is not an op-graph op",
        "ConvTranspose",
    ),
    (
        "test_ConvTranspose2d_no_bias",
        "ConvTranspose is not an op-graph op",
        "ConvTranspose",
    ),
    (
        "test_operator_convtranspose",
        "ConvTranspose is not an op-graph op",
        "ConvTranspose",
    ),
    (
        "test_gradient_of_add",
        "training op ai.onnx.preview.training:Gradient",
        "Gradient",
    ),
    (
        "test_gradient_of_add_and_mul",
        "training op ai.onnx.preview.training:Gradient",
        "Gradient",
    ),
    ("test_sequence_model1", "sequence types", "Sequence"),
    ("test_sequence_model2", "sequence types", "Sequence"),
    ("test_sequence_model3", "sequence types", "Sequence"),
    ("test_sequence_model4", "sequence types", "Sequence"),
    ("test_sequence_model5", "sequence types", "Sequence"),
    ("test_sequence_model6", "sequence types", "Sequence"),
    ("test_sequence_model7", "sequence types", "Sequence"),
    ("test_sequence_model8", "sequence types", "Sequence"),
    ("test_shrink", "Shrink is not supported", "Shrink"),
    (
        "test_strnorm_model_monday_casesensintive_lower",
        "string tensors",
        "STRING",
    ),
    (
        "test_strnorm_model_monday_casesensintive_nochangecase",
        "string tensors",
        "STRING",
    ),
    (
        "test_strnorm_model_monday_casesensintive_upper",
        "string tensors",
        "STRING",
    ),
    (
        "test_strnorm_model_monday_empty_output",
        "string tensors",
        "STRING",
    ),
    (
        "test_strnorm_model_monday_insensintive_upper_twodim",
        "string tensors",
        "STRING",
    ),
    (
        "test_strnorm_model_nostopwords_nochangecase",
        "string tensors",
        "STRING",
    ),
];

fn data_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("MIXPREC_ONNX_BACKEND_DIR") {
        let d = PathBuf::from(d);
        return d.is_dir().then_some(d);
    }
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/onnx-backend");
    d.is_dir().then_some(d)
}

fn cases(root: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for folder in ["pytorch-converted", "pytorch-operator", "simple"] {
        let Ok(rd) = std::fs::read_dir(root.join(folder)) else {
            continue;
        };
        for e in rd.flatten() {
            if e.path().join("model.onnx").is_file() {
                v.push(e.path());
            }
        }
    }
    v.sort();
    v
}

fn load_set(dir: &Path, prefix: &str) -> Result<Vec<onnx::HostTensor>, String> {
    let mut v = Vec::new();
    for i in 0.. {
        let p = dir.join("test_data_set_0").join(format!("{prefix}_{i}.pb"));
        if !p.is_file() {
            break;
        }
        v.push(onnx::load_tensor(&p, 1 << 30).map_err(|e| e.to_string())?.1);
    }
    Ok(v)
}

/// Worst violation ratio of `|out - ref| <= bound(ref)` (<= 1 passes).
fn compare(
    out: &Tensor,
    want: &onnx::HostTensor,
    bound: &dyn Fn(f32, f32) -> f32,
) -> Result<f32, String> {
    if out.shape() != want.shape.as_slice() {
        return Err(format!(
            "shape {:?}, expected {:?}",
            out.shape(),
            want.shape
        ));
    }
    let (o, w) = (out.to_f32_vec(), want.to_f32_vec());
    let scale = w.iter().fold(0f32, |m, x| m.max(x.abs()));
    let mut worst = 0f32;
    for (a, b) in o.iter().zip(&w) {
        let err = (a - b).abs();
        if a.is_nan() != b.is_nan() {
            return Err(format!("NaN mismatch: {a} vs {b}"));
        }
        if !a.is_nan() {
            worst = worst.max(err / bound(*b, scale));
        }
    }
    Ok(worst)
}

/// Imports and runs one case under `ty`; returns the worst error ratio.
fn run_case(dir: &Path, ty: FloatType) -> Result<f32, String> {
    let m =
        onnx::load(dir.join("model.onnx"), &ImportOptions::default()).map_err(|e| e.to_string())?;
    let inputs = load_set(dir, "input")?;
    let outputs = load_set(dir, "output")?;
    let tensors: Vec<Tensor> = inputs
        .iter()
        .map(|t| t.to_tensor())
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    if tensors.len() != m.inputs.len() {
        return Err(format!(
            "{} inputs given, model has {}",
            tensors.len(),
            m.inputs.len()
        ));
    }
    let feeds: Vec<(&str, &Tensor)> = m.inputs.iter().map(String::as_str).zip(&tensors).collect();
    let plan = PrecisionPlan::all(&m.graph, ty);
    let model = m
        .graph
        .compile(&plan)
        .map_err(|e| format!("compile: {e}"))?;
    // A first run on NaN-filled float inputs leaves the buffers the model
    // keeps for later runs dirty, so the real run below also proves that no
    // op relies on fresh (zeroed) output memory. Its result is not checked.
    let dirty: Vec<Tensor> = tensors
        .iter()
        .map(|t| match t.dtype() {
            DType::F32 => Tensor::from_f32(
                t.shape(),
                vec![f32::NAN; t.shape().iter().product::<usize>()],
            )
            .unwrap(),
            _ => t.clone(),
        })
        .collect();
    let dirty_feeds: Vec<(&str, &Tensor)> =
        m.inputs.iter().map(String::as_str).zip(&dirty).collect();
    let _ = model.run(&dirty_feeds);
    let got = model.run(&feeds).map_err(|e| format!("run: {e}"))?;
    let bound: Box<dyn Fn(f32, f32) -> f32> = match ty {
        FloatType::F32 => Box::new(|r: f32, _| F32_ATOL + F32_RTOL * r.abs()),
        FloatType::Bf16 => Box::new(|r: f32, s: f32| F32_ATOL + BF16_TOL * (s + r.abs())),
        FloatType::F16 => Box::new(|r: f32, s: f32| F32_ATOL + F16_TOL * (s + r.abs())),
    };
    let mut worst = 0f32;
    for (name, want) in m.outputs.iter().zip(&outputs) {
        let out = got.get(name).ok_or_else(|| format!("no output `{name}`"))?;
        let w = compare(out, want, bound.as_ref()).map_err(|e| format!("output `{name}`: {e}"))?;
        if w > 1.0 {
            return Err(format!("output `{name}`: error {w:.2}x the tolerance"));
        }
        worst = worst.max(w);
    }
    Ok(worst)
}

#[test]
fn onnx_backend_conformance() {
    let Some(root) = data_dir() else {
        println!("skipping ONNX conformance: MIXPREC_ONNX_BACKEND_DIR not set/not found");
        return;
    };
    let mut failures = Vec::new();
    let (mut ran, mut passed, mut skipped) = (0, 0, 0);
    for dir in cases(&root) {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let skip = EXPECTED_SKIP.iter().find(|s| s.0 == name);
        let r = run_case(&dir, FloatType::F32);
        match (skip, r) {
            (Some((_, reason, needle)), Err(e)) => {
                skipped += 1;
                println!("skip {name}: {reason} ({e})");
                if !e.contains(needle) {
                    failures.push(format!("{name}: expected a `{needle}` error, got: {e}"));
                }
            }
            (Some(_), Ok(_)) => failures.push(format!(
                "{name}: listed as not running but passes; remove it from EXPECTED_SKIP"
            )),
            (None, Err(e)) => {
                ran += 1;
                failures.push(format!("{name}: f32: {e}"));
            }
            (None, Ok(w)) => {
                ran += 1;
                passed += 1;
                let mut line = format!("pass {name}: f32 {w:.3}");
                for ty in [FloatType::Bf16, FloatType::F16] {
                    match run_case(&dir, ty) {
                        Ok(w) => line += &format!(", {ty:?} {w:.3}"),
                        Err(e) => failures.push(format!("{name}: {ty:?}: {e}")),
                    }
                }
                println!("{line}");
            }
        }
    }
    println!("ONNX conformance: {ran} run, {passed} passed, {skipped} expected skips");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
