//! Import of hand-built and hostile ONNX bytes: typed errors (never panics)
//! for malformed input, and fusion that keeps results.

use mixprec::graph::{FloatType, PrecisionPlan, Tensor};
use mixprec::onnx::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto, attribute_type, data_type, tensor_shape_proto,
    type_proto,
};
use mixprec::onnx::{self, ImportOptions, OnnxError};
use prost::Message;

fn f32_init(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(data_type::FLOAT),
        raw_data: Some(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        ..Default::default()
    }
}

fn scalar(name: &str, v: f32) -> TensorProto {
    f32_init(name, &[], &[v])
}

fn vi(name: &str, dims: &[i64]) -> ValueInfoProto {
    use tensor_shape_proto::{Dimension, dimension::Value};
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(data_type::FLOAT),
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(if d < 0 {
                                Value::DimParam("batch".into())
                            } else {
                                Value::DimValue(d)
                            }),
                            denotation: None,
                        })
                        .collect(),
                }),
            })),
            denotation: None,
        }),
        doc_string: None,
    }
}

fn node(
    op: &str,
    name: &str,
    ins: &[&str],
    outs: &[&str],
    attrs: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        name: Some(name.into()),
        op_type: Some(op.into()),
        input: ins.iter().map(|s| s.to_string()).collect(),
        output: outs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..Default::default()
    }
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attribute_type::INTS),
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn model(g: GraphProto, opset: i64) -> ModelProto {
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opset),
        }],
        graph: Some(g),
        ..Default::default()
    }
}

const K: usize = 8;

fn weights() -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let w: Vec<f32> = (0..K * K)
        .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.05)
        .collect();
    let b: Vec<f32> = (0..K).map(|i| i as f32 * 0.1 - 0.3).collect();
    let gamma: Vec<f32> = (0..K).map(|i| 1.0 + i as f32 * 0.05).collect();
    let beta: Vec<f32> = (0..K).map(|i| 0.02 * i as f32).collect();
    (w, b, gamma, beta)
}

/// x[batch, 8] -> MatMul+Add -> decomposed LayerNorm -> erf GELU -> y.
fn mlp_block() -> ModelProto {
    let (w, b, gamma, beta) = weights();
    let ax = || vec![ints("axes", &[-1])];
    let nodes = vec![
        node("MatMul", "fc/MatMul", &["x", "W"], &["h0"], vec![]),
        node("Add", "fc/Add", &["h0", "B"], &["h"], vec![]),
        node("ReduceMean", "ln/mean", &["h"], &["m"], ax()),
        node("Sub", "ln/sub", &["h", "m"], &["d"], vec![]),
        node("Pow", "ln/pow", &["d", "two"], &["d2"], vec![]),
        node("ReduceMean", "ln/var", &["d2"], &["v"], ax()),
        node("Add", "ln/addeps", &["v", "eps"], &["ve"], vec![]),
        node("Sqrt", "ln/sqrt", &["ve"], &["sd"], vec![]),
        node("Div", "ln/div", &["d", "sd"], &["n"], vec![]),
        node("Mul", "ln/scale", &["n", "gamma"], &["ns"], vec![]),
        node("Add", "ln/shift", &["ns", "beta"], &["ln"], vec![]),
        node("Div", "gelu/div", &["ln", "sqrt2"], &["g0"], vec![]),
        node("Erf", "gelu/erf", &["g0"], &["g1"], vec![]),
        node("Add", "gelu/add", &["g1", "one"], &["g2"], vec![]),
        node("Mul", "gelu/mul", &["ln", "g2"], &["g3"], vec![]),
        node("Mul", "gelu/half", &["g3", "half"], &["y"], vec![]),
    ];
    let g = GraphProto {
        node: nodes,
        name: Some("block".into()),
        initializer: vec![
            f32_init("W", &[K as i64, K as i64], &w),
            f32_init("B", &[K as i64], &b),
            f32_init("gamma", &[K as i64], &gamma),
            f32_init("beta", &[K as i64], &beta),
            scalar("two", 2.0),
            scalar("eps", 1e-5),
            scalar("sqrt2", std::f32::consts::SQRT_2),
            scalar("one", 1.0),
            scalar("half", 0.5),
        ],
        input: vec![vi("x", &[-1, K as i64])],
        output: vec![vi("y", &[-1, K as i64])],
        ..Default::default()
    };
    model(g, 13)
}

fn erf64(x: f64) -> f64 {
    mixprec::graph::erf_f64(x)
}

