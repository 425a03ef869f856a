//! Compile keeps f32 Conv -> Conv activations in 16-channel blocks
//! (`CompiledModel::nchw16c_values`) where the kernel's channel-blocked
//! tiles run, and the outputs are the same bits as with every step kept
//! NCHW (`CompileOptions::keep_all_steps`): through residuals in either
//! layout under outputs in either, strided and pointwise Convs, a
//! 3-channel stem over channel planes, and values that a non-Conv step
//! or the caller reads (never blocked).

mod graph_common;

use graph_common::{Rng, bits_and_steps, fixed};
use mixprec::graph::{
    CompileOptions, ConvAttrs, DType, Graph, GraphBuilder, PoolAttrs, PrecisionPlan, Tensor,
};
use mixprec::kernels::conv::{Conv2dShape, takes_nchw16c};
use mixprec::kernels::gemm::Epilogue;
use mixprec::kernels::{FloatType, active_isa};

/// A ResNet-like graph; the comments say which values can stay blocked.
fn graph(rng: &mut Rng) -> Graph {
    let mut g = GraphBuilder::new();
    let same = ConvAttrs {
        pads: vec![1, 1, 1, 1],
        ..Default::default()
    };
    let down = ConvAttrs {
        pads: vec![1, 1, 1, 1],
        strides: vec![2, 2],
        ..Default::default()
    };
    let mut conv = |g: &mut GraphBuilder, name: &str, x, cin, cout, k, attrs: &ConvAttrs| {
        let w = rng.tensor(&[cout, cin, k, k], -0.3, 0.3);
        let b = rng.tensor(&[cout], -0.5, 0.5);
        g.conv(name, x, &w, Some(&b), attrs.clone()).unwrap()
    };
    // Stem: 3 channels (planes in, blocks out), 7x7 stride 2; s0 is read
    // by s1 only (blocked), s1 is a graph output (NCHW).
    let x3 = g.input("x3", &fixed(&[2, 3, 14, 18]), DType::F32);
    let stem = ConvAttrs {
        pads: vec![3, 3, 3, 3],
        strides: vec![2, 2],
        ..Default::default()
    };
    let c = conv(&mut g, "stem", x3, 3, 16, 7, &stem);
    let s0 = g.relu("s0", c).unwrap();
    let s1 = conv(&mut g, "s1", s0, 16, 16, 3, &same);
    g.output(s1);
    // r0 feeds c1 and is c2's residual; y2 feeds a strided 3x3 and a 1x1
    // stride-2 shortcut: r0, r1, y2 blocked.
    let x = g.input("x", &fixed(&[2, 16, 9, 11]), DType::F32);
    let c = conv(&mut g, "c0", x, 16, 32, 3, &same);
    let r0 = g.relu("r0", c).unwrap();
    let c = conv(&mut g, "c1", r0, 32, 32, 3, &same);
    let r1 = g.relu("r1", c).unwrap();
    let c = conv(&mut g, "c2", r1, 32, 32, 3, &same);
    let a = g.add("a2", c, r0).unwrap();
    let y2 = g.relu("y2", a).unwrap();
    // e = relu(c7(y2) + x): a blocked output over the graph's NCHW input as
    // its residual; e feeds c8, a graph output.
    let c = conv(&mut g, "c7", y2, 32, 16, 3, &same);
    let a = g.add("a7", c, x).unwrap();
    let e = g.relu("e", a).unwrap();
    let c8 = conv(&mut g, "c8", e, 16, 16, 3, &same);
    g.output(c8);
    // y4 = relu(c4(c3) + d) is a graph output, so c4 writes NCHW over the
    // blocked residual d; c3 (c4's image) stays blocked.
    let d = conv(
        &mut g,
        "d",
        y2,
        32,
        48,
        1,
        &ConvAttrs {
            strides: vec![2, 2],
            ..Default::default()
        },
    );
    let c = conv(&mut g, "c3", y2, 32, 48, 3, &down);
    let r3 = g.relu("r3", c).unwrap();
    let c = conv(&mut g, "c4", r3, 48, 48, 3, &same);
    let a = g.add("a4", c, d).unwrap();
    let y4 = g.relu("y4", a).unwrap();
    g.output(y4);
    // c5 (3x3 to 128) feeds a pointwise conv from 128 channels (blocked
    // tiles: r5 blocked); c6's output is read by a MaxPool (NCHW).
    let c = conv(&mut g, "c5", y4, 48, 128, 3, &same);
    let r5 = g.relu("r5", c).unwrap();
    let c6 = conv(&mut g, "c6", r5, 128, 32, 1, &ConvAttrs::default());
    let pool = PoolAttrs {
        kernel_shape: vec![2, 2],
        ..Default::default()
    };
    let p = g.pool("p", true, c6, pool).unwrap();
    g.output(p);
    g.finish().unwrap()
}

