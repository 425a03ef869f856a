//! Softmax, normalization and reduction kernels over f32, bf16 and f16 storage.
//!
//! Everything works on the last (contiguous) axis of a row-major `rows x cols`
//! buffer. Elements are widened to f32 exactly, all statistics are computed in
//! f32, and each output is rounded once on store per the conversion contract.
//! Input and output dtypes may differ.
//!
//! # Summation order (deterministic, identical on every level)
//! Every row sum uses one fixed order: element `i` of the row is added to
//! partial sum `i % 32`, in increasing `i`; the 32 partial sums are then folded
//! pairwise, `s[j] += s[j + h]` for `h = 16, 8, 4, 2, 1`. The AVX-512 level
//! keeps the partials in two zmm registers, AVX2 in four ymm registers, the
//! scalar level in 32 variables, so **every dispatch level gives bit-identical
//! results** (NaN payloads aside), run to run and across machines with the
//! same level set. The exponentials and logarithms are
//! [`UnaryOp::Exp`](crate::elementwise::UnaryOp::Exp) and
//! [`UnaryOp::Log`](crate::elementwise::UnaryOp::Log) (within 1 ulp).
//!
//! # Accuracy (checked by the tests against f64 references)
//! Sums of `n` terms carry the usual floating-point summation error, at most
//! about `(n / 32 + 5) * 2^-24` times the sum of the terms' magnitudes for this
//! order; for well-scaled rows (the tests use `n <= 4096`) that is a few ulp.
//! * [`softmax`]: `m = max(x)`, `s = sum(exp(x - m))`, `y = exp(x - m) / s`.
//!   Each output within `(4 + n / 32 + |x - m|) * 2^-24` relative of exact
//!   (`x - m` is rounded to f32 before the exponential); rows sum to 1 within
//!   `(8 + n / 16) * 2^-24`. `log`: `y = (x - m) - log(s)`, absolute error within
//!   `2^-24 * (6 + n / 32 + 2 |x - m| + 2 |log s|)` (the first terms are the
//!   relative error of `s`, which `log` turns into an absolute one; then two
//!   rounded subtractions).
//!   A row with a NaN or `+inf`, or with every element `-inf`, gives NaN
//!   outputs (as PyTorch and ONNX Runtime do).
//! * [`layer_norm`]: two-pass mean and variance (no `E[x^2] - E[x]^2`
//!   cancellation): `mean = sum(x) / n`, `var = sum((x - mean)^2) / n`
//!   (biased, as ONNX), `rstd = 1 / sqrt(var + eps)`,
//!   `y = fma((x - mean) * rstd, gamma, beta)` (`(x - mean) * rstd * gamma`
//!   without beta).
//! * [`rms_norm`]: `rstd = 1 / sqrt(sum(x^2) / n + eps)`, `y = (x * rstd) * gamma`.
//! * [`reduce_rows`]: `Sum` in the order above; `Mean = Sum / cols`; `Max` is
//!   IEEE `maximum` (NaN if any element is NaN, `-0 < +0`; `-inf` for empty rows).

use crate::element::{FloatSlice, FloatSliceMut};
#[cfg(target_arch = "x86_64")]
use crate::elementwise::{avx2, avx512};
use crate::elementwise::{backend_call, scalar, with_in, with_out};
use crate::isa::{Isa, IsaError, active_isa};

/// A reduction over the last axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// Sum in f32, in the documented order (0 for an empty row).
    Sum,
    /// `Sum / cols` (NaN for an empty row, as 0 / 0).
    Mean,
    /// IEEE `maximum` (NaN propagates; `-inf` for an empty row).
    Max,
}

impl ReduceOp {
    /// All three reductions.
    pub const ALL: [ReduceOp; 3] = [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max];
}

/// Rows of a `len`-element buffer with `cols` columns; panics on a ragged buffer.
fn rows_of(what: &str, len: usize, cols: usize) -> usize {
    if cols == 0 {
        assert_eq!(
            len, 0,
            "mixprec {what}: cols is 0 but the input has {len} elements"
        );
        return 0;
    }
    assert_eq!(
        len % cols,
        0,
        "mixprec {what}: input has {len} elements, not a multiple of cols = {cols}"
    );
    len / cols
}

fn check(what: &str, name: &str, got: usize, want: usize) {
    assert_eq!(
        got, want,
        "mixprec {what}: {name} has {got} elements, expected {want}"
    );
}

fn run_softmax(isa: Isa, x: FloatSlice, y: FloatSliceMut, cols: usize, log: bool) {
    rows_of("softmax", x.len(), cols);
    check("softmax", "output", y.len(), x.len());
    if x.is_empty() {
        return;
    }
    with_in!(x, |x: I| with_out!(y, |y: O| backend_call!(
        isa,
        softmax::<I, O>(x, y, cols, log)
    )))
}

fn run_layer_norm(
    isa: Isa,
    x: FloatSlice,
    y: FloatSliceMut,
    cols: usize,
    gamma: &[f32],
    beta: Option<&[f32]>,
    eps: f32,
) {
    rows_of("layer_norm", x.len(), cols);
    check("layer_norm", "output", y.len(), x.len());
    check("layer_norm", "gamma", gamma.len(), cols);
    if let Some(b) = beta {
        check("layer_norm", "beta", b.len(), cols);
    }
    if x.is_empty() {
        return;
    }
    with_in!(x, |x: I| with_out!(y, |y: O| backend_call!(
        isa,
        layer_norm::<I, O>(x, y, cols, gamma, beta, eps)
    )))
}

