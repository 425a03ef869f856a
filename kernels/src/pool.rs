//! 2-D pooling (MaxPool, AveragePool) on f32: the max pool of a plane, and
//! the window fold and input layout of sums.
//!
//! [`max_pool_plane`] is separable: each input row a band of output rows
//! reaches is folded over the window's columns at every output column, then
//! those row maxima over the window's rows (see its docs). At `avx512_core`
//! and above, column stride 2 with a 3-column window from padded column 0 or
//! a 2-column one from column 0 (ResNet's and VGG's pools) runs in registers
//! instead, folding rows first (see Numerics).
//!
//! For sums, [`pad_phases`] lays the input out so that every window tap is a
//! plain offset: a padded copy of the plane, split by column stride phase,
//! where output `(i, j)` at tap `t` reads `src[taps[t] + i * row_stride + j]`
//! (the padding holds a value the fold ignores: `-inf` for max, `-0.0` for a
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
//! payloads of sums aside. [`max_pool_plane`] gives the bits of the max
//! fold in row-major window order: folding each window row first, then the
//! rows, keeps the first of equal values of the first row holding one, and
//! the last NaN of the last row holding one. Where a plane holds neither a
//! NaN nor a -0, equal values have equal bits and any order gives the same
//! maximum, which the AVX-512 register path uses (it checks every value it
//! loads, and hands a plane holding either to the order-keeping path).
//!
//! # Speed
//! ResNet-18's 3x3 stride-2 MaxPool on 64 x 112 x 112 at one Zen 4 thread
//! (the planes one after another, kernels only): 0.26 ms as a phase-split
//! copy of each plane then [`fold_windows`] at `avx512_core` (0.18 ms of it
//! the copy: short rows, each read twice), 0.12 ms in registers; at `avx2`
//! 0.26 -> 0.20 ms with the separable fold, on scalar 0.70 -> 0.22. A 3x3
//! stride-1 pool on the same planes: 0.37 -> 0.33 ms at `avx512_core`, 0.43
//! -> 0.40 at `avx2`, 2.22 -> 0.41 on scalar. (The separable fold's loop
//! over a window's taps, inside its loop over vectors, had doubled the
//! scalar time and cost `avx2` a fifth; 2- and 3-tap windows get loops of
//! their own.) As a one-node model, 0.272 -> 0.119 ms; onnxruntime
//! 0.11-0.16 ms on its channel-blocked activations. On Zen 4 a 512-bit
//! store takes two cycles (one crossing a cache line nearer four), so the
//! register path, which stores nothing but its outputs, is what closes the
//! gap.

use crate::isa::{Isa, IsaError, active_isa};

#[cfg(target_arch = "x86_64")]
use crate::elementwise::{avx2, avx512};
use crate::elementwise::{backend_call, scalar};

