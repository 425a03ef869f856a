//! The built-in demo: the UCI handwritten digits (scikit-learn's copy) and
//! three 64-128-10 ReLU MLPs trained on them, with the test split and the
//! accuracies each precision policy is expected to reach.
//!
//! The files under `data/` (see `data/README.md` for provenance) are embedded
//! in the binary, so the demo works from any directory with no setup.
//!
//! ```
//! let model = mixprec::demo::load("folded_off100").unwrap();
//! assert_eq!(model.test.n, 540);
//! assert_eq!(model.test.inputs.len(), 540 * 64);
//! assert_eq!(model.weights.l0_weight.len(), 128 * 64);
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::PathBuf;

use serde::Deserialize;

/// Keys of the built-in models, as named in `data/digits_mlp.json`.
pub const MODEL_KEYS: [&str; 3] = ["plain", "folded_off100", "folded_off1000"];

/// The model the demo tunes (its folded input scaler makes all-bf16 fail).
pub const DEFAULT_MODEL: &str = "folded_off100";

/// `digits.csv.gz`, embedded.
pub const DIGITS_CSV_GZ: &[u8] = include_bytes!("../data/digits.csv.gz");
/// `digits_mlp.safetensors`, embedded: tensors `{key}.l0.weight` `[128, 64]`,
/// `{key}.l0.bias` `[128]`, `{key}.l1.weight` `[10, 128]`, `{key}.l1.bias` `[10]`, f32.
pub const MLP_SAFETENSORS: &[u8] = include_bytes!("../data/digits_mlp.safetensors");
/// `digits_mlp.json`, embedded.
pub const MLP_JSON: &str = include_str!("../data/digits_mlp.json");

/// Pixels per image (8 x 8).
pub const NUM_FEATURES: usize = 64;
/// Hidden units of every demo MLP.
pub const NUM_HIDDEN: usize = 128;
/// Classes (digits 0..9).
pub const NUM_CLASSES: usize = 10;
/// Images in the data set.
pub const NUM_IMAGES: usize = 1797;

/// The folder the demo files were vendored into (in the source tree).
pub fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data")
}

/// Errors loading the demo; with the embedded files these mean the files
/// under `data/` were changed or damaged before the build.
#[derive(Debug)]
pub enum DemoError {
    /// The model key is not one of [`MODEL_KEYS`].
    UnknownModel(String),
    /// `digits.csv.gz` could not be decompressed or parsed.
    Digits(String),
    /// `digits_mlp.json` could not be parsed or is inconsistent.
    Description(String),
    /// `digits_mlp.safetensors` lacks a tensor or has the wrong shape or dtype.
    Weights(String),
    /// The op-graph of a demo model could not be built (the weights have
    /// the documented shapes, so this means the graph layer rejected them).
    Graph(crate::graph::GraphError),
}

impl fmt::Display for DemoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DemoError::UnknownModel(key) => write!(
                f,
                "unknown built-in model {key:?}; built-in models: {}",
                MODEL_KEYS.join(", ")
            ),
            DemoError::Digits(msg) => write!(f, "demo data digits.csv.gz: {msg}"),
            DemoError::Description(msg) => write!(f, "demo file digits_mlp.json: {msg}"),
            DemoError::Weights(msg) => write!(f, "demo weights digits_mlp.safetensors: {msg}"),
            DemoError::Graph(e) => write!(f, "building the demo graph: {e}"),
        }
    }
}

impl std::error::Error for DemoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DemoError::Graph(e) => Some(e),
            _ => None,
        }
    }
}

/// The whole digits data set: raw pixels 0..16 and labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digits {
    /// `n x 64` pixels, row-major, each 0..=16.
    pub pixels: Vec<u8>,
    /// `n` labels 0..=9.
    pub labels: Vec<i64>,
    /// Number of images.
    pub n: usize,
}

/// Decompresses and parses the embedded `digits.csv.gz`.
pub fn load_digits() -> Result<Digits, DemoError> {
    parse_digits_gz(DIGITS_CSV_GZ)
}

