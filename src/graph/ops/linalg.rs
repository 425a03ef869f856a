//! MatMul, Gemm and Conv on the GEMM kernels.

use std::sync::Mutex;

use half::{bf16, f16};
use mixprec_kernels::conv::{
    self, Conv2dShape, ConvError, ConvLayouts, ConvWeights, PackedConvWeights,
};
use mixprec_kernels::gemm::{self, Accumulation, Activation, Epilogue, MatMut, MatRef, PackedB};
use mixprec_kernels::{Element, FloatType, active_isa};

use super::ConvAttrs;
use super::infer::{as_2d, conv_geometry};
use super::par;
use crate::graph::dtype::DType;
use crate::graph::error::{GraphError, Result};
use crate::graph::tensor::{Tensor, TensorElement, TensorView, numel};

/// What compile decided for a GEMM-family node (Gemm, MatMul, Conv).
pub(crate) struct Prepared {
    /// A constant B (k x n logical), packed once in the node's precision
    /// for `accumulation`.
    pub packed: Option<PackedWeight>,
    /// A constant bias in f32: a Gemm's C as a bias row (`beta` applied), or
    /// a Conv's per-channel bias. It joins the f32 accumulator in the GEMM
    /// epilogue, so it is not rounded to the node's storage type.
    pub bias: Option<Vec<f32>>,
    /// How the node's products accumulate (see [`crate::graph::GemmAccumulation`]).
    pub accumulation: Accumulation,
    /// An activation fused into the GEMM epilogue by compile (a following
    /// Relu, or GELU after f32 output: the same bits fused or not).
    pub activation: Activation,
    /// A MatMul's product scale (`alpha`), from a following Mul by a
    /// scalar folded by compile; 1 otherwise.
    pub scale: f32,
    /// A MatMul's operands (A, B) that are Transposes folded by compile:
    /// the step reads the Transpose's input and views it under `perm`.
    pub operand_perms: [Option<Vec<usize>>; 2],
    /// A Conv's constant weights packed once per group for the kernel's
    /// channel-blocked tiles ([`pack_conv`]); empty otherwise.
    pub conv_weights: Vec<PackedConvWeights>,
    /// An f32 Conv whose last input is a residual that compile folded from a
    /// following Add: the step computes `act(conv + bias + residual)`.
    pub residual: bool,
    /// A Conv's input and output (and residual) channel layouts: NCHW16c
    /// where compile keeps a Conv -> Conv activation in 16-channel blocks.
    pub conv_layouts: ConvLayouts,
}

impl Prepared {
    /// A node's accumulation mode; F32 when compile prepared nothing
    /// (constant folding).
    fn accumulation(p: Option<&Prepared>) -> Accumulation {
        p.map_or(Accumulation::F32, |p| p.accumulation)
    }

    /// A node's fused activation; none when compile prepared nothing.
    fn activation(p: Option<&Prepared>) -> Activation {
        p.map_or(Activation::Identity, |p| p.activation)
    }

    /// The inputs as the op sees them, for its output shape: a folded
    /// Transpose's input under its permutation (same elements, the shape
    /// only; never read through).
    pub(crate) fn logical_inputs<'a>(&self, inputs: &[&TensorView<'a>]) -> Vec<TensorView<'a>> {
        inputs
            .iter()
            .enumerate()
            .map(
                |(i, t)| match self.operand_perms.get(i).and_then(Option::as_ref) {
                    Some(p) => {
                        let shape: Vec<usize> = p.iter().map(|&d| t.shape()[d]).collect();
                        (*t).clone().with_shape(&shape)
                    }
                    None => (*t).clone(),
                },
            )
            .collect()
    }

    /// The step's inputs without a folded residual, and the residual.
    pub(crate) fn split_residual<'i, 'a>(
        p: Option<&Prepared>,
        inputs: &'i [&'i TensorView<'a>],
    ) -> (&'i [&'i TensorView<'a>], Option<&'i TensorView<'a>>) {
        match (p.is_some_and(|p| p.residual), inputs.split_last()) {
            (true, Some((r, rest))) => (rest, Some(*r)),
            _ => (inputs, None),
        }
    }

    /// A MatMul's folded scale; 1 when compile prepared nothing.
    fn scale(p: Option<&Prepared>) -> f32 {
        p.map_or(1.0, |p| p.scale)
    }
}

