//! Helpers shared by the graph tests: a seeded RNG, single-op graphs, comparisons.
#![allow(dead_code)]

use mixprec::graph::{CompileOptions, DType, Dim, Graph, GraphBuilder, Op, PrecisionPlan, Tensor};
use mixprec::kernels::FloatType;

/// xorshift64*: deterministic test data without extra dependencies.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }
    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
    pub fn tensor(&mut self, shape: &[usize], lo: f32, hi: f32) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_f32(shape, self.vec(n, lo, hi)).unwrap()
    }
}

pub fn fixed(shape: &[usize]) -> Vec<Dim> {
    shape.iter().map(|&d| Dim::Fixed(d)).collect()
}

/// Builds a one-node graph (`inputs` fed at run time, `consts` as
/// initializers, in op input order given by `order`), compiles it under an
/// all-`ty` plan and runs it.
pub fn run_op_typed(
    op: Op,
    inputs: &[(&str, &Tensor, bool)],
    ty: FloatType,
) -> Result<Tensor, mixprec::graph::GraphError> {
    let mut g = GraphBuilder::new();
    let mut ids = Vec::new();
    for (name, t, is_const) in inputs {
        ids.push(if *is_const {
            g.initializer(name, (*t).clone())
        } else {
            g.input(name, &fixed(t.shape()), t.dtype())
        });
    }
    let y = g.node1("op", op, &ids)?;
    g.output(y);
    let graph = g.finish()?;
    let model = graph.compile(&PrecisionPlan::all(&graph, ty))?;
    let feeds: Vec<(&str, &Tensor)> = inputs
        .iter()
        .filter(|i| !i.2)
        .map(|(n, t, _)| (*n, *t))
        .collect();
    let mut out = model.run(&feeds)?;
    Ok(out.remove("op").unwrap())
}

pub fn run_op(op: Op, inputs: &[(&str, &Tensor, bool)]) -> Tensor {
    run_op_typed(op, inputs, FloatType::F32).unwrap()
}

/// Asserts |got - want| <= atol + rtol * |want| elementwise (NaNs must match).
#[track_caller]
pub fn assert_close(got: &[f32], want: &[f64], rtol: f64, atol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if w.is_nan() {
            assert!(g.is_nan(), "{what}[{i}]: got {g}, want NaN");
            continue;
        }
        let err = (g as f64 - w).abs();
        assert!(
            err <= atol + rtol * w.abs(),
            "{what}[{i}]: got {g}, want {w} (err {err:e})"
        );
    }
}

/// max |a - b| / max |b|.
pub fn rel_max_err(a: &[f32], b: &[f32]) -> f64 {
    let scale = b
        .iter()
        .fold(0f64, |m, &x| m.max((x as f64).abs()))
        .max(1e-30);
    a.iter()
        .zip(b)
        .fold(0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()))
        / scale
}

pub fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_f32_vec().iter().map(|&x| x as f64).collect()
}

pub fn shape_strides(shape: &[usize]) -> Vec<usize> {
    let mut st = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        st[i] = st[i + 1] * shape[i + 1];
    }
    st
}

/// Multi-index of linear index `i` in `shape`.
pub fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        idx[d] = i % shape[d];
        i /= shape[d];
    }
    idx
}

/// Linear index in `shape` of the output multi-index `idx` under numpy
/// broadcasting (right-aligned, size-1 dims pinned to 0).
pub fn bcast_index(idx: &[usize], shape: &[usize]) -> usize {
    let off = idx.len() - shape.len();
    let st = shape_strides(shape);
    (0..shape.len())
        .map(|d| {
            if shape[d] == 1 {
                0
            } else {
                idx[off + d] * st[d]
            }
        })
        .sum()
}

pub fn bcast_shape(a: &[usize], b: &[usize]) -> Vec<usize> {
    let r = a.len().max(b.len());
    (0..r)
        .map(|i| {
            let da = if i + a.len() >= r {
                a[i + a.len() - r]
            } else {
                1
            };
            let db = if i + b.len() >= r {
                b[i + b.len() - r]
            } else {
                1
            };
            da.max(db)
        })
        .collect()
}

pub fn dtype_of(t: &Tensor) -> DType {
    t.dtype()
}

/// Compiles `g` under an all-`ty` plan with `options` and runs it on
/// `feeds`: the outputs as (name, f32 bit patterns) sorted by name, and
/// the names of the steps of the given op types that ran, in order.
pub fn bits_and_steps(
    g: &Graph,
    ty: FloatType,
    options: &CompileOptions,
    feeds: &[(&str, &Tensor)],
    op_types: &[&str],
) -> (Vec<(String, Vec<u32>)>, Vec<String>) {
    let model = g.compile_with(&PrecisionPlan::all(g, ty), options).unwrap();
    let (out, profile) = model.run_profiled(feeds).unwrap();
    let mut outs: Vec<(String, Vec<u32>)> = out
        .into_iter()
        .map(|(k, t)| (k, t.to_f32_vec().iter().map(|v| v.to_bits()).collect()))
        .collect();
    outs.sort();
    let steps = profile
        .entries
        .iter()
        .filter(|e| op_types.contains(&e.op_type))
        .map(|e| e.name.clone())
        .collect();
    (outs, steps)
}
