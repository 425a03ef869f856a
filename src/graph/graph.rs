//! The validated graph: values, named nodes in topological order,
//! initializers, inputs and outputs.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use super::dtype::DType;
use super::error::{GraphError, Result};
use super::ops::Op;
use super::tensor::Tensor;

/// One dimension of a value's shape: a fixed size, or a named size known
/// only at run time (e.g. the batch).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    /// A size fixed when the graph is built.
    Fixed(usize),
    /// A size bound when the graph runs; every use of one name must agree.
    Symbolic(String),
}

impl Dim {
    /// A symbolic dimension, e.g. `Dim::sym("batch")`.
    pub fn sym(name: &str) -> Dim {
        Dim::Symbolic(name.to_string())
    }

    /// The size, if fixed.
    pub fn fixed(&self) -> Option<usize> {
        match self {
            Dim::Fixed(n) => Some(*n),
            Dim::Symbolic(_) => None,
        }
    }
}

impl From<usize> for Dim {
    fn from(n: usize) -> Dim {
        Dim::Fixed(n)
    }
}

impl From<&str> for Dim {
    fn from(s: &str) -> Dim {
        Dim::sym(s)
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbolic(s) => f.write_str(s),
        }
    }
}

/// Formats a symbolic shape as `[batch, 64]`.
pub fn shape_string(shape: &[Dim]) -> String {
    let parts: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

/// Converts a concrete shape to fixed dims.
pub fn fixed_shape(shape: &[usize]) -> Vec<Dim> {
    shape.iter().map(|&n| Dim::Fixed(n)).collect()
}

/// Index of a value in its graph (or builder).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub usize);

/// A value's static type: dtype and (possibly symbolic) shape.
#[derive(Clone, Debug, PartialEq)]
pub struct ValueInfo {
    /// Unique value name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape; dims the graph cannot know before running are symbolic.
    pub shape: Vec<Dim>,
}

/// A named operation with its input and output values.
#[derive(Clone, Debug)]
pub struct Node {
    /// Unique node name; precision plans and reports use it.
    pub name: String,
    /// The operation and its attributes.
    pub op: Op,
    /// Input values, in the op's (ONNX) order; trailing optional inputs omitted.
    pub inputs: Vec<ValueId>,
    /// Output values.
    pub outputs: Vec<ValueId>,
}

/// A floating-point compute node a precision plan may lower, as the tuner
/// lists them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LowerableNode {
    /// Node name.
    pub name: String,
    /// ONNX op type, e.g. `"Gemm"`.
    pub op_type: &'static str,
}

/// A validated graph, built with [`super::GraphBuilder`]. Nodes are stored in
/// a topological (execution) order; every value has a dtype and shape.
#[derive(Clone, Debug)]
pub struct Graph {
    pub(crate) values: Vec<ValueInfo>,
    pub(crate) nodes: Vec<Node>,
    pub(crate) inputs: Vec<ValueId>,
    pub(crate) outputs: Vec<ValueId>,
    pub(crate) initializers: HashMap<ValueId, Arc<Tensor>>,
    /// Values whose contents are known without running (initializers,
    /// constants and folded shape computations).
    pub(crate) known: HashMap<ValueId, Arc<Tensor>>,
    pub(crate) node_index: HashMap<String, usize>,
    pub(crate) value_index: HashMap<String, ValueId>,
}

