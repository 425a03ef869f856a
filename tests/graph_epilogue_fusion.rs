//! A Relu after a Gemm, MatMul or Conv runs in the GEMM's epilogue
//! (`CompileOptions::keep_all_steps` off, the default) and gives the
//! same bits as the separate Relu step in f32, bf16 and f16 plans, including
//! values that overflow f16; a Relu whose input is read elsewhere or is a
//! graph output stays a step of its own. A GELU, and a Mul by a scalar
//! constant after a MatMul, fold only where the GEMM's output is f32, with
//! the same bits.

mod graph_common;

use graph_common::{Rng, bits_and_steps, fixed};
use mixprec::graph::{
    CompileOptions, ConvAttrs, DType, Graph, GraphBuilder, PrecisionPlan, Tensor,
};
use mixprec::kernels::FloatType;

/// `r1 = Relu(Conv c1)` (c1 overflows f16); Conv -> Relu -> Flatten ->
/// Linear -> Relu -> MatMul -> Relu -> `y`; `z = Relu(c2) + c2` (c2 read
/// twice); `r = Relu(g2)` with `g2` also a graph output.
fn graph(rng: &mut Rng) -> Graph {
    let mut g = GraphBuilder::new();
    let x = g.input("x", &fixed(&[2, 3, 6, 6]), DType::F32);
    let attrs = ConvAttrs {
        pads: vec![1, 1, 1, 1],
        ..Default::default()
    };
    let (w1, b1) = big_conv();
    let c1 = g.conv("c1", x, &w1, Some(&b1), attrs.clone()).unwrap();
    let r1 = g.relu("r1", c1).unwrap();
    g.output(r1);
    let w0 = rng.tensor(&[4, 3, 3, 3], -1.0, 1.0);
    let c0 = g.conv("c0", x, &w0, None, attrs).unwrap();
    let r0 = g.relu("r0", c0).unwrap();
    let f = g.reshape("f", r0, &[2, 144]).unwrap();
    let w2 = rng.tensor(&[5, 144], -0.01, 0.01);
    let b2 = rng.tensor(&[5], -1.0, 1.0);
    let g1 = g.linear("g1", f, &w2, Some(&b2)).unwrap();
    let r2 = g.relu("r2", g1).unwrap();
    let w3 = g.initializer("w3", rng.tensor(&[5, 7], -1.0, 1.0));
    let m1 = g.matmul("m1", r2, w3).unwrap();
    let y = g.relu("y", m1).unwrap();
    g.output(y);
    let w4 = rng.tensor(&[2, 3, 1, 1], -1.0, 1.0);
    let c2 = g.conv("c2", x, &w4, None, ConvAttrs::default()).unwrap();
    let r3 = g.relu("r3", c2).unwrap();
    let z = g.add("z", r3, c2).unwrap();
    g.output(z);
    let w5 = rng.tensor(&[3, 144], -0.01, 0.01);
    let g2 = g.linear("g2", f, &w5, None).unwrap();
    g.output(g2);
    let r = g.relu("r", g2).unwrap();
    g.output(r);
    g.finish().unwrap()
}

/// Conv c1's parameters: weights up to 5000, so that with inputs up to 4
/// many sums pass f16's 65504 in both signs.
fn big_conv() -> (Tensor, Tensor) {
    let mut rng = Rng::new(11);
    (
        rng.tensor(&[4, 3, 3, 3], -5000.0, 5000.0),
        rng.tensor(&[4], -1.0, 1.0),
    )
}

/// The outputs' bits and the steps of `op_types` that ran, with the GEMM
/// folds on (`unfused` false) or off.
fn run(
    g: &Graph,
    ty: FloatType,
    unfused: bool,
    x: &Tensor,
    op_types: &[&str],
) -> (Vec<(String, Vec<u32>)>, Vec<String>) {
    let options = CompileOptions {
        keep_all_steps: unfused,
        ..Default::default()
    };
    bits_and_steps(g, ty, &options, &[("x", x)], op_types)
}

