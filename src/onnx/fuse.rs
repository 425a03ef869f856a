//! Fusion of exact op patterns in the working graph, each recorded with the
//! names of the nodes it replaced.
//!
//! A pattern fuses only when its inner values feed nothing else (no other
//! node, no graph output) and its constants equal the pattern's to within
//! f32 rounding; otherwise the nodes are left as they are.

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
    uses: HashMap<String, usize>,
    removed: Vec<bool>,
}

fn close(a: f32, b: f64) -> bool {
    ((a as f64) - b).abs() <= 2e-6 * b.abs().max(1e-30)
}

impl<'a> Ctx<'a> {
    fn new(g: &'a IGraph) -> Ctx<'a> {
        let mut producer = HashMap::new();
        for (i, n) in g.nodes.iter().enumerate() {
            for o in &n.outputs {
                producer.insert(o.as_str(), i);
            }
        }
        Ctx {
            g,
            producer,
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
                    (n4.inputs[0] == x && n4.inputs[1] == x).then_some(())?;
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

impl Ctx<'_> {
    /// The one live node of this op type that reads `v`.
    fn prod_consumer(&self, v: &str, op: &str) -> Option<usize> {
        let mut found = None;
        for (i, n) in self.g.nodes.iter().enumerate() {
            if !self.removed[i] && n.inputs.iter().any(|x| x == v) {
                if n.op_type != op || found.is_some() {
                    return None;
                }
                found = Some(i);
            }
        }
        found
    }
}

/// Decomposed LayerNorm: `(x - mean) / sqrt(var + eps) [* gamma] [+ beta]`,
/// variance as `mean((x-mean)^2)` or `mean(x^2) - mean^2`, division or
/// multiplication by a reciprocal.
fn fuse_layernorm(g: &mut IGraph) -> Vec<Fusion> {
    let mut c = Ctx::new(g);
    let mut groups = Vec::new();
    let mut news = Vec::new();
    let mut fusions = Vec::new();
    for i in 0..g.nodes.len() {
        if c.removed[i] || g.nodes[i].op_type != "Sqrt" {
            continue;
        }
        let Some((x, d, eps, axes, mut idx)) = match_norm_core(&c, i) else {
            continue;
        };
        // Scale and shift (optional, each a constant).
        let mut last_out = g.nodes[*idx.last().unwrap()].outputs[0].clone();
        let mut gamma = String::new();
        let mut beta = String::new();
        if c.single(&last_out)
            && let Some(m) = c.prod_consumer(&last_out, "Mul")
            && let Some(o) = c.other(m, &last_out)
            && g.consts.contains_key(&o)
        {
            gamma = o;
            idx.push(m);
            last_out = g.nodes[m].outputs[0].clone();
        }
        if !gamma.is_empty()
            && c.single(&last_out)
            && let Some(a) = c.prod_consumer(&last_out, "Add")
            && let Some(o) = c.other(a, &last_out)
            && g.consts.contains_key(&o)
        {
            beta = o;
            idx.push(a);
        }
        let _ = d;
        let last = *idx.iter().max().unwrap();
        let last = if idx.contains(&last) {
            idx[idx.len() - 1].max(last)
        } else {
            last
        };
        let name = g.nodes[*idx.last().unwrap()].name.clone();
        let outputs = g.nodes[*idx.last().unwrap()].outputs.clone();
        for &k in &idx {
            c.removed[k] = true;
        }
        idx.sort();
        let _ = last;
        let pattern = "decomposed LayerNorm";
        fusions.push(record(g, &idx, &name, "LayerNormalization", pattern));
        let mut attrs = std::collections::BTreeMap::new();
        attrs.insert("axis".into(), Attr::Int(axes));
        attrs.insert("epsilon".into(), Attr::Float(eps));
        let mut inputs = vec![x, gamma];
        if !beta.is_empty() {
            inputs.push(beta);
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

/// The trailing axes `axes` as one first axis (negative), if they are the
/// last `k` axes written as negatives; positive axes need the rank, which
/// the lowering checks, so they are refused here.
fn trailing_axis(axes: &[i64]) -> Option<i64> {
    let mut a: Vec<i64> = axes.to_vec();
    a.sort();
    let k = a.len() as i64;
    (a == (-k..0).collect::<Vec<_>>()).then_some(-k)
}

/// Around `Sqrt` node `s`: (x, d, eps, first axis, node indices ending with
/// the normalizing Div/Mul).
fn match_norm_core(c: &Ctx, s: usize) -> Option<(String, String, f32, i64, Vec<usize>)> {
    let g = c.g;
    let sn = c.node(s);
    let e = sn.input(0)?;
    let add = c.prod(e, "Add")?;
    let an = c.node(add);
    let (v, eps) = if let Some(x) = g.scalar(&an.inputs[1]) {
        (an.inputs[0].clone(), x)
    } else {
        (an.inputs[1].clone(), g.scalar(&an.inputs[0])?)
    };
    let mut idx = vec![add, s];
    // Normalize: Div(d, sqrt) or Mul(d, Reciprocal(sqrt)) or Mul(d, Div(1, sqrt)).
    let so = sn.outputs.first()?;
    if !c.single(so) || !c.single(e) || !c.single(&v) {
        return None;
    }
    let (d, norm) = if let Some(dv) = c.prod_consumer(so, "Div") {
        let dn = c.node(dv);
        (dn.inputs[1] == *so).then_some(())?;
        (dn.inputs[0].clone(), dv)
    } else if let Some(r) = c.prod_consumer(so, "Reciprocal") {
        let ro = &c.node(r).outputs[0];
        c.single(ro).then_some(())?;
        let m = c.prod_consumer(ro, "Mul")?;
        idx.push(r);
        (c.other(m, ro)?, m)
    } else {
        return None;
    };
    idx.push(norm);
    // d = x - mean
    let sub = c.prod(&d, "Sub")?;
    let x = c.node(sub).inputs[0].clone();
    let mean = c.node(sub).inputs[1].clone();
    let rm = c.prod(&mean, "ReduceMean")?;
    (c.node(rm).inputs[0] == x).then_some(())?;
    let (axes, keep) = c.reduce_axes(rm)?;
    keep.then_some(())?;
    let first = trailing_axis(&axes)?;
    idx.extend([sub, rm]);
    // variance
    let vm = c.prod(&v, "ReduceMean")?;
    (c.reduce_axes(vm)? == (axes.clone(), true)).then_some(())?;
    let sq_in = c.node(vm).inputs[0].clone();
    c.single(&sq_in).then_some(())?;
    let square_of = |val: &str| -> Option<(String, usize)> {
        if let Some(p) = c.prod(val, "Pow") {
            let pn = c.node(p);
            c.is_const(pn.inputs.get(1)?, 2.0)
                .then(|| (pn.inputs[0].clone(), p))
        } else {
            let m = c.prod(val, "Mul")?;
            let mn = c.node(m);
            (mn.inputs[0] == mn.inputs[1]).then(|| (mn.inputs[0].clone(), m))
        }
    };
    idx.push(vm);
    if let Some((base, sq)) = square_of(&sq_in) {
        // mean((x - mean)^2): d is read by the square (twice for Mul) and the normalizer.
        (base == d).then_some(())?;
        idx.push(sq);
        let users = c.uses.get(&d).copied().unwrap_or(0);
        let expected = if c.node(sq).op_type == "Mul" { 3 } else { 2 };
        (users == expected).then_some(())?;
        (c.uses.get(&mean).copied() == Some(1)).then_some(())?;
    } else {
        // mean(x^2) - mean^2
        let vs = c.prod(&sq_in, "Sub")?;
        let _ = vs;
        return None;
    }
    // The normalizing node goes last: scale and shift are matched from it.
    idx.retain(|&k| k != norm);
    idx.push(norm);
    Some((x, d, eps, first, idx))
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
            (c.node(rs).inputs[0] == e && c.uses.get(e).copied() == Some(2) && c.single(s))
                .then_some(())?;
            let (axes, keep) = c.reduce_axes(rs)?;
            (keep && axes.len() == 1).then_some(())?;
            let mut idx = vec![ex, rs, i];
            let mut x = c.node(ex).inputs[0].clone();
            // Optional max subtraction (shift invariance).
            if let Some(sub) = c.prod(&x, "Sub") {
                let sn = c.node(sub);
                if let Some(mx) = c.prod(&sn.inputs[1], "ReduceMax")
                    && c.node(mx).inputs[0] == sn.inputs[0]
                    && c.reduce_axes(mx) == Some((axes.clone(), true))
                    && c.single(&x)
                    && c.single(&sn.inputs[1])
                {
                    idx.extend([sub, mx]);
                    x = sn.inputs[0].clone();
                }
            }
            c.single(&c.node(ex).inputs[0]).then_some(())?;
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
