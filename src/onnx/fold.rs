//! Constant folding: a small host evaluator for the nodes whose inputs are
//! all constants (shape arithmetic, Cast, Gather on shapes, the folded
//! constants of decompositions such as BatchNormalization's scale and shift).
//!
//! Integers compute in i64, everything else in f64 rounded once to f32, which
//! is at least as accurate as an f32 kernel.

use super::error::OnnxError;
use super::ir::{Attr, IGraph, INode, is_int};
use super::proto::data_type;
use super::tensor::{HostData, HostTensor};
use crate::graph::ops::shape::strides;

/// Largest tensor the folder materializes; bigger results stay run-time nodes.
const MAX_FOLD_ELEMS: usize = 1 << 24;

/// Folds every node whose inputs are all constants and that the evaluator
/// handles; returns how many nodes were folded.
pub(crate) fn fold(g: &mut IGraph) -> Result<usize, OnnxError> {
    let opset = g.opset;
    let outputs: std::collections::HashSet<String> =
        g.outputs.iter().map(|o| o.name.clone()).collect();
    let mut folded = 0;
    let mut keep = Vec::new();
    for n in std::mem::take(&mut g.nodes) {
        // Graph outputs stay produced by a node so the executor returns them.
        let all_const = n.n_inputs() > 0
            && n.inputs
                .iter()
                .all(|i| i.is_empty() || g.consts.contains_key(i))
            && !n.outputs.iter().any(|o| outputs.contains(o));
        if all_const {
            let ins: Vec<Option<&HostTensor>> = n
                .inputs
                .iter()
                .map(|i| if i.is_empty() { None } else { g.consts.get(i) })
                .collect();
            if let Some(r) = eval(&n, opset, &ins) {
                let outs = r?;
                if outs.iter().all(|t| t.len() <= MAX_FOLD_ELEMS) {
                    for (name, t) in n.outputs.iter().zip(outs) {
                        g.consts.insert(name.clone(), t);
                    }
                    folded += 1;
                    continue;
                }
            }
        }
        keep.push(n);
    }
    g.nodes = keep;
    Ok(folded)
}

/// Numpy broadcast of several shapes.
pub(crate) fn broadcast_shapes(shapes: &[&[usize]]) -> Option<Vec<usize>> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1usize; rank];
    for s in shapes {
        let off = rank - s.len();
        for (i, &d) in s.iter().enumerate() {
            let o = &mut out[off + i];
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                return None;
            }
        }
    }
    Some(out)
}

/// For each output element, the flat index into a tensor of `shape`
/// broadcast to `out`.
fn broadcast_index(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let n: usize = out.iter().product();
    let off = out.len() - shape.len();
    let st = strides(shape);
    let ost = strides(out);
    (0..n)
        .map(|flat| {
            let mut idx = 0;
            for (i, &d) in shape.iter().enumerate() {
                let c = (flat / ost[off + i]) % out[off + i];
                if d != 1 {
                    idx += c * st[i];
                }
            }
            idx
        })
        .collect()
}

fn norm_axis(axis: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    (0..r.max(1)).contains(&a).then_some(a as usize)
}

/// Gathers the elements at `idx` of any host data.
fn take(d: &HostData, idx: &[usize]) -> HostData {
    match d {
        HostData::F32(v) => HostData::F32(idx.iter().map(|&i| v[i]).collect()),
        HostData::F16(v) => HostData::F16(idx.iter().map(|&i| v[i]).collect()),
        HostData::Bf16(v) => HostData::Bf16(idx.iter().map(|&i| v[i]).collect()),
        HostData::I64(v) => HostData::I64(idx.iter().map(|&i| v[i]).collect()),
        HostData::I32(v) => HostData::I32(idx.iter().map(|&i| v[i]).collect()),
        HostData::Bool(v) => HostData::Bool(idx.iter().map(|&i| v[i]).collect()),
    }
}

fn with_data(shape: Vec<usize>, data: HostData) -> HostTensor {
    HostTensor {
        shape,
        data,
        from_f64: false,
    }
}

/// Evaluates one node on constant inputs. `None`: the evaluator does not
/// handle this op (or these dtypes); the node stays a run-time node.
pub(crate) fn eval(
    n: &INode,
    opset: i64,
    ins: &[Option<&HostTensor>],
) -> Option<Result<Vec<HostTensor>, OnnxError>> {
    let r = eval_inner(n, opset, ins)?;
    Some(r.map_err(|d| n.invalid(opset, format!("while folding constants: {d}"))))
}

