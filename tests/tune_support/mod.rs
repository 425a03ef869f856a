//! Synthetic models implementing `Tunable`, for tuner tests that do not
//! need the op-graph: a chain interpreter with real bf16/f16 rounding, and
//! an additive "damage" model whose metric is an explicit function of the plan.
#![allow(dead_code)]

use std::cell::Cell;
use std::collections::BTreeMap;

use half::{bf16, f16};
use mixprec::kernels::FloatType;
use mixprec::tune::{BoxError, DtypeMap, Tunable, TunableNode};

pub fn round(x: f32, d: FloatType) -> f32 {
    match d {
        FloatType::F32 => x,
        FloatType::Bf16 => bf16::from_f32(x).to_f32(),
        FloatType::F16 => f16::from_f32(x).to_f32(),
    }
}

/// One chain layer.
#[derive(Clone, Debug)]
pub enum Layer {
    /// y = x * c
    Scale(f32),
    /// y = x + c
    AddConst(f32),
    /// y = W x + b, W is [out, in] row-major; bias added in f32.
    Linear {
        w: Vec<f32>,
        b: Vec<f32>,
        inp: usize,
        out: usize,
    },
    /// y = max(x, 0)
    Relu,
}

/// A chain of named layers run like the graph's contract: a low node
/// rounds its inputs and weights to its dtype, computes in f32 and rounds
/// its output.
pub struct Chain {
    pub names: Vec<String>,
    pub layers: Vec<Layer>,
    pub calibration: Vec<Vec<f32>>,
    pub forwards: Cell<usize>,
    /// Nodes whose (fake, deterministic) profile says they run slower in
    /// low precision than in f32; `None` = no profile.
    pub slow_low: Option<Vec<String>>,
}

#[derive(Debug)]
pub struct ChainModel {
    pub dtypes: Vec<FloatType>,
}

impl Chain {
    pub fn new(layers: Vec<(&str, Layer)>, calibration: Vec<Vec<f32>>) -> Chain {
        Chain {
            names: layers.iter().map(|(n, _)| n.to_string()).collect(),
            layers: layers.into_iter().map(|(_, l)| l).collect(),
            calibration,
            forwards: Cell::new(0),
            slow_low: None,
        }
    }

    pub fn model(&self, plan: &DtypeMap) -> ChainModel {
        ChainModel {
            dtypes: self
                .names
                .iter()
                .map(|n| plan.get(n).copied().unwrap_or(FloatType::F32))
                .collect(),
        }
    }

    pub fn run_one(&self, m: &ChainModel, x: &[f32]) -> Vec<f32> {
        let mut h = x.to_vec();
        for (layer, &d) in self.layers.iter().zip(&m.dtypes) {
            let xin: Vec<f32> = h.iter().map(|&v| round(v, d)).collect();
            let y: Vec<f32> = match layer {
                Layer::Scale(c) => xin.iter().map(|&v| v * round(*c, d)).collect(),
                Layer::AddConst(c) => xin.iter().map(|&v| v + round(*c, d)).collect(),
                Layer::Relu => xin.iter().map(|&v| v.max(0.0)).collect(),
                Layer::Linear { w, b, inp, out } => (0..*out)
                    .map(|o| {
                        let mut acc = 0.0f32;
                        for i in 0..*inp {
                            acc += round(w[o * inp + i], d) * xin[i];
                        }
                        acc + b[o]
                    })
                    .collect(),
            };
            h = y.iter().map(|&v| round(v, d)).collect();
        }
        h
    }

    pub fn run(&self, m: &ChainModel, xs: &[Vec<f32>]) -> Vec<Vec<f32>> {
        xs.iter().map(|x| self.run_one(m, x)).collect()
    }
}

impl Tunable for Chain {
    type Model = ChainModel;

    fn tunable_nodes(&self) -> Vec<TunableNode> {
        self.names
            .iter()
            .enumerate()
            .map(|(i, n)| TunableNode {
                name: n.clone(),
                op_type: match self.layers[i] {
                    Layer::Scale(_) => "Mul",
                    Layer::AddConst(_) => "Add",
                    Layer::Relu => "Relu",
                    Layer::Linear { .. } => "Gemm",
                }
                .to_string(),
                producers: if i == 0 {
                    vec![]
                } else {
                    vec![self.names[i - 1].clone()]
                },
            })
            .collect()
    }

