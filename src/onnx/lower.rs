//! From the working graph to a mixprec op-graph: each ONNX op maps to one
//! graph [`Op`], or is lowered to several (BatchNormalization, PRelu, Elu,
//! Clip, Pad, Split, ...) with host-computed constants.

use std::collections::{HashMap, HashSet};

use super::error::OnnxError;
use super::ir::{IDim, IGraph, INode};
use super::proto::data_type;
use super::tensor::{HostData, HostTensor};
use crate::graph::{
    AutoPad, Binary, ConvAttrs, DType, Dim, Graph, GraphBuilder, Op, PoolAttrs, ReduceKind, Tensor,
    Unary, ValueId,
};

/// Converts a host tensor into a graph tensor.
pub(crate) fn to_tensor(t: &HostTensor) -> Result<Tensor, OnnxError> {
    let r = match &t.data {
        HostData::F32(v) => Tensor::from_f32(&t.shape, v),
        HostData::F16(v) => Tensor::from_f16(&t.shape, v),
        HostData::Bf16(v) => Tensor::from_bf16(&t.shape, v),
        HostData::I64(v) => Tensor::from_i64(&t.shape, v),
        HostData::I32(v) => Tensor::from_i32(&t.shape, v),
        HostData::Bool(v) => Tensor::from_bool(&t.shape, v),
    };
    r.map_err(OnnxError::from)
}

/// The graph dtype of an ONNX data type, for inputs and Cast.
pub(crate) fn dtype_of(dt: i32, name: &str) -> Result<DType, OnnxError> {
    Ok(match dt {
        data_type::FLOAT | data_type::DOUBLE => DType::F32,
        data_type::FLOAT16 => DType::F16,
        data_type::BFLOAT16 => DType::Bf16,
        data_type::INT64 => DType::I64,
        data_type::INT32 => DType::I32,
        data_type::BOOL => DType::Bool,
        _ => {
            return Err(OnnxError::UnsupportedDType {
                name: name.to_string(),
                dtype: data_type::name(dt),
            });
        }
    })
}

pub(crate) struct Lower<'a> {
    g: &'a IGraph,
    b: GraphBuilder,
    vals: HashMap<String, ValueId>,
    used_names: HashSet<String>,
    opset: i64,
    /// (ONNX node, graph nodes it became) for nodes lowered to several.
    pub expansions: Vec<(String, Vec<String>)>,
    emitted: Vec<String>,
}

/// The graph and the name maps the importer keeps.
pub(crate) struct Lowered {
    pub graph: Graph,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub expansions: Vec<(String, Vec<String>)>,
}

fn f32s(t: &HostTensor) -> Vec<f32> {
    t.to_f32_vec()
}

impl<'a> Lower<'a> {
    pub fn run(g: &'a IGraph) -> Result<Lowered, OnnxError> {
        let mut l = Lower {
            g,
            b: GraphBuilder::new(),
            vals: HashMap::new(),
            used_names: HashSet::new(),
            opset: g.opset,
            expansions: Vec::new(),
            emitted: Vec::new(),
        };
        let mut inputs = Vec::new();
        for v in &g.inputs {
            let dt = dtype_of(v.elem_type, &v.name)?;
            let dims: Vec<Dim> = v
                .dims
                .iter()
                .map(|d| match d {
                    IDim::Fixed(n) => Dim::Fixed(*n),
                    IDim::Sym(s) => Dim::sym(s),
                })
                .collect();
            l.used_names.insert(v.name.clone());
            let id = l.b.input(&v.name, &dims, dt);
            l.vals.insert(v.name.clone(), id);
            inputs.push(v.name.clone());
        }
        for n in &g.nodes {
            l.emitted.clear();
            l.node(n)?;
            if l.emitted.len() > 1 {
                l.expansions.push((n.name.clone(), l.emitted.clone()));
            }
        }
        let mut outputs = Vec::new();
        for o in &g.outputs {
            let id = l.val(&o.name, "<graph output>")?;
            // Graph outputs keep their ONNX names where no other value has
            // taken them (node outputs are named after their nodes).
            let name = if l.b.value_id(&o.name) == Some(id) {
                o.name.clone()
            } else {
                let nm = l.uniq(&o.name);
                l.b.node1(&nm, Op::Identity, &[id])?;
                nm
            };
            let id = l.b.value_id(&name).unwrap_or(id);
            l.b.output(id);
            outputs.push(name);
        }
        let expansions = std::mem::take(&mut l.expansions);
        let graph = l.b.finish()?;
        Ok(Lowered {
            graph,
            inputs,
            outputs,
            expansions,
        })
    }

    fn uniq(&mut self, base: &str) -> String {
        let mut n = base.to_string();
        let mut k = 1;
        while self.used_names.contains(&n) {
            n = format!("{base}#{k}");
            k += 1;
        }
        self.used_names.insert(n.clone());
        n
    }

    /// The graph value of an ONNX value; constants become initializers on
    /// first use.
    fn val(&mut self, name: &str, node: &str) -> Result<ValueId, OnnxError> {
        if let Some(&v) = self.vals.get(name) {
            return Ok(v);
        }
        if let Some(t) = self.g.consts.get(name) {
            let nm = self.uniq(name);
            let id = self.b.initializer(&nm, to_tensor(t)?);
            self.vals.insert(name.to_string(), id);
            return Ok(id);
        }
        Err(OnnxError::InvalidModel {
            detail: format!("node `{node}` reads `{name}`, which is not defined"),
        })
    }

    fn konst(&mut self, base: &str, t: HostTensor) -> Result<ValueId, OnnxError> {
        let nm = self.uniq(base);
        let id = self.b.initializer(&nm, to_tensor(&t)?);
        Ok(id)
    }