fn eval_inner(
    n: &INode,
    opset: i64,
    ins: &[Option<&HostTensor>],
) -> Option<Result<Vec<HostTensor>, String>> {
    let x = ins.first().copied().flatten()?;
    let ints_of = |i: usize| ins.get(i).copied().flatten().map(|t| t.to_i64_vec());
    let one = |t: HostTensor| Some(Ok(vec![t]));
    let err = |s: String| Some(Err(s));
    match n.op_type.as_str() {
        "Identity" => one(x.clone()),
        "Shape" => {
            let r = x.shape.len() as i64;
            let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
            let s = clamp(n.int(opset, "start", 0).ok()?);
            let e = clamp(n.int(opset, "end", r).ok()?);
            let dims: Vec<i64> = x.shape[s..e.max(s)].iter().map(|&d| d as i64).collect();
            one(HostTensor::i64(&[dims.len()], dims))
        }
        "Size" => one(HostTensor::i64(&[], vec![x.len() as i64])),
        "Cast" => {
            let to = n.int(opset, "to", 0).ok()? as i32;
            let data = match to {
                data_type::FLOAT | data_type::DOUBLE => HostData::F32(x.to_f32_vec()),
                data_type::INT64
                | data_type::INT32
                | data_type::UINT32
                | data_type::INT16
                | data_type::INT8
                | data_type::UINT8 => HostData::I64(x.to_i64_vec()),
                data_type::BOOL => {
                    HostData::Bool(x.to_f32_vec().iter().map(|&v| v != 0.0).collect())
                }
                _ => return None,
            };
            let data = match (to, data) {
                (data_type::INT32, HostData::I64(v)) => {
                    HostData::I32(v.iter().map(|&x| x as i32).collect())
                }
                (_, d) => d,
            };
            one(with_data(x.shape.clone(), data))
        }
        "Reshape" => {
            let spec = if opset < 5 {
                n.ints(opset, "shape").ok()??
            } else {
                ints_of(1)?
            };
            let allowzero = n.int(opset, "allowzero", 0).ok()? != 0;
            match reshape_dims(&x.shape, &spec, allowzero) {
                Ok(s) => one(with_data(s, x.data.clone())),
                Err(e) => err(e),
            }
        }
        "Flatten" => {
            let axis = n.int(opset, "axis", 1).ok()?;
            let r = x.shape.len() as i64;
            let a = if axis < 0 { axis + r } else { axis };
            if !(0..=r).contains(&a) {
                return err(format!("axis {axis} out of range"));
            }
            let a = a as usize;
            let outer: usize = x.shape[..a].iter().product();
            one(with_data(
                vec![outer, x.len() / outer.max(1)],
                x.data.clone(),
            ))
        }
        "Unsqueeze" => {
            let axes = if opset >= 13 {
                ints_of(1)?
            } else {
                n.ints(opset, "axes").ok()??
            };
            let r = x.shape.len() + axes.len();
            let mut ax: Vec<usize> = Vec::new();
            for a in axes {
                match norm_axis(a, r) {
                    Some(a) => ax.push(a),
                    None => return err(format!("axis {a} out of range")),
                }
            }
            ax.sort();
            let mut s = x.shape.clone();
            for a in ax {
                if a > s.len() {
                    return err("bad axes".into());
                }
                s.insert(a, 1);
            }
            one(with_data(s, x.data.clone()))
        }
        "Squeeze" => {
            let axes = if opset >= 13 {
                ints_of(1)
            } else {
                n.ints(opset, "axes").ok()?
            };
            let r = x.shape.len();
            let keep: Vec<usize> = match axes {
                None => x.shape.iter().copied().filter(|&d| d != 1).collect(),
                Some(axes) => {
                    let mut ax = Vec::new();
                    for a in axes {
                        match norm_axis(a, r) {
                            Some(a) if x.shape[a] == 1 => ax.push(a),
                            _ => return err(format!("cannot squeeze axis {a} of {:?}", x.shape)),
                        }
                    }
                    x.shape
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| !ax.contains(i))
                        .map(|(_, &d)| d)
                        .collect()
                }
            };
            one(with_data(keep, x.data.clone()))
        }
        "Concat" => {
            let ts: Vec<&HostTensor> = ins.iter().flatten().copied().collect();
            let r = x.shape.len();
            let axis = norm_axis(n.int(opset, "axis", 0).ok()?, r)?;
            if ts.iter().any(|t| {
                t.shape.len() != r
                    || std::mem::discriminant(&t.data) != std::mem::discriminant(&x.data)
            }) {
                return None;
            }
            let outer: usize = x.shape[..axis].iter().product();
            let mut shape = x.shape.clone();
            shape[axis] = ts.iter().map(|t| t.shape[axis]).sum();
            // Gather index lists per input, concatenated by outer row.
            let mut parts: Vec<(usize, usize)> = Vec::new(); // (tensor, flat index)
            for o in 0..outer {
                for (k, t) in ts.iter().enumerate() {
                    let inner: usize = t.shape[axis..].iter().product();
                    parts.extend((0..inner).map(|j| (k, o * inner + j)));
                }
            }
            let data = concat_data(&ts, &parts);
            one(with_data(shape, data))
        }
        "Gather" => {
            let idx = ins.get(1).copied().flatten()?;
            let r = x.shape.len();
            let axis = norm_axis(n.int(opset, "axis", 0).ok()?, r)?;
            let dim = x.shape[axis] as i64;
            let outer: usize = x.shape[..axis].iter().product();
            let inner: usize = x.shape[axis + 1..].iter().product();
            let mut flat = Vec::new();
            let iv = idx.to_i64_vec();
            for o in 0..outer {
                for &i in &iv {
                    let i = if i < 0 { i + dim } else { i };
                    if !(0..dim).contains(&i) {
                        return err(format!("index {i} out of range for dim {dim}"));
                    }
                    flat.extend((0..inner).map(|j| (o * dim as usize + i as usize) * inner + j));
                }
            }
            let mut shape = x.shape[..axis].to_vec();
            shape.extend(&idx.shape);
            shape.extend(&x.shape[axis + 1..]);
            one(with_data(shape, take(&x.data, &flat)))
        }
        "Slice" => {
            let (starts, ends, axes, steps) = if opset < 10 {
                (
                    n.ints(opset, "starts").ok()??,
                    n.ints(opset, "ends").ok()??,
                    n.ints(opset, "axes").ok()?,
                    None,
                )
            } else {
                (ints_of(1)?, ints_of(2)?, ints_of(3), ints_of(4))
            };
            let r = x.shape.len();
            let axes: Vec<i64> = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
            let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
            if ends.len() != starts.len()
                || axes.len() != starts.len()
                || steps.len() != starts.len()
            {
                return err("starts/ends/axes/steps lengths differ".into());
            }
            let mut ranges: Vec<(i64, i64, usize)> = x.shape.iter().map(|&d| (0, 1, d)).collect();
            for k in 0..starts.len() {
                let a = norm_axis(axes[k], r)?;
                let (b, step, cnt) = slice_range(starts[k], ends[k], steps[k], x.shape[a])?;
                ranges[a] = (b, step, cnt);
            }
            let shape: Vec<usize> = ranges.iter().map(|r| r.2).collect();
            let st = strides(&x.shape);
            let ost = strides(&shape);
            let total: usize = shape.iter().product();
            let idx: Vec<usize> = (0..total)
                .map(|f| {
                    let mut src = 0i64;
                    for (a, &(b, step, cnt)) in ranges.iter().enumerate() {
                        let c = (f / ost[a]) % cnt.max(1);
                        src += (b + c as i64 * step) * st[a] as i64;
                    }
                    src as usize
                })
                .collect();
            one(with_data(shape, take(&x.data, &idx)))
        }
        "Transpose" => {
            let r = x.shape.len();
            let perm: Vec<usize> = match n.ints(opset, "perm").ok()? {
                Some(p) => p.iter().map(|&a| norm_axis(a, r)).collect::<Option<_>>()?,
                None => (0..r).rev().collect(),
            };
            if perm.len() != r {
                return err("perm length".into());
            }
            let shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
            let st = strides(&x.shape);
            let ost = strides(&shape);
            let idx: Vec<usize> = (0..x.len())
                .map(|f| {
                    perm.iter()
                        .enumerate()
                        .map(|(o, &p)| ((f / ost[o]) % shape[o]) * st[p])
                        .sum()
                })
                .collect();
            one(with_data(shape, take(&x.data, &idx)))
        }
        "Expand" => {
            let spec: Vec<usize> = ints_of(1)?.iter().map(|&d| d.max(0) as usize).collect();
            let shape = broadcast_shapes(&[&x.shape, &spec])?;
            let idx = broadcast_index(&x.shape, &shape);
            one(with_data(shape, take(&x.data, &idx)))
        }
        "ConstantOfShape" => {
            let shape: Vec<usize> = x.to_i64_vec().iter().map(|&d| d.max(0) as usize).collect();
            let total: usize = shape.iter().product();
            if total > MAX_FOLD_ELEMS {
                return None;
            }
            let v = match n.attrs.get("value") {
                Some(Attr::Tensor(t)) => t.clone(),
                _ => HostTensor::f32(&[1], vec![0.0]),
            };
            let idx = vec![0usize; total];
            one(with_data(shape, take(&v.data, &idx)))
        }
        "Range" => {
            let (s, l, d) = (
                ins.get(1).copied().flatten()?,
                ins.get(2).copied().flatten()?,
                x,
            );
            let (start, limit, delta) = (d, s, l);
            if is_int(start) {
                let (a, b, c) = (
                    start.to_i64_vec()[0],
                    limit.to_i64_vec()[0],
                    delta.to_i64_vec()[0],
                );
                if c == 0 {
                    return err("delta 0".into());
                }
                let cnt = ((b - a) as f64 / c as f64).ceil().max(0.0) as usize;
                one(HostTensor::i64(
                    &[cnt],
                    (0..cnt as i64).map(|i| a + i * c).collect(),
                ))
            } else {
                let (a, b, c) = (
                    start.to_f32_vec()[0],
                    limit.to_f32_vec()[0],
                    delta.to_f32_vec()[0],
                );
                let cnt = ((b - a) / c).ceil().max(0.0) as usize;
                one(HostTensor::f32(
                    &[cnt],
                    (0..cnt).map(|i| a + i as f32 * c).collect(),
                ))
            }
        }
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Max" | "Min" | "Equal" | "Less" | "Greater"
            if n.n_inputs() == 2 =>
        {
            let y = ins.get(1).copied().flatten()?;
            // Legacy opset < 7 `broadcast`/`axis` attributes: align y at axis.
            let mut yshape = y.shape.clone();
            if opset < 7
                && let Ok(Some(axis)) = n.ints(opset, "axis")
            {
                let a = norm_axis(axis[0], x.shape.len())?;
                yshape.extend(std::iter::repeat_n(
                    1,
                    x.shape.len().saturating_sub(a + y.shape.len()),
                ));
            }
            let shape = match broadcast_shapes(&[&x.shape, &yshape]) {
                Some(s) => s,
                None => return err(format!("cannot broadcast {:?} with {:?}", x.shape, y.shape)),
            };
            let ia = broadcast_index(&x.shape, &shape);
            let ib = broadcast_index(&yshape, &shape);
            let op = n.op_type.as_str();
            if matches!(op, "Equal" | "Less" | "Greater") {
                let (a, b) = (x.to_f32_vec(), y.to_f32_vec());
                let f = |p: f32, q: f32| match op {
                    "Equal" => p == q,
                    "Less" => p < q,
                    _ => p > q,
                };
                return one(with_data(
                    shape,
                    HostData::Bool(ia.iter().zip(&ib).map(|(&i, &j)| f(a[i], b[j])).collect()),
                ));
            }
            if is_int(x) && is_int(y) {
                let (a, b) = (x.to_i64_vec(), y.to_i64_vec());
                let mut v = Vec::with_capacity(ia.len());
                for (&i, &j) in ia.iter().zip(&ib) {
                    let (p, q) = (a[i], b[j]);
                    v.push(match op {
                        "Add" => p.wrapping_add(q),
                        "Sub" => p.wrapping_sub(q),
                        "Mul" => p.wrapping_mul(q),
                        "Div" if q == 0 => return err("integer division by zero".into()),
                        // ONNX integer Div truncates toward zero, as Rust does.
                        "Div" => p.wrapping_div(q),
                        "Max" => p.max(q),
                        "Min" => p.min(q),
                        _ => (p as f64).powf(q as f64) as i64,
                    });
                }
                return one(HostTensor::i64(&shape, v));
            }
            let (a, b) = (x.to_f32_vec(), y.to_f32_vec());
            let v = ia
                .iter()
                .zip(&ib)
                .map(|(&i, &j)| {
                    let (p, q) = (a[i] as f64, b[j] as f64);
                    (match op {
                        "Add" => p + q,
                        "Sub" => p - q,
                        "Mul" => p * q,
                        "Div" => p / q,
                        "Max" => p.max(q),
                        "Min" => p.min(q),
                        _ => p.powf(q),
                    }) as f32
                })
                .collect();
            one(HostTensor::f32(&shape, v))
        }
        "Neg" | "Sqrt" | "Reciprocal" | "Exp" | "Log" | "Abs" | "Relu" | "Tanh" | "Sigmoid"
        | "Floor" | "Ceil" => {
            if is_int(x) {
                let v = x.to_i64_vec();
                let f = match n.op_type.as_str() {
                    "Neg" => |a: i64| -a,
                    "Abs" => |a: i64| a.abs(),
                    "Relu" => |a: i64| a.max(0),
                    _ => return None,
                };
                return one(HostTensor::i64(&x.shape, v.into_iter().map(f).collect()));
            }
            let u = |a: f64| -> f64 {
                match n.op_type.as_str() {
                    "Neg" => -a,
                    "Sqrt" => a.sqrt(),
                    "Reciprocal" => 1.0 / a,
                    "Exp" => a.exp(),
                    "Log" => a.ln(),
                    "Abs" => a.abs(),
                    "Relu" => a.max(0.0),
                    "Tanh" => a.tanh(),
                    "Sigmoid" => 1.0 / (1.0 + (-a).exp()),
                    "Floor" => a.floor(),
                    "Ceil" => a.ceil(),
                    _ => a.ceil(),
                }
            };
            one(HostTensor::f32(
                &x.shape,
                x.to_f32_vec().iter().map(|&a| u(a as f64) as f32).collect(),
            ))
        }
        "Where" => {
            let (a, b) = (
                ins.get(1).copied().flatten()?,
                ins.get(2).copied().flatten()?,
            );
            let shape = broadcast_shapes(&[&x.shape, &a.shape, &b.shape])?;
            let (ic, ia, ib) = (
                broadcast_index(&x.shape, &shape),
                broadcast_index(&a.shape, &shape),
                broadcast_index(&b.shape, &shape),
            );
            let c = x.to_i64_vec();
            if is_int(a) && is_int(b) {
                let (p, q) = (a.to_i64_vec(), b.to_i64_vec());
                let v = (0..ic.len())
                    .map(|k| if c[ic[k]] != 0 { p[ia[k]] } else { q[ib[k]] })
                    .collect();
                return one(HostTensor::i64(&shape, v));
            }
            let (p, q) = (a.to_f32_vec(), b.to_f32_vec());
            let v = (0..ic.len())
                .map(|k| if c[ic[k]] != 0 { p[ia[k]] } else { q[ib[k]] })
                .collect();
            one(HostTensor::f32(&shape, v))
        }
        "Not" => one(HostTensor::bool(
            &x.shape,
            x.to_i64_vec().iter().map(|&v| v == 0).collect(),
        )),
        _ => None,
    }
}