    fn compile(&self, plan: &DtypeMap) -> Result<ChainModel, BoxError> {
        Ok(self.model(plan))
    }

    fn forward(&self, model: &ChainModel) -> Result<Vec<f32>, BoxError> {
        self.forwards.set(self.forwards.get() + 1);
        Ok(self.run(model, &self.calibration).concat())
    }

    fn node_times(&self, m: &ChainModel) -> Result<Option<BTreeMap<String, f64>>, BoxError> {
        let Some(slow) = &self.slow_low else {
            return Ok(None);
        };
        Ok(Some(
            self.names
                .iter()
                .zip(&m.dtypes)
                .map(|(n, d)| {
                    let t = match (*d == FloatType::F32, slow.contains(n)) {
                        (true, _) => 10e-6,
                        (false, true) => 20e-6,
                        (false, false) => 5e-6,
                    };
                    (n.clone(), t)
                })
                .collect(),
        ))
    }

    fn node_costs(&self) -> Option<BTreeMap<String, f64>> {
        Some(
            self.names
                .iter()
                .zip(&self.layers)
                .map(|(n, l)| {
                    let c = match l {
                        Layer::Linear { inp, out, .. } => (inp * out) as f64,
                        _ => 1.0,
                    };
                    (n.clone(), c)
                })
                .collect(),
        )
    }
}

/// Relative L2 error of `y` against `y0` over all samples (NaN/inf -> inf).
pub fn rel_err(y: &[Vec<f32>], y0: &[Vec<f32>]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (a, b) in y.iter().zip(y0) {
        for (&p, &q) in a.iter().zip(b) {
            if !p.is_finite() {
                return f64::INFINITY;
            }
            num += ((p - q) as f64).powi(2);
            den += (q as f64).powi(2);
        }
    }
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// Deterministic xorshift stream in [0, 1).
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f32 {
        (lo + (hi - lo) * self.next()) as f32
    }
}

/// An additive model: node i low costs `damage[i]` of metric (baseline
/// 1.0); its calibration output moves by `damage[i]` too, so the
/// sensitivity ranking is exact.
pub struct Damage {
    pub damage: Vec<f64>,
    pub evals: Cell<usize>,
    /// Op type per node (default all `Gemm`).
    pub op_types: Option<Vec<&'static str>>,
}

#[derive(Debug)]
pub struct DamageModel {
    pub low: Vec<bool>,
    pub dtypes: Vec<FloatType>,
}

impl Damage {
    pub fn name(i: usize) -> String {
        format!("n{i:02}")
    }
    pub fn metric(&self, m: &DamageModel) -> f64 {
        self.evals.set(self.evals.get() + 1);
        1.0 - self
            .damage
            .iter()
            .zip(&m.low)
            .filter(|(_, l)| **l)
            .map(|(d, _)| d)
            .sum::<f64>()
    }
}

impl Tunable for Damage {
    type Model = DamageModel;
    fn tunable_nodes(&self) -> Vec<TunableNode> {
        (0..self.damage.len())
            .map(|i| TunableNode {
                name: Damage::name(i),
                op_type: self.op_types.as_ref().map_or("Gemm", |t| t[i]).into(),
                producers: if i == 0 {
                    vec![]
                } else {
                    vec![Damage::name(i - 1)]
                },
            })
            .collect()
    }
    fn compile(&self, plan: &DtypeMap) -> Result<DamageModel, BoxError> {
        let dtypes: Vec<FloatType> = (0..self.damage.len())
            .map(|i| {
                plan.get(&Damage::name(i))
                    .copied()
                    .unwrap_or(FloatType::F32)
            })
            .collect();
        Ok(DamageModel {
            low: dtypes.iter().map(|d| *d != FloatType::F32).collect(),
            dtypes,
        })
    }
    fn forward(&self, m: &DamageModel) -> Result<Vec<f32>, BoxError> {
        Ok(self
            .damage
            .iter()
            .zip(&m.low)
            .map(|(d, l)| 1.0 + if *l { *d as f32 } else { 0.0 })
            .collect())
    }
}
