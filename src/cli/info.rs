//! `mixprec info`: what this CPU offers and what each kernel family runs.

use std::io::{self, Write};

use mixprec_kernels::convert::Conversion;
use mixprec_kernels::isa::{self, ActiveReason, Isa, MAX_ISA_ENV};

use super::CliError;

/// Runs `mixprec info`, writing the report to `out`.
pub fn run(out: &mut impl Write) -> Result<(), CliError> {
    write_info(out).map_err(CliError::Output)
}

/// Writes the info report: CPU model, each feature, detected and active
/// level (with why), and each kernel family's implementation at the active level.
pub fn write_info(out: &mut impl Write) -> io::Result<()> {
    let state = isa::isa_state();
    writeln!(out, "mixprec {}", env!("CARGO_PKG_VERSION"))?;
    writeln!(
        out,
        "CPU model:      {}",
        isa::cpu_model()
            .as_deref()
            .unwrap_or("(not reported by the CPU)")
    )?;
    let features = isa::cpu_features();
    if features.is_empty() {
        writeln!(
            out,
            "CPU features:   (not an x86-64 CPU; scalar kernels only)"
        )?;
    } else {
        writeln!(out, "CPU features:")?;
        for (name, present) in features {
            writeln!(out, "  {name:<12} {}", if present { "yes" } else { "no" })?;
        }
    }
    writeln!(out, "detected level: {}", state.detected)?;
    if let ActiveReason::InvalidCap(err) = &state.reason {
        // The reason's own Display nests the whole error in parentheses;
        // a separate warning line reads better and is easy to grep for.
        let value = state.cap_env.as_deref().unwrap_or_default();
        writeln!(
            out,
            "active level:   {} (detected; cap ignored)",
            state.active
        )?;
        writeln!(out, "warning: {MAX_ISA_ENV}={value:?} is ignored: {err}")?;
    } else {
        writeln!(out, "active level:   {} ({})", state.active, state.reason)?;
    }
    let available: Vec<&str> = Isa::available().map(Isa::name).collect();
    writeln!(out, "available:      {}", available.join(", "))?;
    writeln!(
        out,
        "threads:        {} (--threads, else the CPUs this process may run on)",
        mixprec_kernels::gemm::num_threads()
    )?;
    writeln!(out, "kernels at {}:", state.active)?;
    for (family, implementation) in implementations(state.active) {
        writeln!(out, "  {family:<22} {implementation}")?;
    }
    Ok(())
}

/// `(family, implementation)` for every kernel family at `isa`.
///
pub fn implementations(isa: Isa) -> Vec<(String, String)> {
    let mut rows: Vec<(String, String)> = Conversion::ALL
        .iter()
        .map(|c| {
            (
                format!("convert {}", c.name()),
                c.implementation(isa).to_string(),
            )
        })
        .collect();
    rows.push((
        "gemm".to_string(),
        mixprec_kernels::gemm::implementation(isa).to_string(),
    ));
    rows.push((
        "conv".to_string(),
        mixprec_kernels::conv::implementation(isa).to_string(),
    ));
    rows.push((
        "dot".to_string(),
        mixprec_kernels::dot::implementation(isa).to_string(),
    ));
    rows.push((
        "elementwise".to_string(),
        mixprec_kernels::elementwise::implementation(isa).to_string(),
    ));
    rows.push((
        "norm".to_string(),
        mixprec_kernels::norm::implementation(isa).to_string(),
    ));
    rows.push((
        "pool".to_string(),
        mixprec_kernels::pool::implementation(isa).to_string(),
    ));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_names_active_level_and_every_family() {
        let mut buf = Vec::new();
        write_info(&mut buf).unwrap();
        let text = String::from_utf8(buf).unwrap();
        let active = isa::active_isa();
        assert!(
            text.contains(&format!("active level:   {active}")),
            "{text}"
        );
        for c in Conversion::ALL {
            assert!(text.contains(c.implementation(active)), "{text}");
        }
        for family in ["gemm", "conv", "dot", "elementwise", "norm", "pool"] {
            assert!(text.lines().any(|l| l.trim_start().starts_with(family)));
        }
        assert!(text.contains(mixprec_kernels::elementwise::implementation(active)));
        assert!(text.contains(mixprec_kernels::norm::implementation(active)));
        assert!(text.contains(mixprec_kernels::gemm::implementation(active)));
        assert!(text.contains(mixprec_kernels::conv::implementation(active)));
        assert!(text.contains(mixprec_kernels::dot::implementation(active)));
        assert!(text.contains(mixprec_kernels::pool::implementation(active)));
    }

    #[test]
    fn every_family_reports_per_level() {
        for isa in Isa::ALL {
            let rows = implementations(isa);
            let get = |f: &str| rows.iter().find(|(k, _)| k == f).unwrap().1.clone();
            let families = ["elementwise", "norm", "gemm", "conv", "dot", "pool"].map(get);
            let prefix = if isa == Isa::Scalar {
                "scalar"
            } else if isa == Isa::Avx2 {
                "avx2"
            } else {
                "avx512"
            };
            for implementation in families {
                assert!(
                    implementation.starts_with(prefix),
                    "{isa}: {implementation}"
                );
            }
        }
    }
}
