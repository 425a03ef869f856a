//! AVX2 + FMA + F16C micro-kernels (level `avx2`), the same algorithms as
//! `avx512.rs` on 8-lane ymm vectors:
//!
//! * `tile`: `MR x (8 * NV)` register tile; the large-m path uses 6 x 16
//!   (12 accumulators) twice per 32-column panel.
//! * bf16 is widened with `vpmovzxwd` + shift, f16 with `vcvtph2ps`; both
//!   exact. AVX2 has no 16-bit masked loads, so partial vectors go through a
//!   zeroed stack buffer.
//! * `axpy_block` and `dot_block` as on AVX-512 (the dot path keeps 8-lane
//!   partial sums, reduced in a fixed order).
//!
//! Callers must have checked the level with `Isa::require` (see `gemm::run`).

use std::arch::x86_64::*;

use super::driver::{BF16, F16, F32, dispatch_axpy_rows, tag};
use super::pack::KC;
use crate::element::FloatType;

/// Rows of the large-m register tile.
pub(super) const MR: usize = 6;
/// Columns handled by one small-m tile call.
pub(super) const SMALL_COLS: usize = 64;

/// Loads `n.min(8)` elements of type `BT` at `p` (the rest zero) widened to f32.
///
/// # Safety
/// `n.min(8)` elements at `p` must be readable.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8<const BT: u8>(p: *const u8, n: usize) -> __m256 {
    // SAFETY: reads at most n.min(8) elements at p, as the caller guarantees.
    unsafe {
        if n >= 8 {
            match BT {
                F32 => _mm256_loadu_ps(p.cast()),
                BF16 => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
                    _mm_loadu_si128(p.cast()),
                ))),
                _ => _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
            }
        } else {
            let size = if BT == F32 { 4 } else { 2 };
            let mut buf = [0u8; 32];
            std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), n * size);
            load8::<BT>(buf.as_ptr(), 8)
        }
    }
}

/// `out[i][0..8*NV] (+)= sum_p a[p*MR_ + i] * b[p*b_rs + 0..8*NV]`, `p < kc`.
///
/// # Safety
/// As `avx512::tile` (A at constant strides `AI` between rows, `AP` between k steps); `cols` elements of each B row
/// readable; `out` holds `MR_` rows of `8 * NV` f32 at stride `ldo`.
#[inline]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<
    const MR_: usize,
    const NV: usize,
    const BT: u8,
    const AI: usize,
    const AP: usize,
>(
    kc: usize,
    a: *const f32,
    b: *const u8,
    b_rs: usize,
    cols: usize,
    out: *mut f32,
    ldo: usize,
    load: bool,
) {
    let size = if BT == F32 { 4 } else { 2 };
    let mut acc = [[_mm256_setzero_ps(); NV]; MR_];
    // SAFETY: all pointer arithmetic stays within the extents the caller guarantees.
    unsafe {
        if load {
            for (i, row) in acc.iter_mut().enumerate() {
                for (v, x) in row.iter_mut().enumerate() {
                    *x = _mm256_loadu_ps(out.add(i * ldo + 8 * v));
                }
            }
        }
        let mut ap = a;
        let mut bp = b;
        for _ in 0..kc {
            let mut bv = [_mm256_setzero_ps(); NV];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = load8::<BT>(bp.add(8 * v * size), cols.saturating_sub(8 * v));
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = _mm256_broadcast_ss(&*ap.add(i * AI));
                for (v, x) in row.iter_mut().enumerate() {
                    *x = _mm256_fmadd_ps(ai, bv[v], *x);
                }
            }
            ap = ap.add(AP);
            bp = bp.add(b_rs * size);
        }
        for (i, row) in acc.iter().enumerate() {
            for (v, x) in row.iter().enumerate() {
                _mm256_storeu_ps(out.add(i * ldo + 8 * v), *x);
            }
        }
    }
}

