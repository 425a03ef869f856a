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
//! the GEMM then reads and packs it again. It is made per *band* of output
//! rows (plus the rows the kernel reaches below them), sized so that a band
//! stays in L2, by the thread that computes the band: work items are
//! (image, band), so a batch is one call with one fork/join, the packed
//! weights are shared, and no thread reads a copy another core wrote.
//!
//! [`Accumulation::Bf16Dot`] works the same way on k-pairs: the copy holds
//! one u32 per pixel and *channel pair* (`x[2c]` in the low half, `x[2c+1]`
//! in the high half, zero past an odd channel count), so a `VDPBF16PS` pair
//! is two channels at one kernel tap and k-pair `q` is (channel pair, kernel
//! row, kernel column). That is the im2col GEMM with its k rows reordered to
//! (channel pair, kernel row, kernel column, channel parity); a 1x1
//! convolution's order is unchanged.

use super::avx512::{self, DirectStore, MAX_PIECES, conv_tile};
use super::bf16dot::{self, GATHER_TILES};
use super::driver::{Ep, MC_TILES, PAR_MIN_FLOPS, SendPtr, pack_a_blocks, widen_into};
use super::pack::KC;
use super::threads::parallel_for;
use super::{Accumulation, Element, Epilogue, FloatType, MatRef, num_threads};
use crate::conv::{Conv2dShape, valid_range};
use crate::isa::Isa;

/// Pixel tiles of 32 per pass over the k blocks: a tile's B for one k block
/// (`KC x 32` f32, 24 KiB) is read from L2 by the first row tile of C and
/// from L1 by the others.
const TILES_PER_PASS: usize = 4;
/// Columns of the micro-kernel tile.
const NT: usize = 32;
/// Bytes of one band's copy: with the packed weights and the tile
/// workspace it stays within Zen 4's 1 MiB L2. On 8x64x56x56, 3x3, 1 MiB
/// (one band per image), 640 KiB (two) and 384 KiB (three) measured the
/// same on one thread within noise; two threads gained from two bands.
const BAND_BYTES: usize = 640 << 10;

/// A batch of images and where their outputs go.
pub(crate) struct Batch<'a, T, O> {
    /// Image `n` is `images[n * image_stride..]`, `in_channels x h x w`.
    pub images: &'a [T],
    pub image_stride: usize,
    pub count: usize,
    /// Output `n` starts at `out + n * out_stride`: `m` rows of
    /// `out_h * out_w` at row stride `ldc`.
    pub out: *mut O,
    pub out_stride: usize,
    pub ldc: usize,
}

/// The padded, phase-split copy of one band and the wide output domain.
struct Layout {
    /// Stride phases, `sh * sw`.
    phases: usize,
    /// Phase rows of the whole image: output rows plus the rows the kernel
    /// reaches below the last (`halo`).
    hq_full: usize,
    /// Rows and columns of one band's phase plane (`band_rows + halo`).
    hq: usize,
    wq: usize,
    /// Output rows and columns.
    oh: usize,
    ow: usize,
    /// Output rows per band, and the bands of an image.
    band_rows: usize,
    bands: usize,
    /// Where row `y` of phase `(py, px)` of the whole image comes from, at
    /// `[phase * hq_full + y]`.
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
    /// The layout for `groups` plane groups (channels, or channel pairs) of
    /// `cell` bytes, with bands sized for L2 and at least two items per
    /// thread when there are several threads.
    fn new(shape: &Conv2dShape, groups: usize, cell: usize, count: usize, threads: usize) -> Self {
        let [h, wd] = shape.in_size;
        let [kh, kw] = shape.kernel;
        let [sh, sw] = shape.stride;
        let [dh, dw] = shape.dilation;
        let [ph, pw] = shape.pad_begin;
        let [oh, ow] = shape.out_size;
        // Phase rows/columns that output rows/columns reach: oy + ki*dh/sh etc.
        let halo = (kh - 1) * dh / sh;
        let hq_full = oh + halo;
        let wq = ow + (kw - 1) * dw / sw;
        let phases = sh * sw;
        let mut rows = Vec::with_capacity(phases * hq_full);
        for phase in 0..phases {
            let (py, px) = (phase / sw, phase % sw);
            let (lo, hi) = valid_range(px, pw, sw, wd, wq);
            for y in 0..hq_full {
                let iy = (y * sh + py).checked_sub(ph).filter(|&iy| iy < h);
                rows.push(PhaseRow {
                    iy,
                    lo,
                    hi,
                    first: (lo * sw + px).saturating_sub(pw),
                });
            }
        }
        let row_bytes = (groups * phases * wq * cell).max(1);
        let fit = (BAND_BYTES / row_bytes).saturating_sub(halo).max(1);
        let mut bands = oh.div_ceil(fit);
        if threads > 1 {
            bands = bands.max((2 * threads).div_ceil(count.max(1)));
        }
        let band_rows = oh.div_ceil(bands.clamp(1, oh.max(1)));
        Layout {
            phases,
            hq_full,
            hq: band_rows + halo,
            wq,
            oh,
            ow,
            band_rows,
            bands: oh.div_ceil(band_rows),
            rows,
        }
    }

