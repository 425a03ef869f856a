//! Building and validating graphs.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::dtype::DType;
use super::error::{GraphError, Result};
use super::graph::{Dim, Graph, Node, ValueId, ValueInfo};
use super::ops::infer::infer;
use super::ops::{Binary, ConvAttrs, Meta, Op, PoolAttrs, ReduceKind, Unary};
use super::tensor::{Tensor, TensorView};

#[derive(Clone, Debug)]
enum InRef {
    Id(ValueId),
    Name(String),
}

#[derive(Debug)]
struct BValue {
    name: String,
    meta: Option<Meta>,
}

#[derive(Debug)]
struct BNode {
    name: String,
    op: Op,
    inputs: Vec<InRef>,
    outputs: Vec<ValueId>,
}

/// Builds a [`Graph`]. Two styles, freely mixed:
///
/// * Rust users chain typed calls that return [`ValueId`]s and check shapes
///   at once:
///   ```
///   use mixprec::graph::{DType, Dim, GraphBuilder, Tensor};
///   # fn main() -> Result<(), mixprec::graph::GraphError> {
///   let w = Tensor::from_f32(&[16, 64], vec![0.01; 16 * 64])?;
///   let b = Tensor::from_f32(&[16], vec![0.0; 16])?;
///   let mut g = GraphBuilder::new();
///   let x = g.input("x", &[Dim::sym("batch"), 64.into()], DType::F32);
///   let h = g.linear("fc1", x, &w, Some(&b))?;
///   let h = g.relu("act1", h)?;
///   g.output(h);
///   let graph = g.finish()?;
///   assert_eq!(graph.lowerable_nodes().len(), 2);
///   # Ok(()) }
///   ```
/// * Importers add nodes by value name in any order with
///   [`GraphBuilder::add_node`]; names are resolved, cycles found and shapes
///   inferred in [`GraphBuilder::finish`].
#[derive(Debug, Default)]
pub struct GraphBuilder {
    values: Vec<BValue>,
    value_index: HashMap<String, ValueId>,
    nodes: Vec<BNode>,
    node_index: HashMap<String, usize>,
    inputs: Vec<ValueId>,
    outputs: Vec<InRef>,
    initializers: HashMap<ValueId, Arc<Tensor>>,
    /// The first error of an infallible call, reported by `finish`.
    deferred: Option<GraphError>,
    fresh: usize,
}

