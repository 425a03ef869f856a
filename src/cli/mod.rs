//! The `mixprec` command line: argument types and the subcommand
//! implementations, kept in the library so they can be tested and so the
//! tuner and executor layers can be wired in with one function call each.
//!
//! `src/bin/mixprec.rs` only parses [`Cli`], calls [`execute`] and turns a
//! [`CliError`] into one `error: ...` line and an exit code.

pub mod bench;
pub mod convert;
pub mod info;
pub mod model;
pub mod run;
pub mod tune;

use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::safetensors_stream::ConvertError;

/// `mixprec`: mixed-precision (bf16 / fp16 with fp32 fallback) inference on x86.
#[derive(Debug, Parser)]
#[command(name = "mixprec", version, about, long_about = None)]
pub struct Cli {
    /// Threads for the kernels' parallel steps (GEMM, convolutions,
    /// elementwise parts); default: as many as the CPUs this process may
    /// run on. Results do not depend on it.
    #[arg(long, global = true, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// The subcommand to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The five subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Find a mixed-precision plan that keeps the metric within tolerance
    /// (default: the built-in digits demo).
    Tune(TuneArgs),
    /// Run a model (optionally under a saved precision plan) on inputs from a
    /// safetensors file.
    Run(RunArgs),
    /// Convert every floating-point tensor of a safetensors file to bf16, f16 or f32.
    Convert(ConvertArgs),
    /// Measure kernel throughput per ISA level (and, with a model, latency).
    Bench(BenchArgs),
    /// Show the CPU, its features, the active ISA level and each kernel's implementation.
    Info,
}

/// Which model a command works on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    /// One of the built-in digits MLPs, by key (`plain`, `folded_off100`, `folded_off1000`).
    Builtin(String),
    /// A model file (ONNX).
    File(PathBuf),
}

impl ModelSource {
    /// The built-in model the demo tunes.
    pub const DEFAULT_BUILTIN: &'static str = "folded_off100";
}

impl Default for ModelSource {
    fn default() -> Self {
        ModelSource::Builtin(Self::DEFAULT_BUILTIN.to_string())
    }
}

impl FromStr for ModelSource {
    type Err = String;

    /// `builtin` (the demo model), `builtin:KEY`, or a path to a model file.
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "builtin" {
            return Ok(ModelSource::default());
        }
        if let Some(key) = s.strip_prefix("builtin:") {
            return if crate::demo::MODEL_KEYS.contains(&key) {
                Ok(ModelSource::Builtin(key.to_string()))
            } else {
                Err(format!(
                    "unknown built-in model {key:?}; built-in models: {}",
                    crate::demo::MODEL_KEYS.join(", ")
                ))
            };
        }
        if s.is_empty() {
            return Err("empty model path".to_string());
        }
        Ok(ModelSource::File(PathBuf::from(s)))
    }
}

impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelSource::Builtin(key) => write!(f, "builtin:{key}"),
            ModelSource::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// The metric `tune` keeps within tolerance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default)]
pub enum Metric {
    /// Top-1 accuracy against the `labels` tensor of the eval data.
    #[default]
    Top1,
    /// Top-1 agreement with the fp32 model (needs no labels).
    Agreement,
    /// Mean cosine similarity of the outputs with the fp32 model's.
    Cosine,
    /// Mean squared error against the fp32 model's outputs (lower is
    /// better; a plan passes when it is at most tolerable-loss x the mean
    /// square of the fp32 outputs).
    Mse,
}

/// A low-precision dtype the tuner may lower nodes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LowDtype {
    /// bfloat16.
    Bf16,
    /// IEEE binary16.
    #[value(alias = "f16")]
    Fp16,
}

/// How bf16 Gemm, MatMul and Conv nodes multiply
/// ([`crate::graph::GemmAccumulation`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default)]
pub enum Bf16Gemm {
    /// `VDPBF16PS` where the CPU has AVX512_BF16 (about twice the f32 FMA
    /// rate; subnormal bf16 operands and results count as zero), else widen.
    #[default]
    Auto,
    /// Widen bf16 operands exactly to f32 and use f32 FMAs: no flushing,
    /// the same bits on every machine at a given ISA level.
    Widen,
}

