//! A Transpose read only by a MatMul is folded into the MatMul's operand
//! strides (`CompileOptions::keep_all_steps` off, the default; f32 plans,
//! where no cast sits between): the same bits as the separate copy, with
//! batch broadcasting; a Transpose that moves the input's last axis (which
//! makes the operand column-major, or moves that axis out of the matrix),
//! or whose output is read twice, stays a step.

mod graph_common;

use graph_common::{Rng, bits_and_steps, fixed};
use mixprec::graph::{CompileOptions, DType, Graph, GraphBuilder, Tensor};
use mixprec::kernels::FloatType;

/// Attention-like products over `q`, `k`, `v` of shape [2, 5, 3, 4]
/// (batch, sequence, heads, head size) and a few other layouts.
fn graph() -> Graph {
    let mut g = GraphBuilder::new();
    let q = g.input("q", &fixed(&[2, 5, 3, 4]), DType::F32);
    let k = g.input("k", &fixed(&[2, 5, 3, 4]), DType::F32);
    let w = g.input("w", &fixed(&[4, 6]), DType::F32);
    let x = g.input("x", &fixed(&[4, 2, 6]), DType::F32);
    // scores[b, h] = q[b, :, h, :] k[b, :, h, :]^T: A rows, B columns contiguous.
    let qt = g.transpose("qt", q, &[0, 2, 1, 3]).unwrap();
    let kt = g.transpose("kt", k, &[0, 2, 3, 1]).unwrap();
    let scores = g.matmul("scores", qt, kt).unwrap();
    g.output(scores);
    // A transposed, B 2-D and transposed: broadcast over A's batch.
    let xt = g.transpose("xt", x, &[1, 0, 2]).unwrap();
    let wt = g.transpose("wt", w, &[1, 0]).unwrap();
    let y = g.matmul("y", xt, wt).unwrap();
    g.output(y);
    // Moves k's last axis out of the matrix ([4, 2, 3, 5]): not folded.
    let kz2 = g.transpose("kz2", k, &[3, 0, 2, 1]).unwrap();
    let ones = g.initializer("ones", Tensor::from_f32(&[5, 2], vec![0.5; 10]).unwrap());
    let z = g.matmul("z", kz2, ones).unwrap();
    g.output(z);
    // Read twice (by a MatMul and as an output): stays.
    let vt = g.transpose("vt", q, &[0, 2, 1, 3]).unwrap();
    g.output(vt);
    let u = g.matmul("u", scores, vt).unwrap();
    g.output(u);
    g.finish().unwrap()
}

fn run(
    g: &Graph,
    ty: FloatType,
    keep_all_steps: bool,
    feeds: &[(&str, &Tensor)],
) -> (Vec<(String, Vec<u32>)>, Vec<String>) {
    let options = CompileOptions {
        keep_all_steps,
        ..Default::default()
    };
    bits_and_steps(g, ty, &options, feeds, &["Transpose"])
}

#[test]
fn folded_transposes_give_the_same_bits_in_every_plan() {
    let g = graph();
    let mut rng = Rng::new(23);
    let q = rng.tensor(&[2, 5, 3, 4], -1.0, 1.0);
    let k = rng.tensor(&[2, 5, 3, 4], -1.0, 1.0);
    let w = rng.tensor(&[4, 6], -1.0, 1.0);
    let x = rng.tensor(&[4, 2, 6], -1.0, 1.0);
    let feeds = [("q", &q), ("k", &k), ("w", &w), ("x", &x)];
    for ty in [FloatType::F32, FloatType::Bf16, FloatType::F16] {
        let (folded, kept) = run(&g, ty, false, &feeds);
        let (steps, all) = run(&g, ty, true, &feeds);
        assert_eq!(folded, steps, "{ty:?}");
        let every = ["qt", "kt", "xt", "wt", "kz2", "vt"];
        assert_eq!(all, every, "{ty:?}");
        // In bf16/f16 plans the copy runs in f32 and a cast follows it, so
        // the MatMul does not read the Transpose.
        let want: &[&str] = match ty {
            FloatType::F32 => &["kt", "wt", "kz2", "vt"],
            _ => &every,
        };
        assert_eq!(kept, want, "{ty:?}");
    }
    // The products are the definition's (f64 reference on the f32 plan).
    let (folded, _) = run(&g, FloatType::F32, false, &feeds);
    let scores = &folded.iter().find(|(n, _)| n == "scores").unwrap().1;
    let (qv, kv) = (q.to_f32_vec(), k.to_f32_vec());
    let at =
        |t: &[f32], b: usize, s: usize, h: usize, d: usize| t[((b * 5 + s) * 3 + h) * 4 + d] as f64;
    for b in 0..2 {
        for h in 0..3 {
            for i in 0..5 {
                for j in 0..5 {
                    let want: f64 = (0..4)
                        .map(|d| at(&qv, b, i, h, d) * at(&kv, b, j, h, d))
                        .sum();
                    let got = f32::from_bits(scores[((b * 3 + h) * 5 + i) * 5 + j]) as f64;
                    assert!(
                        (got - want).abs() <= 1e-5,
                        "scores[{b},{h},{i},{j}] = {got}, want {want}"
                    );
                }
            }
        }
    }
}
