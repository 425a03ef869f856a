//! Entry points of the fuzz targets (`fuzz/fuzz_targets/*.rs`) and of the
//! corpus replay test (`tests/fuzz_corpus.rs`), so both run one definition.
//!
//! Every function takes arbitrary bytes and must return normally: loaders
//! are expected to answer hostile input with typed errors. The differential
//! ones (`convert_differential`, `gemm_differential`, `conv_differential`,
//! `pool_differential`) panic only when a kernel result disagrees with its
//! reference. Not a stable API.

use std::io::Cursor;

use half::{bf16, f16};
use mixprec_kernels::convert::{self, bits};
use mixprec_kernels::gemm::{self, Accumulation, Activation, Epilogue, MatMut, MatRef, PackedB};
use mixprec_kernels::{Element, FloatType, Isa};

use crate::graph::{
    DType, Dim, Graph, GraphBuilder, PrecisionPlan, Tensor, Weights, erf_f64, numel,
};
use crate::onnx::{self, ImportOptions};
use crate::safetensors_stream::{Header, convert_stream};

/// Models larger than this are refused by the ONNX target (libFuzzer inputs
/// are small anyway; this exercises the size check).
pub const FUZZ_MAX_MODEL_BYTES: u64 = 1 << 20;

/// The tensor limit the ONNX target runs under: far below libFuzzer's
/// 2 GiB memory limit, so a model asking for more is a typed error, which
/// is what the target checks.
pub const FUZZ_MAX_TENSOR_BYTES: usize = 64 << 20;

/// Graph inputs are only fed when they have at most this many elements.
const MAX_INPUT_ELEMS: usize = 1 << 12;

/// ONNX bytes -> decode, import (with and without fusion/folding), compile
/// under f32 and bf16 plans and run on small deterministic inputs.
pub fn onnx_bytes(data: &[u8]) {
    let opts = ImportOptions {
        max_model_bytes: FUZZ_MAX_MODEL_BYTES,
        ..ImportOptions::default()
    };
    crate::graph::set_max_tensor_bytes(FUZZ_MAX_TENSOR_BYTES);
    let _ = onnx::decode_tensor(data, FUZZ_MAX_MODEL_BYTES);
    let Ok(model) = onnx::load_bytes(data, None, &opts) else {
        return;
    };
    run_small(&model.graph);
    let raw = ImportOptions {
        fuse: false,
        fold_constants: false,
        ..opts
    };
    if let Ok(m) = onnx::load_bytes(data, None, &raw) {
        run_small(&m.graph);
    }
}

/// A concrete shape for a graph input: symbolic dims bound to 2. `None`
/// when the input is too large to feed.
fn concrete(shape: &[Dim]) -> Option<Vec<usize>> {
    let s: Vec<usize> = shape.iter().map(|d| d.fixed().unwrap_or(2)).collect();
    let n = s.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
    (n <= MAX_INPUT_ELEMS).then_some(s)
}

/// A small deterministic tensor of `dtype` and `shape`. Integer values are
/// 0..3 so that they are valid indices for most Gather inputs.
fn sample(dtype: DType, shape: &[usize], seed: usize) -> Tensor {
    let n = numel(shape);
    let r = match dtype {
        DType::F32 | DType::Bf16 | DType::F16 => {
            let v: Vec<f32> = (0..n)
                .map(|i| ((i * 7 + seed) % 11) as f32 * 0.25 - 1.25)
                .collect();
            Tensor::from_f32(shape, v).and_then(|t| match dtype {
                DType::Bf16 => t.to_float_type(FloatType::Bf16),
                DType::F16 => t.to_float_type(FloatType::F16),
                _ => Ok(t),
            })
        }
        DType::I64 => {
            let v: Vec<i64> = (0..n).map(|i| ((i + seed) % 3) as i64).collect();
            Tensor::from_i64(shape, &v)
        }
        DType::I32 => {
            let v: Vec<i32> = (0..n).map(|i| ((i + seed) % 3) as i32).collect();
            Tensor::from_i32(shape, &v)
        }
        DType::Bool => {
            let v: Vec<bool> = (0..n).map(|i| (i + seed).is_multiple_of(2)).collect();
            Tensor::from_bool(shape, &v)
        }
    };
    r.unwrap_or_else(|e| panic!("sample tensor {dtype:?} {shape:?}: {e}"))
}

/// Feeds every input of `graph` (if small enough) and runs it under an
/// all-f32 and an all-bf16 plan. Errors are fine; panics are not.
fn run_small(graph: &Graph) {
    let mut feeds = Vec::new();
    for (i, &id) in graph.inputs().iter().enumerate() {
        let info = graph.value(id);
        let Some(shape) = concrete(&info.shape) else {
            return;
        };
        feeds.push((info.name.clone(), sample(info.dtype, &shape, i)));
    }
    let feeds: Vec<(&str, &Tensor)> = feeds.iter().map(|(n, t)| (n.as_str(), t)).collect();
    for ty in [FloatType::F32, FloatType::Bf16] {
        let plan = PrecisionPlan::all(graph, ty);
        if let Ok(model) = graph.compile(&plan) {
            let _ = model.run(&feeds);
        }
    }
}