impl Bf16Gemm {
    /// The name the command line spells.
    pub const fn name(self) -> &'static str {
        match self {
            Bf16Gemm::Auto => "auto",
            Bf16Gemm::Widen => "widen",
        }
    }
}

impl From<Bf16Gemm> for crate::graph::GemmAccumulation {
    fn from(b: Bf16Gemm) -> Self {
        match b {
            Bf16Gemm::Auto => crate::graph::GemmAccumulation::Auto,
            Bf16Gemm::Widen => crate::graph::GemmAccumulation::WidenToF32,
        }
    }
}

/// The tuning strategy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default)]
pub enum Strategy {
    /// Sensitivity-guided fallback with bisection (mixprec's own).
    #[default]
    Default,
    /// Intel Neural Compressor 3.x: all low, then all fp32.
    Sequential,
    /// Intel Neural Compressor 2.x: op-wise fallback.
    #[value(name = "op-wise", alias = "opwise")]
    OpWise,
}

/// Arguments of `mixprec tune`.
#[derive(Clone, Debug, Args)]
pub struct TuneArgs {
    /// Model: `builtin` (the digits demo, `folded_off100`), `builtin:KEY`, or an ONNX file.
    #[arg(long, default_value = "builtin")]
    pub model: ModelSource,
    /// Eval data: a safetensors file with one tensor per graph input (by name),
    /// plus `labels` for top1. Default for the built-in model: its 540 test images.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Metric to keep within tolerance.
    #[arg(long, value_enum, default_value_t = Metric::Top1)]
    pub metric: Metric,
    /// Low-precision dtypes to try, in order (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "bf16")]
    pub dtype: Vec<LowDtype>,
    /// Tolerable relative loss of the metric (0.01 = 1% of the fp32
    /// baseline; for mse, the bound is this times the fp32 outputs' mean square).
    #[arg(long, default_value_t = 0.01, value_parser = parse_tolerance)]
    pub tolerable_loss: f64,
    /// Most evaluations the tuner may spend besides the fp32 baseline
    /// (default: the tuner's own, 100).
    #[arg(long, value_parser = parse_positive)]
    pub max_trials: Option<usize>,
    /// Tuning strategy.
    #[arg(long, value_enum, default_value_t = Strategy::Default)]
    pub strategy: Strategy,
    /// Write the chosen precision plan here (JSON).
    #[arg(long)]
    pub plan_out: Option<PathBuf>,
    /// Write the tuning report here (JSON).
    #[arg(long)]
    pub report_out: Option<PathBuf>,
    /// How bf16 Gemm, MatMul and Conv nodes multiply while tuning; run the
    /// plan with the same choice.
    #[arg(long, value_enum, default_value_t = Bf16Gemm::Auto)]
    pub bf16_gemm: Bf16Gemm,
    /// Draw the tuning picture here (SVG): the metric per evaluation against
    /// the tolerance, and each node's dtype, sensitivity and share of fp32
    /// time. Written after the plan and report, so a failure here loses neither.
    #[arg(long)]
    pub svg: Option<PathBuf>,
}

/// Arguments of `mixprec run`.
#[derive(Clone, Debug, Args)]
pub struct RunArgs {
    /// Model: `builtin`, `builtin:KEY`, or an ONNX file.
    #[arg(long, default_value = "builtin")]
    pub model: ModelSource,
    /// Precision plan (JSON from `tune --plan-out`); without it the model runs in fp32.
    #[arg(long)]
    pub plan: Option<PathBuf>,
    /// Inputs: a safetensors file with one tensor per graph input, by name.
    #[arg(long)]
    pub input: PathBuf,
    /// Where to write the outputs (safetensors, one tensor per graph output).
    #[arg(long)]
    pub output: PathBuf,
    /// How bf16 Gemm, MatMul and Conv nodes multiply.
    #[arg(long, value_enum, default_value_t = Bf16Gemm::Auto)]
    pub bf16_gemm: Bf16Gemm,
}

/// Target dtype of `mixprec convert`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ConvertTo {
    /// bfloat16.
    Bf16,
    /// IEEE binary16.
    #[value(alias = "fp16")]
    F16,
    /// IEEE binary32.
    #[value(alias = "fp32")]
    F32,
}

