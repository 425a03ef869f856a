//! Each op in an all-f32 plan against a scalar f64 reference, with
//! broadcasting and odd shapes.

mod graph_common;

use std::sync::Arc;

use graph_common::*;
use mixprec::graph::{
    AutoPad, Binary, ConvAttrs, DType, GraphError, Op, PoolAttrs, ReduceKind, Tensor, Unary,
};

// f32 kernels for transcendental functions are within a few ulp.
const RTOL: f64 = 2e-6;
const ATOL: f64 = 1e-6;

#[test]
fn unary_ops_match_f64() {
    let mut rng = Rng::new(1);
    let all = [
        Unary::Neg,
        Unary::Abs,
        Unary::Sqrt,
        Unary::Reciprocal,
        Unary::Exp,
        Unary::Log,
        Unary::Tanh,
        Unary::Erf,
        Unary::Sigmoid,
        Unary::Relu,
        Unary::GeluErf,
        Unary::GeluTanh,
        Unary::Silu,
    ];
    for f in all {
        let (lo, hi) = match f {
            Unary::Sqrt | Unary::Log | Unary::Reciprocal => (0.1, 5.0),
            _ => (-4.0, 4.0),
        };
        let x = rng.tensor(&[3, 5, 7], lo, hi);
        let y = run_op(Op::Unary(f), &[("x", &x, false)]);
        assert_eq!(y.shape(), &[3, 5, 7]);
        let want: Vec<f64> = f64s(&x).iter().map(|&v| f.eval_f64(v)).collect();
        assert_close(&y.to_f32_vec(), &want, 4e-6, 2e-6, &format!("{f:?}"));
    }
}

#[test]
fn erf_reference_is_accurate() {
    // Known values of erf to 15 digits.
    for (x, e) in [
        (0.5, 0.520_499_877_813_046_5),
        (1.0, 0.842_700_792_949_714_9),
        (2.0, 0.995_322_265_018_952_7),
        (3.0, 0.999_977_909_503_001_4),
    ] {
        assert!((mixprec::graph::erf_f64(x) - e).abs() < 1e-14, "erf({x})");
        assert!((mixprec::graph::erf_f64(-x) + e).abs() < 1e-14);
    }
}

#[test]
fn binary_ops_broadcast_like_numpy() {
    let mut rng = Rng::new(2);
    let shapes: [(&[usize], &[usize]); 7] = [
        (&[3, 1, 5], &[1, 4, 5]),
        (&[2, 3, 4], &[4]),
        (&[1], &[2, 3]),
        (&[2, 1], &[1, 3]),
        (&[17], &[17]),
        (&[], &[3]),
        (&[2, 3, 1, 1], &[3, 7, 1]),
    ];
    for f in [
        Binary::Add,
        Binary::Sub,
        Binary::Mul,
        Binary::Div,
        Binary::Max,
        Binary::Min,
        Binary::Pow,
    ] {
        for (sa, sb) in shapes {
            let (lo, hi) = if f == Binary::Pow {
                (0.5, 2.0)
            } else {
                (-3.0, 3.0)
            };
            let a = rng.tensor(sa, lo, hi);
            let b = rng.tensor(sb, if f == Binary::Div { 0.5 } else { lo }, hi);
            for b_const in [false, true] {
                let y = run_op(Op::Binary(f), &[("a", &a, false), ("b", &b, b_const)]);
                let os = bcast_shape(sa, sb);
                assert_eq!(y.shape(), os.as_slice(), "{f:?} {sa:?} {sb:?}");
                let (av, bv) = (f64s(&a), f64s(&b));
                let n: usize = os.iter().product();
                let want: Vec<f64> = (0..n)
                    .map(|i| {
                        let idx = unravel(i, &os);
                        f.eval_f64(av[bcast_index(&idx, sa)], bv[bcast_index(&idx, sb)])
                    })
                    .collect();
                assert_close(
                    &y.to_f32_vec(),
                    &want,
                    RTOL,
                    ATOL,
                    &format!("{f:?} {sa:?} {sb:?}"),
                );
            }
        }
    }
}

#[test]
fn integer_binary_ops() {
    let a = Tensor::from_i64(&[2, 3], &[1, -2, 3, 40, 5, -6]).unwrap();
    let b = Tensor::from_i64(&[3], &[2, 3, -4]).unwrap();
    let y = run_op(
        Op::Binary(Binary::Mul),
        &[("a", &a, false), ("b", &b, false)],
    );
    assert_eq!(y.as_i64().unwrap(), &[2, -6, -12, 80, 15, 24]);
    let y = run_op(
        Op::Binary(Binary::Div),
        &[("a", &a, false), ("b", &b, false)],
    );
    assert_eq!(y.as_i64().unwrap(), &[0, 0, 0, 20, 1, 1]);
    let z = Tensor::from_i64(&[1], &[0]).unwrap();
    let r = mixprec_run_err(Op::Binary(Binary::Div), &a, &z);
    assert!(
        matches!(r, GraphError::Runtime { ref node, .. } if node == "op"),
        "{r}"
    );
}