/// A packed B in one of the three float types.
pub(crate) enum PackedWeight {
    F32(PackedB<f32>),
    Bf16(PackedB<bf16>),
    F16(PackedB<f16>),
}

fn kerr(node: &str, e: gemm::GemmError) -> GraphError {
    GraphError::Runtime {
        node: node.to_string(),
        detail: format!("GEMM: {e}"),
    }
}

fn conv_err(node: &str, e: ConvError) -> GraphError {
    GraphError::Runtime {
        node: node.to_string(),
        detail: format!("convolution: {e}"),
    }
}

fn pack_typed<T: Element + TensorElement>(
    b: &Tensor,
    trans: bool,
    accumulation: Accumulation,
    rows: Option<usize>,
) -> Result<PackedB<T>> {
    let s = b.shape();
    let (r, c) = (s[0], s[1]);
    let v = MatRef::new(b.as_slice::<T>()?, r, c, c).map_err(|e| kerr("<pack>", e))?;
    let v = if trans { v.t() } else { v };
    if accumulation == Accumulation::F32 && rows.is_some_and(|m| m > gemm::STREAMING_ROWS) {
        return Ok(PackedB::pack_widened(v));
    }
    PackedB::pack_for(v, accumulation).map_err(|e| kerr("<pack>", e))
}

/// Packs a constant 2-D B (`trans`: stored as [n, k]) for `accumulation`
/// and products of `rows` rows (`None`: not known before the run). A
/// bf16/f16 B that always meets many rows is kept widened to f32, which the
/// kernels' register tiles multiply without widening it again (an f16 MLP
/// at batch 64 ran at f32's speed plus ~5% otherwise); one that may meet
/// few keeps its type, which the streaming path reads at half the bytes.
pub(crate) fn pack(
    b: &Tensor,
    trans: bool,
    accumulation: Accumulation,
    rows: Option<usize>,
) -> Result<PackedWeight> {
    Ok(match b.dtype().float_type() {
        Some(FloatType::F32) => PackedWeight::F32(pack_typed(b, trans, accumulation, rows)?),
        Some(FloatType::Bf16) => PackedWeight::Bf16(pack_typed(b, trans, accumulation, rows)?),
        Some(FloatType::F16) => PackedWeight::F16(pack_typed(b, trans, accumulation, rows)?),
        None => unreachable!("inference admits only float GEMM operands"),
    })
}

/// `[kh, kw]` of Conv weights shaped `[out, in / group, kh, kw]`, or
/// `[out, in / group, kw]` for a 1-D convolution (a height of 1).
fn conv_kernel(ws: &[usize]) -> [usize; 2] {
    if ws.len() == 3 {
        [1, ws[2]]
    } else {
        [ws[2], ws[3]]
    }
}

/// A Conv's constant weights `w` (`[out, in / group, kh, kw]`, or
/// `[out, in / group, kw]` for 1-D) packed per group for `accumulation` on
/// the active level, so that runs do not repack them (2.4 M lanes per
/// call for 512 channels, 3x3).
pub(crate) fn pack_conv(
    node: &str,
    w: &Tensor,
    group: usize,
    accumulation: Accumulation,
) -> Result<Vec<PackedConvWeights>> {
    fn typed<T: Element + TensorElement>(
        node: &str,
        w: &Tensor,
        group: usize,
        accumulation: Accumulation,
    ) -> Result<Vec<PackedConvWeights>> {
        let ws = w.shape();
        let kernel = conv_kernel(ws);
        let rows = ws[0] / group;
        let k = ws[1] * kernel[0] * kernel[1];
        let data = w.as_slice::<T>()?;
        (0..group)
            .map(|gi| {
                let av = MatRef::new(&data[gi * rows * k..(gi + 1) * rows * k], rows, k, k)
                    .map_err(|e| kerr(node, e))?;
                PackedConvWeights::pack(active_isa(), accumulation, kernel, av)
                    .map_err(|e| conv_err(node, e))
            })
            .collect()
    }
    match w.dtype().float_type() {
        Some(FloatType::F32) => typed::<f32>(node, w, group, accumulation),
        Some(FloatType::Bf16) => typed::<bf16>(node, w, group, accumulation),
        Some(FloatType::F16) => typed::<f16>(node, w, group, accumulation),
        None => unreachable!("inference admits only float Conv weights"),
    }
}

