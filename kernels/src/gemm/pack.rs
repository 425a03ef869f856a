//! The packed right-hand-side layout shared by every path.
//!
//! B (k x n) is cut into panels of [`NR`] columns; panel `p` holds columns
//! `p*NR .. p*NR+NR` as `k` rows of `NR` contiguous elements (zero-padded past
//! `n`). The micro-kernels read one panel row per k step with aligned-width
//! vector loads, whatever the original strides of B were. Elements stay in
//! their storage type (bf16/f16 weights take half the bytes of f32); the
//! kernels widen them exactly to f32 before the multiply.

use super::{Element, MatRef};

/// Panel width in columns: two zmm or four ymm registers of f32.
pub(crate) const NR: usize = 32;

/// k block of the large-m path: a 32-column f32 B panel of `KC` rows is
/// 24 KiB, within Zen 4's 32 KiB L1D. Packed A tiles are row-major blocks
/// with this row stride.
pub(crate) const KC: usize = 192;

/// A `k x n` right-hand side packed once (typically weights) and reused by
/// [`super::gemm_packed`].
///
/// Packing copies B into column panels of the micro-kernel's width in B's own
/// element type, so a bf16/f16 `PackedB` takes half the memory of an f32 one.
/// Results of [`super::gemm_packed`] are bit-identical to [`super::gemm`] with
/// the unpacked view at the same level (see the [`super`] module docs for
/// the one documented exception, the small-m path for `rs == 1` views).
#[derive(Clone, Debug)]
pub struct PackedB<T> {
    pub(crate) data: Vec<T>,
    pub(crate) k: usize,
    pub(crate) n: usize,
}

impl<T: Element> PackedB<T> {
    /// Packs the logical `k x n` matrix `b`; use `w.t()` for `[out, in]` weights.
    pub fn pack(b: MatRef<T>) -> Self {
        let (k, n) = (b.rows(), b.cols());
        let panels = n.div_ceil(NR);
        let zero = T::from_f32(0.0);
        let mut data = vec![zero; panels * k * NR];
        for p in 0..panels {
            let j0 = p * NR;
            let w = NR.min(n - j0);
            let panel = &mut data[p * k * NR..(p + 1) * k * NR];
            if b.cs == 1 {
                for kk in 0..k {
                    let src = &b.data[kk * b.rs + j0..kk * b.rs + j0 + w];
                    panel[kk * NR..kk * NR + w].copy_from_slice(src);
                }
            } else {
                // Column-contiguous source (a transposed view): walk each column
                // once so the reads stream.
                for jj in 0..w {
                    let col = (j0 + jj) * b.cs;
                    for kk in 0..k {
                        panel[kk * NR + jj] = b.data[kk * b.rs + col];
                    }
                }
            }
        }
        PackedB { data, k, n }
    }

    /// Rows of the logical B (the shared dimension).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns of the logical B (output features).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Element (kk, j) of the logical B.
    #[inline(always)]
    pub(crate) fn at(&self, kk: usize, j: usize) -> T {
        self.data[(j / NR) * self.k * NR + kk * NR + j % NR]
    }

    /// Panel `p` (all k rows).
    #[inline(always)]
    pub(crate) fn panel(&self, p: usize) -> &[T] {
        &self.data[p * self.k * NR..(p + 1) * self.k * NR]
    }
}
