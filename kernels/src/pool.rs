//! The window fold of 2-D pooling (MaxPool, AveragePool) on f32, and the
//! input layout it reads.
//!
//! [`pad_phases`] lays the input out so that every window tap is a plain
//! offset: a padded copy of the plane, split by column stride phase, where
//! output `(i, j)` at tap `t` reads `src[taps[t] + i * row_stride + j]` (the
//! padding holds a value the fold ignores: `-inf` for max, `-0.0` for a
//! sum). [`fold_windows`] then folds each output vector's taps in order in
//! a register and stores it once. (Folding tap by tap over the whole
//! output, with per-tap valid ranges, stored and reloaded the accumulators
//! at offsets that differ by tap, which store forwarding does not serve:
//! 0.44 ms for the pool below.)
//!
//! # Numerics
//! [`PoolFold::Max`]: starting from `-inf`, `acc = if x > acc || x is NaN { x }
//! else { acc }`, so the first of equal values stays (`-0` then `+0` gives
//! `-0`), a NaN stays unless a later tap is a NaN, and values keep their bits
//! (no arithmetic). [`PoolFold::Sum`]: starting from `+0`, `acc = acc + x`
//! in f32 (`-0.0` padding leaves every sum as it was). Every level runs the
//! same operations (the elementwise kernels' one source; `maxps` semantics
//! for the comparison), so results are bit-identical across levels, NaN
//! payloads of sums aside.
//!
//! # Speed
//! ResNet-18's 3x3 stride-2 MaxPool on 64 x 112 x 112 at one Zen 4 thread,
//! as a graph step: 3.67 ms walking each window tap by tap, 0.47 ms with
//! compiler-vectorised (SSE2) row folds, 0.34-0.41 ms with this fold and
//! layout at `avx512_core` (the layout, [`pad_phases`], plain slice code
//! the compiler vectorises at the level's width, is a third of it);
//! onnxruntime 0.11 ms.

use crate::isa::{Isa, IsaError, active_isa};

#[cfg(target_arch = "x86_64")]
use crate::elementwise::{avx2, avx512};
use crate::elementwise::{backend_call, scalar};

/// What [`fold_windows`] runs at `isa` (for `mixprec info`).
pub const fn implementation(isa: Isa) -> &'static str {
    match isa {
        Isa::Scalar => "scalar window folds",
        Isa::Avx2 => "avx2 8-lane window folds, taps in a register",
        Isa::Avx512Core | Isa::Avx512CoreBf16 | Isa::Avx512CoreFp16 => {
            "avx512 16-lane window folds, taps in a register (avx512_core code)"
        }
    }
}

/// How a pooling window combines its taps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolFold {
    /// Maximum, first of equal values kept, NaN propagated (module docs).
    Max,
    /// Sum in f32 (AveragePool divides afterwards).
    Sum,
}

/// Folds, for every output `out[i * width + j]`, the taps
/// `src[taps[t] + i * row_stride + j]` in the order of `taps`, on the active
/// level (see the module docs). `out.len()` is a multiple of `width`.
///
/// # Panics
/// If `out.len()` is not a multiple of `width`, or a tap's row reaches
/// past the end of `src` (a caller's bug).
pub fn fold_windows(
    fold: PoolFold,
    src: &[f32],
    taps: &[usize],
    row_stride: usize,
    out: &mut [f32],
    width: usize,
) {
    run(active_isa(), fold, src, taps, row_stride, out, width);
}

/// [`fold_windows`] at an explicit level; errors if this CPU lacks it.
///
/// # Panics
/// As [`fold_windows`].
pub fn fold_windows_at(
    isa: Isa,
    fold: PoolFold,
    src: &[f32],
    taps: &[usize],
    row_stride: usize,
    out: &mut [f32],
    width: usize,
) -> Result<(), IsaError> {
    run(isa.require()?, fold, src, taps, row_stride, out, width);
    Ok(())
}

/// Where [`pad_phases`] puts a plane: padded row `y`, column `x` (input
/// `(y - pad_top, x - pad_left)`) at `(x % stride * rows + y) * phase_len +
/// x / stride`, so that with [`fold_windows`] every window tap of a
/// strided pooling is a fixed offset from its output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhaseLayout {
    /// Padded rows laid out.
    pub rows: usize,
    /// Column stride: the number of phases.
    pub stride: usize,
    /// Columns per phase row.
    pub phase_len: usize,
    /// Padding rows above the input.
    pub pad_top: usize,
    /// Padding columns left of the input.
    pub pad_left: usize,
}

/// Lays the `h x w` plane `src` out in `dst` as `layout` says, `pad`
/// everywhere outside the input (a value the fold ignores: `-inf` for
/// max, `-0.0` for sums), on the active level.
///
/// # Panics
/// If `src` is shorter than `h * w`, `dst` than `stride * rows *
/// phase_len`, or the stride is 0 (a caller's bug).
pub fn pad_phases(
    src: &[f32],
    h: usize,
    w: usize,
    layout: &PhaseLayout,
    pad: f32,
    dst: &mut [f32],
) {
    assert!(
        layout.stride > 0
            && src.len() >= h * w
            && dst.len() >= layout.stride * layout.rows * layout.phase_len,
        "mixprec pad_phases: {h} x {w} plane in {} values into {} for {layout:?}",
        src.len(),
        dst.len()
    );
    backend_call!(active_isa(), pad_phases(src, h, w, layout, pad, dst))
}

fn run(
    isa: Isa,
    fold: PoolFold,
    src: &[f32],
    taps: &[usize],
    row_stride: usize,
    out: &mut [f32],
    width: usize,
) {
    if out.is_empty() {
        return;
    }
    assert!(
        width > 0 && out.len().is_multiple_of(width),
        "mixprec fold_windows: {} outputs are not rows of {width}",
        out.len()
    );
    let rows = out.len() / width;
    // One past the last element the last row's furthest tap reads.
    let end = taps.iter().max().and_then(|&t| {
        (rows - 1)
            .checked_mul(row_stride)?
            .checked_add(t)?
            .checked_add(width)
    });
    assert!(
        taps.is_empty() || end.is_some_and(|e| e <= src.len()),
        "mixprec fold_windows: taps up to {:?} over {rows} rows of {width} at stride \
         {row_stride} reach past src ({})",
        taps.iter().max(),
        src.len()
    );
    backend_call!(isa, fold_windows(fold, src, taps, row_stride, out, width))
}
