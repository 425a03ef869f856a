//! Static shape and dtype inference. The executor runs the same functions on
//! concrete (all-fixed) shapes, so validation and execution agree.

use super::{AutoPad, ConvAttrs, Meta, Op, ReduceKind};
use crate::graph::dtype::DType;
use crate::graph::error::{GraphError, Result};
use crate::graph::graph::{Dim, shape_string};
use crate::graph::tensor::TensorView;

pub(crate) fn shape_err(node: &str, detail: impl Into<String>) -> GraphError {
    GraphError::ShapeMismatch {
        node: node.to_string(),
        detail: detail.into(),
    }
}

pub(crate) fn dtype_err(node: &str, detail: impl Into<String>) -> GraphError {
    GraphError::InvalidDType {
        node: node.to_string(),
        detail: detail.into(),
    }
}

pub(crate) fn attr_err(node: &str, detail: impl Into<String>) -> GraphError {
    GraphError::InvalidAttribute {
        node: node.to_string(),
        detail: detail.into(),
    }
}

/// Normalizes an axis in `-rank..rank`.
pub(crate) fn norm_axis(node: &str, axis: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    if axis < -r || axis >= r {
        return Err(attr_err(
            node,
            format!("axis {axis} out of range for rank {rank}"),
        ));
    }
    Ok(if axis < 0 {
        (axis + r) as usize
    } else {
        axis as usize
    })
}

fn compatible(a: &Dim, b: &Dim) -> bool {
    !matches!((a, b), (Dim::Fixed(x), Dim::Fixed(y)) if x != y)
}

/// Numpy broadcasting of two shapes.
pub(crate) fn broadcast(node: &str, a: &[Dim], b: &[Dim]) -> Result<Vec<Dim>> {
    let r = a.len().max(b.len());
    let mut out = Vec::with_capacity(r);
    for i in 0..r {
        let da = if i + a.len() >= r {
            &a[i + a.len() - r]
        } else {
            &Dim::Fixed(1)
        };
        let db = if i + b.len() >= r {
            &b[i + b.len() - r]
        } else {
            &Dim::Fixed(1)
        };
        let d = match (da, db) {
            (Dim::Fixed(1), d) | (d, Dim::Fixed(1)) => d.clone(),
            (Dim::Fixed(x), Dim::Fixed(y)) if x == y => Dim::Fixed(*x),
            (Dim::Fixed(_), Dim::Fixed(_)) => {
                return Err(shape_err(
                    node,
                    format!(
                        "cannot broadcast {} with {}",
                        shape_string(a),
                        shape_string(b)
                    ),
                ));
            }
            (Dim::Fixed(x), Dim::Symbolic(_)) | (Dim::Symbolic(_), Dim::Fixed(x)) => Dim::Fixed(*x),
            (Dim::Symbolic(s), Dim::Symbolic(_)) => Dim::Symbolic(s.clone()),
        };
        out.push(d);
    }
    Ok(out)
}

/// Product of dims: fixed when all are fixed, the one symbol when the rest
/// are 1, else a fresh symbol.
fn product(dims: &[Dim], fresh: &mut dyn FnMut() -> Dim) -> Dim {
    let mut p = 1usize;
    let mut sym: Vec<&Dim> = Vec::new();
    for d in dims {
        match d {
            Dim::Fixed(n) => p *= n,
            s => sym.push(s),
        }
    }
    match (sym.len(), p) {
        (0, p) => Dim::Fixed(p),
        (1, 1) => sym[0].clone(),
        _ => fresh(),
    }
}

fn ints(t: &TensorView<'_>) -> Vec<i64> {
    t.to_i64_vec()
}

fn require_float(node: &str, m: &Meta, what: &str) -> Result<()> {
    if !m.dtype.is_float() {
        return Err(dtype_err(
            node,
            format!("{what} must be floating point, got {}", m.dtype),
        ));
    }
    Ok(())
}

fn require_same(node: &str, a: &Meta, b: &Meta) -> Result<()> {
    if a.dtype != b.dtype {
        return Err(dtype_err(
            node,
            format!("inputs have dtypes {} and {}", a.dtype, b.dtype),
        ));
    }
    Ok(())
}

