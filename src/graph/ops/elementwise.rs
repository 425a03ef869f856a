//! Unary and binary elementwise ops, Equal, Where and Cast.

use mixprec_kernels::elementwise::{self as ew, BinaryOp, UnaryOp};
use mixprec_kernels::{FloatSlice, FloatSliceMut};

use super::{Binary, Unary, par};
use crate::graph::dtype::DType;
use crate::graph::error::{GraphError, Result};
use crate::graph::tensor::{Tensor, TensorView, convert_float, get_f32, sub, sub_mut};

fn kernel_unary(f: Unary) -> UnaryOp {
    match f {
        Unary::Neg => UnaryOp::Neg,
        Unary::Abs => UnaryOp::Abs,
        Unary::Sqrt => UnaryOp::Sqrt,
        Unary::Reciprocal => UnaryOp::Reciprocal,
        Unary::Exp => UnaryOp::Exp,
        Unary::Log => UnaryOp::Log,
        Unary::Tanh => UnaryOp::Tanh,
        Unary::Erf => UnaryOp::Erf,
        Unary::Sigmoid => UnaryOp::Sigmoid,
        Unary::Relu => UnaryOp::Relu,
        Unary::GeluErf => UnaryOp::GeluErf,
        Unary::GeluTanh => UnaryOp::GeluTanh,
        Unary::Silu => UnaryOp::Silu,
    }
}

fn kernel_binary(f: Binary) -> BinaryOp {
    match f {
        Binary::Add => BinaryOp::Add,
        Binary::Sub => BinaryOp::Sub,
        Binary::Mul => BinaryOp::Mul,
        Binary::Div => BinaryOp::Div,
        Binary::Max => BinaryOp::Max,
        Binary::Min => BinaryOp::Min,
        Binary::Pow => BinaryOp::Pow,
    }
}

/// A unary op on the elementwise kernels.
pub(crate) fn unary(f: Unary, x: &TensorView<'_>, out: &mut Tensor) {
    let xs = x.as_float_slice().expect("inference admits float only");
    let op = kernel_unary(f);
    let ys = out.as_float_slice_mut().expect("float");
    par::for_units(ys, 1, 1, |r, y| ew::unary(op, sub(xs, r.start, r.end), y));
}

/// Strides of `shape` right-aligned to rank `r`, 0 on broadcast axes.
pub(crate) fn bcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let r = out.len();
    let mut st = vec![0; r];
    let mut acc = 1;
    for i in (0..shape.len()).rev() {
        let o = r - shape.len() + i;
        st[o] = if shape[i] == 1 && out[o] != 1 { 0 } else { acc };
        acc *= shape[i];
    }
    st
}

/// For each element of `out`, the index into a tensor of `shape` broadcast to it.
pub(crate) fn bcast_map(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let st = bcast_strides(shape, out);
    let n: usize = out.iter().product();
    let mut v = Vec::with_capacity(n);
    let mut idx = vec![0usize; out.len()];
    let mut off = 0usize;
    for _ in 0..n {
        v.push(off);
        for i in (0..out.len()).rev() {
            idx[i] += 1;
            off += st[i];
            if idx[i] < out[i] {
                break;
            }
            off -= st[i] * out[i];
            idx[i] = 0;
        }
    }
    v
}

