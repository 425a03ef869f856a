//! Row-parallel execution of the ops whose output elements (or rows) do not
//! depend on each other: elementwise, casts, softmax, normalization and
//! row reductions.
//!
//! The output is cut into contiguous parts of whole units (elements or
//! rows) and each part runs the same single-threaded kernel call it would
//! run alone. Every output element is computed by the same instruction
//! sequence whatever the split, so results are bit-identical for any thread
//! count. The parts run on the GEMM's threads
//! ([`mixprec_kernels::gemm::for_each_part`]) and the thread count is the
//! GEMM knob, [`mixprec_kernels::gemm::set_num_threads`], so one setting and
//! one set of threads serve a whole run.

use std::ops::Range;

use mixprec_kernels::gemm;
use mixprec_kernels::{FloatSlice, FloatSliceMut};

use crate::graph::tensor::{convert_float, sub};

/// Fewer output elements than this per part are not worth a fork/join:
/// waking a pool thread costs microseconds to tens of microseconds, and
/// 2^18 elements of a cheap op (an add at ~20 Gelem/s) take ~13 us, of a
/// GELU ~130 us. A conservative choice, not a tuned one.
const MIN_ELEMS_PER_PART: usize = 1 << 18;

/// How many parts to cut `elems` output elements into.
fn parts_for(elems: usize) -> usize {
    (elems / MIN_ELEMS_PER_PART).clamp(1, gemm::num_threads().max(1))
}

/// Cuts `y` (of `units * unit` elements) into parts of whole units and runs
/// `f(unit_range, y_part)` on each, in parallel when the work is large;
/// `work_per_unit` is the elements a unit reads (a row reduction reads a
/// whole row per output element).
pub(crate) fn for_units(
    y: FloatSliceMut<'_>,
    unit: usize,
    work_per_unit: usize,
    f: impl Fn(Range<usize>, FloatSliceMut<'_>) + Sync,
) {
    let units = y.len().checked_div(unit).unwrap_or(0);
    let parts = parts_for(units.saturating_mul(work_per_unit)).min(units.max(1));
    if parts <= 1 {
        f(0..units, y);
        return;
    }
    let per = units.div_ceil(parts);
    let ranges: Vec<Range<usize>> = (0..units)
        .step_by(per)
        .map(|s| s..(s + per).min(units))
        .collect();
    for_each_piece(split_mut(y, &ranges, unit), |i, piece| {
        f(ranges[i].clone(), piece)
    });
}

/// Runs `f(i, pieces[i])` for every piece on the GEMM threads
/// ([`gemm::for_each_part`]), handing each piece (typically a disjoint
/// `&mut` part of one output) to whichever thread runs part `i`.
pub(crate) fn for_each_piece<P: Send>(pieces: Vec<P>, f: impl Fn(usize, P) + Sync) {
    let slots: Vec<std::sync::Mutex<Option<P>>> = pieces
        .into_iter()
        .map(|p| std::sync::Mutex::new(Some(p)))
        .collect();
    gemm::for_each_part(slots.len(), |i| {
        let piece = slots[i]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .expect("each part runs once");
        f(i, piece);
    });
}

/// [`convert_float`] split over the threads.
pub(crate) fn convert(src: FloatSlice<'_>, dst: FloatSliceMut<'_>) {
    for_units(dst, 1, 1, |r, d| convert_float(sub(src, r.start, r.end), d));
}

/// `y` cut at the unit ranges (consecutive, covering `y`).
fn split_mut<'a>(
    y: FloatSliceMut<'a>,
    ranges: &[Range<usize>],
    unit: usize,
) -> Vec<FloatSliceMut<'a>> {
    fn cut<'a, T>(mut s: &'a mut [T], ranges: &[Range<usize>], unit: usize) -> Vec<&'a mut [T]> {
        let mut out = Vec::with_capacity(ranges.len());
        for r in ranges {
            let (head, tail) = s.split_at_mut(r.len() * unit);
            out.push(head);
            s = tail;
        }
        out
    }
    match y {
        FloatSliceMut::F32(s) => cut(s, ranges, unit)
            .into_iter()
            .map(FloatSliceMut::F32)
            .collect(),
        FloatSliceMut::Bf16(s) => cut(s, ranges, unit)
            .into_iter()
            .map(FloatSliceMut::Bf16)
            .collect(),
        FloatSliceMut::F16(s) => cut(s, ranges, unit)
            .into_iter()
            .map(FloatSliceMut::F16)
            .collect(),
    }
}
