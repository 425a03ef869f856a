//! Data-movement ops: Transpose, Concat, Slice, Expand, Gather (any dtype,
//! moved as raw elements so no value changes).

use bytemuck::Pod;

use super::infer::{norm_axis, slice_range, slice_spec};
use crate::graph::error::{GraphError, Result};
use crate::graph::tensor::{Tensor, TensorView};

/// Row-major element strides of `shape`.
pub(crate) fn strides(shape: &[usize]) -> Vec<usize> {
    let mut st = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        st[i] = st[i + 1] * shape[i + 1];
    }
    st
}

/// Copies `src` viewed with `in_strides` (per output axis) into contiguous
/// `dst` of `shape`, moving runs along the last axis when it is contiguous.
fn gather_strided<T: Pod>(
    src: &[T],
    base: usize,
    in_strides: &[usize],
    shape: &[usize],
    dst: &mut [T],
) {
    let r = shape.len();
    if dst.is_empty() {
        return;
    }
    if r == 0 {
        dst[0] = src[base];
        return;
    }
    let inner = shape[r - 1];
    let contiguous = in_strides[r - 1] == 1;
    let outer = dst.len() / inner;
    let mut idx = vec![0usize; r - 1];
    let mut off = base;
    for o in 0..outer {
        let d = &mut dst[o * inner..(o + 1) * inner];
        if contiguous {
            d.copy_from_slice(&src[off..off + inner]);
        } else {
            let s = in_strides[r - 1];
            for (j, x) in d.iter_mut().enumerate() {
                *x = src[off + j * s];
            }
        }
        for i in (0..r - 1).rev() {
            idx[i] += 1;
            off += in_strides[i];
            if idx[i] < shape[i] {
                break;
            }
            off -= in_strides[i] * shape[i];
            idx[i] = 0;
        }
    }
}

fn with_elems(es: usize, src: &[u8], dst: &mut [u8], f: impl FnOnce(Elems<'_>)) {
    match es {
        1 => f(Elems::B1(src, dst)),
        2 => f(Elems::B2(
            bytemuck::cast_slice(src),
            bytemuck::cast_slice_mut(dst),
        )),
        4 => f(Elems::B4(
            bytemuck::cast_slice(src),
            bytemuck::cast_slice_mut(dst),
        )),
        _ => f(Elems::B8(
            bytemuck::cast_slice(src),
            bytemuck::cast_slice_mut(dst),
        )),
    }
}

enum Elems<'a> {
    B1(&'a [u8], &'a mut [u8]),
    B2(&'a [u16], &'a mut [u16]),
    B4(&'a [u32], &'a mut [u32]),
    B8(&'a [u64], &'a mut [u64]),
}

/// Strided copy of any tensor into `out` (same dtype, out's shape).
fn strided_copy(x: &TensorView<'_>, base: usize, in_strides: &[usize], out: &mut Tensor) {
    let shape = out.shape().to_vec();
    let es = x.dtype().size();
    with_elems(es, x.bytes(), out.bytes_mut(), |e| match e {
        Elems::B1(s, d) => gather_strided(s, base, in_strides, &shape, d),
        Elems::B2(s, d) => gather_strided(s, base, in_strides, &shape, d),
        Elems::B4(s, d) => gather_strided(s, base, in_strides, &shape, d),
        Elems::B8(s, d) => gather_strided(s, base, in_strides, &shape, d),
    });
}

/// `Transpose` by `perm`.
pub(crate) fn transpose(x: &TensorView<'_>, perm: &[usize], out: &mut Tensor) {
    let st = strides(x.shape());
    let ist: Vec<usize> = perm.iter().map(|&p| st[p]).collect();
    strided_copy(x, 0, &ist, out);
}

/// Numpy broadcast of `x` into `out`'s shape (`Expand`, Gemm's C).
pub(crate) fn broadcast_copy(x: &TensorView<'_>, out: &mut Tensor) {
    let ist = super::elementwise::bcast_strides(x.shape(), out.shape());
    strided_copy(x, 0, &ist, out);
}

