//! The importer's working form of an ONNX graph: nodes with decoded
//! attributes, every constant (initializers, `Constant` nodes, folded values)
//! in one map. Rewrites (legacy attributes, decompositions, folding, fusion)
//! happen here before the op-graph is built.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use super::error::OnnxError;
use super::proto::{self, attribute_type as at, data_type};
use super::tensor::{HostData, HostTensor, tensor_from_proto};

/// A decoded attribute value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Attr {
    Float(f32),
    Int(i64),
    Str(String),
    Tensor(HostTensor),
    Floats(Vec<f32>),
    Ints(Vec<i64>),
    Strings(Vec<String>),
}

/// One node. `inputs` keeps ONNX positions: an omitted optional input is `""`.
#[derive(Clone, Debug)]
pub(crate) struct INode {
    pub name: String,
    pub op_type: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attrs: BTreeMap<String, Attr>,
}

/// A graph input's element type and dims (`None` = symbolic or unknown).
#[derive(Clone, Debug)]
pub(crate) struct IValue {
    pub name: String,
    /// ONNX data type number.
    pub elem_type: i32,
    pub dims: Vec<IDim>,
}

/// A dim of a graph input or output.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum IDim {
    Fixed(usize),
    /// `dim_param` (or an unnamed unknown dim, given a generated name).
    Sym(String),
}

/// The working graph.
#[derive(Clone, Debug)]
pub(crate) struct IGraph {
    pub nodes: Vec<INode>,
    pub consts: HashMap<String, HostTensor>,
    pub inputs: Vec<IValue>,
    pub outputs: Vec<IValue>,
    /// Default-domain opset version.
    pub opset: i64,
}

impl INode {
    pub fn err_op(&self, opset: i64) -> OnnxError {
        OnnxError::UnsupportedOp {
            node: self.name.clone(),
            op_type: self.op_type.clone(),
            domain: String::new(),
            opset,
        }
    }

    pub fn invalid(&self, opset: i64, detail: impl Into<String>) -> OnnxError {
        OnnxError::InvalidNode {
            node: self.name.clone(),
            op_type: self.op_type.clone(),
            opset,
            detail: detail.into(),
        }
    }

