//! Compiling a graph under a precision plan into an executable model, and
//! running it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use mixprec_kernels::conv::{ChannelLayout, ConvLayouts, takes_nchw16c};
use mixprec_kernels::gemm::{Accumulation, Activation, Epilogue};
use mixprec_kernels::{FloatType, Isa, active_isa};

use super::dtype::DType;
use super::error::{GraphError, Result};
use super::graph::{Dim, Graph, Node, ValueId, shape_string};
use super::ops::exec::{Pool, execute, output_metas};
use super::ops::infer::infer;
use super::ops::linalg::{Prepared, conv2d_shape, pack, pack_conv, row_bias};
use super::ops::{Binary, Meta, Op, Unary};
use super::plan::PrecisionPlan;
use super::profile::{Profile, ProfileEntry};
use super::tensor::{Tensor, TensorView, numel};

/// Options of [`Graph::compile_with`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompileOptions {
    /// Return each graph output in the storage dtype of the node producing
    /// it (e.g. bf16) instead of casting it back to its declared dtype (f32).
    pub outputs_in_node_dtype: bool,
    /// How bf16 Gemm, MatMul and Conv nodes accumulate.
    pub bf16_gemm: GemmAccumulation,
    /// Keep every node a step of its own, for per-op profiles that show
    /// each. By default compile folds into a GEMM what gives the same bits
    /// there: into its epilogue (on the f32 accumulator, before the store)
    /// a Relu after a Gemm, MatMul or Conv in any dtype, a GELU, or a Mul by
    /// a scalar constant after a MatMul, when the GEMM's output is f32; and
    /// a Transpose feeding a MatMul into the MatMul's operand strides. A
    /// folded step has no profile entry of its own (its time counts in the
    /// GEMM's node). Either way, nodes whose values nothing reads (no graph
    /// output depends on them) are not run.
    pub keep_all_steps: bool,
}

/// How the GEMM-family nodes (Gemm, MatMul, Conv) of a bf16 plan entry
/// multiply. Every mode accumulates in f32; f32 and f16 nodes always widen
/// their operands exactly and use f32 FMAs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GemmAccumulation {
    /// `VDPBF16PS` ([`mixprec_kernels::gemm::Accumulation::Bf16Dot`]) where
    /// the active ISA level has AVX512_BF16 (about twice the f32 FMA rate),
    /// else [`GemmAccumulation::WidenToF32`]. The instruction treats
    /// subnormal bf16 operands and results as zero and sums each k-pair
    /// before adding it; the kernel docs state the error bound. The tuner
    /// measures accuracy with whatever this resolves to on the machine.
    #[default]
    Auto,
    /// Widen bf16 operands exactly to f32 and use f32 FMAs: no subnormal
    /// flushing, and the same bits on every machine at a given ISA level.
    WidenToF32,
}

impl GemmAccumulation {
    /// The kernel mode a node stored in `dtype` runs with on this machine.
    pub fn resolve(self, dtype: DType) -> Accumulation {
        let dot = dtype == DType::Bf16
            && self == GemmAccumulation::Auto
            && active_isa() >= Isa::Avx512CoreBf16;
        if dot {
            Accumulation::Bf16Dot
        } else {
            Accumulation::F32
        }
    }
}

/// A cast the compiler inserted where a value crosses a dtype boundary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CastInfo {
    /// The graph value cast.
    pub value: String,
    /// Its storage dtype before.
    pub from: DType,
    /// The dtype after.
    pub to: DType,
    /// Whether it was done once at compile time (a weight or constant)
    /// rather than on every run.
    pub at_compile_time: bool,
}

// A model has tens to hundreds of steps, each built once: the Cast
// variant's unused bytes cost nothing worth a Box per node.
#[allow(clippy::large_enum_variant)]
enum StepKind {
    Node {
        node: usize,
        prepared: Option<Prepared>,
        alias_input: bool,
    },
    Cast,
}

struct Step {
    kind: StepKind,
    inputs: Vec<usize>,
    outputs: Vec<usize>,
    free_after: Vec<usize>,
    label: String,
    op_type: &'static str,
}

/// A graph compiled under a [`PrecisionPlan`]: weights converted and GEMM
/// weights packed once, casts inserted where values cross dtype boundaries
/// (one per value and dtype, shared by all consumers), constant
/// sub-graphs evaluated, and buffers recycled by liveness. `Send + Sync`:
/// one model can be run from many threads at once.
pub struct CompiledModel {
    graph: Graph,
    plan: PrecisionPlan,
    slot_dtype: Vec<DType>,
    consts: Vec<Option<Arc<Tensor>>>,
    steps: Vec<Step>,
    input_slots: Vec<(ValueId, usize)>,
    output_slots: Vec<(String, usize)>,
    casts: Vec<CastInfo>,
    /// The values kept in 16-channel blocks between Convs.
    nchw16c_values: Vec<String>,
    /// Set by [`CompiledModel::with_input_capture`]: the first run's inputs.
    capture: Option<std::sync::OnceLock<Vec<(String, Tensor)>>>,
    /// Intermediate buffers of finished runs, one pool per run in flight,
    /// taken by the next run: a repeated run reuses them instead of
    /// page-faulting fresh, zeroed memory for every intermediate (as
    /// onnxruntime's arena does). Outputs go to the caller and are not kept.
    pools: std::sync::Mutex<Vec<Pool>>,
}

impl std::fmt::Debug for CompiledModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledModel")
            .field("steps", &self.steps.len())
            .field("casts", &self.casts)
            .field("plan", &self.plan)
            .finish()
    }
}

/// The op types whose output is their input's data unchanged, so a run can
/// hand the input buffer over instead of copying.
fn is_view_op(op: &Op) -> bool {
    matches!(
        op,
        Op::Reshape { .. }
            | Op::Flatten { .. }
            | Op::Squeeze { .. }
            | Op::Unsqueeze { .. }
            | Op::Identity
    )
}

struct Builder<'g> {
    graph: &'g Graph,
    slot_dtype: Vec<DType>,
    slot_shape: Vec<Vec<Dim>>,
    consts: Vec<Option<Arc<Tensor>>>,
    /// `Some(s)`: this slot is an exact widening of slot `s`.
    widened_from: Vec<Option<usize>>,
    /// The graph value each slot holds (for cast labels).
    slot_value: Vec<ValueId>,
    cast_cache: HashMap<(usize, DType), usize>,
    steps: Vec<Step>,
    casts: Vec<CastInfo>,
    pool: Pool,
}

