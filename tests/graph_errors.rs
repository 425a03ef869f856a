//! Bad graphs, bad run inputs and bad weights give typed errors, never panics.

mod graph_common;

use graph_common::*;
use mixprec::graph::{
    Binary, DType, Dim, GraphBuilder, GraphError, Op, PrecisionPlan, Tensor, Unary, Weights,
};

fn relu() -> Op {
    Op::Unary(Unary::Relu)
}

#[test]
fn unknown_value_names_the_node() {
    let mut g = GraphBuilder::new();
    g.input("x", &[fixed(&[2])[0].clone()], DType::F32);
    g.add_node("n1", relu(), &["nope"], &["y"]).unwrap();
    g.output_named("y");
    match g.finish() {
        Err(GraphError::UnknownValue { node, value }) => {
            assert_eq!((node.as_str(), value.as_str()), ("n1", "nope"))
        }
        r => panic!("{r:?}"),
    }
    let mut g = GraphBuilder::new();
    let x = g.input("x", &[2.into()], DType::F32);
    g.output(x);
    g.output_named("missing");
    assert!(
        matches!(g.finish(), Err(GraphError::UnknownValue { value, .. }) if value == "missing")
    );
    // A ValueId from another builder.
    let mut g = GraphBuilder::new();
    let e = g
        .node("n", relu(), &[mixprec::graph::ValueId(99)])
        .unwrap_err();
    assert!(
        matches!(e, GraphError::UnknownValue { ref node, .. } if node == "n"),
        "{e}"
    );
}

#[test]
fn cycles_are_detected() {
    let mut g = GraphBuilder::new();
    let x = g.input("x", &[3.into()], DType::F32);
    let _ = x;
    g.add_node("a", Op::Binary(Binary::Add), &["x", "c_out"], &["a_out"])
        .unwrap();
    g.add_node("b", relu(), &["a_out"], &["b_out"]).unwrap();
    g.add_node("c", relu(), &["b_out"], &["c_out"]).unwrap();
    g.add_node("d", relu(), &["x"], &["d_out"]).unwrap();
    g.output_named("d_out");
    match g.finish() {
        Err(GraphError::Cycle { nodes }) => assert_eq!(nodes, vec!["a", "b", "c"]),
        r => panic!("{r:?}"),
    }
}

#[test]
fn nodes_in_any_order_are_sorted() {
    let mut g = GraphBuilder::new();
    g.input("x", &[3.into()], DType::F32);
    g.add_node("second", Op::Unary(Unary::Neg), &["h"], &["y"])
        .unwrap();
    g.add_node("first", relu(), &["x"], &["h"]).unwrap();
    g.output_named("y");
    let graph = g.finish().unwrap();
    let order: Vec<&str> = graph.nodes().iter().map(|n| n.name.as_str()).collect();
    assert_eq!(order, vec!["first", "second"]);
    let model = graph.compile(&PrecisionPlan::new()).unwrap();
    let x = Tensor::from_f32(&[3], vec![-1.0, 2.0, -3.0]).unwrap();
    assert_eq!(
        model.run(&[("x", &x)]).unwrap()["y"].to_f32_vec(),
        vec![0.0, -2.0, 0.0]
    );
}

#[test]
fn duplicate_names() {
    let mut g = GraphBuilder::new();
    let x = g.input("x", &[3.into()], DType::F32);
    g.relu("r", x).unwrap();
    assert!(
        matches!(g.relu("r", x), Err(GraphError::DuplicateName { kind: "node", name }) if name == "r")
    );
    let mut g = GraphBuilder::new();
    let x = g.input("x", &[3.into()], DType::F32);
    g.input("x", &[3.into()], DType::F32);
    g.output(x);
    assert!(
        matches!(g.finish(), Err(GraphError::DuplicateName { kind: "value", name }) if name == "x")
    );
    let mut g = GraphBuilder::new();
    g.input("x", &[3.into()], DType::F32);
    g.add_node("a", relu(), &["x"], &["y"]).unwrap();
    assert!(matches!(
        g.add_node("b", relu(), &["x"], &["y"]),
        Err(GraphError::DuplicateName { kind: "value", .. })
    ));
}