fn mixprec_run_err(op: Op, a: &Tensor, b: &Tensor) -> GraphError {
    run_op_typed(
        op,
        &[("a", a, false), ("b", b, false)],
        mixprec::kernels::FloatType::F32,
    )
    .unwrap_err()
}

/// f64 reference matmul of row-major a (m x k) and b (k x n).
fn mm(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
        }
    }
    c
}

#[test]
fn matmul_batched_and_broadcast() {
    let mut rng = Rng::new(3);
    let cases: [(&[usize], &[usize]); 5] = [
        (&[2, 3, 5, 7], &[7, 4]),
        (&[3, 1, 5, 7], &[1, 4, 7, 6]),
        (&[5, 7], &[2, 7, 3]),
        (&[7], &[7, 3]),
        (&[4, 7], &[7]),
    ];
    for (sa, sb) in cases {
        let a = rng.tensor(sa, -1.0, 1.0);
        let b = rng.tensor(sb, -1.0, 1.0);
        // Reference: promote 1-D, broadcast batch, multiply.
        let pa: Vec<usize> = if sa.len() == 1 {
            vec![1, sa[0]]
        } else {
            sa.to_vec()
        };
        let pb: Vec<usize> = if sb.len() == 1 {
            vec![sb[0], 1]
        } else {
            sb.to_vec()
        };
        let (m, k, n) = (pa[pa.len() - 2], pa[pa.len() - 1], pb[pb.len() - 1]);
        let batch = bcast_shape(&pa[..pa.len() - 2], &pb[..pb.len() - 2]);
        let nb: usize = batch.iter().product();
        let (av, bv) = (f64s(&a), f64s(&b));
        let mut want = Vec::new();
        for bi in 0..nb {
            let idx = unravel(bi, &batch);
            let ia = bcast_index(&idx, &pa[..pa.len() - 2]);
            let ib = bcast_index(&idx, &pb[..pb.len() - 2]);
            want.extend(mm(
                &av[ia * m * k..(ia + 1) * m * k],
                &bv[ib * k * n..(ib + 1) * k * n],
                m,
                k,
                n,
            ));
        }
        let mut os = batch.clone();
        if sa.len() > 1 {
            os.push(m);
        }
        if sb.len() > 1 {
            os.push(n);
        }
        for b_const in [false, true] {
            let y = run_op(Op::MatMul, &[("a", &a, false), ("b", &b, b_const)]);
            assert_eq!(y.shape(), os.as_slice(), "{sa:?} x {sb:?}");
            assert_close(
                &y.to_f32_vec(),
                &want,
                1e-5,
                1e-5,
                &format!("{sa:?} x {sb:?} const={b_const}"),
            );
        }
    }
}

#[test]
fn gemm_transposes_alpha_beta_and_c_shapes() {
    let mut rng = Rng::new(4);
    let (m, k, n) = (5, 9, 7);
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        for cshape in [vec![], vec![n], vec![1, n], vec![m, n], vec![m, 1]] {
            let a = rng.tensor(&(if ta { [k, m] } else { [m, k] }), -1.0, 1.0);
            let b = rng.tensor(&(if tb { [n, k] } else { [k, n] }), -1.0, 1.0);
            let c = rng.tensor(&cshape, -1.0, 1.0);
            let (alpha, beta) = (0.75f32, -1.5f32);
            let op = Op::Gemm {
                alpha,
                beta,
                trans_a: ta,
                trans_b: tb,
            };
            let (av, bv, cv) = (f64s(&a), f64s(&b), f64s(&c));
            let at = |i: usize, p: usize| if ta { av[p * m + i] } else { av[i * k + p] };
            let bt = |p: usize, j: usize| if tb { bv[j * k + p] } else { bv[p * n + j] };
            let want: Vec<f64> = (0..m * n)
                .map(|e| {
                    let (i, j) = (e / n, e % n);
                    let dot: f64 = (0..k).map(|p| at(i, p) * bt(p, j)).sum();
                    alpha as f64 * dot + beta as f64 * cv[bcast_index(&[i, j], &cshape)]
                })
                .collect();
            for consts in [false, true] {
                let y = run_op(
                    op.clone(),
                    &[("a", &a, false), ("b", &b, consts), ("c", &c, consts)],
                );
                assert_eq!(y.shape(), &[m, n]);
                assert_close(
                    &y.to_f32_vec(),
                    &want,
                    1e-5,
                    1e-5,
                    &format!("ta={ta} tb={tb} c={cshape:?} const={consts}"),
                );
            }
        }
    }
}

