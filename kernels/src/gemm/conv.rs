//! Implicit-GEMM convolution on the AVX-512 levels.
//!
//! `C (out_channels x out_h*out_w) = W (out_channels x k) * B` where B is the
//! im2col matrix of the image, `k = in_channels * kh * kw` ordered (channel,
//! kernel row, kernel column). B is never built: the image is copied once,
//! widened to f32, zero-padded and split into `stride_h * stride_w` phases
//! (phase `(py, px)` holds the padded pixels `(y * sh + py, x * sw + px)`),
//! so that for every k row the B elements of consecutive output pixels are
//! consecutive f32 of that copy. Output pixels are walked in a "wide" domain
//! of `out_h` rows of `wq >= out_w` columns (`wq` = the phase width), which
//! makes a run of 32 wide pixels one contiguous load per k row even across
//! output rows; the `wq - out_w` extra columns per row are computed and
//! dropped. The micro-kernel ([`super::avx512`]'s `conv_tile`) is the
//! 14 x 32 tile of the GEMM with B row `p` at `offs[p]`, and the k loop is
//! blocked by `KC` exactly as the GEMM's, so every element of C is the same
//! FMA chain as [`super::gemm_at`] on the explicit im2col matrix at this
//! level: the results are bit-identical, whatever the thread count.
//!
//! The copy is `in_channels * (out_h + ..) * wq` f32 (about the image's
//! size), where im2col writes `k * out_h * out_w` (9x the image for 3x3) and
//! the GEMM then reads and packs it again.
//!
//! [`Accumulation::Bf16Dot`] works the same way on k-pairs: the copy holds
//! one u32 per pixel and *channel pair* (`x[2c]` in the low half, `x[2c+1]`
//! in the high half, zero past an odd channel count), so a `VDPBF16PS` pair
//! is two channels at one kernel tap and k-pair `q` is (channel pair, kernel
//! row, kernel column). That is the im2col GEMM with its k rows reordered to
//! (channel pair, kernel row, kernel column, channel parity); a 1x1
//! convolution's order is unchanged.

use super::avx512::{self, conv_tile};
use super::bf16dot::{self, GATHER_TILES};
use super::driver::{
    Ep, MC_TILES, PAR_MIN_FLOPS, SendPtr, pack_a_blocks, parallel_for, widen_into,
};
use super::pack::KC;
use super::{Accumulation, Element, Epilogue, MatMut, MatRef, num_threads};
use crate::conv::{Conv2dShape, valid_range};
use crate::isa::Isa;

/// Pixel tiles of 32 per work item (128 wide pixels): enough work per item
/// to amortize its scheduling, small enough that two threads stay balanced
/// on a 56x56 image. A tile's B for one k block (`KC x 32` f32, 24 KiB) is
/// read from L2 by the first row tile of C and from L1 by the others.
const TILES_PER_ITEM: usize = 4;
/// Columns of the micro-kernel tile.
const NT: usize = 32;

