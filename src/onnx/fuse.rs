//! Fusion of exact op patterns in the working graph, each recorded with the
//! names of the nodes it replaced.
//!
//! A pattern fuses only when its inner values feed nothing else (no other
//! node, no graph output) and its constants equal the pattern's to within
//! f32 rounding; otherwise the nodes are left as they are.
//!
//! Patterns (the `Fusion::pattern` strings):
//! * `erf GELU`, `tanh GELU` -> `Gelu`.
//! * `decomposed LayerNorm (<variance>, <normalizer>)` -> `LayerNormalization`:
//!   `mean = ReduceMean(x)` over the trailing axes (negative, keepdims),
//!   `d = x - mean`, variance `E[(x-mean)^2]` (`ReduceMean(d^2)`) or
//!   `E[x^2]-E[x]^2` (`ReduceMean(x^2) - mean^2`), each square `Pow(_, 2)` or
//!   `Mul(v, v)`; `ve = var + eps` (scalar eps, either order); normalizer
//!   `/ Sqrt` (`d / Sqrt(ve)`), `/ Pow(0.5)`, or the rsqrt forms
//!   `d * Reciprocal(Sqrt(ve))`, `d * Div(1, Sqrt(ve))` and `d * Pow(ve, -0.5)`
//!   (either order); then optionally `* gamma` and `+ beta`, float constants
//!   of the normalized shape (else left as their own nodes). The fused kernel
//!   computes a two-pass variance, so for `E[x^2]-E[x]^2` it is at least as
//!   accurate as the graph it replaces.
//! * `exp/sum/div Softmax` -> `Softmax`.
//! * `MatMul+Add` -> `Gemm`.

use std::collections::HashMap;

use super::ir::{Attr, IGraph, INode};

/// One fusion performed at import.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fusion {
    /// The fused node's name in the op-graph.
    pub node: String,
    /// What it became: `Gemm`, `LayerNormalization`, `Gelu`, `Softmax`.
    pub op_type: String,
    /// The pattern, e.g. `MatMul+Add` or `erf GELU`.
    pub pattern: String,
    /// The ONNX nodes it replaced, in graph order.
    pub original: Vec<String>,
}

struct Ctx<'a> {
    g: &'a IGraph,
    producer: HashMap<&'a str, usize>,
    /// The nodes reading each value, each once, in graph order: consumer
    /// look-ups stay O(1) however many candidate anchors a graph has.
    consumers: HashMap<&'a str, Vec<usize>>,
    uses: HashMap<String, usize>,
    removed: Vec<bool>,
}

fn close(a: f32, b: f64) -> bool {
    ((a as f64) - b).abs() <= 2e-6 * b.abs().max(1e-30)
}

impl<'a> Ctx<'a> {
    fn new(g: &'a IGraph) -> Ctx<'a> {
        let mut producer = HashMap::new();
        let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, n) in g.nodes.iter().enumerate() {
            for o in &n.outputs {
                producer.insert(o.as_str(), i);
            }
            for v in &n.inputs {
                let c = consumers.entry(v.as_str()).or_default();
                if c.last() != Some(&i) {
                    c.push(i);
                }
            }
        }
        Ctx {
            g,
            producer,
            consumers,
            uses: g.use_counts(),
            removed: vec![false; g.nodes.len()],
        }
    }

    /// The live node producing `v` with this op type.
    fn prod(&self, v: &str, op: &str) -> Option<usize> {
        let &i = self.producer.get(v)?;
        (!self.removed[i] && self.g.nodes[i].op_type == op).then_some(i)
    }

    fn node(&self, i: usize) -> &INode {
        &self.g.nodes[i]
    }

    /// Whether `v` is read exactly once (so its producer may be absorbed).
    fn single(&self, v: &str) -> bool {
        self.uses.get(v).copied() == Some(1)
    }

    fn is_const(&self, v: &str, c: f64) -> bool {
        self.g.scalar(v).is_some_and(|x| close(x, c))
    }

    /// For a binary node, the other input when one input is `v`.
    fn other(&self, i: usize, v: &str) -> Option<String> {
        let n = self.node(i);
        if n.inputs.len() != 2 {
            return None;
        }
        if n.inputs[0] == v {
            Some(n.inputs[1].clone())
        } else if n.inputs[1] == v {
            Some(n.inputs[0].clone())
        } else {
            None
        }
    }