/// safetensors bytes -> [`Weights::from_bytes`], the streaming header
/// parser, and a streaming conversion whose output must parse again.
///
/// Differential: the streaming parser is documented to be at least as strict
/// as the `safetensors` crate, so a header it accepts must be accepted there.
pub fn safetensors_bytes(data: &[u8]) {
    let _ = Weights::from_bytes(data);
    let mut r = Cursor::new(data);
    let Ok(header) = Header::read_from(&mut r, data.len() as u64) else {
        return;
    };
    assert!(
        safetensors::SafeTensors::deserialize(data).is_ok(),
        "streaming header parser accepted a file the safetensors crate rejects: {:?}",
        safetensors::SafeTensors::deserialize(data).err()
    );
    for to in [FloatType::Bf16, FloatType::F32] {
        let mut r = Cursor::new(data);
        if Header::read_from(&mut r, data.len() as u64).is_err() {
            unreachable!("parsed once already");
        }
        let mut out = Vec::new();
        if convert_stream(&header, &mut r, &mut out, to, 7).is_err() {
            continue;
        }
        let mut r2 = Cursor::new(&out[..]);
        let h2 = Header::read_from(&mut r2, out.len() as u64)
            .unwrap_or_else(|e| panic!("convert_stream wrote an unreadable header: {e}"));
        assert_eq!(
            h2.tensors().len(),
            header.tensors().len(),
            "convert_stream changed the tensor count"
        );
        for (a, b) in header.tensors().iter().zip(h2.tensors()) {
            assert_eq!(a.name, b.name, "convert_stream renamed a tensor");
            assert_eq!(a.shape, b.shape, "convert_stream reshaped `{}`", a.name);
        }
        assert!(
            safetensors::SafeTensors::deserialize(&out).is_ok(),
            "convert_stream output rejected by the safetensors crate"
        );
    }
}

/// A small graph with every kind of node a plan can name: GEMM, elementwise,
/// normalization, softmax, shape ops and an index op.
fn plan_graph() -> Graph {
    let w1 = Tensor::from_f32(
        &[4, 3],
        (0..12).map(|i| i as f32 * 0.1 - 0.5).collect::<Vec<_>>(),
    )
    .expect("shape matches");
    let w2 = Tensor::from_f32(
        &[2, 4],
        (0..8).map(|i| 0.3 - i as f32 * 0.07).collect::<Vec<_>>(),
    )
    .expect("shape matches");
    let table = Tensor::from_f32(
        &[5, 3],
        (0..15).map(|i| i as f32 * 0.01).collect::<Vec<_>>(),
    )
    .expect("shape matches");
    let mut g = GraphBuilder::new();
    let x = g.input("x", &[Dim::sym("batch"), 3.into()], DType::F32);
    let ids = g.input("ids", &[Dim::sym("batch")], DType::I64);
    let e = g.embedding("embed", &table, ids).expect("valid graph");
    let x = g.add("add_embed", x, e).expect("valid graph");
    let h = g.linear("fc1", x, &w1, None).expect("valid graph");
    let h = g.gelu("act", h).expect("valid graph");
    let gamma = Tensor::from_f32(&[4], [1.0, 0.5, 2.0, 1.0]).expect("shape matches");
    let h = g
        .layer_norm("ln", h, &gamma, None, 1e-5)
        .expect("valid graph");
    let h = g.linear("fc2", h, &w2, None).expect("valid graph");
    let h = g.reshape("flat", h, &[-1]).expect("valid graph");
    let y = g.softmax("prob", h, -1).expect("valid graph");
    g.output(y);
    g.finish().expect("valid graph")
}

/// Plan JSON -> parse, validate against a small graph, compile and run; a
/// plan that parses must also survive a JSON round trip unchanged.
pub fn plan_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(plan) = PrecisionPlan::from_json(text) else {
        return;
    };
    let again = PrecisionPlan::from_json(&plan.to_json())
        .unwrap_or_else(|e| panic!("plan JSON round trip failed: {e}"));
    assert_eq!(plan, again, "plan JSON round trip changed the plan");
    let g = plan_graph();
    let valid = plan.validate(&g).is_ok();
    match g.compile(&plan) {
        Ok(model) => {
            assert!(valid, "compile accepted a plan that validate rejects");
            let x = sample(DType::F32, &[2, 3], 0);
            let ids = Tensor::from_i64(&[2], &[1, 4]).expect("shape matches");
            let out = model
                .run(&[("x", &x), ("ids", &ids)])
                .unwrap_or_else(|e| panic!("valid plan failed to run: {e}"));
            assert_eq!(out.len(), 1);
        }
        Err(_) => assert!(!valid, "validate accepted a plan that compile rejects"),
    }
}

/// Eval data (a safetensors file: one tensor per graph input, by name, plus
/// optional `labels`) through the CLI's own loader
/// ([`crate::cli::model::load_data`]) against a small graph's inputs, then
/// run. Differential: data the loader accepts must also pass the executor's
/// input checks (same names, dtypes, shapes and symbol bindings).
pub fn eval_data(data: &[u8]) {
    use crate::graph::GraphError;
    let Ok(mut file) = tempfile::NamedTempFile::new() else {
        return;
    };
    if std::io::Write::write_all(&mut file, data).is_err() {
        return;
    }
    let g = plan_graph();
    let Ok(ds) = crate::cli::model::load_data(file.path(), &g, "eval data") else {
        return;
    };
    assert_eq!(
        ds.inputs.len(),
        g.inputs().len(),
        "load_data missed an input"
    );
    if let Some(labels) = &ds.labels {
        assert_eq!(
            labels.len(),
            ds.batch,
            "labels accepted with the wrong count"
        );
    }
    if ds.batch > MAX_INPUT_ELEMS {
        return;
    }
    let model = g
        .compile(&PrecisionPlan::all(&g, FloatType::Bf16))
        .expect("the fixed graph compiles");
    for inputs in [ds.inputs.clone(), ds.head(&g, 1)] {
        let refs: Vec<(&str, &Tensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
        // Index values come from the file: out-of-range ids are a
        // Runtime error. An input-matching error means the loader and the
        // executor disagree.
        if let Err(e) = model.run(&refs) {
            assert!(
                !matches!(
                    e,
                    GraphError::InputShape { .. }
                        | GraphError::InputDType { .. }
                        | GraphError::MissingInput { .. }
                        | GraphError::UnknownInput { .. }
                        | GraphError::SymbolConflict { .. }
                ),
                "load_data accepted inputs that run() rejects: {e}"
            );
        }
    }
}

/// Splits fuzz bytes into a little header and a payload.
struct Bytes<'a> {
    data: &'a [u8],
    pos: usize,
    state: u64,
}

impl<'a> Bytes<'a> {
    fn new(data: &'a [u8]) -> Self {
        let state = data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        Bytes {
            data,
            pos: 0,
            state,
        }
    }