/// `&PackedB<T>` of a packed weight (compile packs B in the node's precision).
fn packed_as<T: 'static>(w: &PackedWeight) -> &PackedB<T> {
    let any: &dyn std::any::Any = match w {
        PackedWeight::F32(p) => p,
        PackedWeight::Bf16(p) => p,
        PackedWeight::F16(p) => p,
    };
    any.downcast_ref::<PackedB<T>>()
        .expect("compile packs B in the node's precision")
}

/// A column bias of length n from a Gemm C that broadcasts as a row (shape
/// `[]`, `[1]`, `[n]`, `[1, n]`, `[1, 1]`), scaled by beta; `None` otherwise.
pub(crate) fn row_bias(c: &TensorView<'_>, n: usize, beta: f32) -> Option<Vec<f32>> {
    let s = c.shape();
    let is_row = match s {
        [] => true,
        [x] => *x == 1 || *x == n,
        [1, x] => *x == 1 || *x == n,
        _ => false,
    };
    if !is_row {
        return None;
    }
    let v = c.to_f32_vec();
    Some(if v.len() == n {
        v.iter().map(|x| beta * x).collect()
    } else {
        vec![beta * v[0]; n]
    })
}

fn view<'a, T: Element + TensorElement>(
    t: &TensorView<'a>,
    off: usize,
    rows: usize,
    cols: usize,
) -> Result<MatRef<'a, T>> {
    let d = t.as_slice::<T>()?;
    MatRef::new(&d[off..off + rows * cols], rows, cols, cols).map_err(|e| kerr("<view>", e))
}

