//! `mixprec tune`: load a model and eval data, run [`crate::tune::autotune`]
//! with the chosen metric, print a summary table, and save the plan and the
//! report.

use std::io::Write;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mixprec_kernels::FloatType;
use serde_json::{Value, json};

use crate::demo;
use crate::graph::{CompiledModel, GraphError, PrecisionPlan, Tensor};
use crate::tune::{
    self, MixedPrecisionConfig, Tolerance, TuneError, TuneStatus, TuningConfig, TuningReport,
};

use super::model::{self, DataSet, LoadedModel, Output};
use super::{CliError, LowDtype, Metric, ModelSource, Strategy, TuneArgs};

/// Calibration samples taken from the head of user eval data (for the
/// sensitivity ranking and the tuner's own latency figures).
const CALIBRATION_SAMPLES: usize = 16;
/// Calibration images of the built-in demo (training images, not test ones).
const DEMO_CALIBRATION_IMAGES: usize = 32;

impl From<Strategy> for tune::Strategy {
    fn from(s: Strategy) -> Self {
        match s {
            Strategy::Default => tune::Strategy::Default,
            Strategy::Sequential => tune::Strategy::Sequential,
            Strategy::OpWise => tune::Strategy::OpWise,
        }
    }
}

impl From<LowDtype> for FloatType {
    fn from(d: LowDtype) -> Self {
        match d {
            LowDtype::Bf16 => FloatType::Bf16,
            LowDtype::Fp16 => FloatType::F16,
        }
    }
}

impl Metric {
    /// Lower-case name, as the command line spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Metric::Top1 => "top1",
            Metric::Agreement => "agreement",
            Metric::Cosine => "cosine",
            Metric::Mse => "mse",
        }
    }

    /// Whether a larger value is better (all but `mse`).
    pub const fn higher_is_better(self) -> bool {
        !matches!(self, Metric::Mse)
    }
}

/// The float outputs of a run, as f32, with their shapes.
fn float_outputs(outs: &[Tensor]) -> Vec<(Vec<usize>, Vec<f32>)> {
    outs.iter()
        .filter(|t| t.dtype().is_float())
        .map(|t| (t.shape().to_vec(), t.to_f32_vec()))
        .collect()
}

/// Index of the largest element (the first one on ties; NaN never wins
/// against a number after it).
fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(0, |b, (j, v)| if *v > row[b] { j } else { b })
}

/// Top-1 class per row of the last axis.
fn predictions(shape: &[usize], v: &[f32]) -> Vec<usize> {
    let classes = shape.last().copied().unwrap_or(1).max(1);
    v.chunks(classes).map(argmax).collect()
}

/// Evaluates a compiled model on the eval data under one metric.
pub struct Evaluator {
    metric: Metric,
    data: DataSet,
    /// fp32 outputs (for agreement, cosine, mse).
    reference: Vec<(Vec<usize>, Vec<f32>)>,
    /// Allowed mse: `tolerable_loss * mean(fp32 output^2)`.
    mse_scale: f64,
}

impl Evaluator {
    /// Runs the fp32 model once for the reference outputs and checks that
    /// the metric can be computed on them.
    pub fn new(metric: Metric, data: DataSet, fp32: &CompiledModel) -> Result<Self, CliError> {
        let outs = fp32
            .run_ordered(&data.refs())
            .map_err(|e| CliError::Other(format!("running the fp32 model on the data: {e}")))?;
        let reference = float_outputs(&outs);
        let Some((shape, first)) = reference.first() else {
            return Err(CliError::Other(
                "the model has no floating-point output to measure".to_string(),
            ));
        };
        match metric {
            Metric::Top1 => {
                let Some(labels) = &data.labels else {
                    return Err(CliError::Other(
                        "metric top1 needs a `labels` tensor (i64 or i32) in the data; use --metric agreement to compare with the fp32 model instead".to_string(),
                    ));
                };
                let rows = predictions(shape, first).len();
                if rows != labels.len() {
                    return Err(CliError::Other(format!(
                        "metric top1: the first output has shape {shape:?} ({rows} rows of scores) but there are {} labels",
                        labels.len()
                    )));
                }
            }
            Metric::Agreement | Metric::Cosine => {}
            Metric::Mse => {}
        }
        let (sum, n) = reference.iter().fold((0.0f64, 0usize), |(s, n), (_, v)| {
            (
                s + v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>(),
                n + v.len(),
            )
        });
        let mse_scale = if n == 0 { 0.0 } else { sum / n as f64 };
        if metric == Metric::Mse && !(mse_scale > 0.0 && mse_scale.is_finite()) {
            return Err(CliError::Other(format!(
                "metric mse: the fp32 outputs' mean square is {mse_scale}; the tolerance is relative to it, so it must be finite and > 0"
            )));
        }
        Ok(Evaluator {
            metric,
            data,
            reference,
            mse_scale,
        })
    }

