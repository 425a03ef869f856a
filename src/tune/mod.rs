//! The accuracy-driven mixed-precision tuner.
//!
//! [`autotune`] takes a graph, a [`TuningConfig`] and an evaluation function
//! (the user's metric on the user's data, e.g. top-1 accuracy) and returns
//! the fastest plan it finds whose metric stays within the tolerance of the
//! fp32 baseline, with a [`TuningReport`] of everything it tried. It always
//! returns a model: when nothing passes, the best-scoring plan with status
//! [`TuneStatus::ToleranceNotMet`].
//!
//! The names follow Intel Neural Compressor (`MixedPrecisionConfig`,
//! `TuningConfig { config_set, max_trials, .. }`), and the INC strategies are
//! available for comparison ([`Strategy::Sequential`] is INC 3.x,
//! [`Strategy::OpWise`] INC 2.x). The default strategy ranks nodes by how far
//! the calibration outputs move with each node low (forward passes, no
//! `eval_fn`), then finds how many of the most sensitive to keep in fp32 by
//! bisection, so one sensitive layer among N costs about
//! `ceil(log2 N) + 2` evaluations (often 3) where INC 2.x spends ~2N.
//!
//! Any model can be tuned through the [`Tunable`] trait
//! ([`autotune_target`]); the op-graph implements it.
//!
//! ```
//! use mixprec::graph::{DType, Dim, GraphBuilder, PrecisionPlan, Tensor};
//! use mixprec::kernels::FloatType;
//! use mixprec::tune::{autotune, MixedPrecisionConfig, TuneStatus, TuningConfig};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut g = GraphBuilder::new();
//! let x = g.input("x", &[Dim::sym("batch"), 4.into()], DType::F32);
//! let h = g.linear("fc0", x, &Tensor::from_f32(&[8, 4], vec![0.25; 32])?, None)?;
//! let h = g.relu("act", h)?;
//! let y = g.linear("fc1", h, &Tensor::from_f32(&[2, 8], vec![0.5; 16])?, None)?;
//! g.output(y);
//! let graph = g.finish()?;
//!
//! let data = Tensor::from_f32(&[16, 4], (0..64).map(|i| i as f32 / 64.0).collect::<Vec<_>>())?;
//! let reference = graph.compile(&PrecisionPlan::new())?.run_ordered(&[("x", &data)])?[0].to_f32_vec();
//! // The user's metric: here 1 - relative L2 error against fp32.
//! let eval = |m: &mixprec::graph::CompiledModel| {
//!     let y = m.run_ordered(&[("x", &data)]).unwrap()[0].to_f32_vec();
//!     let err: f32 = y.iter().zip(&reference).map(|(a, b)| (a - b).powi(2)).sum();
//!     let norm: f32 = reference.iter().map(|b| b * b).sum();
//!     1.0 - f64::from((err / norm).sqrt())
//! };
//! let config = TuningConfig {
//!     calibration: Some(vec![("x".to_string(), data.clone())]),
//!     ..TuningConfig::new(MixedPrecisionConfig::new(vec![FloatType::Bf16, FloatType::F32])?)
//! };
//! let tuned = autotune(&graph, &config, eval)?;
//! assert_eq!(tuned.report.status, TuneStatus::Passed);
//! println!("{}", tuned.report); // trials, fallbacks and why, speedup
//! let json = tuned.plan.to_json(); // apply later with PrecisionPlan::from_json
//! # assert!(json.contains("fc0"));
//! # Ok(()) }
//! ```

mod config;
mod error;
mod graph_target;
mod report;
pub mod sensitivity;
mod strategy;
mod target;

use std::convert::Infallible;
use std::time::Instant;

use mixprec_kernels::FloatType;

pub use config::{
    Calibration, CompiledFilter, MixedPrecisionConfig, Strategy, Tolerance, TuningConfig,
};
pub use error::{ConfigError, TuneError};
pub use graph_target::GraphTarget;
pub use report::{NodeReport, TrialRecord, TuneStatus, TuningReport};
pub use target::{BoxError, DtypeMap, Tunable, TunableNode};

use crate::graph::{CompiledModel, Dim, Graph, PrecisionPlan, Tensor};

use strategy::{Outcome, Plan, Session, Space};