/// What [`max_pool_plane`] and [`fold_windows`] run at `isa` (for
/// `mixprec info`).
pub const fn implementation(isa: Isa) -> &'static str {
    match isa {
        Isa::Scalar => "scalar separable max, scalar window folds",
        Isa::Avx2 => "avx2 8-lane separable max, window folds with taps in a register",
        Isa::Avx512Core | Isa::Avx512CoreBf16 | Isa::Avx512CoreFp16 => {
            "avx512 stride-2 max in registers, 16-lane separable max and window folds \
             (avx512_core code)"
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

/// A pooling window's geometry over one `h x w` plane (1-D pools are one
/// row high). Taps outside the plane are skipped, however far the window
/// reaches, so any geometry with nonzero kernel, strides and dilations is
/// valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolWindow {
    /// Input rows.
    pub h: usize,
    /// Input columns.
    pub w: usize,
    /// Output rows.
    pub oh: usize,
    /// Output columns.
    pub ow: usize,
    /// Window rows and columns.
    pub kernel: [usize; 2],
    /// Row and column strides.
    pub strides: [usize; 2],
    /// Row and column dilations.
    pub dilations: [usize; 2],
    /// Padding rows above and columns left of the plane.
    pub pad_begin: [usize; 2],
}

/// Input rows' worth of column maxima [`max_pool_plane`] keeps at once (in
/// f32 values: 24 KiB, most of an L1 data cache), which sets its band of
/// output rows.
const MAX_POOL_BAND_VALUES: usize = 6 * 1024;

/// Max-pools one plane on the active level: `out[i * ow + j]` is the fold of
/// [`PoolFold::Max`] (module docs) over the window's taps inside the plane,
/// in row-major order, or -inf where none is. `scratch` is working memory,
/// grown as needed, to reuse across calls.
///
/// Separable (each input row folded over the window's columns, then those
/// maxima over the window's rows), which the row-major max fold allows bit
/// for bit, so each input row is read once per band rather than once per
/// window row; a stride-2 row is split into its two column phases by
/// vector permutes. At `avx512_core` and above, column stride 2 with a
/// 3-column window from padded column 0 or a 2-column one from column 0
/// runs in registers instead, unless the plane holds a NaN or a -0 (module
/// docs).
///
/// # Panics
/// If `src` is shorter than `h * w`, `out.len()` is not `oh * ow`, a kernel
/// size, stride or dilation is 0, or the window's reach overflows `usize`
/// (a caller's bug).
pub fn max_pool_plane(win: &PoolWindow, src: &[f32], out: &mut [f32], scratch: &mut Vec<f32>) {
    run_max_pool(active_isa(), win, src, out, scratch);
}

/// [`max_pool_plane`] at an explicit level; errors if this CPU lacks it.
///
/// # Panics
/// As [`max_pool_plane`].
pub fn max_pool_plane_at(
    isa: Isa,
    win: &PoolWindow,
    src: &[f32],
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) -> Result<(), IsaError> {
    run_max_pool(isa.require()?, win, src, out, scratch);
    Ok(())
}

/// Whether [`max_pool_plane`] at AVX-512 folds `win` in registers: column
/// stride 2, dilation 1, and a 3-column window from padded column 0 or a
/// 2-column one from input column 0.
#[cfg(target_arch = "x86_64")]
fn takes_stride2_registers(win: &PoolWindow) -> bool {
    win.strides[1] == 2
        && win.dilations[1] == 1
        && matches!((win.kernel[1], win.pad_begin[1]), (3, 1) | (2, 0))
}

fn run_max_pool(isa: Isa, win: &PoolWindow, src: &[f32], out: &mut [f32], scratch: &mut Vec<f32>) {
    let PoolWindow {
        h,
        w,
        oh,
        ow,
        kernel: [kh, kw],
        strides: [sh, sw],
        dilations: [dh, dw],
        pad_begin: [_, pad_left],
    } = *win;
    assert!(
        h.checked_mul(w).is_some_and(|n| src.len() >= n) && out.len() == oh * ow,
        "mixprec max_pool_plane: {} inputs, {} outputs for {win:?}",
        src.len(),
        out.len()
    );
    assert!(
        [kh, kw, sh, sw, dh, dw].iter().all(|&v| v > 0),
        "mixprec max_pool_plane: zero kernel, stride or dilation in {win:?}"
    );
    if out.is_empty() {
        return;
    }
    // Output columns folded per input row, in whole vectors of every level.
    let folded_stride = ow.next_multiple_of(16);
    // A phase row holds every input column and the reach of every output
    // column's taps; the windows' rows and columns stay below usize::MAX.
    let sizes = (|| {
        let span = (kh - 1).checked_mul(dh)?.checked_add(1)?;
        let tap_reach = folded_stride.checked_add((kw - 1).checked_mul(dw)? / sw)?;
        let inputs = w.checked_add(pad_left)?.div_ceil(sw);
        let phase_len = tap_reach.max(inputs).next_multiple_of(16);
        (oh - 1).checked_mul(sh)?.checked_add(span)?;
        (ow - 1)
            .checked_mul(sw)?
            .checked_add((kw - 1).checked_mul(dw)?)?;
        Some((span, phase_len, sw.checked_mul(phase_len)?))
    })();
    let Some((span, phase_len, phase_values)) = sizes else {
        panic!("mixprec max_pool_plane: the window's reach overflows in {win:?}")
    };
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx512Core && takes_stride2_registers(win) {
        // SAFETY: the level is active or required, so the CPU has AVX-512.
        if unsafe { avx512::max_pool_stride2(win, src, out) } {
            return;
        }
    }
    // Bands of output rows whose input rows' maxima fit the budget, as even
    // as the row count allows.
    let budget_rows = MAX_POOL_BAND_VALUES / folded_stride;
    let band = if budget_rows > span {
        (budget_rows - span) / sh + 1
    } else {
        1
    };
    let band = oh.div_ceil(oh.div_ceil(band));
    let band_inputs = ((band - 1) * sh + span).min(h);
    // Split rows and rows of maxima start on 64-byte lines (their lengths
    // are multiples of 16), so that whole-vector loads and stores of them
    // do not straddle two lines.
    scratch.resize(phase_values + band_inputs * folded_stride + 16, 0.0);
    let skip = scratch.as_ptr().align_offset(64).min(16);
    let scratch = &mut scratch[skip..];
    for (b, rows) in out.chunks_mut(band * ow).enumerate() {
        backend_call!(
            isa,
            max_pool_band(win, phase_len, folded_stride, src, b * band, rows, scratch)
        );
    }
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
