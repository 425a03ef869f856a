//! What the tuner needs from a model: [`Tunable`]. The op-graph implements it
//! (see `graph_target.rs`); tests and other back ends can implement it for
//! their own models.

use std::collections::BTreeMap;
use std::error::Error;

use mixprec_kernels::FloatType;

/// A boxed error from a [`Tunable`] model.
pub type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// Node name -> dtype for lowerable nodes; a node not listed runs in f32.
pub type DtypeMap = BTreeMap<String, FloatType>;

/// A node a precision plan may lower.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunableNode {
    /// Node name (what plans and reports refer to).
    pub name: String,
    /// Op type, e.g. `"Gemm"`.
    pub op_type: String,
    /// The lowerable nodes whose outputs feed this node, directly or through
    /// nodes that are not lowerable (shape ops). Used to merge fp32 regions
    /// so casts don't ping-pong.
    pub producers: Vec<String>,
}

/// A model the tuner can compile under a precision plan and run on its
/// calibration inputs.
pub trait Tunable {
    /// The executable form, handed to the evaluation function.
    type Model;

    /// The lowerable nodes, in execution order.
    fn tunable_nodes(&self) -> Vec<TunableNode>;

    /// Compiles the model with these node dtypes (absent = f32).
    fn compile(&self, plan: &DtypeMap) -> Result<Self::Model, BoxError>;

    /// Runs the calibration inputs and returns every output, flattened to
    /// f32 and concatenated (the sensitivity passes compare these).
    fn forward(&self, model: &Self::Model) -> Result<Vec<f32>, BoxError>;

    /// Seconds each node took on one calibration pass, if the model can
    /// profile (for the report).
    fn node_times(&self, model: &Self::Model) -> Result<Option<BTreeMap<String, f64>>, BoxError> {
        let _ = model;
        Ok(None)
    }

    /// A deterministic cost per node in f32 (e.g. FLOPs plus bytes moved),
    /// if known. The search orders its "keep it low?" trials by it; measured
    /// times are not used for decisions so that the same inputs give the
    /// same plan.
    fn node_costs(&self) -> Option<BTreeMap<String, f64>> {
        None
    }
}
