//! Running models on borrowed data (`TensorView`): the results equal runs on
//! owned tensors bit for bit, the caller's buffers are left as they were,
//! unaligned sub-slices work, and bad views or inputs are typed errors.
//!
//! That a run reads a view in place (no copy of the input, none by a Reshape
//! of it) is checked inside the crate, where the executor's addresses are
//! visible: `graph::compile::tests::run_views_reads_the_callers_buffer`.

mod graph_common;

use std::collections::HashMap;

use graph_common::Rng;
use half::{bf16, f16};
use mixprec::graph::{
    DType, Dim, Graph, GraphBuilder, GraphError, Op, PrecisionPlan, Tensor, TensorView,
};
use mixprec::kernels::FloatType;

const BATCH: usize = 3;
const IN: [usize; 2] = [2, 8];
const HID: usize = 12;

/// Storage of one float dtype with room to place values at any offset
/// below 32 elements, so a view can start off the allocation's alignment.
enum Buf {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
    F16(Vec<f16>),
}

impl Buf {
    /// Zeros of `dtype`, room for `vals` at any offset below 32.
    fn new(dtype: DType, vals: &[f32]) -> Buf {
        let n = 32 + vals.len();
        match dtype {
            DType::F32 => Buf::F32(vec![0.0; n]),
            DType::Bf16 => Buf::Bf16(vec![bf16::ZERO; n]),
            DType::F16 => Buf::F16(vec![f16::ZERO; n]),
            _ => unreachable!("float dtypes only"),
        }
    }

    /// Stores `vals` from element `off` on.
    fn place(&mut self, off: usize, vals: &[f32]) {
        let r = off..off + vals.len();
        match self {
            Buf::F32(v) => v[r].copy_from_slice(vals),
            Buf::Bf16(v) => v[r]
                .iter_mut()
                .zip(vals)
                .for_each(|(d, &x)| *d = bf16::from_f32(x)),
            Buf::F16(v) => v[r]
                .iter_mut()
                .zip(vals)
                .for_each(|(d, &x)| *d = f16::from_f32(x)),
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Buf::F32(v) => bytemuck::cast_slice(v),
            Buf::Bf16(v) => bytemuck::cast_slice(v),
            Buf::F16(v) => bytemuck::cast_slice(v),
        }
    }

    fn elem(&self) -> usize {
        match self {
            Buf::F32(_) => 4,
            Buf::Bf16(_) | Buf::F16(_) => 2,
        }
    }

    /// Address of element `i`.
    fn addr(&self, i: usize) -> usize {
        self.bytes().as_ptr() as usize + i * self.elem()
    }

    /// A view of the elements from `off` that fill `shape`.
    fn view(&self, shape: &[usize], off: usize) -> TensorView<'_> {
        let r = off..off + shape.iter().product::<usize>();
        match self {
            Buf::F32(v) => TensorView::from_f32(shape, &v[r]),
            Buf::Bf16(v) => TensorView::from_bf16(shape, &v[r]),
            Buf::F16(v) => TensorView::from_f16(shape, &v[r]),
        }
        .unwrap()
    }

    /// An owned copy of the same elements.
    fn tensor(&self, shape: &[usize], off: usize) -> Tensor {
        self.view(shape, off).to_owned()
    }
}