/// Direct f64 convolution, NC(H)W, ONNX padding.
#[allow(clippy::too_many_arguments)]
fn conv_ref(
    x: &[f64],
    xs: &[usize],
    w: &[f64],
    ws: &[usize],
    b: Option<&[f64]>,
    s: (usize, usize),
    d: (usize, usize),
    p: (usize, usize, usize, usize),
    group: usize,
) -> (Vec<f64>, Vec<usize>) {
    let (n, c, h, wd) = (xs[0], xs[1], xs[2], xs[3]);
    let (m, cg, kh, kw) = (ws[0], ws[1], ws[2], ws[3]);
    let oh = (h + p.0 + p.2 - (d.0 * (kh - 1) + 1)) / s.0 + 1;
    let ow = (wd + p.1 + p.3 - (d.1 * (kw - 1) + 1)) / s.1 + 1;
    let mg = m / group;
    let mut y = vec![0.0; n * m * oh * ow];
    for ni in 0..n {
        for mo in 0..m {
            let g = mo / mg;
            for i in 0..oh {
                for j in 0..ow {
                    let mut acc = b.map_or(0.0, |b| b[mo]);
                    for ci in 0..cg {
                        for ki in 0..kh {
                            for kj in 0..kw {
                                let ih = (i * s.0 + ki * d.0) as isize - p.0 as isize;
                                let iw = (j * s.1 + kj * d.1) as isize - p.1 as isize;
                                if ih < 0 || iw < 0 || ih as usize >= h || iw as usize >= wd {
                                    continue;
                                }
                                let xv = x
                                    [((ni * c + g * cg + ci) * h + ih as usize) * wd + iw as usize];
                                acc += xv * w[((mo * cg + ci) * kh + ki) * kw + kj];
                            }
                        }
                    }
                    y[((ni * m + mo) * oh + i) * ow + j] = acc;
                }
            }
        }
    }
    let _ = c;
    (y, vec![n, m, oh, ow])
}

#[test]
fn conv_2d_and_1d() {
    let mut rng = Rng::new(5);
    // (x shape, w shape, strides, dilations, pads [t, l, b, r], group, bias)
    #[allow(clippy::type_complexity)]
    let cases: Vec<(
        Vec<usize>,
        Vec<usize>,
        (usize, usize),
        (usize, usize),
        (usize, usize, usize, usize),
        usize,
        bool,
    )> = vec![
        (
            vec![2, 3, 7, 9],
            vec![4, 3, 3, 3],
            (1, 1),
            (1, 1),
            (1, 1, 1, 1),
            1,
            true,
        ),
        (
            vec![1, 4, 8, 7],
            vec![6, 2, 3, 2],
            (2, 1),
            (1, 2),
            (0, 1, 2, 0),
            2,
            true,
        ),
        (
            vec![2, 5, 6, 6],
            vec![7, 5, 1, 1],
            (1, 1),
            (1, 1),
            (0, 0, 0, 0),
            1,
            false,
        ),
        (
            vec![1, 6, 5, 5],
            vec![6, 1, 3, 3],
            (1, 1),
            (1, 1),
            (1, 1, 1, 1),
            6,
            true,
        ), // depthwise
        // A column matrix of 144 x 62*62 f32 (2.2 MB): im2col runs in blocks
        // of output rows (the last one partial), each block's GEMM writing
        // its columns of C at the plane stride.
        (
            vec![1, 32, 64, 64],
            vec![8, 16, 3, 3],
            (1, 1),
            (1, 1),
            (0, 1, 1, 0),
            2,
            true,
        ),
    ];
    // One thread takes the blocked im2col path (f32), more threads the
    // whole plane; results must match the reference either way.
    let runs = cases
        .iter()
        .flat_map(|c| [(c.clone(), 1usize), (c.clone(), 0)]);
    for ((xs, ws, s, d, p, group, bias), threads) in runs {
        mixprec::kernels::gemm::set_num_threads(threads);
        let x = rng.tensor(&xs, -1.0, 1.0);
        let w = rng.tensor(&ws, -1.0, 1.0);
        let b = rng.tensor(&[ws[0]], -1.0, 1.0);
        let bv = f64s(&b);
        let (want, os) = conv_ref(
            &f64s(&x),
            &xs,
            &f64s(&w),
            &ws,
            bias.then_some(&bv[..]),
            s,
            d,
            p,
            group,
        );
        let attrs = ConvAttrs {
            kernel_shape: vec![],
            strides: vec![s.0, s.1],
            pads: vec![p.0, p.1, p.2, p.3],
            dilations: vec![d.0, d.1],
            group,
            auto_pad: AutoPad::NotSet,
        };
        let mut ins = vec![("x", &x, false), ("w", &w, true)];
        if bias {
            ins.push(("b", &b, true));
        }
        let y = run_op(Op::Conv(attrs), &ins);
        assert_eq!(y.shape(), os.as_slice());
        assert_close(
            &y.to_f32_vec(),
            &want,
            1e-5,
            1e-5,
            &format!("conv {xs:?} {ws:?}"),
        );
    }
    // 1-D: same as 2-D with height 1.
    let x = rng.tensor(&[2, 3, 11], -1.0, 1.0);
    let w = rng.tensor(&[4, 3, 3], -1.0, 1.0);
    let attrs = ConvAttrs {
        strides: vec![2],
        pads: vec![1, 2],
        dilations: vec![2],
        ..Default::default()
    };
    let y = run_op(Op::Conv(attrs), &[("x", &x, false), ("w", &w, true)]);
    let (want, os) = conv_ref(
        &f64s(&x),
        &[2, 3, 1, 11],
        &f64s(&w),
        &[4, 3, 1, 3],
        None,
        (1, 2),
        (1, 2),
        (0, 1, 0, 2),
        1,
    );
    assert_eq!(y.shape(), &[os[0], os[1], os[3]]);
    assert_close(&y.to_f32_vec(), &want, 1e-5, 1e-5, "conv1d");
    // SAME_UPPER keeps ceil(in / stride).
    let x = rng.tensor(&[1, 2, 7, 8], -1.0, 1.0);
    let w = rng.tensor(&[3, 2, 3, 3], -1.0, 1.0);
    let attrs = ConvAttrs {
        strides: vec![2, 2],
        auto_pad: AutoPad::SameUpper,
        ..Default::default()
    };
    let y = run_op(Op::Conv(attrs), &[("x", &x, false), ("w", &w, true)]);
    // in 7 -> pad total 2 (1, 1); in 8 -> pad total 1 (0, 1).
    let (want, os) = conv_ref(
        &f64s(&x),
        &[1, 2, 7, 8],
        &f64s(&w),
        &[3, 2, 3, 3],
        None,
        (2, 2),
        (1, 1),
        (1, 0, 1, 1),
        1,
    );
    assert_eq!(y.shape(), os.as_slice());
    assert_eq!(os, vec![1, 3, 4, 4]);
    assert_close(&y.to_f32_vec(), &want, 1e-5, 1e-5, "conv same_upper");
}