/// The block in f64, written out independently of the importer.
fn reference(x: &[f32], rows: usize) -> Vec<f32> {
    let (w, b, gamma, beta) = weights();
    let mut out = Vec::new();
    for r in 0..rows {
        let h: Vec<f64> = (0..K)
            .map(|j| {
                b[j] as f64
                    + (0..K)
                        .map(|k| x[r * K + k] as f64 * w[k * K + j] as f64)
                        .sum::<f64>()
            })
            .collect();
        let mean = h.iter().sum::<f64>() / K as f64;
        let var = h.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / K as f64;
        for j in 0..K {
            let l =
                (h[j] - mean) / (var + 1e-5f32 as f64).sqrt() * gamma[j] as f64 + beta[j] as f64;
            out.push((0.5 * l * (1.0 + erf64(l / std::f64::consts::SQRT_2))) as f32);
        }
    }
    out
}

fn run(m: &onnx::ImportedModel, x: &Tensor) -> Vec<f32> {
    let cm = m
        .graph
        .compile(&PrecisionPlan::all(&m.graph, FloatType::F32))
        .unwrap();
    let out = cm.run(&[("x", x)]).unwrap();
    out[&m.outputs[0]].to_f32_vec()
}

#[test]
fn fusion_replaces_patterns_and_keeps_results() {
    let bytes = mlp_block().encode_to_vec();
    let fused = onnx::load_bytes(&bytes, None, &ImportOptions::default()).unwrap();
    let plain = onnx::load_bytes(
        &bytes,
        None,
        &ImportOptions {
            fuse: false,
            ..Default::default()
        },
    )
    .unwrap();

    let kinds: Vec<&str> = fused.fusions.iter().map(|f| f.op_type.as_str()).collect();
    assert_eq!(fused.fusions.len(), 3, "{:?}", fused.fusions);
    for k in ["Gemm", "LayerNormalization", "Gelu"] {
        assert!(kinds.contains(&k), "{k} not fused: {kinds:?}");
    }
    let ln = fused
        .fusions
        .iter()
        .find(|f| f.op_type == "LayerNormalization")
        .unwrap();
    assert_eq!(
        ln.original.len(),
        9,
        "LayerNorm fusion keeps the 9 ONNX node names: {:?}",
        ln.original
    );
    assert!(ln.original.contains(&"ln/pow".to_string()));
    // The lowering may pass graph outputs through Identity nodes.
    let ops_of = |m: &onnx::ImportedModel| -> Vec<&'static str> {
        let ops = m.graph.nodes().iter().map(|n| n.op.op_type());
        ops.filter(|&o| o != "Identity").collect()
    };
    let ops = ops_of(&fused);
    for gone in ["ReduceMean", "Erf", "Sqrt", "MatMul"] {
        assert!(!ops.contains(&gone), "{gone} left after fusion: {ops:?}");
    }
    assert!(ops.contains(&"LayerNormalization") && ops.contains(&"Gelu") && ops.contains(&"Gemm"));
    assert!(plain.fusions.is_empty());
    assert!(plain.graph.nodes().len() >= 16);

    let rows = 3;
    let xv: Vec<f32> = (0..rows * K)
        .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.3)
        .collect();
    let x = Tensor::from_f32(&[rows, K], xv.clone()).unwrap();
    let (a, b) = (run(&fused, &x), run(&plain, &x));
    let want = reference(&xv, rows);
    for i in 0..want.len() {
        assert!(
            (a[i] - want[i]).abs() <= 1e-5 + 1e-4 * want[i].abs(),
            "fused {i}: {} vs {}",
            a[i],
            want[i]
        );
        assert!(
            (b[i] - want[i]).abs() <= 1e-5 + 1e-4 * want[i].abs(),
            "unfused {i}: {} vs {}",
            b[i],
            want[i]
        );
    }
}

#[test]
fn shared_intermediate_blocks_fusion() {
    // `h` also feeds a second output: the MatMul+Add may fuse, but LayerNorm
    // reads h, which is fine; `d` read by an extra output must block LayerNorm.
    let mut m = mlp_block();
    let g = m.graph.as_mut().unwrap();
    g.output.push(vi("d", &[-1, K as i64]));
    let r = onnx::load_bytes(&m.encode_to_vec(), None, &ImportOptions::default()).unwrap();
    assert!(
        r.fusions.iter().all(|f| f.op_type != "LayerNormalization"),
        "{:?}",
        r.fusions
    );
}