#[allow(clippy::too_many_arguments)]
fn gemm_typed<T: Element + TensorElement>(
    node: &str,
    ins: &[&TensorView<'_>],
    out: &mut Tensor,
    alpha: f32,
    beta: f32,
    trans_a: bool,
    trans_b: bool,
    prepared: Option<&Prepared>,
) -> Result<()> {
    let a = ins[0];
    let (m, n) = (out.shape()[0], out.shape()[1]);
    let av = view::<T>(a, 0, a.shape()[0], a.shape()[1])?;
    let av = if trans_a { av.t() } else { av };
    let mut bias_owned = None;
    let mut c_beta = 0.0;
    match (prepared.and_then(|p| p.bias.as_ref()), ins.get(2)) {
        (Some(b), _) => bias_owned = Some(b.clone()),
        (None, Some(c)) => match row_bias(c, n, beta) {
            Some(b) => bias_owned = Some(b),
            None => {
                super::shape::broadcast_copy(c, out);
                c_beta = beta;
            }
        },
        _ => {}
    }
    let epi = Epilogue {
        bias: bias_owned.as_deref(),
        row_bias: None,
        activation: Prepared::activation(prepared),
    };
    let cv = MatMut::new(out.as_slice_mut::<T>()?, m, n, n).map_err(|e| kerr(node, e))?;
    match prepared.and_then(|p| p.packed.as_ref()) {
        Some(w) => gemm::gemm_packed(alpha, av, packed_as::<T>(w), c_beta, cv, &epi)
            .map_err(|e| kerr(node, e)),
        None => {
            let b = ins[1];
            let bv = view::<T>(b, 0, b.shape()[0], b.shape()[1])?;
            let bv = if trans_b { bv.t() } else { bv };
            let acc = Prepared::accumulation(prepared);
            gemm::gemm_at(active_isa(), acc, alpha, av, bv, c_beta, cv, &epi)
                .map_err(|e| kerr(node, e))
        }
    }
}

/// `Gemm`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_op(
    node: &str,
    ins: &[&TensorView<'_>],
    out: &mut Tensor,
    alpha: f32,
    beta: f32,
    trans_a: bool,
    trans_b: bool,
    prepared: Option<&Prepared>,
) -> Result<()> {
    match out.dtype().float_type().expect("float") {
        FloatType::F32 => {
            gemm_typed::<f32>(node, ins, out, alpha, beta, trans_a, trans_b, prepared)
        }
        FloatType::Bf16 => {
            gemm_typed::<bf16>(node, ins, out, alpha, beta, trans_a, trans_b, prepared)
        }
        FloatType::F16 => {
            gemm_typed::<f16>(node, ins, out, alpha, beta, trans_a, trans_b, prepared)
        }
    }
}

/// A MatMul operand as the product sees it: its shape and the element
/// strides of each axis in its buffer (a folded Transpose permutes both).
struct Operand {
    shape: Vec<usize>,
    strides: Vec<usize>,
}

impl Operand {
    /// `t` under `perm` (none: as it is, 1-D promoted at `promote_at` as
    /// numpy does: `[1, k]` for A, `[k, 1]` for B).
    fn new(t: &TensorView<'_>, perm: Option<&[usize]>, promote_at: usize) -> Operand {
        let shape = t.shape();
        let strides = super::shape::strides(shape);
        match perm {
            Some(p) => Operand {
                shape: p.iter().map(|&i| shape[i]).collect(),
                strides: p.iter().map(|&i| strides[i]).collect(),
            },
            None if shape.len() == 1 => {
                let mut o = Operand {
                    shape: vec![shape[0]],
                    strides: vec![1],
                };
                o.shape.insert(promote_at, 1);
                o.strides.insert(promote_at, shape[0]);
                o
            }
            None => Operand {
                shape: shape.to_vec(),
                strides,
            },
        }
    }

    /// The matrix at element `offset`: a `rows x cols` view of the last two
    /// axes, one of which has stride 1 (compile folds only such Transposes).
    fn matrix<'a, T: Element>(
        &self,
        data: &'a [T],
        offset: usize,
    ) -> std::result::Result<MatRef<'a, T>, gemm::GemmError> {
        let r = self.shape.len();
        let (rows, cols) = (self.shape[r - 2], self.shape[r - 1]);
        let (rs, cs) = (self.strides[r - 2], self.strides[r - 1]);
        let data = data.get(offset..).unwrap_or_default();
        if cs == 1 || cols <= 1 {
            MatRef::new(data, rows, cols, rs.max(cols))
        } else {
            MatRef::new(data, cols, rows, cs.max(rows)).map(MatRef::t)
        }
    }

    /// Whether the buffer holds the operand's elements in row-major order.
    fn contiguous(&self) -> bool {
        let mut want = 1;
        self.shape.iter().zip(&self.strides).rev().all(|(&d, &s)| {
            let ok = d <= 1 || s == want;
            want *= d;
            ok
        })
    }
}