    /// Cells of one band's phase plane.
    fn plane(&self) -> usize {
        self.hq * self.wq
    }

    /// Wide pixels of a band: `band_rows` rows of `wq`.
    fn wide(&self) -> usize {
        self.band_rows * self.wq
    }

    /// 32-pixel tiles covering a band's wide pixels.
    fn tiles(&self) -> usize {
        self.wide().div_ceil(NT)
    }

    /// Offsets (in cells of a band's copy) of every (group, kernel row,
    /// kernel column), in that order, relative to the pixel.
    fn offsets(&self, shape: &Conv2dShape, groups: usize) -> Vec<usize> {
        let [kh, kw] = shape.kernel;
        let [sh, sw] = shape.stride;
        let mut offs = Vec::with_capacity(groups * kh * kw);
        for g in 0..groups {
            for ki in 0..kh {
                for kj in 0..kw {
                    let (ry, rx) = (ki * shape.dilation[0], kj * shape.dilation[1]);
                    let phase = (ry % sh) * sw + rx % sw;
                    offs.push(((g * self.phases + phase) * self.hq + ry / sh) * self.wq + rx / sw);
                }
            }
        }
        offs
    }

    /// The output runs of the wide pixels `from..to` of the band starting at
    /// output row `oy0`: `(wide pixel, columns, output pixel)` for each part
    /// of the span that lies in one output row (wide pixels `y * wq ..
    /// y * wq + ow` are output row `oy0 + y`; the columns past `ow` are
    /// dropped).
    fn output_runs(
        &self,
        oy0: usize,
        from: usize,
        to: usize,
    ) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        let (wq, ow) = (self.wq, self.ow);
        let rows = (from / wq)..to.div_ceil(wq);
        rows.filter_map(move |y| {
            let lo = from.max(y * wq);
            let hi = to.min(y * wq + ow);
            (hi > lo).then(|| (lo, hi - lo, (oy0 + y) * ow + lo - y * wq))
        })
    }

    /// Cells a band's copy needs: the last tile's dropped columns read past
    /// the last row, so the buffer extends to every offset plus all tiles.
    fn cells(&self, groups: usize, offs: &[usize]) -> usize {
        let max_off = offs.iter().copied().max().unwrap_or(0);
        (max_off + self.tiles() * NT).max(groups * self.phases * self.plane())
    }

    /// Fills band `band`'s copy: `fill_row(g, iy, row, lo, hi, first)` writes
    /// the columns `lo..hi` of a row from input row `iy` of group `g`; the
    /// rest is zeroed here (rows past the image's phase rows only feed
    /// dropped columns, but stay defined).
    fn fill<C: Copy + Default>(
        &self,
        groups: usize,
        band: usize,
        buf: &mut [C],
        fill_row: impl Fn(usize, usize, &mut [C], usize, usize, usize),
    ) {
        let y0 = band * self.band_rows;
        let planes = buf[..groups * self.phases * self.plane()].chunks_exact_mut(self.plane());
        for (gp, plane) in planes.enumerate() {
            let (g, phase) = (gp / self.phases, gp % self.phases);
            for (yl, row) in plane.chunks_exact_mut(self.wq).enumerate() {
                // Rows past the image's phase rows (last band) and padding
                // rows are zero.
                let y = y0 + yl;
                let spec = (y < self.hq_full).then(|| self.rows[phase * self.hq_full + y]);
                let Some(PhaseRow {
                    iy: Some(iy),
                    lo,
                    hi,
                    first,
                }) = spec
                else {
                    row.fill(C::default());
                    continue;
                };
                row[..lo].fill(C::default());
                row[hi..].fill(C::default());
                if hi > lo {
                    fill_row(g, iy, row, lo, hi, first);
                }
            }
        }
        buf[groups * self.phases * self.plane()..].fill(C::default());
    }
}

