//! Size limits, overflow checks and recursion depth on hostile input: each
//! must give a typed error (or succeed) without panicking, aborting on a huge
//! allocation or overflowing the stack. Tests run on the default 2 MiB
//! test-thread stack, smaller than a main thread's.

use mixprec::graph::{DType, Dim, GraphBuilder, GraphError, PrecisionPlan, Tensor, Weights, numel};
use mixprec::kernels::FloatType;
use mixprec::kernels::gemm::{GemmError, MatRef};
use mixprec::onnx::proto::{
    self, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TypeProto,
    ValueInfoProto, tensor_shape_proto,
};
use mixprec::onnx::{self, ImportOptions, OnnxError};
use prost::Message;

fn value_info(name: &str, dims: &[i64]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|&d| tensor_shape_proto::Dimension {
            value: Some(tensor_shape_proto::dimension::Value::DimValue(d)),
            denotation: None,
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(proto::type_proto::Value::TensorType(
                proto::type_proto::Tensor {
                    elem_type: Some(proto::data_type::FLOAT),
                    shape: Some(proto::TensorShapeProto { dim }),
                },
            )),
            denotation: None,
        }),
        doc_string: None,
    }
}

fn node(op: &str, name: &str, inputs: &[&str], output: &str) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        name: Some(name.into()),
        op_type: Some(op.into()),
        domain: None,
        attribute: vec![],
        doc_string: None,
    }
}

fn model(nodes: Vec<NodeProto>, inputs: Vec<ValueInfoProto>, output: &str) -> ModelProto {
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        producer_name: None,
        producer_version: None,
        domain: None,
        model_version: None,
        doc_string: None,
        graph: Some(GraphProto {
            node: nodes,
            name: Some("g".into()),
            initializer: vec![],
            doc_string: None,
            input: inputs,
            output: vec![value_info(output, &[1, 4])],
            value_info: vec![],
        }),
        metadata_props: vec![],
    }
}

/// A 100k-node chain must import (toposort, folding, fusion, dead-code
/// removal, lowering), compile and run without recursing per node.
#[test]
fn onnx_100k_node_chain_imports_compiles_and_runs() {
    const N: usize = 100_000;
    let ops = ["Relu", "Neg", "Abs"];
    let nodes: Vec<NodeProto> = (0..N)
        .map(|i| {
            node(
                ops[i % 3],
                &format!("n{i}"),
                &[&format!("v{i}")],
                &format!("v{}", i + 1),
            )
        })
        .collect();
    let m = model(nodes, vec![value_info("v0", &[1, 4])], &format!("v{N}"));
    let bytes = m.encode_to_vec();
    let imported = onnx::load_bytes(&bytes, None, &ImportOptions::default())
        .expect("a long chain is a valid model");
    assert!(imported.graph.nodes().len() >= N);
    let compiled = imported
        .graph
        .compile(&PrecisionPlan::all(&imported.graph, FloatType::Bf16))
        .expect("compiles");
    let x = Tensor::from_f32(&[1, 4], [1.0, -2.0, 3.0, -0.5]).unwrap();
    let out = compiled.run_ordered(&[("v0", &x)]).expect("runs");
    // Relu, Neg, Abs repeated: after the first triple every value is |.|
    // of something <= 0, i.e. Relu(x) for all x; N % 3 == 1 ends on Relu.
    assert_eq!(out[0].to_f32_vec(), vec![1.0, 0.0, 3.0, 0.0]);
}

/// The same chain built through the Rust builder API.
#[test]
fn builder_100k_node_chain_compiles() {
    let mut g = GraphBuilder::new();
    let mut v = g.input("x", &[Dim::sym("batch"), 2.into()], DType::F32);
    for i in 0..100_000 {
        v = g.relu(&format!("r{i}"), v).unwrap();
    }
    g.output(v);
    let graph = g.finish().unwrap();
    let m = graph
        .compile(&PrecisionPlan::all(&graph, FloatType::F32))
        .unwrap();
    let x = Tensor::from_f32(&[1, 2], [-1.0, 2.0]).unwrap();
    assert_eq!(
        m.run_ordered(&[("x", &x)]).unwrap()[0].to_f32_vec(),
        vec![0.0, 2.0]
    );
}