fn matmul_typed<T: Element + TensorElement>(
    node: &str,
    ins: &[&TensorView<'_>],
    out: &mut Tensor,
    prepared: Option<&Prepared>,
) -> Result<()> {
    let (a, b) = (ins[0], ins[1]);
    let perm = |i: usize| prepared.and_then(|p| p.operand_perms[i].as_deref());
    let (ao, bo) = (Operand::new(a, perm(0), 0), Operand::new(b, perm(1), 1));
    let (ash, bsh) = (&ao.shape, &bo.shape);
    let (ra, rb) = (ash.len(), bsh.len());
    let (m, k, n) = (ash[ra - 2], ash[ra - 1], bsh[rb - 1]);
    let ad = a.as_slice::<T>()?;
    let od = out.as_slice_mut::<T>()?;
    let epi = Epilogue {
        activation: Prepared::activation(prepared),
        ..Default::default()
    };
    let (isa, acc) = (active_isa(), Prepared::accumulation(prepared));
    let alpha = Prepared::scale(prepared);
    if rb == 2 && ao.contiguous() {
        // One GEMM over all rows of A: its batch dims are contiguous.
        let rows = ad.len() / k.max(1);
        let rows = if k == 0 { numel(&ash[..ra - 1]) } else { rows };
        let av = MatRef::new(ad, rows, k, k).map_err(|e| kerr(node, e))?;
        let cv = MatMut::new(od, rows, n, n).map_err(|e| kerr(node, e))?;
        return match prepared.and_then(|p| p.packed.as_ref()) {
            Some(w) => gemm::gemm_packed(alpha, av, packed_as::<T>(w), 0.0, cv, &epi)
                .map_err(|e| kerr(node, e)),
            None => {
                let bv = bo
                    .matrix(b.as_slice::<T>()?, 0)
                    .map_err(|e| kerr(node, e))?;
                gemm::gemm_at(isa, acc, alpha, av, bv, 0.0, cv, &epi).map_err(|e| kerr(node, e))
            }
        };
    }
    let bd = b.as_slice::<T>()?;
    // Batched with broadcasting: walk the output batch index and map it to
    // the (possibly broadcast) batch offsets of A and B.
    let r = (ra - 2).max(rb - 2);
    // Per output batch axis, an operand's element stride (0 where it is
    // broadcast or missing).
    let batch_strides = |o: &Operand| -> (Vec<usize>, Vec<usize>) {
        let lead = r - (o.shape.len() - 2);
        let mut dims = vec![1; lead];
        let mut st = vec![0; lead];
        for (&d, &s) in o.shape.iter().zip(&o.strides).take(o.shape.len() - 2) {
            dims.push(d);
            st.push(if d == 1 { 0 } else { s });
        }
        (dims, st)
    };
    let ((pa, sa), (pb, sb)) = (batch_strides(&ao), batch_strides(&bo));
    let obatch: Vec<usize> = (0..r).map(|i| pa[i].max(pb[i])).collect();
    let nb = numel(&obatch);
    if m * n == 0 {
        return Ok(());
    }
    // Output batch index -> the element offsets of A's and B's matrices.
    let unravel = |mut bi: usize| {
        let (mut ia, mut ib) = (0, 0);
        for i in (0..r).rev() {
            let d = bi % obatch[i];
            bi /= obatch[i];
            ia += d * sa[i];
            ib += d * sb[i];
        }
        (ia, ib)
    };
    let one = |bi: usize, c: &mut [T]| -> Result<()> {
        let (ia, ib) = unravel(bi);
        let av = ao.matrix(ad, ia).map_err(|e| kerr(node, e))?;
        let bv = bo.matrix(bd, ib).map_err(|e| kerr(node, e))?;
        let cv = MatMut::new(c, m, n, n).map_err(|e| kerr(node, e))?;
        gemm::gemm_at(isa, acc, alpha, av, bv, 0.0, cv, &epi).map_err(|e| kerr(node, e))
    };
    // Many GEMMs too small to thread on their own (attention heads): one
    // per part over the threads instead. Each is computed alone either way,
    // so the split does not change any result.
    let flops = [m, n, k].iter().fold(2usize, |f, &x| f.saturating_mul(x));
    if nb > 1 && flops < SMALL_GEMM_FLOPS && gemm::num_threads() > 1 {
        let first_err: Mutex<Option<GraphError>> = Mutex::new(None);
        par::for_each_piece(od.chunks_mut(m * n).collect(), |bi, c| {
            if let Err(e) = one(bi, c) {
                first_err
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert(e);
            }
        });
        return match first_err.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        };
    }
    for (bi, c) in od.chunks_mut(m * n).enumerate().take(nb) {
        one(bi, c)?;
    }
    Ok(())
}

