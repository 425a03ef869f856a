//! How the GEMM-family nodes of a bf16 plan multiply (`CompileOptions::bf16_gemm`),
//! the f32 bias of a low-precision Conv, and bf16/f16 weights packed widened.
//!
//! `VDPBF16PS` reads subnormal bf16 operands as zero; the exact widening
//! does not. A subnormal activation times a huge weight gives a normal
//! product, so the output shows which instruction ran: 0 under
//! `GemmAccumulation::Auto` on a CPU with AVX512_BF16, the product under
//! `WidenToF32` (and under `Auto` on any other CPU).

mod graph_common;

use graph_common::{Rng, fixed};
use mixprec::graph::{
    CompileOptions, ConvAttrs, DType, Dim, GemmAccumulation, GraphBuilder, PrecisionPlan, Tensor,
};
use mixprec::kernels::gemm::Accumulation;
use mixprec::kernels::{FloatType, Isa, active_isa};

/// 2^-130: subnormal in f32 and exactly representable as a bf16 subnormal.
const TINY: f32 = f32::from_bits(1 << 19);
/// 2^100: the product TINY * HUGE = 2^-30 is a normal number.
const HUGE: f32 = f32::from_bits((127 + 100) << 23);

fn dot_instruction_here() -> bool {
    active_isa() >= Isa::Avx512CoreBf16
}

/// Compiles `g` under an all-`ty` plan with `mode` and runs it on `x`.
fn run(g: &mixprec::graph::Graph, ty: FloatType, mode: GemmAccumulation, x: &Tensor) -> Vec<f32> {
    let options = CompileOptions {
        bf16_gemm: mode,
        ..Default::default()
    };
    let model = g
        .compile_with(&PrecisionPlan::all(g, ty), &options)
        .unwrap();
    let mut out = model.run(&[("x", x)]).unwrap();
    out.remove("y").unwrap().to_f32_vec()
}

/// Checks the three graphs' outputs: all exactly 2^-30 unless the dot
/// instruction ran, which flushes the subnormal operand to 0.
fn check_flush(g: &mixprec::graph::Graph, x: &Tensor, what: &str) {
    let product = TINY * HUGE;
    assert_eq!(TINY, 2f32.powi(-130));
    assert_eq!(product, 2f32.powi(-30));
    let widened = run(g, FloatType::Bf16, GemmAccumulation::WidenToF32, x);
    assert!(widened.iter().all(|&v| v == product), "{what}: {widened:?}");
    let f32_plan = run(g, FloatType::F32, GemmAccumulation::Auto, x);
    assert!(
        f32_plan.iter().all(|&v| v == product),
        "{what}: {f32_plan:?}"
    );
    let auto = run(g, FloatType::Bf16, GemmAccumulation::Auto, x);
    let want = if dot_instruction_here() { 0.0 } else { product };
    assert!(auto.iter().all(|&v| v == want), "{what}: {auto:?}");
    assert_eq!(
        GemmAccumulation::Auto.resolve(DType::Bf16) == Accumulation::Bf16Dot,
        dot_instruction_here()
    );
}

#[test]
fn linear_with_packed_weights_follows_the_mode() {
    for m in [1, 3, 20] {
        let mut g = GraphBuilder::new();
        let x = g.input("x", &fixed(&[m, 6]), DType::F32);
        // Only the first input column meets a weight.
        let mut w = vec![0.0f32; 5 * 6];
        for o in 0..5 {
            w[o * 6] = HUGE;
        }
        let w = Tensor::from_f32(&[5, 6], w).unwrap();
        let y = g.linear("y", x, &w, None).unwrap();
        g.output(y);
        let g = g.finish().unwrap();
        let mut xv = vec![0.0f32; m * 6];
        for r in 0..m {
            xv[r * 6] = TINY;
        }
        check_flush(&g, &Tensor::from_f32(&[m, 6], xv).unwrap(), "linear");
    }
}

/// A 3-D weight is not packed: the batched MatMul path multiplies views.
#[test]
fn batched_matmul_follows_the_mode() {
    let mut g = GraphBuilder::new();
    let x = g.input("x", &fixed(&[2, 3, 4]), DType::F32);
    let w = g.initializer("w", Tensor::from_f32(&[1, 4, 5], vec![HUGE; 20]).unwrap());
    let y = g.matmul("y", x, w).unwrap();
    g.output(y);
    let g = g.finish().unwrap();
    let mut xv = vec![0.0f32; 24];
    for r in 0..6 {
        xv[r * 4 + 1] = TINY;
    }
    check_flush(&g, &Tensor::from_f32(&[2, 3, 4], xv).unwrap(), "matmul");
}

#[test]
fn conv_follows_the_mode() {
    let mut g = GraphBuilder::new();
    let x = g.input("x", &fixed(&[1, 2, 3, 3]), DType::F32);
    let w = Tensor::from_f32(&[4, 2, 1, 1], vec![HUGE; 8]).unwrap();
    let y = g.conv("y", x, &w, None, ConvAttrs::default()).unwrap();
    g.output(y);
    let g = g.finish().unwrap();
    let mut xv = vec![0.0f32; 18];
    xv[..9].fill(TINY);
    check_flush(&g, &Tensor::from_f32(&[1, 2, 3, 3], xv).unwrap(), "conv");
}