#[test]
fn shape_and_dtype_mismatches_name_the_node() {
    let mut g = GraphBuilder::new();
    let x = g.input("x", &[Dim::sym("batch"), 8.into()], DType::F32);
    let w = Tensor::from_f32(&[4, 7], vec![0.0; 28]).unwrap();
    match g.linear("fc1", x, &w, None) {
        Err(GraphError::ShapeMismatch { node, detail }) => {
            assert_eq!(node, "fc1");
            assert!(detail.contains("inner"), "{detail}");
        }
        r => panic!("{r:?}"),
    }
    let y = g.input("y", &[3.into(), 5.into()], DType::F32);
    let z = g.input("z", &[4.into()], DType::F32);
    assert!(
        matches!(g.add("sum", y, z), Err(GraphError::ShapeMismatch { node, .. }) if node == "sum")
    );
    let i = g.input("i", &[5.into()], DType::I64);
    assert!(
        matches!(g.add("mixed", y, i), Err(GraphError::InvalidDType { node, .. }) if node == "mixed")
    );
    assert!(matches!(
        g.relu("relu_int", i),
        Err(GraphError::InvalidDType { .. })
    ));
    assert!(matches!(
        g.node("mm", Op::MatMul, &[y]),
        Err(GraphError::Arity { actual: 1, .. })
    ));
    assert!(matches!(
        g.reshape("rs", y, &[4, -1]),
        Err(GraphError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        g.transpose("tp", y, &[0, 0]),
        Err(GraphError::InvalidAttribute { .. })
    ));
    assert!(matches!(
        g.softmax("sm", y, 2),
        Err(GraphError::InvalidAttribute { .. })
    ));
    // Deferred nodes are checked by finish.
    let mut g = GraphBuilder::new();
    g.input("a", &[2.into(), 3.into()], DType::F32);
    g.input("b", &[4.into(), 5.into()], DType::F32);
    g.add_node("mm", Op::MatMul, &["a", "b"], &["c"]).unwrap();
    g.output_named("c");
    assert!(matches!(g.finish(), Err(GraphError::ShapeMismatch { node, .. }) if node == "mm"));
    let g = GraphBuilder::new();
    assert!(matches!(g.finish(), Err(GraphError::NoOutputs)));
}

#[test]
fn bad_run_inputs() {
    let mut g = GraphBuilder::new();
    let x = g.input("x", &[Dim::sym("batch"), 3.into()], DType::F32);
    let y = g.input("y", &[Dim::sym("batch"), 3.into()], DType::F32);
    let s = g.add("s", x, y).unwrap();
    g.output(s);
    let model = g.finish().unwrap().compile(&PrecisionPlan::new()).unwrap();
    let a = Tensor::from_f32(&[2, 3], vec![1.0; 6]).unwrap();
    let b = Tensor::from_f32(&[4, 3], vec![1.0; 12]).unwrap();
    let c = Tensor::from_f32(&[2, 4], vec![1.0; 8]).unwrap();
    let d = Tensor::from_i64(&[2, 3], &[1; 6]).unwrap();
    assert!(
        matches!(model.run(&[("x", &a)]), Err(GraphError::MissingInput { name }) if name == "y")
    );
    assert!(
        matches!(model.run(&[("x", &a), ("y", &a), ("z", &a)]), Err(GraphError::UnknownInput { name }) if name == "z")
    );
    assert!(matches!(
        model.run(&[("x", &a), ("y", &b)]),
        Err(GraphError::SymbolConflict {
            first: 2,
            second: 4,
            ..
        })
    ));
    assert!(
        matches!(model.run(&[("x", &a), ("y", &c)]), Err(GraphError::InputShape { name, .. }) if name == "y")
    );
    assert!(matches!(
        model.run(&[("x", &d), ("y", &a)]),
        Err(GraphError::InputDType {
            expected: DType::F32,
            actual: DType::I64,
            ..
        })
    ));
    assert_eq!(
        model.run(&[("x", &a), ("y", &a)]).unwrap()["s"].to_f32_vec(),
        vec![2.0; 6]
    );
}

fn sample_weights() -> Weights {
    let mut w = Weights::new();
    w.insert(
        "fc1.weight",
        Tensor::from_f32(&[4, 3], (0..12).map(|i| i as f32).collect::<Vec<_>>()).unwrap(),
    );
    w.insert(
        "fc1.bias",
        Tensor::from_bf16(&[4], &[half::bf16::ONE; 4]).unwrap(),
    );
    w.insert("ids", Tensor::from_i64(&[2], &[3, 1]).unwrap());
    w
}

#[test]
fn weights_round_trip_and_typed_lookups() {
    let w = sample_weights();
    let bytes = w.to_bytes().unwrap();
    let r = Weights::from_bytes(&bytes).unwrap();
    assert_eq!(
        r.names().collect::<Vec<_>>(),
        vec!["fc1.bias", "fc1.weight", "ids"]
    );
    assert_eq!(
        r.get("fc1.weight", &[4, 3]).unwrap().to_f32_vec(),
        w.tensor("fc1.weight").unwrap().to_f32_vec()
    );
    assert_eq!(r.get("fc1.bias", &[4]).unwrap().dtype(), DType::Bf16);
    assert_eq!(
        r.get_typed("ids", DType::I64, &[2])
            .unwrap()
            .as_i64()
            .unwrap(),
        &[3, 1]
    );
    assert!(
        matches!(r.get("fc2.weight", &[4, 3]), Err(GraphError::MissingTensor { name }) if name == "fc2.weight")
    );
    assert!(
        matches!(r.get("fc1.weight", &[3, 4]), Err(GraphError::WeightShape { expected, actual, .. }) if expected == vec![3, 4] && actual == vec![4, 3])
    );
    assert!(matches!(
        r.get("ids", &[2]),
        Err(GraphError::WeightDType {
            actual: DType::I64,
            ..
        })
    ));
    assert!(matches!(
        r.get_typed("fc1.bias", DType::F32, &[4]),
        Err(GraphError::WeightDType {
            expected: DType::F32,
            actual: DType::Bf16,
            ..
        })
    ));
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("w.safetensors");
    w.save(&p).unwrap();
    assert_eq!(Weights::load(&p).unwrap().len(), 3);
    assert!(matches!(
        Weights::load(dir.path().join("absent.safetensors")),
        Err(GraphError::Io { .. })
    ));
}

#[test]
fn truncated_and_corrupt_safetensors_are_errors() {
    let bytes = sample_weights().to_bytes().unwrap();
    // Every proper prefix is rejected (header or data cut short).
    for n in 0..bytes.len() {
        match Weights::from_bytes(&bytes[..n]) {
            Err(GraphError::SafeTensors { .. }) => {}
            r => panic!("prefix {n}: {r:?}"),
        }
    }
    // Garbage header JSON.
    let mut bad = bytes.clone();
    bad[9] = b'#';
    assert!(matches!(
        Weights::from_bytes(&bad),
        Err(GraphError::SafeTensors { .. })
    ));
    // A header length pointing past the end.
    let mut bad = bytes.clone();
    bad[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    assert!(matches!(
        Weights::from_bytes(&bad),
        Err(GraphError::SafeTensors { .. })
    ));
    // A header whose offsets do not match the shape.
    let header = br#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}}"#;
    let mut f = (header.len() as u64).to_le_bytes().to_vec();
    f.extend_from_slice(header);
    f.extend_from_slice(&[0u8; 12]);
    assert!(matches!(
        Weights::from_bytes(&f),
        Err(GraphError::SafeTensors { .. })
    ));
    // A dtype mixprec does not handle.
    let header = br#"{"w":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}}"#;
    let mut f = (header.len() as u64).to_le_bytes().to_vec();
    f.extend_from_slice(header);
    f.extend_from_slice(&[0u8; 8]);
    assert!(
        matches!(Weights::from_bytes(&f), Err(GraphError::UnsupportedDType { name, .. }) if name == "w")
    );
    // Random byte flips never panic.
    let mut rng = Rng::new(91);
    for _ in 0..500 {
        let mut b = bytes.clone();
        for _ in 0..3 {
            let i = (rng.next_u64() as usize) % b.len();
            b[i] = rng.next_u64() as u8;
        }
        let _ = Weights::from_bytes(&b);
    }
}

#[test]
fn runtime_reshape_mismatch_is_an_error() {
    let mut g = GraphBuilder::new();
    let x = g.input("x", &[Dim::sym("n")], DType::F32);
    let s = g.input("s", &[2.into()], DType::I64);
    let y = g
        .node1("r", Op::Reshape { allowzero: false }, &[x, s])
        .unwrap();
    g.output(y);
    let model = g.finish().unwrap().compile(&PrecisionPlan::new()).unwrap();
    let xt = Tensor::from_f32(&[6], vec![0.0; 6]).unwrap();
    let st = Tensor::vec_i64(&[4, 2]);
    assert!(
        matches!(model.run(&[("x", &xt), ("s", &st)]), Err(GraphError::ShapeMismatch { node, .. }) if node == "r")
    );
    let st = Tensor::vec_i64(&[3, -1]);
    assert_eq!(
        model.run(&[("x", &xt), ("s", &st)]).unwrap()["r"].shape(),
        &[3, 2]
    );
}

#[test]
fn weights_feed_a_model_and_keep_metadata() {
    let mut g = GraphBuilder::new();
    let x = g.input("x", &[2.into()], DType::F32);
    let y = g.relu("y", x).unwrap();
    g.output(y);
    let model = g.finish().unwrap().compile(&PrecisionPlan::new()).unwrap();
    let mut inputs: Weights = [("x", Tensor::from_f32(&[2], vec![-1.0, 2.0]).unwrap())]
        .into_iter()
        .collect();
    inputs.set_metadata("source", "test");
    let back = Weights::from_bytes(&inputs.to_bytes().unwrap()).unwrap();
    assert_eq!(
        back.metadata().get("source").map(String::as_str),
        Some("test")
    );
    let out = model.run(&back.iter().collect::<Vec<_>>()).unwrap();
    let out: Weights = out.into_iter().collect();
    assert_eq!(out.tensor("y").unwrap().to_f32_vec(), vec![0.0, 2.0]);
}
