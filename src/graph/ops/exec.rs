//! Running one op on concrete tensors.

use super::infer::infer;
use super::linalg::Prepared;
use super::{Meta, Op};
use crate::graph::dtype::DType;
use crate::graph::error::{GraphError, Result};
use crate::graph::graph::Dim;
use crate::graph::tensor::{Block, Tensor, TensorView, checked_bytes, max_tensor_bytes, numel};

/// Free storage of finished intermediate values, reused for new outputs so a
/// run allocates little after its first few nodes.
#[derive(Default)]
pub(crate) struct Pool {
    free: Vec<Vec<Block>>,
}

impl Pool {
    /// A tensor of `dtype` and `shape` with unspecified contents.
    pub fn alloc(&mut self, dtype: DType, shape: &[usize]) -> Tensor {
        let need = (numel(shape) * dtype.size()).div_ceil(64);
        // Best fit: the smallest free buffer that is large enough.
        let mut best: Option<usize> = None;
        for (i, b) in self.free.iter().enumerate() {
            if b.capacity() >= need && best.is_none_or(|j| self.free[j].capacity() > b.capacity()) {
                best = Some(i);
            }
        }
        match best {
            Some(i) => Tensor::from_blocks(dtype, shape, self.free.swap_remove(i)),
            None => Tensor::zeros(dtype, shape),
        }
    }

    /// Returns a tensor's storage for reuse.
    pub fn give(&mut self, t: Tensor) {
        let b = t.into_blocks();
        if b.capacity() > 0 && self.free.len() < 64 {
            self.free.push(b);
        }
    }
}

/// Output types of `op` on concrete inputs.
pub(crate) fn output_metas(
    op: &Op,
    node: &str,
    inputs: &[&TensorView<'_>],
) -> Result<Vec<(DType, Vec<usize>)>> {
    let metas: Vec<Meta> = inputs.iter().map(|t| Meta::of_view(t)).collect();
    let refs: Vec<&Meta> = metas.iter().collect();
    let known: Vec<Option<&TensorView<'_>>> = inputs.iter().map(|t| Some(*t)).collect();
    let outs = infer(
        op,
        node,
        &refs,
        &known,
        &mut || Dim::Symbolic(String::new()),
    )?;
    Ok(outs
        .into_iter()
        .map(|m| {
            (
                m.dtype,
                m.shape
                    .iter()
                    .map(|d| d.fixed().expect("concrete inputs give fixed shapes"))
                    .collect(),
            )
        })
        .collect())
}

/// Runs `op` on concrete inputs; output dtypes follow the inputs' storage
/// (a node's float inputs all arrive in its precision).
pub(crate) fn execute(
    op: &Op,
    node: &str,
    inputs: &[&TensorView<'_>],
    pool: &mut Pool,
    prepared: Option<&Prepared>,
) -> Result<Vec<Tensor>> {
    // A folded residual is an extra last input the op itself does not have.
    let (op_inputs, _) = Prepared::split_residual(prepared, inputs);
    let metas = match prepared {
        Some(p) if p.operand_perms.iter().any(Option::is_some) => {
            let logical = p.logical_inputs(op_inputs);
            output_metas(op, node, &logical.iter().collect::<Vec<_>>())?
        }
        _ => output_metas(op, node, op_inputs)?,
    };
    let limit = max_tensor_bytes();
    for (d, s) in &metas {
        if checked_bytes(*d, s).is_none_or(|b| b > limit) {
            return Err(GraphError::Runtime {
                node: node.to_string(),
                detail: format!(
                    "output shape {s:?} of {d:?} exceeds the {limit}-byte tensor limit \
                     (graph::set_max_tensor_bytes)"
                ),
            });
        }
    }
    let mut outs: Vec<Tensor> = metas.iter().map(|(d, s)| pool.alloc(*d, s)).collect();
    let out = &mut outs[0];
    match op {
        Op::MatMul => super::linalg::matmul(node, inputs, out, prepared)?,
        Op::Gemm {
            alpha,
            beta,
            trans_a,
            trans_b,
        } => super::linalg::gemm_op(
            node, inputs, out, *alpha, *beta, *trans_a, *trans_b, prepared,
        )?,
        Op::Conv(attrs) => super::linalg::conv(node, attrs, inputs, out, prepared)?,
        Op::Unary(f) => super::elementwise::unary(*f, inputs[0], out),
        Op::Binary(f) => super::elementwise::binary(node, *f, inputs[0], inputs[1], out)?,
        Op::Equal => super::elementwise::equal(inputs[0], inputs[1], out),
        Op::Where => super::elementwise::where_(inputs[0], inputs[1], inputs[2], out),
        Op::Cast { .. } => super::elementwise::cast(inputs[0], out),
        Op::Softmax { axis } => super::norm::softmax(node, inputs[0], *axis, false, out, pool)?,
        Op::LogSoftmax { axis } => super::norm::softmax(node, inputs[0], *axis, true, out, pool)?,
        Op::LayerNormalization { axis, epsilon } => {
            super::norm::layer_norm(node, inputs, *axis, *epsilon, false, out)?
        }
        Op::RmsNormalization { axis, epsilon } => {
            super::norm::layer_norm(node, inputs, *axis, *epsilon, true, out)?
        }
        Op::Reduce { kind, axes, .. } => {
            super::norm::reduce(node, *kind, axes.as_deref(), inputs[0], out, pool)?
        }
        Op::GlobalMaxPool => super::norm::global_pool(inputs[0], true, out),
        Op::GlobalAveragePool => super::norm::global_pool(inputs[0], false, out),
        Op::MaxPool(p) => super::pool::pool(node, p, true, inputs[0], out)?,
        Op::AveragePool(p) => super::pool::pool(node, p, false, inputs[0], out)?,
        Op::Gather { axis } => super::shape::gather(node, *axis, inputs[0], inputs[1], out)?,
        Op::Transpose { perm } => {
            let r = inputs[0].shape().len();
            let perm: Vec<usize> = perm.clone().unwrap_or_else(|| (0..r).rev().collect());
            super::shape::transpose(inputs[0], &perm, out)
        }
        Op::Concat { axis } => super::shape::concat(node, *axis, inputs, out)?,
        Op::Slice => super::shape::slice(node, inputs, out)?,
        Op::Expand => super::shape::broadcast_copy(inputs[0], out),
        Op::Shape { start, .. } => {
            let r = inputs[0].shape().len() as i64;
            let s = if *start < 0 {
                (start + r).max(0)
            } else {
                (*start).min(r)
            } as usize;
            let dims: Vec<i64> = inputs[0].shape()[s..s + out.len()]
                .iter()
                .map(|&d| d as i64)
                .collect();
            out.as_slice_mut::<i64>()?.copy_from_slice(&dims);
        }
        Op::Constant { value } => out.bytes_mut().copy_from_slice(value.bytes()),
        Op::Reshape { .. }
        | Op::Flatten { .. }
        | Op::Squeeze { .. }
        | Op::Unsqueeze { .. }
        | Op::Identity => out.bytes_mut().copy_from_slice(inputs[0].bytes()),
    }
    Ok(outs)
}