/// A cycle hidden in a long chain is reported, not recursed into.
#[test]
fn onnx_long_cycle_is_a_typed_error() {
    const N: usize = 50_000;
    let nodes: Vec<NodeProto> = (0..N)
        .map(|i| {
            let input = format!("v{}", (i + N - 1) % N);
            node("Relu", &format!("n{i}"), &[&input], &format!("v{i}"))
        })
        .collect();
    let m = model(nodes, vec![value_info("x", &[1])], "v7");
    let r = onnx::load_bytes(&m.encode_to_vec(), None, &ImportOptions::default());
    assert!(r.is_err(), "a cycle must be rejected");
}

/// Protobuf nesting: the messages the importer reads are not recursive (a
/// nested field 7 below the graph is an unknown field, skipped flat), and
/// prost bounds the depth of nested groups (100), so deeply nested bytes
/// are an error, not a stack overflow.
#[test]
fn deeply_nested_protobuf_is_a_decode_error() {
    // Field 7 (graph), wire type 2, nested 10_000 times as length-delimited
    // payloads: each level wraps the previous one.
    let mut inner: Vec<u8> = Vec::new();
    for _ in 0..10_000 {
        let mut outer = vec![(7 << 3) | 2];
        prost::encoding::encode_varint(inner.len() as u64, &mut outer);
        outer.extend_from_slice(&inner);
        inner = outer;
    }
    let r = onnx::load_bytes(&inner, None, &ImportOptions::default());
    assert!(r.is_err(), "{r:?}");
    // Unknown field 99 as 100k nested groups (wire types 3/4): skipping
    // them is depth-limited by prost.
    let mut groups = Vec::new();
    for _ in 0..100_000 {
        prost::encoding::encode_varint((99 << 3) | 3, &mut groups);
    }
    for _ in 0..100_000 {
        prost::encoding::encode_varint((99 << 3) | 4, &mut groups);
    }
    let r = onnx::load_bytes(&groups, None, &ImportOptions::default());
    assert!(matches!(r, Err(OnnxError::Decode { .. })), "{r:?}");
}

#[test]
fn onnx_model_over_the_byte_limit_is_refused_before_decoding() {
    let opts = ImportOptions {
        max_model_bytes: 16,
        ..ImportOptions::default()
    };
    let r = onnx::load_bytes(&[0u8; 17], None, &opts);
    assert!(matches!(r, Err(OnnxError::TooLarge { .. })), "{r:?}");
}

/// TensorProto dims whose product overflows, or that claim far more data
/// than the payload has, are errors before anything is allocated.
#[test]
fn onnx_tensor_huge_or_overflowing_dims_are_typed_errors() {
    for dims in [
        vec![i64::MAX, 2],
        vec![1 << 40, 1 << 40],
        vec![1 << 40],
        vec![-1, 4],
    ] {
        let t = TensorProto {
            dims: dims.clone(),
            data_type: Some(proto::data_type::FLOAT),
            raw_data: Some(vec![0; 16]),
            ..Default::default()
        };
        let bytes = t.encode_to_vec();
        let r = onnx::decode_tensor(&bytes, 1 << 20);
        assert!(r.is_err(), "dims {dims:?} accepted");
    }
}

/// An ONNX Expand whose target shape is a huge constant must not try to
/// allocate it: folding skips it and running it hits the tensor limit.
#[test]
fn onnx_expand_to_huge_shape_is_a_typed_error() {
    let shape = TensorProto {
        dims: vec![3],
        data_type: Some(proto::data_type::INT64),
        int64_data: vec![1 << 20, 1 << 20, 1 << 10],
        name: Some("shape".into()),
        ..Default::default()
    };
    let mut m = model(
        vec![node("Expand", "big", &["x", "shape"], "y")],
        vec![value_info("x", &[1])],
        "y",
    );
    m.graph.as_mut().unwrap().initializer.push(shape);
    let bytes = m.encode_to_vec();
    let Ok(imported) = onnx::load_bytes(&bytes, None, &ImportOptions::default()) else {
        return; // refused at import: fine
    };
    let g = &imported.graph;
    let Ok(model) = g.compile(&PrecisionPlan::all(g, FloatType::F32)) else {
        return; // refused at compile: fine
    };
    let x = Tensor::from_f32(&[1], [1.0]).unwrap();
    let r = model.run_ordered(&[("x", &x)]);
    assert!(matches!(r, Err(GraphError::Runtime { .. })), "{r:?}");
}