#[test]
fn hostile_bytes_give_typed_errors() {
    let good = mlp_block().encode_to_vec();
    let opts = ImportOptions::default();
    // Every truncation: an error or (rarely) a smaller valid model, never a panic.
    for n in 0..good.len() {
        let _ = onnx::load_bytes(&good[..n], None, &opts);
    }
    assert!(onnx::load_bytes(&good[..good.len() / 2], None, &opts).is_err());
    // Deterministic byte corruption.
    let mut s: u64 = 0x9e3779b97f4a7c15;
    for _ in 0..2000 {
        let mut b = good.clone();
        for _ in 0..4 {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let i = (s >> 33) as usize % b.len();
            b[i] = (s >> 20) as u8;
        }
        let _ = onnx::load_bytes(&b, None, &opts);
    }
    // Garbage and wrong wire types.
    assert!(matches!(
        onnx::load_bytes(&[0xff; 64], None, &opts),
        Err(OnnxError::Decode { .. })
    ));
    assert!(matches!(
        onnx::load_bytes(&[0x3a, 0x05, 0x01], None, &opts),
        Err(OnnxError::Decode { .. })
    ));
    // Size limit.
    let small = ImportOptions {
        max_model_bytes: 16,
        ..Default::default()
    };
    assert!(matches!(
        onnx::load_bytes(&good, None, &small),
        Err(OnnxError::TooLarge { .. })
    ));
    // No graph.
    let empty = ModelProto {
        opset_import: mlp_block().opset_import,
        ..Default::default()
    };
    assert!(matches!(
        onnx::load_bytes(&empty.encode_to_vec(), None, &opts),
        Err(OnnxError::InvalidModel { .. })
    ));
}

#[test]
fn huge_dims_and_bad_payloads_are_refused() {
    let mut m = mlp_block();
    m.graph.as_mut().unwrap().initializer[0].dims = vec![1 << 40, 1 << 40];
    let e = onnx::load_bytes(&m.encode_to_vec(), None, &ImportOptions::default()).unwrap_err();
    assert!(matches!(e, OnnxError::InvalidTensor { .. }), "{e}");
    let mut m = mlp_block();
    m.graph.as_mut().unwrap().initializer[0].dims = vec![K as i64, K as i64 + 1];
    let e = onnx::load_bytes(&m.encode_to_vec(), None, &ImportOptions::default()).unwrap_err();
    assert!(matches!(e, OnnxError::InvalidTensor { .. }), "{e}");
    let mut m = mlp_block();
    m.graph.as_mut().unwrap().initializer[1].data_type = Some(data_type::STRING);
    let e = onnx::load_bytes(&m.encode_to_vec(), None, &ImportOptions::default()).unwrap_err();
    assert!(matches!(e, OnnxError::UnsupportedDType { .. }), "{e}");
}

#[test]
fn unknown_op_names_node_op_and_opset() {
    let mut m = mlp_block();
    m.graph.as_mut().unwrap().node[12].op_type = Some("FancyErf".into());
    let e = onnx::load_bytes(&m.encode_to_vec(), None, &ImportOptions::default()).unwrap_err();
    match &e {
        OnnxError::UnsupportedOp {
            node,
            op_type,
            opset,
            ..
        } => {
            assert_eq!(
                (node.as_str(), op_type.as_str(), *opset),
                ("gelu/erf", "FancyErf", 13)
            );
        }
        other => panic!("expected UnsupportedOp, got {other}"),
    }
    assert!(e.to_string().contains("gelu/erf") && e.to_string().contains("FancyErf"));
    // A value nobody produces.
    let mut m = mlp_block();
    m.graph.as_mut().unwrap().node[1].input[1] = "nope".into();
    let e = onnx::load_bytes(&m.encode_to_vec(), None, &ImportOptions::default()).unwrap_err();
    assert!(matches!(e, OnnxError::InvalidModel { .. }), "{e}");
}

#[test]
fn symbolic_batch_runs_any_batch() {
    let m = onnx::load_bytes(
        &mlp_block().encode_to_vec(),
        None,
        &ImportOptions::default(),
    )
    .unwrap();
    for rows in [1, 5] {
        let xv: Vec<f32> = (0..rows * K).map(|i| (i as f32 * 0.37).sin()).collect();
        let x = Tensor::from_f32(&[rows, K], xv.clone()).unwrap();
        let y = run(&m, &x);
        let want = reference(&xv, rows);
        assert_eq!(y.len(), want.len());
        for (a, b) in y.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-5 + 1e-4 * b.abs(), "{a} vs {b}");
        }
    }
}