/// A tuned model: the compiled model, its plan and the report.
#[derive(Debug)]
pub struct TunedModel<M = CompiledModel, P = PrecisionPlan> {
    /// The model compiled with [`TunedModel::plan`].
    pub model: M,
    /// The chosen precision plan (save it as JSON and apply it later
    /// without tuning again).
    pub plan: P,
    /// What the tuner did and why.
    pub report: TuningReport,
}

/// Tunes a graph for mixed precision: INC's
/// `autotune(model, tune_config, eval_fn)`.
///
/// `eval_fn` scores a compiled model on the user's data (higher is better
/// unless `config.higher_is_better` is false). It is called once for the
/// fp32 baseline and at most `config.max_trials` more times. The sensitivity
/// passes and the latency measurement run `config.calibration` (one tensor
/// per graph input, by name; a few representative samples). When it is
/// `None`, the inputs of the baseline evaluation are captured and their first
/// 64 rows used; only if `eval_fn` never runs the model are synthetic inputs
/// used (the report notes which, since the ranking is only as good as the
/// inputs are representative).
///
/// # Errors
/// See [`autotune_fallible`].
pub fn autotune<F>(
    graph: &Graph,
    config: &TuningConfig,
    mut eval_fn: F,
) -> Result<TunedModel, TuneError>
where
    F: FnMut(&CompiledModel) -> f64,
{
    autotune_fallible(graph, config, |m: &CompiledModel| {
        Ok::<f64, Infallible>(eval_fn(m))
    })
}

/// [`autotune`] with an evaluation function that can fail; its first error
/// stops the run as [`TuneError::Eval`].
///
/// # Errors
/// An invalid config (bad regex, empty dtype list, unknown override node,
/// `max_trials == 0`), a relative tolerance with a baseline <= 0, a
/// non-finite baseline, calibration inputs the graph rejects, or an
/// evaluation error.
pub fn autotune_fallible<F, E>(
    graph: &Graph,
    config: &TuningConfig,
    eval_fn: F,
) -> Result<TunedModel, TuneError<E>>
where
    F: FnMut(&CompiledModel) -> Result<f64, E>,
{
    config.validate()?;
    let mut eval_fn = eval_fn;
    // Without a calibration batch, take it from the first evaluation: run
    // the fp32 baseline here with input capture on, and hand its metric to
    // the session below so the baseline is still evaluated only once.
    let mut baseline = None;
    let captured = match &config.calibration {
        Some(_) => None,
        None => {
            let model = graph
                .compile(&PrecisionPlan::all(graph, FloatType::F32))
                .map_err(|e| TuneError::model("fp32 baseline", e))?
                .with_input_capture();
            baseline = Some(eval_fn(&model).map_err(TuneError::Eval)?);
            model
                .captured_inputs()
                .map(|inputs| calibration_rows(graph, inputs))
        }
    };
    let calibration = config.calibration.as_deref().or(captured.as_deref());
    let target = GraphTarget::new(graph, calibration)
        .map_err(|e| TuneError::model("making synthetic calibration inputs", e))?
        .with_bf16_gemm(config.bf16_gemm);
    let eval = |m: &CompiledModel| match baseline.take() {
        Some(metric) => Ok(metric),
        None => eval_fn(m),
    };
    let tuned = autotune_target_fallible(&target, config, eval)?;
    let mut report = tuned.report;
    if captured.is_some() {
        report.notes.push(format!(
            "calibration batch captured from the baseline evaluation (first {CALIBRATION_ROWS} rows at most)"
        ));
    }
    if target.is_synthetic() {
        report.notes.push(
            "no calibration inputs given: sensitivities and latencies come from synthetic inputs"
                .to_string(),
        );
    }
    Ok(TunedModel {
        model: tuned.model,
        plan: GraphTarget::plan(&tuned.plan),
        report,
    })
}

/// Rows of a captured batch kept for calibration: the sensitivity pass runs
/// the model about twice per node, so a whole evaluation set would be slow.
const CALIBRATION_ROWS: usize = 64;