/// Reshape (the first node on `x`) -> Linear (Gemm) -> Gelu -> Add `skip` ->
/// LayerNorm -> Softmax, inputs in `dtype`; outputs the softmax and the
/// reshaped input.
fn model_graph(dtype: DType) -> Graph {
    let mut rng = Rng::new(41);
    // The builder types the graph in declared dtypes: weights match the inputs.
    let ft = match dtype {
        DType::Bf16 => FloatType::Bf16,
        DType::F16 => FloatType::F16,
        _ => FloatType::F32,
    };
    let mut param = |shape: &[usize], lo, hi| rng.tensor(shape, lo, hi).to_float_type(ft).unwrap();
    let w = param(&[HID, IN[0] * IN[1]], -0.4, 0.4);
    let b = param(&[HID], -0.2, 0.2);
    let gamma = param(&[HID], 0.5, 1.5);
    let beta = param(&[HID], -0.3, 0.3);
    let mut g = GraphBuilder::new();
    let x = g.input("x", &[Dim::sym("batch"), IN[0].into(), IN[1].into()], dtype);
    let skip = g.input("skip", &[Dim::sym("batch"), HID.into()], dtype);
    let flat = g.reshape("flat", x, &[-1, (IN[0] * IN[1]) as i64]).unwrap();
    let h = g.linear("fc", flat, &w, Some(&b)).unwrap();
    let h = g.gelu("act", h).unwrap();
    let h = g.add("res", h, skip).unwrap();
    let h = g.layer_norm("ln", h, &gamma, Some(&beta), 1e-5).unwrap();
    let y = g.softmax("sm", h, -1).unwrap();
    g.output(y);
    g.output(flat);
    g.finish().unwrap()
}

/// Offset (in elements, below 32) at which `buf`'s data is not 64-byte
/// aligned, so a view there is unlike any `Tensor`'s storage.
fn unaligned_offset(buf: &Buf) -> usize {
    (1..32).find(|&o| !buf.addr(o).is_multiple_of(64)).unwrap()
}

#[test]
fn views_run_bit_identical_to_owned_tensors_and_leave_inputs_unchanged() {
    let mut rng = Rng::new(7);
    let n_x = BATCH * IN[0] * IN[1];
    let xv = rng.vec(n_x, -2.0, 2.0);
    let sv = rng.vec(BATCH * HID, -1.0, 1.0);
    let x_shape = [BATCH, IN[0], IN[1]];
    let s_shape = [BATCH, HID];
    for dtype in [DType::F32, DType::Bf16, DType::F16] {
        let graph = model_graph(dtype);
        for plan_t in [FloatType::F32, FloatType::Bf16, FloatType::F16] {
            let model = graph.compile(&PrecisionPlan::all(&graph, plan_t)).unwrap();
            for unaligned in [false, true] {
                let mut xb = Buf::new(dtype, &xv);
                let mut sb = Buf::new(dtype, &sv);
                // At the allocation's start, or where the address is off
                // 64-byte alignment (unlike any Tensor's storage).
                let (xo, so) = if unaligned {
                    (unaligned_offset(&xb), unaligned_offset(&sb))
                } else {
                    (0, 0)
                };
                xb.place(xo, &xv);
                sb.place(so, &sv);
                let (x_before, s_before) = (xb.bytes().to_vec(), sb.bytes().to_vec());
                let what = format!("{dtype} inputs, {plan_t:?} plan, x at element {xo}");

                let owned = model
                    .run(&[
                        ("x", &xb.tensor(&x_shape, xo)),
                        ("skip", &sb.tensor(&s_shape, so)),
                    ])
                    .unwrap();
                let viewed = model
                    .run_views(&[
                        ("x", xb.view(&x_shape, xo)),
                        ("skip", sb.view(&s_shape, so)),
                    ])
                    .unwrap();

                assert_eq!(owned.len(), 2, "{what}");
                for (name, want) in &owned {
                    let got = &viewed[name];
                    assert_eq!(got.dtype(), want.dtype(), "{what}: {name}");
                    assert_eq!(got.shape(), want.shape(), "{what}: {name}");
                    assert_eq!(got.bytes(), want.bytes(), "{what}: {name} differs");
                }
                // The reshaped input comes back as the input's own bits.
                assert_eq!(viewed["flat"].shape(), &[BATCH, IN[0] * IN[1]]);
                assert_eq!(
                    viewed["flat"].bytes(),
                    xb.view(&x_shape, xo).bytes(),
                    "{what}"
                );
                // And the model computed something: each softmax row sums to 1.
                for row in viewed["sm"].to_f32_vec().chunks(HID) {
                    let s: f32 = row.iter().sum();
                    assert!((s - 1.0).abs() < 2e-2, "{what}: row sum {s}");
                }
                assert_eq!(xb.bytes(), x_before, "{what}: x buffer changed");
                assert_eq!(sb.bytes(), s_before, "{what}: skip buffer changed");
            }
        }
    }
}