    /// For a binary node, (input that is a scalar constant `c`, other input).
    fn with_const(&self, i: usize, c: f64) -> Option<String> {
        let n = self.node(i);
        if n.inputs.len() != 2 {
            return None;
        }
        if self.is_const(&n.inputs[1], c) {
            Some(n.inputs[0].clone())
        } else if self.is_const(&n.inputs[0], c) {
            Some(n.inputs[1].clone())
        } else {
            None
        }
    }

    /// Reduce axes of a Reduce* node (attribute, or constant input from
    /// opset 13/18), with keepdims.
    fn reduce_axes(&self, i: usize) -> Option<(Vec<i64>, bool)> {
        let n = self.node(i);
        let keep = n.int(self.g.opset, "keepdims", 1).ok()? != 0;
        let axes = match n.ints(self.g.opset, "axes").ok()? {
            Some(a) => a,
            None => self.g.consts.get(n.input(1)?)?.to_i64_vec(),
        };
        Some((axes, keep))
    }
}

/// Runs every fusion; returns what was fused.
pub(crate) fn fuse(g: &mut IGraph) -> Vec<Fusion> {
    let mut fusions = Vec::new();
    // Order matters: GELU and LayerNorm contain Add/Mul nodes that the
    // MatMul+Add rule must not see first.
    for pass in [
        fuse_gelu as fn(&mut IGraph) -> Vec<Fusion>,
        fuse_layernorm,
        fuse_softmax,
        fuse_matmul_add,
    ] {
        fusions.extend(pass(g));
    }
    fusions
}

/// Replaces the nodes `old` (indices) by `new`, placed at the position of
/// the last replaced node (all inputs of the pattern are defined by then).
fn apply(g: &mut IGraph, mut replaced: Vec<Vec<usize>>, new: Vec<INode>) {
    let mut at: HashMap<usize, INode> = HashMap::new();
    let mut drop = vec![false; g.nodes.len()];
    for (r, n) in replaced.iter_mut().zip(new) {
        r.sort();
        for &i in r.iter() {
            drop[i] = true;
        }
        at.insert(*r.last().expect("non-empty pattern"), n);
    }
    let old = std::mem::take(&mut g.nodes);
    for (i, n) in old.into_iter().enumerate() {
        if let Some(f) = at.remove(&i) {
            g.nodes.push(f);
        } else if !drop[i] {
            g.nodes.push(n);
        }
    }
}

fn record(g: &IGraph, idx: &[usize], node: &str, op: &str, pattern: &str) -> Fusion {
    let mut idx = idx.to_vec();
    idx.sort();
    Fusion {
        node: node.to_string(),
        op_type: op.to_string(),
        pattern: pattern.to_string(),
        original: idx.iter().map(|&i| g.nodes[i].name.clone()).collect(),
    }
}

/// `0.5 * x * (1 + erf(x / sqrt 2))` and `0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))`,
/// with the three products associated any way.
fn fuse_gelu(g: &mut IGraph) -> Vec<Fusion> {
    let (groups, news, fusions) = {
        let mut c = Ctx::new(g);
        let mut groups = Vec::new();
        let mut news = Vec::new();
        let mut fusions = Vec::new();
        for i in 0..g.nodes.len() {
            if c.removed[i] || !matches!(g.nodes[i].op_type.as_str(), "Erf" | "Tanh") {
                continue;
            }
            let Some(found) = match_gelu(&c, i) else {
                continue;
            };
            let (x, last, mut idx, approx) = found;
            let name = g.nodes[last].name.clone();
            for &k in &idx {
                c.removed[k] = true;
            }
            idx.sort();
            fusions.push(record(
                g,
                &idx,
                &name,
                "Gelu",
                if approx == "none" {
                    "erf GELU"
                } else {
                    "tanh GELU"
                },
            ));
            let mut attrs = std::collections::BTreeMap::new();
            attrs.insert("approximate".to_string(), Attr::Str(approx.to_string()));
            news.push(INode {
                name,
                op_type: "Gelu".into(),
                inputs: vec![x],
                outputs: g.nodes[last].outputs.clone(),
                attrs,
            });
            groups.push(idx);
        }
        (groups, news, fusions)
    };
    apply(g, groups, news);
    fusions
}