    /// The next byte; once the input is used up, a deterministic stream.
    fn u8(&mut self) -> u8 {
        if let Some(&b) = self.data.get(self.pos) {
            self.pos += 1;
            return b;
        }
        self.state = self
            .state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.state >> 33) as u8
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
}

/// Checks one conversion path against the scalar reference, bit for bit.
fn check_bits<S: Copy, D: Copy>(
    what: &str,
    isa: Isa,
    src: &[S],
    got: &[D],
    reference: impl Fn(S) -> D,
    eq: impl Fn(D, D) -> bool,
    show: impl Fn(S, D, D) -> String,
) {
    for (i, (&s, &g)) in src.iter().zip(got).enumerate() {
        let r = reference(s);
        assert!(
            eq(g, r),
            "{what} at {} mismatch at element {i}: {}",
            isa.name(),
            show(s, g, r)
        );
    }
}

/// Random f32 / 16-bit patterns through every available conversion path
/// (the `*_at` variants for each level, and the default dispatch) at
/// several offsets and lengths; each must equal the scalar reference in
/// [`convert::bits`] bit for bit.
pub fn convert_differential(data: &[u8]) {
    let mut b = Bytes::new(data);
    let offset = (b.u8() % 16) as usize;
    let n32 = data.len().saturating_sub(1) / 4;
    let mut words: Vec<u32> = (0..n32 + offset).map(|_| b.u32()).collect();
    // A few exact special patterns, so short inputs meet them too.
    if let Some(w) = words.get_mut(offset) {
        *w ^= 0x7F80_0000 & (b.u32() | 0x7F00_0000);
    }
    let f32s: Vec<f32> = words.iter().map(|&w| f32::from_bits(w)).collect();
    let src = &f32s[offset..];
    let h16: Vec<u16> = words
        .iter()
        .flat_map(|&w| [w as u16, (w >> 16) as u16])
        .collect();
    let src16 = &h16[offset..];
    let src_bf: Vec<bf16> = src16.iter().map(|&h| bf16::from_bits(h)).collect();
    let src_h: Vec<f16> = src16.iter().map(|&h| f16::from_bits(h)).collect();
    let show32 =
        |s: f32, g: u16, r: u16| format!("{:#010x} -> {g:#06x}, want {r:#06x}", s.to_bits());
    let show16 = |s: u16, g: f32, r: f32| {
        format!(
            "{s:#06x} -> {:#010x}, want {:#010x}",
            g.to_bits(),
            r.to_bits()
        )
    };
    let same32 = |a: f32, b: f32| a.to_bits() == b.to_bits();
    let mut isas: Vec<Option<Isa>> = Isa::available().map(Some).collect();
    isas.push(None);
    for isa in isas {
        let label = isa.unwrap_or(mixprec_kernels::active_isa());
        let mut out_bf = vec![bf16::ZERO; src.len()];
        let mut out_h = vec![f16::ZERO; src.len()];
        let mut wide_bf = vec![0f32; src16.len()];
        let mut wide_h = vec![0f32; src16.len()];
        match isa {
            Some(isa) => {
                convert::f32_to_bf16_at(isa, src, &mut out_bf).expect("available level");
                convert::f32_to_f16_at(isa, src, &mut out_h).expect("available level");
                convert::bf16_to_f32_at(isa, &src_bf, &mut wide_bf).expect("available level");
                convert::f16_to_f32_at(isa, &src_h, &mut wide_h).expect("available level");
            }
            None => {
                convert::f32_to_bf16(src, &mut out_bf);
                convert::f32_to_f16(src, &mut out_h);
                convert::bf16_to_f32(&src_bf, &mut wide_bf);
                convert::f16_to_f32(&src_h, &mut wide_h);
            }
        }
        let out_bf: Vec<u16> = out_bf.iter().map(|x| x.to_bits()).collect();
        let out_h: Vec<u16> = out_h.iter().map(|x| x.to_bits()).collect();
        check_bits(
            "f32->bf16",
            label,
            src,
            &out_bf,
            |s| bits::f32_to_bf16_bits(s.to_bits()),
            |a, b| a == b,
            show32,
        );
        check_bits(
            "f32->f16",
            label,
            src,
            &out_h,
            |s| bits::f32_to_f16_bits(s.to_bits()),
            |a, b| a == b,
            show32,
        );
        check_bits(
            "bf16->f32",
            label,
            src16,
            &wide_bf,
            |s| f32::from_bits(bits::bf16_to_f32_bits(s)),
            same32,
            show16,
        );
        check_bits(
            "f16->f32",
            label,
            src16,
            &wide_h,
            |s| f32::from_bits(bits::f16_to_f32_bits(s)),
            same32,
            show16,
        );
    }
}

/// A finite test value from two fuzz bytes: a small integer times a power
/// of two, sometimes deep in the subnormal range of `T`.
fn value<T: Element>(b: &mut Bytes) -> T {
    let m = b.u8() as i8 as f32;
    let e = b.u8();
    let exp = if e >= 248 {
        match T::DTYPE {
            FloatType::F16 => -20,
            _ => -135,
        }
    } else {
        (e % 21) as i32 - 12
    };
    T::from_f32(m * (exp as f32).exp2())
}

fn unit(t: FloatType) -> f64 {
    match t {
        FloatType::F32 => f64::powi(2.0, -24),
        FloatType::Bf16 => f64::powi(2.0, -8),
        FloatType::F16 => f64::powi(2.0, -11),
    }
}

fn smallest_subnormal(t: FloatType) -> f64 {
    match t {
        FloatType::F32 => f64::powi(2.0, -149),
        FloatType::Bf16 => f64::powi(2.0, -133),
        FloatType::F16 => f64::powi(2.0, -24),
    }
}

fn max_finite(t: FloatType) -> f64 {
    match t {
        FloatType::F32 => f32::MAX as f64,
        FloatType::Bf16 => bf16::MAX.to_f64(),
        FloatType::F16 => 65504.0,
    }
}