#[test]
fn profiled_ordered_and_map_runs_agree_with_views() {
    let graph = model_graph(DType::Bf16);
    let model = graph
        .compile(&PrecisionPlan::all(&graph, FloatType::Bf16))
        .unwrap()
        .with_input_capture();
    let mut rng = Rng::new(3);
    let xv: Vec<bf16> = rng
        .vec(2 * IN[0] * IN[1], -1.0, 1.0)
        .into_iter()
        .map(bf16::from_f32)
        .collect();
    let sv: Vec<bf16> = rng
        .vec(2 * HID, -1.0, 1.0)
        .into_iter()
        .map(bf16::from_f32)
        .collect();
    let x = TensorView::from_bf16(&[2, IN[0], IN[1]], &xv).unwrap();
    let s = TensorView::from_bf16(&[2, HID], &sv).unwrap();
    let viewed = model
        .run_views(&[("x", x.clone()), ("skip", s.clone())])
        .unwrap();
    // The first run's inputs were captured as owned copies of the views.
    let cap = model.captured_inputs().unwrap();
    let cx = &cap.iter().find(|(n, _)| n == "x").unwrap().1;
    assert_eq!(cx.bytes(), x.bytes());
    assert_eq!(cx.shape(), x.shape());

    let (xt, st) = (x.to_owned(), s.to_owned());
    let (profiled, profile) = model.run_profiled(&[("x", &xt), ("skip", &st)]).unwrap();
    assert_eq!(profile.entries.len(), model.num_steps());
    let ordered = model.run_ordered(&[("x", &xt), ("skip", &st)]).unwrap();
    let map = model
        .run_map(&HashMap::from([
            ("x".to_string(), xt.clone()),
            ("skip".to_string(), st.clone()),
        ]))
        .unwrap();
    for (i, name) in ["sm", "flat"].into_iter().enumerate() {
        let want = viewed[name].bytes();
        assert_eq!(profiled[name].bytes(), want, "{name}");
        assert_eq!(ordered[i].bytes(), want, "{name}");
        assert_eq!(map[name].bytes(), want, "{name}");
    }
}

#[test]
fn index_and_bool_views_feed_gather_and_where() {
    let table = Tensor::from_f32(&[5, 2], (0..10).map(|i| i as f32).collect::<Vec<_>>()).unwrap();
    let mut g = GraphBuilder::new();
    let ids = g.input("ids", &[Dim::sym("n")], DType::I64);
    let c = g.input("c", &[Dim::sym("n"), 2.into()], DType::Bool);
    let y = g.input("y", &[Dim::sym("n"), 2.into()], DType::F32);
    let e = g.embedding("emb", &table, ids).unwrap();
    let w = g.node1("pick", Op::Where, &[c, e, y]).unwrap();
    g.output(w);
    let graph = g.finish().unwrap();
    let model = graph
        .compile(&PrecisionPlan::all(&graph, FloatType::F32))
        .unwrap();

    let idv = [4i64, 0, -1];
    let cv = [true, false, false, true, true, true];
    let yv = [-1.0f32, -2.0, -3.0, -4.0, -5.0, -6.0];
    let out = model
        .run_views(&[
            ("ids", TensorView::from_i64(&[3], &idv).unwrap()),
            ("c", TensorView::from_bool(&[3, 2], &cv).unwrap()),
            ("y", TensorView::from_f32(&[3, 2], &yv).unwrap()),
        ])
        .unwrap();
    // Rows 4, 0 and 4 (index -1) of the table, then chosen by c.
    let rows = [[8.0f32, 9.0], [0.0, 1.0], [8.0, 9.0]];
    let want: Vec<f32> = (0..6)
        .map(|i| if cv[i] { rows[i / 2][i % 2] } else { yv[i] })
        .collect();
    assert_eq!(out["pick"].to_f32_vec(), want);
}

