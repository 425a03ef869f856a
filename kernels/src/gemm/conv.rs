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
//! With f32 images, stride 1 and an output as wide as the input (the
//! usual "same" padding) there is no copy: consecutive output pixels, across
//! rows too, read consecutive input values at every tap, so the tiles load
//! B straight from the image and zero the padding lanes with a mask per tap
//! and tile (`Layout::in_place`); the wide domain is then the output itself.
//! For 8x64x56x56 3x3 on one Zen 4 core that is 18.6 -> 17.9-18.0 ms.
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

use super::avx512::{self, DirectStore, InPlace, InPlaceEdge, MAX_PIECES, Padded, Tap, conv_tile};
use super::bf16dot::{self, GATHER_TILES};
pub(crate) use super::conv_blocked::BlockedWeights;
use super::conv_blocked::{self, Product};
use super::driver::{
    Ep, MC_TILES, PAR_MIN_FLOPS, SendPtr, pack_a_blocks, pair_strided, widen_strided,
};
use super::pack::KC;
use super::threads::parallel_for;
use super::{Accumulation, Element, Epilogue, FloatType, MatRef, num_threads};
use crate::conv::{ChannelLayout, Conv2dShape, ConvLayouts, valid_range};
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
    /// Added to each f32 result after the row bias, before the ReLU, read at
    /// the result's offset from `out`; only where the blocked tiles run
    /// ([`takes_blocked_tiles`]) and `O` is f32.
    pub residual: Option<*const f32>,
    /// The images' and outputs' channel layouts: NCHW16c only where the
    /// blocked tiles run with f32 FMAs, T and O f32 (and, for the images,
    /// input channels a multiple of 16).
    pub layouts: ConvLayouts,
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
    /// Set when B is read from the image itself ([`Layout::in_place`]):
    /// the input's height and width and, per kernel tap, the input row and
    /// column offsets `(ki * dh - ph, kj * dw - pw)` from the output pixel.
    in_place: Option<InPlaceGeometry>,
}

/// See [`Layout::in_place`].
struct InPlaceGeometry {
    channels: isize,
    h: isize,
    w: isize,
    taps: Vec<(isize, isize)>,
    /// The least and greatest tap offset `dy * w + dx`.
    lo: isize,
    hi: isize,
}