fn gelu_tanh_f64(v: f64) -> f64 {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    0.5 * v * (1.0 + (c * (v + 0.044715 * v * v * v)).tanh())
}

/// Random small GEMMs (shapes up to 40 x 40 x 48, transposed and padded
/// views, alpha/beta/bias/activation, every input/output type pair) through
/// every available level, the default dispatch with 1 and 2 threads and the
/// packed-B entry point; each element must be within the documented bound
/// of an f64 reference, and the thread counts must agree bit for bit.
pub fn gemm_differential(data: &[u8]) {
    let mut b = Bytes::new(data);
    let types = b.u8();
    match (types % 3, (types / 3) % 3) {
        (0, 0) => gemm_case::<f32, f32>(&mut b),
        (0, 1) => gemm_case::<f32, bf16>(&mut b),
        (0, _) => gemm_case::<f32, f16>(&mut b),
        (1, 0) => gemm_case::<bf16, f32>(&mut b),
        (1, 1) => gemm_case::<bf16, bf16>(&mut b),
        (1, _) => gemm_case::<bf16, f16>(&mut b),
        (_, 0) => gemm_case::<f16, f32>(&mut b),
        (_, 1) => gemm_case::<f16, bf16>(&mut b),
        (_, _) => gemm_case::<f16, f16>(&mut b),
    }
}

/// Storage of a possibly transposed `rows x cols` operand: stored as
/// `rows x cols` (or `cols x rows` when transposed) with `pad` extra
/// elements per stored row.
struct Operand<T> {
    data: Vec<T>,
    rows: usize,
    cols: usize,
    trans: bool,
    ld: usize,
}

impl<T: Element> Operand<T> {
    fn new(b: &mut Bytes, rows: usize, cols: usize, trans: bool, pad: usize, nan: bool) -> Self {
        let (sr, sc) = if trans { (cols, rows) } else { (rows, cols) };
        let ld = sc + pad;
        let data = (0..sr * ld)
            .map(|_| {
                if nan {
                    T::from_f32(f32::NAN)
                } else {
                    value::<T>(b)
                }
            })
            .collect();
        Operand {
            data,
            rows,
            cols,
            trans,
            ld,
        }
    }

    fn view(&self) -> MatRef<'_, T> {
        let (sr, sc) = if self.trans {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        };
        let v = MatRef::new(&self.data, sr, sc, self.ld).expect("storage covers the view");
        if self.trans { v.t() } else { v }
    }

    fn at(&self, i: usize, j: usize) -> f64 {
        let idx = if self.trans {
            j * self.ld + i
        } else {
            i * self.ld + j
        };
        self.data[idx].to_f32() as f64
    }
}