/// A batch through one convolution: output `n` = `epilogue(w * im2col(image n))`.
///
/// # Safety
/// The shapes were validated (each image holds `in_channels x in_size` at
/// its offset, `w` is `m x k` with `m, k > 0`, each output `m` rows of
/// `out_h * out_w > 0` at row stride `ldc >= out_h * out_w` lies in the
/// caller's buffer, outputs do not overlap), `isa` is available on this CPU
/// and is `avx512_core` or higher for [`Accumulation::F32`],
/// `avx512_core_bf16` or higher (and T bf16) for [`Accumulation::Bf16Dot`].
pub(crate) unsafe fn run<T: Element, O: Element>(
    isa: Isa,
    accumulation: Accumulation,
    shape: &Conv2dShape,
    batch: Batch<'_, T, O>,
    w: MatRef<T>,
    epi: &Epilogue,
) {
    let (images, image_stride) = (batch.images, batch.image_stride);
    let out = Out {
        c: SendPtr(batch.out),
        count: batch.count,
        stride: batch.out_stride,
        ldc: batch.ldc,
    };
    let (m, k) = (w.rows, w.cols);
    let n = shape.out_size[0] * shape.out_size[1];
    let flops = [m, n, k, out.count]
        .iter()
        .fold(2usize, |f, &x| f.saturating_mul(x));
    let threads = if flops < PAR_MIN_FLOPS {
        1
    } else {
        num_threads()
    };
    let [h, wd] = shape.in_size;
    let sw = shape.stride[1];
    let cin = shape.in_channels;
    let ep = Ep::new(isa, 1.0, 0.0, epi);
    let image = |i: usize| &images[i * image_stride..][..cin * h * wd];
    if accumulation == Accumulation::Bf16Dot {
        let groups = cin.div_ceil(2);
        let layout = Layout::new(shape, groups, 4, out.count, threads);
        let offs = layout.offsets(shape, groups);
        let len = layout.cells(groups, &offs);
        // Weights in the copy's k order: (channel pair, ki, kj, parity).
        let taps = shape.kernel[0] * shape.kernel[1];
        let kq = groups * 2 * taps;
        let mut wperm = vec![T::from_f32(0.0); m * kq];
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
        let mut apack = vec![0u32; m.div_ceil(mr) * kp * mr];
        bf16dot::pack_a(threads, &wv, &mut apack);
        let (apack, offs) = (&apack[..], &offs[..]);
        let bits = |x: T| x.to_f32().to_bits() >> 16;
        drive(
            &ep,
            threads,
            &layout,
            &out,
            m,
            kp,
            bf16dot::KCP,
            mr,
            len,
            false,
            |item, cells| {
                let cells: &mut [u32] = bytemuck::cast_slice_mut(cells);
                let (img, band) = (image(item / layout.bands), item % layout.bands);
                layout.fill(groups, band, cells, |g, iy, row, lo, hi, first| {
                    let plane = |ci: usize| &img[(ci * h + iy) * wd..(ci * h + iy + 1) * wd];
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
                });
            },
            |t, rows, pc, kc, cells, jw, wsp, ldw, load, _| {
                // SAFETY: the A tile holds kp*MR pairs from t*kp*MR on; offs holds kc
                // offsets from pc on and offs[q] + jw + 32 <= len (`cells`), so every B
                // load is in the band's copy; the workspace tile is rows x 32 at stride
                // ldw; the caller checked AVX512-BF16.
                unsafe {
                    GATHER_TILES[rows - 1](
                        kc,
                        apack.as_ptr().add(t * kp * mr + pc * mr),
                        cells.as_ptr().cast::<u32>().add(jw),
                        offs.as_ptr().add(pc),
                        wsp,
                        ldw,
                        load,
                    )
                }
            },
        );
        return;
    }
    let layout = Layout::new(shape, cin, 4, out.count, threads);
    let offs = layout.offsets(shape, cin);
    debug_assert_eq!(offs.len(), k);
    let len = layout.cells(cin, &offs);
    let mr = avx512::MR;
    let kb = k.div_ceil(KC);
    let mut apack = vec![0.0f32; m.div_ceil(mr) * kb * mr * KC];
    for (t, dst) in apack.chunks_exact_mut(kb * mr * KC).enumerate() {
        pack_a_blocks(isa, &w, t * mr, mr.min(m - t * mr), mr, dst);
    }
    let (apack, offs) = (&apack[..], &offs[..]);
    drive(
        &ep,
        threads,
        &layout,
        &out,
        m,
        k,
        KC,
        mr,
        len,
        O::DTYPE == FloatType::F32,
        |item, cells| {
            let (img, band) = (image(item / layout.bands), item % layout.bands);
            layout.fill(cin, band, cells, |ci, iy, row, lo, hi, first| {
                let src = &img[(ci * h + iy) * wd..(ci * h + iy + 1) * wd];
                if ci + 1 < cin {
                    prefetch_row(&img[((ci + 1) * h + iy) * wd..][..wd]);
                }
                if sw == 1 {
                    widen_into(isa, &src[first..first + hi - lo], &mut row[lo..hi]);
                } else {
                    for (d, s) in row[lo..hi].iter_mut().zip(src[first..].iter().step_by(sw)) {
                        *d = s.to_f32();
                    }
                }
            });
        },
        |t, rows, pc, kc, cells, jw, wsp, ldw, load, finish| {
            // SAFETY: the A block holds rows x kc f32 at row stride KC; offs holds kc
            // offsets from pc on and offs[p] + jw + 32 <= len (`cells`), so every B load
            // is in the band's copy; the workspace tile is rows x 32 at stride ldw;
            // `finish` is given for the last k block only, its pieces address the
            // tile's output elements (`direct_pieces`); the caller checked avx512_core.
            unsafe {
                conv_tile(
                    rows,
                    kc,
                    apack.as_ptr().add((t * kb + pc / KC) * mr * KC),
                    cells.as_ptr().add(jw),
                    offs.as_ptr().add(pc),
                    wsp,
                    ldw,
                    load,
                    finish,
                )
            }
        },
    );
}

