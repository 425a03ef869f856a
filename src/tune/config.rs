//! Tuning configuration, with Intel Neural Compressor's names
//! (`MixedPrecisionConfig`, `TuningConfig`, `config_set`, `max_trials`,
//! tolerable loss, `higher_is_better`) so its users feel at home.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use mixprec_kernels::FloatType;
use regex::Regex;

use super::error::ConfigError;
use crate::graph::GemmAccumulation;

/// Calibration inputs: one tensor per graph input, by name, holding a
/// small representative batch.
pub type Calibration = Vec<(String, crate::graph::Tensor)>;

/// How far the tuned metric may fall from the fp32 baseline.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Tolerance {
    /// A fraction of the baseline (INC's `tolerable_loss`): `0.01` accepts a
    /// metric within 1% of the baseline. Needs a baseline > 0.
    Relative(f64),
    /// An absolute amount in the metric's own unit.
    Absolute(f64),
}

impl Default for Tolerance {
    /// 1% relative loss, INC's default.
    fn default() -> Self {
        Tolerance::Relative(0.01)
    }
}

impl Tolerance {
    /// The worst metric that still passes, given the baseline and the
    /// metric's direction.
    ///
    /// A relative tolerance needs a baseline > 0; it returns `None` otherwise
    /// (what [`super::TuneError::NonPositiveBaseline`] reports).
    pub fn threshold(self, baseline: f64, higher_is_better: bool) -> Option<f64> {
        let allowed = match self {
            Tolerance::Relative(r) => {
                if baseline.is_nan() || baseline <= 0.0 {
                    return None;
                }
                baseline * r
            }
            Tolerance::Absolute(a) => a,
        };
        Some(if higher_is_better {
            baseline - allowed
        } else {
            baseline + allowed
        })
    }

    /// Whether `metric` meets the tolerance against `baseline`.
    ///
    /// A NaN metric never passes. The comparison allows one part in 10^12 of
    /// slack so that INC's scripted case (baseline 1.0, metric 0.99, 1%
    /// relative) passes although `1.0 - 0.99` rounds above `0.01`.
    pub fn passes(self, metric: f64, baseline: f64, higher_is_better: bool) -> bool {
        let Some(threshold) = self.threshold(baseline, higher_is_better) else {
            return false;
        };
        if metric.is_nan() {
            return false;
        }
        let slack = 1e-12 * baseline.abs().max(threshold.abs()).max(f64::MIN_POSITIVE);
        if higher_is_better {
            metric >= threshold - slack
        } else {
            metric <= threshold + slack
        }
    }

    fn validate(self) -> Result<(), ConfigError> {
        let v = match self {
            Tolerance::Relative(r) => r,
            Tolerance::Absolute(a) => a,
        };
        if !v.is_finite() || v < 0.0 {
            return Err(ConfigError::InvalidTolerance { value: v });
        }
        Ok(())
    }
}

impl fmt::Display for Tolerance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tolerance::Relative(r) => write!(f, "{}% relative", r * 100.0),
            Tolerance::Absolute(a) => write!(f, "{a} absolute"),
        }
    }
}

/// Which search to run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// fp32 baseline, everything low, then fp32 fallback of the nodes ranked
    /// most sensitive (measured on calibration inputs without `eval_fn`),
    /// how many chosen by bisection, then re-lowering what is worth it.
    /// About `ceil(log2 N) + 2` evaluations when one region is sensitive.
    #[default]
    Default,
    /// INC 3.x: each config's dtype list expands into whole-model trials in
    /// order (e.g. all-bf16, then all-fp32); the first that passes wins.
    Sequential,
    /// INC 2.x: everything low; then each node alone in fp32 (N trials) to
    /// rank them; then fall back nodes one at a time in that order until it
    /// passes (up to N more).
    OpWise,
}

impl Strategy {
    /// Lower-case name, as the report and the CLI spell it.
    pub const fn name(self) -> &'static str {
        match self {
            Strategy::Default => "default",
            Strategy::Sequential => "sequential",
            Strategy::OpWise => "opwise",
        }
    }
}

impl std::str::FromStr for Strategy {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "default" | "auto" | "basic" => Ok(Strategy::Default),
            "sequential" => Ok(Strategy::Sequential),
            "opwise" | "op-wise" | "op_wise" => Ok(Strategy::OpWise),
            _ => Err(ConfigError::UnknownStrategy {
                name: s.to_string(),
            }),
        }
    }
}