/// Matches a GELU around the Erf/Tanh node `i`: (x, last node, nodes, approximate).
fn match_gelu(c: &Ctx, i: usize) -> Option<(String, usize, Vec<usize>, &'static str)> {
    let n = c.node(i);
    let t_in = n.input(0)?;
    let mut idx = vec![i];
    let (x, approx) = if n.op_type == "Erf" {
        // erf(x / sqrt2) or erf(x * (1/sqrt2))
        let s = c.producer.get(t_in).copied()?;
        let sn = c.node(s);
        let x = match sn.op_type.as_str() {
            "Div"
                if sn.inputs.len() == 2 && c.is_const(&sn.inputs[1], std::f64::consts::SQRT_2) =>
            {
                sn.inputs[0].clone()
            }
            "Mul" => c.with_const(s, std::f64::consts::FRAC_1_SQRT_2)?,
            _ => return None,
        };
        if !c.single(t_in) {
            return None;
        }
        idx.push(s);
        (x, "none")
    } else {
        // tanh(k * (x + 0.044715 * x^3))
        let m = c.prod(t_in, "Mul")?;
        let k = (2.0 / std::f64::consts::PI).sqrt();
        let inner = c.with_const(m, k)?;
        let a = c.prod(&inner, "Add")?;
        let an = c.node(a);
        let (x, cube_term) = {
            let (p, q) = (an.inputs.first()?.clone(), an.inputs.get(1)?.clone());
            // One addend is x, the other 0.044715 * x^3 built from x.
            let try_pair = |x: &str, t: &str| -> Option<Vec<usize>> {
                let m2 = c.prod(t, "Mul")?;
                let cube = c.with_const(m2, 0.044715)?;
                let mut v = vec![m2];
                if let Some(pw) = c.prod(&cube, "Pow") {
                    let pn = c.node(pw);
                    (pn.inputs.first()? == x && c.is_const(pn.inputs.get(1)?, 3.0)).then_some(())?;
                    v.push(pw);
                } else {
                    // x * (x * x) in either order
                    let m3 = c.prod(&cube, "Mul")?;
                    let other = c.other(m3, x)?;
                    let m4 = c.prod(&other, "Mul")?;
                    let n4 = c.node(m4);
                    (n4.inputs.len() == 2 && n4.inputs.iter().all(|v| v == x)).then_some(())?;
                    (c.single(&other)).then_some(())?;
                    v.extend([m3, m4]);
                }
                (c.single(t) && c.single(&cube)).then_some(v)
            };
            if let Some(v) = try_pair(&p, &q) {
                (p, v)
            } else {
                (q.clone(), try_pair(&q, &p)?)
            }
        };
        if !(c.single(t_in) && c.single(&inner)) {
            return None;
        }
        idx.extend([m, a]);
        idx.extend(cube_term);
        (x, "tanh")
    };
    // (1 + t)
    let t_out = n.outputs.first()?;
    if !c.single(t_out) {
        return None;
    }
    let add = c.prod_consumer(t_out, "Add")?;
    c.with_const(add, 1.0)?;
    idx.push(add);
    let p = c.node(add).outputs.first()?.clone();
    if !c.single(&p) {
        return None;
    }
    // The outer products of {x, 0.5, p}.
    let m1 = c.prod_consumer(&p, "Mul")?;
    idx.push(m1);
    let o1 = c.other(m1, &p)?;
    let out1 = c.node(m1).outputs.first()?.clone();
    if o1 == x {
        // Mul(x, p) then * 0.5
        if !c.single(&out1) {
            return None;
        }
        let m2 = c.prod_consumer(&out1, "Mul")?;
        c.with_const(m2, 0.5)?;
        idx.push(m2);
        return Some((x, m2, idx, approx));
    }
    if c.is_const(&o1, 0.5) {
        // Mul(p, 0.5) then * x
        if !c.single(&out1) {
            return None;
        }
        let m2 = c.prod_consumer(&out1, "Mul")?;
        (c.other(m2, &out1)? == x).then_some(())?;
        idx.push(m2);
        return Some((x, m2, idx, approx));
    }
    // Mul(Mul(x, 0.5), p)
    let h = c.prod(&o1, "Mul")?;
    (c.with_const(h, 0.5)? == x && c.single(&o1)).then_some(())?;
    idx.push(h);
    Some((x, m1, idx, approx))
}

