//! What a tuning run did, as data (serde JSON) and as a text table.

use std::fmt;

use serde::Serialize;

/// Whether the returned plan meets the tolerance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TuneStatus {
    /// The returned plan met the tolerance when evaluated.
    Passed,
    /// No evaluated plan met the tolerance (within `max_trials` and the
    /// timeout); the returned plan is the best-scoring one.
    ToleranceNotMet,
}

impl fmt::Display for TuneStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TuneStatus::Passed => "passed",
            TuneStatus::ToleranceNotMet => "tolerance not met",
        })
    }
}

/// One evaluated plan.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrialRecord {
    /// 1-based trial number (the baseline is not a trial).
    pub index: usize,
    /// Which search step proposed it.
    pub phase: String,
    /// What changed, in words (e.g. `"all bf16"`, `"fp32: fc0, fc1"`).
    pub description: String,
    /// Nodes in fp32 in this plan (among the lowerable ones).
    pub fp32_nodes: Vec<String>,
    /// Number of lowerable nodes in a low dtype.
    pub low_nodes: usize,
    /// `eval_fn`'s result (NaN serializes as `null`).
    pub metric: f64,
    /// Whether it met the tolerance.
    pub passed: bool,
    /// Seconds spent compiling and evaluating.
    pub seconds: f64,
}

/// One lowerable node of the graph.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeReport {
    /// Node name.
    pub name: String,
    /// Op type, e.g. `Gemm`.
    pub op_type: String,
    /// The dtype in the returned plan: `f32`, `bf16` or `f16`.
    pub dtype: String,
    /// Whether the search could change it (config filters and overrides).
    pub searched: bool,
    /// How far the calibration outputs move (relative L2 against fp32) with
    /// this node low; `None` when not measured (e.g. `Sequential`).
    pub sensitivity: Option<f64>,
    /// Rank by sensitivity (0 = most sensitive) when measured.
    pub rank: Option<usize>,
    /// Seconds per calibration pass in fp32 (from the per-node profile).
    pub time_f32_s: Option<f64>,
    /// Seconds per calibration pass in the low dtype searched.
    pub time_low_s: Option<f64>,
    /// Why it is fp32 (or why it was not searched), when it is.
    pub reason: Option<String>,
}

/// Everything about a tuning run; `serde_json::to_string_pretty` gives the
/// CLI's `report.json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TuningReport {
    /// Whether the returned plan passed.
    pub status: TuneStatus,
    /// The strategy run.
    pub strategy: String,
    /// The tolerance, in words.
    pub tolerance: String,
    /// Whether larger metrics are better.
    pub higher_is_better: bool,
    /// fp32 baseline metric.
    pub baseline: f64,
    /// The returned plan's metric.
    #[serde(rename = "final")]
    pub final_metric: f64,
    /// `eval_fn` calls, baseline included.
    pub evaluations: usize,
    /// Forward passes on the calibration inputs (sensitivity ranking and
    /// per-node profiling; no `eval_fn`).
    pub calibration_passes: usize,
    /// Every trial, in order.
    pub trials: Vec<TrialRecord>,
    /// Every lowerable node, in execution order.
    pub nodes: Vec<NodeReport>,
    /// Median latency of the fp32 plan on the calibration inputs (seconds).
    pub latency_fp32_s: Option<f64>,
    /// Median latency of the returned plan on the calibration inputs.
    pub latency_final_s: Option<f64>,
    /// `latency_fp32_s / latency_final_s`.
    pub speedup: Option<f64>,
    /// Wall-clock seconds of the whole run.
    pub seconds: f64,
    /// Anything the user should know (e.g. synthetic calibration inputs,
    /// timeout reached).
    pub notes: Vec<String>,
}

impl TuningReport {
    /// Count of lowerable nodes per dtype name in the returned plan.
    pub fn nodes_per_dtype(&self) -> Vec<(String, usize)> {
        let mut out: Vec<(String, usize)> = Vec::new();
        for n in &self.nodes {
            match out.iter_mut().find(|(d, _)| *d == n.dtype) {
                Some((_, c)) => *c += 1,
                None => out.push((n.dtype.clone(), 1)),
            }
        }
        out
    }

    /// The nodes the returned plan keeps in fp32, with the reason.
    pub fn fallbacks(&self) -> impl Iterator<Item = &NodeReport> {
        self.nodes.iter().filter(|n| n.dtype == "f32")
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        // Serializing plain structs of strings and numbers cannot fail.
        serde_json::to_string_pretty(self).expect("report serializes")
    }
}

impl fmt::Display for TuningReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "status: {} ({} strategy, {}{})",
            self.status,
            self.strategy,
            self.tolerance,
            if self.higher_is_better {
                ""
            } else {
                ", lower is better"
            }
        )?;
        writeln!(
            f,
            "baseline {:.6} -> final {:.6}, {} evaluations ({} trials), {} calibration passes",
            self.baseline,
            self.final_metric,
            self.evaluations,
            self.trials.len(),
            self.calibration_passes
        )?;
        let per: Vec<String> = self
            .nodes_per_dtype()
            .into_iter()
            .map(|(d, c)| format!("{c} {d}"))
            .collect();
        writeln!(f, "nodes: {}", per.join(", "))?;
        if let Some(s) = self.speedup {
            writeln!(f, "measured speedup over fp32: {s:.2}x")?;
        }
        for t in &self.trials {
            writeln!(
                f,
                "  trial {:>3} [{}] {:<40} metric {:.6} {} ({:.3}s)",
                t.index,
                t.phase,
                t.description,
                t.metric,
                if t.passed { "pass" } else { "fail" },
                t.seconds
            )?;
        }
        for n in self.fallbacks() {
            writeln!(
                f,
                "  fp32: {} ({}){}",
                n.name,
                n.op_type,
                n.reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            )?;
        }
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
        }
        Ok(())
    }
}