/// Parses a gzip-compressed digits CSV: per line, 64 integers 0..=16 then a label 0..=9.
pub fn parse_digits_gz(gz: &[u8]) -> Result<Digits, DemoError> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_string(&mut text)
        .map_err(|e| DemoError::Digits(format!("cannot decompress: {e}")))?;
    let mut pixels = Vec::with_capacity(NUM_IMAGES * NUM_FEATURES);
    let mut labels = Vec::with_capacity(NUM_IMAGES);
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let bad = |what: String| DemoError::Digits(format!("line {}: {what}", i + 1));
        let fields: Vec<&str> = line.trim().split(',').collect();
        if fields.len() != NUM_FEATURES + 1 {
            return Err(bad(format!(
                "{} fields, expected {}",
                fields.len(),
                NUM_FEATURES + 1
            )));
        }
        for f in &fields[..NUM_FEATURES] {
            match f.trim().parse::<u8>() {
                Ok(p) if p <= 16 => pixels.push(p),
                _ => return Err(bad(format!("pixel {f:?} is not an integer 0..=16"))),
            }
        }
        let label = fields[NUM_FEATURES];
        match label.trim().parse::<i64>() {
            Ok(l) if (0..NUM_CLASSES as i64).contains(&l) => labels.push(l),
            _ => return Err(bad(format!("label {label:?} is not an integer 0..=9"))),
        }
    }
    Ok(Digits {
        n: labels.len(),
        pixels,
        labels,
    })
}

/// `digits_mlp.json`: training notes, the test split and each model's description.
#[derive(Clone, Debug, Deserialize)]
pub struct DemoDescription {
    /// How the models were trained.
    pub description: String,
    /// How the test split was drawn.
    pub split: String,
    /// Indices (into the 1797 images) of the 540 test images, in evaluation order.
    pub test_indices: Vec<usize>,
    /// Per model key.
    pub models: BTreeMap<String, ModelDescription>,
}

/// One model's entry in `digits_mlp.json`.
#[derive(Clone, Debug, Deserialize)]
pub struct ModelDescription {
    /// The input transform in words.
    pub input: String,
    /// Added after scaling: `input = pixels * input_scale + input_offset`.
    pub input_offset: f32,
    /// Multiplies the raw pixels.
    pub input_scale: f32,
    /// Expected test accuracy per precision policy: `fp32`, `bf16`, `fp16`,
    /// `l0_fp32+l1_bf16`, `l0_fp16+l1_bf16`, `l0_bf16+l1_fp32`.
    pub test_accuracy: BTreeMap<String, f64>,
    /// Layer-1 outputs (logits) of the first 8 test images in fp32.
    pub fp32_test_logits_first8: Vec<Vec<f32>>,
    /// fp32 predicted class of every test image.
    pub fp32_test_pred: Vec<i64>,
}

impl ModelDescription {
    /// The expected accuracy under a policy name (see [`Self::test_accuracy`]).
    pub fn expected_accuracy(&self, policy: &str) -> Option<f64> {
        self.test_accuracy.get(policy).copied()
    }
}

/// Parses the embedded `digits_mlp.json`.
pub fn description() -> Result<DemoDescription, DemoError> {
    let d: DemoDescription =
        serde_json::from_str(MLP_JSON).map_err(|e| DemoError::Description(e.to_string()))?;
    if let Some(&bad) = d.test_indices.iter().find(|&&i| i >= NUM_IMAGES) {
        return Err(DemoError::Description(format!(
            "test index {bad} is out of range (0..{NUM_IMAGES})"
        )));
    }
    Ok(d)
}

/// One MLP's f32 weights, `y = relu(x W0^T + b0) W1^T + b1`.
#[derive(Clone, Debug, PartialEq)]
pub struct MlpWeights {
    /// Layer 0 weight, `[128, 64]` row-major (`[out, in]`).
    pub l0_weight: Vec<f32>,
    /// Layer 0 bias, `[128]`.
    pub l0_bias: Vec<f32>,
    /// Layer 1 weight, `[10, 128]` row-major.
    pub l1_weight: Vec<f32>,
    /// Layer 1 bias, `[10]`.
    pub l1_bias: Vec<f32>,
}

/// The tensor names of a model in `digits_mlp.safetensors`, in the order
/// l0.weight, l0.bias, l1.weight, l1.bias.
pub fn tensor_names(key: &str) -> [String; 4] {
    ["l0.weight", "l0.bias", "l1.weight", "l1.bias"].map(|t| format!("{key}.{t}"))
}