/// Applies `f` to every 1-D lane along `axis` of a tensor of `shape`.
fn along_axis(x: &[f64], shape: &[usize], axis: usize, f: impl Fn(&[f64]) -> Vec<f64>) -> Vec<f64> {
    let st = shape_strides(shape);
    let mut y = vec![0.0; x.len()];
    for i in 0..x.len() {
        let idx = unravel(i, shape);
        if idx[axis] != 0 {
            continue;
        }
        let lane: Vec<f64> = (0..shape[axis]).map(|j| x[i + j * st[axis]]).collect();
        for (j, v) in f(&lane).into_iter().enumerate() {
            y[i + j * st[axis]] = v;
        }
    }
    y
}

#[test]
fn softmax_and_log_softmax_any_axis() {
    let mut rng = Rng::new(6);
    let shape = [3, 4, 5];
    let x = rng.tensor(&shape, -5.0, 5.0);
    for axis in [0i64, 1, 2, -1] {
        let a = if axis < 0 {
            (axis + 3) as usize
        } else {
            axis as usize
        };
        let sm = |l: &[f64]| {
            let m = l.iter().cloned().fold(f64::MIN, f64::max);
            let s: f64 = l.iter().map(|v| (v - m).exp()).sum();
            l.iter().map(|v| (v - m).exp() / s).collect::<Vec<_>>()
        };
        let want = along_axis(&f64s(&x), &shape, a, sm);
        let y = run_op(Op::Softmax { axis }, &[("x", &x, false)]);
        assert_close(
            &y.to_f32_vec(),
            &want,
            1e-5,
            1e-7,
            &format!("softmax axis {axis}"),
        );
        let want: Vec<f64> = want.iter().map(|v| v.ln()).collect();
        let y = run_op(Op::LogSoftmax { axis }, &[("x", &x, false)]);
        assert_close(
            &y.to_f32_vec(),
            &want,
            1e-5,
            1e-5,
            &format!("log_softmax axis {axis}"),
        );
    }
}

#[test]
fn layer_norm_and_rms_norm() {
    let mut rng = Rng::new(7);
    let shape = [2, 3, 8];
    let x = rng.tensor(&shape, -2.0, 3.0);
    for axis in [-1i64, 1] {
        let a = if axis < 0 { 2 } else { 1 };
        let cols: usize = shape[a..].iter().product();
        let pshape = &shape[a..];
        let g = rng.tensor(pshape, 0.5, 1.5);
        let b = rng.tensor(pshape, -0.5, 0.5);
        let (xv, gv, bv) = (f64s(&x), f64s(&g), f64s(&b));
        let eps = 1e-5;
        let mut want_ln = vec![0.0; xv.len()];
        let mut want_rms = vec![0.0; xv.len()];
        for r in 0..xv.len() / cols {
            let row = &xv[r * cols..(r + 1) * cols];
            let mean = row.iter().sum::<f64>() / cols as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / cols as f64;
            let ms = row.iter().map(|v| v * v).sum::<f64>() / cols as f64;
            for j in 0..cols {
                want_ln[r * cols + j] = (row[j] - mean) / (var + eps).sqrt() * gv[j] + bv[j];
                want_rms[r * cols + j] = row[j] / (ms + eps).sqrt() * gv[j];
            }
        }
        let y = run_op(
            Op::LayerNormalization {
                axis,
                epsilon: eps as f32,
            },
            &[("x", &x, false), ("g", &g, true), ("b", &b, true)],
        );
        assert_close(
            &y.to_f32_vec(),
            &want_ln,
            1e-5,
            1e-5,
            &format!("layernorm axis {axis}"),
        );
        let y = run_op(
            Op::RmsNormalization {
                axis,
                epsilon: eps as f32,
            },
            &[("x", &x, false), ("g", &g, false)],
        );
        assert_close(
            &y.to_f32_vec(),
            &want_rms,
            1e-5,
            1e-5,
            &format!("rmsnorm axis {axis}"),
        );
    }
}

