//! [`super::Accumulation::Bf16Dot`]: bf16 GEMM with `VDPBF16PS` (levels
//! `avx512_core_bf16` and up).
//!
//! A and B are packed as bf16 k-pairs: one 32-bit lane holds
//! `(x[2q] | x[2q + 1] << 16)`, an odd k is padded with a zero bf16. B goes
//! into panels of [`NR`] columns (`kp = ceil(k / 2)` rows of `NR` pairs), A
//! into tiles of [`MR`] rows interleaved pair-major (`MR` pairs per k-pair),
//! so the micro-kernel broadcasts one A pair per row and multiplies it with
//! two zmm of B pairs into a 14 x 32 f32 register tile (28 accumulators, two
//! B vectors and one broadcast: 31 of the 32 zmm). The k loop is blocked by
//! [`KCP`] pairs so a B block stays in L1; the f32 tile goes through the
//! driver's epilogue and store, as on the F32 path. Work is split over M/N
//! blocks with the driver's thread loop, never over k, so results do not
//! depend on the thread count.

use std::arch::x86_64::*;

use super::avx512::DirectStore;
use super::driver::{Ep, SendPtr, gemm_threads, mc_tiles, prefetch_tile_output};
use super::pack::{Layout, NR};
use super::threads::{parallel_for, put_buf, take_buf};
use super::{BSource, Element, FloatType, MatMut, MatRef};

/// Rows of the register tile.
pub(super) const MR: usize = 14;
/// k-pairs per block: a B block of `KCP x NR` pairs (16 KiB) and the A tile
/// block it meets (7 KiB) fit Zen 4's 32 KiB L1D together; 192 pairs (24 +
/// 10.5 KiB) did not and measured slower at 2048^3.
pub(super) const KCP: usize = 128;
/// Panels per N block (as the F32 driver; M blocks come from its `mc_tiles`).
const NC_PANELS: usize = 8;

/// The bf16 bits of an element that is a bf16 (exact: bf16 widens to the top half of f32).
#[inline(always)]
fn bits<T: Element>(x: T) -> u32 {
    x.to_f32().to_bits() >> 16
}

/// The k-pair of `x[2q]` (low half) and `x[2q + 1]` (high half, zero past `k`).
#[inline(always)]
fn pair<T: Element>(k: usize, q: usize, at: impl Fn(usize) -> T) -> u32 {
    let lo = bits(at(2 * q));
    let hi = if 2 * q + 1 < k {
        bits(at(2 * q + 1))
    } else {
        0
    };
    lo | (hi << 16)
}

/// `out[i][0..32] (+)= sum_q dpbf16(a[q * MR + i], b[q * NR + 0..32])` for `i < R`, `q < kcp`.
///
/// `R <= MR` rows: the last tile of a call (and every tile of a small-m
/// call, e.g. one row for GEMV) computes only its real rows. Each element's
/// instruction sequence is the same for every `R`, so a row's result does
/// not depend on m.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VL and BF16; `a` holds `kcp * MR` pairs, `b`
/// holds `kcp * NR` pairs, `out` holds `R` rows of 32 f32 at stride `ldo`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn tile<const R: usize>(
    kcp: usize,
    a: *const u32,
    b: *const u32,
    out: *mut f32,
    ldo: usize,
    load: bool,
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    // SAFETY: every access stays within the extents the caller guarantees.
    unsafe {
        if load {
            for (i, row) in acc.iter_mut().enumerate() {
                for (v, x) in row.iter_mut().enumerate() {
                    *x = _mm512_loadu_ps(out.add(i * ldo + 16 * v));
                }
            }
        }
        let (mut ap, mut bp) = (a, b);
        for _ in 0..kcp {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.cast()));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(16).cast()));
            for (i, row) in acc.iter_mut().enumerate() {
                let ai: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(i) as i32));
                row[0] = _mm512_dpbf16_ps(row[0], ai, b0);
                row[1] = _mm512_dpbf16_ps(row[1], ai, b1);
            }
            ap = ap.add(MR);
            bp = bp.add(NR);
        }
        for (i, row) in acc.iter().enumerate() {
            for (v, x) in row.iter().enumerate() {
                _mm512_storeu_ps(out.add(i * ldo + 16 * v), *x);
            }
        }
    }
}