// ---------------------------------------------------------------------------
// Decomposed LayerNorm forms (issue 5): each written form fuses into one
// LayerNormalization node; near misses stay as written and still run.

/// Normalized length; inputs are `[batch, 3, C]`.
const C: usize = 16;

/// A square: `Pow(v, 2)` or `Mul(v, v)`.
#[derive(Clone, Copy, Debug)]
enum Sq {
    Pow,
    Mul,
}

/// The variance: `E[(x-mean)^2]` or `E[x^2] - mean^2` (squares of x, of mean).
#[derive(Clone, Copy, Debug)]
enum Var {
    Centered(Sq),
    Moments(Sq, Sq),
}

/// How `d = x - mean` is divided by `sqrt(var + eps)`.
#[derive(Clone, Copy, Debug)]
enum Norm {
    /// `d / Sqrt(ve)`
    Div,
    /// `d / Pow(ve, 0.5)`
    DivPow,
    /// `d * Reciprocal(Sqrt(ve))`
    Reciprocal,
    /// `d * Div(1, Sqrt(ve))`
    DivOne,
    /// `d * Pow(ve, -0.5)`
    PowNeg,
}

/// One decomposed LayerNorm model.
#[derive(Clone, Debug)]
struct Ln {
    var: Var,
    norm: Norm,
    gamma: bool,
    beta: bool,
    /// Commutative ops (the eps Add, the normalizing Mul, scale, shift) with
    /// their operands the other way round.
    swap: bool,
    /// Axes of every ReduceMean.
    axes: Vec<i64>,
    /// Axes of the `E[x^2]` / `E[(x-mean)^2]` ReduceMean only.
    var_axes: Vec<i64>,
    gamma_dims: Vec<i64>,
    /// The exponent of the normalizer's Pow (DivPow, PowNeg).
    exponent: f32,
    /// `sqrt(var) + eps` instead of `sqrt(var + eps)` (Div form).
    eps_after_sqrt: bool,
}

impl Ln {
    fn new(var: Var, norm: Norm) -> Ln {
        Ln {
            var,
            norm,
            gamma: true,
            beta: true,
            swap: false,
            axes: vec![-1],
            var_axes: vec![-1],
            gamma_dims: vec![C as i64],
            exponent: if matches!(norm, Norm::DivPow) {
                0.5
            } else {
                -0.5
            },
            eps_after_sqrt: false,
        }
    }

    /// The fusion record's pattern string for this form.
    fn pattern(&self) -> String {
        let v = match self.var {
            Var::Centered(_) => "E[(x-mean)^2]",
            Var::Moments(..) => "E[x^2]-E[x]^2",
        };
        let n = match self.norm {
            Norm::Div => "/ Sqrt",
            Norm::DivPow => "/ Pow(0.5)",
            Norm::Reciprocal => "rsqrt as Reciprocal(Sqrt)",
            Norm::DivOne => "rsqrt as Div(1, Sqrt)",
            Norm::PowNeg => "rsqrt as Pow(-0.5)",
        };
        format!("decomposed LayerNorm ({v}, {n})")
    }