#[test]
fn fused_relu_gives_the_same_bits_in_every_plan() {
    let mut rng = Rng::new(7);
    let g = graph(&mut rng);
    let x = rng.tensor(&[2, 3, 6, 6], -4.0, 4.0);
    for ty in [FloatType::F32, FloatType::Bf16, FloatType::F16] {
        let (fused, fused_relus) = run(&g, ty, false, &x, &["Relu"]);
        let (unfused, unfused_relus) = run(&g, ty, true, &x, &["Relu"]);
        assert_eq!(fused, unfused, "{ty:?}");
        assert_eq!(unfused_relus, ["r1", "r0", "r2", "y", "r3", "r"], "{ty:?}");
        // r3's input is also read by z; r's input is a graph output.
        assert_eq!(fused_relus, ["r3", "r"], "{ty:?}");
        let y = &fused.iter().find(|(k, _)| k == "y").unwrap().1;
        assert!(y.iter().any(|&b| f32::from_bits(b) > 0.0), "{ty:?}");
        assert!(y.iter().any(|&b| f32::from_bits(b) == 0.0), "{ty:?}");
    }
    // The first Conv alone in f16 does overflow to both infinities, so the
    // fused Relu met -inf (to +0) and +inf (kept).
    let mut b = GraphBuilder::new();
    let xv = b.input("x", &fixed(&[2, 3, 6, 6]), DType::F32);
    let (w1, b1) = big_conv();
    let attrs = ConvAttrs {
        pads: vec![1, 1, 1, 1],
        ..Default::default()
    };
    let c1 = b.conv("c1", xv, &w1, Some(&b1), attrs).unwrap();
    b.output(c1);
    let conv = b.finish().unwrap();
    let model = conv
        .compile(&PrecisionPlan::all(&conv, FloatType::F16))
        .unwrap();
    let c1 = model.run(&[("x", &x)]).unwrap().remove("c1").unwrap();
    let c1 = c1.to_f32_vec();
    assert!(c1.contains(&f32::INFINITY) && c1.contains(&f32::NEG_INFINITY));
}

/// `ge = Gelu(Linear g1)`; `r = Relu(MatMul m1 * 0.3711)` (a rank-0
/// constant); `s1 = MatMul m2 * c` with `c` of shape [1] (not a scalar, so
/// never folded); `z = Gelu(g2) + g2` (g2 read twice); `gr =
/// Gelu(Reshape(Linear g3))` (folded through the Reshape).
fn gelu_scale_graph(rng: &mut Rng) -> Graph {
    let mut g = GraphBuilder::new();
    let x = g.input("x", &fixed(&[6, 8]), DType::F32);
    let w1 = rng.tensor(&[16, 8], -1.0, 1.0);
    let b1 = rng.tensor(&[16], -0.5, 0.5);
    let g1 = g.linear("g1", x, &w1, Some(&b1)).unwrap();
    let ge = g.gelu("ge", g1).unwrap();
    g.output(ge);
    let w2 = g.initializer("w2", rng.tensor(&[16, 5], -1.0, 1.0));
    let m1 = g.matmul("m1", ge, w2).unwrap();
    let c0 = g.initializer("c0", Tensor::scalar_f32(0.3711));
    let sc = g.mul("sc", m1, c0).unwrap();
    let r = g.relu("r", sc).unwrap();
    g.output(r);
    let w3 = g.initializer("w3", rng.tensor(&[16, 5], -1.0, 1.0));
    let m2 = g.matmul("m2", ge, w3).unwrap();
    let c1 = g.initializer("c1", Tensor::from_f32(&[1], [0.3711]).unwrap());
    let s1 = g.mul("s1", c1, m2).unwrap();
    g.output(s1);
    let w4 = rng.tensor(&[4, 8], -1.0, 1.0);
    let g2 = g.linear("g2", x, &w4, None).unwrap();
    let ge2 = g.gelu("ge2", g2).unwrap();
    let z = g.add("z", ge2, g2).unwrap();
    g.output(z);
    let w5 = rng.tensor(&[6, 8], -1.0, 1.0);
    let g3 = g.linear("g3", x, &w5, None).unwrap();
    let g3r = g.reshape("g3r", g3, &[3, 2, 6]).unwrap();
    let gr = g.gelu("gr", g3r).unwrap();
    g.output(gr);
    g.finish().unwrap()
}

#[test]
fn gelu_and_scalar_mul_fold_only_after_f32_output() {
    let mut rng = Rng::new(19);
    let g = gelu_scale_graph(&mut rng);
    let x = rng.tensor(&[6, 8], -2.0, 2.0);
    let followers = ["Gelu", "Mul", "Relu"];
    for ty in [FloatType::F32, FloatType::Bf16, FloatType::F16] {
        let (fused, fused_steps) = run(&g, ty, false, &x, &followers);
        let (unfused, unfused_steps) = run(&g, ty, true, &x, &followers);
        assert_eq!(fused, unfused, "{ty:?}");
        let all = ["ge", "sc", "r", "s1", "ge2", "gr"];
        assert_eq!(unfused_steps, all, "{ty:?}");
        // In bf16/f16 the GEMM's output is rounded before the GELU or the
        // Mul would see it, so they stay (and the Relu then follows a Mul).
        let kept: &[&str] = match ty {
            FloatType::F32 => &["s1", "ge2"],
            _ => &all,
        };
        assert_eq!(fused_steps, kept, "{ty:?}");
        let r = &fused.iter().find(|(k, _)| k == "r").unwrap().1;
        assert!(r.iter().any(|&b| f32::from_bits(b) > 0.0), "{ty:?}");
        assert!(r.iter().any(|&b| f32::from_bits(b) == 0.0), "{ty:?}");
    }
}