impl<'a> Ctx<'a> {
    /// The one live node of this op type that reads `v` (and no other node does).
    fn prod_consumer(&self, v: &str, op: &str) -> Option<usize> {
        self.sole_consumer(v)
            .filter(|&i| self.g.nodes[i].op_type == op)
    }

    /// The one live node that reads `v` (possibly more than once).
    fn sole_consumer(&self, v: &str) -> Option<usize> {
        let mut live = self.consumers.get(v)?.iter().filter(|&&i| !self.removed[i]);
        let first = *live.next()?;
        live.next().is_none().then_some(first)
    }

    /// How many times `v` is read (by node inputs and graph outputs).
    fn reads(&self, v: &str) -> usize {
        self.uses.get(v).copied().unwrap_or(0)
    }

    /// The input of a node with exactly one.
    fn unary(&self, i: usize) -> Option<&'a str> {
        match self.g.nodes[i].inputs.as_slice() {
            [a] => Some(a),
            _ => None,
        }
    }

    /// The inputs of a node with exactly two (malformed nodes give `None`,
    /// never an index panic).
    fn binary(&self, i: usize) -> Option<(&'a str, &'a str)> {
        match self.g.nodes[i].inputs.as_slice() {
            [a, b] => Some((a, b)),
            _ => None,
        }
    }

    /// `v` as `Pow(b, 2)` or `Mul(b, b)`: (b, the node, how often it reads b).
    fn square(&self, v: &str) -> Option<(&'a str, usize, usize)> {
        if let Some(p) = self.prod(v, "Pow") {
            let (b, k) = self.binary(p)?;
            self.is_const(k, 2.0).then_some((b, p, 1))
        } else {
            let m = self.prod(v, "Mul")?;
            let (a, b) = self.binary(m)?;
            (a == b).then_some((a, m, 2))
        }
    }
}

/// Decomposed LayerNorm: `(x - mean) * 1/sqrt(var + eps) [* gamma] [+ beta]`
/// in the forms of [`Variance`] and [`Normalizer`], anchored on the `+ eps`.
fn fuse_layernorm(g: &mut IGraph) -> Vec<Fusion> {
    let mut c = Ctx::new(g);
    let mut groups = Vec::new();
    let mut news = Vec::new();
    let mut fusions = Vec::new();
    for i in 0..g.nodes.len() {
        if c.removed[i] || g.nodes[i].op_type != "Add" {
            continue;
        }
        let Some(m) = match_layernorm(&c, i) else {
            continue;
        };
        let NormMatch {
            x,
            eps,
            axis,
            mut idx,
            pattern,
        } = m;
        // Scale, then shift, each optional; `idx` ends with the node whose
        // output the next one must read.
        let k = axis.unsigned_abs() as usize;
        let mut params = Vec::new();
        for op in ["Mul", "Add"] {
            let out = &g.nodes[*idx.last().expect("non-empty pattern")].outputs;
            match affine(&c, &out[0], op, k) {
                Some((p, n)) => {
                    params.push(p);
                    idx.push(n);
                }
                // Absent: an omitted input. The lowering gives a missing
                // scale ones, so a shift without a scale still fuses.
                None => params.push(String::new()),
            }
        }
        let last = *idx.last().expect("non-empty pattern");
        let name = g.nodes[last].name.clone();
        let outputs = g.nodes[last].outputs.clone();
        for &n in &idx {
            c.removed[n] = true;
        }
        idx.sort();
        fusions.push(record(g, &idx, &name, "LayerNormalization", &pattern));
        let mut attrs = std::collections::BTreeMap::new();
        attrs.insert("axis".into(), Attr::Int(axis));
        attrs.insert("epsilon".into(), Attr::Float(eps));
        let mut inputs = vec![x];
        inputs.extend(params);
        while inputs.last().is_some_and(String::is_empty) {
            inputs.pop();
        }
        news.push(INode {
            name,
            op_type: "LayerNormalization".into(),
            inputs,
            outputs,
            attrs,
        });
        groups.push(idx);
    }
    drop(c);
    apply(g, groups, news);
    fusions
}