    pub fn bad_attr(&self, opset: i64, attribute: &str, detail: impl Into<String>) -> OnnxError {
        OnnxError::UnsupportedAttribute {
            node: self.name.clone(),
            op_type: self.op_type.clone(),
            opset,
            attribute: attribute.to_string(),
            detail: detail.into(),
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.attrs.contains_key(name)
    }

    pub fn int(&self, opset: i64, name: &str, default: i64) -> Result<i64, OnnxError> {
        match self.attrs.get(name) {
            None => Ok(default),
            Some(Attr::Int(v)) => Ok(*v),
            Some(a) => Err(self.bad_attr(opset, name, format!("expected an int, got {a:?}"))),
        }
    }

    pub fn float(&self, opset: i64, name: &str, default: f32) -> Result<f32, OnnxError> {
        match self.attrs.get(name) {
            None => Ok(default),
            Some(Attr::Float(v)) => Ok(*v),
            Some(Attr::Int(v)) => Ok(*v as f32),
            Some(a) => Err(self.bad_attr(opset, name, format!("expected a float, got {a:?}"))),
        }
    }

    pub fn ints(&self, opset: i64, name: &str) -> Result<Option<Vec<i64>>, OnnxError> {
        match self.attrs.get(name) {
            None => Ok(None),
            Some(Attr::Ints(v)) => Ok(Some(v.clone())),
            Some(Attr::Int(v)) => Ok(Some(vec![*v])),
            Some(a) => Err(self.bad_attr(opset, name, format!("expected ints, got {a:?}"))),
        }
    }

    #[allow(dead_code)] // kept with the other typed accessors
    pub fn floats(&self, opset: i64, name: &str) -> Result<Option<Vec<f32>>, OnnxError> {
        match self.attrs.get(name) {
            None => Ok(None),
            Some(Attr::Floats(v)) => Ok(Some(v.clone())),
            Some(a) => Err(self.bad_attr(opset, name, format!("expected floats, got {a:?}"))),
        }
    }

    pub fn string(&self, opset: i64, name: &str, default: &str) -> Result<String, OnnxError> {
        match self.attrs.get(name) {
            None => Ok(default.to_string()),
            Some(Attr::Str(v)) => Ok(v.clone()),
            Some(a) => Err(self.bad_attr(opset, name, format!("expected a string, got {a:?}"))),
        }
    }

    /// Input `i` if present (not omitted).
    pub fn input(&self, i: usize) -> Option<&str> {
        self.inputs
            .get(i)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    /// Number of inputs up to the last non-omitted one.
    pub fn n_inputs(&self) -> usize {
        self.inputs
            .iter()
            .rposition(|s| !s.is_empty())
            .map_or(0, |p| p + 1)
    }
}

fn utf8(b: &[u8], what: &str) -> Result<String, OnnxError> {
    String::from_utf8(b.to_vec()).map_err(|_| OnnxError::InvalidModel {
        detail: format!("{what} is not UTF-8"),
    })
}

fn decode_attr(
    a: &proto::AttributeProto,
    node: &str,
    base: Option<&Path>,
) -> Result<Option<Attr>, OnnxError> {
    let name = a.name.as_deref().unwrap_or("");
    let ty = a.r#type.unwrap_or(at::UNDEFINED);
    let ctx = format!("attribute `{name}` of node `{node}`");
    Ok(Some(match ty {
        at::FLOAT => Attr::Float(a.f.unwrap_or(0.0)),
        at::INT => Attr::Int(a.i.unwrap_or(0)),
        at::STRING => Attr::Str(utf8(a.s.as_deref().unwrap_or(&[]), &ctx)?),
        at::TENSOR => {
            let t = a.t.as_ref().ok_or_else(|| OnnxError::InvalidModel {
                detail: format!("{ctx} has no tensor"),
            })?;
            Attr::Tensor(tensor_from_proto(t, base)?)
        }
        at::FLOATS => Attr::Floats(a.floats.clone()),
        at::INTS => Attr::Ints(a.ints.clone()),
        at::STRINGS => Attr::Strings(
            a.strings
                .iter()
                .map(|s| utf8(s, &ctx))
                .collect::<Result<_, _>>()?,
        ),
        // IR-3 files may omit the type: infer it from the one field set.
        at::UNDEFINED => {
            if let Some(f) = a.f {
                Attr::Float(f)
            } else if let Some(i) = a.i {
                Attr::Int(i)
            } else if let Some(s) = &a.s {
                Attr::Str(utf8(s, &ctx)?)
            } else if let Some(t) = &a.t {
                Attr::Tensor(tensor_from_proto(t, base)?)
            } else if !a.floats.is_empty() {
                Attr::Floats(a.floats.clone())
            } else if !a.ints.is_empty() {
                Attr::Ints(a.ints.clone())
            } else {
                return Ok(None);
            }
        }
        // Graphs, sparse tensors, type protos: kept as unknown so that an op
        // needing them is reported by name at lowering.
        _ => return Ok(None),
    }))
}

fn value_info(v: &proto::ValueInfoProto, sym_counter: &mut usize) -> Result<IValue, OnnxError> {
    let name = v.name.clone().unwrap_or_default();
    let Some(proto::type_proto::Value::TensorType(tt)) =
        v.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return Err(OnnxError::UnsupportedDType {
            name,
            dtype: "a non-tensor type (sequence, map, optional or sparse)".into(),
        });
    };
    let mut dims = Vec::new();
    if let Some(shape) = &tt.shape {
        for d in &shape.dim {
            use proto::tensor_shape_proto::dimension::Value;
            dims.push(match &d.value {
                Some(Value::DimValue(n)) if *n >= 0 => IDim::Fixed(*n as usize),
                Some(Value::DimParam(p)) if !p.is_empty() => IDim::Sym(p.clone()),
                _ => {
                    *sym_counter += 1;
                    IDim::Sym(format!("unk__{}", sym_counter))
                }
            });
        }
    }
    Ok(IValue {
        name,
        elem_type: tt.elem_type.unwrap_or(data_type::UNDEFINED),
        dims,
    })
}

impl IGraph {
    /// Builds the working graph from a decoded model.
    pub fn from_model(model: &proto::ModelProto, base: Option<&Path>) -> Result<IGraph, OnnxError> {
        let mut opset = None;
        for o in &model.opset_import {
            match o.domain.as_deref().unwrap_or("") {
                "" | "ai.onnx" => opset = o.version,
                // Declared-but-unused domains are fine; nodes using them are
                // reported at lowering.
                _ => {}
            }
        }
        let opset = match opset {
            Some(v) => v,
            // IR < 3 files predate opset_import and mean opset 1.
            None if model.opset_import.is_empty() => 1,
            None => {
                return Err(OnnxError::InvalidModel {
                    detail: "no opset import for the default ai.onnx domain".into(),
                });
            }
        };
        let g = model
            .graph
            .as_ref()
            .ok_or_else(|| OnnxError::InvalidModel {
                detail: "the model has no graph".into(),
            })?;
        let mut consts = HashMap::new();
        for t in &g.initializer {
            let name = t.name.clone().unwrap_or_default();
            if name.is_empty() {
                return Err(OnnxError::InvalidModel {
                    detail: "an initializer has no name".into(),
                });
            }
            consts.insert(name, tensor_from_proto(t, base)?);
        }
        let mut sym = 0;
        let mut inputs = Vec::new();
        for v in &g.input {
            // An input that is also an initializer is a constant with an
            // overridable default; mixprec treats it as a constant.
            if consts.contains_key(v.name.as_deref().unwrap_or("")) {
                continue;
            }
            inputs.push(value_info(v, &mut sym)?);
        }
        let mut outputs = Vec::new();
        for v in &g.output {
            outputs.push(value_info(v, &mut sym)?);
        }
        if outputs.is_empty() {
            return Err(OnnxError::InvalidModel {
                detail: "the graph declares no outputs".into(),
            });
        }
        let mut nodes = Vec::new();
        let mut names = HashSet::new();
        for (i, n) in g.node.iter().enumerate() {
            let op_type = n.op_type.clone().unwrap_or_default();
            let mut name = n.name.clone().unwrap_or_default();
            if name.is_empty() || names.contains(&name) {
                // Reports need unique names; derive one from the first output.
                let out = n.output.first().cloned().unwrap_or_default();
                name = format!(
                    "{op_type}_{i}{}{out}",
                    if out.is_empty() { "" } else { ":" }
                );
            }
            names.insert(name.clone());
            let domain = n.domain.clone().unwrap_or_default();
            if !(domain.is_empty() || domain == "ai.onnx") {
                let v = model
                    .opset_import
                    .iter()
                    .find(|o| o.domain.as_deref() == Some(domain.as_str()))
                    .and_then(|o| o.version)
                    .unwrap_or(0);
                return Err(OnnxError::UnsupportedOp {
                    node: name,
                    op_type,
                    domain,
                    opset: v,
                });
            }
            let mut attrs = BTreeMap::new();
            for a in &n.attribute {
                if let Some(v) = decode_attr(a, &name, base)? {
                    attrs.insert(a.name.clone().unwrap_or_default(), v);
                }
            }
            nodes.push(INode {
                name,
                op_type,
                inputs: n.input.clone(),
                outputs: n.output.clone(),
                attrs,
            });
        }
        let mut g = IGraph {
            nodes,
            consts,
            inputs,
            outputs,
            opset,
        };
        g.constant_nodes_to_consts()?;
        g.toposort()?;
        Ok(g)
    }

