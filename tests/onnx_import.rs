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
    let ops: Vec<&str> = fused.graph.nodes().iter().map(|n| n.op.op_type()).collect();
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