impl Builder<'_> {
    fn new_slot(
        &mut self,
        dtype: DType,
        shape: Vec<Dim>,
        value: ValueId,
        c: Option<Arc<Tensor>>,
    ) -> usize {
        self.slot_dtype.push(dtype);
        self.slot_shape.push(shape);
        self.consts.push(c);
        self.widened_from.push(None);
        self.slot_value.push(value);
        self.slot_dtype.len() - 1
    }

    /// A new slot for `slot`'s value in `dtype` (`c`: its constant value,
    /// if known), recorded as `slot`'s cast to `dtype`: later casts of
    /// `slot` reuse it, and where it widens a float exactly, narrowing it
    /// back gives the original.
    fn cast_slot(&mut self, slot: usize, dtype: DType, c: Option<Arc<Tensor>>) -> usize {
        let shape = self.slot_shape[slot].clone();
        let s = self.new_slot(dtype, shape, self.slot_value[slot], c);
        if self.slot_dtype[slot].is_float() && dtype == DType::F32 {
            self.widened_from[s] = Some(self.widened_from[slot].unwrap_or(slot));
        }
        self.cast_cache.insert((slot, dtype), s);
        s
    }

    /// The slot holding `slot`'s value in `dtype`, inserting (or reusing) a cast.
    fn as_dtype(&mut self, slot: usize, dtype: DType) -> Result<usize> {
        if self.slot_dtype[slot] == dtype {
            return Ok(slot);
        }
        // A cast back to where an exact widening came from is the original.
        if let Some(o) = self.widened_from[slot]
            && self.slot_dtype[o] == dtype
        {
            return Ok(o);
        }
        if let Some(&s) = self.cast_cache.get(&(slot, dtype)) {
            return Ok(s);
        }
        if let Some(s) = self.view_of_cast_source(slot, dtype)? {
            return Ok(s);
        }
        let from = self.slot_dtype[slot];
        let value = self.slot_value[slot];
        let at_compile_time = self.consts[slot].is_some();
        let c = match &self.consts[slot] {
            Some(t) => {
                let mut out = Tensor::zeros(dtype, t.shape());
                super::ops::elementwise::cast(&t.view(), &mut out);
                Some(Arc::new(out))
            }
            None => None,
        };
        let s = self.cast_slot(slot, dtype, c);
        let vname = self.graph.value(value).name.clone();
        self.casts.push(CastInfo {
            value: vname.clone(),
            from,
            to: dtype,
            at_compile_time,
        });
        if !at_compile_time {
            self.steps.push(Step {
                kind: StepKind::Cast,
                inputs: vec![slot],
                outputs: vec![s],
                free_after: Vec::new(),
                label: format!("cast:{vname}->{dtype}"),
                op_type: "Cast",
            });
        }
        Ok(s)
    }

    /// Where `slot` is a view step's output (a Reshape, Flatten, ... of a
    /// value computed at run time), the same view of its source cast to
    /// `dtype`: the cast is then shared by every view of that source
    /// (attention's q, k and v are three Reshapes of one activation, which
    /// a bf16/f16 plan cast three times, 0.1 ms each on the transformer
    /// bench model), and a view moves no elements, so the bits are the same.
    fn view_of_cast_source(&mut self, slot: usize, dtype: DType) -> Result<Option<usize>> {
        let Some(view) = self.steps.iter().rposition(|st| {
            st.outputs == [slot]
                && matches!(&st.kind, StepKind::Node { node, .. }
                    if is_view_op(&self.graph.nodes[*node].op))
        }) else {
            return Ok(None);
        };
        let source = self.steps[view].inputs[0];
        if self.consts[source].is_some() || !self.slot_dtype[source].is_float() {
            return Ok(None);
        }
        let cast_source = self.as_dtype(source, dtype)?;
        let StepKind::Node { node, .. } = self.steps[view].kind else {
            unreachable!("found as a node step");
        };
        let s = self.cast_slot(slot, dtype, None);
        let step = &self.steps[view];
        let mut inputs = step.inputs.clone();
        inputs[0] = cast_source;
        let (label, op_type) = (step.label.clone(), step.op_type);
        self.steps.push(Step {
            kind: StepKind::Node {
                node,
                prepared: None,
                alias_input: false,
            },
            inputs,
            outputs: vec![s],
            free_after: Vec::new(),
            label,
            op_type,
        });
        Ok(Some(s))
    }
}

impl Graph {
    /// Compiles the graph under `plan` (see [`CompiledModel`]). Errors if
    /// the plan names an unknown node or lowers a non-compute node.
    pub fn compile(&self, plan: &PrecisionPlan) -> Result<CompiledModel> {
        self.compile_with(plan, &CompileOptions::default())
    }