fn gemm_case<T: Element, O: Element>(b: &mut Bytes) {
    let m = (b.u8() % 41) as usize;
    let n = (b.u8() % 41) as usize;
    let k = (b.u8() % 49) as usize;
    let flags = b.u8();
    let pads = b.u8();
    let alpha = [1.0f32, -1.0, 0.5, 2.0, 0.0, 1.5, -0.75, 1.0][(b.u8() % 8) as usize];
    let beta = [0.0f32, 1.0, -0.5, 2.0][(b.u8() % 4) as usize];
    let activation = [
        Activation::Identity,
        Activation::Relu,
        Activation::GeluErf,
        Activation::GeluTanh,
    ][((flags >> 3) % 4) as usize];
    // alpha == 0 means A and B are not read, so NaN there must not show.
    let ab_nan = alpha == 0.0 && flags & 0x80 != 0;
    let a = Operand::<T>::new(b, m, k, flags & 1 != 0, (pads % 4) as usize, ab_nan);
    let bm = Operand::<T>::new(b, k, n, flags & 2 != 0, ((pads >> 2) % 4) as usize, ab_nan);
    let bias: Option<Vec<f32>> =
        (flags & 4 != 0).then(|| (0..n).map(|_| value::<f32>(b)).collect());
    let row_bias: Option<Vec<f32>> =
        (flags & 0x20 != 0).then(|| (0..m).map(|_| value::<f32>(b)).collect());
    let ldc = n + ((pads >> 4) % 4) as usize;
    let sentinel = O::from_f32(-12345.0);
    let c0: Vec<O> = (0..m * ldc)
        .map(|idx| {
            if idx % ldc >= n {
                sentinel
            } else if beta == 0.0 {
                // beta == 0 means C is not read.
                O::from_f32(f32::NAN)
            } else {
                value::<O>(b)
            }
        })
        .collect();
    let epilogue = Epilogue {
        bias: bias.as_deref(),
        row_bias: row_bias.as_deref(),
        activation,
    };

    // f64 reference with the documented error bound.
    let u = f64::powi(2.0, -24);
    let tiny = f64::powi(2.0, -149);
    let (uo, subo, maxo) = (
        unit(O::DTYPE),
        smallest_subnormal(O::DTYPE),
        max_finite(O::DTYPE),
    );
    let alpha64 = alpha as f64;
    let mut want = vec![(0f64, 0f64); m * n];
    for i in 0..m {
        for j in 0..n {
            let (mut acc, mut abs) = (0f64, 0f64);
            if alpha != 0.0 {
                for p in 0..k {
                    let prod = a.at(i, p) * bm.at(p, j);
                    acc += prod;
                    abs += prod.abs();
                }
            }
            let cterm = if beta != 0.0 {
                beta as f64 * c0[i * ldc + j].to_f32() as f64
            } else {
                0.0
            };
            let (bj, ri) = (
                bias.as_ref().map_or(0.0, |v| v[j] as f64),
                row_bias.as_ref().map_or(0.0, |v| v[i] as f64),
            );
            let bterm = bj + ri;
            let v = alpha64 * acc + cterm + bterm;
            // Each bias is a separate rounded addition: the partial sums can
            // be as large as either bias even when the two cancel.
            let err = 4.0 * (k as f64 + 2.0) * u * alpha64.abs() * abs
                + 4.0 * u * (alpha64.abs() * acc.abs() + cterm.abs() + bj.abs() + ri.abs())
                + (k as f64 + 8.0) * tiny * (1.0 + alpha64.abs());
            let (r, e) = match activation {
                Activation::Identity => (v, err),
                Activation::Relu => (v.max(0.0), err),
                Activation::GeluErf => (
                    0.5 * v * (1.0 + erf_f64(v / std::f64::consts::SQRT_2)),
                    1.2 * err + 8.0 * u * v.abs() + tiny,
                ),
                Activation::GeluTanh => (gelu_tanh_f64(v), 1.2 * err + 8.0 * u * v.abs() + tiny),
            };
            want[i * n + j] = (r, e);
        }
    }
    // Accumulation::Bf16Dot reads subnormal operands as zero and flushes
    // subnormal partial sums: its documented extra absolute term.
    let max_abs = |o: &Operand<T>| {
        o.data
            .iter()
            .fold(0f64, |m, x| m.max(x.to_f32().abs() as f64))
    };
    let e_ftz = alpha64.abs()
        * 2.0
        * k as f64
        * f64::powi(2.0, -126)
        * (1.0 + max_abs(&a))
        * (1.0 + max_abs(&bm));
    let check_with = |what: &str, c: &[O], extra: f64| {
        for i in 0..m {
            for j in 0..n {
                let got = c[i * ldc + j].to_f32() as f64;
                let (r, e) = want[i * n + j];
                let e = e + extra
                    * if activation == Activation::Identity {
                        1.0
                    } else {
                        1.2
                    };
                let tol = e * (1.0 + uo) + uo * r.abs() + subo;
                let ok = (got - r).abs() <= tol
                    || (got.is_infinite() && got.signum() == r.signum() && r.abs() + e >= maxo);
                assert!(
                    ok,
                    "gemm {what} {}x{}x{} T={:?} O={:?} alpha={alpha} beta={beta} {activation:?} \
                     bias={} row_bias={} a_t={} b_t={}: C[{i},{j}] = {got:e}, want {r:e} +- {tol:e}",
                    m,
                    n,
                    k,
                    T::DTYPE,
                    O::DTYPE,
                    bias.is_some(),
                    row_bias.is_some(),
                    a.trans,
                    bm.trans
                );
            }
            for p in n..ldc {
                assert!(
                    c[i * ldc + p].to_f32() == sentinel.to_f32(),
                    "gemm {what} wrote C[{i}] padding column {p}"
                );
            }
        }
    };
    let check = |what: &str, c: &[O]| check_with(what, c, 0.0);
    let run_at = |isa: Isa| {
        let mut c = c0.clone();
        let cv = MatMut::new(&mut c, m, n, ldc).expect("storage covers C");
        gemm::gemm_at(
            isa,
            Accumulation::F32,
            alpha,
            a.view(),
            bm.view(),
            beta,
            cv,
            &epilogue,
        )
        .unwrap_or_else(|e| panic!("gemm_at({}) refused a valid call: {e}", isa.name()));
        c
    };
    for isa in Isa::available() {
        check(isa.name(), &run_at(isa));
    }
    let active = mixprec_kernels::active_isa();
    let bits = |c: &[O]| -> Vec<u32> { c.iter().map(|x| x.to_f32().to_bits()).collect() };
    let threads = [1usize, 2].map(|t| {
        gemm::set_num_threads(t);
        let mut c = c0.clone();
        let cv = MatMut::new(&mut c, m, n, ldc).expect("storage covers C");
        gemm::gemm(alpha, a.view(), bm.view(), beta, cv, &epilogue)
            .unwrap_or_else(|e| panic!("gemm refused a valid call: {e}"));
        c
    });
    gemm::set_num_threads(0);
    assert_eq!(
        bits(&threads[0]),
        bits(&threads[1]),
        "gemm results depend on the thread count ({m}x{n}x{k})"
    );
    let plain = run_at(active);
    assert_eq!(
        bits(&plain),
        bits(&threads[0]),
        "gemm and gemm_at(active) disagree"
    );
    let packed = PackedB::pack(bm.view());
    let mut c = c0.clone();
    let cv = MatMut::new(&mut c, m, n, ldc).expect("storage covers C");
    gemm::gemm_packed_at(active, alpha, a.view(), &packed, beta, cv, &epilogue)
        .unwrap_or_else(|e| panic!("gemm_packed refused a valid call: {e}"));
    check("packed", &c);
    // Documented: packed and unpacked agree bit for bit except on the
    // small-m path when B has unit row stride.
    let b_rs_one = bm.trans || bm.ld == 1;
    if m > 16 || !b_rs_one {
        assert_eq!(
            bits(&c),
            bits(&plain),
            "gemm_packed and gemm disagree ({m}x{n}x{k})"
        );
    }
    // Widened once when packed: exact, so the same bits as stored panels.
    let widened = PackedB::pack_widened(bm.view());
    let mut cw = c0.clone();
    let cv = MatMut::new(&mut cw, m, n, ldc).expect("storage covers C");
    gemm::gemm_packed_at(active, alpha, a.view(), &widened, beta, cv, &epilogue)
        .unwrap_or_else(|e| panic!("gemm_packed refused a valid call: {e}"));
    assert_eq!(
        bits(&cw),
        bits(&c),
        "B widened when packed and B packed as stored disagree ({m}x{n}x{k})"
    );
    if T::DTYPE == FloatType::Bf16 && Isa::Avx512CoreBf16.is_available() {
        bf16dot_case(
            &a,
            &bm,
            alpha,
            beta,
            &c0,
            ldc,
            &epilogue,
            e_ftz,
            &check_with,
        );
    }
}