/// Broadcast binary float op decomposed into contiguous runs, each one
/// kernel call (vector-vector, vector-scalar or scalar-vector).
fn float_binary(f: BinaryOp, a: &TensorView<'_>, b: &TensorView<'_>, out: &mut Tensor) {
    let os = out.shape().to_vec();
    let r = os.len();
    let (sa, sb) = (bcast_strides(a.shape(), &os), bcast_strides(b.shape(), &os));
    // Merge adjacent axes where both operands are contiguous across them.
    let mut dims: Vec<(usize, usize, usize)> = Vec::new(); // (len, stride a, stride b), outer first
    for i in 0..r {
        if os[i] == 1 {
            continue;
        }
        if let Some(last) = dims.last_mut()
            && last.1 == sa[i] * os[i]
            && last.2 == sb[i] * os[i]
        {
            *last = (last.0 * os[i], sa[i], sb[i]);
            continue;
        }
        dims.push((os[i], sa[i], sb[i]));
    }
    let (inner, ia, ib) = dims.pop().unwrap_or((1, 1, 1));
    let (ia, ib) = if inner == 1 { (1, 1) } else { (ia, ib) };
    let av = a.as_float_slice().expect("float");
    let bv = b.as_float_slice().expect("float");
    let yv = out.as_float_slice_mut().expect("float");
    let outer: usize = dims.iter().map(|d| d.0).product();
    // One contiguous run: `y = a op b` over `inner` elements.
    let run = |oa: usize, ob: usize, len: usize, y: FloatSliceMut<'_>| match (ia, ib) {
        (1, 1) => ew::binary(f, sub(av, oa, oa + len), sub(bv, ob, ob + len), y),
        (1, 0) => ew::binary_scalar_rhs(f, sub(av, oa, oa + len), get_f32(bv, ob), y),
        (0, 1) => ew::binary_scalar_lhs(f, get_f32(av, oa), sub(bv, ob, ob + len), y),
        _ => ew::binary_scalar_rhs(f, sub(av, oa, oa + 1), get_f32(bv, ob), y),
    };
    if outer == 1 {
        // A single run is split anywhere: its operands are contiguous or scalars.
        par::for_units(yv, 1, 1, |r, y| run(r.start * ia, r.start * ib, r.len(), y));
        return;
    }
    // The offsets of a and b at the start of run `o` (row-major over `dims`).
    let offsets = |mut o: usize| {
        let (mut oa, mut ob) = (0, 0);
        for &(len, sa, sb) in dims.iter().rev() {
            oa += (o % len) * sa;
            ob += (o % len) * sb;
            o /= len;
        }
        (oa, ob)
    };
    par::for_units(yv, inner, inner, |r, mut y| {
        for (i, o) in r.enumerate() {
            let (oa, ob) = offsets(o);
            run(oa, ob, inner, sub_mut(&mut y, i * inner, (i + 1) * inner));
        }
    });
}

fn int_binary<T>(
    node: &str,
    f: Binary,
    a: &[T],
    b: &[T],
    ma: &[usize],
    mb: &[usize],
    y: &mut [T],
) -> Result<()>
where
    T: Copy + Ord + num_like::Int,
{
    for i in 0..y.len() {
        let (x, z) = (a[ma[i]], b[mb[i]]);
        y[i] = match f {
            Binary::Add => x.wadd(z),
            Binary::Sub => x.wsub(z),
            Binary::Mul => x.wmul(z),
            Binary::Div => x.cdiv(z).ok_or_else(|| GraphError::Runtime {
                node: node.to_string(),
                detail: "integer division by zero".into(),
            })?,
            Binary::Max => x.max(z),
            Binary::Min => x.min(z),
            Binary::Pow => unreachable!("inference rejects integer Pow"),
        };
    }
    Ok(())
}

mod num_like {
    pub trait Int: Sized {
        fn wadd(self, o: Self) -> Self;
        fn wsub(self, o: Self) -> Self;
        fn wmul(self, o: Self) -> Self;
        fn cdiv(self, o: Self) -> Option<Self>;
    }
    macro_rules! int {
        ($t:ty) => {
            impl Int for $t {
                fn wadd(self, o: Self) -> Self {
                    self.wrapping_add(o)
                }
                fn wsub(self, o: Self) -> Self {
                    self.wrapping_sub(o)
                }
                fn wmul(self, o: Self) -> Self {
                    self.wrapping_mul(o)
                }
                fn cdiv(self, o: Self) -> Option<Self> {
                    self.checked_div(o)
                }
            }
        };
    }
    int!(i64);
    int!(i32);
}

/// A binary op with numpy broadcasting (floats on the kernels, integers here).
pub(crate) fn binary(
    node: &str,
    f: Binary,
    a: &TensorView<'_>,
    b: &TensorView<'_>,
    out: &mut Tensor,
) -> Result<()> {
    if a.dtype().is_float() {
        float_binary(kernel_binary(f), a, b, out);
        return Ok(());
    }
    let os = out.shape().to_vec();
    let (ma, mb) = (bcast_map(a.shape(), &os), bcast_map(b.shape(), &os));
    match a.dtype() {
        DType::I64 => int_binary(
            node,
            f,
            a.as_i64()?,
            b.as_i64()?,
            &ma,
            &mb,
            out.as_slice_mut::<i64>()?,
        ),
        DType::I32 => int_binary(
            node,
            f,
            a.as_i32()?,
            b.as_i32()?,
            &ma,
            &mb,
            out.as_slice_mut::<i32>()?,
        ),
        d => unreachable!("inference rejects {d} for binary ops"),
    }
}