/// Shape products that overflow never wrap to a small element count.
#[test]
fn tensor_shapes_that_overflow_are_rejected() {
    let huge = [1usize << 32, 1 << 32, 1 << 1];
    assert_eq!(numel(&huge), usize::MAX);
    assert_eq!(numel(&[0, usize::MAX, 2]), 0);
    assert!(Tensor::from_f32(&huge, Vec::<f32>::new()).is_err());
    assert!(Tensor::from_bytes(DType::F32, &huge, &[]).is_err());
    assert!(Tensor::from_bool(&huge, &[]).is_err());
    // usize::MAX / 2 elements of 4 bytes: the element count fits, the bytes don't.
    assert!(Tensor::from_bytes(DType::F32, &[usize::MAX / 2], &[]).is_err());
    let t = Tensor::from_f32(&[2, 2], [1.0; 4]).unwrap();
    assert!(t.reshape(&huge).is_err());
}

#[test]
#[should_panic(expected = "overflows usize")]
fn tensor_zeros_with_an_overflowing_shape_panics_with_a_message() {
    let _ = Tensor::zeros(DType::F32, &[1 << 40, 1 << 40]);
}

/// safetensors headers whose shapes overflow or disagree with the data are
/// errors, in both the `safetensors`-crate loader and the streaming parser.
#[test]
fn safetensors_huge_or_overflowing_shapes_are_typed_errors() {
    for shape in [
        "[4294967296,4294967296,16]",
        "[2,9223372036854775807,4]",
        "[1099511627776]",
    ] {
        let json = format!(r#"{{"w":{{"dtype":"F32","shape":{shape},"data_offsets":[0,16]}}}}"#);
        let mut file = (json.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(json.as_bytes());
        file.extend_from_slice(&[0; 16]);
        assert!(Weights::from_bytes(&file).is_err(), "{shape}");
        let mut r = std::io::Cursor::new(&file);
        assert!(
            mixprec::safetensors_stream::Header::read_from(&mut r, file.len() as u64).is_err(),
            "{shape}"
        );
    }
}

/// GEMM views whose extent overflows are errors, not wrapped bounds.
#[test]
fn gemm_view_extent_overflow_is_a_typed_error() {
    let data = [0f32; 4];
    assert_eq!(
        MatRef::new(&data, usize::MAX, 2, usize::MAX / 2).unwrap_err(),
        GemmError::SizeOverflow
    );
    assert!(matches!(
        MatRef::new(&data, 1 << 33, 1 << 33, 1 << 33),
        Err(GemmError::SizeOverflow)
    ));
    assert!(matches!(
        MatRef::new(&data, 3, 2, 2),
        Err(GemmError::DataTooShort { .. })
    ));
}

/// The tensor limit is configurable and applies to compile-time constant
/// evaluation as well as to runs.
#[test]
fn tensor_limit_is_configurable() {
    let mut g = GraphBuilder::new();
    let x = g.input("x", &[1024.into()], DType::F32);
    let y = g.relu("r", x).unwrap();
    g.output(y);
    let graph = g.finish().unwrap();
    let m = graph
        .compile(&PrecisionPlan::all(&graph, FloatType::F32))
        .unwrap();
    let x = Tensor::from_f32(&[1024], vec![1.0; 1024]).unwrap();
    assert_eq!(
        mixprec::graph::max_tensor_bytes(),
        mixprec::graph::DEFAULT_MAX_TENSOR_BYTES
    );
    // Other tests in this file may run concurrently; 4 KiB passes both.
    mixprec::graph::set_max_tensor_bytes(4096);
    assert!(m.run_ordered(&[("x", &x)]).is_ok());
    mixprec::graph::set_max_tensor_bytes(4095);
    let r = m.run_ordered(&[("x", &x)]);
    mixprec::graph::set_max_tensor_bytes(0);
    assert!(matches!(r, Err(GraphError::Runtime { .. })), "{r:?}");
}

/// Found by the onnx_bytes fuzzer: Tile with repeats 2^28 made the importer
/// build a 2^28-input Concat (2 GiB of value ids) before any tensor limit
/// could apply. Now a typed error.
#[test]
fn onnx_tile_with_huge_repeats_is_a_typed_error() {
    let reps = TensorProto {
        dims: vec![2],
        data_type: Some(proto::data_type::INT64),
        int64_data: vec![1 << 28, 1],
        name: Some("reps".into()),
        ..Default::default()
    };
    let mut m = model(
        vec![node("Tile", "tile", &["x", "reps"], "y")],
        vec![value_info("x", &[1, 4])],
        "y",
    );
    m.graph.as_mut().unwrap().initializer.push(reps);
    let r = onnx::load_bytes(&m.encode_to_vec(), None, &ImportOptions::default());
    assert!(r.is_err(), "{r:?}");
}

/// Found by the onnx_bytes fuzzer (session 2): a Conv node with no inputs
/// indexed its (empty) input list while checking the rank, a panic instead
/// of an error naming the node.
#[test]
fn onnx_conv_without_inputs_is_a_typed_error() {
    let m = model(
        vec![node("Conv", "conv", &[], "y")],
        vec![value_info("x", &[1, 1, 4, 4])],
        "y",
    );
    let err = onnx::load_bytes(&m.encode_to_vec(), None, &ImportOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("conv") && msg.contains("input 0"), "{msg}");
}

/// Found by the onnx_bytes fuzzer (session 2): a Slice of a rank-0 tensor
/// with one start and default axes indexed past the (empty) shape.
#[test]
fn onnx_slice_with_more_starts_than_rank_is_a_typed_error() {
    let int = |name: &str| TensorProto {
        dims: vec![1],
        data_type: Some(proto::data_type::INT64),
        int64_data: vec![0],
        name: Some(name.into()),
        ..Default::default()
    };
    let mut m = model(
        vec![node("Slice", "slice", &["x", "starts", "ends"], "y")],
        vec![value_info("x", &[])],
        "y",
    );
    let g = m.graph.as_mut().unwrap();
    g.initializer.push(int("starts"));
    g.initializer.push(int("ends"));
    let err = onnx::load_bytes(&m.encode_to_vec(), None, &ImportOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("slice") && msg.contains("rank 0"), "{msg}");
}

/// The fusion matchers read their nodes' inputs by position; a softmax-shaped
/// subgraph whose ReduceSum, Exp or Sub has no inputs must be an import error
/// (the lowering names the node), not an index panic inside fusion.
#[test]
fn onnx_fusion_patterns_with_missing_inputs_are_typed_errors() {
    for (missing, exp_in, rs_in) in [("rs", vec!["x"], vec![]), ("e", vec![], vec!["e"])] {
        let m = model(
            vec![
                node("Exp", "e", &exp_in, "e"),
                node("ReduceSum", "rs", &rs_in, "s"),
                node("Div", "d", &["e", "s"], "y"),
            ],
            vec![value_info("x", &[2, 3])],
            "y",
        );
        let r = onnx::load_bytes(&m.encode_to_vec(), None, &ImportOptions::default());
        let msg = r.map(|_| ()).unwrap_err().to_string();
        assert!(msg.contains(missing), "{missing}: {msg}");
    }
}

/// Found by the onnx_bytes fuzzer (fifth round): an opset-9 Slice whose
/// `ends` attribute is shorter than `starts` tripped a length assertion
/// while building the constant inputs.
#[test]
fn onnx_legacy_slice_with_mismatched_lists_is_a_typed_error() {
    let ints = |name: &str, v: Vec<i64>| proto::AttributeProto {
        name: Some(name.into()),
        r#type: Some(proto::attribute_type::INTS),
        ints: v,
        ..Default::default()
    };
    let mut n = node("Slice", "slice", &["x"], "y");
    n.attribute = vec![ints("starts", vec![0, 0]), ints("ends", vec![1])];
    let mut m = model(vec![n], vec![value_info("x", &[2, 2])], "y");
    m.opset_import[0].version = Some(9);
    let err = onnx::load_bytes(&m.encode_to_vec(), None, &ImportOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("slice") && msg.contains("differ in length"),
        "{msg}"
    );
}

/// Found by the gemm_differential fuzzer (a GELU-erf reference at v == 0):
/// `graph::erf_f64(0.0)` looped forever because its series stopped on
/// `|term| < 1e-17 |sum|`, never true when both are 0.
#[test]
fn erf_f64_terminates_at_zero_and_subnormals() {
    use mixprec::graph::erf_f64;
    assert_eq!(erf_f64(0.0), 0.0);
    assert_eq!(erf_f64(-0.0), 0.0);
    for x in [5e-324, 1e-310, -1e-300, f64::MIN_POSITIVE] {
        let e = erf_f64(x);
        // erf(x) ~ 2x/sqrt(pi) for tiny x.
        let want = x * 2.0 / std::f64::consts::PI.sqrt();
        assert!(
            (e - want).abs() <= 1e-15 * want.abs() + 5e-324,
            "erf({x:e}) = {e:e}"
        );
    }
    assert!(erf_f64(f64::NAN).is_nan() || erf_f64(f64::NAN).abs() <= 1.0);
}