/// `Slice` with ONNX clamping and negative steps.
pub(crate) fn slice(node: &str, ins: &[&TensorView<'_>], out: &mut Tensor) -> Result<()> {
    let x = ins[0];
    let params: Vec<Vec<i64>> = ins[1..].iter().map(|t| t.to_i64_vec()).collect();
    let spec = slice_spec(node, &params, x.shape().len())?;
    let st = strides(x.shape());
    let mut ist = st.clone();
    let mut base: isize = 0;
    for (axis, start, end, step) in spec {
        let (first, step, _) = slice_range(start, end, step, x.shape()[axis]);
        if out.shape()[axis] > 0 {
            base += first as isize * st[axis] as isize;
        }
        // Negative steps walk backwards: express as a signed stride.
        ist[axis] = (step * st[axis] as i64) as usize;
    }
    if out.is_empty() {
        return Ok(());
    }
    if ist.iter().all(|&s| (s as isize) >= 0) {
        strided_copy(x, base as usize, &ist, out);
    } else {
        // Rare (reversal): element by element with signed offsets.
        let shape = out.shape().to_vec();
        let es = x.dtype().size();
        let n = out.len();
        let src = x.bytes().to_vec();
        let dst = out.bytes_mut();
        let mut idx = vec![0usize; shape.len()];
        for o in 0..n {
            let off: isize = base
                + idx
                    .iter()
                    .zip(&ist)
                    .map(|(&i, &s)| i as isize * s as isize)
                    .sum::<isize>();
            let off = off as usize;
            dst[o * es..(o + 1) * es].copy_from_slice(&src[off * es..(off + 1) * es]);
            for i in (0..shape.len()).rev() {
                idx[i] += 1;
                if idx[i] < shape[i] {
                    break;
                }
                idx[i] = 0;
            }
        }
    }
    Ok(())
}

/// `Concat` along an axis: each input is a block of rows of its own width.
pub(crate) fn concat(
    node: &str,
    axis: i64,
    ins: &[&TensorView<'_>],
    out: &mut Tensor,
) -> Result<()> {
    let os = out.shape().to_vec();
    let a = norm_axis(node, axis, os.len())?;
    let outer: usize = os[..a].iter().product();
    let es = out.dtype().size();
    let inner: usize = os[a + 1..].iter().product::<usize>() * es;
    let row = os[a] * inner;
    let dst = out.bytes_mut();
    let mut col = 0;
    for t in ins {
        let w = t.shape()[a] * inner;
        let src = t.bytes();
        for o in 0..outer {
            dst[o * row + col..o * row + col + w].copy_from_slice(&src[o * w..(o + 1) * w]);
        }
        col += w;
    }
    Ok(())
}

/// `Gather(data, indices)` along an axis; negative indices count from the
/// end, out-of-range ones are a runtime error naming the node.
pub(crate) fn gather(
    node: &str,
    axis: i64,
    data: &TensorView<'_>,
    indices: &TensorView<'_>,
    out: &mut Tensor,
) -> Result<()> {
    let ds = data.shape();
    let a = norm_axis(node, axis, ds.len())?;
    let idx = indices.to_i64_vec();
    let len = ds[a] as i64;
    let es = data.dtype().size();
    let outer: usize = ds[..a].iter().product();
    let inner: usize = ds[a + 1..].iter().product::<usize>() * es;
    let src = data.bytes();
    let dst = out.bytes_mut();
    let mut pos = 0;
    for o in 0..outer {
        for &i in &idx {
            let j = if i < 0 { i + len } else { i };
            if j < 0 || j >= len {
                return Err(GraphError::Runtime {
                    node: node.to_string(),
                    detail: format!("index {i} out of range for axis {a} of size {len}"),
                });
            }
            let s = (o * ds[a] + j as usize) * inner;
            dst[pos..pos + inner].copy_from_slice(&src[s..s + inner]);
            pos += inner;
        }
    }
    Ok(())
}