#[test]
fn tensor_views_borrow_and_round_trip() {
    let t = Tensor::from_f16(&[2, 3], &[f16::from_f32(1.5); 6]).unwrap();
    let v = t.view();
    assert_eq!(v.shape(), t.shape());
    assert_eq!(v.dtype(), DType::F16);
    assert_eq!((v.len(), v.byte_len(), v.is_empty()), (6, 12, false));
    assert_eq!(v.as_f16().unwrap().as_ptr(), t.as_f16().unwrap().as_ptr());
    let from: TensorView = (&t).into();
    assert_eq!(from.bytes().as_ptr(), t.bytes().as_ptr());
    let back = v.to_owned();
    assert_eq!(back.bytes(), t.bytes());
    assert_eq!(back.shape(), t.shape());
    assert_eq!(back.as_f16().unwrap().as_ptr() as usize % 64, 0);
    assert_eq!(v.to_f32_vec(), vec![1.5; 6]);
    assert!(matches!(
        v.as_bf16(),
        Err(GraphError::DTypeMismatch {
            expected: DType::Bf16,
            actual: DType::F16,
            ..
        })
    ));
    assert!(v.as_float_slice().is_some());
    let r = v.clone().reshape(&[3, 2]).unwrap();
    assert_eq!(r.shape(), &[3, 2]);
    assert_eq!(r.bytes().as_ptr(), t.bytes().as_ptr());
    assert!(matches!(
        v.reshape(&[4, 2]),
        Err(GraphError::DataLength {
            expected: 8,
            actual: 6,
            ..
        })
    ));
    let i = [1i32, -2, 3];
    let iv = TensorView::from_i32(&[3], &i).unwrap();
    assert_eq!(iv.to_i64_vec(), vec![1, -2, 3]);
    assert!(iv.as_float_slice().is_none());
}

#[test]
fn bad_view_shapes_are_typed_errors() {
    let buf = vec![bf16::ONE; 6];
    assert!(matches!(
        TensorView::from_bf16(&[2, 4], &buf),
        Err(GraphError::DataLength {
            expected: 8,
            actual: 6,
            ..
        })
    ));
    assert!(matches!(
        TensorView::from_bf16(&[7], &buf),
        Err(GraphError::DataLength { .. })
    ));
    // A product that overflows is reported as such, not as a wrapped count
    // (usize::MAX * 2 wraps to usize::MAX - 1, which no slice has; 2^32 * 2^32
    // wraps to 0, which the empty slice has).
    let big = 1usize << (usize::BITS / 2);
    for shape in [vec![usize::MAX, 2], vec![big, big]] {
        assert!(matches!(
            TensorView::from_f32(&shape, &[]),
            Err(GraphError::ShapeOverflow { .. })
        ));
        assert!(matches!(
            Tensor::from_f32(&shape, Vec::new()),
            Err(GraphError::ShapeOverflow { .. })
        ));
    }
    // A zero dim makes any shape empty, however large the others.
    let e = TensorView::from_f32(&[usize::MAX, 0, 3], &[]).unwrap();
    assert!(e.is_empty());
    assert_eq!(e.to_owned().shape(), &[usize::MAX, 0, 3]);
}