#[test]
fn reductions_over_any_axes() {
    let mut rng = Rng::new(8);
    let shape = [3, 4, 5];
    let x = rng.tensor(&shape, -3.0, 3.0);
    let xv = f64s(&x);
    let axes_cases: [Option<Vec<i64>>; 6] = [
        Some(vec![-1]),
        Some(vec![0]),
        Some(vec![1]),
        Some(vec![0, 2]),
        Some(vec![1, 2]),
        None,
    ];
    for kind in [ReduceKind::Sum, ReduceKind::Mean, ReduceKind::Max] {
        for axes in &axes_cases {
            for keepdims in [true, false] {
                let red: Vec<usize> = match axes {
                    Some(a) => a
                        .iter()
                        .map(|&v| if v < 0 { (v + 3) as usize } else { v as usize })
                        .collect(),
                    None => vec![0, 1, 2],
                };
                let kshape: Vec<usize> = (0..3)
                    .map(|i| if red.contains(&i) { 1 } else { shape[i] })
                    .collect();
                let n: usize = kshape.iter().product();
                let mut acc = vec![
                    if kind == ReduceKind::Max {
                        f64::MIN
                    } else {
                        0.0
                    };
                    n
                ];
                let mut cnt = vec![0usize; n];
                for (i, &v) in xv.iter().enumerate() {
                    let idx = unravel(i, &shape);
                    let kidx: Vec<usize> = (0..3)
                        .map(|d| if red.contains(&d) { 0 } else { idx[d] })
                        .collect();
                    let o = kidx
                        .iter()
                        .zip(shape_strides(&kshape))
                        .map(|(a, b)| a * b)
                        .sum::<usize>();
                    acc[o] = if kind == ReduceKind::Max {
                        acc[o].max(v)
                    } else {
                        acc[o] + v
                    };
                    cnt[o] += 1;
                }
                if kind == ReduceKind::Mean {
                    for (a, c) in acc.iter_mut().zip(&cnt) {
                        *a /= *c as f64;
                    }
                }
                let y = run_op(
                    Op::Reduce {
                        kind,
                        axes: axes.clone(),
                        keepdims,
                    },
                    &[("x", &x, false)],
                );
                let want_shape: Vec<usize> = if keepdims {
                    kshape.clone()
                } else {
                    (0..3)
                        .filter(|i| !red.contains(i))
                        .map(|i| shape[i])
                        .collect()
                };
                assert_eq!(y.shape(), want_shape.as_slice());
                assert_close(
                    &y.to_f32_vec(),
                    &acc,
                    1e-5,
                    1e-5,
                    &format!("{kind:?} {axes:?}"),
                );
            }
        }
    }
}

#[test]
fn pools() {
    let mut rng = Rng::new(9);
    let x = rng.tensor(&[2, 3, 5, 6], -2.0, 2.0);
    let xv = f64s(&x);
    let y = run_op(Op::GlobalAveragePool, &[("x", &x, false)]);
    assert_eq!(y.shape(), &[2, 3, 1, 1]);
    let want: Vec<f64> = xv
        .chunks(30)
        .map(|c| c.iter().sum::<f64>() / 30.0)
        .collect();
    assert_close(&y.to_f32_vec(), &want, 1e-6, 1e-6, "gap");
    let y = run_op(Op::GlobalMaxPool, &[("x", &x, false)]);
    let want: Vec<f64> = xv
        .chunks(30)
        .map(|c| c.iter().cloned().fold(f64::MIN, f64::max))
        .collect();
    assert_close(&y.to_f32_vec(), &want, 0.0, 0.0, "gmp");
    for (max, include, ceil) in [
        (true, false, false),
        (false, false, false),
        (false, true, false),
        (true, false, true),
        (false, false, true),
    ] {
        let attrs = PoolAttrs {
            kernel_shape: vec![3, 2],
            strides: vec![2, 2],
            pads: vec![1, 0, 1, 1],
            count_include_pad: include,
            ceil_mode: ceil,
            ..Default::default()
        };
        let (h, w, kh, kw, sh, sw, pt, pl, pb, pr) = (5usize, 6usize, 3, 2, 2, 2, 1, 0, 1, 1);
        let span = |len: usize, k: usize, s: usize, p: usize| {
            let f = (len + p - k) as f64 / s as f64;
            if ceil {
                f.ceil() as usize + 1
            } else {
                f.floor() as usize + 1
            }
        };
        let mut oh = span(h, kh, sh, pt + pb);
        let mut ow = span(w, kw, sw, pl + pr);
        if ceil && (oh - 1) * sh >= h + pt {
            oh -= 1;
        }
        if ceil && (ow - 1) * sw >= w + pl {
            ow -= 1;
        }
        let mut want = Vec::new();
        for c in 0..6 {
            for i in 0..oh {
                for j in 0..ow {
                    let (mut acc, mut n, mut np) = (if max { f64::MIN } else { 0.0 }, 0, 0);
                    for ki in 0..kh {
                        for kj in 0..kw {
                            let ih = (i * sh + ki) as isize - pt as isize;
                            let iw = (j * sw + kj) as isize - pl as isize;
                            if ih < (h + pb) as isize && iw < (w + pr) as isize {
                                np += 1;
                            }
                            if ih < 0 || iw < 0 || ih >= h as isize || iw >= w as isize {
                                continue;
                            }
                            let v = xv[c * 30 + ih as usize * w + iw as usize];
                            acc = if max { acc.max(v) } else { acc + v };
                            n += 1;
                        }
                    }
                    want.push(if max {
                        acc
                    } else if include {
                        acc / np as f64
                    } else {
                        acc / n as f64
                    });
                }
            }
        }
        let op = if max {
            Op::MaxPool(attrs)
        } else {
            Op::AveragePool(attrs)
        };
        let y = run_op(op, &[("x", &x, false)]);
        assert_eq!(
            y.shape(),
            &[2, 3, oh, ow],
            "max={max} include={include} ceil={ceil}"
        );
        assert_close(
            &y.to_f32_vec(),
            &want,
            1e-6,
            1e-6,
            &format!("pool max={max} include={include} ceil={ceil}"),
        );
    }
}

