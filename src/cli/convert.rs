//! `mixprec convert`: change the dtype of every f32/bf16/f16 tensor of a
//! safetensors file, streaming, with an atomic write of the output.

use std::collections::BTreeMap;
use std::io::Write;

use crate::safetensors_stream::{self, ConvertSummary};

use super::{CliError, ConvertArgs};

/// Runs `mixprec convert`, printing a summary to `out`.
pub fn run(args: &ConvertArgs, out: &mut impl Write) -> Result<(), CliError> {
    let summary = safetensors_stream::convert_file(&args.input, &args.output, args.to.into())?;
    write_summary(out, args, &summary).map_err(CliError::Output)
}

fn write_summary(
    out: &mut impl Write,
    args: &ConvertArgs,
    s: &ConvertSummary,
) -> std::io::Result<()> {
    let to = mixprec_kernels::FloatType::from(args.to).name();
    let mut by_pair: BTreeMap<String, usize> = BTreeMap::new();
    for (_, from, new) in &s.converted {
        *by_pair.entry(format!("{from}->{new}")).or_default() += 1;
    }
    let pairs: Vec<String> = by_pair.iter().map(|(k, n)| format!("{k}: {n}")).collect();
    write!(out, "converted {} tensor(s) to {to}", s.converted.len())?;
    if !pairs.is_empty() {
        write!(out, " ({})", pairs.join(", "))?;
    }
    writeln!(
        out,
        "; copied unchanged: {} already {to}, {} integer/bool",
        s.already_target, s.non_float
    )?;
    if !s.other_float.is_empty() {
        let names: Vec<String> = s
            .other_float
            .iter()
            .map(|(name, dtype)| format!("{name} ({dtype})"))
            .collect();
        writeln!(
            out,
            "note: kept {} floating-point tensor(s) in their own dtype (mixprec converts f32, bf16 and f16 only): {}",
            s.other_float.len(),
            names.join(", ")
        )?;
    }
    writeln!(
        out,
        "wrote {} ({} bytes; input {} bytes)",
        args.output.display(),
        s.bytes_out,
        s.bytes_in
    )
}