    /// The metric of `model` on the data.
    pub fn eval(&self, model: &CompiledModel) -> Result<f64, GraphError> {
        let outs = float_outputs(&model.run_ordered(&self.data.refs())?);
        Ok(self.score(&outs))
    }

    fn score(&self, outs: &[(Vec<usize>, Vec<f32>)]) -> f64 {
        let (shape, first) = &outs[0];
        let (ref_shape, ref_first) = &self.reference[0];
        match self.metric {
            Metric::Top1 => {
                let labels = self.data.labels.as_deref().unwrap_or_default();
                let p = predictions(shape, first);
                let hits = p
                    .iter()
                    .zip(labels)
                    .filter(|(p, l)| **p as i64 == **l)
                    .count();
                hits as f64 / labels.len().max(1) as f64
            }
            Metric::Agreement => {
                let p = predictions(shape, first);
                let q = predictions(ref_shape, ref_first);
                let same = p.iter().zip(&q).filter(|(a, b)| a == b).count();
                same as f64 / q.len().max(1) as f64
            }
            Metric::Cosine => {
                // Mean over outputs and samples (leading dimension) of the
                // cosine similarity with the fp32 output.
                let mut total = 0.0;
                let mut count = 0usize;
                for ((shape, v), (_, r)) in outs.iter().zip(&self.reference) {
                    let samples = shape.first().copied().unwrap_or(1).max(1);
                    let len = (v.len() / samples).max(1);
                    for (a, b) in v.chunks(len).zip(r.chunks(len)) {
                        let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
                        for (x, y) in a.iter().zip(b) {
                            let (x, y) = (f64::from(*x), f64::from(*y));
                            ab += x * y;
                            aa += x * x;
                            bb += y * y;
                        }
                        total += if aa == 0.0 && bb == 0.0 {
                            1.0
                        } else if aa == 0.0 || bb == 0.0 {
                            0.0
                        } else {
                            ab / (aa.sqrt() * bb.sqrt())
                        };
                        count += 1;
                    }
                }
                total / count.max(1) as f64
            }
            Metric::Mse => {
                let mut sum = 0.0f64;
                let mut n = 0usize;
                for ((_, v), (_, r)) in outs.iter().zip(&self.reference) {
                    for (x, y) in v.iter().zip(r) {
                        sum += (f64::from(*x) - f64::from(*y)).powi(2);
                    }
                    n += r.len();
                }
                sum / n.max(1) as f64
            }
        }
    }

    /// The tolerance the tuner applies: relative for the higher-is-better
    /// metrics; for mse (whose baseline is 0) an absolute bound of
    /// `tolerable_loss` times the mean square of the fp32 outputs.
    pub fn tolerance(&self, tolerable_loss: f64) -> Tolerance {
        match self.metric {
            Metric::Mse => Tolerance::Absolute(tolerable_loss * self.mse_scale),
            _ => Tolerance::Relative(tolerable_loss),
        }
    }

    /// The eval data.
    pub fn data(&self) -> &DataSet {
        &self.data
    }
}

/// Everything `tune` produced, for the table and the JSON report.
pub struct TuneOutcome {
    /// The tuner's report.
    pub report: TuningReport,
    /// The chosen plan.
    pub plan: PrecisionPlan,
    /// Samples in the eval data.
    pub batch: usize,
    /// Median latency of fp32 and of the tuned plan on the whole eval batch.
    pub eval_latency: Option<(f64, f64)>,
}

