//! What `tune`, `run` and `bench` share: loading a model (built-in or ONNX),
//! reading a safetensors file of inputs and checking it against the graph's
//! inputs, and writing output files atomically.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tempfile::NamedTempFile;

use crate::demo::{self, DemoModel};
use crate::graph::{
    CompileOptions, CompiledModel, DType, Dim, GemmAccumulation, Graph, PrecisionPlan, Tensor,
    Weights,
};
use crate::onnx::{self, ImportOptions};

use super::{CliError, ModelSource};

/// Name of the optional labels tensor in an eval-data file.
pub const LABELS: &str = "labels";

/// A model ready to compile, with the built-in demo's data when it is one.
pub struct LoadedModel {
    /// The op-graph.
    pub graph: Graph,
    /// How the user named it (`builtin:folded_off100` or the path).
    pub label: String,
    /// The demo model (weights, test images, labels) for `builtin`.
    pub demo: Option<DemoModel>,
    /// Things the importer wants the user to know.
    pub notes: Vec<String>,
}

/// Loads a built-in model or imports an ONNX file.
pub fn load_model(src: &ModelSource) -> Result<LoadedModel, CliError> {
    match src {
        ModelSource::Builtin(key) => {
            let m = demo::load(key).map_err(|e| CliError::Other(format!("model {src}: {e}")))?;
            let graph = demo::graph_from_weights(&m.weights)
                .map_err(|e| CliError::Other(format!("model {src}: {e}")))?;
            Ok(LoadedModel {
                graph,
                label: src.to_string(),
                demo: Some(m),
                notes: Vec::new(),
            })
        }
        ModelSource::File(path) => {
            let imported = onnx::load(path, &ImportOptions::default()).map_err(|e| {
                // Io errors already start with the path.
                let msg = e.to_string();
                if msg.starts_with(&path.display().to_string()) {
                    CliError::Other(format!("cannot load model {msg}"))
                } else {
                    CliError::Other(format!("cannot load model {}: {msg}", path.display()))
                }
            })?;
            Ok(LoadedModel {
                graph: imported.graph,
                label: path.display().to_string(),
                demo: None,
                notes: imported.notes,
            })
        }
    }
}

/// Reads and validates a plan file against a graph.
pub fn load_plan(path: &Path, graph: &Graph) -> Result<PrecisionPlan, CliError> {
    let plan = PrecisionPlan::load(path).map_err(|e| match e {
        crate::graph::GraphError::Io { .. } => CliError::Other(format!("cannot read plan {e}")),
        _ => CliError::Other(format!("plan {}: {e}", path.display())),
    })?;
    plan.validate(graph).map_err(|e| {
        CliError::Other(format!(
            "plan {} does not fit the model: {e}",
            path.display()
        ))
    })?;
    Ok(plan)
}

/// Inputs for every graph input, in graph order, plus labels when present.
#[derive(Clone, Debug)]
pub struct DataSet {
    /// One tensor per graph input, in graph input order.
    pub inputs: Vec<(String, Tensor)>,
    /// The `labels` tensor as i64, when the file has one.
    pub labels: Option<Vec<i64>>,
    /// Size of the leading dimension of the first input (the batch).
    pub batch: usize,
    /// Tensors in the file that are neither graph inputs nor `labels`.
    pub ignored: Vec<String>,
}

impl DataSet {
    /// `(name, tensor)` references, as `CompiledModel::run` takes them.
    pub fn refs(&self) -> Vec<(&str, &Tensor)> {
        self.inputs.iter().map(|(n, t)| (n.as_str(), t)).collect()
    }

    /// The first `n` samples (along the leading dimension) of every input,
    /// for inputs whose leading dimension is the batch; others whole.
    pub fn head(&self, graph: &Graph, n: usize) -> Vec<(String, Tensor)> {
        self.inputs
            .iter()
            .map(|(name, t)| {
                let batched = graph
                    .value_id(name)
                    .map(|id| matches!(graph.value(id).shape.first(), Some(Dim::Symbolic(_))))
                    .unwrap_or(false);
                match (batched, t.shape().first()) {
                    (true, Some(&b)) if b > n => (name.clone(), slice_rows(t, n)),
                    _ => (name.clone(), t.clone()),
                }
            })
            .collect()
    }
}

/// The first `n` rows (leading dimension) of a tensor.
fn slice_rows(t: &Tensor, n: usize) -> Tensor {
    let mut shape = t.shape().to_vec();
    let row_bytes = t.byte_len() / shape[0].max(1);
    shape[0] = n;
    // Same dtype, consistent shape and byte count: cannot fail.
    Tensor::from_bytes(t.dtype(), &shape, &t.bytes()[..n * row_bytes])
        .expect("a row prefix of a valid tensor is valid")
}