#[test]
fn raw_byte_views_check_length_and_alignment() {
    let vals: Vec<f32> = (0..9).map(|i| i as f32 * 0.5).collect();
    let bytes: &[u8] = bytemuck::cast_slice(&vals);
    // Aligned bytes are viewed in place.
    let v = TensorView::from_bytes(DType::F32, &[2, 4], &bytes[4..36]).unwrap();
    assert_eq!(v.as_f32().unwrap().as_ptr(), vals[1..].as_ptr());
    assert_eq!(v.to_f32_vec(), vals[1..].to_vec());
    // Two bytes in, the data is only 2-byte aligned: fine for bf16 ...
    let h = TensorView::from_bytes(DType::Bf16, &[3], &bytes[2..8]).unwrap();
    assert_eq!(h.len(), 3);
    // ... but not for f32, which cannot be read in place there.
    assert!(matches!(
        TensorView::from_bytes(DType::F32, &[2], &bytes[2..10]),
        Err(GraphError::Misaligned {
            dtype: DType::F32,
            align: 4
        })
    ));
    // Tensor::from_bytes copies the same misaligned data.
    let c = Tensor::from_bytes(DType::F32, &[2], &bytes[2..10]).unwrap();
    assert_eq!(c.bytes(), &bytes[2..10]);
    // A partial element or a length that does not fill the shape.
    assert!(matches!(
        TensorView::from_bytes(DType::F32, &[2], &bytes[..7]),
        Err(GraphError::DataLength { .. })
    ));
    assert!(matches!(
        TensorView::from_bytes(DType::F32, &[3], &bytes[..8]),
        Err(GraphError::DataLength {
            expected: 3,
            actual: 2,
            ..
        })
    ));
    assert!(matches!(
        TensorView::from_bytes(DType::I64, &[usize::MAX, 3], &[]),
        Err(GraphError::ShapeOverflow { .. })
    ));
    // An empty slice at an odd address is still a valid empty view.
    let e = TensorView::from_bytes(DType::F32, &[0, 4], &bytes[1..1]).unwrap();
    assert_eq!(e.as_f32().unwrap(), &[] as &[f32]);
}

#[test]
fn wrong_inputs_to_run_views_are_typed_errors() {
    let graph = model_graph(DType::Bf16);
    let model = graph
        .compile(&PrecisionPlan::all(&graph, FloatType::Bf16))
        .unwrap();
    let xb = vec![bf16::ONE; BATCH * IN[0] * IN[1]];
    let sb = vec![bf16::ONE; BATCH * HID];
    let sf = vec![1.0f32; BATCH * HID];
    let x = || TensorView::from_bf16(&[BATCH, IN[0], IN[1]], &xb).unwrap();
    let s = || TensorView::from_bf16(&[BATCH, HID], &sb).unwrap();

    let r = model.run_views(&[
        ("x", x()),
        ("skip", TensorView::from_f32(&[BATCH, HID], &sf).unwrap()),
    ]);
    assert!(
        matches!(&r, Err(GraphError::InputDType { name, expected: DType::Bf16, actual: DType::F32 }) if name == "skip"),
        "{r:?}"
    );
    // Same elements, wrong shape: [3, 16] where [batch, 2, 8] is declared.
    let flat = TensorView::from_bf16(&[BATCH, IN[0] * IN[1]], &xb).unwrap();
    let r = model.run_views(&[("x", flat), ("skip", s())]);
    assert!(
        matches!(&r, Err(GraphError::InputShape { name, .. }) if name == "x"),
        "{r:?}"
    );
    // The symbolic batch bound to two sizes.
    let s2 = TensorView::from_bf16(&[2, HID], &sb[..2 * HID]).unwrap();
    let r = model.run_views(&[("x", x()), ("skip", s2)]);
    assert!(
        matches!(&r, Err(GraphError::SymbolConflict { .. })),
        "{r:?}"
    );
    let r = model.run_views(&[("x", x())]);
    assert!(
        matches!(&r, Err(GraphError::MissingInput { name }) if name == "skip"),
        "{r:?}"
    );
    let r = model.run_views(&[("x", x()), ("skip", s()), ("extra", s())]);
    assert!(
        matches!(&r, Err(GraphError::UnknownInput { name }) if name == "extra"),
        "{r:?}"
    );
    // The good inputs still run.
    assert!(model.run_views(&[("x", x()), ("skip", s())]).is_ok());
}
