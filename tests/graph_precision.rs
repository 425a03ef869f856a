//! Each float op in bf16 and f16 plans. A low-precision node stores its
//! inputs in that type, computes in f32 and rounds its output once, so its
//! result must be the f32 result on the rounded inputs, rounded once:
//! within the unit roundoff u (2^-8 for bf16, 2^-11 for f16) relative,
//! plus a small absolute slack for f32 summation-order differences.

mod graph_common;

use graph_common::*;
use mixprec::graph::{Binary, ConvAttrs, Op, PoolAttrs, ReduceKind, Tensor, Unary};
use mixprec::kernels::FloatType;

fn rounded(t: &Tensor, ty: FloatType) -> Tensor {
    t.to_float_type(ty)
        .unwrap()
        .to_float_type(FloatType::F32)
        .unwrap()
}

/// Runs `op` in `ty` and checks it against f32 on inputs rounded to `ty`.
fn check(op: Op, inputs: &[(&str, &Tensor, bool)], what: &str) {
    check_keeping_f32(op, inputs, &[], what)
}

/// As [`check`], but the inputs named in `kept_f32` are not rounded: the
/// graph keeps them in f32 (the constant bias of a packed Gemm).
fn check_keeping_f32(op: Op, inputs: &[(&str, &Tensor, bool)], kept_f32: &[&str], what: &str) {
    for ty in [FloatType::Bf16, FloatType::F16] {
        let u = match ty {
            FloatType::Bf16 => 2f64.powi(-8),
            _ => 2f64.powi(-11),
        };
        let r: Vec<Tensor> = inputs
            .iter()
            .map(|(name, t, _)| {
                if t.dtype().is_float() && !kept_f32.contains(name) {
                    rounded(t, ty)
                } else {
                    (*t).clone()
                }
            })
            .collect();
        let rin: Vec<(&str, &Tensor, bool)> = inputs
            .iter()
            .zip(&r)
            .map(|((n, _, c), t)| (*n, t, *c))
            .collect();
        let want = run_op(op.clone(), &rin).to_f32_vec();
        let got = run_op_typed(op.clone(), inputs, ty).unwrap();
        assert_eq!(
            got.dtype(),
            mixprec::graph::DType::F32,
            "graph outputs stay f32"
        );
        let got = got.to_f32_vec();
        let scale = want.iter().fold(0f64, |m, &x| m.max((x as f64).abs()));
        let atol = 1e-6 * scale + 1e-7;
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            let err = (g as f64 - w as f64).abs();
            assert!(
                err <= u * 1.001 * (w as f64).abs() + atol,
                "{what} {ty:?}[{i}]: got {g}, want {w}"
            );
            // The output went through the low type: it is representable there.
            let back = match ty {
                FloatType::Bf16 => half::bf16::from_f32(g).to_f32(),
                _ => half::f16::from_f32(g).to_f32(),
            };
            assert!(
                back == g || g.is_nan(),
                "{what} {ty:?}[{i}]: {g} not representable"
            );
        }
    }
}

#[test]
fn elementwise_in_low_precision() {
    let mut rng = Rng::new(101);
    for f in [
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
    ] {
        let (lo, hi) = if matches!(f, Unary::Sqrt | Unary::Log | Unary::Reciprocal) {
            (0.1, 5.0)
        } else {
            (-4.0, 4.0)
        };
        let x = rng.tensor(&[5, 13], lo, hi);
        check(Op::Unary(f), &[("x", &x, false)], &format!("{f:?}"));
    }
    for f in [
        Binary::Add,
        Binary::Sub,
        Binary::Mul,
        Binary::Div,
        Binary::Max,
        Binary::Min,
        Binary::Pow,
    ] {
        let a = rng.tensor(&[3, 1, 7], 0.5, 2.0);
        let b = rng.tensor(&[4, 7], 0.5, 2.0);
        check(
            Op::Binary(f),
            &[("a", &a, false), ("b", &b, true)],
            &format!("{f:?}"),
        );
    }
}