fn run_rms_norm(isa: Isa, x: FloatSlice, y: FloatSliceMut, cols: usize, gamma: &[f32], eps: f32) {
    rows_of("rms_norm", x.len(), cols);
    check("rms_norm", "output", y.len(), x.len());
    check("rms_norm", "gamma", gamma.len(), cols);
    if x.is_empty() {
        return;
    }
    with_in!(x, |x: I| with_out!(y, |y: O| backend_call!(
        isa,
        rms_norm::<I, O>(x, y, cols, gamma, eps)
    )))
}

fn run_reduce(isa: Isa, op: ReduceOp, x: FloatSlice, cols: usize, mut y: FloatSliceMut) {
    if cols == 0 {
        assert_eq!(
            x.len(),
            0,
            "mixprec reduce_rows: cols is 0 but the input has {} elements",
            x.len()
        );
        let empty = match op {
            ReduceOp::Sum => 0.0,
            ReduceOp::Mean => f32::NAN,
            ReduceOp::Max => f32::NEG_INFINITY,
        };
        let y = &mut y;
        return with_out!(y, |y: O| y.fill(<O as crate::Element>::from_f32(empty)));
    }
    let rows = rows_of("reduce_rows", x.len(), cols);
    check("reduce_rows", "output", y.len(), rows);
    if rows == 0 {
        return;
    }
    with_in!(x, |x: I| with_out!(y, |y: O| backend_call!(
        isa,
        reduce::<I, O>(op, x, cols, y)
    )))
}

/// What the softmax / norm / reduction kernels run at `isa` (for `mixprec info`).
pub const fn implementation(isa: Isa) -> &'static str {
    match isa {
        Isa::Scalar => "scalar, 32 partial sums",
        Isa::Avx2 => "avx2, 32 partial sums in 4 ymm",
        Isa::Avx512Core | Isa::Avx512CoreBf16 | Isa::Avx512CoreFp16 => {
            "avx512, 32 partial sums in 2 zmm (avx512_core code)"
        }
    }
}

/// Softmax (or, with `log`, log-softmax) of each row of `cols` elements, on
/// the active level. `rows = x.len() / cols`.
///
/// # Panics
/// If `x.len()` is not a multiple of `cols` (or `cols == 0` with a non-empty
/// `x`), or `y.len() != x.len()`.
pub fn softmax(x: FloatSlice, y: FloatSliceMut, cols: usize, log: bool) {
    run_softmax(active_isa(), x, y, cols, log)
}

/// Layer normalization of each row of `cols` elements, on the active level:
/// `y = (x - mean) / sqrt(var + eps) * gamma + beta` (see the module docs for
/// the exact operation order).
///
/// # Panics
/// On a ragged `x`, `y.len() != x.len()`, or `gamma` / `beta` not of length `cols`.
pub fn layer_norm(
    x: FloatSlice,
    y: FloatSliceMut,
    cols: usize,
    gamma: &[f32],
    beta: Option<&[f32]>,
    eps: f32,
) {
    run_layer_norm(active_isa(), x, y, cols, gamma, beta, eps)
}

/// RMS normalization of each row of `cols` elements, on the active level:
/// `y = x / sqrt(mean(x^2) + eps) * gamma`.
///
/// # Panics
/// On a ragged `x`, `y.len() != x.len()`, or `gamma.len() != cols`.
pub fn rms_norm(x: FloatSlice, y: FloatSliceMut, cols: usize, gamma: &[f32], eps: f32) {
    run_rms_norm(active_isa(), x, y, cols, gamma, eps)
}

/// Reduces each row of `cols` elements to one value of `y`, on the active
/// level. `y.len()` is the row count; with `cols == 0`, `x` must be empty and
/// every element of `y` is the empty reduction (0, NaN, `-inf`).
///
/// # Panics
/// On a ragged `x` or `y.len() != x.len() / cols`.
pub fn reduce_rows(op: ReduceOp, x: FloatSlice, cols: usize, y: FloatSliceMut) {
    run_reduce(active_isa(), op, x, cols, y)
}

/// [`softmax`] at an explicit level; errors if this CPU lacks it.
///
/// # Panics
/// As [`softmax`].
pub fn softmax_at(
    isa: Isa,
    x: FloatSlice,
    y: FloatSliceMut,
    cols: usize,
    log: bool,
) -> Result<(), IsaError> {
    run_softmax(isa.require()?, x, y, cols, log);
    Ok(())
}

/// [`layer_norm`] at an explicit level; errors if this CPU lacks it.
///
/// # Panics
/// As [`layer_norm`].
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_at(
    isa: Isa,
    x: FloatSlice,
    y: FloatSliceMut,
    cols: usize,
    gamma: &[f32],
    beta: Option<&[f32]>,
    eps: f32,
) -> Result<(), IsaError> {
    run_layer_norm(isa.require()?, x, y, cols, gamma, beta, eps);
    Ok(())
}

/// [`rms_norm`] at an explicit level; errors if this CPU lacks it.
///
/// # Panics
/// As [`rms_norm`].
pub fn rms_norm_at(
    isa: Isa,
    x: FloatSlice,
    y: FloatSliceMut,
    cols: usize,
    gamma: &[f32],
    eps: f32,
) -> Result<(), IsaError> {
    run_rms_norm(isa.require()?, x, y, cols, gamma, eps);
    Ok(())
}

/// [`reduce_rows`] at an explicit level; errors if this CPU lacks it.
///
/// # Panics
/// As [`reduce_rows`].
pub fn reduce_rows_at(
    isa: Isa,
    op: ReduceOp,
    x: FloatSlice,
    cols: usize,
    y: FloatSliceMut,
) -> Result<(), IsaError> {
    run_reduce(isa.require()?, op, x, cols, y);
    Ok(())
}