    /// [`Graph::compile`] with options.
    pub fn compile_with(
        &self,
        plan: &PrecisionPlan,
        options: &CompileOptions,
    ) -> Result<CompiledModel> {
        plan.validate(self)?;
        // Only nodes the outputs depend on run.
        let mut needed = vec![false; self.nodes.len()];
        let mut want: HashSet<ValueId> = self.outputs.iter().copied().collect();
        for (i, n) in self.nodes.iter().enumerate().rev() {
            if n.outputs.iter().any(|o| want.contains(o)) {
                needed[i] = true;
                want.extend(n.inputs.iter().copied());
            }
        }
        let mut b = Builder {
            graph: self,
            slot_dtype: Vec::new(),
            slot_shape: Vec::new(),
            consts: Vec::new(),
            widened_from: Vec::new(),
            slot_value: Vec::new(),
            cast_cache: HashMap::new(),
            steps: Vec::new(),
            casts: Vec::new(),
            pool: Pool::default(),
        };
        let mut value_slot: HashMap<ValueId, usize> = HashMap::new();
        let mut input_slots = Vec::new();
        for &v in &self.inputs {
            let vi = self.value(v);
            let s = b.new_slot(vi.dtype, vi.shape.clone(), v, None);
            value_slot.insert(v, s);
            input_slots.push((v, s));
        }
        let const_slot = |b: &mut Builder,
                          v: ValueId,
                          value_slot: &mut HashMap<ValueId, usize>|
         -> Option<usize> {
            if let Some(&s) = value_slot.get(&v) {
                return Some(s);
            }
            let t = self.known.get(&v)?.clone();
            let s = b.new_slot(t.dtype(), super::graph::fixed_shape(t.shape()), v, Some(t));
            value_slot.insert(v, s);
            Some(s)
        };
        for (ni, node) in self.nodes.iter().enumerate() {
            if !needed[ni] {
                continue;
            }
            // Folded at build time (shape arithmetic): the outputs are constants.
            if node.outputs.iter().all(|o| self.known.contains_key(o)) {
                for &o in &node.outputs {
                    const_slot(&mut b, o, &mut value_slot);
                }
                continue;
            }
            let mut ins = Vec::with_capacity(node.inputs.len());
            for &v in &node.inputs {
                let s = const_slot(&mut b, v, &mut value_slot).ok_or_else(|| {
                    GraphError::UnknownValue {
                        node: node.name.clone(),
                        value: self.value(v).name.clone(),
                    }
                })?;
                ins.push(s);
            }
            // Storage dtypes of the inputs.
            let float_in: Vec<usize> = (0..ins.len())
                .filter(|&i| node.op.float_data_input(i) && b.slot_dtype[ins[i]].is_float())
                .collect();
            let target: Option<DType> = if self.is_lowerable(node) {
                Some(plan.dtype_of(&node.name).into())
            } else if matches!(node.op, Op::Cast { .. }) || float_in.len() < 2 {
                None
            } else {
                // Movement ops and Equal with several float inputs need one
                // dtype: keep it if they agree, else f32.
                let first = b.slot_dtype[ins[float_in[0]]];
                if float_in.iter().all(|&i| b.slot_dtype[ins[i]] == first) {
                    None
                } else {
                    Some(DType::F32)
                }
            };
            // Pre-cast slots: a packed Gemm keeps its constant bias in f32 (below).
            let uncast_ins = ins.clone();
            if let Some(t) = target {
                for &i in &float_in {
                    ins[i] = b.as_dtype(ins[i], t)?;
                }
            }
            // Output storage types: the op's inference on storage dtypes.
            let metas: Vec<Meta> = ins
                .iter()
                .map(|&s| Meta {
                    dtype: b.slot_dtype[s],
                    shape: b.slot_shape[s].clone(),
                })
                .collect();
            let refs: Vec<&Meta> = metas.iter().collect();
            let known_views: Vec<Option<TensorView>> = ins
                .iter()
                .map(|&s| b.consts[s].as_deref().map(Tensor::view))
                .collect();
            let known: Vec<Option<&TensorView>> = known_views.iter().map(Option::as_ref).collect();
            let mut k = 0usize;
            let name = node.name.clone();
            let outs = infer(&node.op, &node.name, &refs, &known, &mut || {
                k += 1;
                Dim::Symbolic(format!("{name}:c{k}"))
            })?;
            if ins.iter().all(|&s| b.consts[s].is_some()) {
                // Constant sub-graph: evaluate once with the same kernels.
                let args: Vec<&TensorView> = known.iter().map(|k| k.expect("const")).collect();
                let res = execute(&node.op, &node.name, &args, &mut b.pool, None)?;
                for ((&o, m), t) in node.outputs.iter().zip(outs).zip(res) {
                    let s = b.new_slot(m.dtype, m.shape, o, Some(Arc::new(t)));
                    value_slot.insert(o, s);
                }
                continue;
            }
            let prepared = match &node.op {
                Op::Gemm { .. } | Op::MatMul | Op::Conv(_) => {
                    let dtype = b.slot_dtype[ins[0]];
                    Some(prepare_gemm(
                        &node.op,
                        &node.name,
                        (&ins, &uncast_ins),
                        &b.consts,
                        options.bf16_gemm.resolve(dtype),
                        product_rows(&outs[0].shape),
                    )?)
                }
                _ => None,
            };
            let mut outputs = Vec::new();
            for (&o, m) in node.outputs.iter().zip(outs) {
                let s = b.new_slot(m.dtype, m.shape, o, None);
                value_slot.insert(o, s);
                outputs.push(s);
            }
            // An explicit Cast that widens a float exactly: a later consumer
            // wanting the narrow type reads the original (no cast pair).
            if let Op::Cast { to: DType::F32 } = node.op
                && b.slot_dtype[ins[0]].is_float()
            {
                b.widened_from[outputs[0]] = Some(b.widened_from[ins[0]].unwrap_or(ins[0]));
            }
            b.steps.push(Step {
                kind: StepKind::Node {
                    node: ni,
                    prepared,
                    alias_input: false,
                },
                inputs: ins,
                outputs,
                free_after: Vec::new(),
                label: node.name.clone(),
                op_type: node.op.op_type(),
            });
        }
        let mut output_slots = Vec::new();
        for &v in &self.outputs {
            let vi = self.value(v);
            let s = match const_slot(&mut b, v, &mut value_slot) {
                Some(s) => s,
                None => {
                    return Err(GraphError::UnknownValue {
                        node: "<graph output>".into(),
                        value: vi.name.clone(),
                    });
                }
            };
            let s = if options.outputs_in_node_dtype || !vi.dtype.is_float() {
                s
            } else {
                b.as_dtype(s, vi.dtype)?
            };
            output_slots.push((vi.name.clone(), s));
        }
        if !options.keep_all_steps {
            fold_residual_adds_into_conv(
                &self.nodes,
                &mut b.steps,
                &b.slot_dtype,
                &b.slot_shape,
                &output_slots,
            );
            fuse_into_gemm_epilogue(
                &self.nodes,
                &mut b.steps,
                &b.slot_dtype,
                &b.consts,
                &output_slots,
            );
            fold_transposes_into_matmul(&self.nodes, &mut b.steps, &output_slots);
        }
        drop_unread_steps(&mut b.steps, &output_slots);
        let blocked_slots = if options.keep_all_steps {
            Vec::new()
        } else {
            keep_conv_activations_blocked(
                &self.nodes,
                &mut b.steps,
                &b.slot_dtype,
                &b.slot_shape,
                &output_slots,
            )
        };
        let nchw16c_values = blocked_slots
            .iter()
            .map(|&s| self.value(b.slot_value[s]).name.clone())
            .collect();
        // Liveness: free each run-time slot after its last reader, except
        // outputs, inputs and constants (not owned by the run).
        let n_slots = b.slot_dtype.len();
        let mut last_use: Vec<Option<usize>> = vec![None; n_slots];
        for (i, st) in b.steps.iter().enumerate() {
            for &s in &st.inputs {
                last_use[s] = Some(i);
            }
        }
        let keep: HashSet<usize> = output_slots
            .iter()
            .map(|o| o.1)
            .chain(input_slots.iter().map(|i| i.1))
            .chain((0..n_slots).filter(|&s| b.consts[s].is_some()))
            .collect();
        for (s, lu) in last_use.iter().enumerate() {
            if let Some(i) = lu
                && !keep.contains(&s)
            {
                b.steps[*i].free_after.push(s);
            }
        }
        for st in &mut b.steps {
            if let StepKind::Node {
                node, alias_input, ..
            } = &mut st.kind
            {
                *alias_input = is_view_op(&self.nodes[*node].op)
                    && st.free_after.contains(&st.inputs[0])
                    && st.inputs[1..].iter().all(|s| *s != st.inputs[0]);
            }
        }
        Ok(CompiledModel {
            graph: self.clone(),
            plan: plan.clone(),
            slot_dtype: b.slot_dtype,
            consts: b.consts,
            steps: b.steps,
            input_slots,
            output_slots,
            casts: b.casts,
            nchw16c_values,
            capture: None,
            pools: std::sync::Mutex::new(Vec::new()),
        })
    }
}