impl From<ConvertTo> for mixprec_kernels::FloatType {
    fn from(to: ConvertTo) -> Self {
        match to {
            ConvertTo::Bf16 => mixprec_kernels::FloatType::Bf16,
            ConvertTo::F16 => mixprec_kernels::FloatType::F16,
            ConvertTo::F32 => mixprec_kernels::FloatType::F32,
        }
    }
}

/// Arguments of `mixprec convert`.
#[derive(Clone, Debug, Args)]
pub struct ConvertArgs {
    /// The safetensors file to read (never modified).
    pub input: PathBuf,
    /// Dtype for every floating-point (f32/bf16/f16) tensor.
    #[arg(long, value_enum)]
    pub to: ConvertTo,
    /// Output file; written atomically (temporary file in the same folder, then rename).
    #[arg(short, long)]
    pub output: PathBuf,
}

/// Arguments of `mixprec bench`.
#[derive(Clone, Debug, Args)]
pub struct BenchArgs {
    /// Measure fp32 vs plan latency and throughput of this model (`builtin`,
    /// `builtin:KEY` or an ONNX file) instead of the kernel table.
    #[arg(long)]
    pub model: Option<ModelSource>,
    /// Precision plan for --model (default: every lowerable node in bf16).
    #[arg(long, requires = "model")]
    pub plan: Option<PathBuf>,
    /// Inputs for --model: a safetensors file with one tensor per graph
    /// input (default: the demo's 540 test images for `builtin`, synthetic
    /// inputs for a model file).
    #[arg(long, requires = "model")]
    pub data: Option<PathBuf>,
    /// Batch for --model: the first N samples of the data, or the size of
    /// synthetic inputs (default 32).
    #[arg(long, requires = "model", value_parser = parse_positive)]
    pub batch: Option<usize>,
    /// Print one JSON object per measurement instead of a table.
    #[arg(long)]
    pub json: bool,
    /// After the --model table, where each plan's run spends its time: per
    /// op type and the slowest steps (fastest of 5 profiled runs).
    #[arg(long, requires = "model", conflicts_with = "json")]
    pub profile: bool,
    /// How the plan's bf16 Gemm, MatMul and Conv nodes multiply.
    #[arg(long, value_enum, default_value_t = Bf16Gemm::Auto, requires = "model")]
    pub bf16_gemm: Bf16Gemm,
    /// Draw a roofline of this machine with every kernel measured (SVG).
    #[arg(long, conflicts_with = "model")]
    pub svg: Option<PathBuf>,
}

fn parse_positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{s:?} is not a positive integer")),
    }
}

fn parse_tolerance(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if v.is_finite() && (0.0..1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{s} is not in [0, 1)"))
    }
}

/// Everything a subcommand can fail with; `Display` is the one line the
/// binary prints after `error: `.
#[derive(Debug)]
pub enum CliError {
    /// The subcommand (or option) needs a layer that is not built yet.
    NotAvailable {
        /// What was asked for, e.g. "`mixprec tune`".
        what: &'static str,
        /// What it waits for, e.g. "the op-graph and tuner layers".
        needs: &'static str,
    },
    /// `convert` failed.
    Convert(ConvertError),
    /// Writing to stdout failed (e.g. a closed pipe).
    Output(std::io::Error),
    /// Any other failure, already phrased for the user.
    Other(String),
}

impl CliError {
    /// The process exit code for this error: 2 for "not available yet", 1 otherwise.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::NotAvailable { .. } => ExitCode::from(2),
            _ => ExitCode::FAILURE,
        }
    }
}

impl fmt::Display for CliError {
    /// One line: the binary prints exactly one `error:` line, so line
    /// breaks inside nested messages become `; `.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            CliError::NotAvailable { what, needs } => {
                format!("{what} is not available yet (it needs {needs})")
            }
            CliError::Convert(e) => format!("convert: {e}"),
            CliError::Output(e) => format!("cannot write output: {e}"),
            CliError::Other(msg) => msg.clone(),
        };
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim_end)
            .filter(|l| !l.is_empty())
            .collect();
        f.write_str(&lines.join("; "))
    }
}

