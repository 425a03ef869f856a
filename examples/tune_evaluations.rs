//! Evaluations used by the default tuning strategy against INC 2.x's op-wise
//! order (`Strategy::OpWise`), on the ONNX backend conformance models:
//!
//! ```text
//! MIXPREC_ONNX_BACKEND_DIR=../shared/onnx-backend cargo run --release --example tune_evaluations
//! ```
//!
//! Each model with at least two lowerable nodes is tuned for fp16 and for
//! bf16 with the metric "cosine similarity of the outputs to fp32 on the
//! case's own input" and a tolerance tight enough (1e-6 relative) that some
//! nodes usually have to fall back. Calibration is the same input.

use std::path::PathBuf;

use mixprec::graph::{CompiledModel, Tensor};
use mixprec::kernels::FloatType;
use mixprec::onnx::{self, ImportOptions};
use mixprec::tune::{MixedPrecisionConfig, Strategy, Tolerance, TuningConfig, autotune};

const MAX_PB_BYTES: u64 = 64 << 20;

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 {
        return if na == nb { 1.0 } else { 0.0 };
    }
    dot / (na * nb)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(
        std::env::var_os("MIXPREC_ONNX_BACKEND_DIR").ok_or("set MIXPREC_ONNX_BACKEND_DIR")?,
    );
    let mut cases: Vec<PathBuf> = ["pytorch-converted", "pytorch-operator", "simple"]
        .iter()
        .filter_map(|d| std::fs::read_dir(root.join(d)).ok())
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    cases.sort();
    println!(
        "case                                   dtype  nodes  default  opwise  (fp32 nodes default/opwise)"
    );
    let (mut sum_default, mut sum_opwise, mut runs) = (0usize, 0usize, 0usize);
    for case in cases {
        let Ok(model) = onnx::load(case.join("model.onnx"), &ImportOptions::default()) else {
            continue;
        };
        let graph = &model.graph;
        let nodes = graph.lowerable_nodes().len();
        if nodes < 2 {
            continue;
        }
        let mut inputs = Vec::new();
        for (i, name) in model.inputs.iter().enumerate() {
            let pb = case.join("test_data_set_0").join(format!("input_{i}.pb"));
            let (_, t) = onnx::load_tensor(&pb, MAX_PB_BYTES)?;
            inputs.push((name.clone(), t.to_tensor()?));
        }
        let refs: Vec<(&str, &Tensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let Ok(reference) = graph
            .compile(&mixprec::graph::PrecisionPlan::new())
            .and_then(|m| m.run_ordered(&refs))
        else {
            continue;
        };
        let reference: Vec<Vec<f32>> = reference.iter().map(Tensor::to_f32_vec).collect();
        let eval = |m: &CompiledModel| -> f64 {
            let out = m.run_ordered(&refs).expect("the model ran in fp32");
            out.iter()
                .zip(&reference)
                .map(|(o, r)| cosine(&o.to_f32_vec(), r))
                .fold(1.0, f64::min)
        };
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        for dtype in [FloatType::F16, FloatType::Bf16] {
            let config = |strategy| TuningConfig {
                strategy,
                tolerance: Tolerance::Relative(1e-6),
                calibration: Some(inputs.clone()),
                prefer_measured_speed: false,
                ..TuningConfig::new(
                    MixedPrecisionConfig::new(vec![dtype, FloatType::F32]).expect("valid dtypes"),
                )
            };
            let default = autotune(graph, &config(Strategy::Default), eval)?;
            let opwise = autotune(graph, &config(Strategy::OpWise), eval)?;
            let fp32 = |p: &mixprec::graph::PrecisionPlan| {
                p.iter().filter(|(_, t)| *t == FloatType::F32).count()
            };
            println!(
                "{name:<38} {:<5} {nodes:>5} {:>8} {:>7}  ({}/{})",
                dtype.name(),
                default.report.evaluations,
                opwise.report.evaluations,
                fp32(&default.plan),
                fp32(&opwise.plan),
            );
            sum_default += default.report.evaluations;
            sum_opwise += opwise.report.evaluations;
            runs += 1;
        }
    }
    println!(
        "{runs} tunings: default strategy {sum_default} evaluations in total, op-wise {sum_opwise}"
    );
    Ok(())
}
