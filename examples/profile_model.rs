//! Per-step time of an ONNX model under all-f32, all-bf16 and all-f16 plans:
//! `cargo run --release --example profile_model -- model.onnx [batch] [--keep-all-steps] [--steps]`
//! (`--steps`: every step in execution order, not only the totals per op type).
//! Prints the steps that take the most time, grouped by op type;
//! `--keep-all-steps` keeps the steps compile would fold into GEMMs.

use std::collections::BTreeMap;

use mixprec::graph::{CompileOptions, PrecisionPlan};
use mixprec::kernels::FloatType;
use mixprec::onnx::{ImportOptions, load};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().collect();
    let options = CompileOptions {
        keep_all_steps: args.iter().any(|a| a == "--keep-all-steps"),
        ..Default::default()
    };
    let every_step = args.iter().any(|a| a == "--steps");
    args.retain(|a| a != "--keep-all-steps" && a != "--steps");
    let path = args
        .get(1)
        .ok_or("usage: profile_model MODEL.onnx [BATCH] [--keep-all-steps] [--steps]")?;
    let batch: usize = args.get(2).map_or(Ok(1), |b| b.parse())?;
    let model = load(path, &ImportOptions::default())?;
    let inputs = model.graph.synthetic_inputs(batch)?;
    let feeds: Vec<(&str, &mixprec::graph::Tensor)> =
        inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
    for ty in [FloatType::F32, FloatType::Bf16, FloatType::F16] {
        let compiled = model
            .graph
            .compile_with(&PrecisionPlan::all(&model.graph, ty), &options)?;
        compiled.run(&feeds)?;
        let mut best: Option<mixprec::graph::Profile> = None;
        for _ in 0..5 {
            let (_, p) = compiled.run_profiled(&feeds)?;
            if best
                .as_ref()
                .is_none_or(|b| p.total_seconds < b.total_seconds)
            {
                best = Some(p);
            }
        }
        let p = best.expect("five runs");
        let mut by_op: BTreeMap<&str, (f64, usize)> = BTreeMap::new();
        for e in &p.entries {
            let s = by_op.entry(e.op_type).or_default();
            s.0 += e.seconds;
            s.1 += 1;
        }
        let mut rows: Vec<_> = by_op.into_iter().collect();
        rows.sort_by(|a, b| b.1.0.total_cmp(&a.1.0));
        println!(
            "{ty:?}: total {:.2} ms ({} values kept NCHW16c)",
            p.total_seconds * 1e3,
            compiled.nchw16c_values().len()
        );
        for (op, (s, n)) in rows {
            println!("  {op:<20} {n:>4} steps {:>8.2} ms", s * 1e3);
        }
        if every_step {
            for e in &p.entries {
                let (ms, op, name) = (e.seconds * 1e3, e.op_type, &e.name);
                println!("    {ms:8.3} ms  {op:<20} {name}");
            }
        }
    }
    Ok(())
}