/// Large-m tile: `mr <= MR` rows by 32 columns of a B panel (row stride 32)
/// of element type `bt` (bf16/f16 widened in-register, exact), as two
/// 16-column halves.
///
/// # Safety
/// As [`tile`] with `cols = 32`, `b_rs = 32` (B of type `bt`), and the CPU
/// supports AVX2/FMA/F16C.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn big_tile(
    bt: FloatType,
    mr: usize,
    kc: usize,
    a: *const f32,
    b: *const u8,
    out: *mut f32,
    ldo: usize,
    load: bool,
) {
    let size = if bt == FloatType::F32 { 4 } else { 2 };
    for half in 0..2 {
        // SAFETY: the second half starts 16 columns into the panel and the tile.
        let (b, out) = unsafe { (b.add(16 * half * size), out.add(16 * half)) };
        macro_rules! go {
            ($bt:expr, $($n:literal)*) => {
                match mr {
                    // SAFETY: forwarded from the caller's contract.
                    $($n => unsafe { tile::<$n, 2, $bt, KC, 1>(kc, a, b, 32, 16, out, ldo, load) },)*
                    _ => unreachable!("tile rows {mr} > {MR}"),
                }
            };
        }
        match tag(bt) {
            F32 => go!(F32, 1 2 3 4 5 6),
            BF16 => go!(BF16, 1 2 3 4 5 6),
            _ => go!(F16, 1 2 3 4 5 6),
        }
    }
}

/// Small-m tile: `mr <= 4` rows by `cols <= 64` columns, 16 at a time.
/// Writes `cols` rounded up to 16 columns of `out` per row.
///
/// # Safety
/// As [`tile`], and the CPU supports AVX2/FMA/F16C.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn small_tile(
    bt: FloatType,
    mr: usize,
    kc: usize,
    a: *const f32,
    b: *const u8,
    b_rs: usize,
    cols: usize,
    out: *mut f32,
    ldo: usize,
) {
    let size = if bt == FloatType::F32 { 4 } else { 2 };
    for j in (0..cols).step_by(16) {
        let c = cols - j;
        // SAFETY: column j of B rows and of out are within the caller's extents.
        let (b, out) = unsafe { (b.add(j * size), out.add(j)) };
        macro_rules! go {
            ($bt:expr, $($n:literal)*) => {
                match mr {
                    // SAFETY: forwarded from the caller's contract.
                    $($n => unsafe { tile::<$n, 2, $bt, 1, $n>(kc, a, b, b_rs, c, out, ldo, false) },)*
                    _ => unreachable!("small tile rows {mr} > 4"),
                }
            };
        }
        match tag(bt) {
            F32 => go!(F32, 1 2 3 4),
            BF16 => go!(BF16, 1 2 3 4),
            _ => go!(F16, 1 2 3 4),
        }
    }
}

/// As `avx512::axpy_block` on 8 lanes, four B rows per sweep.
///
/// # Safety
/// `a` holds `k * MR_` f32; row p of B has `cols` readable elements at
/// `b + p * b_rs`; `out` holds `MR_` rows of `cols.next_multiple_of(8)` f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)] // i indexes both the broadcasts and the accumulator rows
unsafe fn axpy_block<const MR_: usize, const BT: u8>(
    k: usize,
    a: *const f32,
    b: *const u8,
    b_rs: usize,
    cols: usize,
    out: *mut f32,
    ldo: usize,
) {
    let size = if BT == F32 { 4 } else { 2 };
    let nv = cols.div_ceil(8);
    // SAFETY: all accesses stay within the extents the caller guarantees.
    unsafe {
        for i in 0..MR_ {
            for v in 0..nv {
                _mm256_storeu_ps(out.add(i * ldo + 8 * v), _mm256_setzero_ps());
            }
        }
        let mut p = 0;
        while p < k {
            let rows = 4.min(k - p);
            let mut ai = [[_mm256_setzero_ps(); MR_]; 4];
            for (r, row) in ai.iter_mut().enumerate().take(rows) {
                for (i, x) in row.iter_mut().enumerate() {
                    *x = _mm256_set1_ps(*a.add((p + r) * MR_ + i));
                }
            }
            let row0 = b.add(p * b_rs * size);
            for v in 0..nv {
                let left = cols - 8 * v;
                let mut bv = [_mm256_setzero_ps(); 4];
                for (r, x) in bv.iter_mut().enumerate().take(rows) {
                    *x = load8::<BT>(row0.add((r * b_rs + 8 * v) * size), left);
                }
                for i in 0..MR_ {
                    let o = out.add(i * ldo + 8 * v);
                    let mut acc = _mm256_loadu_ps(o);
                    for r in 0..rows {
                        acc = _mm256_fmadd_ps(ai[r][i], bv[r], acc);
                    }
                    _mm256_storeu_ps(o, acc);
                }
            }
            p += 4;
        }
    }
}