fn dims(shape: &[Dim]) -> String {
    crate::graph::shape_string(shape)
}

/// Reads a safetensors file and matches it to the graph's inputs by name:
/// every input present, with the declared dtype and a shape that fits the
/// declared one (fixed dims equal, a symbolic name the same size wherever it
/// appears). `labels` (i64 or i32, one per sample) is taken when present.
pub fn load_data(path: &Path, graph: &Graph, what: &str) -> Result<DataSet, CliError> {
    let shown = path.display();
    let w = Weights::load(path).map_err(|e| match e {
        crate::graph::GraphError::Io { .. } => CliError::Other(format!("cannot read {what} {e}")),
        _ => CliError::Other(format!("{what} {shown}: {e}")),
    })?;
    let mut inputs = Vec::new();
    let mut symbols: HashMap<String, (usize, String)> = HashMap::new();
    let available = || {
        let names: Vec<&str> = w.names().collect();
        if names.is_empty() {
            "it has no tensors".to_string()
        } else {
            format!("it has: {}", names.join(", "))
        }
    };
    for &id in graph.inputs() {
        let info = graph.value(id);
        let declared = format!("{} {}", dims(&info.shape), info.dtype);
        let t = w.tensor(&info.name).map_err(|_| {
            CliError::Other(format!(
                "{what} {shown} has no tensor `{}` for graph input `{}` {declared} ({})",
                info.name,
                info.name,
                available()
            ))
        })?;
        if t.dtype() != info.dtype {
            return Err(CliError::Other(format!(
                "{what} {shown}: tensor `{}` is {}, graph input `{}` is {declared}",
                info.name,
                t.dtype(),
                info.name
            )));
        }
        let shape_err = || {
            CliError::Other(format!(
                "{what} {shown}: tensor `{}` has shape {:?}, graph input `{}` is {declared}",
                info.name,
                t.shape(),
                info.name
            ))
        };
        if t.shape().len() != info.shape.len() {
            return Err(shape_err());
        }
        for (d, &n) in info.shape.iter().zip(t.shape()) {
            match d {
                Dim::Fixed(k) if *k != n => return Err(shape_err()),
                Dim::Fixed(_) => {}
                Dim::Symbolic(s) => match symbols.get(s) {
                    Some((m, other)) if *m != n => {
                        return Err(CliError::Other(format!(
                            "{what} {shown}: dimension `{s}` is {m} in `{other}` but {n} in `{}`",
                            info.name
                        )));
                    }
                    Some(_) => {}
                    None => {
                        symbols.insert(s.clone(), (n, info.name.clone()));
                    }
                },
            }
        }
        inputs.push((info.name.clone(), t.clone()));
    }
    let batch = inputs
        .first()
        .and_then(|(_, t)| t.shape().first().copied())
        .unwrap_or(1);
    let labels = match w.tensor(LABELS) {
        Ok(t)
            if graph
                .value_id(LABELS)
                .is_none_or(|id| !graph.inputs().contains(&id)) =>
        {
            let v = match t.dtype() {
                DType::I64 | DType::I32 => t.to_i64_vec(),
                other => {
                    return Err(CliError::Other(format!(
                        "{what} {shown}: `labels` is {other}; it must be i64 or i32"
                    )));
                }
            };
            if t.shape().len() != 1 || v.len() != batch {
                return Err(CliError::Other(format!(
                    "{what} {shown}: `labels` has shape {:?}; expected [{batch}] (one per sample)",
                    t.shape()
                )));
            }
            Some(v)
        }
        _ => None,
    };
    let ignored = w
        .names()
        .filter(|n| *n != LABELS && !inputs.iter().any(|(i, _)| i == n))
        .map(str::to_string)
        .collect();
    Ok(DataSet {
        inputs,
        labels,
        batch,
        ignored,
    })
}

/// The demo's eval data: the 540 test images with their labels.
pub fn demo_data(m: &DemoModel) -> Result<DataSet, CliError> {
    let x = Tensor::from_f32(&[m.test.n, demo::NUM_FEATURES], &m.test.inputs)
        .map_err(|e| CliError::Other(format!("demo data: {e}")))?;
    Ok(DataSet {
        inputs: vec![(demo::INPUT_NAME.to_string(), x)],
        labels: Some(m.test.labels.clone()),
        batch: m.test.n,
        ignored: Vec::new(),
    })
}

/// An output file reserved before the work starts: a temporary file in the
/// destination's folder (so an unwritable destination fails fast and the
/// final rename stays on one file system), persisted by [`Output::commit`].
pub struct Output {
    path: PathBuf,
    tmp: NamedTempFile,
}