/// The first [`CALIBRATION_ROWS`] rows of captured inputs whose leading
/// dimension is the graph's symbolic batch; other inputs are kept whole.
fn calibration_rows(graph: &Graph, inputs: &[(String, Tensor)]) -> Calibration {
    inputs
        .iter()
        .map(|(name, t)| {
            let batched = graph.inputs().iter().any(|&id| {
                let v = graph.value(id);
                v.name == *name && matches!(v.shape.first(), Some(Dim::Symbolic(_)))
            });
            let rows = t.shape().first().copied().unwrap_or(0);
            if !batched || rows <= CALIBRATION_ROWS {
                return (name.clone(), t.clone());
            }
            let mut shape = t.shape().to_vec();
            shape[0] = CALIBRATION_ROWS;
            let keep = t.byte_len() / rows * CALIBRATION_ROWS;
            let head = Tensor::from_bytes(t.dtype(), &shape, &t.bytes()[..keep])
                .expect("a prefix of whole rows is a valid tensor");
            (name.clone(), head)
        })
        .collect()
}

/// Tunes any [`Tunable`] model with an infallible evaluation function.
/// See [`autotune_target_fallible`].
pub fn autotune_target<T, F>(
    target: &T,
    config: &TuningConfig,
    mut eval_fn: F,
) -> Result<TunedModel<T::Model, DtypeMap>, TuneError>
where
    T: Tunable,
    F: FnMut(&T::Model) -> f64,
{
    autotune_target_fallible(target, config, |m: &T::Model| {
        Ok::<f64, Infallible>(eval_fn(m))
    })
}