#[test]
fn gather_embeddings_and_axes() {
    let mut rng = Rng::new(10);
    let table = rng.tensor(&[6, 4], -1.0, 1.0);
    let ids = Tensor::from_i64(&[2, 3], &[0, 5, 2, -1, 3, 3]).unwrap();
    let y = run_op(
        Op::Gather { axis: 0 },
        &[("t", &table, true), ("ids", &ids, false)],
    );
    assert_eq!(y.shape(), &[2, 3, 4]);
    let tv = table.to_f32_vec();
    let want: Vec<f32> = [0usize, 5, 2, 5, 3, 3]
        .iter()
        .flat_map(|&r| tv[r * 4..r * 4 + 4].to_vec())
        .collect();
    assert_eq!(y.to_f32_vec(), want);
    let idx = Tensor::from_i32(&[2], &[3, 0]).unwrap();
    let y = run_op(
        Op::Gather { axis: 1 },
        &[("t", &table, false), ("i", &idx, false)],
    );
    assert_eq!(y.shape(), &[6, 2]);
    let want: Vec<f32> = (0..6).flat_map(|r| [tv[r * 4 + 3], tv[r * 4]]).collect();
    assert_eq!(y.to_f32_vec(), want);
    let bad = Tensor::from_i64(&[1], &[6]).unwrap();
    let e = run_op_typed(
        Op::Gather { axis: 0 },
        &[("t", &table, true), ("ids", &bad, false)],
        mixprec::kernels::FloatType::F32,
    )
    .unwrap_err();
    assert!(matches!(e, GraphError::Runtime { .. }), "{e}");
}