/// Moves the steps that follow a Gemm, MatMul or Conv step into its
/// epilogue when the result is the same bit for bit, reading the GEMM's
/// output that nothing else reads (not a graph output): the GEMM step then
/// writes the follower's output slot and the follower goes.
///
/// * Relu, in any dtype: the dtypes agree (no cast between the steps) and
///   Relu commutes with the store's rounding (`relu(round(x)) ==
///   round(relu(x))` for every x, overflow to -inf included).
/// * GELU (erf or tanh form) when the GEMM's output is f32: nothing is
///   rounded between the accumulator and the GELU, and the epilogue's GELU
///   is the elementwise kernel's. (In bf16/f16 it would see the unrounded
///   accumulator, so it stays a step.)
/// * Mul by a rank-0 f32 constant after a MatMul with f32 output and no
///   fused activation (attention's `scores * 1/sqrt(d)`): the epilogue's
///   `alpha * acc` is the same single rounded product.
///
/// A view step (Reshape, Flatten, ...) between the two is kept and moved
/// after the fold. Steps are taken in order, so a Relu after a folded Mul
/// folds too. The GEMM step keeps its node's name, so profiles and the
/// tuner's per-node costs count the followers' (now nil) time in the GEMM
/// node.
fn fuse_into_gemm_epilogue(
    nodes: &[Node],
    steps: &mut Vec<Step>,
    slot_dtype: &[DType],
    consts: &[Option<Arc<Tensor>>],
    output_slots: &[(String, usize)],
) {
    let (readers, mut producer) = readers_and_producers(steps);
    let rank0_f32 = |s: usize| {
        consts[s]
            .as_deref()
            .filter(|c| c.shape().is_empty() && slot_dtype[s] == DType::F32)
            .map(|c| c.to_f32_vec()[0])
    };
    let mut fused = vec![false; steps.len()];
    for i in 0..steps.len() {
        let StepKind::Node { node, .. } = &steps[i].kind else {
            continue;
        };
        // The GEMM output this step reads, and what it becomes.
        let ins = &steps[i].inputs;
        let (s, fold) = match nodes[*node].op {
            Op::Unary(Unary::Relu) => (ins[0], Fold::Activation(Activation::Relu)),
            Op::Unary(Unary::GeluErf) => (ins[0], Fold::Activation(Activation::GeluErf)),
            Op::Unary(Unary::GeluTanh) => (ins[0], Fold::Activation(Activation::GeluTanh)),
            Op::Binary(Binary::Mul) if ins.len() == 2 => {
                match (rank0_f32(ins[0]), rank0_f32(ins[1])) {
                    (None, Some(c)) => (ins[0], Fold::Scale(c)),
                    (Some(c), None) => (ins[1], Fold::Scale(c)),
                    _ => continue,
                }
            }
            _ => continue,
        };
        let Some(&p) = producer.get(&s) else {
            continue;
        };
        if !read_once(&readers, output_slots, s) {
            continue;
        }
        // Through one view step (an ONNX Gemm is 2-D, so a 3-D activation
        // comes back through a Reshape): the followers are elementwise and
        // commute with it, so the view then reshapes the folded output.
        let (j, view) = match &steps[p].kind {
            StepKind::Node { node, .. } if is_view_op(&nodes[*node].op) => {
                let s0 = steps[p].inputs[0];
                match producer.get(&s0) {
                    Some(&j) if read_once(&readers, output_slots, s0) => (j, Some(p)),
                    _ => continue,
                }
            }
            _ => (p, None),
        };
        let StepKind::Node {
            node: gemm_node,
            prepared: Some(prepared),
            ..
        } = &mut steps[j].kind
        else {
            continue;
        };
        let gemm_op = &nodes[*gemm_node].op;
        if !matches!(gemm_op, Op::Gemm { .. } | Op::MatMul | Op::Conv(_))
            || prepared.activation != Activation::Identity
        {
            continue;
        }
        let f32_out = slot_dtype[s] == DType::F32;
        match fold {
            Fold::Activation(Activation::Relu) => prepared.activation = Activation::Relu,
            Fold::Activation(act) if f32_out => prepared.activation = act,
            Fold::Scale(c) if f32_out && matches!(gemm_op, Op::MatMul) => prepared.scale *= c,
            _ => continue,
        }
        let out = steps[i].outputs[0];
        let writer = view.unwrap_or(j);
        steps[writer].outputs = vec![out];
        producer.insert(out, writer);
        fused[i] = true;
    }
    remove_steps(steps, &fused);
}

/// Folds an Add that sums a Conv's output with another value of the same
/// shape into the Conv when all three are f32 (a residual connection): the
/// Conv step reads the other value as its last input and computes
/// `act(conv + bias + residual)`, the kernel's
/// `conv2d_batch_residual_at`, whose bits are the Conv's then the Add's
/// (each sum rounded to f32 in that order). Runs before
/// [`fuse_into_gemm_epilogue`], so a Relu after the Add then folds as the
/// Conv's activation, applied after the residual as the Relu step did. The
/// Conv's output must be read by the Add alone and not be a graph output;
/// the shapes must be equal as declared (so no broadcast), which the step
/// checks again at run time.
fn fold_residual_adds_into_conv(
    nodes: &[Node],
    steps: &mut Vec<Step>,
    slot_dtype: &[DType],
    slot_shape: &[Vec<Dim>],
    output_slots: &[(String, usize)],
) {
    let (readers, producer) = readers_and_producers(steps);
    let mut folded = vec![false; steps.len()];
    for i in 0..steps.len() {
        let StepKind::Node { node, .. } = &steps[i].kind else {
            continue;
        };
        let ins = &steps[i].inputs;
        if !matches!(nodes[*node].op, Op::Binary(Binary::Add)) || ins.len() != 2 {
            continue;
        }
        let out = steps[i].outputs[0];
        let f32s = |s: usize| slot_dtype[s] == DType::F32;
        // Either operand may be the Conv's output; the first that fits is.
        // Step indices are those before this pass removed anything: a
        // folded Add's step stays in place until `remove_steps`.
        let found = (0..2).find_map(|side| {
            let (s, other) = (ins[side], ins[1 - side]);
            let &j = producer.get(&s)?;
            // The other value must exist when the Conv runs (in ResNet's
            // downsampling blocks the shortcut Conv runs after the main one).
            let ready = producer.get(&other).is_none_or(|&k| k < j);
            let fits = ready
                && f32s(s)
                && f32s(other)
                && f32s(out)
                && slot_shape[s] == slot_shape[other]
                && slot_shape[s] == slot_shape[out]
                && read_once(&readers, output_slots, s)
                && matches!(
                    &steps[j].kind,
                    StepKind::Node { node, prepared: Some(p), .. }
                        if matches!(nodes[*node].op, Op::Conv(_))
                            && p.activation == Activation::Identity
                            && !p.residual
                );
            fits.then_some((j, other))
        });
        let Some((j, other)) = found else {
            continue;
        };
        let StepKind::Node {
            prepared: Some(p), ..
        } = &mut steps[j].kind
        else {
            unreachable!("checked above")
        };
        p.residual = true;
        steps[j].inputs.push(other);
        steps[j].outputs = vec![out];
        folded[i] = true;
    }
    remove_steps(steps, &folded);
}