    fn model(&self) -> ModelProto {
        let n = |op: &str, name: &str, ins: &[&str], out: &str| node(op, name, ins, &[out], vec![]);
        let mean = |name: &str, input: &str, out: &str, axes: &[i64]| {
            node(
                "ReduceMean",
                name,
                &[input],
                &[out],
                vec![ints("axes", axes)],
            )
        };
        let ord = |a: &'static str, b: &'static str| if self.swap { [b, a] } else { [a, b] };
        let sq = |k: Sq, name: &str, v: &str, out: &str| match k {
            Sq::Pow => n("Pow", name, &[v, "two"], out),
            Sq::Mul => n("Mul", name, &[v, v], out),
        };
        let mut ns = vec![
            mean("ln/mean", "x", "m", &self.axes),
            n("Sub", "ln/sub", &["x", "m"], "d"),
        ];
        match self.var {
            Var::Centered(k) => ns.extend([
                sq(k, "ln/sq", "d", "d2"),
                mean("ln/var", "d2", "v", &self.var_axes),
            ]),
            Var::Moments(kx, km) => ns.extend([
                sq(kx, "ln/xsq", "x", "x2"),
                mean("ln/ex2", "x2", "ex2", &self.var_axes),
                sq(km, "ln/msq", "m", "m2"),
                n("Sub", "ln/var", &["ex2", "m2"], "v"),
            ]),
        }
        if self.eps_after_sqrt {
            ns.extend([
                n("Sqrt", "ln/sqrt", &["v"], "s0"),
                n("Add", "ln/addeps", &ord("s0", "eps"), "sd"),
                n("Div", "ln/div", &["d", "sd"], "n"),
            ]);
        } else {
            ns.push(n("Add", "ln/addeps", &ord("v", "eps"), "ve"));
            let sqrt = || n("Sqrt", "ln/sqrt", &["ve"], "sd");
            let times = || n("Mul", "ln/norm", &ord("d", "r"), "n");
            ns.extend(match self.norm {
                Norm::Div => vec![sqrt(), n("Div", "ln/div", &["d", "sd"], "n")],
                Norm::DivPow => vec![
                    n("Pow", "ln/pow", &["ve", "rexp"], "sd"),
                    n("Div", "ln/div", &["d", "sd"], "n"),
                ],
                Norm::Reciprocal => {
                    vec![sqrt(), n("Reciprocal", "ln/recip", &["sd"], "r"), times()]
                }
                Norm::DivOne => vec![sqrt(), n("Div", "ln/rsqrt", &["one", "sd"], "r"), times()],
                Norm::PowNeg => vec![n("Pow", "ln/rsqrt", &["ve", "rexp"], "r"), times()],
            });
        }
        let mut y = "n";
        if self.gamma {
            ns.push(n("Mul", "ln/scale", &ord(y, "gamma"), "ns"));
            y = "ns";
        }
        if self.beta {
            ns.push(n("Add", "ln/shift", &ord(y, "beta"), "y"));
            y = "y";
        }
        let gn: i64 = self.gamma_dims.iter().product();
        let gamma: Vec<f32> = (0..gn).map(|i| 0.9 + i as f32 * 0.05).collect();
        let beta: Vec<f32> = (0..C).map(|i| 0.02 * i as f32 - 0.1).collect();
        let dims = [-1, 3, C as i64];
        let g = GraphProto {
            node: ns,
            name: Some("ln".into()),
            initializer: vec![
                f32_init("gamma", &self.gamma_dims, &gamma),
                f32_init("beta", &[C as i64], &beta),
                scalar("two", 2.0),
                scalar("eps", 1e-5),
                scalar("one", 1.0),
                scalar("rexp", self.exponent),
            ],
            input: vec![vi("x", &dims)],
            output: vec![vi(y, &dims)],
            ..Default::default()
        };
        model(g, 13)
    }
}

/// A dense f64 tensor for [`eval_f64`].
#[derive(Clone, Debug)]
struct T64 {
    shape: Vec<usize>,
    v: Vec<f64>,
}

/// Element `flat` of `shape` read from `t` broadcast to it (NumPy rules).
fn bcast_at(t: &T64, shape: &[usize], mut flat: usize) -> f64 {
    let pad = shape.len() - t.shape.len();
    let (mut off, mut stride) = (0, 1);
    for k in (0..shape.len()).rev() {
        let i = flat % shape[k];
        flat /= shape[k];
        if k >= pad && t.shape[k - pad] != 1 {
            assert_eq!(t.shape[k - pad], shape[k], "broadcast");
            off += i * stride;
        }
        if k >= pad {
            stride *= t.shape[k - pad];
        }
    }
    t.v[off]
}

fn binary64(a: &T64, b: &T64, f: impl Fn(f64, f64) -> f64) -> T64 {
    let r = a.shape.len().max(b.shape.len());
    let dim = |t: &T64, k: usize| (k + t.shape.len()).checked_sub(r).map_or(1, |i| t.shape[i]);
    let shape: Vec<usize> = (0..r).map(|k| dim(a, k).max(dim(b, k))).collect();
    let n = shape.iter().product();
    let v = (0..n)
        .map(|i| f(bcast_at(a, &shape, i), bcast_at(b, &shape, i)))
        .collect();
    T64 { shape, v }
}

/// ReduceMean with keepdims over `axes` (negative allowed).
fn mean64(t: &T64, axes: &[i64]) -> T64 {
    let r = t.shape.len();
    let red: Vec<usize> = axes
        .iter()
        .map(|&a| a.rem_euclid(r as i64) as usize)
        .collect();
    let shape: Vec<usize> = (0..r)
        .map(|k| if red.contains(&k) { 1 } else { t.shape[k] })
        .collect();
    let count: usize = red.iter().map(|&k| t.shape[k]).product();
    let mut v = vec![0.0; shape.iter().product()];
    for (flat, &x) in t.v.iter().enumerate() {
        let (mut f, mut off, mut stride) = (flat, 0, 1);
        for k in (0..r).rev() {
            let i = f % t.shape[k];
            f /= t.shape[k];
            if !red.contains(&k) {
                off += i * stride;
                stride *= t.shape[k];
            }
        }
        v[off] += x;
    }
    v.iter_mut().for_each(|s| *s /= count as f64);
    T64 { shape, v }
}