/// A scale (`Mul`) or shift (`Add`) reading `out`, by a float constant of the
/// normalized shape: exactly `k` dims, none 1 (a broadcast 1 or a leading 1
/// would change the output shape or fail the LayerNorm kernel's length check,
/// so such a constant is left as its own node). Returns (constant, node).
fn affine(c: &Ctx, out: &str, op: &str, k: usize) -> Option<(String, usize)> {
    c.single(out).then_some(())?;
    let n = c.prod_consumer(out, op)?;
    let p = c.other(n, out)?;
    (c.node(n).outputs.len() == 1).then_some(())?;
    let t = c.g.consts.get(&p)?;
    (t.data.is_float() && t.shape.len() == k && t.shape.iter().all(|&d| d > 1)).then_some((p, n))
}

/// The trailing axes `axes` as one first axis (negative), if they are the
/// last `k >= 1` axes written as negatives; positive axes need the rank,
/// which the lowering checks, so they are refused here, and so is an empty
/// list (all axes, or none with `noop_with_empty_axes`).
fn trailing_axis(axes: &[i64]) -> Option<i64> {
    let mut a: Vec<i64> = axes.to_vec();
    a.sort();
    let k = a.len() as i64;
    (k > 0 && a == (-k..0).collect::<Vec<_>>()).then_some(-k)
}

/// How a decomposed LayerNorm writes its variance (squares as `Pow(v, 2)` or
/// `Mul(v, v)`).
#[derive(Clone, Copy)]
enum Variance {
    /// `ReduceMean((x - mean)^2)`.
    Centered,
    /// `ReduceMean(x^2) - mean^2`.
    Moments,
}

/// How it applies `1 / sqrt(var + eps)` to `d = x - mean`.
#[derive(Clone, Copy)]
enum Normalizer {
    /// `d / Sqrt(ve)`.
    DivSqrt,
    /// `d / Pow(ve, 0.5)`.
    DivPowHalf,
    /// `d * Reciprocal(Sqrt(ve))`.
    MulReciprocalSqrt,
    /// `d * Div(1, Sqrt(ve))` (PyTorch's export of `rsqrt`).
    MulOneOverSqrt,
    /// `d * Pow(ve, -0.5)`.
    MulPowNegHalf,
}

impl Variance {
    fn label(self) -> &'static str {
        match self {
            Variance::Centered => "E[(x-mean)^2]",
            Variance::Moments => "E[x^2]-E[x]^2",
        }
    }
}

impl Normalizer {
    fn label(self) -> &'static str {
        match self {
            Normalizer::DivSqrt => "/ Sqrt",
            Normalizer::DivPowHalf => "/ Pow(0.5)",
            Normalizer::MulReciprocalSqrt => "rsqrt as Reciprocal(Sqrt)",
            Normalizer::MulOneOverSqrt => "rsqrt as Div(1, Sqrt)",
            Normalizer::MulPowNegHalf => "rsqrt as Pow(-0.5)",
        }
    }
}

/// A matched normalization, before the optional scale and shift.
struct NormMatch {
    x: String,
    eps: f32,
    /// First normalized axis, negative.
    axis: i64,
    /// Pattern nodes, ending with the normalizing `Div`/`Mul`.
    idx: Vec<usize>,
    pattern: String,
}