/// Where a batch's outputs go (see [`Batch`]).
struct Out<O> {
    c: SendPtr<O>,
    count: usize,
    stride: usize,
    ldc: usize,
}

/// The thread loop shared by both accumulations. Work items are (image,
/// band); an item first makes its band's copy with `fill(item, cells)` in
/// its worker's workspace (`len` f32 cells), then walks the band's pixel
/// tiles `TILES_PER_PASS` at a time for each block of `MC_TILES` row tiles:
/// the k loop is blocked by `kblock` and each `mr x 32` tile goes through
/// `tile(t, rows, k0, kc, cells, wide_pixel, ws_tile, ldw, load)` and, after
/// its last block, the epilogue, scattered to the output rows. With
/// `direct` (f32 output, the caller's tile takes a [`DirectStore`]), tiles
/// whose epilogue is only row bias and ReLU are finished from the
/// micro-kernel's registers instead.
#[allow(clippy::too_many_arguments)]
fn drive<O: Element>(
    ep: &Ep,
    threads: usize,
    layout: &Layout,
    out: &Out<O>,
    m: usize,
    depth: usize,
    kblock: usize,
    mr: usize,
    len: usize,
    direct: bool,
    fill: impl Fn(usize, &mut [f32]) + Sync,
    tile: impl Fn(
        usize,
        usize,
        usize,
        usize,
        &[f32],
        usize,
        *mut f32,
        usize,
        bool,
        Option<&DirectStore>,
    ) + Sync,
) {
    let direct = if direct { ep.row_bias_relu() } else { None };
    let (wq, oh) = (layout.wq, layout.oh);
    let mc = mr * MC_TILES;
    let ldw = TILES_PER_PASS * NT;
    let items = out.count * layout.bands;
    parallel_for(threads, items, len + mc * ldw, |item, ws| {
        let (cells, ws) = ws.split_at_mut(len);
        fill(item, cells);
        let cells = &*cells;
        let (img, band) = (item / layout.bands, item % layout.bands);
        let oy0 = band * layout.band_rows;
        let wide = layout.band_rows.min(oh - oy0) * wq;
        let tiles = wide.div_ceil(NT);
        // SAFETY: output `img` starts inside the caller's buffer (contract of `run`).
        let c = unsafe { out.c.get().add(img * out.stride) };
        for i0 in (0..m).step_by(mc) {
            let mcb = mc.min(m - i0);
            for q0 in (0..tiles).step_by(TILES_PER_PASS) {
                let nq = TILES_PER_PASS.min(tiles - q0);
                for pc in (0..depth).step_by(kblock) {
                    let kc = kblock.min(depth - pc);
                    let last = pc + kc == depth;
                    for q in 0..nq {
                        let jw = (q0 + q) * NT;
                        let pieces = direct
                            .filter(|_| last)
                            .and_then(|_| direct_pieces(layout, oy0, jw, wide));
                        for tl in 0..mcb.div_ceil(mr) {
                            let t = i0 / mr + tl;
                            let rows = mr.min(m - t * mr);
                            let wsp = ws[tl * mr * ldw + q * NT..].as_mut_ptr();
                            let finish = direct.zip(pieces).map(|((row_bias, relu), pieces)| {
                                DirectStore {
                                    // Only with f32 output (`direct`).
                                    c: c.wrapping_add(t * mr * out.ldc).cast::<f32>(),
                                    ldc: out.ldc,
                                    row_bias: row_bias.map(|b| b[t * mr..][..rows].as_ptr()),
                                    relu,
                                    pieces,
                                }
                            });
                            if let Some(f) = &finish {
                                f.prefetch(rows);
                            }
                            tile(
                                t,
                                rows,
                                pc,
                                kc,
                                cells,
                                jw,
                                wsp,
                                ldw,
                                pc > 0,
                                finish.as_ref(),
                            );
                            if !last || finish.is_some() {
                                continue;
                            }
                            // Scatter the tile's wide pixels to their output rows,
                            // dropping the columns past out_w.
                            for (j, cols, pixel) in layout.output_runs(oy0, jw, (jw + NT).min(wide))
                            {
                                // SAFETY: the workspace row segment lies in the tile;
                                // rows t*mr.., output pixels pixel.. of output `img`
                                // belong to this item (its image and band) and are in
                                // bounds.
                                unsafe {
                                    ep.store(
                                        wsp.add(j - jw),
                                        ldw,
                                        rows,
                                        cols,
                                        c,
                                        out.ldc,
                                        (t * mr, pixel),
                                    )
                                };
                            }
                        }
                    }
                }
            }
        }
    });
}