#[test]
fn gemm_conv_in_low_precision() {
    let mut rng = Rng::new(102);
    let a = rng.tensor(&[2, 3, 9, 17], -1.0, 1.0);
    let b = rng.tensor(&[17, 11], -1.0, 1.0);
    check(
        Op::MatMul,
        &[("a", &a, false), ("b", &b, true)],
        "matmul packed",
    );
    let b3 = rng.tensor(&[3, 17, 5], -1.0, 1.0);
    check(
        Op::MatMul,
        &[("a", &a, false), ("b", &b3, false)],
        "matmul batched",
    );
    let x = rng.tensor(&[6, 10], -1.0, 1.0);
    let w = rng.tensor(&[7, 10], -1.0, 1.0);
    let c = rng.tensor(&[7], -1.0, 1.0);
    let cm = rng.tensor(&[6, 7], -1.0, 1.0);
    check_keeping_f32(
        Op::Gemm {
            alpha: 1.0,
            beta: 1.0,
            trans_a: false,
            trans_b: true,
        },
        &[("x", &x, false), ("w", &w, true), ("c", &c, true)],
        &["c"],
        "linear",
    );
    check(
        Op::Gemm {
            alpha: 0.5,
            beta: 2.0,
            trans_a: false,
            trans_b: true,
        },
        &[("x", &x, false), ("w", &w, false), ("c", &cm, false)],
        "gemm C matrix",
    );
    let xi = rng.tensor(&[2, 4, 6, 5], -1.0, 1.0);
    let wc = rng.tensor(&[6, 2, 3, 3], -1.0, 1.0);
    let bc = rng.tensor(&[6], -1.0, 1.0);
    let attrs = ConvAttrs {
        pads: vec![1, 1, 1, 1],
        group: 2,
        ..Default::default()
    };
    check_keeping_f32(
        Op::Conv(attrs),
        &[("x", &xi, false), ("w", &wc, true), ("b", &bc, true)],
        &["b"],
        "conv",
    );
}

#[test]
fn normalization_reduction_pooling_in_low_precision() {
    let mut rng = Rng::new(103);
    let x = rng.tensor(&[3, 4, 10], -3.0, 3.0);
    check(Op::Softmax { axis: -1 }, &[("x", &x, false)], "softmax");
    check(
        Op::Softmax { axis: 1 },
        &[("x", &x, false)],
        "softmax axis 1",
    );
    check(
        Op::LogSoftmax { axis: -1 },
        &[("x", &x, false)],
        "logsoftmax",
    );
    let g = rng.tensor(&[10], 0.5, 1.5);
    let b = rng.tensor(&[10], -0.5, 0.5);
    check(
        Op::LayerNormalization {
            axis: -1,
            epsilon: 1e-5,
        },
        &[("x", &x, false), ("g", &g, true), ("b", &b, true)],
        "layernorm",
    );
    check(
        Op::RmsNormalization {
            axis: -1,
            epsilon: 1e-5,
        },
        &[("x", &x, false), ("g", &g, true)],
        "rmsnorm",
    );
    for kind in [ReduceKind::Sum, ReduceKind::Mean, ReduceKind::Max] {
        check(
            Op::Reduce {
                kind,
                axes: Some(vec![0, 2]),
                keepdims: true,
            },
            &[("x", &x, false)],
            &format!("{kind:?}"),
        );
    }
    let xi = rng.tensor(&[2, 3, 7, 6], -2.0, 2.0);
    check(Op::GlobalAveragePool, &[("x", &xi, false)], "gap");
    check(Op::GlobalMaxPool, &[("x", &xi, false)], "gmp");
    let p = PoolAttrs {
        kernel_shape: vec![3, 3],
        strides: vec![2, 2],
        pads: vec![1, 1, 1, 1],
        ..Default::default()
    };
    check(Op::MaxPool(p.clone()), &[("x", &xi, false)], "maxpool");
    check(Op::AveragePool(p), &[("x", &xi, false)], "avgpool");
}