/// Around the `Add` node `add` (`var + eps`, either order): the LayerNorm
/// core, every fused-away value read only inside the pattern.
fn match_layernorm(c: &Ctx, add: usize) -> Option<NormMatch> {
    let g = c.g;
    let (p, q) = c.binary(add)?;
    let (v, eps) = match (g.scalar(p), g.scalar(q)) {
        (None, Some(e)) => (p, e),
        (Some(e), None) => (q, e),
        _ => return None,
    };
    let e = c.node(add).outputs.first()?;
    (c.single(e) && c.single(v)).then_some(())?;
    let (d, norm_nodes, norm) = match_normalizer(c, e)?;
    // d = x - mean, mean = ReduceMean(x) over trailing axes with keepdims.
    let sub = c.prod(&d, "Sub")?;
    let (x, mean) = c.binary(sub)?;
    let rm = c.prod(mean, "ReduceMean")?;
    (c.node(rm).input(0)? == x).then_some(())?;
    // The same trailing axes (in any order), keepdims, for every ReduceMean.
    let trailing = |r: usize| match c.reduce_axes(r)? {
        (axes, true) => trailing_axis(&axes),
        _ => None,
    };
    let axis = trailing(rm)?;
    let same_reduce = |r: usize| trailing(r) == Some(axis);
    // Reads of d and mean the pattern accounts for: any other reader (node
    // or graph output) needs them, so the pattern must stay.
    let (variance, var_nodes, d_reads, mean_reads) = if let Some(vm) = c.prod(v, "ReduceMean") {
        let sq_in = c.node(vm).input(0)?;
        let (base, sq, reads) = c.square(sq_in)?;
        (base == d && same_reduce(vm) && c.single(sq_in)).then_some(())?;
        (Variance::Centered, vec![vm, sq], 1 + reads, 1)
    } else {
        let vs = c.prod(v, "Sub")?;
        let (ex2, m2) = c.binary(vs)?;
        let vm = c.prod(ex2, "ReduceMean")?;
        let x2 = c.node(vm).input(0)?;
        let (xb, xsq, _) = c.square(x2)?;
        let (mb, msq, reads) = c.square(m2)?;
        (xb == x && mb == mean && same_reduce(vm) && c.single(ex2) && c.single(m2) && c.single(x2))
            .then_some(())?;
        (Variance::Moments, vec![vs, vm, xsq, msq], 1, 1 + reads)
    };
    (c.reads(&d) == d_reads && c.reads(mean) == mean_reads).then_some(())?;
    let mut idx = vec![add, sub, rm];
    idx.extend(var_nodes);
    idx.extend(norm_nodes);
    // Scale and shift are matched from the normalizing node's one output.
    (c.node(*idx.last()?).outputs.len() == 1).then_some(())?;
    Some(NormMatch {
        x: x.to_string(),
        eps,
        axis,
        idx,
        pattern: format!(
            "decomposed LayerNorm ({}, {})",
            variance.label(),
            norm.label()
        ),
    })
}

/// From `e = var + eps` to the normalizing node: (d, nodes ending with the
/// normalizing `Div`/`Mul`, form).
fn match_normalizer(c: &Ctx, e: &str) -> Option<(String, Vec<usize>, Normalizer)> {
    // `s` as a divisor: Div(d, s).
    let div_by = |s: &str| -> Option<(String, usize)> {
        let dv = c.prod_consumer(s, "Div")?;
        let (num, den) = c.binary(dv)?;
        (den == s && num != s).then(|| (num.to_string(), dv))
    };
    // `r` as a factor: Mul(d, r) or Mul(r, d).
    let mul_by = |r: &str| -> Option<(String, usize)> {
        let m = c.prod_consumer(r, "Mul")?;
        Some((c.other(m, r)?, m))
    };
    let first = c.sole_consumer(e)?;
    let out = c.node(first).outputs.first()?;
    c.single(out).then_some(())?;
    let (d, nodes, form) = match c.node(first).op_type.as_str() {
        "Sqrt" if c.unary(first)? == e => {
            let next = c.sole_consumer(out)?;
            let n = c.node(next);
            let r = n.outputs.first()?;
            match n.op_type.as_str() {
                "Reciprocal" if c.unary(next)? == out && c.single(r) => {
                    let (d, m) = mul_by(r)?;
                    (d, vec![first, next, m], Normalizer::MulReciprocalSqrt)
                }
                "Div" if c.binary(next)?.1 == out && c.is_const(n.input(0)?, 1.0) => {
                    c.single(r).then_some(())?;
                    let (d, m) = mul_by(r)?;
                    (d, vec![first, next, m], Normalizer::MulOneOverSqrt)
                }
                _ => {
                    let (d, dv) = div_by(out)?;
                    (d, vec![first, dv], Normalizer::DivSqrt)
                }
            }
        }
        "Pow" => {
            let (base, k) = c.binary(first)?;
            (base == e).then_some(())?;
            if c.is_const(k, -0.5) {
                let (d, m) = mul_by(out)?;
                (d, vec![first, m], Normalizer::MulPowNegHalf)
            } else if c.is_const(k, 0.5) {
                let (d, dv) = div_by(out)?;
                (d, vec![first, dv], Normalizer::DivPowHalf)
            } else {
                return None;
            }
        }
        _ => return None,
    };
    Some((d, nodes, form))
}