impl std::error::Error for CliError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CliError::Convert(e) => Some(e),
            CliError::Output(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ConvertError> for CliError {
    fn from(e: ConvertError) -> Self {
        CliError::Convert(e)
    }
}

/// Runs one parsed command, writing its normal output to stdout.
pub fn execute(cli: Cli) -> Result<(), CliError> {
    if let Some(threads) = cli.threads {
        mixprec_kernels::gemm::set_num_threads(threads.into());
    }
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Tune(args) => tune(&args),
        Command::Run(args) => run(&args),
        Command::Convert(args) => convert::run(&args, &mut out),
        Command::Bench(args) => bench::run(&args, &mut out),
        Command::Info => info::run(&mut out),
    }
}

/// `mixprec tune`: see [`tune::run`].
pub fn tune(args: &TuneArgs) -> Result<(), CliError> {
    tune::run(args, &mut std::io::stdout().lock())
}

/// `mixprec run`: see [`run::run`].
pub fn run(args: &RunArgs) -> Result<(), CliError> {
    run::run(args, &mut std::io::stdout().lock())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn tune_defaults_to_the_builtin_demo() {
        let cli = Cli::try_parse_from(["mixprec", "tune"]).unwrap();
        let Command::Tune(args) = cli.command else {
            panic!("parsed {:?}", cli.command)
        };
        assert_eq!(
            args.model,
            ModelSource::Builtin("folded_off100".to_string())
        );
        assert_eq!(args.dtype, vec![LowDtype::Bf16]);
        assert_eq!(args.tolerable_loss, 0.01);
        assert_eq!(args.metric, Metric::Top1);
    }

    #[test]
    fn tune_parses_every_option() {
        let cli = Cli::try_parse_from([
            "mixprec",
            "tune",
            "--model",
            "m.onnx",
            "--data",
            "eval.safetensors",
            "--metric",
            "agreement",
            "--dtype",
            "bf16,fp16",
            "--tolerable-loss",
            "0.02",
            "--max-trials",
            "7",
            "--strategy",
            "op-wise",
            "--plan-out",
            "p.json",
            "--report-out",
            "r.json",
        ])
        .unwrap();
        let Command::Tune(a) = cli.command else {
            panic!()
        };
        assert_eq!(a.model, ModelSource::File("m.onnx".into()));
        assert_eq!(a.data.as_deref(), Some("eval.safetensors".as_ref()));
        assert_eq!(a.metric, Metric::Agreement);
        assert_eq!(a.dtype, vec![LowDtype::Bf16, LowDtype::Fp16]);
        assert_eq!(a.tolerable_loss, 0.02);
        assert_eq!(a.max_trials, Some(7));
        assert_eq!(a.strategy, Strategy::OpWise);
        assert_eq!(a.plan_out.as_deref(), Some("p.json".as_ref()));
        assert_eq!(a.report_out.as_deref(), Some("r.json".as_ref()));
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for argv in [
            &["mixprec", "tune", "--tolerable-loss", "1.5"][..],
            &["mixprec", "tune", "--tolerable-loss", "nan"],
            &["mixprec", "tune", "--model", "builtin:nope"],
            &["mixprec", "tune", "--dtype", "int8"],
            &[
                "mixprec",
                "convert",
                "a.safetensors",
                "--to",
                "f64",
                "-o",
                "b",
            ],
            &["mixprec", "convert", "a.safetensors", "--to", "bf16"],
            &["mixprec", "run", "--input", "x"],
            &["mixprec", "bench", "--plan", "p.json"],
            &["mixprec", "info", "--bogus"],
        ] {
            assert!(Cli::try_parse_from(argv).is_err(), "{argv:?} parsed");
        }
    }

    #[test]
    fn builtin_keys_parse() {
        assert_eq!(
            "builtin:plain".parse::<ModelSource>(),
            Ok(ModelSource::Builtin("plain".into()))
        );
        assert_eq!("builtin".parse::<ModelSource>(), Ok(ModelSource::default()));
    }

    #[test]
    fn error_display_is_one_line() {
        let e = CliError::Other("first\nsecond\r\nthird".to_string());
        assert_eq!(e.to_string(), "first; second; third");
        assert_eq!(e.exit_code(), ExitCode::FAILURE);
    }
}