fn concat_data(ts: &[&HostTensor], parts: &[(usize, usize)]) -> HostData {
    macro_rules! cat {
        ($var:ident) => {{
            let srcs: Vec<&Vec<_>> = ts
                .iter()
                .map(|t| match &t.data {
                    HostData::$var(v) => v,
                    _ => unreachable!("dtypes checked equal"),
                })
                .collect();
            HostData::$var(parts.iter().map(|&(k, i)| srcs[k][i]).collect())
        }};
    }
    match &ts[0].data {
        HostData::F32(_) => cat!(F32),
        HostData::F16(_) => cat!(F16),
        HostData::Bf16(_) => cat!(Bf16),
        HostData::I64(_) => cat!(I64),
        HostData::I32(_) => cat!(I32),
        HostData::Bool(_) => cat!(Bool),
    }
}

/// ONNX Slice semantics for one axis: (first index, step, count).
fn slice_range(start: i64, end: i64, step: i64, len: usize) -> Option<(i64, i64, usize)> {
    if step == 0 {
        return None;
    }
    let l = len as i64;
    let fix = |v: i64| if v < 0 { v + l } else { v };
    let (s, e) = (fix(start), fix(end));
    if step > 0 {
        let s = s.clamp(0, l);
        let e = e.clamp(0, l);
        let cnt = if e > s { (e - s + step - 1) / step } else { 0 };
        Some((s, step, cnt as usize))
    } else {
        let s = s.clamp(-1, l - 1);
        let e = e.clamp(-1, l - 1);
        let cnt = if s > e {
            (s - e + (-step) - 1) / (-step)
        } else {
            0
        };
        Some((s, step, cnt as usize))
    }
}

/// ONNX Reshape: 0 copies the input dim (unless `allowzero`), one -1 is inferred.
pub(crate) fn reshape_dims(
    input: &[usize],
    spec: &[i64],
    allowzero: bool,
) -> Result<Vec<usize>, String> {
    let total: usize = input.iter().product();
    let mut out = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, &d) in spec.iter().enumerate() {
        match d {
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            0 if !allowzero => out.push(
                *input
                    .get(i)
                    .ok_or_else(|| format!("0 at {i} past the input rank"))?,
            ),
            d if d >= 0 => out.push(d as usize),
            _ => return Err(format!("invalid shape {spec:?}")),
        }
    }
    let known: usize = out.iter().product();
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(format!("cannot reshape {input:?} to {spec:?}"));
        }
        out[i] = total / known;
    } else if known != total {
        return Err(format!("cannot reshape {input:?} to {spec:?}"));
    }
    Ok(out)
}