/// `Equal` with broadcasting, on any dtype (floats compare as values).
pub(crate) fn equal(a: &TensorView<'_>, b: &TensorView<'_>, out: &mut Tensor) {
    let os = out.shape().to_vec();
    let (ma, mb) = (bcast_map(a.shape(), &os), bcast_map(b.shape(), &os));
    let y = out.bytes_mut();
    match a.dtype() {
        DType::I64 => {
            let (x, z) = (a.as_i64().expect("i64"), b.as_i64().expect("i64"));
            for i in 0..y.len() {
                y[i] = (x[ma[i]] == z[mb[i]]) as u8;
            }
        }
        DType::I32 => {
            let (x, z) = (a.as_i32().expect("i32"), b.as_i32().expect("i32"));
            for i in 0..y.len() {
                y[i] = (x[ma[i]] == z[mb[i]]) as u8;
            }
        }
        DType::Bool => {
            let (x, z) = (a.bytes(), b.bytes());
            for i in 0..y.len() {
                y[i] = (x[ma[i]] == z[mb[i]]) as u8;
            }
        }
        _ => {
            let (x, z) = (
                a.as_float_slice().expect("float"),
                b.as_float_slice().expect("float"),
            );
            for i in 0..y.len() {
                y[i] = (get_f32(x, ma[i]) == get_f32(z, mb[i])) as u8;
            }
        }
    }
}

/// `Where(cond, x, y)` with broadcasting, any element type.
pub(crate) fn where_(c: &TensorView<'_>, x: &TensorView<'_>, y: &TensorView<'_>, out: &mut Tensor) {
    let os = out.shape().to_vec();
    let (mc, mx, my) = (
        bcast_map(c.shape(), &os),
        bcast_map(x.shape(), &os),
        bcast_map(y.shape(), &os),
    );
    let es = out.dtype().size();
    let (cb, xb, yb) = (c.bytes(), x.bytes(), y.bytes());
    let ob = out.bytes_mut();
    for i in 0..mc.len() {
        let (src, j) = if cb[mc[i]] != 0 {
            (xb, mx[i])
        } else {
            (yb, my[i])
        };
        ob[i * es..(i + 1) * es].copy_from_slice(&src[j * es..(j + 1) * es]);
    }
}

/// `Cast` between any two dtypes. Float to float rounds to nearest even;
/// float to int truncates toward zero (saturating, NaN to 0); to bool is `!= 0`.
pub(crate) fn cast(x: &TensorView<'_>, out: &mut Tensor) {
    if let (Some(src), true) = (x.as_float_slice(), out.dtype().is_float()) {
        par::convert(src, out.as_float_slice_mut().expect("float"));
        return;
    }
    match out.dtype() {
        DType::Bool => {
            let v: Vec<u8> = match x.dtype() {
                DType::I64 | DType::I32 | DType::Bool => {
                    x.to_i64_vec().iter().map(|&v| (v != 0) as u8).collect()
                }
                _ => x.to_f32_vec().iter().map(|&v| (v != 0.0) as u8).collect(),
            };
            out.bytes_mut().copy_from_slice(&v);
        }
        DType::I64 => {
            let v = x.to_i64_vec();
            out.as_slice_mut::<i64>().expect("i64").copy_from_slice(&v);
        }
        DType::I32 => {
            let v: Vec<i32> = x.to_i64_vec().iter().map(|&v| v as i32).collect();
            out.as_slice_mut::<i32>().expect("i32").copy_from_slice(&v);
        }
        _ => {
            // Integer or bool to float: one rounding to f32, then one more to
            // the target only when it is narrower (exact for |v| <= 256).
            let v: Vec<f32> = x.to_i64_vec().iter().map(|&v| v as f32).collect();
            convert_float(
                FloatSlice::F32(&v),
                out.as_float_slice_mut().expect("float"),
            );
        }
    }
}