/// As [`tile`] with B pair row `q` read at `b + offs[q]` (32 pairs), so a
/// convolution's k-pairs come straight from a channel-pair-interleaved copy
/// of the image (see `gemm/conv.rs`).
///
/// # Safety
/// As [`tile`], except that `offs` holds `kcp` offsets and the 32 pairs at
/// `b + offs[q]` are readable for each `q`; with `finish` the tile is
/// finished into the output instead of `out` ([`DirectStore::store_any`]'s
/// contract), after this k block, which must be the last.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn gather_tile<const R: usize>(
    kcp: usize,
    a: *const u32,
    b: *const u32,
    offs: *const usize,
    out: *mut f32,
    ldo: usize,
    load: bool,
    finish: Option<&DirectStore>,
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    // SAFETY: every access stays within the extents the caller guarantees.
    unsafe {
        if load {
            for (i, row) in acc.iter_mut().enumerate() {
                for (v, x) in row.iter_mut().enumerate() {
                    *x = _mm512_loadu_ps(out.add(i * ldo + 16 * v));
                }
            }
        }
        let mut ap = a;
        for q in 0..kcp {
            let bp = b.wrapping_add(*offs.add(q));
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.cast()));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(16).cast()));
            for (i, row) in acc.iter_mut().enumerate() {
                let ai: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(i) as i32));
                row[0] = _mm512_dpbf16_ps(row[0], ai, b0);
                row[1] = _mm512_dpbf16_ps(row[1], ai, b1);
            }
            ap = ap.add(MR);
        }
        if let Some(d) = finish {
            d.store_any(&acc);
            return;
        }
        for (i, row) in acc.iter().enumerate() {
            for (v, x) in row.iter().enumerate() {
                _mm512_storeu_ps(out.add(i * ldo + 16 * v), *x);
            }
        }
    }
}

/// A convolution micro-kernel for a given number of real rows.
pub(super) type GatherTileFn = unsafe fn(
    usize,
    *const u32,
    *const u32,
    *const usize,
    *mut f32,
    usize,
    bool,
    Option<&DirectStore>,
);

/// `GATHER_TILES[r - 1]` computes `r` rows.
pub(super) const GATHER_TILES: [GatherTileFn; MR] = [
    gather_tile::<1>,
    gather_tile::<2>,
    gather_tile::<3>,
    gather_tile::<4>,
    gather_tile::<5>,
    gather_tile::<6>,
    gather_tile::<7>,
    gather_tile::<8>,
    gather_tile::<9>,
    gather_tile::<10>,
    gather_tile::<11>,
    gather_tile::<12>,
    gather_tile::<13>,
    gather_tile::<14>,
];

/// A micro-kernel for a given number of real rows.
type TileFn = unsafe fn(usize, *const u32, *const u32, *mut f32, usize, bool);

/// `TILES[r - 1]` computes `r` rows.
const TILES: [TileFn; MR] = [
    tile::<1>, tile::<2>, tile::<3>, tile::<4>, tile::<5>, tile::<6>, tile::<7>, tile::<8>,
    tile::<9>, tile::<10>, tile::<11>, tile::<12>, tile::<13>, tile::<14>,
];