/// A grouped 3x3 Conv with 32 channels per group, which the kernel runs on
/// its channel-blocked tiles with weights compile packs once per group
/// (`PackedConvWeights`): the mode still decides the instruction, and each
/// group reads its own packed weights (the HUGE tap sits on a different
/// input channel in each).
#[test]
fn blocked_grouped_conv_follows_the_mode() {
    let (groups, per_group, out_channels) = (2, 32, 32);
    let in_channels = groups * per_group;
    let mut g = GraphBuilder::new();
    let x = g.input("x", &fixed(&[1, in_channels, 4, 5]), DType::F32);
    let mut w = vec![0.0f32; out_channels * per_group * 9];
    for o in 0..out_channels {
        // Group 0 multiplies its channel 3, group 1 its channel 7, at the
        // centre tap.
        let c = if o < out_channels / groups { 3 } else { 7 };
        w[(o * per_group + c) * 9 + 4] = HUGE;
    }
    let w = Tensor::from_f32(&[out_channels, per_group, 3, 3], w).unwrap();
    let attrs = ConvAttrs {
        pads: vec![1, 1, 1, 1],
        group: groups,
        ..Default::default()
    };
    let y = g.conv("y", x, &w, None, attrs).unwrap();
    g.output(y);
    let g = g.finish().unwrap();
    let mut xv = vec![0.0f32; in_channels * 20];
    xv[3 * 20..4 * 20].fill(TINY);
    xv[(per_group + 7) * 20..(per_group + 8) * 20].fill(TINY);
    check_flush(
        &g,
        &Tensor::from_f32(&[1, in_channels, 4, 5], xv).unwrap(),
        "blocked conv",
    );
}

/// A Conv bias that cancels a large product keeps its small remainder: the
/// bias joins the f32 accumulator instead of being rounded to the node's
/// dtype first (1000.25 is 1000 in bf16 and in f16).
#[test]
fn conv_bias_stays_f32_in_low_precision_plans() {
    let mut g = GraphBuilder::new();
    let x = g.input("x", &fixed(&[1, 1, 3, 3]), DType::F32);
    let w = Tensor::from_f32(&[1, 1, 2, 2], vec![-250.0; 4]).unwrap();
    let b = Tensor::from_f32(&[1], [1000.25]).unwrap();
    let attrs = ConvAttrs {
        kernel_shape: vec![2, 2],
        ..Default::default()
    };
    let y = g.conv("y", x, &w, Some(&b), attrs).unwrap();
    g.output(y);
    let g = g.finish().unwrap();
    let x = Tensor::from_f32(&[1, 1, 3, 3], vec![1.0; 9]).unwrap();
    for ty in [FloatType::F32, FloatType::Bf16, FloatType::F16] {
        for mode in [GemmAccumulation::Auto, GemmAccumulation::WidenToF32] {
            let out = run(&g, ty, mode, &x);
            assert_eq!(out, vec![0.25; 4], "{ty:?} {mode:?}");
        }
    }
}

#[test]
fn accumulation_never_applies_to_f32_or_f16_nodes() {
    for mode in [GemmAccumulation::Auto, GemmAccumulation::WidenToF32] {
        for dt in [DType::F32, DType::F16] {
            assert_eq!(mode.resolve(dt), Accumulation::F32);
        }
    }
    assert_eq!(
        GemmAccumulation::WidenToF32.resolve(DType::Bf16),
        Accumulation::F32
    );
}

/// A Linear and a MatMul over constant weights, on `batch` rows of 24.
fn two_layers(batch: Dim, rng: &mut Rng) -> mixprec::graph::Graph {
    let mut g = GraphBuilder::new();
    let x = g.input("x", &[batch, Dim::Fixed(24)], DType::F32);
    let w1 = rng.tensor(&[40, 24], -1.0, 1.0);
    let b1 = rng.tensor(&[40], -0.5, 0.5);
    let h = g.linear("h", x, &w1, Some(&b1)).unwrap();
    let w2 = g.initializer("w2", rng.tensor(&[40, 33], -1.0, 1.0));
    let y = g.matmul("y", h, w2).unwrap();
    g.output(y);
    g.finish().unwrap()
}

/// bf16/f16 weights that only ever meet more rows than the kernels stream
/// (a fixed batch of 37) are packed widened to f32; where the batch is
/// symbolic they keep their type. Widening is exact, so both give the
/// same bits (the kernel tests check every level; this, the active one).
#[test]
fn weights_widened_for_a_fixed_batch_give_the_same_bits() {
    let fixed_batch = two_layers(Dim::Fixed(37), &mut Rng::new(5));
    let any_batch = two_layers(Dim::Symbolic("n".into()), &mut Rng::new(5));
    let x = Rng::new(6).tensor(&[37, 24], -2.0, 2.0);
    for ty in [FloatType::Bf16, FloatType::F16] {
        let widened = run(&fixed_batch, ty, GemmAccumulation::WidenToF32, &x);
        let stored = run(&any_batch, ty, GemmAccumulation::WidenToF32, &x);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&widened), bits(&stored), "{ty:?}");
        assert!(widened.iter().any(|&v| v != 0.0), "{ty:?}");
    }
}
