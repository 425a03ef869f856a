//! The packed right-hand-side layout shared by every path.
//!
//! B (k x n) is cut into panels of [`NR`] columns; panel `p` holds columns
//! `p*NR .. p*NR+NR` as `k` rows of `NR` contiguous elements (zero-padded past
//! `n`). The micro-kernels read one panel row per k step with aligned-width
//! vector loads, whatever the original strides of B were. Elements stay in
//! their storage type (bf16/f16 weights take half the bytes of f32); the
//! kernels widen them exactly to f32 before the multiply.

use super::{Accumulation, Element, GemmError, MatRef, check_accumulation};
use crate::element::FloatType;

/// Panel width in columns: two zmm or four ymm registers of f32.
pub(crate) const NR: usize = 32;

/// k block of the large-m path: a 32-column f32 B panel of `KC` rows is
/// 24 KiB, within Zen 4's 32 KiB L1D. Packed A tiles are row-major blocks
/// with this row stride.
#[cfg(target_arch = "x86_64")]
pub(crate) const KC: usize = 192;

/// A `k x n` right-hand side packed once (typically weights) and reused by
/// [`super::gemm_packed`].
///
/// Packing copies B into column panels of the micro-kernel's width in B's own
/// element type, so a bf16/f16 `PackedB` takes half the memory of an f32 one.
/// Results of [`super::gemm_packed`] are bit-identical to [`super::gemm`] with
/// the unpacked view at the same level (see the [`super`] module docs for
/// the one documented exception, the small-m path for `rs == 1` views).
///
/// [`PackedB::pack_for`] with [`Accumulation::Bf16Dot`] packs a bf16 B
/// into the k-pair panels `VDPBF16PS` reads instead (the same size);
/// [`super::gemm_packed`] then multiplies with that accumulation.
/// [`PackedB::pack_widened`] keeps a bf16/f16 B's panels widened to f32
/// (twice the memory, the same results) for products of many rows.
#[derive(Clone, Debug)]
pub struct PackedB<T> {
    /// The panels of a [`Layout::Rows`] B (empty otherwise).
    pub(crate) data: Vec<T>,
    /// The panels of a [`Layout::WidenedRows`] B (empty otherwise).
    pub(crate) wide: Vec<f32>,
    /// The pair panels of a [`Layout::Bf16Pairs`] B (empty otherwise): one
    /// u32 lane per pair, `x[2q]` in the low half, as the kernel loads them.
    pub(crate) pairs: Vec<u32>,
    pub(crate) k: usize,
    pub(crate) n: usize,
    pub(crate) layout: Layout,
}