/// The graph outputs of `m` evaluated in f64 node by node, as written (the
/// unfused formula), independently of the importer.
fn eval_f64(m: &ModelProto, x: &T64) -> Vec<T64> {
    let g = m.graph.as_ref().unwrap();
    let mut env = std::collections::HashMap::new();
    for t in &g.initializer {
        let v = t.raw_data.as_ref().unwrap().chunks(4);
        let v = v.map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64);
        let shape = t.dims.iter().map(|&d| d as usize).collect();
        env.insert(
            t.name.clone().unwrap(),
            T64 {
                shape,
                v: v.collect(),
            },
        );
    }
    env.insert("x".to_string(), x.clone());
    for n in &g.node {
        let a = |i: usize| &env[&n.input[i]];
        let un = |f: fn(f64) -> f64| T64 {
            shape: a(0).shape.clone(),
            v: a(0).v.iter().map(|&p| f(p)).collect(),
        };
        let y = match n.op_type.as_deref().unwrap() {
            "Add" => binary64(a(0), a(1), |p, q| p + q),
            "Sub" => binary64(a(0), a(1), |p, q| p - q),
            "Mul" => binary64(a(0), a(1), |p, q| p * q),
            "Div" => binary64(a(0), a(1), |p, q| p / q),
            "Pow" => binary64(a(0), a(1), f64::powf),
            "Sqrt" => un(f64::sqrt),
            "Reciprocal" => un(|p| 1.0 / p),
            "ReduceMean" => mean64(a(0), &n.attribute[0].ints),
            op => panic!("eval_f64 has no {op}"),
        };
        env.insert(n.output[0].clone(), y);
    }
    g.output
        .iter()
        .map(|o| env[o.name.as_ref().unwrap()].clone())
        .collect()
}

/// Well-conditioned input: along the last axis and along axis -2, every
/// `E[x^2] / var` is at most 1.3 (|mean| up to ~0.4 of the spread, so the
/// mean terms count), so the f32 `E[x^2] - E[x]^2` of an unfused graph loses
/// only a few ulps to cancellation and both graphs meet the same bound.
fn ln_input(batch: usize) -> T64 {
    let mut v = Vec::new();
    for b in 0..batch {
        for r in 0..3 {
            for c in 0..C {
                let (b, r, c) = (b as f64, r as f64, c as f64);
                let x = 1.5 * (0.7 * c + 2.1 * r + 0.9 * b + 0.3).sin()
                    + 0.25 * (1.3 * c + 0.5 * r + b).cos()
                    + 0.3;
                v.push(x as f32 as f64);
            }
        }
    }
    T64 {
        shape: vec![batch, 3, C],
        v,
    }
}

/// Tolerance against the f64 evaluation of the written (unfused) formula:
/// `|out - ref| <= LN_ATOL + LN_RTOL * |ref|`, outputs O(1). The fused node's
/// kernel uses a two-pass variance, the unfused graph the written one (for
/// `E[x^2]-E[x]^2`, one f32 cancellation, which is why the reference is the
/// f64 formula and the inputs are well-conditioned). On the inputs of
/// [`ln_input`] the worst error seen, fused or not, was 3% of this bound.
const LN_ATOL: f64 = 1e-6;
const LN_RTOL: f64 = 1e-5;

fn ln_run(m: &onnx::ImportedModel, x: &T64) -> Vec<Vec<f32>> {
    let xv: Vec<f32> = x.v.iter().map(|&v| v as f32).collect();
    let t = Tensor::from_f32(&x.shape, xv).unwrap();
    let cm = m
        .graph
        .compile(&PrecisionPlan::all(&m.graph, FloatType::F32))
        .unwrap();
    let out = cm.run_ordered(&[("x", &t)]).unwrap();
    out.iter().map(Tensor::to_f32_vec).collect()
}