/// One mixed-precision configuration: which dtypes to try and which nodes
/// may be lowered.
///
/// Fields are public for INC-style struct literals; [`TuningConfig::validate`]
/// (called by `autotune`) checks them, and the builder methods check each
/// value as it is given.
#[derive(Clone, Debug, PartialEq)]
pub struct MixedPrecisionConfig {
    /// Precisions in order of preference, e.g. `[Bf16, F32]`. Low dtypes are
    /// tried in this order; `F32` is always the fallback whether listed or
    /// not. Must not be empty.
    pub dtype: Vec<FloatType>,
    /// Op types (ONNX names, e.g. `"Gemm"`, `"MatMul"`, `"Relu"`) that may be
    /// lowered; `None` means every floating-point compute op.
    pub op_types: Option<Vec<String>>,
    /// Regexes over node names; when non-empty, only matching nodes may be
    /// lowered.
    pub op_name_include: Vec<String>,
    /// Regexes over node names; matching nodes stay fp32.
    pub op_name_exclude: Vec<String>,
    /// Node name -> dtype, fixed in every trial (not searched); e.g. pin a
    /// known-sensitive node to `F32`.
    pub overrides: BTreeMap<String, FloatType>,
}

impl Default for MixedPrecisionConfig {
    /// `dtype = [Bf16, F32]`, every floating-point compute op.
    fn default() -> Self {
        MixedPrecisionConfig {
            dtype: vec![FloatType::Bf16, FloatType::F32],
            op_types: None,
            op_name_include: Vec::new(),
            op_name_exclude: Vec::new(),
            overrides: BTreeMap::new(),
        }
    }
}

impl MixedPrecisionConfig {
    /// A config trying `dtype` in order (e.g. `[Bf16, F32]`), every
    /// floating-point compute op eligible.
    pub fn new(dtype: impl Into<Vec<FloatType>>) -> Result<Self, ConfigError> {
        let dtype = dtype.into();
        if dtype.is_empty() {
            return Err(ConfigError::EmptyDtype);
        }
        Ok(MixedPrecisionConfig {
            dtype,
            ..Default::default()
        })
    }

    /// Restricts lowering to these op types.
    pub fn op_types<S: Into<String>>(mut self, types: impl IntoIterator<Item = S>) -> Self {
        self.op_types = Some(types.into_iter().map(Into::into).collect());
        self
    }

    /// Adds a node-name regex that a node must match to be lowered.
    pub fn include(mut self, pattern: &str) -> Result<Self, ConfigError> {
        compile_regex(pattern)?;
        self.op_name_include.push(pattern.to_string());
        Ok(self)
    }

    /// Adds a node-name regex whose matches stay fp32.
    pub fn exclude(mut self, pattern: &str) -> Result<Self, ConfigError> {
        compile_regex(pattern)?;
        self.op_name_exclude.push(pattern.to_string());
        Ok(self)
    }

    /// Pins a node to a dtype in every trial.
    pub fn with_override(mut self, node: impl Into<String>, dtype: FloatType) -> Self {
        self.overrides.insert(node.into(), dtype);
        self
    }

    /// The low (non-fp32) dtypes in preference order, without duplicates.
    pub fn low_dtypes(&self) -> Vec<FloatType> {
        let mut out = Vec::new();
        for &d in &self.dtype {
            if d != FloatType::F32 && !out.contains(&d) {
                out.push(d);
            }
        }
        out
    }

    /// Checks the dtype list and compiles the regexes.
    pub fn validate(&self) -> Result<CompiledFilter, ConfigError> {
        if self.dtype.is_empty() {
            return Err(ConfigError::EmptyDtype);
        }
        let include = self
            .op_name_include
            .iter()
            .map(|p| compile_regex(p))
            .collect::<Result<Vec<_>, _>>()?;
        let exclude = self
            .op_name_exclude
            .iter()
            .map(|p| compile_regex(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CompiledFilter {
            op_types: self.op_types.clone(),
            include,
            exclude,
        })
    }
}

fn compile_regex(pattern: &str) -> Result<Regex, ConfigError> {
    Regex::new(pattern).map_err(|e| ConfigError::BadRegex {
        pattern: pattern.to_string(),
        message: e.to_string(),
    })
}

/// The node filter of a validated [`MixedPrecisionConfig`].
#[derive(Clone, Debug)]
pub struct CompiledFilter {
    op_types: Option<Vec<String>>,
    include: Vec<Regex>,
    exclude: Vec<Regex>,
}

impl CompiledFilter {
    /// Whether a node with this name and op type may be lowered. Op types
    /// compare case-insensitively (`gemm` matches `Gemm`).
    pub fn allows(&self, name: &str, op_type: &str) -> bool {
        if let Some(types) = &self.op_types
            && !types.iter().any(|t| t.eq_ignore_ascii_case(op_type))
        {
            return false;
        }
        if !self.include.is_empty() && !self.include.iter().any(|r| r.is_match(name)) {
            return false;
        }
        !self.exclude.iter().any(|r| r.is_match(name))
    }