    fn constant_nodes_to_consts(&mut self) -> Result<(), OnnxError> {
        let opset = self.opset;
        let mut keep = Vec::new();
        for n in std::mem::take(&mut self.nodes) {
            if n.op_type != "Constant" {
                keep.push(n);
                continue;
            }
            let out = n
                .outputs
                .first()
                .cloned()
                .ok_or_else(|| n.invalid(opset, "no output"))?;
            let (k, v) = n
                .attrs
                .iter()
                .next()
                .ok_or_else(|| n.invalid(opset, "no value attribute"))?;
            let t = match (k.as_str(), v) {
                ("value", Attr::Tensor(t)) => t.clone(),
                ("value_float", Attr::Float(f)) => HostTensor::f32(&[], vec![*f]),
                ("value_floats", Attr::Floats(f)) => HostTensor::f32(&[f.len()], f.clone()),
                ("value_int", Attr::Int(i)) => HostTensor::i64(&[], vec![*i]),
                ("value_ints", Attr::Ints(i)) => HostTensor::i64(&[i.len()], i.clone()),
                _ => return Err(n.bad_attr(opset, k, "unsupported Constant value kind")),
            };
            self.consts.insert(out, t);
        }
        self.nodes = keep;
        Ok(())
    }

    /// Orders nodes so every input is produced before use; errors on values
    /// nobody produces and on cycles.
    pub fn toposort(&mut self) -> Result<(), OnnxError> {
        let mut known: HashSet<String> = self.consts.keys().cloned().collect();
        known.extend(self.inputs.iter().map(|v| v.name.clone()));
        let mut pending: Vec<INode> = std::mem::take(&mut self.nodes);
        let mut out = Vec::with_capacity(pending.len());
        let producers: HashSet<String> = pending
            .iter()
            .flat_map(|n| n.outputs.iter().cloned())
            .collect();
        while !pending.is_empty() {
            let before = pending.len();
            let mut rest = Vec::new();
            for n in pending {
                if n.inputs.iter().all(|i| i.is_empty() || known.contains(i)) {
                    known.extend(n.outputs.iter().filter(|o| !o.is_empty()).cloned());
                    out.push(n);
                } else {
                    rest.push(n);
                }
            }
            if rest.len() == before {
                let n = &rest[0];
                let missing = n
                    .inputs
                    .iter()
                    .find(|i| !i.is_empty() && !known.contains(*i))
                    .cloned()
                    .unwrap_or_default();
                let detail = if producers.contains(&missing) {
                    format!("a cycle through node `{}` (input `{missing}`)", n.name)
                } else {
                    format!(
                        "node `{}` reads `{missing}`, which no node, input or initializer provides",
                        n.name
                    )
                };
                return Err(OnnxError::InvalidModel { detail });
            }
            pending = rest;
        }
        self.nodes = out;
        for o in &self.outputs {
            if !known.contains(&o.name) {
                return Err(OnnxError::InvalidModel {
                    detail: format!("graph output `{}` is never produced", o.name),
                });
            }
        }
        Ok(())
    }