impl Graph {
    /// Nodes in execution order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.node_index.get(name).map(|&i| &self.nodes[i])
    }

    /// A value's static type.
    ///
    /// # Panics
    /// If `id` does not belong to this graph.
    pub fn value(&self, id: ValueId) -> &ValueInfo {
        &self.values[id.0]
    }

    /// All values, indexed by [`ValueId`].
    pub fn values(&self) -> &[ValueInfo] {
        &self.values
    }

    /// A value by name.
    pub fn value_id(&self, name: &str) -> Option<ValueId> {
        self.value_index.get(name).copied()
    }

    /// Graph inputs (fed at run time), in declaration order.
    pub fn inputs(&self) -> &[ValueId] {
        &self.inputs
    }

    /// Graph outputs, in declaration order.
    pub fn outputs(&self) -> &[ValueId] {
        &self.outputs
    }

    /// Names of the graph inputs.
    pub fn input_names(&self) -> Vec<&str> {
        self.inputs
            .iter()
            .map(|v| self.values[v.0].name.as_str())
            .collect()
    }

    /// Names of the graph outputs.
    pub fn output_names(&self) -> Vec<&str> {
        self.outputs
            .iter()
            .map(|v| self.values[v.0].name.as_str())
            .collect()
    }

    /// The initializer (weight) behind a value, if it is one.
    pub fn initializer(&self, id: ValueId) -> Option<&Tensor> {
        self.initializers.get(&id).map(|t| t.as_ref())
    }

    /// All initializers by value id.
    pub fn initializers(&self) -> impl Iterator<Item = (ValueId, &Tensor)> {
        self.initializers.iter().map(|(k, v)| (*k, v.as_ref()))
    }

    /// The contents of a value known before running: an initializer, a
    /// `Constant`, or an integer computation folded from them (e.g. a `Shape`
    /// of a fixed-shape value).
    pub fn known_value(&self, id: ValueId) -> Option<&Tensor> {
        self.known.get(&id).map(|t| t.as_ref())
    }

    /// The node producing a value, if any.
    pub fn producer(&self, id: ValueId) -> Option<&Node> {
        self.nodes.iter().find(|n| n.outputs.contains(&id))
    }

    /// Whether a precision plan may lower this node: a floating-point
    /// compute op (GEMM, conv, elementwise math, normalization, reduction,
    /// pooling) whose output is floating point.
    pub fn is_lowerable(&self, node: &Node) -> bool {
        node.op.is_float_compute()
            && node
                .outputs
                .iter()
                .all(|o| self.values[o.0].dtype.is_float())
    }

    /// Deterministic inputs shaped like the graph's, one per graph input by
    /// name: the first symbolic dim becomes `batch` (other symbolic dims 1),
    /// floats a fixed pseudo-random stream in [-1, 1) (rounded to the input's
    /// dtype), integers and booleans zero. For benchmarks and tuning without
    /// user data.
    pub fn synthetic_inputs(&self, batch: usize) -> Result<Vec<(String, Tensor)>> {
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut out = Vec::new();
        for &id in &self.inputs {
            let info = self.value(id);
            let shape: Vec<usize> = info
                .shape
                .iter()
                .enumerate()
                .map(|(i, d)| match d {
                    Dim::Fixed(n) => *n,
                    Dim::Symbolic(_) if i == 0 => batch,
                    Dim::Symbolic(_) => 1,
                })
                .collect();
            let t = match info.dtype.float_type() {
                Some(ty) => {
                    let n: usize = shape.iter().product();
                    let data: Vec<f32> = (0..n)
                        .map(|_| {
                            // xorshift64: cheap, fixed, platform-independent.
                            state ^= state << 13;
                            state ^= state >> 7;
                            state ^= state << 17;
                            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
                        })
                        .collect();
                    Tensor::from_f32(&shape, data)?.to_float_type(ty)?
                }
                None => Tensor::zeros(info.dtype, &shape),
            };
            out.push((info.name.clone(), t));
        }
        Ok(out)
    }

    /// The nodes a precision plan may lower, in execution order, with their
    /// op types (what the tuner searches over).
    pub fn lowerable_nodes(&self) -> Vec<LowerableNode> {
        self.nodes
            .iter()
            .filter(|n| self.is_lowerable(n))
            .map(|n| LowerableNode {
                name: n.name.clone(),
                op_type: n.op.op_type(),
            })
            .collect()
    }

    pub(crate) fn node_index_of(&self, name: &str) -> Result<usize> {
        self.node_index
            .get(name)
            .copied()
            .ok_or_else(|| GraphError::UnknownNode {
                name: name.to_string(),
            })
    }
}