/// Imports `m` with and without fusion. With `want = Some(pattern)` exactly
/// one LayerNormalization replaces every ONNX node except `kept`; with
/// `None` nothing fuses. Both imports must match the f64 evaluation of the
/// written formula, and so each other, on every graph output.
fn check_ln(m: &ModelProto, want: Option<&str>, kept: &[&str]) {
    let bytes = m.encode_to_vec();
    let fused = onnx::load_bytes(&bytes, None, &ImportOptions::default()).unwrap();
    let opts = ImportOptions {
        fuse: false,
        ..Default::default()
    };
    let plain = onnx::load_bytes(&bytes, None, &opts).unwrap();
    // The lowering may pass graph outputs through Identity nodes.
    let ops_of = |m: &onnx::ImportedModel| -> Vec<&'static str> {
        let ops = m.graph.nodes().iter().map(|n| n.op.op_type());
        ops.filter(|&o| o != "Identity").collect()
    };
    let ops = ops_of(&fused);
    let lns = ops.iter().filter(|&&o| o == "LayerNormalization").count();
    let ctx = format!("{want:?}: fusions {:?}, ops {ops:?}", fused.fusions);
    match want {
        Some(pattern) => {
            assert_eq!(lns, 1, "{ctx}");
            assert_eq!(fused.fusions.len(), 1, "{ctx}");
            let f = &fused.fusions[0];
            assert_eq!(
                (f.op_type.as_str(), f.pattern.as_str()),
                ("LayerNormalization", pattern)
            );
            let names: Vec<String> = m
                .graph
                .as_ref()
                .unwrap()
                .node
                .iter()
                .filter_map(|n| n.name.clone())
                .filter(|n| !kept.contains(&n.as_str()))
                .collect();
            assert_eq!(f.original, names, "original node names, in graph order");
            // Shape/Expand build a missing scale over symbolic dims.
            let helpers = ops.iter().filter(|&&o| o == "Shape" || o == "Expand");
            assert_eq!(ops.len() - helpers.count(), 1 + kept.len(), "{ctx}");
            for gone in ["ReduceMean", "Sqrt", "Reciprocal", "Pow", "Sub", "Div"] {
                assert!(!ops.contains(&gone), "{gone} left: {ctx}");
            }
        }
        None => {
            assert_eq!(lns, 0, "{ctx}");
            assert!(fused.fusions.is_empty(), "{ctx}");
            assert_eq!(ops, ops_of(&plain), "{ctx}");
        }
    }
    assert!(plain.fusions.is_empty());
    let x = ln_input(2);
    let want_out = eval_f64(m, &x);
    let (a, b) = (ln_run(&fused, &x), ln_run(&plain, &x));
    for (o, r) in want_out.iter().enumerate() {
        for (i, &r) in r.v.iter().enumerate() {
            let tol = LN_ATOL + LN_RTOL * r.abs();
            let (p, q) = (a[o][i] as f64, b[o][i] as f64);
            assert!(
                (p - r).abs() <= tol,
                "fused out {o}[{i}]: {p} vs {r} ({ctx})"
            );
            assert!(
                (q - r).abs() <= tol,
                "unfused out {o}[{i}]: {q} vs {r} ({ctx})"
            );
            assert!(
                (p - q).abs() <= 2.0 * tol,
                "fused vs unfused {o}[{i}]: {p} vs {q}"
            );
        }
    }
}

const VARS: [Var; 6] = [
    Var::Centered(Sq::Pow),
    Var::Centered(Sq::Mul),
    Var::Moments(Sq::Pow, Sq::Pow),
    Var::Moments(Sq::Mul, Sq::Mul),
    Var::Moments(Sq::Pow, Sq::Mul),
    Var::Moments(Sq::Mul, Sq::Pow),
];
const NORMS: [Norm; 5] = [
    Norm::Div,
    Norm::DivPow,
    Norm::Reciprocal,
    Norm::DivOne,
    Norm::PowNeg,
];

#[test]
fn layernorm_forms_fuse_to_one_node() {
    // Every variance x normalizer form, with and without scale and shift,
    // commutative operands in both orders.
    for var in VARS {
        for norm in NORMS {
            for (gamma, beta) in [(true, true), (true, false), (false, true), (false, false)] {
                for swap in [false, true] {
                    let s = Ln {
                        gamma,
                        beta,
                        swap,
                        ..Ln::new(var, norm)
                    };
                    check_ln(&s.model(), Some(&s.pattern()), &[]);
                }
            }
        }
    }
    // Two trailing axes: one LayerNormalization from axis -2.
    let s = Ln {
        axes: vec![-2, -1],
        var_axes: vec![-1, -2],
        gamma_dims: vec![3, C as i64],
        beta: false,
        ..Ln::new(Var::Moments(Sq::Mul, Sq::Pow), Norm::Reciprocal)
    };
    check_ln(&s.model(), Some(&s.pattern()), &[]);
}