/// Tunes any [`Tunable`] model.
///
/// `eval_fn` is called once for the fp32 baseline and at most
/// `config.max_trials` times for candidate plans (a plan is never evaluated
/// twice). Its first error stops the run and is returned as
/// [`TuneError::Eval`].
///
/// # Errors
/// An invalid config, a relative tolerance with a baseline <= 0, a
/// non-finite baseline, a model that fails to compile or run, or an
/// evaluation error.
pub fn autotune_target_fallible<T, F, E>(
    target: &T,
    config: &TuningConfig,
    eval_fn: F,
) -> Result<TunedModel<T::Model, DtypeMap>, TuneError<E>>
where
    T: Tunable,
    F: FnMut(&T::Model) -> Result<f64, E>,
{
    let start = Instant::now();
    let filters = config.validate()?;
    let mut s = Session::new(target, eval_fn, config, start);
    for cfg in &config.config_set {
        for name in cfg.overrides.keys() {
            if !s.nodes.iter().any(|n| &n.name == name) {
                return Err(ConfigError::UnknownOverrideNode { name: name.clone() }.into());
            }
        }
    }

    // Step 1: the fp32 baseline, evaluated once.
    let baseline = s.evaluate_baseline()?;
    if !baseline.is_finite() {
        return Err(TuneError::NonFiniteBaseline { baseline });
    }
    if matches!(config.tolerance, Tolerance::Relative(_)) && baseline <= 0.0 {
        return Err(TuneError::NonPositiveBaseline { baseline });
    }

    let mut chosen: Option<(Outcome, Space)> = None;
    let mut first: Option<(Outcome, Space)> = None;
    for (cfg, filter) in config.config_set.iter().zip(&filters) {
        let space = Space::new(&s.nodes, cfg, filter);
        let outcome = match config.strategy {
            Strategy::Default => strategy::default(&mut s, &space)?,
            Strategy::Sequential => strategy::sequential(&mut s, &space, cfg)?,
            Strategy::OpWise => strategy::opwise(&mut s, &space)?,
        };
        if outcome.winner.is_some() {
            chosen = Some((outcome, space));
            break;
        }
        if first.is_none() {
            first = Some((outcome, space));
        }
    }

    let mut notes = Vec::new();
    if s.timed_out {
        notes.push("timeout reached: the search stopped early".to_string());
    }
    let (outcome, space, plan, status) = match (chosen, first) {
        (Some((o, sp)), _) => {
            let plan = o.winner.clone().unwrap_or_else(|| s.all_f32());
            (o, sp, plan, TuneStatus::Passed)
        }
        (None, Some((o, sp))) => match s.best_trial() {
            // A strategy cut short may still have seen a passing plan.
            Some(p) if s.trial_of(&p).is_some_and(|(_, m)| s.passes(m)) => {
                (o, sp, p, TuneStatus::Passed)
            }
            Some(p) => (o, sp, p, TuneStatus::ToleranceNotMet),
            None => {
                notes.push("no trial ran; returning the fp32 plan".to_string());
                (o, sp, s.all_f32(), TuneStatus::ToleranceNotMet)
            }
        },
        (None, None) => unreachable!("config_set is non-empty after validation"),
    };
    let final_metric = s.trial_of(&plan).map_or(baseline, |(_, m)| m);
    if status == TuneStatus::ToleranceNotMet {
        notes.push(format!(
            "no plan met the tolerance within {} trials; returning the best-scoring one",
            config.max_trials
        ));
    }

    // Latency and per-node times on the calibration inputs (no eval_fn).
    let model = s.compile(&plan, "final")?;
    let fp32_model = s.compile(&s.all_f32(), "fp32")?;
    let reps = config.latency_reps.max(1);
    let lat_fp32 = median_latency(target, &fp32_model, reps)?;
    let lat_final = median_latency(target, &model, reps)?;
    let speedup = match (lat_fp32, lat_final) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    if let Some(x) = speedup
        && x < 1.0
        && plan.iter().any(|d| *d != FloatType::F32)
    {
        notes.push(format!(
            "the tuned plan measured {x:.2}x of fp32 speed on the calibration batch; small batches are dominated by conversions, so measure with a production-sized batch"
        ));
    }
    let times_f32 = target
        .node_times(&fp32_model)
        .map_err(|e| TuneError::model("profiling the fp32 plan", e))?;
    let low = outcome
        .low
        .filter(|d| *d != FloatType::F32)
        .or_else(|| space.lows.first().copied());
    let times_low = match low {
        Some(low) => {
            let all_low = space.plan(low, &vec![false; space.cand.len()]);
            let m = s.compile(&all_low, "all-low")?;
            target
                .node_times(&m)
                .map_err(|e| TuneError::model("profiling the all-low plan", e))?
        }
        None => None,
    };

    let ranks = {
        let sens: Vec<f64> = outcome
            .sensitivity
            .iter()
            .map(|x| x.unwrap_or(f64::NEG_INFINITY))
            .collect();
        let mut r = vec![None; sens.len()];
        for (pos, i) in sensitivity::rank(&sens).into_iter().enumerate() {
            if outcome.sensitivity[i].is_some() {
                r[i] = Some(pos);
            }
        }
        r
    };
    let nodes = s
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let dtype = plan[i];
            let reason = if dtype == FloatType::F32 {
                Some(
                    space.excluded[i]
                        .clone()
                        .or_else(|| outcome.reasons[i].clone())
                        .unwrap_or_else(|| match status {
                            TuneStatus::Passed => "kept fp32 by the passing plan".to_string(),
                            TuneStatus::ToleranceNotMet => {
                                "fp32 in the best-scoring plan (none passed)".to_string()
                            }
                        }),
                )
            } else {
                None
            };
            NodeReport {
                name: n.name.clone(),
                op_type: n.op_type.clone(),
                dtype: dtype.name().to_string(),
                searched: space.cand.contains(&i),
                sensitivity: outcome.sensitivity[i],
                rank: ranks[i],
                time_f32_s: times_f32.as_ref().and_then(|t| t.get(&n.name).copied()),
                time_low_s: times_low.as_ref().and_then(|t| t.get(&n.name).copied()),
                reason,
            }
        })
        .collect();

    let report = TuningReport {
        status,
        strategy: config.strategy.name().to_string(),
        tolerance: config.tolerance.to_string(),
        higher_is_better: config.higher_is_better,
        baseline,
        final_metric,
        evaluations: s.trials.len() + 1,
        calibration_passes: s.calibration_passes,
        trials: s.trials.clone(),
        nodes,
        latency_fp32_s: lat_fp32,
        latency_final_s: lat_final,
        speedup,
        seconds: start.elapsed().as_secs_f64(),
        notes,
    };
    let plan_map = s.to_map(&plan);
    Ok(TunedModel {
        model,
        plan: plan_map,
        report,
    })
}

fn median_latency<T: Tunable, E>(
    target: &T,
    model: &T::Model,
    reps: usize,
) -> Result<Option<f64>, TuneError<E>> {
    // One untimed pass warms caches and buffers.
    target
        .forward(model)
        .map_err(|e| TuneError::model("timing the calibration inputs", e))?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t0 = Instant::now();
        target
            .forward(model)
            .map_err(|e| TuneError::model("timing the calibration inputs", e))?;
        times.push(t0.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times.get(times.len() / 2).copied())
}

#[allow(dead_code)]
fn _assert_plan_type(_: &Plan) {}