/// Small-m rows (`mr <= 4`) against row-contiguous B, accumulating in `out`.
///
/// # Safety
/// As [`axpy_block`] with `MR_ = mr`, and the CPU supports AVX2/FMA/F16C.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn axpy_rows(
    bt: FloatType,
    mr: usize,
    k: usize,
    a: *const f32,
    b: *const u8,
    b_rs: usize,
    cols: usize,
    out: *mut f32,
    ldo: usize,
) {
    dispatch_axpy_rows!(bt, mr, (k, a, b, b_rs, cols, out, ldo))
}

/// Sum of the 8 lanes in a fixed order: halves, then pairs, then the last two.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn reduce8(x: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps::<1>(x));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
    _mm_cvtss_f32(s)
}

/// `out[i * ldo + jj] = sum_p a[i * k + p] * w[jj * w_rs + p]` with 8-lane partial sums.
///
/// # Safety
/// `a` holds `MR_ * k` f32; each of the `NJ` rows of `w` holds `k` readable
/// elements of type `BT`; `out` is writable for the `MR_ x NJ` block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_block<const MR_: usize, const NJ: usize, const BT: u8>(
    k: usize,
    a: *const f32,
    w: *const u8,
    w_rs: usize,
    out: *mut f32,
    ldo: usize,
) {
    let size = if BT == F32 { 4 } else { 2 };
    let mut acc = [[_mm256_setzero_ps(); NJ]; MR_];
    // SAFETY: pointer arithmetic stays within the extents the caller guarantees.
    unsafe {
        let mut p = 0;
        while p < k {
            let left = k - p;
            let mut wv = [_mm256_setzero_ps(); NJ];
            for (jj, x) in wv.iter_mut().enumerate() {
                *x = load8::<BT>(w.add((jj * w_rs + p) * size), left);
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let av = load8::<F32>(a.add(i * k + p).cast(), left);
                for (jj, x) in row.iter_mut().enumerate() {
                    *x = _mm256_fmadd_ps(av, wv[jj], *x);
                }
            }
            p += 8;
        }
        for (i, row) in acc.iter().enumerate() {
            for (jj, x) in row.iter().enumerate() {
                *out.add(i * ldo + jj) = reduce8(*x);
            }
        }
    }
}

/// Small m (`m <= 4`) against column-contiguous B: `nj <= 4` output columns,
/// two at a time (per-column sums do not depend on the grouping).
///
/// # Safety
/// As [`dot_block`], and the CPU supports AVX2/FMA/F16C.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn dot_tile(
    bt: FloatType,
    m: usize,
    nj: usize,
    k: usize,
    a: *const f32,
    w: *const u8,
    w_rs: usize,
    out: *mut f32,
    ldo: usize,
) {
    let size = if bt == FloatType::F32 { 4 } else { 2 };
    let mut j = 0;
    while j < nj {
        let two = nj - j >= 2;
        // SAFETY: column j's row of w and out column j are within the caller's extents.
        let (w, out) = unsafe { (w.add(j * w_rs * size), out.add(j)) };
        macro_rules! go {
            ($bt:expr) => {
                // SAFETY: forwarded from the caller's contract (every arm).
                unsafe {
                    match (m, two) {
                        (1, true) => dot_block::<1, 2, $bt>(k, a, w, w_rs, out, ldo),
                        (2, true) => dot_block::<2, 2, $bt>(k, a, w, w_rs, out, ldo),
                        (3, true) => dot_block::<3, 2, $bt>(k, a, w, w_rs, out, ldo),
                        (4, true) => dot_block::<4, 2, $bt>(k, a, w, w_rs, out, ldo),
                        (1, false) => dot_block::<1, 1, $bt>(k, a, w, w_rs, out, ldo),
                        (2, false) => dot_block::<2, 1, $bt>(k, a, w, w_rs, out, ldo),
                        (3, false) => dot_block::<3, 1, $bt>(k, a, w, w_rs, out, ldo),
                        (4, false) => dot_block::<4, 1, $bt>(k, a, w, w_rs, out, ldo),
                        _ => unreachable!("dot tile rows {m} > 4"),
                    }
                }
            };
        }
        match tag(bt) {
            F32 => go!(F32),
            BF16 => go!(BF16),
            _ => go!(F16),
        }
        j += if two { 2 } else { 1 };
    }
}
