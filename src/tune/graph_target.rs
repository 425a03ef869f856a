//! The op-graph as a [`Tunable`] model.

use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet};

use crate::graph::{
    CompileOptions, CompiledModel, GemmAccumulation, Graph, GraphError, PrecisionPlan, Tensor,
};

use super::target::{BoxError, DtypeMap, Tunable, TunableNode};

/// Batch size of synthetic calibration inputs (for a symbolic batch dim).
const SYNTHETIC_BATCH: usize = 8;

/// A graph with its calibration inputs.
pub struct GraphTarget<'g> {
    graph: &'g Graph,
    inputs: Vec<(String, Tensor)>,
    synthetic: bool,
    costs: OnceCell<Option<BTreeMap<String, f64>>>,
    options: CompileOptions,
}

impl<'g> GraphTarget<'g> {
    /// Wraps `graph` with calibration inputs (one tensor per graph input,
    /// by name), or deterministic synthetic ones when `None`.
    pub fn new(
        graph: &'g Graph,
        calibration: Option<&[(String, Tensor)]>,
    ) -> Result<Self, GraphError> {
        let (inputs, synthetic) = match calibration {
            Some(c) => (c.to_vec(), false),
            None => (graph.synthetic_inputs(SYNTHETIC_BATCH)?, true),
        };
        Ok(GraphTarget {
            graph,
            inputs,
            synthetic,
            costs: OnceCell::new(),
            options: CompileOptions::default(),
        })
    }

    /// Compiles the candidate plans with `bf16_gemm` (see
    /// [`super::TuningConfig::bf16_gemm`]).
    pub fn with_bf16_gemm(mut self, bf16_gemm: GemmAccumulation) -> Self {
        self.options.bf16_gemm = bf16_gemm;
        self
    }

    /// Whether the calibration inputs were made up (no calibration given).
    pub fn is_synthetic(&self) -> bool {
        self.synthetic
    }

    fn refs(&self) -> Vec<(&str, &Tensor)> {
        self.inputs.iter().map(|(n, t)| (n.as_str(), t)).collect()
    }

    /// Converts a dtype map into the graph's plan type.
    pub fn plan(map: &DtypeMap) -> PrecisionPlan {
        let mut p = PrecisionPlan::new();
        for (k, v) in map {
            p.set(k.clone(), *v);
        }
        p
    }
}

impl Tunable for GraphTarget<'_> {
    type Model = CompiledModel;

    fn tunable_nodes(&self) -> Vec<TunableNode> {
        let g = self.graph;
        let lowerable: BTreeSet<String> = g.lowerable_nodes().into_iter().map(|n| n.name).collect();
        g.lowerable_nodes()
            .into_iter()
            .map(|ln| {
                // Walk back through data-movement and shape ops to the
                // nearest lowerable producers.
                let mut producers = BTreeSet::new();
                let mut stack: Vec<_> = g
                    .node(&ln.name)
                    .map(|n| n.inputs.clone())
                    .unwrap_or_default();
                let mut seen = BTreeSet::new();
                while let Some(v) = stack.pop() {
                    if !seen.insert(v.0) {
                        continue;
                    }
                    if let Some(p) = g.producer(v) {
                        if lowerable.contains(&p.name) {
                            producers.insert(p.name.clone());
                        } else {
                            stack.extend(p.inputs.iter().copied());
                        }
                    }
                }
                TunableNode {
                    name: ln.name,
                    op_type: ln.op_type.to_string(),
                    producers: producers.into_iter().collect(),
                }
            })
            .collect()
    }

    fn compile(&self, plan: &DtypeMap) -> Result<CompiledModel, BoxError> {
        Ok(self.graph.compile_with(&Self::plan(plan), &self.options)?)
    }

    fn forward(&self, model: &CompiledModel) -> Result<Vec<f32>, BoxError> {
        let outs = model.run_ordered(&self.refs())?;
        let mut v = Vec::new();
        for t in outs.iter().filter(|t| t.dtype().is_float()) {
            v.extend(t.to_f32_vec());
        }
        Ok(v)
    }

    fn node_times(&self, model: &CompiledModel) -> Result<Option<BTreeMap<String, f64>>, BoxError> {
        let (_, profile) = model.run_profiled(&self.refs())?;
        let mut m = BTreeMap::new();
        for e in profile.entries.iter().filter(|e| !e.inserted_cast) {
            *m.entry(e.name.clone()).or_insert(0.0) += e.seconds;
        }
        Ok(Some(m))
    }

    fn node_costs(&self) -> Option<BTreeMap<String, f64>> {
        // Bytes moved by each node in fp32: deterministic, unlike times.
        self.costs
            .get_or_init(|| {
                let model = self.graph.compile(&PrecisionPlan::new()).ok()?;
                let (_, profile) = model.run_profiled(&self.refs()).ok()?;
                let mut m = BTreeMap::new();
                for e in profile.entries.iter().filter(|e| !e.inserted_cast) {
                    *m.entry(e.name.clone()).or_insert(0.0) += e.bytes as f64;
                }
                Some(m)
            })
            .clone()
    }
}