/// An in-place tile's lane masks ([`Layout::tap_masks`]) and whether its
/// loads may read whole windows (`whole`) or must be masked.
struct TileMasks<'a> {
    lanes: &'a [u32],
    whole: bool,
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
            in_place: None,
        }
    }

    /// The layout that reads B from the image itself, without a copy, when
    /// the stride is 1 and the output is as wide as the input (the usual
    /// "same" padding): consecutive output pixels, across output rows too,
    /// then read consecutive input values at every kernel tap, so the wide
    /// domain is the output itself (no dropped columns) and padding is a
    /// lane mask per tap and tile. Loading zeros for the masked lanes gives
    /// the padded copy's values, so the FMA chains and bits are the same.
    /// Bands remain the unit of work (and of the input window a worker
    /// touches); only f32 images qualify (a copy widens the others).
    fn in_place(shape: &Conv2dShape, count: usize, threads: usize) -> Option<Self> {
        let [h, wd] = shape.in_size;
        if shape.stride != [1, 1] || shape.out_size[1] != wd {
            return None;
        }
        let mut layout = Layout::new(shape, shape.in_channels, 4, count, threads);
        layout.wq = layout.ow;
        layout.rows.clear();
        let [kh, kw] = shape.kernel;
        let signed = |x: usize| isize::try_from(x).ok();
        let mut taps = Vec::with_capacity(kh * kw);
        for ki in 0..kh {
            for kj in 0..kw {
                let dy = signed(ki * shape.dilation[0])? - signed(shape.pad_begin[0])?;
                let dx = signed(kj * shape.dilation[1])? - signed(shape.pad_begin[1])?;
                taps.push((dy, dx));
            }
        }
        let w = signed(wd)?;
        let offsets = taps.iter().map(|&(dy, dx)| dy * w + dx);
        layout.in_place = Some(InPlaceGeometry {
            channels: signed(shape.in_channels)?,
            h: signed(h)?,
            w,
            lo: offsets.clone().min()?,
            hi: offsets.max()?,
            taps,
        });
        Some(layout)
    }

    /// Per k row `(channel, kernel row, kernel column)`, where the in-place
    /// layout reads it: the element offset from the output pixel's own
    /// position in a channel plane, and its tap.
    fn in_place_taps(&self) -> Option<Vec<Tap>> {
        let g = self.in_place.as_ref()?;
        let channels = usize::try_from(g.channels).ok()?;
        let plane = g.h.checked_mul(g.w)?;
        let mut taps = Vec::with_capacity(channels * g.taps.len());
        for ci in 0..channels {
            let base = plane.checked_mul(isize::try_from(ci).ok()?)?;
            for (tap, &(dy, dx)) in g.taps.iter().enumerate() {
                let offset = base.checked_add(dy.checked_mul(g.w)?.checked_add(dx)?)?;
                taps.push(Tap { offset, tap });
            }
        }
        Some(taps)
    }

    /// The lane masks of the in-place tile whose first pixel is output
    /// pixel `p0`, 32 per tap: lane `l` (pixel `p0 + l`) is all ones when
    /// the pixel is before `end` and its input position under the tap is
    /// inside the image, else zero (that B value is padding).
    /// Returns whether every tap's whole 32-value window, in every channel,
    /// lies inside the image (so plain loads may read it).
    fn tap_masks(&self, p0: usize, end: usize, masks: &mut [u32]) -> bool {
        let Some(g) = &self.in_place else {
            return false;
        };
        let ow = self.ow;
        let live = NT.min(end.saturating_sub(p0));
        // Each lane's output row and column; lanes past `end` get a row no
        // tap brings into the image. Pixels stay far below isize::MAX: they
        // index an allocation.
        let (mut y, mut x) = ((p0 / ow) as isize, (p0 % ow) as isize);
        let (mut ys, mut xs) = ([isize::MIN / 2; NT], [0isize; NT]);
        for (yl, xl) in ys.iter_mut().zip(&mut xs).take(live) {
            (*yl, *xl) = (y, x);
            x += 1;
            if x == ow as isize {
                (y, x) = (y + 1, 0);
            }
        }
        for (m, &(dy, dx)) in masks.chunks_exact_mut(NT).zip(&g.taps) {
            for ((lane, &y), &x) in m.iter_mut().zip(&ys).zip(&xs) {
                // 0 <= v < len as one unsigned compare; all ones or zero
                // without a branch, so the loop vectorizes.
                let valid =
                    ((y + dy) as usize) < g.h as usize && ((x + dx) as usize) < g.w as usize;
                *lane = u32::from(valid).wrapping_neg();
            }
        }
        let (plane, p0, c) = (g.h * g.w, p0 as isize, g.channels);
        p0 + g.lo >= 0 && (c - 1) * plane + p0 + g.hi + NT as isize <= c * plane
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
        // Without dropped columns the span is one run, even across rows.
        let whole = (wq == ow && to > from).then(|| (from, to - from, oy0 * ow + from));
        let rows = if wq == ow {
            0..0
        } else {
            (from / wq)..to.div_ceil(wq)
        };
        whole.into_iter().chain(rows.filter_map(move |y| {
            let lo = from.max(y * wq);
            let hi = to.min(y * wq + ow);
            (hi > lo).then(|| (lo, hi - lo, (oy0 + y) * ow + lo - y * wq))
        }))
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

/// The channel-blocked tiles' layout of the `m x k` weights `w` (`taps`
/// per input channel) for `accumulation` at `isa`, or `None` where those
/// tiles never read these weights: below `avx512_core` (`avx512_core_bf16`
/// and T bf16 for [`Accumulation::Bf16Dot`]), or channel counts they do not
/// take.
pub(crate) fn pack_blocked_weights<T: Element>(
    isa: Isa,
    accumulation: Accumulation,
    taps: usize,
    w: &MatRef<T>,
) -> Option<BlockedWeights> {
    let product = match accumulation {
        Accumulation::F32 if isa >= Isa::Avx512Core => Product::Fma,
        Accumulation::Bf16Dot if isa >= Isa::Avx512CoreBf16 && T::DTYPE == FloatType::Bf16 => {
            Product::Bf16Dot
        }
        _ => return None,
    };
    if !isa.is_available() || !conv_blocked::packable(w.rows) {
        return None;
    }
    // SAFETY: packable; T is bf16 for Bf16Dot and the level (at least
    // avx512_core) is available, all just checked.
    Some(unsafe { conv_blocked::pack(w, product, taps) })
}

/// How the channel-blocked tiles multiply for `accumulation` (any but
/// Bf16Dot runs f32 FMAs; the callers reach them with F32 or Bf16Dot only).
fn product(accumulation: Accumulation) -> Product {
    match accumulation {
        Accumulation::Bf16Dot => Product::Bf16Dot,
        _ => Product::Fma,
    }
}

/// Whether [`run`] takes the channel-blocked tiles for `m` output channels
/// with this epilogue and output type, at an `isa` of `avx512_core` or
/// higher (`avx512_core_bf16` for Bf16Dot); they take any shape.
pub(crate) fn takes_blocked_tiles<O: Element>(
    isa: Isa,
    accumulation: Accumulation,
    m: usize,
    epi: &Epilogue,
) -> bool {
    let ep = Ep::new(isa, 1.0, 0.0, epi);
    conv_blocked::eligible(m, &ep, O::DTYPE, product(accumulation))
}

/// A batch through one convolution: output `n` = `epilogue(w * im2col(image n))`.
/// `packed`, when given, is [`pack_blocked_weights`] of `w` for
/// `accumulation` at this level.
///
/// # Safety
/// The shapes were validated (each image holds `in_channels x in_size` at
/// its offset, `w` is `m x k` with `m, k > 0`, each output `m` rows of
/// `out_h * out_w > 0` at row stride `ldc` (at least `out_h * out_w` when
/// `m > 1`) lies in the caller's buffer, outputs do not overlap), `isa` is
/// available on this CPU and is `avx512_core` or higher for
/// [`Accumulation::F32`], `avx512_core_bf16` or higher (and T bf16) for
/// [`Accumulation::Bf16Dot`]; `packed`, when given, holds exactly the
/// lanes [`pack_blocked_weights`] makes of `w`; a residual, when given,
/// holds every output element's offset (as `conv2d_batch_residual_at`
/// checks).
pub(crate) unsafe fn run<T: Element, O: Element>(
    isa: Isa,
    accumulation: Accumulation,
    shape: &Conv2dShape,
    batch: Batch<'_, T, O>,
    w: MatRef<T>,
    packed: Option<&BlockedWeights>,
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
    let product = product(accumulation);
    let eligible = conv_blocked::eligible(m, &ep, O::DTYPE, product);
    assert!(
        batch.residual.is_none() || (eligible && O::DTYPE == FloatType::F32),
        "a residual needs the blocked tiles and f32 output"
    );
    assert!(
        batch.layouts == ConvLayouts::default()
            || (eligible
                && product == Product::Fma
                && T::DTYPE == FloatType::F32
                && O::DTYPE == FloatType::F32
                && (batch.layouts.image == ChannelLayout::Nchw
                    || cin.is_multiple_of(conv_blocked::BLOCK))),
        "NCHW16c needs the blocked tiles' f32 FMAs on f32 and, for images, 16n channels"
    );
    if eligible {
        let out = conv_blocked::Output {
            c: SendPtr(out.c.get().cast()),
            out: O::DTYPE,
            layout: batch.layouts.output,
            residual_layout: batch.layouts.residual,
            count: out.count,
            stride: out.stride,
            ldc: out.ldc,
            residual: batch.residual.map(|r| SendPtr(r.cast_mut())),
        };
        // SAFETY: the caller's contract (avx512_core, and avx512_core_bf16
        // with T bf16 for Bf16Dot), eligibility and the NCHW16c conditions
        // just checked, `out` is O's type.
        unsafe {
            conv_blocked::run(
                shape,
                product,
                images,
                batch.layouts.image,
                image_stride,
                &w,
                packed,
                &ep,
                out,
                threads,
            )
        };
        return;
    }
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
            // Every output type can be finished from the registers.
            true,
            |item, cells| {
                let cells: &mut [u32] = bytemuck::cast_slice_mut(cells);
                let (img, band) = (image(item / layout.bands), item % layout.bands);
                layout.fill(groups, band, cells, |g, iy, row, lo, hi, first| {
                    // T is bf16 (Bf16Dot): its bits are the pair's halves.
                    let plane = |ci: usize| -> &[u16] {
                        bytemuck::cast_slice(&img[(ci * h + iy) * wd..(ci * h + iy + 1) * wd])
                    };
                    let row = &mut row[lo..hi];
                    let even = &plane(2 * g)[first..];
                    let odd = (2 * g + 1 < cin).then(|| &plane(2 * g + 1)[first..]);
                    pair_strided(even, odd, sw, row);
                });
                cells.as_ptr().cast()
            },
            |t, rows, pc, kc, b, _, wsp, ldw, load, finish| {
                // SAFETY: the A tile holds kp*MR pairs from t*kp*MR on; offs holds kc
                // offsets from pc on and `b` is the tile's wide pixel jw of the band's
                // copy with offs[q] + jw + 32 <= len, so every B load is in the copy;
                // the workspace tile is rows x 32 at stride ldw; `finish` is given for
                // the last k block only, its pieces addressing the tile's output
                // elements (`direct_pieces`); the caller checked AVX512-BF16 (and the
                // level includes DQ).
                unsafe {
                    GATHER_TILES[rows - 1](
                        kc,
                        apack.as_ptr().add(t * kp * mr + pc * mr),
                        b.cast::<u32>(),
                        offs.as_ptr().add(pc),
                        wsp,
                        ldw,
                        load,
                        finish,
                    )
                }
            },
        );
        return;
    }
    // An f32 image with stride 1 and "same" width is read in place;
    // anything else through a band copy.
    let in_place = (T::DTYPE == FloatType::F32)
        .then(|| Layout::in_place(shape, out.count, threads))
        .flatten();
    let taps = in_place.as_ref().and_then(Layout::in_place_taps);
    let (layout, taps) = match (in_place, taps) {
        (Some(layout), Some(taps)) => (layout, taps),
        _ => (Layout::new(shape, cin, 4, out.count, threads), Vec::new()),
    };
    let offs = if taps.is_empty() {
        layout.offsets(shape, cin)
    } else {
        Vec::new()
    };
    debug_assert_eq!(offs.len().max(taps.len()), k);
    let len = if taps.is_empty() {
        layout.cells(cin, &offs)
    } else {
        0
    };
    let mr = avx512::MR;
    let kb = k.div_ceil(KC);
    let mut apack = vec![0.0f32; m.div_ceil(mr) * kb * mr * KC];
    for (t, dst) in apack.chunks_exact_mut(kb * mr * KC).enumerate() {
        pack_a_blocks(isa, &w, t * mr, mr.min(m - t * mr), mr, dst);
    }
    let (apack, offs, taps) = (&apack[..], &offs[..], &taps[..]);
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
        // f32 or f16 output can be finished from the registers.
        matches!(O::DTYPE, FloatType::F32 | FloatType::F16),
        |item, cells| {
            let (img, band) = (image(item / layout.bands), item % layout.bands);
            if !taps.is_empty() {
                // In place: T is f32 (checked with the layout).
                return img.as_ptr().cast();
            }
            layout.fill(cin, band, cells, |ci, iy, row, lo, hi, first| {
                let src = &img[(ci * h + iy) * wd..(ci * h + iy + 1) * wd];
                if ci + 1 < cin {
                    prefetch_row(&img[((ci + 1) * h + iy) * wd..][..wd]);
                }
                widen_strided(isa, &src[first..], sw, &mut row[lo..hi]);
            });
            cells.as_ptr()
        },
        |t, rows, pc, kc, b, tile_masks, wsp, ldw, load, finish| {
            let a = apack[(t * kb + pc / KC) * mr * KC..].as_ptr();
            // SAFETY: the A block holds rows x kc f32 at row stride KC; the workspace
            // tile is rows x 32 at stride ldw; `finish` is given for the last k block
            // only, its pieces address the tile's output elements (`direct_pieces`);
            // the caller checked avx512_core. In place, taps holds kc entries from
            // pc on, `lanes` 32 masks per tap (`tap_masks`) set only where the input
            // value lies in the image, `b` is the tile's first pixel in the image's
            // index space (formed with wrapping arithmetic: past the image's end
            // when a tall top padding makes every tap reach back), and `whole` says
            // whether every tap's 32 values lie in the image (else the edge rows
            // load only the masked-in lanes). Copied, offs holds kc offsets
            // from pc on and `b` is the tile's wide pixel jw of the band's copy with
            // offs[p] + jw + 32 <= len, so every load is in the copy.
            unsafe {
                if taps.is_empty() {
                    let rows_at = Padded(offs[pc..].as_ptr());
                    conv_tile(rows, kc, a, b, rows_at, wsp, ldw, load, finish)
                } else {
                    let rows_at = InPlace {
                        taps: taps[pc..].as_ptr(),
                        masks: tile_masks.lanes.as_ptr(),
                    };
                    if tile_masks.whole {
                        conv_tile(rows, kc, a, b, rows_at, wsp, ldw, load, finish)
                    } else {
                        let rows_at = InPlaceEdge(rows_at);
                        conv_tile(rows, kc, a, b, rows_at, wsp, ldw, load, finish)
                    }
                }
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
/// band); an item first gets where its tiles read with
/// `source(item, cells)`: its band's copy, made in its worker's workspace
/// (`len` f32 cells), or with an in-place layout the image itself. It then
/// walks the band's pixel tiles `TILES_PER_PASS` at a time for each block
/// of `MC_TILES` row tiles: the k loop is blocked by `kblock` and each
/// `mr x 32` tile goes through `tile(t, rows, k0, kc, b, masks, ws_tile,
/// ldw, load, finish)`, `b` pointing at the tile's first pixel in what
/// `source` gave and `masks` being its lane masks per tap (in place only),
/// and, after its last block, the epilogue, scattered to the output rows.
/// With `direct` (an output type the caller's tile can finish into through
/// a [`DirectStore`]), tiles whose epilogue is only row bias and ReLU are
/// finished from the micro-kernel's registers instead.
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
    source: impl Fn(usize, &mut [f32]) -> *const f32 + Sync,
    tile: impl Fn(
        usize,
        usize,
        usize,
        usize,
        *const f32,
        &TileMasks,
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
    let taps = layout.in_place.as_ref().map_or(0, |g| g.taps.len());
    parallel_for(threads, items, len + mc * ldw, |item, ws| {
        let (cells, ws) = ws.split_at_mut(len);
        let base = source(item, cells);
        let (img, band) = (item / layout.bands, item % layout.bands);
        let oy0 = band * layout.band_rows;
        let wide = layout.band_rows.min(oh - oy0) * wq;
        let tiles = wide.div_ceil(NT);
        // In place, wide pixel `j` of the band is output pixel `first + j`
        // of the image, and B is read at the pixel's own position.
        let first = if taps > 0 { oy0 * layout.ow } else { 0 };
        let mut masks = vec![0u32; TILES_PER_PASS * taps * NT];
        let mut whole = [false; TILES_PER_PASS];
        // SAFETY: output `img` starts inside the caller's buffer (contract of `run`).
        let c = unsafe { out.c.get().add(img * out.stride) };
        for i0 in (0..m).step_by(mc) {
            let mcb = mc.min(m - i0);
            for q0 in (0..tiles).step_by(TILES_PER_PASS) {
                let nq = TILES_PER_PASS.min(tiles - q0);
                for (q, tile_masks) in masks
                    .chunks_exact_mut(taps.max(1) * NT)
                    .take(nq)
                    .enumerate()
                {
                    let p0 = first + (q0 + q) * NT;
                    whole[q] = layout.tap_masks(p0, first + wide, tile_masks);
                }
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
                                    // An output type the tile can store (`direct`).
                                    c: c.wrapping_add(t * mr * out.ldc).cast::<u8>(),
                                    out: O::DTYPE,
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
                                base.wrapping_add(first + jw),
                                &TileMasks {
                                    lanes: &masks[(q * taps * NT).min(masks.len())..][..taps * NT],
                                    whole: whole[q],
                                },
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