/// Runs `mixprec tune`, writing the table to `out`.
pub fn run(args: &TuneArgs, out: &mut impl Write) -> Result<(), CliError> {
    let loaded = model::load_model(&args.model)?;
    let mut inputs_to_keep = vec![];
    if let ModelSource::File(p) = &args.model {
        inputs_to_keep.push(p.as_path());
    }
    if let Some(d) = &args.data {
        inputs_to_keep.push(d.as_path());
    }
    // Reserve the outputs before the work, so a bad path fails at once.
    let plan_out = args
        .plan_out
        .as_deref()
        .map(|p| Output::reserve(p, "plan", &inputs_to_keep))
        .transpose()?;
    let report_out = args
        .report_out
        .as_deref()
        .map(|p| Output::reserve(p, "report", &inputs_to_keep))
        .transpose()?;
    let data = match (&args.data, &loaded.demo) {
        (Some(path), _) => model::load_data(path, &loaded.graph, "data")?,
        (None, Some(m)) => model::demo_data(m)?,
        (None, None) => {
            return Err(CliError::Other(
                "--data is required with a model file: a safetensors file with one tensor per graph input (and `labels` for top1)".to_string(),
            ));
        }
    };
    let calibration = match (&args.data, &loaded.demo) {
        (None, Some(m)) => {
            let c = demo::calibration_data(&m.description, DEMO_CALIBRATION_IMAGES)
                .map_err(|e| CliError::Other(e.to_string()))?;
            let x = Tensor::from_f32(&[c.n, demo::NUM_FEATURES], c.inputs)
                .map_err(|e| CliError::Other(format!("demo calibration data: {e}")))?;
            vec![(demo::INPUT_NAME.to_string(), x)]
        }
        _ => data.head(&loaded.graph, CALIBRATION_SAMPLES),
    };
    let outcome = tune_loaded(args, &loaded, data, calibration)?;

    let plan_json = outcome.plan.to_json();
    let report_json = report_json(args, &loaded, &outcome);
    write_table(out, args, &loaded, &outcome).map_err(CliError::Output)?;
    if let Some(o) = plan_out {
        let path = o.path().display().to_string();
        o.commit(plan_json.as_bytes())?;
        writeln!(out, "plan written to {path}").map_err(CliError::Output)?;
    }
    if let Some(o) = report_out {
        let path = o.path().display().to_string();
        let mut text = serde_json::to_string_pretty(&report_json)
            .map_err(|e| CliError::Other(format!("report: {e}")))?;
        text.push('\n');
        o.commit(text.as_bytes())?;
        writeln!(out, "report written to {path}").map_err(CliError::Output)?;
    }
    // Last, so that a picture that cannot be drawn or written costs neither
    // the plan nor the report.
    if let Some(path) = &args.svg {
        let svg = crate::plot::tuning_svg(&outcome.report)
            .map_err(|e| CliError::Other(format!("tuning picture: {e}")))?;
        Output::reserve(path, "picture", &inputs_to_keep)?.commit(svg.as_bytes())?;
        writeln!(out, "picture written to {}", path.display()).map_err(CliError::Output)?;
    }
    Ok(())
}