#[test]
fn equal_where_cast() {
    let a = Tensor::from_i64(&[2, 3], &[1, 2, 3, 4, 5, 6]).unwrap();
    let b = Tensor::from_i64(&[3], &[1, 5, 6]).unwrap();
    let e = run_op(Op::Equal, &[("a", &a, false), ("b", &b, false)]);
    assert_eq!(e.dtype(), DType::Bool);
    assert_eq!(e.as_bool_bytes().unwrap(), &[1, 0, 0, 0, 1, 1]);
    let x = Tensor::from_f32(&[2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
    let y = Tensor::from_f32(&[1], vec![-1.0]).unwrap();
    let w = run_op(
        Op::Where,
        &[("c", &e, false), ("x", &x, false), ("y", &y, false)],
    );
    assert_eq!(w.to_f32_vec(), vec![1.0, -1.0, -1.0, -1.0, 5.0, 6.0]);
    let f = Tensor::from_f32(&[4], vec![1.7, -2.5, 0.0, 3.0e9]).unwrap();
    let c = run_op(Op::Cast { to: DType::I64 }, &[("x", &f, false)]);
    assert_eq!(c.as_i64().unwrap(), &[1, -2, 0, 3_000_000_000]);
    let c = run_op(Op::Cast { to: DType::Bool }, &[("x", &f, false)]);
    assert_eq!(c.as_bool_bytes().unwrap(), &[1, 1, 0, 1]);
    let c = run_op(Op::Cast { to: DType::Bf16 }, &[("x", &f, false)]);
    assert_eq!(c.dtype(), DType::Bf16);
    assert_eq!(c.to_f32_vec()[0], half::bf16::from_f32(1.7).to_f32());
    let c = run_op(Op::Cast { to: DType::F32 }, &[("x", &a, false)]);
    assert_eq!(c.to_f32_vec(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
}

fn iota(shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_f32(shape, (0..n).map(|i| i as f32).collect::<Vec<_>>()).unwrap()
}

#[test]
fn shape_ops() {
    let x = iota(&[2, 3, 4]);
    let s = Tensor::vec_i64(&[0, -1, 2]);
    let y = run_op(
        Op::Reshape { allowzero: false },
        &[("x", &x, false), ("s", &s, true)],
    );
    assert_eq!(y.shape(), &[2, 6, 2]);
    assert_eq!(y.to_f32_vec(), x.to_f32_vec());
    // A run-time shape (not an initializer) works too.
    let y = run_op(
        Op::Reshape { allowzero: false },
        &[("x", &x, false), ("s", &s, false)],
    );
    assert_eq!(y.shape(), &[2, 6, 2]);

    let y = run_op(
        Op::Transpose {
            perm: Some(vec![2, 0, 1]),
        },
        &[("x", &x, false)],
    );
    assert_eq!(y.shape(), &[4, 2, 3]);
    let xv = x.to_f32_vec();
    let yv = y.to_f32_vec();
    for i in 0..4 {
        for j in 0..2 {
            for k in 0..3 {
                assert_eq!(yv[(i * 2 + j) * 3 + k], xv[(j * 3 + k) * 4 + i]);
            }
        }
    }
    let y = run_op(Op::Transpose { perm: None }, &[("x", &x, false)]);
    assert_eq!(y.shape(), &[4, 3, 2]);

    let y = run_op(Op::Flatten { axis: 2 }, &[("x", &x, false)]);
    assert_eq!(y.shape(), &[6, 4]);
    let y = run_op(Op::Unsqueeze { axes: vec![0, -1] }, &[("x", &x, false)]);
    assert_eq!(y.shape(), &[1, 2, 3, 4, 1]);
    let y = run_op(Op::Squeeze { axes: None }, &[("x", &y, false)]);
    assert_eq!(y.shape(), &[2, 3, 4]);

    let z = iota(&[2, 1, 4]);
    let y = run_op(
        Op::Concat { axis: 1 },
        &[("x", &x, false), ("z", &z, false)],
    );
    assert_eq!(y.shape(), &[2, 4, 4]);
    let yv = y.to_f32_vec();
    assert_eq!(&yv[0..12], &xv[0..12]);
    assert_eq!(&yv[12..16], &[0.0, 1.0, 2.0, 3.0]);
    assert_eq!(&yv[16..28], &xv[12..24]);

    // Slice: clamped ends, negative starts and steps.
    let starts = Tensor::vec_i64(&[-1, 0]);
    let ends = Tensor::vec_i64(&[i64::MIN, 100]);
    let axes = Tensor::vec_i64(&[2, 1]);
    let steps = Tensor::vec_i64(&[-2, 2]);
    let y = run_op(
        Op::Slice,
        &[
            ("x", &x, false),
            ("s", &starts, true),
            ("e", &ends, true),
            ("a", &axes, true),
            ("p", &steps, true),
        ],
    );
    assert_eq!(y.shape(), &[2, 2, 2]);
    let mut want = Vec::new();
    for i in 0..2 {
        for j in [0, 2] {
            for k in [3, 1] {
                want.push(xv[(i * 3 + j) * 4 + k]);
            }
        }
    }
    assert_eq!(y.to_f32_vec(), want);
    let y = run_op(
        Op::Slice,
        &[
            ("x", &x, false),
            ("s", &Tensor::vec_i64(&[1]), false),
            ("e", &Tensor::vec_i64(&[3]), false),
            ("a", &Tensor::vec_i64(&[-1]), false),
        ],
    );
    assert_eq!(y.shape(), &[2, 3, 2]);

    let e = iota(&[3, 1]);
    let y = run_op(
        Op::Expand,
        &[("x", &e, false), ("s", &Tensor::vec_i64(&[2, 1, 4]), true)],
    );
    assert_eq!(y.shape(), &[2, 3, 4]);
    assert_eq!(
        y.to_f32_vec()[..8],
        [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    );

    let y = run_op(
        Op::Shape {
            start: 1,
            end: None,
        },
        &[("x", &x, false)],
    );
    assert_eq!(y.as_i64().unwrap(), &[3, 4]);
    let y = run_op(Op::Identity, &[("x", &x, false)]);
    assert_eq!(y.to_f32_vec(), xv);
    let c = Tensor::from_i32(&[2], &[7, 8]).unwrap();
    let y = run_op(Op::Constant { value: Arc::new(c) }, &[]);
    assert_eq!(y.as_i32().unwrap(), &[7, 8]);
}

#[test]
fn shape_subgraph_with_symbolic_batch_runs() {
    // x: [batch, 4, 3] -> Shape -> Gather(0) -> Unsqueeze -> Concat([-1]) -> Reshape: [batch, 12].
    use mixprec::graph::{Dim, GraphBuilder, PrecisionPlan};
    let mut g = GraphBuilder::new();
    let x = g.input("x", &[Dim::sym("batch"), 4.into(), 3.into()], DType::F32);
    let s = g
        .node1(
            "shape",
            Op::Shape {
                start: 0,
                end: None,
            },
            &[x],
        )
        .unwrap();
    let zero = g.initializer("zero", Tensor::from_i64(&[], &[0]).unwrap());
    let b = g.node1("b", Op::Gather { axis: 0 }, &[s, zero]).unwrap();
    let b1 = g
        .node1("b1", Op::Unsqueeze { axes: vec![0] }, &[b])
        .unwrap();
    let m1 = g.initializer("m1", Tensor::vec_i64(&[-1]));
    let target = g
        .node1("target", Op::Concat { axis: 0 }, &[b1, m1])
        .unwrap();
    let y = g
        .node1("y", Op::Reshape { allowzero: false }, &[x, target])
        .unwrap();
    g.output(y);
    let graph = g.finish().unwrap();
    assert_eq!(graph.value(y).shape.len(), 2);
    let model = graph.compile(&PrecisionPlan::new()).unwrap();
    for batch in [1, 5] {
        let xt = iota(&[batch, 4, 3]);
        let out = model.run(&[("x", &xt)]).unwrap();
        assert_eq!(out["y"].shape(), &[batch, 12]);
        assert_eq!(out["y"].to_f32_vec(), xt.to_f32_vec());
    }
}

#[test]
fn shape_subgraph_on_fixed_shapes_folds_at_build() {
    use mixprec::graph::{Dim, GraphBuilder, PrecisionPlan};
    let mut g = GraphBuilder::new();
    let x = g.input("x", &fixed(&[2, 4, 3]), DType::F32);
    let s = g
        .node1(
            "shape",
            Op::Shape {
                start: 0,
                end: Some(1),
            },
            &[x],
        )
        .unwrap();
    let m1 = g.initializer("m1", Tensor::vec_i64(&[-1]));
    let target = g.node1("target", Op::Concat { axis: 0 }, &[s, m1]).unwrap();
    let y = g
        .node1("y", Op::Reshape { allowzero: false }, &[x, target])
        .unwrap();
    g.output(y);
    let graph = g.finish().unwrap();
    assert_eq!(
        graph.known_value(target).unwrap().as_i64().unwrap(),
        &[2, -1]
    );
    assert_eq!(graph.value(y).shape, vec![Dim::Fixed(2), Dim::Fixed(12)]);
    let model = graph.compile(&PrecisionPlan::new()).unwrap();
    // Only the reshape runs: the shape arithmetic was folded.
    assert_eq!(model.num_steps(), 1);
    let xt = iota(&[2, 4, 3]);
    assert_eq!(model.run(&[("x", &xt)]).unwrap()["y"].shape(), &[2, 12]);
}

/// Every permutation of a rank-4 tensor with odd sizes (tiles of the
/// transpose path end part-way), for 4- and 2-byte elements, against the
/// definition `y[i0, i1, i2, i3] = x[..]` with `x`'s axis `perm[k]` at `ik`.
#[test]
fn transpose_matches_the_definition_for_every_perm() {
    let shape = [3usize, 17, 5, 19];
    let n: usize = shape.iter().product();
    let xf: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let x32 = Tensor::from_f32(&shape, &xf).unwrap();
    let xbf: Vec<half::bf16> = (0..n)
        .map(|i| half::bf16::from_f32((i % 256) as f32))
        .collect();
    let x16 = Tensor::from_bf16(&shape, &xbf).unwrap();
    let st = [
        shape[1] * shape[2] * shape[3],
        shape[2] * shape[3],
        shape[3],
        1,
    ];
    let mut perms = Vec::new();
    for a in 0..4 {
        for b in 0..4 {
            for c in 0..4 {
                for d in 0..4 {
                    let p = [a, b, c, d];
                    if (0..4).all(|v| p.contains(&v)) {
                        perms.push(p);
                    }
                }
            }
        }
    }
    assert_eq!(perms.len(), 24);
    for p in perms {
        for x in [&x32, &x16] {
            let y = run_op(
                Op::Transpose {
                    perm: Some(p.to_vec()),
                },
                &[("x", x, false)],
            );
            let out: Vec<usize> = p.iter().map(|&a| shape[a]).collect();
            assert_eq!(y.shape(), &out[..], "{p:?}");
            let (xv, yv) = (x.to_f32_vec(), y.to_f32_vec());
            let mut o = 0;
            for i0 in 0..out[0] {
                for i1 in 0..out[1] {
                    for i2 in 0..out[2] {
                        for i3 in 0..out[3] {
                            let src = i0 * st[p[0]] + i1 * st[p[1]] + i2 * st[p[2]] + i3 * st[p[3]];
                            assert_eq!(yv[o], xv[src], "{p:?} {:?} at {o}", y.dtype());
                            o += 1;
                        }
                    }
                }
            }
        }
    }
}