impl GraphBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    fn new_value(&mut self, name: &str, meta: Option<Meta>) -> Result<ValueId> {
        if self.value_index.contains_key(name) {
            return Err(GraphError::DuplicateName {
                kind: "value",
                name: name.to_string(),
            });
        }
        let id = ValueId(self.values.len());
        self.values.push(BValue {
            name: name.to_string(),
            meta,
        });
        self.value_index.insert(name.to_string(), id);
        Ok(id)
    }

    fn defer<T>(&mut self, r: Result<T>, fallback: impl FnOnce(&mut Self) -> T) -> T {
        match r {
            Ok(v) => v,
            Err(e) => {
                self.deferred.get_or_insert(e);
                fallback(self)
            }
        }
    }

    fn placeholder(&mut self) -> ValueId {
        // A value nobody can name, so a failed declaration still yields an id;
        // `finish` reports the recorded error first.
        let id = ValueId(self.values.len());
        self.values.push(BValue {
            name: format!("\u{0}invalid{}", id.0),
            meta: None,
        });
        id
    }

    /// Declares a graph input. A repeated name is reported by `finish`.
    pub fn input(&mut self, name: &str, shape: &[Dim], dtype: DType) -> ValueId {
        let r = self.new_value(
            name,
            Some(Meta {
                dtype,
                shape: shape.to_vec(),
            }),
        );
        let id = self.defer(r, Self::placeholder);
        self.inputs.push(id);
        id
    }

    /// Adds an initializer (a weight or constant known when building).
    /// A repeated name is reported by `finish`.
    pub fn initializer(&mut self, name: &str, tensor: Tensor) -> ValueId {
        let meta = Meta::of(&tensor);
        let r = self.new_value(name, Some(meta));
        let id = self.defer(r, Self::placeholder);
        self.initializers.insert(id, Arc::new(tensor));
        id
    }

    /// Adds an initializer shared with other graphs without copying it.
    pub fn initializer_arc(&mut self, name: &str, tensor: Arc<Tensor>) -> ValueId {
        let meta = Meta::of(&tensor);
        let r = self.new_value(name, Some(meta));
        let id = self.defer(r, Self::placeholder);
        self.initializers.insert(id, tensor);
        id
    }

    /// Marks a value as a graph output.
    pub fn output(&mut self, v: ValueId) {
        self.outputs.push(InRef::Id(v));
    }

    /// Marks a value as a graph output by name (resolved by `finish`).
    pub fn output_named(&mut self, name: &str) {
        self.outputs.push(InRef::Name(name.to_string()));
    }

    /// The static type of a value, when known (inputs, initializers and nodes
    /// added with [`GraphBuilder::node`]).
    pub fn value_info(&self, v: ValueId) -> Option<(DType, &[Dim])> {
        self.values
            .get(v.0)
            .and_then(|b| b.meta.as_ref())
            .map(|m| (m.dtype, m.shape.as_slice()))
    }

    /// A value by name.
    pub fn value_id(&self, name: &str) -> Option<ValueId> {
        self.value_index.get(name).copied()
    }

    fn check_node_name(&self, name: &str) -> Result<()> {
        if self.node_index.contains_key(name) {
            return Err(GraphError::DuplicateName {
                kind: "node",
                name: name.to_string(),
            });
        }
        Ok(())
    }

    fn fresh_dim(counter: &mut usize, node: &str) -> Dim {
        *counter += 1;
        Dim::Symbolic(format!("{node}:d{counter}"))
    }

    /// Adds a node and checks it now: inputs must exist, and shapes and
    /// dtypes must fit. Its outputs are values named after the node (`name`
    /// for the first, `name:1`, ... for more). Returns the output ids.
    pub fn node(&mut self, name: &str, op: Op, inputs: &[ValueId]) -> Result<Vec<ValueId>> {
        self.check_node_name(name)?;
        let mut metas = Vec::with_capacity(inputs.len());
        let mut known = Vec::with_capacity(inputs.len());
        for &v in inputs {
            let b = self
                .values
                .get(v.0)
                .ok_or_else(|| GraphError::UnknownValue {
                    node: name.to_string(),
                    value: format!("#{}", v.0),
                })?;
            metas.push(b.meta.clone());
            known.push(self.initializers.get(&v).cloned());
        }
        let out_metas = if metas.iter().all(Option::is_some) {
            let metas: Vec<Meta> = metas.into_iter().map(Option::unwrap).collect();
            let refs: Vec<&Meta> = metas.iter().collect();
            let known_views: Vec<Option<TensorView>> = known
                .iter()
                .map(|k| k.as_deref().map(Tensor::view))
                .collect();
            let kn: Vec<Option<&TensorView>> = known_views.iter().map(Option::as_ref).collect();
            let mut counter = self.fresh;
            let r = infer(&op, name, &refs, &kn, &mut || {
                Self::fresh_dim(&mut counter, name)
            })?;
            self.fresh = counter;
            r.into_iter().map(Some).collect()
        } else {
            op.check_arity(name, inputs.len())?;
            vec![None]
        };
        let mut outs = Vec::new();
        for (i, m) in out_metas.into_iter().enumerate() {
            let vname = if i == 0 {
                name.to_string()
            } else {
                format!("{name}:{i}")
            };
            outs.push(self.new_value(&vname, m)?);
        }
        self.node_index.insert(name.to_string(), self.nodes.len());
        self.nodes.push(BNode {
            name: name.to_string(),
            op,
            inputs: inputs.iter().map(|&v| InRef::Id(v)).collect(),
            outputs: outs.clone(),
        });
        Ok(outs)
    }

    /// [`GraphBuilder::node`] for a single-output op.
    pub fn node1(&mut self, name: &str, op: Op, inputs: &[ValueId]) -> Result<ValueId> {
        Ok(self.node(name, op, inputs)?[0])
    }

    /// Adds a node whose inputs are value names, resolved by `finish` (so
    /// nodes may come in any order, as in an ONNX file). `outputs` names the
    /// values it produces. Names must be unique.
    pub fn add_node(
        &mut self,
        name: &str,
        op: Op,
        inputs: &[&str],
        outputs: &[&str],
    ) -> Result<Vec<ValueId>> {
        self.check_node_name(name)?;
        let mut outs = Vec::new();
        for o in outputs {
            outs.push(self.new_value(o, None)?);
        }
        self.node_index.insert(name.to_string(), self.nodes.len());
        self.nodes.push(BNode {
            name: name.to_string(),
            op,
            inputs: inputs.iter().map(|s| InRef::Name(s.to_string())).collect(),
            outputs: outs.clone(),
        });
        Ok(outs)
    }

    /// Validates and returns the graph: resolves names, rejects unknown
    /// values and cycles, sorts nodes topologically (keeping insertion order
    /// where free), infers every value's dtype and shape, and folds integer
    /// computations on known values (shape arithmetic).
    pub fn finish(self) -> Result<Graph> {
        if let Some(e) = self.deferred {
            return Err(e);
        }
        let GraphBuilder {
            values,
            value_index,
            nodes,
            inputs,
            outputs,
            initializers,
            mut fresh,
            ..
        } = self;
        let resolve = |r: &InRef, node: &str| -> Result<ValueId> {
            match r {
                InRef::Id(v) if v.0 < values.len() => Ok(*v),
                InRef::Id(v) => Err(GraphError::UnknownValue {
                    node: node.to_string(),
                    value: format!("#{}", v.0),
                }),
                InRef::Name(n) => {
                    value_index
                        .get(n)
                        .copied()
                        .ok_or_else(|| GraphError::UnknownValue {
                            node: node.to_string(),
                            value: n.clone(),
                        })
                }
            }
        };
        let mut producer: Vec<Option<usize>> = vec![None; values.len()];
        let mut resolved: Vec<Vec<ValueId>> = Vec::with_capacity(nodes.len());
        for (i, n) in nodes.iter().enumerate() {
            resolved.push(
                n.inputs
                    .iter()
                    .map(|r| resolve(r, &n.name))
                    .collect::<Result<_>>()?,
            );
            for o in &n.outputs {
                producer[o.0] = Some(i);
            }
        }
        // Every input must be a graph input, an initializer or a node output.
        for (i, n) in nodes.iter().enumerate() {
            for v in &resolved[i] {
                if producer[v.0].is_none() && !inputs.contains(v) && !initializers.contains_key(v) {
                    return Err(GraphError::UnknownValue {
                        node: n.name.clone(),
                        value: values[v.0].name.clone(),
                    });
                }
            }
        }
        let outputs: Vec<ValueId> = outputs
            .iter()
            .map(|r| resolve(r, "<graph output>"))
            .collect::<Result<_>>()?;
        if outputs.is_empty() {
            return Err(GraphError::NoOutputs);
        }
        for v in &outputs {
            if producer[v.0].is_none() && !inputs.contains(v) && !initializers.contains_key(v) {
                return Err(GraphError::UnknownValue {
                    node: "<graph output>".into(),
                    value: values[v.0].name.clone(),
                });
            }
        }
        // Kahn's algorithm, lowest insertion index first.
        let mut indeg = vec![0usize; nodes.len()];
        let mut users: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
        for (i, ins) in resolved.iter().enumerate() {
            for v in ins {
                if let Some(p) = producer[v.0] {
                    indeg[i] += 1;
                    users[p].push(i);
                }
            }
        }
        let mut ready: BTreeSet<usize> = (0..nodes.len()).filter(|&i| indeg[i] == 0).collect();
        let mut order = Vec::with_capacity(nodes.len());
        while let Some(i) = ready.pop_first() {
            order.push(i);
            for &u in &users[i] {
                indeg[u] -= 1;
                if indeg[u] == 0 {
                    ready.insert(u);
                }
            }
        }
        if order.len() != nodes.len() {
            let mut left: Vec<String> = (0..nodes.len())
                .filter(|i| indeg[*i] > 0)
                .map(|i| nodes[i].name.clone())
                .collect();
            left.sort();
            return Err(GraphError::Cycle { nodes: left });
        }
        // Shape inference and folding of integer computations, in order.
        let mut metas: Vec<Option<Meta>> = values.iter().map(|v| v.meta.clone()).collect();
        let mut known: HashMap<ValueId, Arc<Tensor>> = initializers.clone();
        let mut pool = super::ops::exec::Pool::default();
        for &i in &order {
            let n = &nodes[i];
            let ins = &resolved[i];
            let in_metas: Vec<&Meta> = ins
                .iter()
                .map(|v| metas[v.0].as_ref().expect("inputs inferred first"))
                .collect();
            let known_views: Vec<Option<TensorView>> =
                ins.iter().map(|v| known.get(v).map(|t| t.view())).collect();
            let kn: Vec<Option<&TensorView>> = known_views.iter().map(Option::as_ref).collect();
            let name = n.name.clone();
            let outs = infer(&n.op, &n.name, &in_metas, &kn, &mut || {
                Self::fresh_dim(&mut fresh, &name)
            })?;
            if outs.len() != n.outputs.len() {
                return Err(GraphError::InvalidAttribute {
                    node: n.name.clone(),
                    detail: format!(
                        "{} produces {} outputs, {} declared",
                        n.op.op_type(),
                        outs.len(),
                        n.outputs.len()
                    ),
                });
            }
            // Fold when the result is integer data computed from known values
            // (or a Shape of a fixed shape), so shape sub-graphs resolve.
            let foldable = match &n.op {
                Op::Constant { .. } => true,
                Op::Shape { .. } => in_metas[0].shape.iter().all(|d| d.fixed().is_some()),
                _ => kn.iter().all(Option::is_some) && outs.iter().all(|m| !m.dtype.is_float()),
            };
            if foldable {
                let res = match &n.op {
                    // Only the shape matters: no need to run on a tensor.
                    Op::Shape { .. } => {
                        let dims: Vec<i64> = in_metas[0]
                            .shape
                            .iter()
                            .map(|d| d.fixed().expect("fixed") as i64)
                            .collect();
                        let len = outs[0].shape[0]
                            .fixed()
                            .expect("Shape output length is fixed");
                        let start = match &n.op {
                            Op::Shape { start, .. } => {
                                let r = dims.len() as i64;
                                (if *start < 0 {
                                    (start + r).max(0)
                                } else {
                                    (*start).min(r)
                                }) as usize
                            }
                            _ => unreachable!(),
                        };
                        vec![Tensor::vec_i64(&dims[start..start + len])]
                    }
                    _ => {
                        let args: Vec<&TensorView> = kn.iter().map(|k| k.expect("known")).collect();
                        super::ops::exec::execute(&n.op, &n.name, &args, &mut pool, None)?
                    }
                };
                for (o, t) in n.outputs.iter().zip(res) {
                    known.insert(*o, Arc::new(t));
                }
            }
            for (o, m) in n.outputs.iter().zip(outs) {
                metas[o.0] = Some(m);
            }
        }
        // Renumber nothing: value ids stay the builder's. Values never
        // produced (placeholders) cannot occur here: `deferred` caught them.
        let mut vinfos = Vec::with_capacity(values.len());
        for (i, v) in values.into_iter().enumerate() {
            let m = metas[i].take().unwrap_or(Meta {
                dtype: DType::F32,
                shape: Vec::new(),
            });
            vinfos.push(ValueInfo {
                name: v.name,
                dtype: m.dtype,
                shape: m.shape,
            });
        }
        let mut sorted_nodes = Vec::with_capacity(order.len());
        let mut nodes: Vec<Option<BNode>> = nodes.into_iter().map(Some).collect();
        for &i in &order {
            let n = nodes[i].take().expect("each node once");
            sorted_nodes.push(Node {
                name: n.name,
                op: n.op,
                inputs: resolved[i].clone(),
                outputs: n.outputs,
            });
        }
        let node_index = sorted_nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i))
            .collect();
        Ok(Graph {
            values: vinfos,
            nodes: sorted_nodes,
            inputs,
            outputs,
            initializers,
            known,
            node_index,
            value_index,
        })
    }

    // ---- Typed conveniences -------------------------------------------

    /// `Linear`: `x @ w^T + b` with a PyTorch-layout weight `[out, in]`; a
    /// `Gemm` with `transB = 1`. Weights become initializers
    /// `{name}.weight` / `{name}.bias`. `x` must be 2-D (use
    /// [`GraphBuilder::matmul`] plus [`GraphBuilder::add`] for batched inputs).
    pub fn linear(
        &mut self,
        name: &str,
        x: ValueId,
        w: &Tensor,
        b: Option<&Tensor>,
    ) -> Result<ValueId> {
        let op = Op::Gemm {
            alpha: 1.0,
            beta: 1.0,
            trans_a: false,
            trans_b: true,
        };
        self.node_with_params(name, op, x, w, b)
    }

    /// A node on `x` whose parameters become the initializers
    /// `{name}.weight` and, if given, `{name}.bias` (its next inputs).
    fn node_with_params(
        &mut self,
        name: &str,
        op: Op,
        x: ValueId,
        weight: &Tensor,
        bias: Option<&Tensor>,
    ) -> Result<ValueId> {
        self.check_node_name(name)?;
        let wv = self.initializer(&format!("{name}.weight"), weight.clone());
        let mut ins = vec![x, wv];
        if let Some(b) = bias {
            ins.push(self.initializer(&format!("{name}.bias"), b.clone()));
        }
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        self.node1(name, op, &ins)
    }

    /// `MatMul(a, b)`.
    pub fn matmul(&mut self, name: &str, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.node1(name, Op::MatMul, &[a, b])
    }

    /// `Conv` with weight `[M, C/group, k...]` and optional bias `[M]` as
    /// initializers `{name}.weight` / `{name}.bias`.
    pub fn conv(
        &mut self,
        name: &str,
        x: ValueId,
        w: &Tensor,
        b: Option<&Tensor>,
        attrs: ConvAttrs,
    ) -> Result<ValueId> {
        self.node_with_params(name, Op::Conv(attrs), x, w, b)
    }

    /// An elementwise unary function.
    pub fn unary(&mut self, name: &str, f: Unary, x: ValueId) -> Result<ValueId> {
        self.node1(name, Op::Unary(f), &[x])
    }

    /// An elementwise binary function with broadcasting.
    pub fn binary(&mut self, name: &str, f: Binary, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.node1(name, Op::Binary(f), &[a, b])
    }

    /// `Add(a, b)`.
    pub fn add(&mut self, name: &str, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.binary(name, Binary::Add, a, b)
    }

    /// `Mul(a, b)`.
    pub fn mul(&mut self, name: &str, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.binary(name, Binary::Mul, a, b)
    }

    /// `Relu(x)`.
    pub fn relu(&mut self, name: &str, x: ValueId) -> Result<ValueId> {
        self.unary(name, Unary::Relu, x)
    }

    /// `Gelu(x)` (erf form).
    pub fn gelu(&mut self, name: &str, x: ValueId) -> Result<ValueId> {
        self.unary(name, Unary::GeluErf, x)
    }

    /// `Softmax(x)` over `axis`.
    pub fn softmax(&mut self, name: &str, x: ValueId, axis: i64) -> Result<ValueId> {
        self.node1(name, Op::Softmax { axis }, &[x])
    }

    /// `LayerNormalization` over the last axis with `gamma` and optional
    /// `beta` as initializers `{name}.weight` / `{name}.bias`.
    pub fn layer_norm(
        &mut self,
        name: &str,
        x: ValueId,
        gamma: &Tensor,
        beta: Option<&Tensor>,
        epsilon: f32,
    ) -> Result<ValueId> {
        let op = Op::LayerNormalization { axis: -1, epsilon };
        self.node_with_params(name, op, x, gamma, beta)
    }

    /// `RMSNormalization` over the last axis with `gamma` as `{name}.weight`.
    pub fn rms_norm(
        &mut self,
        name: &str,
        x: ValueId,
        gamma: &Tensor,
        epsilon: f32,
    ) -> Result<ValueId> {
        let op = Op::RmsNormalization { axis: -1, epsilon };
        self.node_with_params(name, op, x, gamma, None)
    }

    /// `Reshape` to a fixed target (0 copies a dim, -1 is inferred); the
    /// target becomes the initializer `{name}.shape`.
    pub fn reshape(&mut self, name: &str, x: ValueId, shape: &[i64]) -> Result<ValueId> {
        self.check_node_name(name)?;
        let s = self.initializer(&format!("{name}.shape"), Tensor::vec_i64(shape));
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        self.node1(name, Op::Reshape { allowzero: false }, &[x, s])
    }

    /// `Transpose` by `perm`.
    pub fn transpose(&mut self, name: &str, x: ValueId, perm: &[usize]) -> Result<ValueId> {
        self.node1(
            name,
            Op::Transpose {
                perm: Some(perm.to_vec()),
            },
            &[x],
        )
    }

    /// `Concat` along `axis`.
    pub fn concat(&mut self, name: &str, xs: &[ValueId], axis: i64) -> Result<ValueId> {
        self.node1(name, Op::Concat { axis }, xs)
    }

    /// An embedding lookup: `Gather(table, ids)` on axis 0 with the table
    /// as the initializer `{name}.weight`.
    pub fn embedding(&mut self, name: &str, table: &Tensor, ids: ValueId) -> Result<ValueId> {
        self.check_node_name(name)?;
        let t = self.initializer(&format!("{name}.weight"), table.clone());
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        self.node1(name, Op::Gather { axis: 0 }, &[t, ids])
    }

    /// `ReduceMean` / `ReduceSum` / `ReduceMax` over `axes`.
    pub fn reduce(
        &mut self,
        name: &str,
        kind: ReduceKind,
        x: ValueId,
        axes: &[i64],
        keepdims: bool,
    ) -> Result<ValueId> {
        self.node1(
            name,
            Op::Reduce {
                kind,
                axes: Some(axes.to_vec()),
                keepdims,
            },
            &[x],
        )
    }

    /// `MaxPool` / `AveragePool`.
    pub fn pool(&mut self, name: &str, max: bool, x: ValueId, attrs: PoolAttrs) -> Result<ValueId> {
        let op = if max {
            Op::MaxPool(attrs)
        } else {
            Op::AveragePool(attrs)
        };
        self.node1(name, op, &[x])
    }
}