fn require_index(node: &str, m: &Meta, what: &str) -> Result<()> {
    if !m.dtype.is_int() {
        return Err(dtype_err(
            node,
            format!("{what} must be i64 or i32, got {}", m.dtype),
        ));
    }
    Ok(())
}

fn fixed_rank1(node: &str, m: &Meta, what: &str) -> Result<usize> {
    match m.shape.as_slice() {
        [Dim::Fixed(n)] => Ok(*n),
        _ => Err(shape_err(
            node,
            format!(
                "{what} must be a 1-D tensor of fixed length, got {}",
                shape_string(&m.shape)
            ),
        )),
    }
}

/// Resolved window geometry of a conv or pool along each spatial axis.
#[derive(Clone, Debug)]
pub(crate) struct Geometry {
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    pub dilations: Vec<usize>,
    pub pad_begin: Vec<usize>,
    /// Output sizes; `None` where the input size is symbolic.
    pub out: Vec<Option<usize>>,
}

/// A Conv's window geometry (`attrs`, spatial kernel `kernel`) on input
/// sizes `spatial`: shape inference and the kernel call read the same.
pub(crate) fn conv_geometry(
    node: &str,
    attrs: &ConvAttrs,
    spatial: &[Option<usize>],
    kernel: &[usize],
) -> Result<Geometry> {
    geometry(
        node,
        spatial,
        kernel,
        &attrs.strides,
        &attrs.pads,
        &attrs.dilations,
        attrs.auto_pad,
        false,
    )
}

/// A window's per-axis values (kernel, strides, pads, sizes) as 2-D: a
/// 1-D conv or pool is one row of a 2-D one, its height `fill`.
pub(crate) fn as_2d(v: &[usize], fill: usize) -> [usize; 2] {
    if v.len() == 1 {
        [fill, v[0]]
    } else {
        [v[0], v[1]]
    }
}