/// `Accumulation::Bf16Dot` on the same case: within its bound, the same
/// bits for 1 and 2 threads, and the same bits with B packed once
/// (`PackedB::pack_for`), which the docs promise for every m.
#[allow(clippy::too_many_arguments)]
fn bf16dot_case<T: Element, O: Element>(
    a: &Operand<T>,
    bm: &Operand<T>,
    alpha: f32,
    beta: f32,
    c0: &[O],
    ldc: usize,
    epilogue: &Epilogue,
    e_ftz: f64,
    check_with: &dyn Fn(&str, &[O], f64),
) {
    let (m, n) = (a.rows, bm.cols);
    let bits = |c: &[O]| -> Vec<u32> { c.iter().map(|x| x.to_f32().to_bits()).collect() };
    let isa = Isa::Avx512CoreBf16;
    let runs = [1usize, 2].map(|t| {
        gemm::set_num_threads(t);
        let mut c = c0.to_vec();
        let cv = MatMut::new(&mut c, m, n, ldc).expect("storage covers C");
        gemm::gemm_at(
            isa,
            Accumulation::Bf16Dot,
            alpha,
            a.view(),
            bm.view(),
            beta,
            cv,
            epilogue,
        )
        .unwrap_or_else(|e| panic!("Bf16Dot refused a valid call: {e}"));
        c
    });
    gemm::set_num_threads(0);
    check_with("bf16dot", &runs[0], e_ftz);
    assert_eq!(
        bits(&runs[0]),
        bits(&runs[1]),
        "Bf16Dot depends on the thread count"
    );
    let packed = PackedB::pack_for(bm.view(), Accumulation::Bf16Dot)
        .unwrap_or_else(|e| panic!("pack_for(Bf16Dot) refused bf16: {e}"));
    let mut c = c0.to_vec();
    let cv = MatMut::new(&mut c, m, n, ldc).expect("storage covers C");
    gemm::gemm_packed_at(isa, alpha, a.view(), &packed, beta, cv, epilogue)
        .unwrap_or_else(|e| panic!("gemm_packed(Bf16Dot) refused a valid call: {e}"));
    assert_eq!(
        bits(&c),
        bits(&runs[0]),
        "Bf16Dot packed and unpacked disagree"
    );
}

/// Random small convolutions (1-7 channels, images up to 18 x 18, kernels up
/// to 5 x 5, strides and dilations up to 3, pads up to 4, extra end padding,
/// 1-39 output channels, batches of 1-3 with gaps between images and between
/// outputs) in f32, bf16 and f16, through `conv2d_batch_at` at every
/// available level with 1 and 2 threads (the latter with the weights
/// packed once, `PackedConvWeights`): with f32 accumulation the result
/// must equal the GEMM on an im2col built here from the definition, bit for
/// bit; with `Bf16Dot` (bf16, where available) the GEMM on that im2col with
/// k in (channel pair, ki, kj, parity) order; the gaps must stay untouched.
/// `conv2d_batch_residual_at` with a ReLU must give `relu(gemm + residual)`;
/// for f32, `conv2d_batch_layout_at` with the images, outputs and residual
/// in a random choice of NCHW16c (where the channels allow) must give its
/// bits permuted, or a typed error where the blocked tiles do not run.
pub fn conv_differential(data: &[u8]) {
    let mut b = Bytes::new(data);
    match b.u8() % 3 {
        0 => conv_case::<f32>(&mut b),
        1 => conv_case::<bf16>(&mut b),
        _ => conv_case::<f16>(&mut b),
    }
}

