//! `mixprec run`: run a model (optionally under a saved plan) on inputs from
//! a safetensors file and write its outputs to another one.

use std::io::Write;

use mixprec_kernels::FloatType;

use crate::graph::{GemmAccumulation, PrecisionPlan, Tensor, Weights};

use super::model::{self, Output};
use super::{CliError, ModelSource, RunArgs};

/// Runs `mixprec run`, printing one summary line per output to `out`.
pub fn run(args: &RunArgs, out: &mut impl Write) -> Result<(), CliError> {
    let mut inputs = vec![args.input.as_path()];
    if let ModelSource::File(p) = &args.model {
        inputs.push(p.as_path());
    }
    if let Some(p) = &args.plan {
        inputs.push(p.as_path());
    }
    let output = Output::reserve(&args.output, "output", &inputs)?;
    let loaded = model::load_model(&args.model)?;
    let plan = match &args.plan {
        Some(p) => model::load_plan(p, &loaded.graph)?,
        None => PrecisionPlan::new(),
    };
    let data = model::load_data(&args.input, &loaded.graph, "input")?;
    let outs = outputs_f32(&loaded.graph, &plan, args.bf16_gemm.into(), &data.refs())?;
    let mut weights = Weights::new();
    let mut lines = Vec::new();
    for (name, t) in outs {
        lines.push(format!("  {name}: {:?} {}", t.shape(), t.dtype()));
        weights.insert(name, t);
    }
    weights.set_metadata("producer", format!("mixprec {}", env!("CARGO_PKG_VERSION")));
    weights.set_metadata("model", loaded.label.clone());
    if let Some(p) = &args.plan {
        weights.set_metadata("plan", p.display().to_string());
    }
    let bytes = weights
        .to_bytes()
        .map_err(|e| CliError::Other(format!("serializing the outputs: {e}")))?;
    let path = output.path().display().to_string();
    output.commit(&bytes)?;
    let write = |out: &mut dyn Write| -> std::io::Result<()> {
        writeln!(
            out,
            "ran {} on {} sample(s) with plan {} ({})",
            loaded.label,
            data.batch,
            args.plan.as_ref().map_or_else(
                || "fp32 (none given)".to_string(),
                |p| p.display().to_string()
            ),
            model::plan_counts(&loaded.graph, &plan)
        )?;
        if !data.ignored.is_empty() {
            writeln!(
                out,
                "note: ignored tensors that are not graph inputs: {}",
                data.ignored.join(", ")
            )?;
        }
        writeln!(out, "wrote {path}:")?;
        for l in &lines {
            writeln!(out, "{l}")?;
        }
        Ok(())
    };
    write(out).map_err(CliError::Output)
}

/// Compiles `graph` under `plan` (bf16 GEMMs as `bf16_gemm` says), runs it
/// and returns the outputs by graph name, floating-point ones widened to
/// f32 (exact) as `mixprec run` writes them: outputs are f32 whatever
/// precision the last node ran in.
pub fn outputs_f32(
    graph: &crate::graph::Graph,
    plan: &PrecisionPlan,
    bf16_gemm: GemmAccumulation,
    inputs: &[(&str, &Tensor)],
) -> Result<Vec<(String, Tensor)>, CliError> {
    let compiled = model::compile(graph, plan, bf16_gemm, "given")?;
    let outs = compiled
        .run_ordered(inputs)
        .map_err(|e| CliError::Other(format!("running the model: {e}")))?;
    graph
        .output_names()
        .iter()
        .zip(outs)
        .map(|(n, t)| {
            let t = match t.dtype().float_type() {
                Some(ft) if ft != FloatType::F32 => t
                    .to_float_type(FloatType::F32)
                    .map_err(|e| CliError::Other(format!("widening output `{n}`: {e}")))?,
                _ => t,
            };
            Ok((n.to_string(), t))
        })
        .collect()
}