/// Below this many flops a batched MatMul's GEMMs run one per thread rather
/// than one after another (the kernels' own threshold for splitting a
/// single GEMM, 2^22, is the same).
const SMALL_GEMM_FLOPS: usize = 1 << 22;

/// `MatMul` (numpy semantics).
pub(crate) fn matmul(
    node: &str,
    ins: &[&TensorView<'_>],
    out: &mut Tensor,
    prepared: Option<&Prepared>,
) -> Result<()> {
    match out.dtype().float_type().expect("float") {
        FloatType::F32 => matmul_typed::<f32>(node, ins, out, prepared),
        FloatType::Bf16 => matmul_typed::<bf16>(node, ins, out, prepared),
        FloatType::F16 => matmul_typed::<f16>(node, ins, out, prepared),
    }
}

fn conv_typed<T: Element + TensorElement>(
    node: &str,
    attrs: &ConvAttrs,
    ins: &[&TensorView<'_>],
    out: &mut Tensor,
    prepared: Option<&Prepared>,
    residual: Option<&[f32]>,
) -> Result<()> {
    let (x, w) = (ins[0], ins[1]);
    // 1-D is 2-D with height 1.
    let xs = x.shape();
    let (nb, c, h, wd) = if xs.len() == 3 {
        (xs[0], xs[1], 1, xs[2])
    } else {
        (xs[0], xs[1], xs[2], xs[3])
    };
    let ws = w.shape();
    let (mo, cg, [kh, kw]) = (ws[0], ws[1], conv_kernel(ws));
    let group = attrs.group.max(1);
    let spatial: Vec<Option<usize>> = xs[2..].iter().map(|&d| Some(d)).collect();
    let shape = conv2d_shape(node, attrs, &spatial, ws)?.expect("concrete sizes");
    let mg = mo / group;
    let kk = cg * kh * kw;
    let ohw = shape.out_size[0] * shape.out_size[1];
    let xd = x.as_slice::<T>()?;
    let wdat = w.as_slice::<T>()?;
    // A constant bias arrives in f32 from compile; a run-time one is widened.
    let bias: Option<Vec<f32>> = match prepared.and_then(|p| p.bias.as_ref()) {
        Some(b) => Some(b.clone()),
        None => ins.get(2).map(|b| b.to_f32_vec()),
    };
    let (isa, acc) = (active_isa(), Prepared::accumulation(prepared));
    let od = out.as_slice_mut::<T>()?;
    if mg == 0 || nb == 0 {
        return Ok(());
    }
    let layouts = prepared.map_or(ConvLayouts::default(), |p| p.conv_layouts);
    // One batched call per group: the kernel splits images x row bands over
    // the threads and packs the group's weights once.
    let packed = prepared.map_or(&[][..], |p| &p.conv_weights[..]);
    for gi in 0..group {
        let av = MatRef::new(&wdat[gi * mg * kk..(gi + 1) * mg * kk], mg, kk, kk)
            .map_err(|e| kerr(node, e))?;
        let weights = match packed.get(gi) {
            Some(p) => ConvWeights::packed(av, p).map_err(|e| conv_err(node, e))?,
            None => av.into(),
        };
        // The per-channel bias is a row bias of this group's C, added to the
        // f32 accumulator rather than stored in C first.
        let epi = Epilogue {
            bias: None,
            row_bias: bias.as_ref().map(|b| &b[gi * mg..(gi + 1) * mg]),
            activation: Prepared::activation(prepared),
        };
        let (images, out_at) = (&xd[gi * cg * h * wd..], gi * mg * ohw);
        if layouts != ConvLayouts::default() {
            // Compile keeps activations in blocks only for f32 Convs of
            // one group (`keep_conv_activations_blocked`), T is then f32.
            let (images, out): (&[f32], &mut [f32]) =
                (bytemuck::cast_slice(images), bytemuck::cast_slice_mut(od));
            let wf: &[f32] = bytemuck::cast_slice(&wdat[..mg * kk]);
            let av = MatRef::new(wf, mg, kk, kk).map_err(|e| kerr(node, e))?;
            let weights = match packed.first() {
                Some(p) => ConvWeights::packed(av, p),
                None => Ok(av.into()),
            };
            conv::conv2d_batch_layout_at(
                isa,
                &shape,
                nb,
                images,
                c * h * wd,
                weights.map_err(|e| conv_err(node, e))?,
                out,
                mo * ohw,
                &epi,
                residual,
                layouts,
            )
            .map_err(|e| conv_err(node, e))?;
            continue;
        }
        match residual {
            // f32 only (compile folds residuals into f32 Convs): the output
            // and the residual are the same slice type.
            Some(r) => conv::conv2d_batch_residual_at(
                isa,
                acc,
                &shape,
                nb,
                images,
                c * h * wd,
                weights,
                bytemuck::cast_slice_mut(&mut od[out_at..]),
                mo * ohw,
                &epi,
                &r[out_at..],
            ),
            None => conv::conv2d_batch_at(
                isa,
                acc,
                &shape,
                nb,
                images,
                c * h * wd,
                weights,
                &mut od[out_at..],
                mo * ohw,
                &epi,
            ),
        }
        .map_err(|e| conv_err(node, e))?;
    }
    Ok(())
}

/// The kernel geometry of one group of a Conv (`attrs`, weights of shape
/// `ws`) on input spatial sizes `spatial` (`[h, w]`, or `[w]` for 1-D, a
/// height of 1); `None` where a size is not known.
pub(crate) fn conv2d_shape(
    node: &str,
    attrs: &ConvAttrs,
    spatial: &[Option<usize>],
    ws: &[usize],
) -> Result<Option<Conv2dShape>> {
    let g = conv_geometry(node, attrs, spatial, &ws[2..])?;
    let (Some(outs), Some(ins)) = (
        g.out.iter().copied().collect::<Option<Vec<usize>>>(),
        spatial.iter().copied().collect::<Option<Vec<usize>>>(),
    ) else {
        return Ok(None);
    };
    Ok(Some(Conv2dShape {
        in_channels: ws[1],
        in_size: as_2d(&ins, 1),
        kernel: conv_kernel(ws),
        stride: as_2d(&g.strides, 1),
        dilation: as_2d(&g.dilations, 1),
        pad_begin: as_2d(&g.pad_begin, 0),
        out_size: as_2d(&outs, 1),
    }))
}

/// `Conv` 1-D / 2-D: one kernel [`conv::conv2d_at`] call per image and group.
pub(crate) fn conv(
    node: &str,
    attrs: &ConvAttrs,
    ins: &[&TensorView<'_>],
    out: &mut Tensor,
    prepared: Option<&Prepared>,
) -> Result<()> {
    let (ins, residual) = Prepared::split_residual(prepared, ins);
    if let Some(r) = residual {
        // Compile folds only an Add of equal shapes, all f32.
        if r.shape() != out.shape() || out.dtype() != DType::F32 {
            return Err(GraphError::Runtime {
                node: node.to_string(),
                detail: format!(
                    "residual {:?} {:?} does not match the Conv output {:?} {:?}",
                    r.dtype(),
                    r.shape(),
                    out.dtype(),
                    out.shape()
                ),
            });
        }
        return conv_typed::<f32>(node, attrs, ins, out, prepared, Some(r.as_f32()?));
    }
    match out.dtype().float_type().expect("float") {
        FloatType::F32 => conv_typed::<f32>(node, attrs, ins, out, prepared, None),
        FloatType::Bf16 => conv_typed::<bf16>(node, attrs, ins, out, prepared, None),
        FloatType::F16 => conv_typed::<f16>(node, attrs, ins, out, prepared, None),
    }
}