/// Keeps Conv -> Conv activations in 16-channel blocks (NCHW16c, the
/// layout the kernel's channel-blocked tiles compute in), so the producing
/// Conv stores its tiles without transposing them to NCHW and the reading
/// Convs copy block rows instead of transposing channel planes back:
/// ResNet-18 35.1 -> 34.5 ms at one thread, 17.9 -> 17.6 at two (18 of its
/// 20 conv outputs blocked); the batch-8 three-conv net (64 channels,
/// 56x56) 51.2 -> 50.6 and 26.4 -> 25.8 (equal at one thread in a noisier
/// hour). A
/// Conv's output is kept blocked when the kernel takes the Conv in f32 with
/// NCHW16c ([`takes_nchw16c`]: one group, shapes known at compile time) and
/// every reader is such a Conv, reading it as its image (16n input
/// channels) or as its residual (any layout); graph outputs never are.
/// Results are the same bits (the kernel's contract); a blocked value is
/// never seen outside the run. Returns the blocked slots.
fn keep_conv_activations_blocked(
    nodes: &[Node],
    steps: &mut [Step],
    slot_dtype: &[DType],
    slot_shape: &[Vec<Dim>],
    output_slots: &[(String, usize)],
) -> Vec<usize> {
    let isa = active_isa();
    // Which steps the kernel takes with NCHW16c.
    let capable: Vec<bool> = steps
        .iter()
        .map(|st| {
            let StepKind::Node {
                node,
                prepared: Some(p),
                ..
            } = &st.kind
            else {
                return false;
            };
            let Op::Conv(attrs) = &nodes[*node].op else {
                return false;
            };
            let (x, w, y) = (st.inputs[0], st.inputs[1], st.outputs[0]);
            let f32s = [x, w, y].iter().all(|&s| slot_dtype[s] == DType::F32);
            let dims =
                |s: usize| -> Option<Vec<usize>> { slot_shape[s].iter().map(Dim::fixed).collect() };
            let (Some(xs), Some(ws), Some(ys)) = (dims(x), dims(w), dims(y)) else {
                return false;
            };
            if !f32s
                || attrs.group > 1
                || p.accumulation != Accumulation::F32
                || xs.len() != 4
                || ws.len() != 4
            {
                return false;
            }
            let spatial = [Some(xs[2]), Some(xs[3])];
            let Ok(Some(shape)) = conv2d_shape(&nodes[*node].name, attrs, &spatial, &ws) else {
                return false;
            };
            let bias = vec![0.0f32; ys[1]];
            let has_bias = p.bias.is_some() || st.inputs.len() > 2 + usize::from(p.residual);
            let epilogue = Epilogue {
                bias: None,
                row_bias: has_bias.then_some(&bias[..]),
                activation: p.activation,
            };
            takes_nchw16c(isa, &shape, ws[0], &epilogue)
        })
        .collect();
    // Each step's residual slot.
    let residual_of: Vec<Option<usize>> = steps
        .iter()
        .map(|st| match &st.kind {
            StepKind::Node {
                prepared: Some(p), ..
            } if p.residual => st.inputs.last().copied(),
            _ => None,
        })
        .collect();
    let (_, producer) = readers_and_producers(steps);
    let mut reads: HashMap<usize, Vec<(usize, usize)>> = HashMap::new();
    for (r, st) in steps.iter().enumerate() {
        for (at, &s) in st.inputs.iter().enumerate() {
            reads.entry(s).or_default().push((r, at));
        }
    }
    let is_output = |s: usize| output_slots.iter().any(|o| o.1 == s);
    let blocked: Vec<bool> = (0..steps.len())
        .map(|j| {
            if !capable[j] {
                return false;
            }
            // A capable Conv's output is 4-D with known dims.
            let s = steps[j].outputs[0];
            let channels = slot_shape[s][1].fixed().unwrap_or(0);
            let accepted = |&(r, at): &(usize, usize)| {
                capable[r]
                    && ((at == 0 && channels.is_multiple_of(16))
                        || (residual_of[r] == Some(s) && at + 1 == steps[r].inputs.len()))
            };
            !is_output(s) && reads.get(&s).is_some_and(|v| v.iter().all(accepted))
        })
        .collect();
    let produced_blocked = |s: usize| producer.get(&s).is_some_and(|&k| blocked[k]);
    let layout = |b: bool| {
        if b {
            ChannelLayout::Nchw16c
        } else {
            ChannelLayout::Nchw
        }
    };
    for j in 0..steps.len() {
        let image = produced_blocked(steps[j].inputs[0]);
        let residual = residual_of[j].is_some_and(produced_blocked);
        if let StepKind::Node {
            prepared: Some(p), ..
        } = &mut steps[j].kind
            && capable[j]
        {
            p.conv_layouts = ConvLayouts {
                image: layout(image),
                output: layout(blocked[j]),
                residual: layout(residual),
            };
        }
    }
    (0..steps.len())
        .filter(|&j| blocked[j])
        .map(|j| steps[j].outputs[0])
        .collect()
}

/// Folds each Transpose read only by one MatMul (not a graph output) into
/// that MatMul: the MatMul reads the Transpose's input and views it under
/// the permutation (batch offsets and matrix strides), so the copy goes.
/// Only where the input's last axis stays last: the operand is then row
/// major with a longer row stride (attention's `q` and `v` head
/// transposes), which the GEMM packs exactly as the copy, so the bits are
/// the same. A transpose that makes it column-major (`k`'s, `[0, 2, 3, 1]`)
/// stays a step: the GEMM picks its kernel by layout (small m against
/// column-contiguous B sums in 16-lane partial sums), so the bits could
/// differ.
fn fold_transposes_into_matmul(
    nodes: &[Node],
    steps: &mut Vec<Step>,
    output_slots: &[(String, usize)],
) {
    let (readers, producer) = readers_and_producers(steps);
    let mut folded = vec![false; steps.len()];
    for j in 0..steps.len() {
        let StepKind::Node { node, .. } = &steps[j].kind else {
            continue;
        };
        if !matches!(nodes[*node].op, Op::MatMul) || steps[j].inputs.len() != 2 {
            continue;
        }
        for operand in 0..2 {
            let s = steps[j].inputs[operand];
            let Some(&t) = producer.get(&s) else {
                continue;
            };
            let StepKind::Node { node: tn, .. } = &steps[t].kind else {
                continue;
            };
            let Op::Transpose { perm: Some(perm) } = &nodes[*tn].op else {
                continue;
            };
            let r = perm.len();
            if r < 2 || perm[r - 1] != r - 1 || !read_once(&readers, output_slots, s) {
                continue;
            }
            let (perm, source) = (perm.clone(), steps[t].inputs[0]);
            let StepKind::Node {
                prepared: Some(prepared),
                ..
            } = &mut steps[j].kind
            else {
                continue;
            };
            // A packed constant B came from a constant, never from a step.
            if prepared.operand_perms[operand].is_some()
                || (operand == 1 && prepared.packed.is_some())
            {
                continue;
            }
            prepared.operand_perms[operand] = Some(perm);
            steps[j].inputs[operand] = source;
            folded[t] = true;
        }
    }
    remove_steps(steps, &folded);
}