/// Reads one model's weights from the embedded safetensors file.
pub fn load_weights(key: &str) -> Result<MlpWeights, DemoError> {
    check_key(key)?;
    let st = safetensors::SafeTensors::deserialize(MLP_SAFETENSORS)
        .map_err(|e| DemoError::Weights(e.to_string()))?;
    let [w0, b0, w1, b1] = tensor_names(key);
    let get = |name: &str, shape: &[usize]| -> Result<Vec<f32>, DemoError> {
        let t = st
            .tensor(name)
            .map_err(|e| DemoError::Weights(format!("{name}: {e}")))?;
        if t.dtype() != safetensors::Dtype::F32 || t.shape() != shape {
            return Err(DemoError::Weights(format!(
                "{name} is {:?} {:?}, expected F32 {shape:?}",
                t.dtype(),
                t.shape()
            )));
        }
        Ok(t.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    };
    Ok(MlpWeights {
        l0_weight: get(&w0, &[NUM_HIDDEN, NUM_FEATURES])?,
        l0_bias: get(&b0, &[NUM_HIDDEN])?,
        l1_weight: get(&w1, &[NUM_CLASSES, NUM_HIDDEN])?,
        l1_bias: get(&b1, &[NUM_CLASSES])?,
    })
}

/// Model inputs and labels for a set of images.
#[derive(Clone, Debug, PartialEq)]
pub struct DemoData {
    /// `n x 64` f32 inputs, already transformed for the model
    /// (`pixels * input_scale + input_offset`).
    pub inputs: Vec<f32>,
    /// `n` labels 0..=9.
    pub labels: Vec<i64>,
    /// Number of images.
    pub n: usize,
}

/// A built-in model with its weights, description and test data.
#[derive(Clone, Debug)]
pub struct DemoModel {
    /// The model key.
    pub key: String,
    /// Its entry in `digits_mlp.json` (input transform, expected accuracies, fp32 logits).
    pub description: ModelDescription,
    /// Its weights.
    pub weights: MlpWeights,
    /// The 540 test images, transformed for this model, in `test_indices` order.
    pub test: DemoData,
}

fn check_key(key: &str) -> Result<(), DemoError> {
    if MODEL_KEYS.contains(&key) {
        Ok(())
    } else {
        Err(DemoError::UnknownModel(key.to_string()))
    }
}

/// Applies a model's input transform to the images at `indices`.
///
/// # Panics
/// If an index is out of range for `digits` (a programmer error; the test
/// indices are checked by [`description`]).
pub fn transform_inputs(digits: &Digits, indices: &[usize], model: &ModelDescription) -> DemoData {
    let mut inputs = Vec::with_capacity(indices.len() * NUM_FEATURES);
    for &i in indices {
        let row = &digits.pixels[i * NUM_FEATURES..(i + 1) * NUM_FEATURES];
        // Pixels are small integers, scales are 1/16 or 1 and offsets are
        // integers, so this f32 arithmetic is exact and matches the training code.
        inputs.extend(
            row.iter()
                .map(|&p| f32::from(p) * model.input_scale + model.input_offset),
        );
    }
    DemoData {
        inputs,
        labels: indices.iter().map(|&i| digits.labels[i]).collect(),
        n: indices.len(),
    }
}

/// Loads a built-in model (`plain`, `folded_off100` or `folded_off1000`) with
/// its weights and its test split.
pub fn load(key: &str) -> Result<DemoModel, DemoError> {
    check_key(key)?;
    let desc = description()?;
    let model = desc
        .models
        .get(key)
        .cloned()
        .ok_or_else(|| DemoError::Description(format!("no entry for model {key:?}")))?;
    let digits = load_digits()?;
    if digits.n != NUM_IMAGES {
        return Err(DemoError::Digits(format!(
            "{} images, expected {NUM_IMAGES}",
            digits.n
        )));
    }
    let test = transform_inputs(&digits, &desc.test_indices, &model);
    Ok(DemoModel {
        key: key.to_string(),
        weights: load_weights(key)?,
        description: model,
        test,
    })
}

/// Name of the demo graphs' input (`[batch, 64]` f32).
pub const INPUT_NAME: &str = "x";

/// Node names of the demo graphs, in execution order: `l0` (Linear 64->128),
/// `relu`, `l1` (Linear 128->10, whose output is the logits).
pub const NODE_NAMES: [&str; 3] = ["l0", "relu", "l1"];

/// The op-graph of a model's weights: `x [batch, 64] -> l0 (Linear) -> relu
/// -> l1 (Linear) -> logits [batch, 10]`, all f32.
pub fn graph_from_weights(w: &MlpWeights) -> Result<crate::graph::Graph, DemoError> {
    use crate::graph::{DType, Dim, GraphBuilder, Tensor};
    let g = |e| DemoError::Graph(e);
    let t = |shape: &[usize], v: &[f32]| Tensor::from_f32(shape, v).map_err(g);
    let mut b = GraphBuilder::new();
    let x = b.input(
        INPUT_NAME,
        &[Dim::sym("batch"), NUM_FEATURES.into()],
        DType::F32,
    );
    let h = b
        .linear(
            NODE_NAMES[0],
            x,
            &t(&[NUM_HIDDEN, NUM_FEATURES], &w.l0_weight)?,
            Some(&t(&[NUM_HIDDEN], &w.l0_bias)?),
        )
        .map_err(g)?;
    let h = b.relu(NODE_NAMES[1], h).map_err(g)?;
    let y = b
        .linear(
            NODE_NAMES[2],
            h,
            &t(&[NUM_CLASSES, NUM_HIDDEN], &w.l1_weight)?,
            Some(&t(&[NUM_CLASSES], &w.l1_bias)?),
        )
        .map_err(g)?;
    b.output(y);
    b.finish().map_err(g)
}

/// The op-graph of a built-in model (see [`graph_from_weights`]).
///
/// ```
/// let g = mixprec::demo::graph("folded_off100").unwrap();
/// assert_eq!(g.input_names(), ["x"]);
/// assert!(g.node("l0").is_some());
/// ```
pub fn graph(key: &str) -> Result<crate::graph::Graph, DemoError> {
    graph_from_weights(&load_weights(key)?)
}

/// `n` training images (not in the test split), transformed for `model`: the
/// calibration batch the demo's tuner ranks sensitivities and measures
/// latency on, so the test images are used only by the metric.
pub fn calibration_data(model: &ModelDescription, n: usize) -> Result<DemoData, DemoError> {
    let desc = description()?;
    let test: std::collections::HashSet<usize> = desc.test_indices.iter().copied().collect();
    let train: Vec<usize> = (0..NUM_IMAGES)
        .filter(|i| !test.contains(i))
        .take(n)
        .collect();
    let digits = load_digits()?;
    if digits.n != NUM_IMAGES {
        return Err(DemoError::Digits(format!(
            "{} images, expected {NUM_IMAGES}",
            digits.n
        )));
    }
    Ok(transform_inputs(&digits, &train, model))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain f32 forward pass, independent of the kernels and the graph.
    fn logits(w: &MlpWeights, x: &[f32]) -> Vec<f32> {
        let hidden: Vec<f32> = (0..NUM_HIDDEN)
            .map(|j| {
                let row = &w.l0_weight[j * NUM_FEATURES..(j + 1) * NUM_FEATURES];
                let s: f32 = row.iter().zip(x).map(|(a, b)| a * b).sum();
                (s + w.l0_bias[j]).max(0.0)
            })
            .collect();
        (0..NUM_CLASSES)
            .map(|c| {
                let row = &w.l1_weight[c * NUM_HIDDEN..(c + 1) * NUM_HIDDEN];
                row.iter().zip(&hidden).map(|(a, b)| a * b).sum::<f32>() + w.l1_bias[c]
            })
            .collect()
    }

    /// First-order scale of the rounding error of logit `c`:
    /// sum_j |W1[c,j]| * (sum_q |W0[j,q] x[q]| + |b0[j]|).
    fn cancelled_scale(w: &MlpWeights, x: &[f32], c: usize) -> f32 {
        (0..NUM_HIDDEN)
            .map(|j| {
                let row = &w.l0_weight[j * NUM_FEATURES..(j + 1) * NUM_FEATURES];
                let s: f32 = row.iter().zip(x).map(|(a, b)| (a * b).abs()).sum();
                w.l1_weight[c * NUM_HIDDEN + j].abs() * (s + w.l0_bias[j].abs())
            })
            .sum()
    }

    fn argmax(v: &[f32]) -> i64 {
        let mut best = 0;
        for (i, &x) in v.iter().enumerate() {
            if x > v[best] {
                best = i;
            }
        }
        best as i64
    }

    #[test]
    fn digits_parse_completely() {
        let d = load_digits().unwrap();
        assert_eq!(d.n, NUM_IMAGES);
        assert_eq!(d.pixels.len(), NUM_IMAGES * NUM_FEATURES);
        // Every class is present (the split is stratified over them).
        for c in 0..10 {
            assert!(d.labels.contains(&c));
        }
        // First image of scikit-learn's digits is a 0 whose first row is 0,0,5,13,9,1,0,0.
        assert_eq!(&d.pixels[..8], &[0, 0, 5, 13, 9, 1, 0, 0]);
        assert_eq!(d.labels[0], 0);
    }

    #[test]
    fn fp32_forward_reproduces_the_published_accuracy_and_logits() {
        for key in MODEL_KEYS {
            let m = load(key).unwrap();
            assert_eq!(m.test.n, 540);
            let mut correct = 0;
            let mut preds = Vec::new();
            for i in 0..m.test.n {
                let x = &m.test.inputs[i * NUM_FEATURES..(i + 1) * NUM_FEATURES];
                let y = logits(&m.weights, x);
                if i < 8 {
                    for (c, (&got, &want)) in y
                        .iter()
                        .zip(&m.description.fp32_test_logits_first8[i])
                        .enumerate()
                    {
                        // The JSON's logits came from another f32 summation
                        // order; in the folded models layer 0 cancels terms
                        // of ~1e3..1e4, so the order alone moves a logit by
                        // up to a few ulps of that scale (2e-3 measured for
                        // folded_off1000). Allow 1e-4 plus 2 ulps of it.
                        let tol = 1e-4 + 2.0 * f32::EPSILON * cancelled_scale(&m.weights, x, c);
                        assert!(
                            (got - want).abs() <= tol,
                            "{key} image {i} class {c}: {got} vs {want} (tolerance {tol})"
                        );
                    }
                }
                let p = argmax(&y);
                preds.push(p);
                correct += usize::from(p == m.test.labels[i]);
            }
            // Compare counts: serde_json's default float parsing may be one
            // ulp off the JSON's decimal, so equal fractions can differ in f64.
            let expected = m.description.expected_accuracy("fp32").unwrap();
            let expected_correct = (expected * m.test.n as f64).round() as usize;
            assert_eq!(correct, expected_correct, "{key}");
            assert_eq!(preds, m.description.fp32_test_pred, "{key}");
        }
    }

    #[test]
    fn input_transform_follows_the_json() {
        let plain = load("plain").unwrap();
        let off = load("folded_off1000").unwrap();
        assert_eq!(plain.description.input_scale, 0.0625);
        for (p, o) in plain.test.inputs.iter().zip(&off.test.inputs) {
            // Same raw pixel behind both: p = px / 16, o = px + 1000.
            assert_eq!(p * 16.0 + 1000.0, *o);
        }
        assert_eq!(plain.test.labels, off.test.labels);
    }

    #[test]
    fn graph_in_f32_predicts_what_the_json_says() {
        for key in MODEL_KEYS {
            let m = load(key).unwrap();
            let g = graph(key).unwrap();
            let model = g.compile(&crate::graph::PrecisionPlan::new()).unwrap();
            let x =
                crate::graph::Tensor::from_f32(&[m.test.n, NUM_FEATURES], &m.test.inputs).unwrap();
            let out = model.run_ordered(&[(INPUT_NAME, &x)]).unwrap();
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].shape(), [m.test.n, NUM_CLASSES]);
            let logits = out[0].to_f32_vec();
            let preds: Vec<i64> = logits.chunks(NUM_CLASSES).map(argmax).collect();
            assert_eq!(preds, m.description.fp32_test_pred, "{key}");
        }
        let lowerable: Vec<String> = graph(DEFAULT_MODEL)
            .unwrap()
            .lowerable_nodes()
            .into_iter()
            .map(|n| n.name)
            .collect();
        assert!(lowerable.contains(&"l0".to_string()), "{lowerable:?}");
        assert!(lowerable.contains(&"l1".to_string()), "{lowerable:?}");
    }

    #[test]
    fn calibration_images_are_outside_the_test_split() {
        let m = load(DEFAULT_MODEL).unwrap();
        let cal = calibration_data(&m.description, 32).unwrap();
        assert_eq!(cal.n, 32);
        assert_eq!(cal.inputs.len(), 32 * NUM_FEATURES);
        let test_rows: std::collections::HashSet<Vec<u32>> = m
            .test
            .inputs
            .chunks(NUM_FEATURES)
            .map(|r| r.iter().map(|v| v.to_bits()).collect())
            .collect();
        // Duplicate images exist in the data set, so count rather than require none.
        let shared = cal
            .inputs
            .chunks(NUM_FEATURES)
            .filter(|r| test_rows.contains(&r.iter().map(|v| v.to_bits()).collect::<Vec<_>>()))
            .count();
        assert!(shared < 4, "{shared} calibration images equal a test image");
    }

    #[test]
    fn unknown_model_and_bad_csv_are_errors() {
        assert!(matches!(load("nope"), Err(DemoError::UnknownModel(_))));
        assert!(matches!(
            parse_digits_gz(b"not gzip"),
            Err(DemoError::Digits(_))
        ));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, b"1,2,3\n").unwrap();
        let err = parse_digits_gz(&gz.finish().unwrap()).unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }
}