impl Output {
    /// Reserves `path`, refusing any of `inputs` (a failure must never touch
    /// an input, and writing over one would).
    pub fn reserve(path: &Path, what: &str, inputs: &[&Path]) -> Result<Output, CliError> {
        if let Ok(target) = fs::canonicalize(path) {
            for input in inputs {
                if fs::canonicalize(input).is_ok_and(|i| i == target) {
                    return Err(CliError::Other(format!(
                        "{what} {} is also an input; choose another path",
                        path.display()
                    )));
                }
            }
            if target.is_dir() {
                return Err(CliError::Other(format!(
                    "{what} {} is a directory",
                    path.display()
                )));
            }
        }
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !dir.is_dir() {
            return Err(CliError::Other(format!(
                "cannot write {what} {}: folder {} does not exist",
                path.display(),
                dir.display()
            )));
        }
        // tempfile's error names the random temporary path; the kind is
        // what the user needs (e.g. permission denied).
        let tmp = NamedTempFile::new_in(dir).map_err(|e| {
            CliError::Other(format!(
                "cannot write {what} {}: {} (folder {})",
                path.display(),
                e.kind(),
                dir.display()
            ))
        })?;
        Ok(Output {
            path: path.to_path_buf(),
            tmp,
        })
    }

    /// Writes `bytes` and renames the temporary file over the destination.
    pub fn commit(mut self, bytes: &[u8]) -> Result<(), CliError> {
        let path = self.path.display().to_string();
        let fail = |e: std::io::Error| CliError::Other(format!("cannot write {path}: {e}"));
        self.tmp.write_all(bytes).map_err(fail)?;
        self.tmp.as_file().sync_all().map_err(fail)?;
        self.tmp.persist(&self.path).map_err(|e| fail(e.error))?;
        Ok(())
    }

    /// The destination path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Compiles a plan with its bf16 GEMMs multiplying as `bf16_gemm` says,
/// naming the plan in the error.
pub fn compile(
    graph: &Graph,
    plan: &PrecisionPlan,
    bf16_gemm: GemmAccumulation,
    what: &str,
) -> Result<CompiledModel, CliError> {
    let options = CompileOptions {
        bf16_gemm,
        ..Default::default()
    };
    graph
        .compile_with(plan, &options)
        .map_err(|e| CliError::Other(format!("compiling the {what} plan: {e}")))
}

/// Median seconds of `reps` runs (after one warm-up), stopping early once
/// `budget` is spent (after at least 3).
pub fn median_latency(
    model: &CompiledModel,
    data: &[(&str, &Tensor)],
    reps: usize,
    budget: Duration,
) -> Result<f64, CliError> {
    // Each run's outputs go back to the model's pool, as a serving loop
    // would hand them back (`CompiledModel::recycle`).
    let run = || {
        model
            .run(data)
            .map(|outputs| model.recycle(outputs.into_values()))
            .map_err(|e| CliError::Other(format!("running the model: {e}")))
    };
    run()?;
    let start = Instant::now();
    let mut times = Vec::with_capacity(reps);
    for i in 0..reps.max(1) {
        let t = Instant::now();
        run()?;
        times.push(t.elapsed().as_secs_f64());
        if i >= 2 && start.elapsed() >= budget {
            break;
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Plan summary, e.g. `2 bf16, 1 f32` over the graph's lowerable nodes.
pub fn plan_counts(graph: &Graph, plan: &PrecisionPlan) -> String {
    let mut counts: Vec<(&'static str, usize)> = Vec::new();
    for n in graph.lowerable_nodes() {
        let d = plan.dtype_of(&n.name).name();
        match counts.iter_mut().find(|(k, _)| *k == d) {
            Some((_, c)) => *c += 1,
            None => counts.push((d, 1)),
        }
    }
    counts
        .iter()
        .map(|(d, c)| format!("{c} {d}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Deterministic inputs for a graph with symbolic dims set to `batch` (the
/// first) or 1 (others): floats in [-1, 1), integers and booleans zero.
pub fn synthetic_inputs(graph: &Graph, batch: usize) -> Result<DataSet, CliError> {
    let inputs = graph
        .synthetic_inputs(batch)
        .map_err(|e| CliError::Other(format!("synthetic inputs: {e}")))?;
    let b = inputs
        .first()
        .and_then(|(_, t)| t.shape().first().copied())
        .unwrap_or(1);
    Ok(DataSet {
        inputs,
        labels: None,
        batch: b,
        ignored: Vec::new(),
    })
}