/// How many steps read each slot, and which step writes it.
fn readers_and_producers(steps: &[Step]) -> (HashMap<usize, usize>, HashMap<usize, usize>) {
    let mut readers: HashMap<usize, usize> = HashMap::new();
    for st in steps {
        for &s in &st.inputs {
            *readers.entry(s).or_default() += 1;
        }
    }
    let producer = steps
        .iter()
        .enumerate()
        .flat_map(|(i, st)| st.outputs.iter().map(move |&s| (s, i)))
        .collect();
    (readers, producer)
}

/// Whether slot `s` is read by exactly one step and is not a graph output:
/// the only condition under which its producer may be folded into the reader.
fn read_once(readers: &HashMap<usize, usize>, output_slots: &[(String, usize)], s: usize) -> bool {
    readers.get(&s) == Some(&1) && !output_slots.iter().any(|o| o.1 == s)
}

/// Drops the steps whose outputs no later step reads and no graph output
/// is, last first, so that a chain of them goes as a whole. A view step
/// whose readers took the same view of a cast of its source instead
/// ([`Builder::view_of_cast_source`]) stays behind unread, and a view copies
/// where it cannot hand its input over (its input read later): an all-f16
/// plan of the batch-8 conv net copied its 3.2 MB f16 output that way
/// (0.18 ms) before casting the conv's output to f32 for the graph's.
/// Nodes whose values nothing uses go too.
fn drop_unread_steps(steps: &mut Vec<Step>, output_slots: &[(String, usize)]) {
    let mut read: HashSet<usize> = output_slots.iter().map(|o| o.1).collect();
    let mut removed = vec![false; steps.len()];
    for (i, st) in steps.iter().enumerate().rev() {
        if st.outputs.iter().any(|s| read.contains(s)) {
            read.extend(st.inputs.iter().copied());
        } else {
            removed[i] = true;
        }
    }
    remove_steps(steps, &removed);
}

/// Drops the steps flagged in `removed` (indexed like `steps`).
fn remove_steps(steps: &mut Vec<Step>, removed: &[bool]) {
    let mut k = 0;
    steps.retain(|_| {
        k += 1;
        !removed[k - 1]
    });
}

/// What [`fuse_into_gemm_epilogue`] turns a follower step into.
enum Fold {
    Activation(Activation),
    Scale(f32),
}

/// The compile-time work of a Gemm, MatMul or Conv node: its accumulation,
/// a constant B (or Conv weights) packed for it, a constant bias kept in f32.
///
/// The bias joins the f32 accumulator in the GEMM epilogue, so it is taken
/// before the cast to the node's dtype (`uncast_ins`): a large bias that
/// cancels a large product (an input scaler folded into the layer) would
/// otherwise lose the small difference that carries the signal.
///
/// `rows`: a Gemm's or MatMul's product rows where the shapes fix them.
fn prepare_gemm(
    op: &Op,
    node: &str,
    (ins, uncast_ins): (&[usize], &[usize]),
    consts: &[Option<Arc<Tensor>>],
    accumulation: Accumulation,
    rows: Option<usize>,
) -> Result<Prepared> {
    let konst = |i: usize, slots: &[usize]| slots.get(i).and_then(|&s| consts[s].as_deref());
    let (packed, bias) = match op {
        Op::Gemm { trans_b, beta, .. } => match konst(1, ins) {
            Some(w) => {
                let n = if *trans_b { w.shape()[0] } else { w.shape()[1] };
                let bias = konst(2, uncast_ins).and_then(|c| row_bias(&c.view(), n, *beta));
                (Some(pack(w, *trans_b, accumulation, rows)?), bias)
            }
            None => (None, None),
        },
        Op::MatMul => match konst(1, ins) {
            Some(w) if w.shape().len() == 2 => (Some(pack(w, false, accumulation, rows)?), None),
            _ => (None, None),
        },
        Op::Conv(_) => (None, konst(2, uncast_ins).map(Tensor::to_f32_vec)),
        _ => unreachable!("only GEMM-family ops are prepared"),
    };
    let conv_weights = match (op, konst(1, ins)) {
        (Op::Conv(attrs), Some(w)) => pack_conv(node, w, attrs.group.max(1), accumulation)?,
        _ => Vec::new(),
    };
    Ok(Prepared {
        packed,
        bias,
        accumulation,
        activation: Activation::Identity,
        scale: 1.0,
        operand_perms: [None, None],
        conv_weights,
        residual: false,
        conv_layouts: ConvLayouts::default(),
    })
}

/// The rows of the product behind a Gemm's or MatMul's output `shape`
/// (every axis but the last: a MatMul runs its batch as one product where
/// A is contiguous), when the shape fixes them.
fn product_rows(shape: &[Dim]) -> Option<usize> {
    let (_, lead) = shape.split_last()?;
    let lead: Option<Vec<usize>> = lead.iter().map(Dim::fixed).collect();
    lead.map(|dims| numel(&dims))
}

/// A slot's value during a run.
enum Val<'a> {
    /// Read in place: a graph input, a constant, or a view op's output over
    /// one of those.
    View(TensorView<'a>),
    /// Produced by this run.
    Own(Tensor),
}

impl Val<'_> {
    fn view(&self) -> TensorView<'_> {
        match self {
            Val::View(v) => v.view(),
            Val::Own(t) => t.view(),
        }
    }
}

/// The owned-tensor argument form of the `run*` methods as views.
fn views<'a>(inputs: &[(&'a str, &'a Tensor)]) -> Vec<(&'a str, TensorView<'a>)> {
    inputs.iter().map(|&(n, t)| (n, t.view())).collect()
}

impl CompiledModel {
    /// The plan it was compiled under.
    pub fn plan(&self) -> &PrecisionPlan {
        &self.plan
    }

    /// The graph it was compiled from.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The casts inserted (at compile time for weights, or per run).
    pub fn casts(&self) -> &[CastInfo] {
        &self.casts
    }