fn conv_case<T: Element>(b: &mut Bytes) {
    use mixprec_kernels::conv::{Conv2dShape, ConvWeights, PackedConvWeights, conv2d_batch_at};
    let mut pick = |n: u8| (b.u8() % n) as usize;
    // One case in four has 16n output channels, which the channel-blocked
    // tiles take on avx512_core and up: over 16-channel blocks for 16n input
    // channels (half of them), else over channel planes.
    let blocked = pick(4) == 0;
    let cin = if blocked && pick(2) == 0 {
        16 * (1 + pick(2))
    } else {
        1 + pick(7)
    };
    // Blocked cases reach rows of up to six 16-pixel vectors, which the
    // pixel-row tiles over planes split in two from five on.
    let in_size = [1 + pick(18), 1 + pick(if blocked { 90 } else { 18 })];
    let kernel = [1 + pick(5), 1 + pick(5)];
    let stride = [1 + pick(3), 1 + pick(3)];
    let dilation = [1 + pick(3), 1 + pick(3)];
    let pad = [pick(5), pick(5)];
    let extra = [pick(3), pick(3)];
    let cout = if blocked {
        16 * (1 + pick(3))
    } else {
        1 + pick(39)
    };
    let count = 1 + pick(3);
    let (image_gap, out_gap) = (pick(4), pick(4));
    let out = |d: usize| {
        let span = dilation[d] * (kernel[d] - 1) + 1;
        let padded = in_size[d] + pad[d] + extra[d];
        (padded >= span).then(|| (padded - span) / stride[d] + 1)
    };
    let (Some(oh), Some(ow)) = (out(0), out(1)) else {
        return;
    };
    let shape = Conv2dShape {
        in_channels: cin,
        in_size,
        kernel,
        stride,
        dilation,
        pad_begin: pad,
        out_size: [oh, ow],
    };
    let (taps, n) = (kernel[0] * kernel[1], oh * ow);
    let k = cin * taps;
    let image_len = cin * in_size[0] * in_size[1];
    let (image_stride, out_stride) = (image_len + image_gap, cout * n + out_gap);
    let images: Vec<T> = (0..(count - 1) * image_stride + image_len)
        .map(|_| value::<T>(b))
        .collect();
    let weights: Vec<T> = (0..cout * k).map(|_| value::<T>(b)).collect();
    let wv = MatRef::new(&weights, cout, k, k).expect("sized");
    // im2col of image `i` from the definition, rows in `order(c, tap)`.
    let im2col = |i: usize, rows: usize, order: &dyn Fn(usize, usize) -> usize| {
        let img = &images[i * image_stride..i * image_stride + image_len];
        let mut col = vec![T::from_f32(0.0); rows * n];
        for c in 0..cin {
            for tap in 0..taps {
                let (ki, kj) = (tap / kernel[1], tap % kernel[1]);
                for oy in 0..oh {
                    for ox in 0..ow {
                        let iy = (oy * stride[0] + ki * dilation[0]).checked_sub(pad[0]);
                        let ix = (ox * stride[1] + kj * dilation[1]).checked_sub(pad[1]);
                        if let (Some(iy), Some(ix)) = (iy, ix)
                            && iy < in_size[0]
                            && ix < in_size[1]
                        {
                            col[order(c, tap) * n + oy * ow + ox] =
                                img[(c * in_size[0] + iy) * in_size[1] + ix];
                        }
                    }
                }
            }
        }
        col
    };
    const SENTINEL: f32 = -7.25;
    // Two-thread runs take the weights packed once (`PackedConvWeights`).
    let run = |isa: Isa, acc: Accumulation, threads: usize| {
        let mut got = vec![SENTINEL; (count - 1) * out_stride + cout * n];
        let packed = PackedConvWeights::pack(isa, acc, kernel, wv).expect("whole taps");
        let weights = if threads > 1 {
            ConvWeights::packed(wv, &packed).expect("packed from wv")
        } else {
            wv.into()
        };
        gemm::set_num_threads(threads);
        let r = conv2d_batch_at(
            isa,
            acc,
            &shape,
            count,
            &images,
            image_stride,
            weights,
            &mut got,
            out_stride,
            &Epilogue::default(),
        );
        gemm::set_num_threads(0);
        r.expect("valid convolution");
        for i in 0..count.saturating_sub(1) {
            let gap = &got[i * out_stride + cout * n..(i + 1) * out_stride];
            assert!(
                gap.iter().all(|&v| v == SENTINEL),
                "{shape:?}: gap {i} written"
            );
        }
        got
    };
    let residual: Vec<f32> = (0..(count - 1) * out_stride + cout * n)
        .map(|_| value::<f32>(b))
        .collect();
    let run_residual = |isa: Isa| {
        let mut got = vec![SENTINEL; (count - 1) * out_stride + cout * n];
        let relu = Epilogue {
            activation: gemm::Activation::Relu,
            ..Epilogue::default()
        };
        mixprec_kernels::conv::conv2d_batch_residual_at(
            isa,
            Accumulation::F32,
            &shape,
            count,
            &images,
            image_stride,
            wv,
            &mut got,
            out_stride,
            &relu,
            &residual,
        )
        .expect("valid convolution");
        got
    };
    let check = |got: &[f32], want: &[f32], i: usize, what: &str| {
        let slot = &got[i * out_stride..i * out_stride + cout * n];
        for (j, (g, w)) in slot.iter().zip(want).enumerate() {
            assert!(
                g.to_bits() == w.to_bits(),
                "{what} {shape:?} x{cout}: image {i} element {j}: {g} vs {w}"
            );
        }
    };
    for isa in Isa::available() {
        let (one, two) = (
            run(isa, Accumulation::F32, 1),
            run(isa, Accumulation::F32, 2),
        );
        let res = run_residual(isa);
        for i in 0..count {
            let col = im2col(i, k, &|c, tap| c * taps + tap);
            let mut want = vec![0.0f32; cout * n];
            gemm::gemm_at(
                isa,
                Accumulation::F32,
                1.0,
                wv,
                MatRef::new(&col, k, n, n).expect("sized"),
                0.0,
                MatMut::new(&mut want, cout, n, n).expect("sized"),
                &Epilogue::default(),
            )
            .expect("available level");
            check(&one, &want, i, &format!("{isa} f32"));
            check(&two, &want, i, &format!("{isa} f32, 2 threads"));
            // The sum's NaN payload is unspecified; everything else is exact.
            let with_residual = &res[i * out_stride..][..cout * n];
            for (j, (g, (w, r))) in with_residual
                .iter()
                .zip(want.iter().zip(&residual[i * out_stride..]))
                .enumerate()
            {
                let v = w + r;
                let v = if v > 0.0 || v.is_nan() { v } else { 0.0 };
                assert!(
                    g.to_bits() == v.to_bits() || (g.is_nan() && v.is_nan()),
                    "{isa} residual {shape:?} x{cout}: image {i} element {j}: {g} vs {v}"
                );
            }
        }
    }
    if T::DTYPE == FloatType::F32 {
        use mixprec_kernels::conv::{
            ChannelLayout, ConvError, ConvLayouts, conv2d_batch_layout_at, takes_nchw16c,
        };
        let bits = b.u8();
        let layout = |bit: u8, channels: usize| {
            if bits >> bit & 1 == 1 && channels.is_multiple_of(16) {
                ChannelLayout::Nchw16c
            } else {
                ChannelLayout::Nchw
            }
        };
        let layouts = ConvLayouts {
            image: layout(0, cin),
            output: layout(1, cout),
            residual: layout(2, cout),
        };
        let relu = Epilogue {
            activation: gemm::Activation::Relu,
            ..Epilogue::default()
        };
        let images: &[f32] = bytemuck::cast_slice(&images);
        let weights: &[f32] = bytemuck::cast_slice(&weights);
        let wv = MatRef::new(weights, cout, k, k).expect("sized");
        let plane = in_size[0] * in_size[1];
        let x = nchw16c(images, count, cin, plane, image_stride, layouts.image, true);
        let r = nchw16c(
            &residual,
            count,
            cout,
            n,
            out_stride,
            layouts.residual,
            true,
        );
        for isa in Isa::available().filter(|_| layouts != ConvLayouts::default()) {
            let mut got = vec![SENTINEL; (count - 1) * out_stride + cout * n];
            let result = conv2d_batch_layout_at(
                isa,
                &shape,
                count,
                &x,
                image_stride,
                wv,
                &mut got,
                out_stride,
                &relu,
                Some(&r),
                layouts,
            );
            if !takes_nchw16c(isa, &shape, cout, &relu) {
                assert!(
                    matches!(result, Err(ConvError::Layout { .. })),
                    "{isa} {layouts:?} {shape:?}: {result:?}"
                );
                continue;
            }
            result.expect("valid convolution");
            let got = nchw16c(&got, count, cout, n, out_stride, layouts.output, false);
            let want = run_residual(isa);
            for (j, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    g.to_bits() == w.to_bits(),
                    "{isa} {layouts:?} {shape:?} x{cout}: element {j}: {g} vs {w}"
                );
            }
        }
    }
    if T::DTYPE == FloatType::Bf16 && Isa::available().any(|i| i == Isa::Avx512CoreBf16) {
        let isa = Isa::Avx512CoreBf16;
        let got = run(isa, Accumulation::Bf16Dot, 2);
        let kq = cin.div_ceil(2) * 2 * taps;
        let order = |c: usize, tap: usize| ((c / 2) * taps + tap) * 2 + c % 2;
        let mut wq = vec![T::from_f32(0.0); cout * kq];
        for o in 0..cout {
            for c in 0..cin {
                for tap in 0..taps {
                    wq[o * kq + order(c, tap)] = weights[o * k + c * taps + tap];
                }
            }
        }
        for i in 0..count {
            let col = im2col(i, kq, &order);
            let mut want = vec![0.0f32; cout * n];
            gemm::gemm_at(
                isa,
                Accumulation::Bf16Dot,
                1.0,
                MatRef::new(&wq, cout, kq, kq).expect("sized"),
                MatRef::new(&col, kq, n, n).expect("sized"),
                0.0,
                MatMut::new(&mut want, cout, n, n).expect("sized"),
                &Epilogue::default(),
            )
            .expect("available level");
            check(&got, &want, i, "bf16dot");
        }
    }
}