/// Tunes a loaded model on `data` (the metric) with `calibration` (the
/// tuner's sensitivity and latency passes).
pub fn tune_loaded(
    args: &TuneArgs,
    loaded: &LoadedModel,
    data: DataSet,
    calibration: Vec<(String, Tensor)>,
) -> Result<TuneOutcome, CliError> {
    let graph = &loaded.graph;
    let fp32 = model::compile(graph, &PrecisionPlan::new(), args.bf16_gemm.into(), "fp32")?;
    let evaluator = Evaluator::new(args.metric, data, &fp32)?;

    let mut dtypes: Vec<FloatType> = Vec::new();
    for d in &args.dtype {
        let t = FloatType::from(*d);
        if !dtypes.contains(&t) {
            dtypes.push(t);
        }
    }
    dtypes.push(FloatType::F32);
    let mp = MixedPrecisionConfig::new(dtypes)
        .map_err(|e| CliError::Other(format!("invalid tuning config: {e}")))?;
    let defaults = TuningConfig::default();
    let tolerance = evaluator.tolerance(args.tolerable_loss);
    let higher = args.metric.higher_is_better();
    let config = TuningConfig {
        strategy: args.strategy.into(),
        max_trials: args.max_trials.unwrap_or(defaults.max_trials),
        tolerance,
        higher_is_better: higher,
        calibration: Some(calibration),
        bf16_gemm: args.bf16_gemm.into(),
        ..TuningConfig::new(mp)
    };

    let bar = progress_bar(config.max_trials as u64 + 1);
    let mut baseline: Option<f64> = None;
    let result = tune::autotune_fallible(graph, &config, |m: &CompiledModel| {
        let r = evaluator.eval(m);
        if let Ok(v) = r {
            let verdict = match baseline {
                None => {
                    baseline = Some(v);
                    "fp32 baseline".to_string()
                }
                Some(b) if tolerance.passes(v, b, higher) => "pass".to_string(),
                Some(_) => "fail".to_string(),
            };
            bar.set_message(format!("{} {v:.6} ({verdict})", args.metric.name()));
        }
        bar.inc(1);
        r
    });
    bar.finish_and_clear();
    let tuned = result.map_err(|e| match e {
        TuneError::Eval(e) => CliError::Other(format!("evaluating a plan: {e}")),
        e => CliError::Other(format!("tuning failed: {e}")),
    })?;

    let refs = evaluator.data().refs();
    let budget = Duration::from_millis(500);
    let eval_latency = match (
        model::median_latency(&fp32, &refs, 101, budget),
        model::median_latency(&tuned.model, &refs, 101, budget),
    ) {
        (Ok(a), Ok(b)) => Some((a, b)),
        _ => None,
    };
    Ok(TuneOutcome {
        report: tuned.report,
        plan: tuned.plan,
        batch: evaluator.data().batch,
        eval_latency,
    })
}

/// One bar over the evaluations, drawn on stderr (hidden when stderr is not
/// a terminal, so scripted runs see no control characters).
fn progress_bar(len: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{spinner} tuning: evaluation {pos} (at most {len}) {msg} [{elapsed}]",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn pct(x: f64) -> String {
    format!("{:+.2}%", 100.0 * x)
}

fn fmt_ms(s: f64) -> String {
    if s >= 0.1 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{:.3} ms", s * 1e3)
    }
}