    fn scalar(&mut self, base: &str, x: f32) -> Result<ValueId, OnnxError> {
        self.konst(base, HostTensor::f32(&[], vec![x]))
    }

    fn emit(&mut self, name: &str, op: Op, ins: &[ValueId]) -> Result<ValueId, OnnxError> {
        let nm = self.uniq(name);
        self.emitted.push(nm.clone());
        Ok(self.b.node1(&nm, op, ins)?)
    }

    fn shape(&self, v: ValueId) -> Vec<Dim> {
        self.b
            .value_info(v)
            .map(|(_, s)| s.to_vec())
            .unwrap_or_default()
    }

    fn fixed_shape(&self, v: ValueId, n: &INode, what: &str) -> Result<Vec<usize>, OnnxError> {
        self.shape(v)
            .iter()
            .map(|d| d.fixed())
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                n.bad_attr(
                    self.opset,
                    what,
                    "needs a fixed input shape (a symbolic dim is not supported here)",
                )
            })
    }

    fn const_ints(&self, n: &INode, i: usize, what: &str) -> Result<Option<Vec<i64>>, OnnxError> {
        match n.input(i) {
            None => Ok(None),
            Some(v) => match self.g.consts.get(v) {
                Some(t) => Ok(Some(t.to_i64_vec())),
                None => Err(n.bad_attr(self.opset, what, "must be a constant")),
            },
        }
    }

    fn set_out(&mut self, n: &INode, i: usize, v: ValueId) {
        if let Some(o) = n.outputs.get(i).filter(|o| !o.is_empty()) {
            self.vals.insert(o.clone(), v);
        }
    }

    fn input(&mut self, n: &INode, i: usize) -> Result<ValueId, OnnxError> {
        let name = n
            .input(i)
            .ok_or_else(|| n.invalid(self.opset, format!("input {i} is missing")))?
            .to_string();
        self.val(&name, &n.name)
    }

    /// Rejects uses of extra outputs that the lowering does not produce.
    fn only_first_output(&self, n: &INode) -> Result<(), OnnxError> {
        let uses = self.g.use_counts();
        for o in n.outputs.iter().skip(1) {
            if !o.is_empty() && uses.contains_key(o) {
                return Err(n.bad_attr(
                    self.opset,
                    "outputs",
                    format!("output `{o}` is used, only the first output is supported"),
                ));
            }
        }
        Ok(())
    }

    fn node(&mut self, n: &INode) -> Result<(), OnnxError> {
        let o = self.opset;
        let nm = n.name.clone();
        let unary = |s: &str| -> Option<Unary> {
            Some(match s {
                "Neg" => Unary::Neg,
                "Abs" => Unary::Abs,
                "Sqrt" => Unary::Sqrt,
                "Reciprocal" => Unary::Reciprocal,
                "Exp" => Unary::Exp,
                "Log" => Unary::Log,
                "Tanh" => Unary::Tanh,
                "Erf" => Unary::Erf,
                "Sigmoid" => Unary::Sigmoid,
                "Relu" => Unary::Relu,
                _ => return None,
            })
        };
        let binary = |s: &str| -> Option<Binary> {
            Some(match s {
                "Add" => Binary::Add,
                "Sub" => Binary::Sub,
                "Mul" => Binary::Mul,
                "Div" => Binary::Div,
                "Pow" => Binary::Pow,
                "Max" => Binary::Max,
                "Min" => Binary::Min,
                _ => return None,
            })
        };
        let op = n.op_type.as_str();
        let out = if let Some(u) = unary(op) {
            let x = self.input(n, 0)?;
            self.emit(&nm, Op::Unary(u), &[x])?
        } else if let Some(f) = binary(op) {
            self.binary(n, f)?
        } else {
            match op {
                "Sum" => {
                    let mut acc = self.input(n, 0)?;
                    for i in 1..n.n_inputs() {
                        let y = self.input(n, i)?;
                        acc = self.emit(&nm, Op::Binary(Binary::Add), &[acc, y])?;
                    }
                    if n.n_inputs() == 1 {
                        acc = self.emit(&nm, Op::Identity, &[acc])?;
                    }
                    acc
                }
                "Gelu" => {
                    let x = self.input(n, 0)?;
                    let u = match n.string(o, "approximate", "none")?.as_str() {
                        "none" => Unary::GeluErf,
                        "tanh" => Unary::GeluTanh,
                        a => {
                            return Err(n.bad_attr(
                                o,
                                "approximate",
                                format!("`{a}` is not none/tanh"),
                            ));
                        }
                    };
                    self.emit(&nm, Op::Unary(u), &[x])?
                }
                "Identity" => {
                    let x = self.input(n, 0)?;
                    self.emit(&nm, Op::Identity, &[x])?
                }
                "Dropout" => {
                    self.only_first_output(n)?;
                    let x = self.input(n, 0)?;
                    self.emit(&nm, Op::Identity, &[x])?
                }
                "MatMul" => {
                    let (a, b) = (self.input(n, 0)?, self.input(n, 1)?);
                    self.emit(&nm, Op::MatMul, &[a, b])?
                }
                "MatMulAdd" => self.matmul_add(n)?,
                "Gemm" => {
                    let ins: Vec<ValueId> = (0..n.n_inputs())
                        .map(|i| self.input(n, i))
                        .collect::<Result<_, _>>()?;
                    let op = Op::Gemm {
                        alpha: n.float(o, "alpha", 1.0)?,
                        beta: n.float(o, "beta", 1.0)?,
                        trans_a: n.int(o, "transA", 0)? != 0,
                        trans_b: n.int(o, "transB", 0)? != 0,
                    };
                    self.emit(&nm, op, &ins)?
                }
                "Conv" => {
                    let ins: Vec<ValueId> = (0..n.n_inputs())
                        .map(|i| self.input(n, i))
                        .collect::<Result<_, _>>()?;
                    // `input` names a missing X as a typed error (a Conv
                    // with no inputs reached `ins[0]` here; fuzzing found it).
                    let x = self.input(n, 0)?;
                    let rank = self.shape(x).len();
                    if !(3..=4).contains(&rank) {
                        return Err(n.bad_attr(
                            o,
                            "input",
                            format!(
                                "{}-D convolution is not supported (1-D and 2-D are)",
                                rank.saturating_sub(2)
                            ),
                        ));
                    }
                    let attrs = ConvAttrs {
                        kernel_shape: self.usizes(n, "kernel_shape")?,
                        strides: self.usizes(n, "strides")?,
                        pads: self.usizes(n, "pads")?,
                        dilations: self.usizes(n, "dilations")?,
                        group: n.int(o, "group", 1)?.max(1) as usize,
                        auto_pad: self.auto_pad(n)?,
                    };
                    self.emit(&nm, Op::Conv(attrs), &ins)?
                }
                "MaxPool" | "AveragePool" => {
                    self.only_first_output(n)?;
                    let x = self.input(n, 0)?;
                    let rank = self.shape(x).len();
                    if !(3..=4).contains(&rank) {
                        return Err(n.bad_attr(
                            o,
                            "input",
                            format!(
                                "{}-D pooling is not supported (1-D and 2-D are)",
                                rank.saturating_sub(2)
                            ),
                        ));
                    }
                    if n.int(o, "storage_order", 0)? != 0 {
                        return Err(n.bad_attr(
                            o,
                            "storage_order",
                            "column-major indices are not supported",
                        ));
                    }
                    let attrs = PoolAttrs {
                        kernel_shape: self.usizes(n, "kernel_shape")?,
                        strides: self.usizes(n, "strides")?,
                        pads: self.usizes(n, "pads")?,
                        dilations: self.usizes(n, "dilations")?,
                        auto_pad: self.auto_pad(n)?,
                        ceil_mode: n.int(o, "ceil_mode", 0)? != 0,
                        count_include_pad: n.int(o, "count_include_pad", 0)? != 0,
                    };
                    let op = if op == "MaxPool" {
                        Op::MaxPool(attrs)
                    } else {
                        Op::AveragePool(attrs)
                    };
                    self.emit(&nm, op, &[x])?
                }
                "GlobalMaxPool" | "GlobalAveragePool" => {
                    let x = self.input(n, 0)?;
                    let op = if op == "GlobalMaxPool" {
                        Op::GlobalMaxPool
                    } else {
                        Op::GlobalAveragePool
                    };
                    self.emit(&nm, op, &[x])?
                }
                "Softmax" | "LogSoftmax" => self.softmax(n)?,
                "LayerNormalization" => {
                    self.only_first_output(n)?;
                    let x = self.input(n, 0)?;
                    let axis = n.int(o, "axis", -1)?;
                    let eps = n.float(o, "epsilon", 1e-5)?;
                    let scale = if n.input(1).is_some() {
                        self.input(n, 1)?
                    } else {
                        // No scale (a fused LayerNorm without gamma): ones of
                        // the normalized shape, a constant when those dims are
                        // fixed (a symbolic batch is fine), else expanded at
                        // run time so that fusion never refuses a model.
                        let s = self.shape(x);
                        let r = s.len() as i64;
                        let a = if axis < 0 { axis + r } else { axis };
                        let inner = s[a.clamp(0, r) as usize..].iter().map(|d| d.fixed());
                        match inner.collect::<Option<Vec<usize>>>() {
                            Some(inner) => self.konst(
                                &format!("{nm}.ones"),
                                HostTensor::f32(&inner, vec![1.0; inner.iter().product()]),
                            )?,
                            None => {
                                let dims = Op::Shape {
                                    start: a,
                                    end: None,
                                };
                                let dims = self.emit(&format!("{nm}.dims"), dims, &[x])?;
                                let one = self.scalar(&format!("{nm}.one"), 1.0)?;
                                self.emit(&format!("{nm}.ones"), Op::Expand, &[one, dims])?
                            }
                        }
                    };
                    let mut ins = vec![x, scale];
                    if n.input(2).is_some() {
                        ins.push(self.input(n, 2)?);
                    }
                    self.emit(&nm, Op::LayerNormalization { axis, epsilon: eps }, &ins)?
                }
                "ReduceSum" | "ReduceMean" | "ReduceMax" => {
                    let x = self.input(n, 0)?;
                    let kind = match op {
                        "ReduceSum" => ReduceKind::Sum,
                        "ReduceMean" => ReduceKind::Mean,
                        _ => ReduceKind::Max,
                    };
                    let axes = match n.ints(o, "axes")? {
                        Some(a) => Some(a),
                        None => self.const_ints(n, 1, "axes")?,
                    };
                    let axes = match axes {
                        Some(a) if a.is_empty() && n.int(o, "noop_with_empty_axes", 0)? != 0 => {
                            let y = self.emit(&nm, Op::Identity, &[x])?;
                            self.set_out(n, 0, y);
                            return Ok(());
                        }
                        Some(a) if a.is_empty() => None,
                        a => a,
                    };
                    let keepdims = n.int(o, "keepdims", 1)? != 0;
                    self.emit(
                        &nm,
                        Op::Reduce {
                            kind,
                            axes,
                            keepdims,
                        },
                        &[x],
                    )?
                }
                "Gather" => {
                    let (x, i) = (self.input(n, 0)?, self.input(n, 1)?);
                    self.emit(
                        &nm,
                        Op::Gather {
                            axis: n.int(o, "axis", 0)?,
                        },
                        &[x, i],
                    )?
                }
                "Equal" => {
                    let (a, b) = (self.input(n, 0)?, self.input(n, 1)?);
                    self.emit(&nm, Op::Equal, &[a, b])?
                }
                "Where" => {
                    let ins = [self.input(n, 0)?, self.input(n, 1)?, self.input(n, 2)?];
                    self.emit(&nm, Op::Where, &ins)?
                }
                "Cast" => {
                    let x = self.input(n, 0)?;
                    let to = dtype_of(n.int(o, "to", 0)? as i32, &nm)?;
                    self.emit(&nm, Op::Cast { to }, &[x])?
                }
                "Reshape" => {
                    let x = self.input(n, 0)?;
                    let s = if o < 5 {
                        let spec = n
                            .ints(o, "shape")?
                            .ok_or_else(|| n.bad_attr(o, "shape", "missing"))?;
                        self.konst(&format!("{nm}.shape"), HostTensor::i64(&[spec.len()], spec))?
                    } else {
                        self.input(n, 1)?
                    };
                    self.emit(
                        &nm,
                        Op::Reshape {
                            allowzero: n.int(o, "allowzero", 0)? != 0,
                        },
                        &[x, s],
                    )?
                }
                "Transpose" => {
                    let x = self.input(n, 0)?;
                    let perm = match n.ints(o, "perm")? {
                        Some(p) => Some(
                            p.iter()
                                .map(|&a| usize::try_from(a))
                                .collect::<Result<Vec<_>, _>>()
                                .map_err(|_| n.bad_attr(o, "perm", "negative axis"))?,
                        ),
                        None => None,
                    };
                    self.emit(&nm, Op::Transpose { perm }, &[x])?
                }
                "Flatten" => {
                    let x = self.input(n, 0)?;
                    self.emit(
                        &nm,
                        Op::Flatten {
                            axis: n.int(o, "axis", 1)?,
                        },
                        &[x],
                    )?
                }
                "Squeeze" => {
                    let x = self.input(n, 0)?;
                    let axes = if o >= 13 {
                        self.const_ints(n, 1, "axes")?
                    } else {
                        n.ints(o, "axes")?
                    };
                    self.emit(&nm, Op::Squeeze { axes }, &[x])?
                }
                "Unsqueeze" => {
                    let x = self.input(n, 0)?;
                    let axes = if o >= 13 {
                        self.const_ints(n, 1, "axes")?
                    } else {
                        n.ints(o, "axes")?
                    };
                    let axes = axes.ok_or_else(|| n.bad_attr(o, "axes", "missing"))?;
                    self.emit(&nm, Op::Unsqueeze { axes }, &[x])?
                }
                "Concat" => {
                    let ins: Vec<ValueId> = (0..n.n_inputs())
                        .map(|i| self.input(n, i))
                        .collect::<Result<_, _>>()?;
                    self.emit(
                        &nm,
                        Op::Concat {
                            axis: n.int(o, "axis", 0)?,
                        },
                        &ins,
                    )?
                }
                "Slice" => {
                    let x = self.input(n, 0)?;
                    let mut ins = vec![x];
                    if o < 10 {
                        let starts = n
                            .ints(o, "starts")?
                            .ok_or_else(|| n.bad_attr(o, "starts", "missing"))?;
                        let ends = n
                            .ints(o, "ends")?
                            .ok_or_else(|| n.bad_attr(o, "ends", "missing"))?;
                        // Each list keeps its own length: shape inference
                        // reports lists of different lengths as a typed error
                        // (fuzzing found `ends` shorter than `starts`).
                        let list = |v: Vec<i64>| HostTensor::i64(&[v.len()], v);
                        ins.push(self.konst(&format!("{nm}.starts"), list(starts))?);
                        ins.push(self.konst(&format!("{nm}.ends"), list(ends))?);
                        if let Some(axes) = n.ints(o, "axes")? {
                            ins.push(self.konst(&format!("{nm}.axes"), list(axes))?);
                        }
                    } else {
                        for i in 1..n.n_inputs() {
                            ins.push(self.input(n, i)?);
                        }
                    }
                    self.emit(&nm, Op::Slice, &ins)?
                }
                "Expand" => {
                    let (x, s) = (self.input(n, 0)?, self.input(n, 1)?);
                    self.emit(&nm, Op::Expand, &[x, s])?
                }
                "Shape" => {
                    let x = self.input(n, 0)?;
                    let end = if n.has("end") {
                        Some(n.int(o, "end", 0)?)
                    } else {
                        None
                    };
                    self.emit(
                        &nm,
                        Op::Shape {
                            start: n.int(o, "start", 0)?,
                            end,
                        },
                        &[x],
                    )?
                }
                "BatchNormalization" => self.batchnorm(n)?,
                "InstanceNormalization" => self.instancenorm(n)?,
                "PRelu" | "LeakyRelu" => self.prelu(n)?,
                "Elu" | "Selu" => {
                    let x = self.input(n, 0)?;
                    let (alpha, gamma) = if op == "Elu" {
                        (n.float(o, "alpha", 1.0)?, 1.0)
                    } else {
                        (
                            n.float(o, "alpha", 1.673_263_2)?,
                            n.float(o, "gamma", 1.050_701)?,
                        )
                    };
                    // gamma * (relu(x) + alpha * (exp(min(x, 0)) - 1))
                    let zero = self.scalar(&format!("{nm}.zero"), 0.0)?;
                    let m = self.emit(&nm, Op::Binary(Binary::Min), &[x, zero])?;
                    let e = self.emit(&nm, Op::Unary(Unary::Exp), &[m])?;
                    let one = self.scalar(&format!("{nm}.one"), 1.0)?;
                    let e1 = self.emit(&nm, Op::Binary(Binary::Sub), &[e, one])?;
                    let a = self.scalar(&format!("{nm}.alpha"), alpha)?;
                    let neg = self.emit(&nm, Op::Binary(Binary::Mul), &[e1, a])?;
                    let r = self.emit(&nm, Op::Unary(Unary::Relu), &[x])?;
                    let s = self.emit(&nm, Op::Binary(Binary::Add), &[r, neg])?;
                    if op == "Selu" {
                        let gm = self.scalar(&format!("{nm}.gamma"), gamma)?;
                        self.emit(&nm, Op::Binary(Binary::Mul), &[s, gm])?
                    } else {
                        s
                    }
                }
                "Softplus" => {
                    // relu(x) + log(1 + exp(-|x|)): no overflow for large |x|.
                    let x = self.input(n, 0)?;
                    let a = self.emit(&nm, Op::Unary(Unary::Abs), &[x])?;
                    let na = self.emit(&nm, Op::Unary(Unary::Neg), &[a])?;
                    let e = self.emit(&nm, Op::Unary(Unary::Exp), &[na])?;
                    let one = self.scalar(&format!("{nm}.one"), 1.0)?;
                    let p = self.emit(&nm, Op::Binary(Binary::Add), &[e, one])?;
                    let l = self.emit(&nm, Op::Unary(Unary::Log), &[p])?;
                    let r = self.emit(&nm, Op::Unary(Unary::Relu), &[x])?;
                    self.emit(&nm, Op::Binary(Binary::Add), &[r, l])?
                }
                "Clip" => {
                    let x = self.input(n, 0)?;
                    let (lo, hi) = if o < 11 {
                        (
                            if n.has("min") {
                                Some(n.float(o, "min", 0.0)?)
                            } else {
                                None
                            },
                            if n.has("max") {
                                Some(n.float(o, "max", 0.0)?)
                            } else {
                                None
                            },
                        )
                    } else {
                        let c = |i: usize| -> Result<Option<f32>, OnnxError> {
                            match n.input(i) {
                                None => Ok(None),
                                Some(v) => self.g.scalar(v).map(Some).ok_or_else(|| {
                                    n.bad_attr(
                                        o,
                                        if i == 1 { "min" } else { "max" },
                                        "must be a constant scalar",
                                    )
                                }),
                            }
                        };
                        (c(1)?, c(2)?)
                    };
                    let mut y = x;
                    if let Some(hi) = hi {
                        let h = self.scalar(&format!("{nm}.max"), hi)?;
                        y = self.emit(&nm, Op::Binary(Binary::Min), &[y, h])?;
                    }
                    if let Some(lo) = lo {
                        let l = self.scalar(&format!("{nm}.min"), lo)?;
                        y = self.emit(&nm, Op::Binary(Binary::Max), &[y, l])?;
                    }
                    if lo.is_none() && hi.is_none() {
                        y = self.emit(&nm, Op::Identity, &[x])?;
                    }
                    y
                }
                "Sign" => {
                    let x = self.input(n, 0)?;
                    let zero = self.scalar(&format!("{nm}.zero"), 0.0)?;
                    let eq = self.emit(&nm, Op::Equal, &[x, zero])?;
                    let a = self.emit(&nm, Op::Unary(Unary::Abs), &[x])?;
                    let d = self.emit(&nm, Op::Binary(Binary::Div), &[x, a])?;
                    self.emit(&nm, Op::Where, &[eq, zero, d])?
                }
                "Split" => return self.split(n),
                "Pad" => self.pad(n)?,
                "Tile" => self.tile(n)?,
                _ => return Err(n.err_op(o)),
            }
        };
        self.set_out(n, 0, out);
        Ok(())
    }

    fn usizes(&self, n: &INode, a: &str) -> Result<Vec<usize>, OnnxError> {
        let v = n.ints(self.opset, a)?.unwrap_or_default();
        v.iter()
            .map(|&x| {
                usize::try_from(x)
                    .map_err(|_| n.bad_attr(self.opset, a, format!("negative value {x}")))
            })
            .collect()
    }

    fn auto_pad(&self, n: &INode) -> Result<AutoPad, OnnxError> {
        Ok(match n.string(self.opset, "auto_pad", "NOTSET")?.as_str() {
            "NOTSET" | "" => AutoPad::NotSet,
            "SAME_UPPER" => AutoPad::SameUpper,
            "SAME_LOWER" => AutoPad::SameLower,
            "VALID" => AutoPad::Valid,
            s => return Err(n.bad_attr(self.opset, "auto_pad", format!("unknown value `{s}`"))),
        })
    }

    fn binary(&mut self, n: &INode, f: Binary) -> Result<ValueId, OnnxError> {
        let o = self.opset;
        if n.n_inputs() > 2 && matches!(f, Binary::Max | Binary::Min) {
            let mut acc = self.input(n, 0)?;
            for i in 1..n.n_inputs() {
                let y = self.input(n, i)?;
                acc = self.emit(&n.name, Op::Binary(f), &[acc, y])?;
            }
            return Ok(acc);
        }
        if n.n_inputs() == 1 && matches!(f, Binary::Max | Binary::Min) {
            let x = self.input(n, 0)?;
            return self.emit(&n.name, Op::Identity, &[x]);
        }
        let a = self.input(n, 0)?;
        // Opset < 7 `broadcast=1, axis=k`: B's dims align with A's from axis k,
        // i.e. B gets trailing size-1 dims (numpy aligns from the right).
        let mut b = self.input(n, 1)?;
        if o < 7 && n.has("axis") && n.int(o, "broadcast", 0)? != 0 {
            let ra = self.shape(a).len() as i64;
            let rb = self.shape(b).len() as i64;
            let axis = n.int(o, "axis", 0)?;
            let axis = if axis < 0 { axis + ra } else { axis };
            let trailing = ra - axis - rb;
            if trailing < 0 {
                return Err(n.bad_attr(
                    o,
                    "axis",
                    format!("B of rank {rb} does not fit at axis {axis} of rank {ra}"),
                ));
            }
            if trailing > 0 {
                let axes = (rb..rb + trailing).collect();
                b = self.emit(&n.name, Op::Unsqueeze { axes }, &[b])?;
            }
        }
        self.emit(&n.name, Op::Binary(f), &[a, b])
    }

    fn matmul_add(&mut self, n: &INode) -> Result<ValueId, OnnxError> {
        let nm = n.name.clone();
        let (a, w, bias) = (
            self.input(n, 0)?,
            self.input(n, 1)?,
            n.input(2).unwrap_or_default().to_string(),
        );
        let bt = self.g.consts[&bias].clone();
        let nout = bt.len();
        let b1 = self.konst(
            &format!("{bias}.row"),
            HostTensor {
                shape: vec![nout],
                ..bt
            },
        )?;
        let gemm = Op::Gemm {
            alpha: 1.0,
            beta: 1.0,
            trans_a: false,
            trans_b: false,
        };
        let sa = self.shape(a);
        if sa.len() == 2 {
            return self.emit(&nm, gemm, &[a, w, b1]);
        }
        // Batched A: [..., K] -> [-1, K] -> Gemm -> [..., N].
        let k = self.g.consts[n.input(1).unwrap_or_default()].shape[0] as i64;
        let s2 = self.konst(&format!("{nm}.flat"), HostTensor::i64(&[2], vec![-1, k]))?;
        let a2 = self.emit(&nm, Op::Reshape { allowzero: false }, &[a, s2])?;
        let y = self.emit(&nm, gemm, &[a2, w, b1])?;
        let lead = self.emit(
            &nm,
            Op::Shape {
                start: 0,
                end: Some(-1),
            },
            &[a],
        )?;
        let nn = self.konst(&format!("{nm}.n"), HostTensor::i64(&[1], vec![nout as i64]))?;
        let full = self.emit(&nm, Op::Concat { axis: 0 }, &[lead, nn])?;
        self.emit(&nm, Op::Reshape { allowzero: false }, &[y, full])
    }

    fn softmax(&mut self, n: &INode) -> Result<ValueId, OnnxError> {
        let o = self.opset;
        let nm = n.name.clone();
        let x = self.input(n, 0)?;
        let log = n.op_type == "LogSoftmax";
        let mk = |axis: i64| {
            if log {
                Op::LogSoftmax { axis }
            } else {
                Op::Softmax { axis }
            }
        };
        if o >= 13 || n.has("__single_axis") {
            return self.emit(&nm, mk(n.int(o, "axis", -1)?), &[x]);
        }
        // Before opset 13: softmax over the flattened dims axis.. (default 1).
        let r = self.shape(x).len() as i64;
        let axis = n.int(o, "axis", 1)?;
        let a = if axis < 0 { axis + r } else { axis };
        if a == r - 1 {
            return self.emit(&nm, mk(-1), &[x]);
        }
        let f = self.emit(&nm, Op::Flatten { axis: a }, &[x])?;
        let s = self.emit(&nm, mk(1), &[f])?;
        let shp = self.emit(
            &nm,
            Op::Shape {
                start: 0,
                end: None,
            },
            &[x],
        )?;
        self.emit(&nm, Op::Reshape { allowzero: false }, &[s, shp])
    }

    /// Per-channel constant reshaped to `[C, 1, ...]` for an input of rank `r`.
    fn channel_const(&mut self, base: &str, v: Vec<f32>, r: usize) -> Result<ValueId, OnnxError> {
        let mut shape = vec![v.len()];
        shape.extend(std::iter::repeat_n(1, r.saturating_sub(2)));
        self.konst(base, HostTensor::f32(&shape, v))
    }

    fn batchnorm(&mut self, n: &INode) -> Result<ValueId, OnnxError> {
        let o = self.opset;
        self.only_first_output(n)?;
        if o < 9 && n.int(o, "spatial", 1)? == 0 {
            return Err(n.bad_attr(o, "spatial", "spatial=0 is not supported"));
        }
        if n.int(o, "training_mode", 0)? != 0 {
            return Err(n.bad_attr(o, "training_mode", "training mode is not supported"));
        }
        let x = self.input(n, 0)?;
        let mut p = Vec::new();
        for (i, what) in [(1, "scale"), (2, "B"), (3, "mean"), (4, "var")] {
            let v = n
                .input(i)
                .and_then(|v| self.g.consts.get(v))
                .ok_or_else(|| n.bad_attr(o, what, "must be a constant"))?;
            p.push(f32s(v));
        }
        let eps = n.float(o, "epsilon", 1e-5)? as f64;
        let c = p[0].len();
        if p.iter().any(|v| v.len() != c) {
            return Err(n.invalid(o, "scale, B, mean and var differ in length"));
        }
        // Eval mode: y = x * s + t with s = scale / sqrt(var + eps), t = B - mean * s.
        let s: Vec<f64> = (0..c)
            .map(|i| p[0][i] as f64 / (p[3][i] as f64 + eps).sqrt())
            .collect();
        let t: Vec<f32> = (0..c)
            .map(|i| (p[1][i] as f64 - p[2][i] as f64 * s[i]) as f32)
            .collect();
        let r = self.shape(x).len();
        let sc = self.channel_const(
            &format!("{}.scale", n.name),
            s.iter().map(|&v| v as f32).collect(),
            r,
        )?;
        let sh = self.channel_const(&format!("{}.shift", n.name), t, r)?;
        let m = self.emit(&n.name, Op::Binary(Binary::Mul), &[x, sc])?;
        self.emit(&n.name, Op::Binary(Binary::Add), &[m, sh])
    }

    fn instancenorm(&mut self, n: &INode) -> Result<ValueId, OnnxError> {
        let o = self.opset;
        let nm = n.name.clone();
        let x = self.input(n, 0)?;
        let r = self.shape(x).len();
        let scale = n
            .input(1)
            .and_then(|v| self.g.consts.get(v))
            .ok_or_else(|| n.bad_attr(o, "scale", "must be a constant"))?
            .clone();
        let bias = n
            .input(2)
            .and_then(|v| self.g.consts.get(v))
            .ok_or_else(|| n.bad_attr(o, "B", "must be a constant"))?
            .clone();
        let eps = n.float(o, "epsilon", 1e-5)?;
        let axes: Vec<i64> = (2..r as i64).collect();
        let red = |axes: &Vec<i64>| Op::Reduce {
            kind: ReduceKind::Mean,
            axes: Some(axes.clone()),
            keepdims: true,
        };
        let m = self.emit(&nm, red(&axes), &[x])?;
        let d = self.emit(&nm, Op::Binary(Binary::Sub), &[x, m])?;
        let sq = self.emit(&nm, Op::Binary(Binary::Mul), &[d, d])?;
        let v = self.emit(&nm, red(&axes), &[sq])?;
        let e = self.scalar(&format!("{nm}.eps"), eps)?;
        let ve = self.emit(&nm, Op::Binary(Binary::Add), &[v, e])?;
        let sd = self.emit(&nm, Op::Unary(Unary::Sqrt), &[ve])?;
        let y = self.emit(&nm, Op::Binary(Binary::Div), &[d, sd])?;
        let sc = self.channel_const(&format!("{nm}.scale"), f32s(&scale), r)?;
        let sh = self.channel_const(&format!("{nm}.shift"), f32s(&bias), r)?;
        let y = self.emit(&nm, Op::Binary(Binary::Mul), &[y, sc])?;
        self.emit(&nm, Op::Binary(Binary::Add), &[y, sh])
    }

    fn prelu(&mut self, n: &INode) -> Result<ValueId, OnnxError> {
        let o = self.opset;
        let nm = n.name.clone();
        let x = self.input(n, 0)?;
        let r = self.shape(x).len();
        let slope = if n.op_type == "LeakyRelu" {
            self.scalar(&format!("{nm}.alpha"), n.float(o, "alpha", 0.01)?)?
        } else {
            let sn = n.input(1).unwrap_or_default().to_string();
            match self.g.consts.get(&sn) {
                // Opset < 7: a 1-D slope of size C is per channel (axis 1),
                // not numpy-broadcast along the last axis.
                Some(t) if o < 7 && t.shape.len() == 1 && t.len() > 1 && r > 2 => {
                    self.channel_const(&format!("{sn}.per_channel"), f32s(t), r)?
                }
                _ => self.input(n, 1)?,
            }
        };
        // prelu(x) = relu(x) - slope * relu(-x)
        let pos = self.emit(&nm, Op::Unary(Unary::Relu), &[x])?;
        let nx = self.emit(&nm, Op::Unary(Unary::Neg), &[x])?;
        let neg = self.emit(&nm, Op::Unary(Unary::Relu), &[nx])?;
        let sn = self.emit(&nm, Op::Binary(Binary::Mul), &[neg, slope])?;
        self.emit(&nm, Op::Binary(Binary::Sub), &[pos, sn])
    }

    fn split(&mut self, n: &INode) -> Result<(), OnnxError> {
        let o = self.opset;
        let nm = n.name.clone();
        let x = self.input(n, 0)?;
        let shape = self.fixed_shape(x, n, "input")?;
        let r = shape.len() as i64;
        let axis = n.int(o, "axis", 0)?;
        let a = if axis < 0 { axis + r } else { axis };
        if !(0..r).contains(&a) {
            return Err(n.bad_attr(o, "axis", format!("{axis} out of range for rank {r}")));
        }
        let len = shape[a as usize] as i64;
        let k = n.outputs.len() as i64;
        let sizes = match if o >= 13 {
            self.const_ints(n, 1, "split")?
        } else {
            n.ints(o, "split")?
        } {
            Some(s) => s,
            None => {
                let per = (len + k - 1) / k.max(1);
                (0..k).map(|i| per.min(len - i * per).max(0)).collect()
            }
        };
        if sizes.len() as i64 != k || sizes.iter().sum::<i64>() != len {
            return Err(n.bad_attr(
                o,
                "split",
                format!("sizes {sizes:?} do not split {len} into {k} outputs"),
            ));
        }
        let mut start = 0;
        for (i, &s) in sizes.iter().enumerate() {
            let p = |v: i64| HostTensor::i64(&[1], vec![v]);
            let st = self.konst(&format!("{nm}.starts{i}"), p(start))?;
            let en = self.konst(&format!("{nm}.ends{i}"), p(start + s))?;
            let ax = self.konst(&format!("{nm}.axes{i}"), p(a))?;
            let y = self.emit(&nm, Op::Slice, &[x, st, en, ax])?;
            self.set_out(n, i, y);
            start += s;
        }
        Ok(())
    }

    fn slice_axis(
        &mut self,
        nm: &str,
        x: ValueId,
        axis: usize,
        s: i64,
        e: i64,
        step: i64,
    ) -> Result<ValueId, OnnxError> {
        let p = |v: i64| HostTensor::i64(&[1], vec![v]);
        let ins = [
            x,
            self.konst(&format!("{nm}.s"), p(s))?,
            self.konst(&format!("{nm}.e"), p(e))?,
            self.konst(&format!("{nm}.a"), p(axis as i64))?,
            self.konst(&format!("{nm}.st"), p(step))?,
        ];
        self.emit(nm, Op::Slice, &ins)
    }

    fn pad(&mut self, n: &INode) -> Result<ValueId, OnnxError> {
        let o = self.opset;
        let nm = n.name.clone();
        let x = self.input(n, 0)?;
        let shape = self.fixed_shape(x, n, "input")?;
        let r = shape.len();
        let mode = n.string(o, "mode", "constant")?;
        let (pads, value) = if o < 11 {
            let p = n
                .ints(o, if o < 2 { "paddings" } else { "pads" })?
                .ok_or_else(|| n.bad_attr(o, "pads", "missing"))?;
            (p, n.float(o, "value", 0.0)?)
        } else {
            let p = self
                .const_ints(n, 1, "pads")?
                .ok_or_else(|| n.bad_attr(o, "pads", "missing"))?;
            let v = match n.input(2) {
                Some(v) => self
                    .g
                    .scalar(v)
                    .ok_or_else(|| n.bad_attr(o, "constant_value", "must be a constant scalar"))?,
                None => 0.0,
            };
            if n.input(3).is_some() {
                return Err(n.bad_attr(o, "axes", "the axes input is not supported"));
            }
            (p, v)
        };
        if pads.len() != 2 * r || pads.iter().any(|&p| p < 0) {
            return Err(n.bad_attr(
                o,
                "pads",
                format!("{pads:?} is not 2 x rank non-negative values"),
            ));
        }
        let mut y = x;
        let mut cur = shape.clone();
        for ax in 0..r {
            let (b, e) = (pads[ax] as usize, pads[ax + r] as usize);
            if b == 0 && e == 0 {
                continue;
            }
            let len = cur[ax];
            let mut parts = Vec::new();
            let block =
                |l: &mut Self, cnt: usize, at_end: bool| -> Result<Option<ValueId>, OnnxError> {
                    if cnt == 0 {
                        return Ok(None);
                    }
                    Ok(Some(match mode.as_str() {
                        "constant" => {
                            let mut s = cur.clone();
                            s[ax] = cnt;
                            let numel = s.iter().product();
                            l.konst(
                                &format!("{nm}.fill"),
                                HostTensor::f32(&s, vec![value; numel]),
                            )?
                        }
                        "reflect" => {
                            if cnt >= len {
                                return Err(n.bad_attr(
                                    o,
                                    "pads",
                                    "reflect padding must be smaller than the dim",
                                ));
                            }
                            let len = len as i64;
                            let c = cnt as i64;
                            if at_end {
                                // A negative end counts from the back; -len-1 is
                                // ONNX's "before index 0" for a reverse slice.
                                let end = if len - 2 - c < 0 {
                                    -len - 1
                                } else {
                                    len - 2 - c
                                };
                                l.slice_axis(&nm, y, ax, len - 2, end, -1)?
                            } else {
                                l.slice_axis(&nm, y, ax, c, 0, -1)?
                            }
                        }
                        "edge" => {
                            if len == 0 {
                                return Err(n.bad_attr(o, "pads", "edge padding of an empty dim"));
                            }
                            let len = len as i64;
                            let one = if at_end {
                                l.slice_axis(&nm, y, ax, len - 1, len, 1)?
                            } else {
                                l.slice_axis(&nm, y, ax, 0, 1, 1)?
                            };
                            let copies = vec![one; cnt];
                            l.emit(&nm, Op::Concat { axis: ax as i64 }, &copies)?
                        }
                        m => return Err(n.bad_attr(o, "mode", format!("`{m}` is not supported"))),
                    }))
                };
            if let Some(v) = block(self, b, false)? {
                parts.push(v);
            }
            parts.push(y);
            if let Some(v) = block(self, e, true)? {
                parts.push(v);
            }
            y = self.emit(&nm, Op::Concat { axis: ax as i64 }, &parts)?;
            cur[ax] = len + b + e;
        }
        if y == x {
            y = self.emit(&nm, Op::Identity, &[x])?;
        }
        Ok(y)
    }

    fn tile(&mut self, n: &INode) -> Result<ValueId, OnnxError> {
        let o = self.opset;
        let nm = n.name.clone();
        let x = self.input(n, 0)?;
        let reps = self
            .const_ints(n, 1, "repeats")?
            .ok_or_else(|| n.bad_attr(o, "repeats", "missing"))?;
        let r = self.shape(x).len();
        if reps.len() != r || reps.iter().any(|&v| v < 1) {
            return Err(n.bad_attr(o, "repeats", format!("{reps:?} must be {r} values >= 1")));
        }
        // Tile lowers to a Concat of `k` copies per axis; a hostile `k`
        // would make that node list (not just the tensor) huge.
        if let Some(&k) = reps.iter().find(|&&v| v > MAX_TILE_REPEATS) {
            return Err(n.bad_attr(
                o,
                "repeats",
                format!("{k} copies along one axis exceeds the supported {MAX_TILE_REPEATS}"),
            ));
        }
        let mut y = x;
        for (ax, &k) in reps.iter().enumerate() {
            if k > 1 {
                let copies = vec![y; k as usize];
                y = self.emit(&nm, Op::Concat { axis: ax as i64 }, &copies)?;
            }
        }
        if y == x {
            y = self.emit(&nm, Op::Identity, &[x])?;
        }
        Ok(y)
    }
}

/// Largest Tile repeat count along one axis (see `Lower::tile`).
const MAX_TILE_REPEATS: i64 = 4096;