    /// Why a node is not allowed, for the report (`None` if it is).
    pub fn reason_excluded(&self, name: &str, op_type: &str) -> Option<String> {
        if let Some(types) = &self.op_types
            && !types.iter().any(|t| t.eq_ignore_ascii_case(op_type))
        {
            return Some(format!("op type {op_type} not in op_types"));
        }
        if !self.include.is_empty() && !self.include.iter().any(|r| r.is_match(name)) {
            return Some("name matches no op_name_include pattern".to_string());
        }
        self.exclude
            .iter()
            .find(|r| r.is_match(name))
            .map(|r| format!("name matches op_name_exclude {:?}", r.as_str()))
    }
}

/// What `autotune` does: INC's `TuningConfig`.
#[derive(Clone, Debug)]
pub struct TuningConfig {
    /// Configurations tried in order until one gives a passing plan.
    pub config_set: Vec<MixedPrecisionConfig>,
    /// Most `eval_fn` calls for candidate plans; the fp32 baseline is one
    /// more and not counted here. Default 100.
    pub max_trials: usize,
    /// Allowed metric loss against the fp32 baseline. Default 1% relative.
    pub tolerance: Tolerance,
    /// Whether a larger metric is better (accuracy) or worse (loss, error).
    /// Default true.
    pub higher_is_better: bool,
    /// Stop starting new trials after this long (the best plan so far is
    /// returned). Default none.
    pub timeout: Option<Duration>,
    /// The search. Default [`Strategy::Default`].
    pub strategy: Strategy,
    /// Inputs for the sensitivity passes and latency measurements (run
    /// without `eval_fn`). For a graph, a few representative samples of
    /// the evaluation data; when `None`, deterministic synthetic inputs
    /// are used (and the report says so).
    pub calibration: Option<Calibration>,
    /// Repetitions when measuring latency for the speedup and the per-node
    /// times (median). Default 5.
    pub latency_reps: usize,
    /// Whether the default strategy's last step may keep in fp32 the nodes
    /// its per-node profile measures slower in low precision than in fp32
    /// (one more trial). Measured times can change between runs, so with
    /// `true` two runs can differ when a node's times are close to the
    /// threshold; `false` makes the plan depend only on the metric and the
    /// calibration outputs. Default true.
    pub prefer_measured_speed: bool,
    /// How the bf16 Gemm, MatMul and Conv nodes of a graph's candidate
    /// plans multiply, so that the plan is tuned as it will run: with
    /// `VDPBF16PS` where available ([`GemmAccumulation::Auto`], the
    /// default) or widened exactly to f32.
    pub bf16_gemm: GemmAccumulation,
}

impl Default for TuningConfig {
    fn default() -> Self {
        TuningConfig {
            config_set: vec![MixedPrecisionConfig::default()],
            max_trials: 100,
            tolerance: Tolerance::default(),
            higher_is_better: true,
            timeout: None,
            strategy: Strategy::Default,
            calibration: None,
            latency_reps: 5,
            prefer_measured_speed: true,
            bf16_gemm: GemmAccumulation::Auto,
        }
    }
}

impl TuningConfig {
    /// A default config over one mixed-precision config.
    pub fn new(config: MixedPrecisionConfig) -> Self {
        TuningConfig {
            config_set: vec![config],
            ..Default::default()
        }
    }

    /// Checks everything that does not need the model or the baseline.
    pub fn validate(&self) -> Result<Vec<CompiledFilter>, ConfigError> {
        if self.config_set.is_empty() {
            return Err(ConfigError::EmptyConfigSet);
        }
        if self.max_trials == 0 {
            return Err(ConfigError::ZeroMaxTrials);
        }
        self.tolerance.validate()?;
        self.config_set.iter().map(|c| c.validate()).collect()
    }
}