/// The summary table.
pub fn write_table(
    out: &mut impl Write,
    args: &TuneArgs,
    loaded: &LoadedModel,
    o: &TuneOutcome,
) -> std::io::Result<()> {
    let r = &o.report;
    let dtypes: Vec<&str> = args
        .dtype
        .iter()
        .map(|d| FloatType::from(*d).name())
        .collect();
    writeln!(
        out,
        "mixprec tune: {} on {} samples, metric {}, dtypes {}, tolerance {}, strategy {}",
        loaded.label,
        o.batch,
        args.metric.name(),
        dtypes.join(","),
        r.tolerance,
        r.strategy
    )?;
    let direction = if r.higher_is_better {
        ""
    } else {
        " (lower is better)"
    };
    writeln!(out)?;
    writeln!(
        out,
        "{:>5}  {:<12} {:<36} {:>12}  result",
        "trial",
        "phase",
        "plan",
        args.metric.name()
    )?;
    writeln!(
        out,
        "{:>5}  {:<12} {:<36} {:>12.6}  baseline",
        0, "baseline", "all f32", r.baseline
    )?;
    for t in &r.trials {
        let mut desc = t.description.clone();
        if desc.chars().count() > 36 {
            desc = desc.chars().take(33).collect::<String>() + "...";
        }
        writeln!(
            out,
            "{:>5}  {:<12} {:<36} {:>12.6}  {}",
            t.index,
            t.phase,
            desc,
            t.metric,
            if t.passed { "pass" } else { "fail" }
        )?;
    }
    writeln!(out)?;
    let status = match r.status {
        TuneStatus::Passed => "passed (the tuned plan is within tolerance)".to_string(),
        TuneStatus::ToleranceNotMet => {
            "TOLERANCE NOT MET (the best-scoring plan is returned)".to_string()
        }
    };
    writeln!(out, "status:        {status}")?;
    let change = if r.baseline != 0.0 {
        format!(" ({} vs baseline)", pct(r.final_metric / r.baseline - 1.0))
    } else {
        String::new()
    };
    writeln!(
        out,
        "metric:        baseline {:.6} -> tuned {:.6}{change}{direction}",
        r.baseline, r.final_metric
    )?;
    writeln!(
        out,
        "evaluations:   {} (baseline + {} trials; max trials {})",
        r.evaluations,
        r.trials.len(),
        args.max_trials
            .map_or_else(|| "100 (default)".to_string(), |m| m.to_string())
    )?;
    let per: Vec<String> = r
        .nodes_per_dtype()
        .into_iter()
        .map(|(d, c)| format!("{c} {d}"))
        .collect();
    writeln!(out, "nodes:         {}", per.join(", "))?;
    for n in &r.nodes {
        let sens = n
            .sensitivity
            .map(|s| format!("  sensitivity {s:.3e}"))
            .unwrap_or_default();
        writeln!(
            out,
            "  {:<24} {:<20} {:<5}{sens}",
            n.name, n.op_type, n.dtype
        )?;
    }
    let fallbacks: Vec<_> = r.fallbacks().collect();
    if fallbacks.is_empty() {
        writeln!(out, "fallbacks:     none")?;
    } else {
        writeln!(out, "fallbacks (kept in f32):")?;
        for n in fallbacks {
            writeln!(
                out,
                "  {} ({}): {}",
                n.name,
                n.op_type,
                n.reason.as_deref().unwrap_or("-")
            )?;
        }
    }
    match o.eval_latency {
        Some((a, b)) if b > 0.0 => writeln!(
            out,
            "speedup:       {:.2}x over fp32 on the {} eval samples (median {} -> {})",
            a / b,
            o.batch,
            fmt_ms(a),
            fmt_ms(b)
        )?,
        _ => writeln!(out, "speedup:       not measured")?,
    }
    if let (Some(s), Some(a), Some(b)) = (r.speedup, r.latency_fp32_s, r.latency_final_s) {
        writeln!(
            out,
            "               {s:.2}x on the tuner's calibration batch (median {} -> {})",
            fmt_ms(a),
            fmt_ms(b)
        )?;
    }
    writeln!(out, "tuning time:   {:.3} s", r.seconds)?;
    if args.metric == Metric::Mse {
        writeln!(
            out,
            "note: mse passes when it is at most tolerable-loss x mean(fp32 output^2) = {}",
            r.tolerance
        )?;
    }
    for n in loaded.notes.iter().chain(&r.notes) {
        writeln!(out, "note: {n}")?;
    }
    Ok(())
}

/// `report.json`: the tuner's report (`status`, `baseline`, `final`,
/// `evaluations`, `speedup`, `trials`, `nodes` with `name`, `op_type`,
/// `dtype`, ...) plus what the command line adds: the model, the metric,
/// the plan and the latency on the whole eval batch.
pub fn report_json(args: &TuneArgs, loaded: &LoadedModel, o: &TuneOutcome) -> Value {
    let mut v = serde_json::to_value(&o.report).unwrap_or_else(|_| json!({}));
    if let Value::Object(map) = &mut v {
        map.insert("model".into(), json!(loaded.label));
        map.insert("metric".into(), json!(args.metric.name()));
        map.insert(
            "data".into(),
            json!(args.data.as_ref().map(|p| p.display().to_string())),
        );
        map.insert("samples".into(), json!(o.batch));
        map.insert(
            "dtypes".into(),
            json!(
                args.dtype
                    .iter()
                    .map(|d| FloatType::from(*d).name())
                    .collect::<Vec<_>>()
            ),
        );
        map.insert("tolerable_loss".into(), json!(args.tolerable_loss));
        map.insert("bf16_gemm".into(), json!(args.bf16_gemm.name()));
        map.insert(
            "plan".into(),
            serde_json::to_value(&o.plan).unwrap_or(Value::Null),
        );
        map.insert(
            "eval_batch_latency".into(),
            match o.eval_latency {
                Some((a, b)) => json!({
                    "samples": o.batch,
                    "fp32_s": a,
                    "final_s": b,
                    "speedup": if b > 0.0 { Some(a / b) } else { None },
                }),
                None => Value::Null,
            },
        );
    }
    v
}