fn or_ones(v: &[usize], n: usize) -> Vec<usize> {
    if v.is_empty() { vec![1; n] } else { v.to_vec() }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn geometry(
    node: &str,
    input: &[Option<usize>],
    kernel: &[usize],
    strides: &[usize],
    pads: &[usize],
    dilations: &[usize],
    auto_pad: AutoPad,
    ceil_mode: bool,
) -> Result<Geometry> {
    let n = input.len();
    let strides = or_ones(strides, n);
    let dilations = or_ones(dilations, n);
    let pads = if pads.is_empty() {
        vec![0; 2 * n]
    } else {
        pads.to_vec()
    };
    if kernel.len() != n || strides.len() != n || dilations.len() != n || pads.len() != 2 * n {
        return Err(attr_err(
            node,
            format!(
                "kernel_shape {kernel:?}, strides {strides:?}, dilations {dilations:?}, pads {pads:?} do not fit {n} spatial axes"
            ),
        ));
    }
    if kernel.contains(&0) || strides.contains(&0) || dilations.contains(&0) {
        return Err(attr_err(
            node,
            "kernel_shape, strides and dilations must be positive",
        ));
    }
    let mut g = Geometry {
        kernel: kernel.to_vec(),
        strides,
        dilations,
        pad_begin: vec![0; n],
        out: vec![None; n],
    };
    for i in 0..n {
        let ext = g.dilations[i] * (kernel[i] - 1) + 1;
        let Some(len) = input[i] else { continue };
        let (pb, pe) = match auto_pad {
            AutoPad::NotSet => (pads[i], pads[n + i]),
            AutoPad::Valid => (0, 0),
            AutoPad::SameUpper | AutoPad::SameLower => {
                let out = len.div_ceil(g.strides[i]);
                let total = ((out - 1) * g.strides[i] + ext).saturating_sub(len);
                if auto_pad == AutoPad::SameUpper {
                    (total / 2, total - total / 2)
                } else {
                    (total - total / 2, total / 2)
                }
            }
        };
        let padded = len + pb + pe;
        if padded < ext {
            return Err(shape_err(
                node,
                format!("window {ext} larger than padded input {padded} on spatial axis {i}"),
            ));
        }
        let span = padded - ext;
        let out = if ceil_mode {
            let mut o = span.div_ceil(g.strides[i]) + 1;
            // The last window must start inside the input or left padding.
            if (o - 1) * g.strides[i] >= len + pb {
                o -= 1;
            }
            o
        } else {
            span / g.strides[i] + 1
        };
        g.pad_begin[i] = pb;
        g.out[i] = Some(out);
    }
    Ok(g)
}

/// Infers output dtypes and shapes. `known` holds input contents where known
/// (always, at run time); `fresh` makes a new symbolic dim for sizes that
/// depend on unknown data.
pub(crate) fn infer(
    op: &Op,
    node: &str,
    ins: &[&Meta],
    known: &[Option<&TensorView<'_>>],
    fresh: &mut dyn FnMut() -> Dim,
) -> Result<Vec<Meta>> {
    op.check_arity(node, ins.len())?;
    let one = |dtype: DType, shape: Vec<Dim>| Ok(vec![Meta { dtype, shape }]);
    match op {
        Op::MatMul => {
            let (a, b) = (ins[0], ins[1]);
            require_float(node, a, "A")?;
            require_same(node, a, b)?;
            if a.shape.is_empty() || b.shape.is_empty() {
                return Err(shape_err(node, "MatMul inputs must have rank >= 1"));
            }
            let ash: Vec<Dim> = if a.shape.len() == 1 {
                vec![Dim::Fixed(1), a.shape[0].clone()]
            } else {
                a.shape.clone()
            };
            let bsh: Vec<Dim> = if b.shape.len() == 1 {
                vec![b.shape[0].clone(), Dim::Fixed(1)]
            } else {
                b.shape.clone()
            };
            let (ra, rb) = (ash.len(), bsh.len());
            if !compatible(&ash[ra - 1], &bsh[rb - 2]) {
                return Err(shape_err(
                    node,
                    format!(
                        "inner dimensions differ: {} x {}",
                        shape_string(&a.shape),
                        shape_string(&b.shape)
                    ),
                ));
            }
            let mut out = broadcast(node, &ash[..ra - 2], &bsh[..rb - 2])?;
            if a.shape.len() > 1 {
                out.push(ash[ra - 2].clone());
            }
            if b.shape.len() > 1 {
                out.push(bsh[rb - 1].clone());
            }
            one(a.dtype, out)
        }
        Op::Gemm {
            trans_a, trans_b, ..
        } => {
            let (a, b) = (ins[0], ins[1]);
            require_float(node, a, "A")?;
            require_same(node, a, b)?;
            if a.shape.len() != 2 || b.shape.len() != 2 {
                return Err(shape_err(
                    node,
                    format!(
                        "Gemm needs 2-D A and B, got {} and {}",
                        shape_string(&a.shape),
                        shape_string(&b.shape)
                    ),
                ));
            }
            let (m, k) = if *trans_a {
                (&a.shape[1], &a.shape[0])
            } else {
                (&a.shape[0], &a.shape[1])
            };
            let (k2, n) = if *trans_b {
                (&b.shape[1], &b.shape[0])
            } else {
                (&b.shape[0], &b.shape[1])
            };
            if !compatible(k, k2) {
                return Err(shape_err(
                    node,
                    format!(
                        "inner dimensions differ: A {} (transA={}) x B {} (transB={})",
                        shape_string(&a.shape),
                        *trans_a as u8,
                        shape_string(&b.shape),
                        *trans_b as u8
                    ),
                ));
            }
            let out = vec![m.clone(), n.clone()];
            if let Some(c) = ins.get(2) {
                require_same(node, a, c)?;
                let bc = broadcast(node, &c.shape, &out)?;
                if c.shape.len() > 2 || !bc.iter().zip(&out).all(|(x, y)| compatible(x, y)) {
                    return Err(shape_err(
                        node,
                        format!(
                            "C {} does not broadcast to {}",
                            shape_string(&c.shape),
                            shape_string(&out)
                        ),
                    ));
                }
            }
            one(a.dtype, out)
        }
        Op::Conv(attrs) => {
            let (x, w) = (ins[0], ins[1]);
            require_float(node, x, "X")?;
            require_same(node, x, w)?;
            let r = x.shape.len();
            if !(3..=4).contains(&r) || w.shape.len() != r {
                return Err(shape_err(
                    node,
                    format!(
                        "Conv supports 1-D and 2-D (X rank 3 or 4, W of the same rank), got X {} and W {}",
                        shape_string(&x.shape),
                        shape_string(&w.shape)
                    ),
                ));
            }
            let group = attrs.group.max(1);
            let Some(m) = w.shape[0].fixed() else {
                return Err(shape_err(
                    node,
                    "the weight's output channels must be fixed",
                ));
            };
            let Some(cg) = w.shape[1].fixed() else {
                return Err(shape_err(node, "the weight's input channels must be fixed"));
            };
            if m % group != 0 {
                return Err(attr_err(
                    node,
                    format!("{m} output channels not divisible by group {group}"),
                ));
            }
            if !compatible(&x.shape[1], &Dim::Fixed(cg * group)) {
                return Err(shape_err(
                    node,
                    format!(
                        "X has {} channels, W expects {} x group {}",
                        x.shape[1], cg, group
                    ),
                ));
            }
            let wk: Vec<usize> = w.shape[2..]
                .iter()
                .map(|d| d.fixed().unwrap_or(0))
                .collect();
            if !attrs.kernel_shape.is_empty() && attrs.kernel_shape != wk {
                return Err(attr_err(
                    node,
                    format!(
                        "kernel_shape {:?} differs from the weight's {:?}",
                        attrs.kernel_shape, wk
                    ),
                ));
            }
            if let Some(b) = ins.get(2) {
                require_same(node, x, b)?;
                if b.shape.len() != 1 || !compatible(&b.shape[0], &Dim::Fixed(m)) {
                    return Err(shape_err(
                        node,
                        format!("bias {} must be [{m}]", shape_string(&b.shape)),
                    ));
                }
            }
            let spatial: Vec<Option<usize>> = x.shape[2..].iter().map(|d| d.fixed()).collect();
            let g = conv_geometry(node, attrs, &spatial, &wk)?;
            let mut out = vec![x.shape[0].clone(), Dim::Fixed(m)];
            for o in g.out {
                out.push(o.map(Dim::Fixed).unwrap_or_else(&mut *fresh));
            }
            one(x.dtype, out)
        }
        Op::Unary(_) => {
            require_float(node, ins[0], "the input")?;
            one(ins[0].dtype, ins[0].shape.clone())
        }
        Op::Binary(b) => {
            require_same(node, ins[0], ins[1])?;
            if ins[0].dtype == DType::Bool || (*b == super::Binary::Pow && !ins[0].dtype.is_float())
            {
                return Err(dtype_err(
                    node,
                    format!("{} does not take {}", b.op_type(), ins[0].dtype),
                ));
            }
            one(ins[0].dtype, broadcast(node, &ins[0].shape, &ins[1].shape)?)
        }
        Op::Softmax { axis } | Op::LogSoftmax { axis } => {
            require_float(node, ins[0], "the input")?;
            norm_axis(node, *axis, ins[0].shape.len().max(1))?;
            one(ins[0].dtype, ins[0].shape.clone())
        }
        Op::LayerNormalization { axis, .. } | Op::RmsNormalization { axis, .. } => {
            let x = ins[0];
            require_float(node, x, "X")?;
            let a = norm_axis(node, *axis, x.shape.len())?;
            let norm = &x.shape[a..];
            for (i, p) in ins[1..].iter().enumerate() {
                require_same(node, x, p)?;
                // Scale and bias have the normalized shape (leading 1s allowed).
                let strip = |v: &[Dim]| -> Vec<Dim> {
                    v.iter()
                        .skip_while(|d| **d == Dim::Fixed(1))
                        .cloned()
                        .collect()
                };
                let (ps, ns) = (strip(&p.shape), strip(norm));
                let ok = ps.len() == ns.len() && ps.iter().zip(&ns).all(|(x, y)| compatible(x, y));
                if !ok {
                    return Err(shape_err(
                        node,
                        format!(
                            "{} {} does not match normalized shape {}",
                            if i == 0 { "scale" } else { "bias" },
                            shape_string(&p.shape),
                            shape_string(norm)
                        ),
                    ));
                }
            }
            one(x.dtype, x.shape.clone())
        }
        Op::Reduce {
            kind,
            axes,
            keepdims,
        } => {
            let x = ins[0];
            if *kind != ReduceKind::Max {
                require_float(node, x, "the input")?;
            } else if x.dtype == DType::Bool {
                return Err(dtype_err(node, "ReduceMax does not take bool"));
            }
            let red = reduce_axes(node, axes.as_deref(), x.shape.len())?;
            let mut out = Vec::new();
            for (i, d) in x.shape.iter().enumerate() {
                if red.contains(&i) {
                    if *keepdims {
                        out.push(Dim::Fixed(1));
                    }
                } else {
                    out.push(d.clone());
                }
            }
            one(x.dtype, out)
        }
        Op::GlobalMaxPool | Op::GlobalAveragePool => {
            let x = ins[0];
            require_float(node, x, "the input")?;
            if x.shape.len() < 3 {
                return Err(shape_err(
                    node,
                    format!(
                        "needs rank >= 3 (N, C, spatial...), got {}",
                        shape_string(&x.shape)
                    ),
                ));
            }
            let mut out = x.shape[..2].to_vec();
            out.extend(std::iter::repeat_n(Dim::Fixed(1), x.shape.len() - 2));
            one(x.dtype, out)
        }
        Op::MaxPool(p) | Op::AveragePool(p) => {
            let x = ins[0];
            require_float(node, x, "the input")?;
            if !(3..=4).contains(&x.shape.len()) {
                return Err(shape_err(
                    node,
                    format!(
                        "pools support 1-D and 2-D (rank 3 or 4), got {}",
                        shape_string(&x.shape)
                    ),
                ));
            }
            let spatial: Vec<Option<usize>> = x.shape[2..].iter().map(|d| d.fixed()).collect();
            let dil = if matches!(op, Op::MaxPool(_)) {
                p.dilations.as_slice()
            } else {
                &[]
            };
            let g = geometry(
                node,
                &spatial,
                &p.kernel_shape,
                &p.strides,
                &p.pads,
                dil,
                p.auto_pad,
                p.ceil_mode,
            )?;
            let mut out = x.shape[..2].to_vec();
            for o in g.out {
                out.push(o.map(Dim::Fixed).unwrap_or_else(&mut *fresh));
            }
            one(x.dtype, out)
        }
        Op::Gather { axis } => {
            let (d, i) = (ins[0], ins[1]);
            require_index(node, i, "indices")?;
            if d.shape.is_empty() {
                return Err(shape_err(node, "Gather data must have rank >= 1"));
            }
            let a = norm_axis(node, *axis, d.shape.len())?;
            let mut out = d.shape[..a].to_vec();
            out.extend(i.shape.iter().cloned());
            out.extend(d.shape[a + 1..].iter().cloned());
            one(d.dtype, out)
        }
        Op::Equal => {
            require_same(node, ins[0], ins[1])?;
            one(DType::Bool, broadcast(node, &ins[0].shape, &ins[1].shape)?)
        }
        Op::Where => {
            if ins[0].dtype != DType::Bool {
                return Err(dtype_err(
                    node,
                    format!("condition must be bool, got {}", ins[0].dtype),
                ));
            }
            require_same(node, ins[1], ins[2])?;
            let s = broadcast(node, &ins[0].shape, &ins[1].shape)?;
            one(ins[1].dtype, broadcast(node, &s, &ins[2].shape)?)
        }
        Op::Cast { to } => one(*to, ins[0].shape.clone()),
        Op::Reshape { allowzero } => {
            let (x, s) = (ins[0], ins[1]);
            require_index(node, s, "shape")?;
            let n = fixed_rank1(node, s, "shape")?;
            let Some(sv) = known[1] else {
                return one(x.dtype, (0..n).map(|_| fresh()).collect());
            };
            let sv = ints(sv);
            let mut out = Vec::with_capacity(n);
            let mut infer_at = None;
            for (i, &v) in sv.iter().enumerate() {
                match v {
                    -1 if infer_at.is_none() => {
                        infer_at = Some(i);
                        out.push(Dim::Fixed(1));
                    }
                    0 if !allowzero => {
                        let d = x.shape.get(i).ok_or_else(|| {
                            shape_err(
                                node,
                                format!(
                                    "shape {sv:?} copies dim {i} of rank-{} input",
                                    x.shape.len()
                                ),
                            )
                        })?;
                        out.push(d.clone());
                    }
                    v if v >= 0 => out.push(Dim::Fixed(v as usize)),
                    _ => return Err(shape_err(node, format!("invalid target shape {sv:?}"))),
                }
            }
            let total = product(&x.shape, fresh);
            match infer_at {
                Some(i) => {
                    let rest = product(&out, fresh);
                    out[i] = match (&total, &rest) {
                        (Dim::Fixed(t), Dim::Fixed(r)) => {
                            if *r == 0 || t % r != 0 {
                                return Err(shape_err(
                                    node,
                                    format!("cannot reshape {} to {sv:?}", shape_string(&x.shape)),
                                ));
                            }
                            Dim::Fixed(t / r)
                        }
                        (t, Dim::Fixed(1)) => t.clone(),
                        _ => {
                            // e.g. [batch, 64] -> [-1, 8, 8]: the symbol survives
                            // when the fixed parts match.
                            let fixed_in: usize =
                                x.shape.iter().filter_map(|d| d.fixed()).product();
                            let syms: Vec<&Dim> =
                                x.shape.iter().filter(|d| d.fixed().is_none()).collect();
                            let fixed_out: usize = out
                                .iter()
                                .enumerate()
                                .filter(|(j, _)| *j != i)
                                .filter_map(|(_, d)| d.fixed())
                                .product();
                            let out_syms = out.iter().filter(|d| d.fixed().is_none()).count();
                            if syms.len() == 1 && out_syms == 0 && fixed_in == fixed_out {
                                syms[0].clone()
                            } else {
                                fresh()
                            }
                        }
                    };
                }
                None => {
                    let p = product(&out, fresh);
                    if let (Dim::Fixed(t), Dim::Fixed(p)) = (&total, &p)
                        && t != p
                    {
                        return Err(shape_err(
                            node,
                            format!("cannot reshape {} to {sv:?}", shape_string(&x.shape)),
                        ));
                    }
                }
            }
            one(x.dtype, out)
        }
        Op::Transpose { perm } => {
            let x = ins[0];
            let r = x.shape.len();
            let perm: Vec<usize> = perm.clone().unwrap_or_else(|| (0..r).rev().collect());
            let mut seen = vec![false; r];
            if perm.len() != r
                || perm
                    .iter()
                    .any(|&p| p >= r || std::mem::replace(&mut seen[p], true))
            {
                return Err(attr_err(
                    node,
                    format!("perm {perm:?} is not a permutation of {r} axes"),
                ));
            }
            one(x.dtype, perm.iter().map(|&p| x.shape[p].clone()).collect())
        }
        Op::Flatten { axis } => {
            let x = ins[0];
            let r = x.shape.len() as i64;
            if *axis < -r || *axis > r {
                return Err(attr_err(
                    node,
                    format!("axis {axis} out of range for rank {r}"),
                ));
            }
            let a = if *axis < 0 {
                (axis + r) as usize
            } else {
                *axis as usize
            };
            let out = vec![product(&x.shape[..a], fresh), product(&x.shape[a..], fresh)];
            one(x.dtype, out)
        }
        Op::Squeeze { axes } => {
            let x = ins[0];
            let r = x.shape.len();
            let drop: Vec<usize> = match axes {
                None => (0..r).filter(|&i| x.shape[i] == Dim::Fixed(1)).collect(),
                Some(ax) => {
                    let mut v = Vec::new();
                    for &a in ax {
                        let a = norm_axis(node, a, r)?;
                        if !compatible(&x.shape[a], &Dim::Fixed(1)) {
                            return Err(shape_err(
                                node,
                                format!("cannot squeeze axis {a} of {}", shape_string(&x.shape)),
                            ));
                        }
                        v.push(a);
                    }
                    v
                }
            };
            one(
                x.dtype,
                (0..r)
                    .filter(|i| !drop.contains(i))
                    .map(|i| x.shape[i].clone())
                    .collect(),
            )
        }
        Op::Unsqueeze { axes } => {
            let x = ins[0];
            let r = x.shape.len() + axes.len();
            let mut pos = Vec::new();
            for &a in axes {
                let a = norm_axis(node, a, r)?;
                if pos.contains(&a) {
                    return Err(attr_err(node, format!("axis {a} repeated")));
                }
                pos.push(a);
            }
            let mut it = x.shape.iter();
            let out = (0..r)
                .map(|i| {
                    if pos.contains(&i) {
                        Dim::Fixed(1)
                    } else {
                        it.next().expect("rank").clone()
                    }
                })
                .collect();
            one(x.dtype, out)
        }
        Op::Concat { axis } => {
            let x = ins[0];
            let r = x.shape.len();
            let a = norm_axis(node, *axis, r)?;
            let mut out = x.shape.clone();
            let mut cat = vec![x.shape[a].clone()];
            for y in &ins[1..] {
                require_same(node, x, y)?;
                if y.shape.len() != r
                    || (0..r).any(|i| i != a && !compatible(&x.shape[i], &y.shape[i]))
                {
                    return Err(shape_err(
                        node,
                        format!(
                            "cannot concatenate {} and {} on axis {a}",
                            shape_string(&x.shape),
                            shape_string(&y.shape)
                        ),
                    ));
                }
                cat.push(y.shape[a].clone());
            }
            out[a] = if cat.iter().all(|d| d.fixed().is_some()) {
                Dim::Fixed(cat.iter().filter_map(|d| d.fixed()).sum())
            } else {
                fresh()
            };
            one(x.dtype, out)
        }
        Op::Slice => {
            let x = ins[0];
            for (i, m) in ins[1..].iter().enumerate() {
                require_index(node, m, ["starts", "ends", "axes", "steps"][i])?;
            }
            let r = x.shape.len();
            let n = fixed_rank1(node, ins[1], "starts")?;
            if fixed_rank1(node, ins[2], "ends")? != n {
                return Err(shape_err(node, "starts and ends differ in length"));
            }
            let params: Option<Vec<Vec<i64>>> =
                (1..ins.len()).map(|i| known[i].map(ints)).collect();
            let Some(params) = params else {
                let axes: Option<Vec<usize>> = if ins.len() > 3 {
                    known[3]
                        .map(|t| {
                            ints(t)
                                .iter()
                                .map(|&a| norm_axis(node, a, r))
                                .collect::<Result<_>>()
                        })
                        .transpose()?
                } else {
                    Some((0..n).collect())
                };
                let out = (0..r)
                    .map(|i| match &axes {
                        Some(ax) if !ax.contains(&i) => x.shape[i].clone(),
                        _ => fresh(),
                    })
                    .collect();
                return one(x.dtype, out);
            };
            let spec = slice_spec(node, &params, r)?;
            let mut out = x.shape.clone();
            for (axis, start, end, step) in spec {
                out[axis] = match &x.shape[axis] {
                    Dim::Fixed(len) => Dim::Fixed(slice_range(start, end, step, *len).2),
                    d @ Dim::Symbolic(_) if start == 0 && step == 1 && end >= i64::MAX / 2 => {
                        d.clone()
                    }
                    _ => fresh(),
                };
            }
            one(x.dtype, out)
        }
        Op::Expand => {
            let (x, s) = (ins[0], ins[1]);
            require_index(node, s, "shape")?;
            let n = fixed_rank1(node, s, "shape")?;
            match known[1] {
                Some(sv) => {
                    let target: Vec<Dim> = ints(sv)
                        .iter()
                        .map(|&v| {
                            if v >= 0 {
                                Ok(Dim::Fixed(v as usize))
                            } else {
                                Err(shape_err(
                                    node,
                                    format!("negative size {v} in Expand shape"),
                                ))
                            }
                        })
                        .collect::<Result<_>>()?;
                    one(x.dtype, broadcast(node, &x.shape, &target)?)
                }
                None => {
                    let r = n.max(x.shape.len());
                    one(x.dtype, (0..r).map(|_| fresh()).collect())
                }
            }
        }
        Op::Shape { start, end } => {
            let r = ins[0].shape.len() as i64;
            let clamp = |v: i64| if v < 0 { (v + r).max(0) } else { v.min(r) };
            let (s, e) = (clamp(*start), clamp(end.unwrap_or(r)));
            one(DType::I64, vec![Dim::Fixed((e - s).max(0) as usize)])
        }
        Op::Identity => one(ins[0].dtype, ins[0].shape.clone()),
        Op::Constant { value } => one(
            value.dtype(),
            crate::graph::graph::fixed_shape(value.shape()),
        ),
    }
}

/// Normalized, sorted, deduplicated reduce axes (`None` = all).
pub(crate) fn reduce_axes(node: &str, axes: Option<&[i64]>, rank: usize) -> Result<Vec<usize>> {
    let mut v: Vec<usize> = match axes {
        None => (0..rank).collect(),
        Some(ax) => ax
            .iter()
            .map(|&a| norm_axis(node, a, rank))
            .collect::<Result<_>>()?,
    };
    v.sort_unstable();
    v.dedup();
    Ok(v)
}

/// (axis, start, end, step) per sliced axis from the Slice inputs.
pub(crate) fn slice_spec(
    node: &str,
    params: &[Vec<i64>],
    rank: usize,
) -> Result<Vec<(usize, i64, i64, i64)>> {
    let starts = &params[0];
    let ends = &params[1];
    let n = starts.len();
    let axes: Vec<usize> = match params.get(2) {
        Some(a) => a
            .iter()
            .map(|&a| norm_axis(node, a, rank))
            .collect::<Result<_>>()?,
        // The default axes 0..n must exist (found by fuzzing: a rank-0 input
        // with one start indexed past its shape).
        None if n > rank => {
            return Err(shape_err(
                node,
                format!("Slice has {n} starts but its input has rank {rank}"),
            ));
        }
        None => (0..n).collect(),
    };
    let steps: Vec<i64> = params.get(3).cloned().unwrap_or_else(|| vec![1; n]);
    if ends.len() != n || axes.len() != n || steps.len() != n {
        return Err(shape_err(
            node,
            "Slice starts, ends, axes and steps differ in length",
        ));
    }
    if steps.contains(&0) {
        return Err(attr_err(node, "Slice step 0"));
    }
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for i in 0..n {
        if seen.contains(&axes[i]) {
            return Err(attr_err(node, format!("Slice axis {} repeated", axes[i])));
        }
        seen.push(axes[i]);
        out.push((axes[i], starts[i], ends[i], steps[i]));
    }
    Ok(out)
}

/// ONNX slice clamping: (first index, step, count) for one axis of length `len`.
pub(crate) fn slice_range(start: i64, end: i64, step: i64, len: usize) -> (i64, i64, usize) {
    let l = len as i64;
    let fix = |v: i64| if v < 0 { v.saturating_add(l) } else { v };
    let (s, e) = (fix(start), fix(end));
    if step > 0 {
        let s = s.clamp(0, l);
        let e = e.clamp(0, l);
        let n = if e > s { (e - s + step - 1) / step } else { 0 };
        (s, step, n as usize)
    } else {
        let s = s.clamp(-1, l - 1);
        let e = e.clamp(-1, l - 1);
        let n = if s > e {
            (s - e + (-step) - 1) / (-step)
        } else {
            0
        };
        (s, step, n as usize)
    }
}