thread_local! {
    /// The calling thread's packed A and B, kept between calls so large
    /// GEMMs do not page-fault fresh buffers every time.
    static PACK_A: std::cell::Cell<Vec<u32>> = const { std::cell::Cell::new(Vec::new()) };
    static PACK_B: std::cell::Cell<Vec<u32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Packs B (`k x n`, bf16) into `ceil(n / NR)` panels of `kp x NR` pairs.
///
/// # Panics
/// If T is not bf16 or `dst` is shorter than the panels (a caller's bug).
fn pack_b<T: Element>(threads: usize, b: BSource<T>, k: usize, n: usize, dst: &mut [u32]) {
    let kp = k.div_ceil(2);
    // The raw panel writes below rely on both.
    assert!(T::DTYPE == FloatType::Bf16 && dst.len() >= n.div_ceil(NR) * kp * NR);
    let dp = SendPtr(dst.as_mut_ptr());
    if let BSource::View(v) = b
        && v.cs == 1
    {
        // Row-contiguous B: read two rows at a time, sequentially, and deal
        // the interleaved 32-column pieces out to the panels.
        const QB: usize = 32;
        let zeros = vec![0u16; n];
        parallel_for(threads, kp.div_ceil(QB), 0, |blk, _| {
            for q in blk * QB..kp.min((blk + 1) * QB) {
                let row = |kk: usize| -> &[u16] {
                    bytemuck::cast_slice(&v.data[kk * v.rs..kk * v.rs + n])
                };
                let lo = row(2 * q);
                let hi = if 2 * q + 1 < k {
                    row(2 * q + 1)
                } else {
                    &zeros[..]
                };
                for (p, (l, h)) in lo.chunks(NR).zip(hi.chunks(NR)).enumerate() {
                    // SAFETY: row q of panel p lies in dst[p*kp*NR..(p+1)*kp*NR]; blocks
                    // of q are disjoint per work item.
                    let out = unsafe {
                        std::slice::from_raw_parts_mut(dp.get().add(p * kp * NR + q * NR), NR)
                    };
                    for (jj, x) in out.iter_mut().enumerate() {
                        *x = match (l.get(jj), h.get(jj)) {
                            (Some(&l), Some(&h)) => l as u32 | (h as u32) << 16,
                            _ => 0,
                        };
                    }
                }
            }
        });
        return;
    }
    parallel_for(threads, n.div_ceil(NR), 0, |p, _| {
        // SAFETY: panel p owns dst[p*kp*NR .. (p+1)*kp*NR], disjoint per panel.
        let panel = unsafe { std::slice::from_raw_parts_mut(dp.get().add(p * kp * NR), kp * NR) };
        let j0 = p * NR;
        let w = NR.min(n - j0);
        for (q, row) in panel.chunks_exact_mut(NR).enumerate() {
            for (jj, x) in row.iter_mut().enumerate() {
                *x = if jj < w {
                    pair(k, q, |kk| b.at(kk, j0 + jj))
                } else {
                    0
                };
            }
        }
    });
}

/// Packs A (`m x k`, bf16) into `ceil(m / MR)` tiles of `kp x MR` pairs
/// (rows past `m` are zero).
///
/// # Panics
/// If T is not bf16 or `dst` is shorter than the tiles (a caller's bug).
pub(super) fn pack_a<T: Element>(threads: usize, a: &MatRef<T>, dst: &mut [u32]) {
    let (m, k) = (a.rows, a.cols);
    let kp = k.div_ceil(2);
    // The raw tile writes below rely on both.
    assert!(T::DTYPE == FloatType::Bf16 && dst.len() >= m.div_ceil(MR) * kp * MR);
    let dp = SendPtr(dst.as_mut_ptr());
    parallel_for(threads, m.div_ceil(MR), 0, |t, _| {
        // SAFETY: tile t owns dst[t*kp*MR .. (t+1)*kp*MR], disjoint per tile.
        let tile = unsafe { std::slice::from_raw_parts_mut(dp.get().add(t * kp * MR), kp * MR) };
        let rows = MR.min(m - t * MR);
        if a.cs == 1 {
            tile.fill(0);
            for i in 0..rows {
                let r = t * MR + i;
                let row: &[u16] = bytemuck::cast_slice(&a.data[r * a.rs..r * a.rs + k]);
                let mut pairs = row.chunks_exact(2);
                for (q, pr) in pairs.by_ref().enumerate() {
                    tile[q * MR + i] = pr[0] as u32 | (pr[1] as u32) << 16;
                }
                if let [last] = pairs.remainder() {
                    tile[(kp - 1) * MR + i] = *last as u32;
                }
            }
            return;
        }
        for i in 0..MR {
            let r = t * MR + i;
            for q in 0..kp {
                tile[q * MR + i] = if i < rows {
                    if a.cs == 1 {
                        let row = &a.data[r * a.rs..r * a.rs + k];
                        pair(k, q, |kk| row[kk])
                    } else {
                        pair(k, q, |kk| a.at(r, kk))
                    }
                } else {
                    0
                };
            }
        }
    });
}

/// `C = epilogue(alpha * A B)` with bf16 A and B via `VDPBF16PS`.
///
/// # Safety
/// `T` is bf16, the shapes were validated, `m, n, k > 0`, and the CPU has
/// AVX-512 F/BW/VL and BF16 (the caller checked `avx512_core_bf16`).
pub(super) unsafe fn run<T: Element, O: Element>(
    ep: &Ep,
    a: MatRef<T>,
    b: BSource<T>,
    c: MatMut<O>,
) {
    let (m, n, k) = (c.rows, c.cols, a.cols);
    let kp = k.div_ceil(2);
    let threads = gemm_threads(m, n, k, T::DTYPE);
    let blen = n.div_ceil(NR) * kp * NR;
    let mut bbuf = Vec::new();
    let bpack: &[u32] = match b {
        // Weights packed once by `PackedB::pack_for` are already the panels.
        BSource::Packed(p) if p.layout == Layout::Bf16Pairs => &p.pairs,
        _ => {
            bbuf = take_buf(&PACK_B, blen);
            pack_b(threads, b, k, n, &mut bbuf[..blen]);
            &bbuf[..blen]
        }
    };
    debug_assert_eq!(bpack.len(), blen);
    let alen = m.div_ceil(MR) * kp * MR;
    let mut abuf = take_buf(&PACK_A, alen);
    let apack = &mut abuf[..alen];
    pack_a(threads, &a, apack);
    let ldc = c.rs;
    let cp = SendPtr(c.data.as_mut_ptr());
    let nc = NR * NC_PANELS;
    let nblocks = n.div_ceil(nc);
    let mc = MR * mc_tiles(m.div_ceil(MR), nblocks, threads);
    let mblocks = m.div_ceil(mc);
    let apack = &*apack;
    let per_tile_store = ep.per_tile_store();
    parallel_for(threads, mblocks * nblocks, mc * nc, |item, ws| {
        let (i0, j0) = ((item / nblocks) * mc, (item % nblocks) * nc);
        let (mcb, ncb) = (mc.min(m - i0), nc.min(n - j0));
        for pc in (0..kp).step_by(KCP) {
            let kcp = KCP.min(kp - pc);
            // Tiles are stored as they finish their last k block, unless the
            // epilogue is stored per block below.
            let last = pc + kcp == kp;
            let store_tile = last && per_tile_store;
            for q in 0..ncb.div_ceil(NR) {
                let panel = j0 / NR + q;
                let bptr = bpack[panel * kp * NR + pc * NR..].as_ptr();
                for tl in 0..mcb.div_ceil(MR) {
                    let t = i0 / MR + tl;
                    let aptr = apack[t * kp * MR + pc * MR..].as_ptr();
                    let wsp = ws[tl * MR * nc + q * NR..].as_mut_ptr();
                    let rows = MR.min(m - t * MR);
                    if last {
                        let cols = NR.min(ncb - q * NR);
                        prefetch_tile_output(
                            cp.get().cast_const(),
                            ldc,
                            (t * MR, j0 + q * NR),
                            rows,
                            cols,
                        );
                    }
                    // SAFETY: the A tile holds kcp*MR pairs from pc*MR on, the B panel
                    // kcp*NR pairs from pc*NR on; the workspace tile is MR x NR at
                    // stride nc inside mc x nc and `rows <= MR`; the caller checked
                    // AVX512-BF16.
                    unsafe { TILES[rows - 1](kcp, aptr, bptr, wsp, nc, pc > 0) };
                    if store_tile {
                        let cols = NR.min(ncb - q * NR);
                        let (r0, c0) = (t * MR, j0 + q * NR);
                        // SAFETY: rows r0..r0+rows, columns c0..c0+cols of C belong to this item.
                        unsafe { ep.store(wsp, nc, rows, cols, cp.get(), ldc, (r0, c0)) };
                    }
                }
            }
        }
        if !per_tile_store {
            // SAFETY: the workspace holds the block's mcb rows at stride nc;
            // rows i0.., columns j0.. of C belong to this item.
            unsafe { ep.store(ws.as_ptr(), nc, mcb, ncb, cp.get(), ldc, (i0, j0)) };
        }
    });
    put_buf(&PACK_A, abuf);
    if !bbuf.is_empty() {
        put_buf(&PACK_B, bbuf);
    }
}