/// `y = Relu(Conv c1 + x)` (32 channels: the blocked tiles on AVX-512);
/// `z = x2 + Conv c3` (residual first, no Relu; c3 reads a Relu'd conv);
/// `u = Conv c4 + x3` over 3 channels (another kernel path, same fold);
/// `v = Conv c5 + per-channel shift` (a broadcast: stays an Add); `w =
/// Conv c6 + c6` (one value twice: stays); `t = Conv c7 + Conv c8`.
fn residual_graph(rng: &mut Rng) -> Graph {
    let mut g = GraphBuilder::new();
    let x = g.input("x", &fixed(&[2, 32, 7, 9]), DType::F32);
    let same = ConvAttrs {
        pads: vec![1, 1, 1, 1],
        ..Default::default()
    };
    let w1 = rng.tensor(&[32, 32, 3, 3], -0.2, 0.2);
    let b1 = rng.tensor(&[32], -1.0, 1.0);
    let c1 = g.conv("c1", x, &w1, Some(&b1), same.clone()).unwrap();
    let a1 = g.add("a1", c1, x).unwrap();
    let y = g.relu("y", a1).unwrap();
    g.output(y);
    let w2 = rng.tensor(&[32, 32, 1, 1], -0.2, 0.2);
    let c2 = g.conv("c2", x, &w2, None, ConvAttrs::default()).unwrap();
    let x2 = g.relu("x2", c2).unwrap();
    let w3 = rng.tensor(&[32, 32, 3, 3], -0.2, 0.2);
    let c3 = g.conv("c3", x2, &w3, None, same.clone()).unwrap();
    let z = g.add("z", x2, c3).unwrap();
    g.output(z);
    let x3 = g.input("x3", &fixed(&[2, 3, 7, 9]), DType::F32);
    let w4 = rng.tensor(&[3, 3, 3, 3], -0.5, 0.5);
    let b4 = rng.tensor(&[3], -1.0, 1.0);
    let c4 = g.conv("c4", x3, &w4, Some(&b4), same.clone()).unwrap();
    let u = g.add("u", c4, x3).unwrap();
    g.output(u);
    let w5 = rng.tensor(&[32, 32, 3, 3], -0.2, 0.2);
    let c5 = g.conv("c5", x, &w5, None, same.clone()).unwrap();
    let shift = g.initializer("shift", rng.tensor(&[1, 32, 1, 1], -1.0, 1.0));
    let v = g.add("v", c5, shift).unwrap();
    g.output(v);
    let c6 = g.conv("c6", x, &w5, None, same.clone()).unwrap();
    let w = g.add("w", c6, c6).unwrap();
    g.output(w);
    // `t = Conv c7 + Conv c8` with c7 first: the Add folds into c8, whose
    // residual c7 is ready (ResNet's downsampling block; folding into c7
    // would read c8 before it runs).
    let c7 = g.conv("c7", x, &w1, None, same.clone()).unwrap();
    let c8 = g.conv("c8", x, &w3, Some(&b1), same).unwrap();
    let t = g.add("t", c7, c8).unwrap();
    g.output(t);
    g.finish().unwrap()
}

#[test]
fn residual_adds_fold_into_f32_convs_with_the_same_bits() {
    let mut rng = Rng::new(23);
    let g = residual_graph(&mut rng);
    let x = rng.tensor(&[2, 32, 7, 9], -2.0, 2.0);
    let x3 = rng.tensor(&[2, 3, 7, 9], -2.0, 2.0);
    let inputs = [("x", &x), ("x3", &x3)];
    for ty in [FloatType::F32, FloatType::Bf16, FloatType::F16] {
        let steps = |unfused: bool| {
            let options = CompileOptions {
                keep_all_steps: unfused,
                ..Default::default()
            };
            bits_and_steps(&g, ty, &options, &inputs, &["Add", "Relu"])
        };
        let (fused, fused_steps) = steps(false);
        let (unfused, unfused_steps) = steps(true);
        assert_eq!(fused, unfused, "{ty:?}");
        assert_eq!(
            unfused_steps,
            ["a1", "y", "x2", "z", "u", "v", "w", "t"],
            "{ty:?}"
        );
        // In f32 the residual Adds fold, and y's Relu after a1's; a 16-bit
        // plan rounds the Conv before the Add, so nothing folds but the
        // Relu right after a Conv.
        let want: &[&str] = match ty {
            FloatType::F32 => &["v", "w"],
            _ => &["a1", "y", "z", "u", "v", "w", "t"],
        };
        assert_eq!(fused_steps, want, "{ty:?}");
        let y = &fused.iter().find(|(k, _)| k == "y").unwrap().1;
        assert!(y.iter().any(|&b| f32::from_bits(b) > 0.0), "{ty:?}");
        assert!(y.iter().any(|&b| f32::from_bits(b) == 0.0), "{ty:?}");
    }
}
