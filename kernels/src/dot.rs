//! Dot products of f32, bf16 and f16 slices with f32 accumulation.
//!
//! Numerics: every product is exact-input f32 (bf16/f16 widen exactly). The
//! scalar level sums in index order with a separate multiply and add; the SIMD
//! levels run the GEMM small-m dot kernel (a 1 x n times n x 1 product): 16
//! (AVX-512) or 8 (AVX2) lane partial sums built with FMAs in increasing
//! index, reduced in a fixed order at the end, so the error is bounded by about
//! `(n / lanes + log2(lanes)) * u * sum |a_i b_i|`, and the result does not
//! depend on the thread count.

use crate::element::Element;
use crate::gemm::{Accumulation, Epilogue, MatMut, MatRef, gemm_at};
use crate::isa::{Isa, IsaError, active_isa};

/// What `dot` runs at `isa` (for `mixprec info`).
pub const fn implementation(isa: Isa) -> &'static str {
    match isa {
        Isa::Scalar => "scalar f32, index order",
        Isa::Avx2 => "avx2 8-lane FMA partial sums (GEMM small-m kernel)",
        Isa::Avx512Core | Isa::Avx512CoreBf16 | Isa::Avx512CoreFp16 => {
            "avx512 16-lane FMA partial sums (GEMM small-m kernel)"
        }
    }
}

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
    if isa == Isa::Scalar || a.is_empty() {
        return scalar(a, b);
    }
    let n = a.len();
    let mut out = [0.0f32];
    // The views are valid by construction (1 x n with stride n) and the level was
    // checked, so the GEMM call cannot fail.
    let av = MatRef::new(a, 1, n, n).expect("1 x n view");
    let bv = MatRef::new(b, 1, n, n).expect("1 x n view").t();
    let c = MatMut::new(&mut out[..], 1, 1, 1).expect("1 x 1 view");
    gemm_at(
        isa,
        Accumulation::F32,
        1.0,
        av,
        bv,
        0.0,
        c,
        &Epilogue::default(),
    )
    .expect("level checked");
    out[0]
}

fn scalar<T: Element>(a: &[T], b: &[T]) -> f32 {
    a.iter()
        .zip(b)
        .fold(0.0f32, |acc, (x, y)| acc + x.to_f32() * y.to_f32())
}