/// How a [`PackedB`] lays out its panels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// `k` rows of `NR` elements per panel (every F32-accumulation path).
    Rows,
    /// [`Layout::Rows`] with the elements widened to f32 (exact).
    WidenedRows,
    /// `ceil(k / 2)` rows of `NR` bf16 pairs per panel: element `(kk, j)` of
    /// panel `p` in lane `(kk / 2) * NR + j % NR`, half `kk % 2`, the odd `k`
    /// padded with zero (the [`Accumulation::Bf16Dot`] micro-kernel's layout).
    Bf16Pairs,
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
        PackedB {
            data,
            wide: Vec::new(),
            pairs: Vec::new(),
            k,
            n,
            layout: Layout::Rows,
        }
    }

    /// [`PackedB::pack`] with a bf16/f16 B's elements widened to f32 once
    /// (exact, so every product gives the same bits as with `pack`); an
    /// f32 B is packed as `pack` does. For products of more than
    /// [`super::STREAMING_ROWS`] rows, whose register tiles multiply f32
    /// panels: they otherwise widen a bf16/f16 panel in every tile (about
    /// 5% of the FMA time) or, from 256 rows, the whole B once per call.
    /// Products of fewer rows stream the panels, and move twice the bytes
    /// of `pack`'s.
    pub fn pack_widened(b: MatRef<T>) -> Self {
        let packed = Self::pack(b);
        if T::DTYPE == FloatType::F32 {
            return packed;
        }
        PackedB {
            wide: packed.data.iter().map(|x| x.to_f32()).collect(),
            data: Vec::new(),
            layout: Layout::WidenedRows,
            ..packed
        }
    }

    /// Packs `b` for the given accumulation mode: [`Accumulation::F32`] is
    /// [`PackedB::pack`]; [`Accumulation::Bf16Dot`] (bf16 only) packs the
    /// k-pair panels of the `VDPBF16PS` kernel, which [`super::gemm_packed`]
    /// then uses at `avx512_core_bf16` and up and refuses with
    /// [`GemmError::Isa`] below.
    ///
    /// Errors as [`super::gemm_at`] does for a mode that does not apply to
    /// `T` or is not implemented.
    pub fn pack_for(b: MatRef<T>, accumulation: Accumulation) -> Result<Self, GemmError> {
        check_accumulation::<T>(accumulation)?;
        if accumulation != Accumulation::Bf16Dot {
            return Ok(Self::pack(b));
        }
        let (k, n) = (b.rows(), b.cols());
        let kp = k.div_ceil(2);
        let panels = n.div_ceil(NR);
        let mut pairs = vec![0u32; panels * kp * NR];
        for p in 0..panels {
            let j0 = p * NR;
            let w = NR.min(n - j0);
            let panel = &mut pairs[p * kp * NR..(p + 1) * kp * NR];
            for kk in 0..k {
                let row = &mut panel[(kk / 2) * NR..(kk / 2) * NR + w];
                for (jj, lane) in row.iter_mut().enumerate() {
                    // bf16 widens to the top half of an f32 exactly.
                    let bits = b.at(kk, j0 + jj).to_f32().to_bits() >> 16;
                    *lane |= bits << (16 * (kk % 2));
                }
            }
        }
        Ok(PackedB {
            data: Vec::new(),
            wide: Vec::new(),
            pairs,
            k,
            n,
            layout: Layout::Bf16Pairs,
        })
    }

    /// The accumulation mode this B was packed for.
    pub fn accumulation(&self) -> Accumulation {
        match self.layout {
            Layout::Rows | Layout::WidenedRows => Accumulation::F32,
            Layout::Bf16Pairs => Accumulation::Bf16Dot,
        }
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
        match self.layout {
            Layout::Rows => self.data[(j / NR) * self.k * NR + kk * NR + j % NR],
            Layout::WidenedRows => {
                T::from_f32(self.wide[(j / NR) * self.k * NR + kk * NR + j % NR])
            }
            Layout::Bf16Pairs => {
                let lane = self.pairs[(j / NR) * self.k.div_ceil(2) * NR + (kk / 2) * NR + j % NR];
                let bits = (lane >> (16 * (kk % 2))) & 0xffff;
                T::from_f32(f32::from_bits(bits << 16))
            }
        }
    }

    /// The panels of a [`Layout::Rows`] or [`Layout::WidenedRows`] B as
    /// bytes, and their element type (T's, or f32 where widened).
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn row_panels(&self) -> (&[u8], FloatType) {
        match self.layout {
            Layout::Rows => (bytemuck::cast_slice(&self.data), T::DTYPE),
            Layout::WidenedRows => (bytemuck::cast_slice(&self.wide), FloatType::F32),
            Layout::Bf16Pairs => unreachable!("pair panels are the Bf16Dot kernel's"),
        }
    }

    /// Panel `p` (all k rows) of a row-panel B ([`PackedB::row_panels`]).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub(crate) fn panel(&self, p: usize) -> (&[u8], FloatType) {
        let (panels, ty) = self.row_panels();
        let len = self.k * NR * ty.size();
        (&panels[p * len..(p + 1) * len], ty)
    }
}