/// `exp(x [- max(x)]) / sum(exp(...), axis, keepdims)` -> Softmax(axis).
fn fuse_softmax(g: &mut IGraph) -> Vec<Fusion> {
    let mut c = Ctx::new(g);
    let mut groups = Vec::new();
    let mut news = Vec::new();
    let mut fusions = Vec::new();
    for i in 0..g.nodes.len() {
        if c.removed[i] || g.nodes[i].op_type != "Div" {
            continue;
        }
        let Some((x, axis, idx)) = (|| {
            let dn = c.node(i);
            let (e, s) = (dn.input(0)?, dn.input(1)?);
            let ex = c.prod(e, "Exp")?;
            let rs = c.prod(s, "ReduceSum")?;
            (c.node(rs).input(0)? == e && c.uses.get(e).copied() == Some(2) && c.single(s))
                .then_some(())?;
            let (axes, keep) = c.reduce_axes(rs)?;
            (keep && axes.len() == 1).then_some(())?;
            let mut idx = vec![ex, rs, i];
            let mut x = c.node(ex).input(0)?.to_string();
            // Optional max subtraction (shift invariance).
            if let Some(sub) = c.prod(&x, "Sub") {
                let sn = c.node(sub);
                if let (Some(xs), Some(m)) = (sn.input(0), sn.input(1))
                    && let Some(mx) = c.prod(m, "ReduceMax")
                    && c.node(mx).input(0) == Some(xs)
                    && c.reduce_axes(mx) == Some((axes.clone(), true))
                    && c.single(&x)
                    && c.single(m)
                {
                    idx.extend([sub, mx]);
                    x = xs.to_string();
                }
            }
            c.single(c.node(ex).input(0)?).then_some(())?;
            Some((x, axes[0], idx))
        })() else {
            continue;
        };
        let name = g.nodes[i].name.clone();
        for &k in &idx {
            c.removed[k] = true;
        }
        let mut idx = idx;
        idx.sort();
        fusions.push(record(g, &idx, &name, "Softmax", "exp/sum/div Softmax"));
        let mut attrs = std::collections::BTreeMap::new();
        attrs.insert("axis".into(), Attr::Int(axis));
        // Softmax from opset 13 is single-axis, which is what this is.
        attrs.insert("__single_axis".into(), Attr::Int(1));
        news.push(INode {
            name,
            op_type: "Softmax".into(),
            inputs: vec![x],
            outputs: g.nodes[i].outputs.clone(),
            attrs,
        });
        groups.push(idx);
    }
    drop(c);
    apply(g, groups, news);
    fusions
}

/// `Add(MatMul(a, W), b)` with constant W (2-D) and b -> `Gemm`-style
/// `MatMulAdd` (lowered to Gemm, with reshapes for batched `a`).
fn fuse_matmul_add(g: &mut IGraph) -> Vec<Fusion> {
    let mut c = Ctx::new(g);
    let mut groups = Vec::new();
    let mut news = Vec::new();
    let mut fusions = Vec::new();
    for i in 0..g.nodes.len() {
        if c.removed[i] || g.nodes[i].op_type != "MatMul" {
            continue;
        }
        let Some((add, bias)) = (|| {
            let n = c.node(i);
            let w = g.consts.get(n.input(1)?)?;
            (w.shape.len() == 2 && w.data.is_float()).then_some(())?;
            let out = n.outputs.first()?;
            c.single(out).then_some(())?;
            let add = c.prod_consumer(out, "Add")?;
            let b = c.other(add, out)?;
            let bt = g.consts.get(&b)?;
            // The bias must broadcast as a row: [N] or [1, N].
            (bt.data.is_float()
                && bt.len() == w.shape[1]
                && bt.shape.iter().rev().skip(1).all(|&d| d == 1))
            .then_some(())?;
            Some((add, b))
        })() else {
            continue;
        };
        let name = g.nodes[add].name.clone();
        c.removed[i] = true;
        c.removed[add] = true;
        fusions.push(record(g, &[i, add], &name, "Gemm", "MatMul+Add"));
        let mn = &g.nodes[i];
        news.push(INode {
            name,
            op_type: "MatMulAdd".into(),
            inputs: vec![mn.inputs[0].clone(), mn.inputs[1].clone(), bias],
            outputs: g.nodes[add].outputs.clone(),
            attrs: Default::default(),
        });
        groups.push(vec![i, add]);
    }
    drop(c);
    apply(g, groups, news);
    fusions
}