#[test]
fn layernorm_near_misses_stay_unfused() {
    let base = |var, norm| Ln::new(var, norm);
    let moments = Var::Moments(Sq::Mul, Sq::Mul);
    let centered = Var::Centered(Sq::Pow);
    let mut cases: Vec<(&str, ModelProto)> = Vec::new();
    for var in [centered, moments] {
        let eps = Ln {
            eps_after_sqrt: true,
            ..base(var, Norm::Div)
        };
        cases.push(("sqrt(var) + eps", eps.model()));
        for norm in [Norm::Div, Norm::PowNeg] {
            let axis = Ln {
                axes: vec![-2],
                var_axes: vec![-2],
                ..base(var, norm)
            };
            cases.push(("reduce over axis -2", axis.model()));
            let var_axis = Ln {
                var_axes: vec![-2],
                ..base(var, norm)
            };
            cases.push(("variance over another axis", var_axis.model()));
        }
    }
    for (norm, e) in [
        (Norm::PowNeg, 0.4),
        (Norm::PowNeg, -0.4),
        (Norm::DivPow, 0.4),
    ] {
        let pow = Ln {
            exponent: e,
            ..base(moments, norm)
        };
        cases.push(("Pow exponent not -0.5 / 0.5", pow.model()));
    }
    // Second consumers: a fused-away value as a graph output, or read by
    // another node.
    for (var, norm, value, dims) in [
        (moments, Norm::Reciprocal, "m2", [-1, 3, 1]),
        (moments, Norm::PowNeg, "ex2", [-1, 3, 1]),
        (moments, Norm::Div, "m", [-1, 3, 1]),
        (centered, Norm::DivOne, "r", [-1, 3, 1]),
        (centered, Norm::Div, "d2", [-1, 3, C as i64]),
    ] {
        let mut m = base(var, norm).model();
        m.graph.as_mut().unwrap().output.push(vi(value, &dims));
        cases.push(("intermediate is also a graph output", m));
    }
    for (var, norm, value) in [
        (moments, Norm::Reciprocal, "sd"),
        (moments, Norm::DivOne, "ve"),
        (centered, Norm::PowNeg, "d"),
        (moments, Norm::Div, "x2"),
    ] {
        let mut m = base(var, norm).model();
        let g = m.graph.as_mut().unwrap();
        g.node
            .push(node("Mul", "other", &[value, "two"], &["z"], vec![]));
        let dims = if matches!(value, "d" | "x2") {
            [-1, 3, C as i64]
        } else {
            [-1, 3, 1]
        };
        g.output.push(vi("z", &dims));
        cases.push(("intermediate read by another node", m));
    }
    for (what, m) in &cases {
        eprintln!("near miss: {what}");
        check_ln(m, None, &[]);
    }
}

#[test]
fn layernorm_keeps_a_scale_of_another_shape() {
    // A scalar gamma broadcasts in the Mul but is not a LayerNorm scale: the
    // core fuses, the scale and the shift after it stay as written.
    let s = Ln {
        gamma_dims: vec![],
        ..Ln::new(Var::Moments(Sq::Pow, Sq::Mul), Norm::PowNeg)
    };
    check_ln(&s.model(), Some(&s.pattern()), &["ln/scale", "ln/shift"]);
    let s = Ln {
        gamma_dims: vec![1, C as i64],
        ..Ln::new(Var::Centered(Sq::Mul), Norm::Reciprocal)
    };
    check_ln(&s.model(), Some(&s.pattern()), &["ln/scale", "ln/shift"]);
}

#[test]
fn layernorm_without_scale_over_a_symbolic_dim() {
    // The fused node has no gamma; with the normalized dim symbolic its ones
    // are built at run time rather than refusing the model.
    use tensor_shape_proto::{Dimension, dimension::Value};
    let s = Ln {
        gamma: false,
        ..Ln::new(Var::Moments(Sq::Pow, Sq::Pow), Norm::DivOne)
    };
    let mut m = s.model();
    let g = m.graph.as_mut().unwrap();
    for v in g.input.iter_mut().chain(g.output.iter_mut()) {
        let Some(type_proto::Value::TensorType(t)) = v.r#type.as_mut().unwrap().value.as_mut()
        else {
            unreachable!()
        };
        t.shape.as_mut().unwrap().dim[2] = Dimension {
            value: Some(Value::DimParam("hidden".into())),
            denotation: None,
        };
    }
    check_ln(&m, Some(&s.pattern()), &[]);
}