    /// How many nodes (and graph outputs) read each value.
    pub fn use_counts(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for n in &self.nodes {
            for i in &n.inputs {
                if !i.is_empty() {
                    *m.entry(i.clone()).or_insert(0) += 1;
                }
            }
        }
        for o in &self.outputs {
            *m.entry(o.name.clone()).or_insert(0) += 1;
        }
        m
    }

    /// Drops nodes none of whose outputs is used (after folding and fusion).
    pub fn remove_dead(&mut self) {
        loop {
            let uses = self.use_counts();
            let before = self.nodes.len();
            self.nodes
                .retain(|n| n.outputs.iter().any(|o| uses.contains_key(o)));
            if self.nodes.len() == before {
                break;
            }
        }
        let uses = self.use_counts();
        self.consts.retain(|k, _| uses.contains_key(k));
    }

    /// The constant scalar value of `name`, if it is a one-element constant.
    pub fn scalar(&self, name: &str) -> Option<f32> {
        let t = self.consts.get(name)?;
        (t.len() == 1).then(|| t.to_f32_vec()[0])
    }
}

/// Whether a host tensor holds only integers (i64/i32/bool).
pub(crate) fn is_int(t: &HostTensor) -> bool {
    matches!(
        t.data,
        HostData::I64(_) | HostData::I32(_) | HostData::Bool(_)
    )
}
