//! Softmax, LayerNorm, RMSNorm, reductions and global pools on the norm
//! kernels (last axis; other axes are transposed there and back).

use mixprec_kernels::norm::{self as nk, ReduceOp};
use mixprec_kernels::{FloatSlice, FloatSliceMut};

use super::exec::Pool;
use super::infer::{norm_axis, reduce_axes, shape_err};
use super::shape::transpose;
use super::{ReduceKind, par};
use crate::graph::dtype::DType;
use crate::graph::error::Result;
use crate::graph::tensor::{Tensor, TensorView, numel, sub};

/// The permutation moving `axes` (sorted) to the end, keeping the order of the rest.
fn to_back(rank: usize, axes: &[usize]) -> Vec<usize> {
    let mut p: Vec<usize> = (0..rank).filter(|i| !axes.contains(i)).collect();
    p.extend_from_slice(axes);
    p
}

fn inverse(p: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; p.len()];
    for (i, &x) in p.iter().enumerate() {
        inv[x] = i;
    }
    inv
}

/// `Softmax` / `LogSoftmax` over one axis.
pub(crate) fn softmax(
    node: &str,
    x: &TensorView<'_>,
    axis: i64,
    log: bool,
    out: &mut Tensor,
    pool: &mut Pool,
) -> Result<()> {
    let r = x.shape().len();
    if r == 0 {
        nk::softmax(
            x.as_float_slice().expect("float"),
            out.as_float_slice_mut().expect("float"),
            1,
            log,
        );
        return Ok(());
    }
    let a = norm_axis(node, axis, r)?;
    let cols = x.shape()[a];
    if a == r - 1 || numel(&x.shape()[a + 1..]) == 1 {
        softmax_rows(
            x.as_float_slice().expect("float"),
            out.as_float_slice_mut().expect("float"),
            cols,
            log,
        );
        return Ok(());
    }
    let perm = to_back(r, &[a]);
    let tshape: Vec<usize> = perm.iter().map(|&p| x.shape()[p]).collect();
    let mut t = pool.alloc(x.dtype(), &tshape);
    transpose(x, &perm, &mut t);
    let mut u = pool.alloc(out.dtype(), &tshape);
    softmax_rows(
        t.as_float_slice().expect("float"),
        u.as_float_slice_mut().expect("float"),
        cols,
        log,
    );
    transpose(&u.view(), &inverse(&perm), out);
    pool.give(t);
    pool.give(u);
    Ok(())
}

/// The softmax kernel over rows of `cols`, rows split over the threads.
fn softmax_rows(xs: FloatSlice<'_>, ys: FloatSliceMut<'_>, cols: usize, log: bool) {
    par::for_units(ys, cols, cols, |r, y| {
        nk::softmax(sub(xs, r.start * cols, r.end * cols), y, cols, log)
    });
}

/// The row reduction kernel, rows split over the threads.
fn reduce_rows(op: ReduceOp, xs: FloatSlice<'_>, cols: usize, ys: FloatSliceMut<'_>) {
    par::for_units(ys, 1, cols, |r, y| {
        nk::reduce_rows(op, sub(xs, r.start * cols, r.end * cols), cols, y)
    });
}

/// `LayerNormalization` (or, with `rms`, `RMSNormalization`) over axes `axis..`,
/// which are contiguous, so the kernel sees rows of their product.
pub(crate) fn layer_norm(
    node: &str,
    ins: &[&TensorView<'_>],
    axis: i64,
    eps: f32,
    rms: bool,
    out: &mut Tensor,
) -> Result<()> {
    let x = ins[0];
    let a = norm_axis(node, axis, x.shape().len())?;
    let cols = numel(&x.shape()[a..]);
    let gamma = ins[1].to_f32_vec();
    let beta = ins.get(2).map(|b| b.to_f32_vec());
    if gamma.len() != cols || beta.as_ref().is_some_and(|b| b.len() != cols) {
        return Err(shape_err(
            node,
            format!("scale/bias do not have {cols} elements"),
        ));
    }
    let (xs, ys) = (
        x.as_float_slice().expect("float"),
        out.as_float_slice_mut().expect("float"),
    );
    if cols == 0 {
        return Ok(());
    }
    par::for_units(ys, cols, cols, |r, y| {
        let x = sub(xs, r.start * cols, r.end * cols);
        if rms {
            nk::rms_norm(x, y, cols, &gamma, eps);
        } else {
            nk::layer_norm(x, y, cols, &gamma, beta.as_deref(), eps);
        }
    });
    Ok(())
}

fn kernel_reduce(k: ReduceKind) -> ReduceOp {
    match k {
        ReduceKind::Sum => ReduceOp::Sum,
        ReduceKind::Mean => ReduceOp::Mean,
        ReduceKind::Max => ReduceOp::Max,
    }
}

/// `ReduceSum` / `ReduceMean` / `ReduceMax` over any axes.
pub(crate) fn reduce(
    node: &str,
    kind: ReduceKind,
    axes: Option<&[i64]>,
    x: &TensorView<'_>,
    out: &mut Tensor,
    pool: &mut Pool,
) -> Result<()> {
    let r = x.shape().len();
    let red = reduce_axes(node, axes, r)?;
    let cols: usize = red.iter().map(|&i| x.shape()[i]).product();
    if !x.dtype().is_float() {
        // ReduceMax on integers (shape arithmetic).
        let perm = to_back(r, &red);
        let tshape: Vec<usize> = perm.iter().map(|&p| x.shape()[p]).collect();
        let mut t = Tensor::zeros(x.dtype(), &tshape);
        transpose(x, &perm, &mut t);
        let v = t.to_i64_vec();
        let res: Vec<i64> = v
            .chunks(cols.max(1))
            .map(|c| c.iter().copied().max().unwrap_or(i64::MIN))
            .collect();
        match out.dtype() {
            DType::I64 => out.as_slice_mut::<i64>()?.copy_from_slice(&res),
            _ => {
                let r32: Vec<i32> = res.iter().map(|&v| v as i32).collect();
                out.as_slice_mut::<i32>()?.copy_from_slice(&r32)
            }
        }
        return Ok(());
    }
    let suffix = red.iter().enumerate().all(|(j, &i)| i == r - red.len() + j);
    let op = kernel_reduce(kind);
    if suffix {
        reduce_rows(
            op,
            x.as_float_slice().expect("float"),
            cols,
            out.as_float_slice_mut().expect("float"),
        );
        return Ok(());
    }
    let perm = to_back(r, &red);
    let tshape: Vec<usize> = perm.iter().map(|&p| x.shape()[p]).collect();
    let mut t = pool.alloc(x.dtype(), &tshape);
    transpose(x, &perm, &mut t);
    reduce_rows(
        op,
        t.as_float_slice().expect("float"),
        cols,
        out.as_float_slice_mut().expect("float"),
    );
    pool.give(t);
    Ok(())
}

/// `GlobalMaxPool` / `GlobalAveragePool`: a row reduction over the spatial dims.
pub(crate) fn global_pool(x: &TensorView<'_>, max: bool, out: &mut Tensor) {
    let cols = numel(&x.shape()[2..]);
    let op = if max { ReduceOp::Max } else { ReduceOp::Mean };
    reduce_rows(
        op,
        x.as_float_slice().expect("float"),
        cols,
        out.as_float_slice_mut().expect("float"),
    );
}