/// The output runs of the 32 wide pixels from `jw` on (two vectors of 16
/// lanes) of a band starting at output row `oy0` with `wide` wide pixels:
/// per vector, the lanes that land in one output row and the offset of
/// lane 0 there (relative to output pixel 0). `None` when a vector would
/// touch more than [`MAX_PIECES`] rows (images narrower than about 8).
fn direct_pieces(
    layout: &Layout,
    oy0: usize,
    jw: usize,
    wide: usize,
) -> Option<[[(u16, isize); MAX_PIECES]; 2]> {
    let mut pieces = [[(0u16, 0isize); MAX_PIECES]; 2];
    for (v, slots) in pieces.iter_mut().enumerate() {
        let start = jw + 16 * v;
        let mut used = slots.iter_mut();
        for (j, cols, pixel) in layout.output_runs(oy0, start, (start + 16).min(wide)) {
            // Lane i holds wide pixel start + i: lanes j - start.. go to
            // output pixels pixel.., so lane 0's offset is pixel - (j - start).
            let lanes = ((1u32 << cols) - 1) << (j - start);
            *used.next()? = (lanes as u16, pixel as isize - (j - start) as isize);
        }
    }
    Some(pieces)
}

/// Asks for the lines of `row` (the same input row of the next channel,
/// which the band copy reads one channel later): a batch's images come
/// from L3 or memory, and the copy otherwise waits on each line in turn
/// (8x64x56x56 3x3 conv, one thread: 18.99-19.17 -> 18.84-18.87 ms).
fn prefetch_row<T>(row: &[T]) {
    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
    let bytes = std::mem::size_of_val(row);
    let p = row.as_ptr().cast::<i8>();
    for off in (0..bytes).step_by(64).chain(bytes.checked_sub(1)) {
        // SAFETY: a prefetch has no architectural effect and cannot fault;
        // the address is inside `row` anyway.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off)) };
    }
}