    /// Number of casts executed on every run.
    pub fn num_runtime_casts(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| matches!(s.kind, StepKind::Cast))
            .count()
    }

    /// The values a run keeps in 16-channel blocks (NCHW16c) between the
    /// Convs that produce and read them, instead of NCHW: f32 Conv -> Conv
    /// activations where the kernel's channel-blocked tiles run (see
    /// [`mixprec_kernels::conv::takes_nchw16c`]); none with
    /// [`CompileOptions::keep_all_steps`]. Never a graph output: the
    /// results are the same bits either way.
    pub fn nchw16c_values(&self) -> &[String] {
        &self.nchw16c_values
    }

    /// Number of steps executed per run (nodes plus casts).
    pub fn num_steps(&self) -> usize {
        self.steps.len()
    }

    /// Storage dtype of each graph output as returned by `run`.
    pub fn output_dtypes(&self) -> Vec<(String, DType)> {
        self.output_slots
            .iter()
            .map(|(n, s)| (n.clone(), self.slot_dtype[*s]))
            .collect()
    }

    /// Gives tensors back to the model's buffer pool once the caller is
    /// done with them (a run's outputs, typically), so later runs write
    /// into them instead of fresh memory, which the allocator must zero
    /// and the OS fault in: a serving loop that recycles each run's outputs
    /// runs in memory it already has, as onnxruntime's arena does. The
    /// batch-8 conv net's 6.4 MB output cost 2.7% of each run that way
    /// (`Tensor::zeros`, one thread). Any tensors may be given; the pool
    /// keeps at most 64 buffers and hands each to a step that fits it.
    pub fn recycle(&self, tensors: impl IntoIterator<Item = Tensor>) {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if pools.is_empty() {
            pools.push(Pool::default());
        }
        let pool = pools.last_mut().expect("one pool at least");
        for t in tensors {
            pool.give(t);
        }
    }

    /// Runs the model. `inputs` names every graph input once; float and
    /// integer inputs must have the declared dtype and a shape matching the
    /// declared one (symbolic dims bind to one size per run). Returns the
    /// outputs by name.
    pub fn run(&self, inputs: &[(&str, &Tensor)]) -> Result<HashMap<String, Tensor>> {
        self.run_inner(&views(inputs), None)
    }

    /// [`CompiledModel::run`] on borrowed inputs, read in place: the data of
    /// a `&[half::bf16]`, a memory-mapped weights file or any other buffer is
    /// not copied (see [`TensorView`]; no alignment is needed). The checks
    /// and the outputs (owned tensors) are those of `run`.
    ///
    /// ```
    /// use half::bf16;
    /// use mixprec::graph::{DType, Dim, GraphBuilder, PrecisionPlan, Tensor, TensorView};
    /// use mixprec::kernels::FloatType;
    /// # fn main() -> Result<(), mixprec::graph::GraphError> {
    /// // A bf16 graph input: the weights are declared bf16 too.
    /// let w = Tensor::from_f32(&[3, 4], vec![0.5; 12])?.to_float_type(FloatType::Bf16)?;
    /// let mut g = GraphBuilder::new();
    /// let x = g.input("x", &[Dim::sym("batch"), 4.into()], DType::Bf16);
    /// let y = g.linear("fc", x, &w, None)?;
    /// g.output(y);
    /// let graph = g.finish()?;
    /// let model = graph.compile(&PrecisionPlan::all(&graph, FloatType::Bf16))?;
    /// // Activations the caller already holds as bf16, e.g. from another crate.
    /// let acts: Vec<bf16> = vec![bf16::from_f32(1.0); 8];
    /// let out = model.run_views(&[("x", TensorView::from_bf16(&[2, 4], &acts)?)])?;
    /// assert_eq!(out["fc"].to_f32_vec(), vec![2.0; 6]);
    /// # Ok(()) }
    /// ```
    pub fn run_views(&self, inputs: &[(&str, TensorView<'_>)]) -> Result<HashMap<String, Tensor>> {
        self.run_inner(inputs, None)
    }

    /// [`CompiledModel::run`] with inputs in a map.
    pub fn run_map(&self, inputs: &HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
        let v: Vec<(&str, TensorView)> =
            inputs.iter().map(|(k, t)| (k.as_str(), t.view())).collect();
        self.run_inner(&v, None)
    }

    /// Runs and returns the outputs in graph output order.
    pub fn run_ordered(&self, inputs: &[(&str, &Tensor)]) -> Result<Vec<Tensor>> {
        let mut m = self.run_inner(&views(inputs), None)?;
        Ok(self
            .output_slots
            .iter()
            .map(|(n, _)| m.remove(n).expect("every output returned"))
            .collect())
    }

    /// Runs and also times every step (nodes and inserted casts).
    pub fn run_profiled(
        &self,
        inputs: &[(&str, &Tensor)],
    ) -> Result<(HashMap<String, Tensor>, Profile)> {
        let mut p = Profile::default();
        let t0 = Instant::now();
        let out = self.run_inner(&views(inputs), Some(&mut p.entries))?;
        p.total_seconds = t0.elapsed().as_secs_f64();
        Ok((out, p))
    }

    fn check_inputs<'i, 'a>(
        &self,
        inputs: &'i [(&str, TensorView<'a>)],
    ) -> Result<Vec<&'i TensorView<'a>>> {
        let g = &self.graph;
        let mut given: HashMap<&str, &TensorView> = HashMap::new();
        for (name, t) in inputs {
            if !g.inputs.iter().any(|v| g.value(*v).name == *name) {
                return Err(GraphError::UnknownInput {
                    name: name.to_string(),
                });
            }
            given.insert(name, t);
        }
        let mut bound: HashMap<&str, usize> = HashMap::new();
        let mut out = Vec::new();
        for (v, _) in &self.input_slots {
            let vi = g.value(*v);
            let t = *given
                .get(vi.name.as_str())
                .ok_or_else(|| GraphError::MissingInput {
                    name: vi.name.clone(),
                })?;
            if t.dtype() != vi.dtype {
                return Err(GraphError::InputDType {
                    name: vi.name.clone(),
                    expected: vi.dtype,
                    actual: t.dtype(),
                });
            }
            let bad = || GraphError::InputShape {
                name: vi.name.clone(),
                expected: shape_string(&vi.shape),
                actual: t.shape().to_vec(),
            };
            if t.shape().len() != vi.shape.len() {
                return Err(bad());
            }
            for (d, &n) in vi.shape.iter().zip(t.shape()) {
                match d {
                    Dim::Fixed(f) if *f != n => return Err(bad()),
                    Dim::Symbolic(s) => match bound.get(s.as_str()) {
                        Some(&m) if m != n => {
                            return Err(GraphError::SymbolConflict {
                                symbol: s.clone(),
                                first: m,
                                second: n,
                            });
                        }
                        _ => {
                            bound.insert(s, n);
                        }
                    },
                    _ => {}
                }
            }
            out.push(t);
        }
        Ok(out)
    }

    /// Makes the model remember the inputs of its first successful input
    /// check, for [`CompiledModel::captured_inputs`]. The tuner uses this to
    /// take its calibration batch from the user's first evaluation.
    pub fn with_input_capture(mut self) -> Self {
        self.capture = Some(std::sync::OnceLock::new());
        self
    }

    /// The first run's inputs (by graph input name), if capture is on and
    /// the model has run.
    pub fn captured_inputs(&self) -> Option<&[(String, Tensor)]> {
        self.capture.as_ref()?.get().map(Vec::as_slice)
    }

    fn run_inner(
        &self,
        inputs: &[(&str, TensorView<'_>)],
        mut profile: Option<&mut Vec<ProfileEntry>>,
    ) -> Result<HashMap<String, Tensor>> {
        let given = self.check_inputs(inputs)?;
        if let Some(capture) = &self.capture {
            capture.get_or_init(|| {
                inputs
                    .iter()
                    .map(|(name, t)| (name.to_string(), t.to_owned()))
                    .collect()
            });
        }
        let mut table: Vec<Option<Val<'_>>> = self
            .consts
            .iter()
            .map(|c| c.as_deref().map(|t| Val::View(t.view())))
            .collect();
        for ((_, s), t) in self.input_slots.iter().zip(given) {
            table[*s] = Some(Val::View(t.view()));
        }
        let mut pool = self
            .pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default();
        for st in &self.steps {
            let t0 = profile.as_ref().map(|_| Instant::now());
            let results: Vec<Val> = match &st.kind {
                StepKind::Cast => {
                    let x = table[st.inputs[0]].as_ref().expect("slot filled").view();
                    let mut out = pool.alloc(self.slot_dtype[st.outputs[0]], x.shape());
                    match (x.as_float_slice(), out.dtype().is_float()) {
                        (Some(src), true) => {
                            super::ops::par::convert(src, out.as_float_slice_mut().expect("float"))
                        }
                        _ => super::ops::elementwise::cast(&x, &mut out),
                    }
                    vec![Val::Own(out)]
                }
                StepKind::Node {
                    node,
                    prepared,
                    alias_input,
                } => {
                    let n = &self.graph.nodes[*node];
                    let views: Vec<TensorView> = st
                        .inputs
                        .iter()
                        .map(|&s| table[s].as_ref().expect("slot filled").view())
                        .collect();
                    let args: Vec<&TensorView> = views.iter().collect();
                    #[cfg(test)]
                    trace::record(&st.label, &args);
                    if is_view_op(&n.op) && matches!(table[st.inputs[0]], Some(Val::View(_))) {
                        // Borrowed data under a new shape: still borrowed, never copied.
                        let metas = output_metas(&n.op, &n.name, &args)?;
                        let Some(Val::View(v)) = &table[st.inputs[0]] else {
                            unreachable!("checked View")
                        };
                        vec![Val::View(v.clone().with_shape(&metas[0].1))]
                    } else if *alias_input && matches!(table[st.inputs[0]], Some(Val::Own(_))) {
                        let metas = output_metas(&n.op, &n.name, &args)?;
                        drop(args);
                        drop(views);
                        let Some(Val::Own(mut t)) = table[st.inputs[0]].take() else {
                            unreachable!("checked Own")
                        };
                        t.set_shape(&metas[0].1);
                        vec![Val::Own(t)]
                    } else {
                        execute(&n.op, &n.name, &args, &mut pool, prepared.as_ref())?
                            .into_iter()
                            .map(Val::Own)
                            .collect()
                    }
                }
            };
            if let (Some(p), Some(t0)) = (profile.as_deref_mut(), t0) {
                let secs = t0.elapsed().as_secs_f64();
                let read: usize = st
                    .inputs
                    .iter()
                    .filter_map(|&s| table[s].as_ref())
                    .map(|v| v.view().byte_len())
                    .sum();
                let written: usize = results.iter().map(|v| v.view().byte_len()).sum();
                let node_dtype = results
                    .first()
                    .map(|v| v.view().dtype())
                    .unwrap_or(DType::F32);
                p.push(ProfileEntry {
                    name: st.label.clone(),
                    op_type: st.op_type,
                    inserted_cast: matches!(st.kind, StepKind::Cast),
                    dtype: node_dtype,
                    seconds: secs,
                    bytes: read + written,
                });
            }
            for (&s, v) in st.outputs.iter().zip(results) {
                table[s] = Some(v);
            }
            for &s in &st.free_after {
                if let Some(Val::Own(t)) = table[s].take() {
                    pool.give(t);
                }
            }
        }
        let mut out = HashMap::new();
        for (i, (name, s)) in self.output_slots.iter().enumerate() {
            let shared_later = self.output_slots[i + 1..].iter().any(|(_, t)| t == s);
            let t = match table[*s].take() {
                Some(Val::Own(t)) if !shared_later => t,
                Some(v) => {
                    let c = v.view().to_owned();
                    table[*s] = Some(v);
                    c
                }
                None => unreachable!("outputs are never freed"),
            };
            out.insert(name.clone(), t);
        }
        self.pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(pool);
        Ok(out)
    }

    /// Float type a node runs in (f32 for nodes that are not lowerable).
    pub fn node_dtype(&self, node: &str) -> FloatType {
        self.plan.dtype_of(node)
    }
}

/// What each node step of a run on this thread read, so tests can check
/// which inputs were used in place.
#[cfg(test)]
mod trace {
    use std::cell::RefCell;

    use super::TensorView;

    thread_local! {
        static STEPS: RefCell<Vec<(String, Vec<usize>)>> = const { RefCell::new(Vec::new()) };
    }

    /// Notes the data address of each input of step `label`.
    pub(super) fn record(label: &str, args: &[&TensorView<'_>]) {
        let addrs = args.iter().map(|a| a.bytes().as_ptr() as usize).collect();
        STEPS.with(|s| s.borrow_mut().push((label.to_string(), addrs)));
    }

    /// The steps recorded since the last call.
    pub(super) fn take() -> Vec<(String, Vec<usize>)> {
        STEPS.with(|s| std::mem::take(&mut *s.borrow_mut()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::GraphBuilder;

    /// A run on a view reads the caller's buffer itself: a Reshape of the
    /// input stays a view of it, and the node after it reads that same
    /// address. (A copy anywhere, of the input or by the Reshape, would give
    /// the Relu another address.)
    #[test]
    fn run_views_reads_the_callers_buffer() {
        let mut g = GraphBuilder::new();
        let x = g.input("x", &[2.into(), 6.into()], DType::F32);
        let r = g.reshape("r", x, &[3, 4]).unwrap();
        let y = g.relu("act", r).unwrap();
        g.output(y);
        let graph = g.finish().unwrap();
        let model = graph
            .compile(&PrecisionPlan::all(&graph, FloatType::F32))
            .unwrap();
        let buf: Vec<f32> = (0..13).map(|i| i as f32 - 6.0).collect();
        // Off by one element: not 64-byte aligned, as a real sub-slice may be.
        let data = &buf[1..];
        let addr = data.as_ptr() as usize;
        trace::take();
        let out = model
            .run_views(&[("x", TensorView::from_f32(&[2, 6], data).unwrap())])
            .unwrap();
        let steps = trace::take();
        let act = steps.iter().find(|(l, _)| l == "act").expect("act ran");
        assert_eq!(act.1, vec![addr]);
        let r = steps.iter().find(|(l, _)| l == "r").expect("r ran");
        assert_eq!(r.1[0], addr);
        let want: Vec<f32> = data.iter().map(|v| v.max(0.0)).collect();
        assert_eq!(out["act"].to_f32_vec(), want);
        assert_eq!(out["act"].shape(), &[3, 4]);
    }
}