/// Whether the kernel takes NCHW16c at the active level (a 3x3 Conv of 16
/// channels to 16 stands for all the graph's).
fn blocks_here() -> bool {
    let shape = Conv2dShape {
        in_channels: 16,
        in_size: [9, 11],
        kernel: [3, 3],
        stride: [1, 1],
        dilation: [1, 1],
        pad_begin: [1, 1],
        out_size: [9, 11],
    };
    takes_nchw16c(active_isa(), &shape, 16, &Epilogue::default())
}

/// The graph (weights from `seed`) and its inputs `x3`, `x`.
fn graph_and_inputs(seed: u64) -> (Graph, Tensor, Tensor) {
    let mut rng = Rng::new(seed);
    let g = graph(&mut rng);
    let x3 = rng.tensor(&[2, 3, 14, 18], -2.0, 2.0);
    let x = rng.tensor(&[2, 16, 9, 11], -2.0, 2.0);
    (g, x3, x)
}

/// Compile options with every step kept (`true`) or the folds on.
fn options(keep_all_steps: bool) -> CompileOptions {
    CompileOptions {
        keep_all_steps,
        ..Default::default()
    }
}

#[test]
fn blocked_conv_activations_give_the_same_bits() {
    let (g, x3, x) = graph_and_inputs(5);
    let feeds = [("x3", &x3), ("x", &x)];
    for ty in [FloatType::F32, FloatType::Bf16] {
        let compile = |keep_all_steps: bool| {
            g.compile_with(&PrecisionPlan::all(&g, ty), &options(keep_all_steps))
                .unwrap()
        };
        let blocked: Vec<String> = compile(false).nchw16c_values().to_vec();
        let want: &[&str] = if ty == FloatType::F32 && blocks_here() {
            &["s0", "r0", "r1", "y2", "e", "d", "r3", "r5"]
        } else {
            &[]
        };
        assert_eq!(blocked, want, "{ty:?}");
        assert!(compile(true).nchw16c_values().is_empty());
        let run =
            |keep_all_steps: bool| bits_and_steps(&g, ty, &options(keep_all_steps), &feeds, &[]).0;
        let (folded, separate) = (run(false), run(true));
        assert_eq!(folded.len(), separate.len());
        for ((name, got), (other, want)) in folded.iter().zip(&separate) {
            assert_eq!((name, got.len()), (other, want.len()));
            let differ = got.iter().zip(want).filter(|(a, b)| a != b).count();
            assert_eq!(differ, 0, "{ty:?} {name}: {differ} of {} differ", got.len());
        }
        // The ReLUs zero some outputs and keep others: not a trivial match.
        for (name, bits) in &folded {
            assert!(bits.iter().any(|&b| f32::from_bits(b) > 0.0), "{name}");
        }
    }
}

/// Buffers handed back with `CompiledModel::recycle` (outputs of earlier
/// runs, or NaN-filled tensors of every intermediate's size) are written
/// over before they are read: the outputs keep their bits.
#[test]
fn recycled_buffers_give_the_same_bits() {
    let (g, x3, x) = graph_and_inputs(9);
    let feeds = [("x3", &x3), ("x", &x)];
    let bits = |out: &std::collections::HashMap<String, Tensor>| {
        let mut v: Vec<(String, Vec<u32>)> = out
            .iter()
            .map(|(k, t)| {
                (
                    k.clone(),
                    t.to_f32_vec().iter().map(|f| f.to_bits()).collect(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let model = g.compile(&PrecisionPlan::all(&g, FloatType::F32)).unwrap();
    let first = model.run(&feeds).unwrap();
    let want = bits(&first);
    model.recycle(first.into_values());
    let nan = |n: usize| Tensor::from_f32(&[n], vec![f32::NAN; n]).unwrap();
    model.recycle(
        [
            2 * 16 * 7 * 9,
            2 * 32 * 9 * 11,
            2 * 48 * 5 * 6,
            2 * 128 * 5 * 6,
        ]
        .map(nan),
    );
    for _ in 0..3 {
        let out = model.run(&feeds).unwrap();
        assert_eq!(bits(&out), want);
        model.recycle(out.into_values());
    }
}