/// `count` images of `channels` planes of `plane` elements, `stride`
/// apart (the gaps copied as they are), into `layout` (`forward`) or back
/// from it.
fn nchw16c(
    x: &[f32],
    count: usize,
    channels: usize,
    plane: usize,
    stride: usize,
    layout: mixprec_kernels::conv::ChannelLayout,
    forward: bool,
) -> Vec<f32> {
    let mut y = x.to_vec();
    if layout == mixprec_kernels::conv::ChannelLayout::Nchw16c {
        for i in 0..count {
            for c in 0..channels {
                for p in 0..plane {
                    let nchw = i * stride + c * plane + p;
                    let blocked = i * stride + (c / 16 * plane + p) * 16 + c % 16;
                    let (to, from) = if forward {
                        (blocked, nchw)
                    } else {
                        (nchw, blocked)
                    };
                    y[to] = x[from];
                }
            }
        }
    }
    y
}

/// A random max pool (plane size, window, strides, dilations, padding and
/// output size, half of them in the shape of the AVX-512 register path:
/// column stride 2, window 3 from padded column 0 or 2 from column 0) on
/// values without NaNs or -0 (the register path's own case) or with some
/// (its fallback's), through every available level: each must give the
/// definition's bits (the row-major max fold of the taps inside the plane).
pub fn pool_differential(data: &[u8]) {
    use mixprec_kernels::pool::{PoolWindow, max_pool_plane_at};
    let mut b = Bytes::new(data);
    let mut pick = |n: u8| (b.u8() % n) as usize;
    let (h, w) = (pick(40), 1 + pick(160));
    let common = pick(2) == 0;
    let (kernel, pad_begin) = if common {
        let wide = pick(2) == 0;
        (
            [1 + pick(4), if wide { 3 } else { 2 }],
            [pick(3), usize::from(wide)],
        )
    } else {
        ([1 + pick(5), 1 + pick(5)], [pick(5), pick(5)])
    };
    let strides = [1 + pick(3), if common { 2 } else { 1 + pick(3) }];
    let dilations = [1 + pick(2), if common { 1 } else { 1 + pick(2) }];
    // Output sizes around the ones the input gives (windows past the plane
    // and wholly outside it included).
    let out = |n: usize, d: usize, extra: usize| {
        let span = dilations[d] * (kernel[d] - 1) + 1;
        (n + pad_begin[d] + extra).saturating_sub(span) / strides[d] + 1
    };
    let (extra_h, extra_w) = (pick(4), pick(4));
    let win = PoolWindow {
        h,
        w,
        oh: out(h, 0, extra_h),
        ow: out(w, 1, extra_w),
        kernel,
        strides,
        dilations,
        pad_begin,
    };
    let specials = pick(2) == 0;
    let special = [
        f32::from_bits(0x7fc0_0001),
        f32::from_bits(0xffc0_0002),
        f32::from_bits(0x7f80_0003),
        -0.0,
        0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ];
    let src: Vec<f32> = (0..h * w)
        .map(|_| {
            let s = b.u8();
            if specials && s < 12 {
                special[s as usize % special.len()]
            } else {
                value::<f32>(&mut b)
            }
        })
        .collect();
    let mut want = Vec::with_capacity(win.oh * win.ow);
    for i in 0..win.oh {
        for j in 0..win.ow {
            let mut acc = f32::NEG_INFINITY;
            for ki in 0..kernel[0] {
                for kj in 0..kernel[1] {
                    let y = (i * strides[0] + ki * dilations[0]).checked_sub(pad_begin[0]);
                    let x = (j * strides[1] + kj * dilations[1]).checked_sub(pad_begin[1]);
                    if let (Some(y), Some(x)) = (y, x)
                        && y < h
                        && x < w
                    {
                        let v = src[y * w + x];
                        if v > acc || v.is_nan() {
                            acc = v;
                        }
                    }
                }
            }
            want.push(acc);
        }
    }
    let mut scratch = Vec::new();
    for isa in Isa::available() {
        let mut got = vec![7.0f32; win.oh * win.ow];
        max_pool_plane_at(isa, &win, &src, &mut got, &mut scratch).expect("available level");
        if let Some(k) = got
            .iter()
            .zip(&want)
            .position(|(g, r)| g.to_bits() != r.to_bits())
        {
            panic!(
                "max pool at {} differs at output {k}: {:?} vs {:?} for {win:?}",
                isa.name(),
                got[k],
                want[k]
            );
        }
    }
}