thread_local! {
    /// The calling thread's padded, phase-split image and packed weights,
    /// kept between calls (a network runs many convolutions of one size).
    static IMAGE: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    static WEIGHTS: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    static IMAGE_PAIRS: std::cell::Cell<Vec<u32>> = const { std::cell::Cell::new(Vec::new()) };
    static WEIGHT_PAIRS: std::cell::Cell<Vec<u32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The wide output domain and the padded, phase-split image copy.
struct Layout {
    /// Stride phases, `sh * sw`.
    phases: usize,
    /// Rows and columns of a phase plane.
    hq: usize,
    wq: usize,
    /// `out_h * wq`: output pixels including the dropped columns.
    wide: usize,
    /// 32-pixel tiles covering `wide`.
    tiles: usize,
    /// Where row `y` of phase `(py, px)` comes from, at `[phase * hq + y]`.
    rows: Vec<PhaseRow>,
}

/// Row `y` of a phase plane: input row `iy` (`None`: padding), and the
/// columns `lo..hi` inside the input row, column `lo` being input column
/// `first` (then every `sw`-th).
#[derive(Clone, Copy)]
struct PhaseRow {
    iy: Option<usize>,
    lo: usize,
    hi: usize,
    first: usize,
}

impl Layout {
    fn new(shape: &Conv2dShape) -> Self {
        let [h, wd] = shape.in_size;
        let [kh, kw] = shape.kernel;
        let [sh, sw] = shape.stride;
        let [dh, dw] = shape.dilation;
        let [ph, pw] = shape.pad_begin;
        let [oh, ow] = shape.out_size;
        // Phase rows/columns that output rows/columns reach: oy + ki*dh/sh etc.
        let hq = oh + (kh - 1) * dh / sh;
        let wq = ow + (kw - 1) * dw / sw;
        let mut rows = Vec::with_capacity(sh * sw * hq);
        for phase in 0..sh * sw {
            let (py, px) = (phase / sw, phase % sw);
            let (lo, hi) = valid_range(px, pw, sw, wd, wq);
            for y in 0..hq {
                let iy = (y * sh + py).checked_sub(ph).filter(|&iy| iy < h);
                rows.push(PhaseRow {
                    iy,
                    lo,
                    hi,
                    first: (lo * sw + px).saturating_sub(pw),
                });
            }
        }
        let wide = oh * wq;
        Layout {
            phases: sh * sw,
            hq,
            wq,
            wide,
            tiles: wide.div_ceil(NT),
            rows,
        }
    }

    /// Elements of one phase plane.
    fn plane(&self) -> usize {
        self.hq * self.wq
    }

    /// Offset (in cells of the copy) of kernel tap `(ki, kj)` of plane
    /// group `g` (a channel, or a channel pair) relative to the pixel.
    fn offset(&self, shape: &Conv2dShape, g: usize, ki: usize, kj: usize) -> usize {
        let [sh, sw] = shape.stride;
        let (ry, rx) = (ki * shape.dilation[0], kj * shape.dilation[1]);
        let phase = (ry % sh) * sw + rx % sw;
        ((g * self.phases + phase) * self.hq + ry / sh) * self.wq + rx / sw
    }

    /// Offsets of every (group, kernel row, kernel column), in that order.
    fn offsets(&self, shape: &Conv2dShape, groups: usize) -> Vec<usize> {
        let [kh, kw] = shape.kernel;
        let mut offs = Vec::with_capacity(groups * kh * kw);
        for g in 0..groups {
            for ki in 0..kh {
                for kj in 0..kw {
                    offs.push(self.offset(shape, g, ki, kj));
                }
            }
        }
        offs
    }

    /// Cells the copy needs for `groups` plane groups: the last tile's
    /// dropped columns read past the last row, so the buffer extends to
    /// every offset plus all tiles (kept zero).
    fn cells(&self, groups: usize, offs: &[usize]) -> usize {
        let max_off = offs.iter().copied().max().unwrap_or(0);
        (max_off + self.tiles * NT).max(groups * self.phases * self.plane())
    }

    /// Fills the copy: `fill_row(g, iy, row, lo, hi, first)` writes the
    /// columns `lo..hi` of a row from input row `iy` of group `g`; the rest
    /// of the buffer is zeroed here. Groups are split over `threads`.
    fn fill<C: Copy + Default + Send + Sync>(
        &self,
        threads: usize,
        groups: usize,
        buf: &mut [C],
        fill_row: impl Fn(usize, usize, &mut [C], usize, usize, usize) + Sync,
    ) {
        let per_group = self.phases * self.plane();
        let bp = SendPtr(buf.as_mut_ptr());
        parallel_for(threads, groups, 0, |g, _| {
            // SAFETY: group g owns buf[g*per_group .. (g+1)*per_group], disjoint per
            // item and within the buffer (`cells` >= groups * per_group).
            let dst =
                unsafe { std::slice::from_raw_parts_mut(bp.get().add(g * per_group), per_group) };
            for (row, spec) in dst.chunks_exact_mut(self.wq).zip(&self.rows) {
                let Some(iy) = spec.iy else {
                    row.fill(C::default());
                    continue;
                };
                row[..spec.lo].fill(C::default());
                row[spec.hi..].fill(C::default());
                if spec.hi > spec.lo {
                    fill_row(g, iy, row, spec.lo, spec.hi, spec.first);
                }
            }
        });
        buf[groups * per_group..].fill(C::default());
    }
}

/// Threads for a convolution of `flops`.
fn threads_for(flops: usize) -> usize {
    if flops < PAR_MIN_FLOPS {
        1
    } else {
        num_threads()
    }
}

/// One image and group: `c = epilogue(w * im2col(image))`.
///
/// # Safety
/// The shapes were validated (`image` holds `in_channels x in_size`, `w` is
/// `c.rows x k` with `k > 0`, `c` is `out_channels x out_h*out_w` with both
/// non-zero), `isa` is available on this CPU and is `avx512_core` or higher
/// for [`Accumulation::F32`], `avx512_core_bf16` or higher (and T bf16) for
/// [`Accumulation::Bf16Dot`].
pub(crate) unsafe fn run<T: Element, O: Element>(
    isa: Isa,
    accumulation: Accumulation,
    shape: &Conv2dShape,
    image: &[T],
    w: MatRef<T>,
    c: MatMut<O>,
    epi: &Epilogue,
) {
    let layout = Layout::new(shape);
    let (m, k, n) = (c.rows, w.cols, shape.out_size[0] * shape.out_size[1]);
    let threads = threads_for(2 * m * n * k);
    let fill_threads = if image.len() >= 1 << 16 { threads } else { 1 };
    let [h, wd] = shape.in_size;
    let sw = shape.stride[1];
    let cin = shape.in_channels;
    let ep = Ep::new(isa, 1.0, 0.0, epi);
    let out = Out {
        c: SendPtr(c.data.as_mut_ptr()),
        ldc: c.rs,
        ow: shape.out_size[1],
    };
    if accumulation == Accumulation::Bf16Dot {
        let groups = cin.div_ceil(2);
        let offs = layout.offsets(shape, groups);
        let len = layout.cells(groups, &offs);
        let mut buf = IMAGE_PAIRS.with(|b| b.take());
        buf.resize(buf.len().max(len), 0);
        let bits = |x: T| x.to_f32().to_bits() >> 16;
        layout.fill(
            fill_threads,
            groups,
            &mut buf[..len],
            |g, iy, row, lo, hi, first| {
                let plane = |ci: usize| &image[(ci * h + iy) * wd..(ci * h + iy + 1) * wd];
                let even = plane(2 * g)[first..].iter().step_by(sw);
                if 2 * g + 1 < cin {
                    let odd = plane(2 * g + 1)[first..].iter().step_by(sw);
                    for ((d, &e), &o) in row[lo..hi].iter_mut().zip(even).zip(odd) {
                        *d = bits(e) | bits(o) << 16;
                    }
                } else {
                    for (d, &e) in row[lo..hi].iter_mut().zip(even) {
                        *d = bits(e);
                    }
                }
            },
        );
        // Weights in the copy's k order: (channel pair, ki, kj, parity).
        let taps = shape.kernel[0] * shape.kernel[1];
        let kq = groups * 2 * taps;
        let zero = T::from_f32(0.0);
        let mut wperm = vec![zero; m * kq];
        for (i, row) in wperm.chunks_exact_mut(kq).enumerate() {
            for ci in 0..cin {
                for tap in 0..taps {
                    row[((ci / 2) * taps + tap) * 2 + ci % 2] = w.at(i, ci * taps + tap);
                }
            }
        }
        let wv = MatRef {
            data: &wperm,
            rows: m,
            cols: kq,
            rs: kq,
            cs: 1,
        };
        let kp = kq / 2;
        let mr = bf16dot::MR;
        let alen = m.div_ceil(mr) * kp * mr;
        let mut apack = WEIGHT_PAIRS.with(|b| b.take());
        apack.resize(apack.len().max(alen), 0);
        bf16dot::pack_a(1, &wv, &mut apack[..alen]);
        let (bp, ap, offs) = (buf.as_ptr(), apack.as_ptr(), &offs[..]);
        let (bp, ap) = (SendPtr(bp.cast_mut()), SendPtr(ap.cast_mut()));
        drive(
            &ep,
            threads,
            &layout,
            m,
            kp,
            bf16dot::KCP,
            mr,
            &out,
            |t, rows, pc, kc, jw, wsp, ldw, load| {
                // SAFETY: the A tile holds kp*MR pairs from t*kp*MR on; offs holds kc
                // offsets from pc on and offs[q] + jw + 32 <= len, so every B load is in
                // the copy; the workspace tile is rows x 32 at stride ldw; the caller
                // checked AVX512-BF16.
                unsafe {
                    GATHER_TILES[rows - 1](
                        kc,
                        ap.get().add(t * kp * mr + pc * mr),
                        bp.get().add(jw),
                        offs.as_ptr().add(pc),
                        wsp,
                        ldw,
                        load,
                    )
                }
            },
        );
        IMAGE_PAIRS.with(|b| b.set(buf));
        WEIGHT_PAIRS.with(|b| b.set(apack));
        return;
    }
    let offs = layout.offsets(shape, cin);
    debug_assert_eq!(offs.len(), k);
    let len = layout.cells(cin, &offs);
    let mut buf = IMAGE.with(|b| b.take());
    buf.resize(buf.len().max(len), 0.0);
    layout.fill(
        fill_threads,
        cin,
        &mut buf[..len],
        |ci, iy, row, lo, hi, first| {
            let src = &image[(ci * h + iy) * wd..(ci * h + iy + 1) * wd];
            if sw == 1 {
                widen_into(isa, &src[first..first + hi - lo], &mut row[lo..hi]);
            } else {
                for (d, s) in row[lo..hi].iter_mut().zip(src[first..].iter().step_by(sw)) {
                    *d = s.to_f32();
                }
            }
        },
    );
    let mr = avx512::MR;
    let row_tiles = m.div_ceil(mr);
    let kb = k.div_ceil(KC);
    let alen = row_tiles * kb * mr * KC;
    let mut apack = WEIGHTS.with(|b| b.take());
    apack.resize(apack.len().max(alen), 0.0);
    for (t, dst) in apack[..alen].chunks_exact_mut(kb * mr * KC).enumerate() {
        pack_a_blocks(isa, &w, t * mr, mr.min(m - t * mr), mr, dst);
    }
    let (bp, ap, offs) = (buf.as_ptr(), apack.as_ptr(), &offs[..]);
    let (bp, ap) = (SendPtr(bp.cast_mut()), SendPtr(ap.cast_mut()));
    drive(
        &ep,
        threads,
        &layout,
        m,
        k,
        KC,
        mr,
        &out,
        |t, rows, pc, kc, jw, wsp, ldw, load| {
            // SAFETY: the A block holds rows x kc f32 at row stride KC; offs holds kc
            // offsets from pc on and offs[p] + jw + 32 <= len, so every B load is in the
            // copy; the workspace tile is rows x 32 at stride ldw; the caller checked
            // avx512_core.
            unsafe {
                conv_tile(
                    rows,
                    kc,
                    ap.get().add((t * kb + pc / KC) * mr * KC),
                    bp.get().add(jw),
                    offs.as_ptr().add(pc),
                    wsp,
                    ldw,
                    load,
                )
            }
        },
    );
    IMAGE.with(|b| b.set(buf));
    WEIGHTS.with(|b| b.set(apack));
}

/// Where the output goes: C's first element, its row stride, and `out_w`.
struct Out<O> {
    c: SendPtr<O>,
    ldc: usize,
    ow: usize,
}

/// The thread loop shared by both accumulations: work items are blocks of
/// `TILES_PER_ITEM` pixel tiles by `MC_TILES` row tiles; inside one, the k
/// loop is blocked by `kblock` and each `mr x 32` tile goes through
/// `tile(t, rows, k0, kc, wide_pixel, ws_tile, ldw, load)` and, after its
/// last block, the epilogue, scattered to the output rows.
#[allow(clippy::too_many_arguments)]
fn drive<O: Element>(
    ep: &Ep,
    threads: usize,
    layout: &Layout,
    m: usize,
    depth: usize,
    kblock: usize,
    mr: usize,
    out: &Out<O>,
    tile: impl Fn(usize, usize, usize, usize, usize, *mut f32, usize, bool) + Sync,
) {
    let (wide, wq, tiles) = (layout.wide, layout.wq, layout.tiles);
    let mc = mr * MC_TILES;
    let mblocks = m.div_ceil(mc);
    let pblocks = tiles.div_ceil(TILES_PER_ITEM);
    let ldw = TILES_PER_ITEM * NT;
    parallel_for(threads, mblocks * pblocks, mc * ldw, |item, ws| {
        // Pixel-block major: consecutive items share their B rows.
        let (pb, ib) = (item / mblocks, item % mblocks);
        let i0 = ib * mc;
        let mcb = mc.min(m - i0);
        let q0 = pb * TILES_PER_ITEM;
        let nq = TILES_PER_ITEM.min(tiles - q0);
        for pc in (0..depth).step_by(kblock) {
            let kc = kblock.min(depth - pc);
            let last = pc + kc == depth;
            for q in 0..nq {
                let jw = (q0 + q) * NT;
                for tl in 0..mcb.div_ceil(mr) {
                    let t = i0 / mr + tl;
                    let rows = mr.min(m - t * mr);
                    let wsp = ws[tl * mr * ldw + q * NT..].as_mut_ptr();
                    tile(t, rows, pc, kc, jw, wsp, ldw, pc > 0);
                    if !last {
                        continue;
                    }
                    // Scatter the tile's wide pixels to their output rows,
                    // dropping the columns past out_w.
                    let end = (jw + NT).min(wide);
                    let mut j = jw;
                    while j < end {
                        let (oy, ox) = (j / wq, j % wq);
                        let run_end = end.min((oy + 1) * wq);
                        if ox < out.ow {
                            let cols = (run_end - j).min(out.ow - ox);
                            // SAFETY: the workspace row segment lies in the tile; rows
                            // t*mr.., columns oy*ow+ox.. of C belong to this item (its
                            // row block and pixel block) and are in bounds.
                            unsafe {
                                ep.store(
                                    wsp.add(j - jw),
                                    ldw,
                                    rows,
                                    cols,
                                    out.c.get(),
                                    out.ldc,
                                    (t * mr, oy * out.ow + ox),
                                )
                            };
                        }
                        j = run_end;
                    }
                }
            }
        }
    });
}
