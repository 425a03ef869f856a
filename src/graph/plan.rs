//! Precision plans: which float type each compute node stores its data in.

use std::collections::BTreeMap;
use std::path::Path;

use mixprec_kernels::FloatType;
use serde::{Deserialize, Serialize};

use super::dtype::parse_float_type;
use super::error::{GraphError, Result};
use super::graph::Graph;

/// Node name -> float type for the floating-point compute nodes of a graph.
/// Nodes a plan does not name run in f32. Index and shape ops are never in a
/// plan; data-movement ops (Reshape, Transpose, Concat, Gather, ...) keep the
/// dtype their input arrives in, so they need no casts.
///
/// Serialized as JSON `{"nodes": {"fc1": "bf16", "fc2": "f32"}}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrecisionPlan {
    #[serde(with = "float_type_map")]
    nodes: BTreeMap<String, FloatType>,
}

mod float_type_map {
    use std::collections::BTreeMap;

    use mixprec_kernels::FloatType;
    use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error};

    pub fn serialize<S: Serializer>(
        m: &BTreeMap<String, FloatType>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let names: BTreeMap<&str, &str> = m.iter().map(|(k, v)| (k.as_str(), v.name())).collect();
        names.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, FloatType>, D::Error> {
        let names = BTreeMap::<String, String>::deserialize(d)?;
        names
            .into_iter()
            .map(|(k, v)| match super::parse_float_type(&v) {
                Some(t) => Ok((k, t)),
                None => Err(D::Error::custom(format!(
                    "node `{k}`: unknown float type `{v}` (use f32, bf16 or f16)"
                ))),
            })
            .collect()
    }
}

impl PrecisionPlan {
    /// An empty plan (everything f32).
    pub fn new() -> Self {
        Self::default()
    }

    /// Every lowerable node of `graph` in `ty`.
    pub fn all(graph: &Graph, ty: FloatType) -> Self {
        PrecisionPlan {
            nodes: graph
                .lowerable_nodes()
                .into_iter()
                .map(|n| (n.name, ty))
                .collect(),
        }
    }

    /// Sets one node's float type (checked against the graph by
    /// [`PrecisionPlan::validate`] and by `compile`).
    pub fn set(&mut self, node: impl Into<String>, ty: FloatType) -> &mut Self {
        self.nodes.insert(node.into(), ty);
        self
    }

    /// The float type a plan names for a node, if any.
    pub fn get(&self, node: &str) -> Option<FloatType> {
        self.nodes.get(node).copied()
    }

    /// The float type a node runs in under this plan (f32 when unnamed).
    pub fn dtype_of(&self, node: &str) -> FloatType {
        self.get(node).unwrap_or(FloatType::F32)
    }

    /// (node, float type) pairs, sorted by node name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, FloatType)> {
        self.nodes.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// Number of nodes named.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the plan names no node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// How many named nodes use each float type.
    pub fn counts(&self) -> BTreeMap<FloatType, usize> {
        let mut c = BTreeMap::new();
        for t in self.nodes.values() {
            *c.entry(*t).or_insert(0) += 1;
        }
        c
    }

    /// Checks the plan against a graph: every name must be a node
    /// ([`GraphError::UnknownNode`]), and only floating-point compute nodes
    /// may be lowered ([`GraphError::NotLowerable`]; naming another node as
    /// f32 is allowed, it changes nothing).
    pub fn validate(&self, graph: &Graph) -> Result<()> {
        for (name, ty) in &self.nodes {
            let i = graph.node_index_of(name)?;
            let node = &graph.nodes[i];
            if *ty != FloatType::F32 && !graph.is_lowerable(node) {
                return Err(GraphError::NotLowerable {
                    name: name.clone(),
                    op_type: node.op.op_type(),
                });
            }
        }
        Ok(())
    }

    /// The plan as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a map of strings serializes")
    }

    /// Parses a plan from JSON.
    pub fn from_json(s: &str) -> Result<Self> {
        serde_json::from_str(s).map_err(|e| GraphError::PlanFormat {
            detail: e.to_string(),
        })
    }

    /// Reads a plan from a JSON file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let p = path.as_ref();
        let s = std::fs::read_to_string(p).map_err(|e| GraphError::Io {
            path: p.display().to_string(),
            source: e,
        })?;
        Self::from_json(&s)
    }

    /// Writes the plan as JSON (to a temporary file, then renamed, so a
    /// failure never leaves a half-written plan).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let p = path.as_ref();
        let io = |e| GraphError::Io {
            path: p.display().to_string(),
            source: e,
        };
        let dir = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        std::io::Write::write_all(&mut tmp, self.to_json().as_bytes()).map_err(io)?;
        tmp.persist(p).map_err(|e| io(e.error))?;
        Ok(())
    }
}
