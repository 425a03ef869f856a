//! Direct convolution over a channel-blocked copy of the image
//! (`avx512_core` and up), the layout oneDNN and onnxruntime call NCHW16c.
//! With f32 FMAs ([`Product::Fma`]) images may be f32, f16 or bf16 (widened
//! exactly by the copy); with `VDPBF16PS` ([`Product::Bf16Dot`], bf16
//! images, `avx512_core_bf16`) each lane of the copy is a bf16 channel pair.
//! Outputs are f32, f16 (rounded as `VCVTPS2PH` does) or, with pairs, bf16
//! (the conversion's rounding), as the GEMM's epilogue rounds them.
//!
//! A band of output rows of one image is copied into a zero-padded buffer
//! laid out (block of 16 channels, padded row, padded column, channel in
//! the block), so the 16 channels of one pixel are one cache line. With a
//! stride, each copy row holds its column phases side by side (padded
//! column `x` in phase `x % stride_w`, as the implicit GEMM's copy does), so
//! a tile's pixels are consecutive at every tap, and the rows and phases no
//! tap reads are not copied (a 1x1 stride-2 kernel reads a quarter). A tile
//! is [`PIXELS`] consecutive output pixels of one row by 32 (or 16) output
//! channels: per k step (input channel, kernel row, kernel column) it loads
//! the 32 weights of that step as two vectors and broadcasts each pixel's
//! input value once, 28 FMAs on 28 accumulators and no masks, the padding
//! being zeros in the copy. The weights are the vectors and the image values
//! the broadcasts, the reverse of the implicit GEMM's tile
//! ([`super::conv`]), whose vectors of 32 pixels need a mask per tap at the
//! image's borders and drop the columns past a row's end.
//!
//! With input channels not a multiple of 16 (32 for pairs; a network's
//! 3-channel stem) the copy is one zero-padded plane per channel or
//! channel pair instead ([`CopyLayout::Planar`]): the tile is the same,
//! its pixels one lane apart instead of 16, and k runs over the channels
//! themselves, where blocks would multiply padding channels. ResNet's
//! 3x224x224 7x7 stride-2 stem as a one-node model, one thread: 2.53 ms
//! through the implicit GEMM, 2.38 over planes (in a bf16 plan of the
//! whole model 1.89 -> 1.80 ms over pair planes; a one-node bf16 48 -> 48
//! 3x3 at 56x56 0.78 -> 0.74). Planes for 64 channels measured 1.4% slower
//! than blocks (64x56x56 3x3: 2.14 vs 2.11 ms), although their copy is a
//! plain row copy: a tile's 14 pixels span two lines per channel and row,
//! twice the L1 lines of blocks, against the weights streaming through.
//! Over planes with an NCHW output whose rows are a multiple of 16 pixels
//! wide, the tiles' roles turn ([`row_tiles`]): a vector is 16 consecutive
//! output pixels of one channel (consecutive in the copy at every tap, the
//! phases lying side by side) and the weights are the broadcasts, so each
//! accumulator is a piece of an NCHW output row, stored without a
//! transpose. The stem's short k (147 steps) had made the 14-pixel tile's
//! transposing store 11% of its time; ResNet's stem as a one-node model,
//! one thread: 2.34 ms with 14-pixel tiles, 2.27 with the 16-pixel by
//! 16-channel tiles these replaced, 2.18-2.20 with these.
//!
//! Output rows of at most 7 pixels go two to a tile (the second row's
//! values one copy row, times the stride, further; NCHW keeps the two rows
//! consecutive, so the store is unchanged): a 7-pixel tile fed 14 FMAs per
//! pair of weight loads, and a ResNet's last stage (512 channels on 7x7,
//! 9.4 MB of weights) streamed its weights from L3 once per output row.
//! Three such convs, one thread: 6.75 -> 6.52 ms.
//!
//! # Numerics
//! The k loop runs over the whole of k in the im2col order (channel, kernel
//! row, kernel column) with the accumulators in registers from zero. That is
//! the FMA chain of [`super::gemm_at`] on the im2col matrix at this level
//! (the GEMM's `KC` blocks reload the exact f32 partial sums), a padding tap
//! being `fma(w, 0, acc)` in both, and the epilogue is `relu?(acc +
//! row_bias)` as the general one computes it: the results are bit-identical
//! to the GEMM's, whatever the thread count. One-row tiles at the image's
//! top and bottom edges leave out the kernel rows that read only padding,
//! with the same bits ([`LiveSteps`]): 1x256x14x14 3x3, one thread,
//! 2.04 -> 1.97 ms; 1x128x28x28 2.06 -> 2.02; 1x64x56x56 2.11 -> 2.08.
//! With pairs the chain is the
//! Bf16Dot GEMM's on the channel-pair k order (`conv` module docs): the
//! same `VDPBF16PS` per lane with the operands' roles swapped, its two
//! products and their sum unchanged by that.
//!
//! Bf16Dot, 8 x 64 x 56 x 56, 3x3, one thread: 8.8 ms (209 GFLOP/s, 89% of
//! the `VDPBF16PS` peak), where the implicit GEMM over a channel-pair copy
//! takes 10.1.
//!
//! # Speed
//! f32, 8 x 64 x 56 x 56, 3x3, pad 1, one Zen 4 core: 16.7-17.0 ms (about
//! 110 GFLOP/s) for the call, where the implicit GEMM takes 17.9 and
//! onnxruntime's NCHWc kernel 16.1 (plus its reorders). The tile loop alone
//! runs at the FMA peak (116 GFLOP/s, 15.9 ms); the copy into blocks takes
//! 0.45 ms (1.1 ms with scalar stores before the 16 x 16 transposes), the
//! transposing store of the NCHW output about 0.3 (0.8 before the tiles
//! prefetched their output lines). Tiles reading a whole NCHW16c image in
//! place (no copy at all) ran slower than over the band copy in L2; what
//! pays is an NCHW16c image band-copied by rows (no transposes) and an
//! NCHW16c output stored from the registers a pixel at a time
//! ([`ChannelLayout::Nchw16c`], which the graph keeps between Convs): the
//! batch-8 net of three such convs 51.2 -> 50.6 ms at one thread (equal
//! in a noisier hour), 26.4 -> 25.8 at two, with the first conv's image
//! and the last one's output NCHW. A residual in either layout is added
//! before the transpose (or the store) from NCHW16c, after it from NCHW.
//! A 14-pixel by 32-channel tile whose k loop was unrolled over the kernel
//! taps spilled registers (63 GFLOP/s): the loop walks a table of offsets
//! instead, as the GEMM's does. Bands of 256 or 384 KiB instead of
//! [`BAND_BYTES`] measured the same (64x56x56 3x3, ResNet-18, the batch-8
//! conv net).

use std::arch::x86_64::*;

use super::avx512::{bias_relu, load16};
use super::driver::{
    BF16, Ep, F16, F32, SendPtr, pair_strided, prefetch_l2, prefetch_tile_output, tag,
    widen_strided,
};
use super::threads::{parallel_for, put_buf, take_buf};
use super::{Element, FloatType, MatRef};
use crate::conv::{ChannelLayout, Conv2dShape};
use crate::isa::Isa;

/// Channels per block of the copy: one zmm of f32.
pub(super) const BLOCK: usize = 16;
/// Output pixels per tile; with two weight vectors, 28 accumulators, two
/// weight registers and one broadcast fill the 32 zmm registers.
const PIXELS: usize = 14;
/// Output channels of one [`row_tiles`] tile: with [`ROW_VECTORS`] vectors
/// of pixels, 16 accumulators, four weight broadcasts and one vector of
/// pixels at a time. Eight channels by three vectors (24 accumulators)
/// measured the same; four by seven (33 registers: 28 accumulators, four
/// weights, one vector) no faster.
const ROW_CHANNELS: usize = 4;
/// Most vectors of 16 output pixels in one [`row_tiles`] tile.
const ROW_VECTORS: usize = 4;
/// Most bytes of one band's copy, so that it stays in Zen 4's 1 MiB L2 with
/// a group's packed weights (72 KiB for 64 input channels, 3x3).
const BAND_BYTES: usize = 512 << 10;

/// How a tile multiplies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Product {
    /// f32 FMAs on an f32 copy (`Accumulation::F32`, any image type): the
    /// copy's blocks are 16 channels.
    Fma,
    /// `VDPBF16PS` on bf16 channel pairs (`Accumulation::Bf16Dot`, bf16
    /// images): each copy lane is one pair, `x[2q]` in the low half, so a
    /// block is 16 pairs (32 channels) and k step `(q, ki, kj)` is the
    /// Bf16Dot GEMM's k-pair order (channel pair, kernel row, kernel column).
    Bf16Dot,
}

impl Product {
    /// Input channels per 32-bit lane of the copy.
    fn channels_per_lane(self) -> usize {
        match self {
            Product::Fma => 1,
            Product::Bf16Dot => 2,
        }
    }
}

/// Whether [`run`] computes this convolution with `product` (the caller
/// checks the level, `avx512_core_bf16` for [`Product::Bf16Dot`], and the
/// accumulation): output channels a multiple of 16 (any input channels:
/// see [`CopyLayout`]), an output of f32 or f16 (or bf16 for
/// [`Product::Bf16Dot`]), and an epilogue of at most a row bias and ReLU.
pub(super) fn eligible(m: usize, ep: &Ep, out: FloatType, product: Product) -> bool {
    (out != FloatType::Bf16 || product == Product::Bf16Dot)
        && packable(m)
        && ep.row_bias_relu().is_some()
}

/// Whether weights of `m` output channels fit the tiles (the weights' part
/// of [`eligible`]; any input channel count does, see [`CopyLayout`]).
pub(super) fn packable(m: usize) -> bool {
    m.is_multiple_of(BLOCK)
}

/// How a band's copy lays out the input channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CopyLayout {
    /// Blocks of 16 channels (or channel pairs), each laid out (padded row,
    /// padded column, channel in the block): a pixel's 16 channels are one
    /// cache line.
    Blocked,
    /// One plane per channel or channel pair (padded row, padded column),
    /// for channel counts that are not a multiple of 16 (32 for pairs; a
    /// network's 3-channel stem): blocks would pad the channels with zeros
    /// the tiles multiply. Past an odd channel count the last pair's high
    /// half is zero.
    Planar,
}

impl CopyLayout {
    fn new(in_channels: usize, product: Product) -> CopyLayout {
        if in_channels.is_multiple_of(BLOCK * product.channels_per_lane()) {
            CopyLayout::Blocked
        } else {
            CopyLayout::Planar
        }
    }

    /// Lanes per pixel of the copy, which is also the channels (or pairs)
    /// per block.
    fn lanes(self) -> usize {
        match self {
            CopyLayout::Blocked => BLOCK,
            CopyLayout::Planar => 1,
        }
    }
}

/// The `m x k` weights `w` packed for [`run`] (`taps` per input channel),
/// for callers that keep them across calls.
///
/// # Safety
/// [`packable`] holds; T is bf16 for [`Product::Bf16Dot`]; the CPU supports
/// `avx512_core`.
pub(super) unsafe fn pack<T: Element>(
    w: &MatRef<T>,
    product: Product,
    taps: usize,
) -> BlockedWeights {
    let mut lanes = vec![0u32; w.rows * steps(w.cols / taps, product) * taps];
    // SAFETY: forwarded from the caller's contract.
    unsafe { pack_into(w, product, taps, &mut lanes) };
    BlockedWeights {
        finite: all_finite(&lanes, product),
        lanes,
    }
}

/// Weights packed for the tiles ([`pack`]), kept by callers across calls.
#[derive(Clone)]
pub(crate) struct BlockedWeights {
    /// The lanes [`pack_weights`] lays out.
    lanes: Vec<u32>,
    /// [`all_finite`] of the lanes.
    finite: bool,
}

impl BlockedWeights {
    /// The number of lanes.
    pub(crate) fn len(&self) -> usize {
        self.lanes.len()
    }
}

/// Whether f32 FMA weights are all finite, which lets one-row tiles skip
/// the kernel rows that read only padding ([`LiveSteps`]); reading every
/// lane of a large layer per call would cost more than the skip saves, so
/// prepacked weights carry it.
fn all_finite(lanes: &[u32], product: Product) -> bool {
    const EXPONENT: u32 = 0x7F80_0000;
    product == Product::Fma && lanes.iter().all(|&l| l & EXPONENT != EXPONENT)
}

/// [`pack_weights`] for T's tag.
///
/// # Safety
/// As [`pack`]; `lanes` holds exactly `m * k` lanes, k being the k steps
/// (`steps(in_channels) * taps`).
unsafe fn pack_into<T: Element>(w: &MatRef<T>, product: Product, taps: usize, lanes: &mut [u32]) {
    // SAFETY: forwarded; the tag is T's.
    unsafe {
        match tag(T::DTYPE) {
            F32 => pack_weights::<F32, T>(w, product, taps, lanes),
            BF16 => pack_weights::<BF16, T>(w, product, taps, lanes),
            _ => pack_weights::<F16, T>(w, product, taps, lanes),
        }
    }
}

/// A batch's output: image `n`'s channel `i` row starts at element
/// `n * stride + i * ldc` of `c`, `out_h * out_w` elements of type `out`
/// (with `layout` [`ChannelLayout::Nchw16c`], f32 only, image `n` at
/// `n * stride` holds the same elements in 16-channel blocks, `ldc` being
/// the pixels per channel).
pub(super) struct Output {
    pub c: SendPtr<u8>,
    pub out: FloatType,
    pub layout: ChannelLayout,
    pub count: usize,
    pub stride: usize,
    pub ldc: usize,
    /// f32 output only: added to each result after the row bias and before
    /// the ReLU (a residual connection), laid out as the output (same
    /// strides) in `residual_layout`.
    pub residual: Option<SendPtr<f32>>,
    pub residual_layout: ChannelLayout,
}

/// The geometry of the bands' copies.
struct Bands {
    /// Output rows per band (the last may have fewer).
    rows: usize,
    /// Bands per image.
    count: usize,
    /// Padded columns the taps read: `(out_w - 1) * sw + (kw - 1) * dw + 1`.
    padded_width: usize,
    /// Where a copy row keeps each padded column.
    phases: Phases,
    /// Pixels per copy row: `sw` phases of `phases.len`.
    width: usize,
    /// Padded rows the kernel spans beyond its first: `(kh - 1) * dh`.
    reach: usize,
    /// Blocks or planes.
    layout: CopyLayout,
    /// Lanes (f32 or channel pairs) from one block (or plane) of the copy to
    /// the next.
    block_stride: usize,
}

/// Where a copy row keeps padded column `x`: the row holds the stride's
/// column phases side by side, phase `x % stride` at index `x / stride`,
/// so a tile's pixels (consecutive outputs, `stride` columns apart) are
/// consecutive at every tap, as in the implicit GEMM's phase copy. With
/// stride 1 this is the padded row itself.
#[derive(Clone, Copy, Debug)]
struct Phases {
    stride: usize,
    /// Pixels per phase.
    len: usize,
    /// Bit `q` set: some tap reads phase `q` (phases from 64 on count as
    /// read). A 1x1 stride-2 kernel reads only phase 0.
    read: u64,
}

impl Phases {
    fn new(shape: &Conv2dShape, padded_width: usize) -> Phases {
        let stride = shape.stride[1];
        let read = (0..shape.kernel[1])
            .map(|kj| kj * shape.dilation[1] % stride)
            .fold(0u64, |m, q| m | 1u64.checked_shl(q as u32).unwrap_or(0));
        Phases {
            stride,
            len: padded_width.div_ceil(stride),
            read: if stride > 64 { u64::MAX } else { read },
        }
    }

    /// The copy pixel of padded column `x`.
    fn pixel(self, x: usize) -> usize {
        x % self.stride * self.len + x / self.stride
    }

    fn is_read(self, phase: usize) -> bool {
        phase >= 64 || self.read >> phase & 1 == 1
    }
}

impl Bands {
    /// Bands sized as if each input channel took 4 bytes per pixel: a
    /// copy of bf16 channel pairs (2 bytes per channel) gets bands of half
    /// [`BAND_BYTES`], which measured slightly faster than full-size ones
    /// (8x64x56x56 Bf16Dot: 8.83-8.89 vs 8.92-8.93 ms at one thread,
    /// 4.40-4.48 vs 4.51-4.58 at two).
    fn new(
        shape: &Conv2dShape,
        layout: CopyLayout,
        images: usize,
        threads: usize,
        weight_bytes: usize,
    ) -> Self {
        let [oh, ow] = shape.out_size;
        let [sh, sw] = shape.stride;
        let padded_width = (ow - 1) * sw + (shape.kernel[1] - 1) * shape.dilation[1] + 1;
        let phases = Phases::new(shape, padded_width);
        let width = sw * phases.len;
        let reach = (shape.kernel[0] - 1) * shape.dilation[0];
        let row_bytes = shape.in_channels * width * 4;
        let image_bytes = Self::copy_rows(oh, sh, reach) * row_bytes;
        let by_size = image_bytes.div_ceil(BAND_BYTES);
        // Enough items for every thread when the batch is small: more bands
        // (each reads all the weights), or, where the weights outweigh the
        // image sixteenfold, the output channels split into parts in `run`
        // (each part copies the band). Batch 1 on two threads: 512x7x7 3x3
        // 1.05-1.08 -> 1.038-1.039 ms as one band in parts; 128x28x28
        // (weights 1.3 x the image) went 1.02 -> 1.045 that way, 256x14x14
        // (9 x) and 256x14x14 s2 -> 512 (19 x) the same either way.
        let by_threads = if weight_bytes > 16 * image_bytes {
            1
        } else {
            threads.div_ceil(images)
        };
        let rows = oh.div_ceil(by_size.max(by_threads).clamp(1, oh));
        Bands {
            rows,
            count: oh.div_ceil(rows),
            padded_width,
            phases,
            width,
            reach,
            layout,
            block_stride: Self::copy_rows(rows, sh, reach) * width * layout.lanes(),
        }
    }

    /// Padded input rows that `rows` output rows read.
    fn copy_rows(rows: usize, stride: usize, reach: usize) -> usize {
        (rows - 1) * stride + reach + 1
    }

    /// Lanes (f32 or pairs) of one band's copy of `units` channels or
    /// channel pairs.
    fn len(&self, units: usize) -> usize {
        units.div_ceil(self.layout.lanes()) * self.block_stride
    }

    /// Where k step `(u, ki, kj)` (channel or channel pair `u`; the im2col
    /// order) reads, relative to the tile's first pixel at tap (0, 0).
    fn offsets(&self, shape: &Conv2dShape, units: usize) -> Vec<usize> {
        let [kh, kw] = shape.kernel;
        let [dh, dw] = shape.dilation;
        let mut offs = Vec::with_capacity(units * kh * kw);
        let lanes = self.layout.lanes();
        for u in 0..units {
            for ki in 0..kh {
                for kj in 0..kw {
                    let pixel = ki * dh * self.width + self.phases.pixel(kj * dw);
                    offs.push(u / lanes * self.block_stride + pixel * lanes + u % lanes);
                }
            }
        }
        offs
    }

    /// Copies band `band` of `image` (`image_layout`; NCHW16c only for f32
    /// FMAs into blocks, T then f32) into `copy`: copy row `r` is padded
    /// input row `band * rows * sh + r`, zeros outside the image. Rows and
    /// column phases no tap reads are skipped (a 1x1 stride-2 kernel reads
    /// every other row and column).
    #[allow(clippy::too_many_arguments)]
    fn fill<T: Element>(
        &self,
        shape: &Conv2dShape,
        product: Product,
        band: usize,
        image: &[T],
        image_layout: ChannelLayout,
        copy: &mut [f32],
    ) {
        let lanes = self.layout.lanes();
        let per_block = lanes * product.channels_per_lane();
        let [h, w] = shape.in_size;
        let [ph, pw] = shape.pad_begin;
        let [sh, dh] = [shape.stride[0], shape.dilation[0]];
        let oy0 = band * self.rows;
        let out_rows = self.rows.min(shape.out_size[0] - oy0);
        let rows = Self::copy_rows(out_rows, sh, self.reach);
        // Whether some output row of the band reads copy row r.
        let read = |r: usize| {
            (0..shape.kernel[0]).any(|ki| {
                r >= ki * dh && (r - ki * dh).is_multiple_of(sh) && (r - ki * dh) / sh < out_rows
            })
        };
        // Padded columns that hold image columns.
        let lo = pw.min(self.padded_width);
        let hi = (pw + w).min(self.padded_width);
        let row_len = self.width * lanes;
        let phases = self.phases;
        for (cb, block) in copy
            .chunks_exact_mut(self.block_stride)
            .take(shape.in_channels.div_ceil(per_block))
            .enumerate()
        {
            for (r, dst) in block.chunks_exact_mut(row_len).take(rows).enumerate() {
                if !read(r) {
                    continue;
                }
                let iy = (oy0 * sh + r).wrapping_sub(ph);
                if iy >= h || lo == hi {
                    dst.fill(0.0);
                    continue;
                }
                for x in (0..lo).chain(hi..self.padded_width) {
                    let pixel = &mut dst[phases.pixel(x) * lanes..][..lanes];
                    // A block's pixel is one constant-size store: a fill of
                    // `lanes` values called memset twice per row and block,
                    // 0.8% of a batch of 64x56x56 3x3 convolutions.
                    match <&mut [f32; BLOCK]>::try_from(&mut *pixel) {
                        Ok(block) => *block = [0.0; BLOCK],
                        Err(_) => pixel.fill(0.0),
                    }
                }
                let plane = cb * per_block * h * w + iy * w;
                let (src, n) = (&image[plane..], hi - lo);
                let to = Pixels { first: lo, phases };
                if image_layout == ChannelLayout::Nchw16c {
                    // The block's row is already the copy's pixels: row
                    // copies, no transposes (T is f32: `run`'s contract).
                    let row = (cb * h * w + iy * w) * BLOCK;
                    let src: &[f32] = bytemuck::cast_slice(&image[row..][..n * BLOCK]);
                    copy_block_row(src, dst, to);
                    continue;
                }
                match (self.layout, product) {
                    (CopyLayout::Planar, Product::Fma) => {
                        gather_plane(&src[..n], dst, to);
                        continue;
                    }
                    (CopyLayout::Planar, Product::Bf16Dot) => {
                        // T is bf16 for pairs: its bits are the pair's halves.
                        let even: &[u16] = bytemuck::cast_slice(&src[..n]);
                        let odd: Option<&[u16]> = (2 * cb + 1 < shape.in_channels)
                            .then(|| bytemuck::cast_slice(&src[h * w..][..n]));
                        gather_pair_plane(even, odd, dst, to);
                        continue;
                    }
                    (CopyLayout::Blocked, _) => {}
                }
                // SAFETY: the block's channels of row iy hold w >= hi - lo values
                // each; the copy row holds the phase pixels of padded columns
                // lo..hi < padded_width, 16 lanes each; the CPU supports
                // avx512_core (avx512_core_bf16 with pairs: T is then bf16),
                // the caller of `run`.
                unsafe {
                    match (product, tag(T::DTYPE)) {
                        (Product::Bf16Dot, _) => gather_pairs(src, h * w, n, dst, to),
                        (Product::Fma, F32) => gather_pixels::<F32, T>(src, h * w, n, dst, to),
                        (Product::Fma, BF16) => gather_pixels::<BF16, T>(src, h * w, n, dst, to),
                        (Product::Fma, _) => gather_pixels::<F16, T>(src, h * w, n, dst, to),
                    }
                }
            }
        }
    }
}

/// Where a gather puts its pixels in a copy row: pixel `j` is padded
/// column `first + j`.
#[derive(Clone, Copy)]
struct Pixels {
    first: usize,
    phases: Phases,
}

impl Pixels {
    /// Calls `put(j, copy pixel)` for pixels `x0..x0 + n` in a read phase,
    /// stepping the phase and index instead of dividing per pixel.
    #[inline(always)]
    fn each(self, x0: usize, n: usize, mut put: impl FnMut(usize, usize)) {
        let ph = self.phases;
        let x = self.first + x0;
        let (mut q, mut t) = (x % ph.stride, x / ph.stride);
        for j in 0..n {
            if ph.is_read(q) {
                put(j, q * ph.len + t);
            }
            q += 1;
            if q == ph.stride {
                (q, t) = (0, t + 1);
            }
        }
    }
}

/// Copies the pixels of one row of a 16-channel block (`src`, NCHW16c) into
/// the copy row `dst` at the pixels `to` gives: with stride 1 one run.
fn copy_block_row(src: &[f32], dst: &mut [f32], to: Pixels) {
    if to.phases.stride == 1 {
        dst[to.first * BLOCK..][..src.len()].copy_from_slice(src);
        return;
    }
    to.each(0, src.len() / BLOCK, |j, at| {
        dst[at * BLOCK..][..BLOCK].copy_from_slice(&src[j * BLOCK..][..BLOCK]);
    });
}

/// Copies the `src.len()` consecutive pixels of one channel into its
/// plane's copy row `dst` as f32, at the pixels `to` gives: per column
/// phase a run of every `stride`-th value (with stride 1 the row itself).
fn gather_plane<T: Element>(src: &[T], dst: &mut [f32], to: Pixels) {
    let Pixels { first, phases } = to;
    let s = phases.stride;
    for q in (0..s.min(src.len())).filter(|&q| phases.is_read((first + q) % s)) {
        let at = phases.pixel(first + q);
        let run = &mut dst[at..][..(src.len() - q).div_ceil(s)];
        // The level is at least avx512_core (the caller of `run`).
        widen_strided(Isa::Avx512Core, &src[q..], s, run);
    }
}

/// [`gather_plane`] for a plane of bf16 channel pairs: lane `j` is `even[j]`
/// in its low half and `odd[j]` (zero without `odd`) in its high half.
fn gather_pair_plane(even: &[u16], odd: Option<&[u16]>, dst: &mut [f32], to: Pixels) {
    let Pixels { first, phases } = to;
    let s = phases.stride;
    let n = even.len();
    let lanes: &mut [u32] = bytemuck::cast_slice_mut(dst);
    for q in (0..s.min(n)).filter(|&q| phases.is_read((first + q) % s)) {
        let at = phases.pixel(first + q);
        let run = &mut lanes[at..][..(n - q).div_ceil(s)];
        pair_strided(&even[q..], odd.map(|o| &o[q..]), s, run);
    }
}

/// Copies `pixels` consecutive pixels of 16 channels (channel `l` at
/// `src[l * channel_stride..]`, of type `BT`) into the copy row `dst` as
/// f32, 16 channels per pixel, at the pixels `to` gives, through 16 x 16
/// transposes in registers.
///
/// # Safety
/// `src[l * channel_stride + x]` exists for `l < 16`, `x < pixels`;
/// `dst` holds 16 lanes at every pixel `to` gives; `BT` is T's tag; the CPU
/// supports AVX-512 F/BW/VL.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn gather_pixels<const BT: u8, T>(
    src: &[T],
    channel_stride: usize,
    pixels: usize,
    dst: &mut [f32],
    to: Pixels,
) {
    debug_assert!(src.len() > 15 * channel_stride + pixels - 1);
    for x0 in (0..pixels).step_by(BLOCK) {
        let n = BLOCK.min(pixels - x0);
        let lanes = u16::MAX >> (BLOCK - n);
        let mut rows = [_mm512_setzero_ps(); BLOCK];
        for (l, r) in rows.iter_mut().enumerate() {
            // SAFETY: lanes below n read channel l's pixels x0..x0+n (the caller's contract).
            *r = unsafe { load16::<BT>(src.as_ptr().add(l * channel_stride + x0).cast(), lanes) };
        }
        let cols = transpose16(rows);
        to.each(x0, n, |j, at| {
            // SAFETY: pixel `at` of the copy row holds 16 lanes (the caller's
            // contract).
            unsafe { _mm512_storeu_ps(dst[at * BLOCK..][..BLOCK].as_mut_ptr(), cols[j]) };
        });
    }
}

/// [`gather_pixels`] for bf16 channel pairs: `pixels` pixels of 32
/// channels (`src` bf16) into 16 lanes per pixel, lane `q` holding channel
/// `2q` in its low half and `2q + 1` in its high half, the pair layout of
/// the Bf16Dot GEMM's k-pairs (the f32 copy is reused as 32-bit lanes).
///
/// # Safety
/// `src[l * channel_stride + x]` exists for `l < 32`, `x < pixels`; `dst`
/// holds 16 lanes at every pixel `to` gives; `T` is bf16; the CPU supports
/// AVX-512 F/BW/VL.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn gather_pairs<T>(
    src: &[T],
    channel_stride: usize,
    pixels: usize,
    dst: &mut [f32],
    to: Pixels,
) {
    debug_assert!(src.len() > 31 * channel_stride + pixels - 1);
    let src = src.as_ptr().cast::<u16>();
    for x0 in (0..pixels).step_by(BLOCK) {
        let n = BLOCK.min(pixels - x0);
        let lanes = u16::MAX >> (BLOCK - n);
        let mut rows = [_mm512_setzero_ps(); BLOCK];
        for (q, r) in rows.iter_mut().enumerate() {
            // SAFETY: lanes below n read channels 2q and 2q+1 at pixels x0..x0+n
            // (the caller's contract).
            let (lo, hi) = unsafe {
                (
                    _mm256_maskz_loadu_epi16(lanes, src.add(2 * q * channel_stride + x0).cast()),
                    _mm256_maskz_loadu_epi16(
                        lanes,
                        src.add((2 * q + 1) * channel_stride + x0).cast(),
                    ),
                )
            };
            let pair = _mm512_or_si512(
                _mm512_cvtepu16_epi32(lo),
                _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(hi)),
            );
            *r = _mm512_castsi512_ps(pair);
        }
        let cols = transpose16(rows);
        to.each(x0, n, |j, at| {
            // SAFETY: pixel `at` of the copy row holds 16 lanes (the caller's
            // contract).
            unsafe { _mm512_storeu_ps(dst[at * BLOCK..][..BLOCK].as_mut_ptr(), cols[j]) };
        });
    }
}

/// The 16 x 16 transpose of `r` (row `i` lane `j` becomes row `j` lane `i`):
/// 64 shuffles, in-lane unpacks of pairs and quads, then 128-bit lane
/// shuffles.
#[inline]
#[target_feature(enable = "avx512f")]
fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // u[4g + c], lane L: rows 4g..4g+3 of column 4L + c.
    let mut u = [_mm512_setzero_ps(); 16];
    for g in 0..4 {
        let (a0, a1, b0, b1) = (t[4 * g], t[4 * g + 1], t[4 * g + 2], t[4 * g + 3]);
        let pd = _mm512_castps_pd;
        let ps = _mm512_castpd_ps;
        u[4 * g] = ps(_mm512_unpacklo_pd(pd(a0), pd(b0)));
        u[4 * g + 1] = ps(_mm512_unpackhi_pd(pd(a0), pd(b0)));
        u[4 * g + 2] = ps(_mm512_unpacklo_pd(pd(a1), pd(b1)));
        u[4 * g + 3] = ps(_mm512_unpackhi_pd(pd(a1), pd(b1)));
    }
    // v (rows 0..8) and w (rows 8..16): entry c < 4 holds columns c and
    // 8 + c, entry 4 + c columns 4 + c and 12 + c.
    let mut v = [_mm512_setzero_ps(); 8];
    let mut w = [_mm512_setzero_ps(); 8];
    for c in 0..4 {
        v[c] = _mm512_shuffle_f32x4::<0x88>(u[c], u[4 + c]);
        v[4 + c] = _mm512_shuffle_f32x4::<0xdd>(u[c], u[4 + c]);
        w[c] = _mm512_shuffle_f32x4::<0x88>(u[8 + c], u[12 + c]);
        w[4 + c] = _mm512_shuffle_f32x4::<0xdd>(u[8 + c], u[12 + c]);
    }
    let mut out = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        out[i] = _mm512_shuffle_f32x4::<0x88>(v[i], w[i]);
        out[i + 8] = _mm512_shuffle_f32x4::<0xdd>(v[i], w[i]);
    }
    out
}

/// The convolution of `out.count` images (`images[n * image_stride..]`,
/// NCHW) with the `m x k` weights `w` into `out` by `product`, on
/// `threads` threads.
/// Work items are (image, band of output rows); each copies its band into
/// the thread's workspace and computes every output channel of it, so the
/// copy is read from L2 by all channel groups.
///
/// `prepacked`, when given, is [`pack`] of `w` for `product`.
///
/// # Safety
/// As [`super::conv::run`]; in addition [`eligible`] holds, `out.out` is
/// the output's element type and the CPU supports `avx512_core`. An
/// NCHW16c `image_layout` or output is for f32 FMAs only, with T and the
/// output f32 and, for the images, input channels a multiple of 16.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn run<T: Element>(
    shape: &Conv2dShape,
    product: Product,
    images: &[T],
    image_layout: ChannelLayout,
    image_stride: usize,
    w: &MatRef<T>,
    prepacked: Option<&BlockedWeights>,
    ep: &Ep,
    out: Output,
    threads: usize,
) {
    let (row_bias, relu) = ep.row_bias_relu().expect("eligible");
    let m = w.rows;
    let [oh, ow] = shape.out_size;
    let sh = shape.stride[0];
    let taps = shape.kernel[0] * shape.kernel[1];
    let units = steps(shape.in_channels, product);
    // k steps: channels (f32) or channel pairs (Bf16Dot) times taps.
    let k = units * taps;
    let layout = CopyLayout::new(shape.in_channels, product);
    debug_assert!(
        image_layout == ChannelLayout::Nchw
            || (layout == CopyLayout::Blocked
                && product == Product::Fma
                && T::DTYPE == FloatType::F32)
    );
    debug_assert!(out.layout == ChannelLayout::Nchw || out.out == FloatType::F32);
    let bands = Bands::new(shape, layout, out.count, threads, 4 * m * k);
    let offs = bands.offsets(shape, units);
    debug_assert!(prepacked.is_none_or(|p| p.lanes.len() == m * k));
    let mut packed = Vec::new();
    let (weights_packed, finite) = match prepacked {
        Some(p) => (&p.lanes[..], p.finite),
        None => {
            packed = take_buf(&PACKED_WEIGHTS, m * k);
            // SAFETY: eligible, so packable; T is bf16 for Bf16Dot and the CPU
            // supports avx512_core (the caller's contract).
            unsafe { pack_into(w, product, taps, &mut packed[..m * k]) };
            (&packed[..m * k], all_finite(&packed[..m * k], product))
        }
    };
    let image_len = shape.in_channels * shape.in_size[0] * shape.in_size[1];
    let copy_len = bands.len(units);
    let (offs, bands) = (&offs[..], &bands);
    // Few bands (a batch of one small image) split unevenly over the
    // threads (7 rows over two: 4 + 3), so then the groups of output
    // channels are split into parts too, each part copying the band for
    // itself. Items go part by part, so the threads read the same part's
    // weights at a time (band-major items read each part twice from memory
    // and measured slower than no split). Three 512-channel 7x7 layers at
    // two threads: 4.0-4.2 -> 3.8-4.0 ms.
    let groups = m.div_ceil(2 * BLOCK);
    let bands_total = out.count * bands.count;
    // Bands of equal rows that the threads share evenly are not split:
    // splitting copies each band once per part (64x56x56 3x3 at two
    // threads, two bands of 28 rows: 1.14 -> 1.10-1.12 ms unsplit).
    let even = bands_total.is_multiple_of(threads) && oh.is_multiple_of(bands.rows);
    let parts = if threads > 1 && !even {
        (ITEMS_PER_THREAD * threads)
            .div_ceil(bands_total)
            .min(groups)
    } else {
        1
    };
    let groups_per_part = groups.div_ceil(parts);
    let parts = groups.div_ceil(groups_per_part);
    // Output rows of at most 7 pixels go two to a tile: a tile of one such
    // row loads each k step's weights for 7 pixels' FMAs, and ResNet's
    // last stage (512 channels, 7x7, 9.4 MB of weights) streamed them from
    // L3 once per output row.
    let two_rows = if 2 * ow <= PIXELS { 2 } else { 1 };
    // Rows whose NCHW store the pixel-row tiles make without a transpose
    // (module docs; bf16 output comes from pairs only).
    let pixel_rows = product == Product::Fma
        && layout == CopyLayout::Planar
        && ow.is_multiple_of(BLOCK)
        && out.layout == ChannelLayout::Nchw
        && out.out != FloatType::Bf16
        && out
            .residual
            .is_none_or(|_| out.residual_layout == ChannelLayout::Nchw);
    let row_lanes = sh * bands.width * layout.lanes();
    // The k steps each output row at the image's top or bottom edge runs
    // (one-row tiles, f32 FMAs, finite weights; see `LiveSteps`).
    let live_steps: Vec<Option<LiveSteps>> = if finite && two_rows == 1 {
        LiveSteps::by_row(shape, offs)
    } else {
        Vec::new()
    };
    parallel_for(threads, bands_total * parts, copy_len, |item, copy| {
        let (part, item) = (item / bands_total, item % bands_total);
        let (n, band) = (item / bands.count, item % bands.count);
        let image = &images[n * image_stride..][..image_len];
        bands.fill(shape, product, band, image, image_layout, copy);
        let oy0 = band * bands.rows;
        let rows = bands.rows.min(oh - oy0);
        let part_groups = weights_packed
            .chunks(2 * BLOCK * k)
            .enumerate()
            .skip(part * groups_per_part)
            .take(groups_per_part);
        for (g, weights) in part_groups {
            let mut oy = oy0;
            while oy < oy0 + rows {
                let tile_rows = two_rows.min(oy0 + rows - oy);
                let lanes = weights.len() / k;
                let live = live_steps.get(oy).and_then(Option::as_ref);
                let oc0 = g * 2 * BLOCK;
                let store = TileStore {
                    c: out.c.get(),
                    out: out.out,
                    layout: out.layout,
                    image: n * out.stride,
                    channel: oc0,
                    pixel: oy * ow,
                    ldc: out.ldc,
                    row_bias: row_bias.map(|b| b[oc0..].as_ptr()),
                    relu,
                    residual: out.residual.map(|r| Residual {
                        at: r.get().cast_const(),
                        layout: out.residual_layout,
                    }),
                };
                let row_copy = (oy - oy0) * sh * bands.width * layout.lanes();
                if pixel_rows {
                    debug_assert_eq!(tile_rows, 1);
                    // SAFETY: as for `tile` below, the tiles' pixels being the
                    // row's `ow` and its lanes the group's.
                    unsafe {
                        row_tiles(ow, live, offs, weights, copy[row_copy..].as_ptr(), &store)
                    };
                    oy += 1;
                    continue;
                }
                for ox in (0..ow).step_by(PIXELS) {
                    let px = TilePixels {
                        row: PIXELS.min(ow - ox),
                        rows: tile_rows,
                        row_lanes,
                    };
                    let b = copy[row_copy + ox * layout.lanes()..].as_ptr();
                    // SAFETY: the copy holds `copy_rows` rows of `width` pixels per
                    // channel block, so every tap of the tile's pixels (offs[p] + the
                    // pixel's offset: row (oy + r - oy0) * sh + ki * dh for its tile row
                    // r < tile_rows, phase pixel ox + q + kj * dw / sw < phases.len) lies
                    // in it; `weights` holds k steps of `lanes`; the output rows
                    // oc0.. +lanes, columns oy*ow+ox.. + row * rows (two rows only
                    // where ox = 0 and row = ow, so consecutive), lie in image n's
                    // output; avx512_core is the caller's contract.
                    unsafe {
                        tile(
                            product,
                            layout,
                            lanes,
                            px,
                            live,
                            offs,
                            Weights {
                                at: weights.as_ptr(),
                                step: lanes,
                            },
                            b,
                            &store.at(ox),
                        )
                    };
                }
                oy += tile_rows;
            }
        }
    });
    if prepacked.is_none() {
        put_buf(&PACKED_WEIGHTS, packed);
    }
}

/// Channels (f32) or channel pairs (Bf16Dot, the last one half zero past
/// an odd count) that `in_channels` make: a copy's units and, times the
/// taps, the k steps.
fn steps(in_channels: usize, product: Product) -> usize {
    in_channels.div_ceil(product.channels_per_lane())
}

/// Work items per thread below which a convolution's groups of output
/// channels are split into parts as well as its bands (2 and 4 measured
/// the same in f32; 4 was 2% slower with bf16 pairs, whose copies cost more
/// per FLOP).
const ITEMS_PER_THREAD: usize = 2;

/// Steps [`pack_weights`] gathers lane by lane at a time (16 rows of them
/// on the stack) where weight rows are not read as vectors.
const PACK_STEPS: usize = 256;

thread_local! {
    /// The calling thread's packed weights, kept between calls: a fresh
    /// buffer per call page-faulted and zeroed 9 MiB for 512 channels, 3x3.
    static PACKED_WEIGHTS: std::cell::Cell<Vec<u32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Packs the `m x k` weights `w` (k in the im2col order, `taps` per
/// channel) for the tiles: groups of 32 output channels (16 for an odd
/// last block), group `g` at `g * 32 * k`, each k step's weights
/// consecutive as 32-bit lanes, the f32 bits or, for
/// [`Product::Bf16Dot`] (`T` bf16), the pair of channels `2u`, `2u + 1`
/// at the step's tap (`x[2u]` in the low half; the high half zero past an
/// odd channel count). Each 16 output channels'
/// lanes are read along their rows and turned into steps by 16 x 16
/// transposes: element by element, packing 512 x 4608 weights took as
/// long as the tiles of a 7 x 7 image.
///
/// # Safety
/// `packed` holds exactly `m * k` lanes (k the k steps: one group per 32
/// output channels is read from `w`), `m` a multiple of 16; `BT` is T's tag;
/// the CPU supports AVX-512 F/BW/VL.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn pack_weights<const BT: u8, T: Element>(
    w: &MatRef<T>,
    product: Product,
    taps: usize,
    packed: &mut [u32],
) {
    let k = steps(w.cols / taps, product) * taps;
    let mut lanes_by_row = [[0u32; PACK_STEPS]; BLOCK];
    for (g, group) in packed.chunks_mut(2 * BLOCK * k).enumerate() {
        let lanes = group.len() / k;
        // Row r of `rows` holds channel g * 32 + jb + r's lanes for steps
        // q0..q0 + n.
        let mut store = |jb: usize, q0: usize, n: usize, rows: [__m512; BLOCK]| {
            for (q, c) in transpose16(rows).iter().take(n).enumerate() {
                let at = (q0 + q) * lanes + jb;
                let dst = &mut group[at..at + BLOCK];
                // SAFETY: dst holds 16 lanes.
                unsafe { _mm512_storeu_ps(dst.as_mut_ptr().cast(), *c) };
            }
        };
        for jb in (0..lanes).step_by(BLOCK) {
            let i0 = g * 2 * BLOCK + jb;
            if product == Product::Fma && w.cs == 1 {
                for q0 in (0..k).step_by(BLOCK) {
                    let n = BLOCK.min(k - q0);
                    let mask = u16::MAX >> (BLOCK - n);
                    let mut rows = [_mm512_setzero_ps(); BLOCK];
                    for (r, x) in rows.iter_mut().enumerate() {
                        // SAFETY: row i0 + r holds k elements from its start, so
                        // the n masked lanes from q0 are readable.
                        *x = unsafe {
                            load16::<BT>(w.data.as_ptr().add((i0 + r) * w.rs + q0).cast(), mask)
                        };
                    }
                    store(jb, q0, n, rows);
                }
                continue;
            }
            for p0 in (0..k).step_by(PACK_STEPS) {
                let steps = PACK_STEPS.min(k - p0);
                gather_lanes(w, product, taps, i0, p0, steps, &mut lanes_by_row);
                for q0 in (0..steps).step_by(BLOCK) {
                    let mut rows = [_mm512_setzero_ps(); BLOCK];
                    for (x, lane_row) in rows.iter_mut().zip(&lanes_by_row) {
                        // SAFETY: q0 + 16 <= PACK_STEPS (a multiple of 16); lanes past
                        // `steps` are stale and never stored.
                        *x = unsafe { _mm512_loadu_ps(lane_row.as_ptr().add(q0).cast()) };
                    }
                    store(jb, p0 + q0, BLOCK.min(steps - q0), rows);
                }
            }
        }
    }
}

/// The lanes of output channels `i0..i0 + 16` for steps `p0..p0 + steps`
/// one by one, as [`pack_weights`] lays them out: step by step across the
/// 16 rows, whose loads are then independent (row by row, each waited for
/// the previous line).
#[inline(always)]
fn gather_lanes<T: Element>(
    w: &MatRef<T>,
    product: Product,
    taps: usize,
    i0: usize,
    p0: usize,
    steps: usize,
    out: &mut [[u32; PACK_STEPS]; BLOCK],
) {
    let bits = |i: usize, kk: usize| w.at(i, kk).to_f32().to_bits();
    let (mut u, mut tap) = (p0 / taps, p0 % taps);
    for q in 0..steps {
        for (r, lane_row) in out.iter_mut().enumerate() {
            lane_row[q] = match product {
                Product::Fma => bits(i0 + r, p0 + q),
                // T is bf16, whose bits are the top half of the f32's: lane
                // (u, tap) is channel 2u's weight at the tap in the low half
                // and channel 2u + 1's (taps further along; zero past an odd
                // channel count) in the high half.
                Product::Bf16Dot => {
                    let at = 2 * u * taps + tap;
                    let high = if at + taps < w.cols {
                        bits(i0 + r, at + taps) & 0xFFFF_0000
                    } else {
                        0
                    };
                    (bits(i0 + r, at) >> 16) | high
                }
            };
        }
        tap += 1;
        if tap == taps {
            (u, tap) = (u + 1, 0);
        }
    }
}

/// Where a tile's results go: the tile's output channel `j` and pixel `p`
/// are channel `channel + j` (`channel` a multiple of 16) and pixel
/// `pixel + p` of the image at element `image` of `c`, of type `out`, laid
/// out by `layout`: at `(channel + j) * ldc + pixel + p` from it in NCHW.
#[derive(Clone, Copy)]
struct TileStore {
    c: *mut u8,
    out: FloatType,
    layout: ChannelLayout,
    image: usize,
    channel: usize,
    pixel: usize,
    ldc: usize,
    row_bias: Option<*const f32>,
    relu: bool,
    /// As [`Output::residual`].
    residual: Option<Residual>,
}

/// A tile's residual: at the output's offsets in `layout`.
#[derive(Clone, Copy)]
struct Residual {
    at: *const f32,
    layout: ChannelLayout,
}

impl TileStore {
    /// Asks for the output lines of the tile's `lanes` channels and
    /// `pixels` pixels into L2 before its k loop: the batch's output is
    /// not in the cache, and each channel's partial line would otherwise be
    /// read for ownership while the store waits.
    #[inline(always)]
    fn prefetch(&self, lanes: usize, pixels: usize) {
        match self.out {
            FloatType::F32 => self.prefetch_lines(self.c.cast::<f32>(), self.layout, lanes, pixels),
            _ => self.prefetch_lines(self.c.cast::<u16>(), self.layout, lanes, pixels),
        }
        if let Some(r) = self.residual {
            self.prefetch_lines(r.at, r.layout, lanes, pixels);
        }
    }

    /// [`Self::prefetch`] for the elements of `c` at the tile's offsets in
    /// `layout`.
    #[inline(always)]
    fn prefetch_lines<T>(&self, c: *const T, layout: ChannelLayout, lanes: usize, pixels: usize) {
        if layout == ChannelLayout::Nchw {
            prefetch_tile_output(
                c,
                self.ldc,
                (0, self.offset_in(layout, 0, 0)),
                lanes,
                pixels,
            );
            return;
        }
        // Each 16 channels' pixels are one run of `pixels` lines (one more
        // where unaligned).
        for j in (0..lanes).step_by(BLOCK) {
            let at = self.offset_in(layout, j, 0);
            for q in (0..pixels * BLOCK)
                .step_by(BLOCK)
                .chain([pixels * BLOCK - 1])
            {
                prefetch_l2(c.wrapping_add(at + q));
            }
        }
    }

    /// The element offset of the tile's channel `j` at pixel `p` in the
    /// output.
    #[inline(always)]
    fn offset(&self, j: usize, p: usize) -> usize {
        self.offset_in(self.layout, j, p)
    }

    /// [`Self::offset`] in `layout`.
    #[inline(always)]
    fn offset_in(&self, layout: ChannelLayout, j: usize, p: usize) -> usize {
        match layout {
            ChannelLayout::Nchw => self.image + (self.channel + j) * self.ldc + self.pixel + p,
            ChannelLayout::Nchw16c => {
                let block = self.channel + j / BLOCK * BLOCK;
                self.image + block * self.ldc + (self.pixel + p) * BLOCK + j % BLOCK
            }
        }
    }

    /// The same channels, `ox` pixels further.
    fn at(&self, ox: usize) -> TileStore {
        TileStore {
            pixel: self.pixel + ox,
            ..*self
        }
    }

    /// The same pixels from channel `first` of the tile's on.
    fn channels(&self, first: usize) -> TileStore {
        TileStore {
            channel: self.channel + first,
            row_bias: self.row_bias.map(|b| b.wrapping_add(first)),
            ..*self
        }
    }
}

/// A tile's pixels: `rows` output rows (1, or 2 where `row <= PIXELS / 2`
/// is the output's width) of `row` pixels each, the second row's values
/// `row_lanes` lanes past the first's in the copy.
#[derive(Clone, Copy)]
struct TilePixels {
    row: usize,
    rows: usize,
    row_lanes: usize,
}

/// The k steps of one output row whose kernel rows read inside the image,
/// as (offset into the copy, k step) pairs: a one-row tile at the image's
/// top or bottom edge runs only these (f32 FMAs, finite weights), as
/// onnxruntime's NCHWc kernels skip those rows.
///
/// A skipped step is `fma(w, +0, acc)`, which is `acc + z` exactly, `z`
/// being the zero of `w`'s sign (`w` finite: an infinite or NaN weight
/// times zero is NaN, so weights with one skip nothing). Adding a zero
/// changes only a zero accumulator (`-0 + +0` is `+0`), and an FMA maps
/// accumulators of `+0` and `-0` to the same value unless its product is a
/// zero too, so a chain without the skipped steps ends in the full chain's
/// bits except where it ends at `-0` and the full one at `+0`: a tile whose
/// accumulators end nonzero has the GEMM's bits, and a tile with a zero
/// one is computed again over all of k. A 3x3 kernel's edge rows skip a
/// third of their FMAs.
struct LiveSteps(Vec<[usize; 2]>);

impl LiveSteps {
    /// Each output row's live steps (`None` where every step reads the
    /// image), `offs` being the k steps' offsets in im2col order.
    fn by_row(shape: &Conv2dShape, offs: &[usize]) -> Vec<Option<LiveSteps>> {
        let [kh, kw] = shape.kernel;
        let (dh, h, pad) = (shape.dilation[0], shape.in_size[0], shape.pad_begin[0]);
        (0..shape.out_size[0])
            .map(|oy| {
                // Kernel row ki reads padded row top + ki * dh, inside the
                // image where pad <= that < pad + h.
                let top = oy * shape.stride[0];
                let live = |ki: &usize| (pad..pad + h).contains(&(top + ki * dh));
                if (0..kh).all(|ki| live(&ki)) {
                    return None;
                }
                let steps = offs
                    .iter()
                    .enumerate()
                    .filter(|(p, _)| live(&(p / kw % kh)));
                Some(LiveSteps(steps.map(|(p, &off)| [off, p]).collect()))
            })
            .collect()
    }
}

/// A tile's packed weights: k step `p`'s lanes start at `at + p * step`
/// (`step` being the group's lanes, of which a [`row_tiles`] tile reads
/// [`ROW_CHANNELS`]).
#[derive(Clone, Copy)]
struct Weights {
    at: *const u32,
    step: usize,
}

/// Computes and stores one tile of `lanes` (16 or 32) output channels by
/// the pixels `px` gives (1 to [`PIXELS`]), over the `live` k steps only
/// where they are given ([`LiveSteps`]).
///
/// # Safety
/// `w` holds `offs.len()` k steps of `w.step >= lanes` 32-bit lanes (f32,
/// or bf16 pairs for [`Product::Bf16Dot`]), the tile reading the first
/// `lanes` of each; for every k step `p` and pixel
/// `q < px.row * px.rows`, `b + offs[p] + (q % px.row) * layout.lanes() +
/// (q / px.row) * px.row_lanes` is readable; the store's `lanes` rows of
/// `px.row * px.rows` elements are writable and its bias holds `lanes`
/// f32; the CPU supports AVX-512 F/BW/VL (and BF16/DQ for
/// [`Product::Bf16Dot`]). `live`, when given, is for [`Product::Fma`],
/// one row of pixels and weights that are all finite, and holds steps of
/// `offs` with their offsets.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tile(
    product: Product,
    layout: CopyLayout,
    lanes: usize,
    px: TilePixels,
    live: Option<&LiveSteps>,
    offs: &[usize],
    w: Weights,
    b: *const f32,
    store: &TileStore,
) {
    // (pixels, pixels per row): one row of 1 to 14, or two rows of 1 to 7.
    macro_rules! go {
        ($kernel:ident, $v:literal, $s:expr) => {
            go!(@ $kernel, $v, $s,
                (1, 1) (2, 2) (3, 3) (4, 4) (5, 5) (6, 6) (7, 7) (8, 8) (9, 9) (10, 10)
                (11, 11) (12, 12) (13, 13) (14, 14)
                (2, 1) (4, 2) (6, 3) (8, 4) (10, 5) (12, 6) (14, 7))
        };
        (@ $kernel:ident, $v:literal, $s:expr, $(($p:literal, $r:literal))*) => {
            match (px.row * px.rows, px.row) {
                // SAFETY: forwarded from the caller's contract.
                $(($p, $r) => unsafe {
                    $kernel::<$p, $v, $s, $r>(live, offs, w, b, px.row_lanes, store)
                },)*
                _ => unreachable!("tile of {} x {} pixels", px.rows, px.row),
            }
        };
    }
    match (product, layout, lanes == 2 * BLOCK) {
        (Product::Fma, CopyLayout::Blocked, true) => go!(tile_kernel, 2, BLOCK),
        (Product::Fma, CopyLayout::Blocked, false) => go!(tile_kernel, 1, BLOCK),
        (Product::Fma, CopyLayout::Planar, true) => go!(tile_kernel, 2, 1),
        (Product::Fma, CopyLayout::Planar, false) => go!(tile_kernel, 1, 1),
        (Product::Bf16Dot, CopyLayout::Blocked, true) => go!(tile_kernel_dot, 2, BLOCK),
        (Product::Bf16Dot, CopyLayout::Blocked, false) => go!(tile_kernel_dot, 1, BLOCK),
        (Product::Bf16Dot, CopyLayout::Planar, true) => go!(tile_kernel_dot, 2, 1),
        (Product::Bf16Dot, CopyLayout::Planar, false) => go!(tile_kernel_dot, 1, 1),
    }
}

/// [`tile`] for `P` pixels in rows of `R` and `V` vectors of 16 channels,
/// f32 FMAs, the copy's pixels `S` lanes apart (its
/// [`CopyLayout::lanes`]) and its rows `row_lanes` apart.
///
/// # Safety
/// As [`tile`] with `px.row * px.rows = P`, `px.row = R`, `lanes = 16 *
/// V`, `S = layout.lanes()`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn tile_kernel<const P: usize, const V: usize, const S: usize, const R: usize>(
    live: Option<&LiveSteps>,
    offs: &[usize],
    w: Weights,
    b: *const f32,
    row_lanes: usize,
    store: &TileStore,
) {
    store.prefetch(V * BLOCK, P);
    let all = || offs.iter().enumerate().map(|(p, &off)| [off, p]);
    // SAFETY: every address is in bounds by the caller's contract, which
    // also makes `live` a part of `offs`.
    unsafe {
        let acc = match live {
            None => fma_steps::<P, V, S, R>(all(), w, b, row_lanes),
            Some(live) => {
                let acc = fma_steps::<P, V, S, R>(live.0.iter().copied(), w, b, row_lanes);
                if any_zero(&acc) {
                    fma_steps::<P, V, S, R>(all(), w, b, row_lanes)
                } else {
                    acc
                }
            }
        };
        finish_tile(&acc, store);
    }
}

/// [`tile_kernel`]'s accumulators over the k steps `steps` gives as
/// (offset, step), from zero. They are returned by value: through a
/// reference to the caller's, the compiler stored every accumulator back
/// to the stack at each step.
///
/// # Safety
/// As [`tile_kernel`] for those steps.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn fma_steps<const P: usize, const V: usize, const S: usize, const R: usize>(
    steps: impl Iterator<Item = [usize; 2]>,
    w: Weights,
    b: *const f32,
    row_lanes: usize,
) -> [[__m512; V]; P] {
    let mut acc = [[_mm512_setzero_ps(); V]; P];
    let (w, w_step) = (w.at.cast::<f32>(), w.step);
    // SAFETY: every address is in bounds by the caller's contract.
    unsafe {
        for [off, p] in steps {
            let wp = w.add(p * w_step);
            let mut wv = [_mm512_setzero_ps(); V];
            for (v, x) in wv.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(wp.add(BLOCK * v));
            }
            let bp = b.add(off);
            for (q, row) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*bp.add(q % R * S + q / R * row_lanes));
                for (a, &wx) in row.iter_mut().zip(&wv) {
                    *a = _mm512_fmadd_ps(wx, x, *a);
                }
            }
        }
    }
    acc
}

/// One output row of a convolution over planes ([`CopyLayout::Planar`],
/// f32 FMAs) with an NCHW output of f32 or f16 and its residual, if any,
/// NCHW: `ow` (a multiple of 16) pixels by the group's channels, in tiles
/// of up to [`ROW_VECTORS`] vectors of 16 pixels by [`ROW_CHANNELS`]
/// channels (seven vectors go as three and four). Each lane runs the chain
/// of the other tiles, `fma(weight, pixel, acc)` over the k steps from
/// zero, the vector holding pixels where theirs holds channels.
///
/// # Safety
/// `weights` holds `offs.len()` k steps of the group's lanes (a multiple of
/// [`ROW_CHANNELS`]); for every k step `p` and pixel `q < ow`,
/// `b + offs[p] + q` is readable; the store's output rows of the group's
/// channels and `ow` pixels are writable (a residual's readable) and its
/// bias holds the group's lanes; `live` as for [`tile`]; the CPU supports
/// AVX-512 F/BW/VL.
#[inline(always)]
unsafe fn row_tiles(
    ow: usize,
    live: Option<&LiveSteps>,
    offs: &[usize],
    weights: &[u32],
    b: *const f32,
    store: &TileStore,
) {
    let lanes = weights.len() / offs.len();
    let vectors = ow / BLOCK;
    let tiles = vectors.div_ceil(ROW_VECTORS);
    let mut v0 = 0;
    for t in 0..tiles {
        let n = (vectors - v0) / (tiles - t);
        for first in (0..lanes).step_by(ROW_CHANNELS) {
            let w = Weights {
                at: weights[first..].as_ptr(),
                step: lanes,
            };
            let (b, store) = (
                b.wrapping_add(v0 * BLOCK),
                store.at(v0 * BLOCK).channels(first),
            );
            macro_rules! go {
                ($($n:literal)*) => {
                    match n {
                        // SAFETY: the tile's pixels v0 * 16.. + n * 16 and channels
                        // first.. + ROW_CHANNELS lie in the row's and the group's
                        // (the caller's contract).
                        $($n => unsafe { row_tile::<$n>(live, offs, w, b, &store) },)*
                        _ => unreachable!("{n} vectors in a row tile"),
                    }
                };
            }
            go!(1 2 3 4);
        }
        v0 += n;
    }
}

/// One [`row_tiles`] tile of `V` vectors of 16 pixels.
///
/// # Safety
/// For every k step `p`, `w.at + p * w.step` holds [`ROW_CHANNELS`] f32
/// weights and `b + offs[p]` `16 * V` f32 pixels; the store's
/// [`ROW_CHANNELS`] NCHW output rows of `16 * V` pixels are writable (a
/// residual's readable) and its bias holds [`ROW_CHANNELS`] f32; `live` as
/// for [`tile`]; the CPU supports AVX-512 F/BW/VL.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn row_tile<const V: usize>(
    live: Option<&LiveSteps>,
    offs: &[usize],
    w: Weights,
    b: *const f32,
    store: &TileStore,
) {
    debug_assert!(store.layout == ChannelLayout::Nchw && store.out != FloatType::Bf16);
    for c in 0..ROW_CHANNELS {
        // The output lines, as the other tiles prefetch theirs: one per
        // vector (all of an aligned row's; prefetching a misaligned row's
        // last line too measured 4% slower on ResNet's stem).
        for v in 0..V {
            let at = store.offset(c, v * BLOCK);
            match store.out {
                FloatType::F32 => prefetch_l2(store.c.cast::<f32>().wrapping_add(at)),
                _ => prefetch_l2(store.c.cast::<u16>().wrapping_add(at)),
            }
        }
    }
    let all = || offs.iter().enumerate().map(|(p, &off)| [off, p]);
    // SAFETY: every address is in bounds by the caller's contract, which
    // also makes `live` a part of `offs`.
    unsafe {
        let acc = match live {
            None => row_fma_steps::<V>(all(), w, b),
            Some(live) => {
                let acc = row_fma_steps::<V>(live.0.iter().copied(), w, b);
                if any_zero(&acc) {
                    row_fma_steps::<V>(all(), w, b)
                } else {
                    acc
                }
            }
        };
        // With a residual the ReLU comes after it, as in `finish_tile`.
        let relu_first = store.relu && store.residual.is_none();
        for (c, row) in acc.iter().enumerate() {
            let bias = store.row_bias.map(|r| _mm512_set1_ps(*r.add(c)));
            for (v, &a) in row.iter().enumerate() {
                let at = store.offset(c, v * BLOCK);
                let mut x = bias_relu(a, bias, relu_first);
                if let Some(r) = store.residual {
                    let sum = _mm512_add_ps(x, _mm512_loadu_ps(r.at.add(at)));
                    x = bias_relu(sum, None, store.relu);
                }
                match store.out {
                    FloatType::F32 => _mm512_storeu_ps(store.c.cast::<f32>().add(at), x),
                    _ => _mm256_storeu_si256(
                        store.c.cast::<u16>().add(at).cast(),
                        _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x),
                    ),
                }
            }
        }
    }
}

/// [`row_tile`]'s accumulators over the k steps `steps` gives as
/// (offset, step), from zero, returned by value as [`fma_steps`]' are.
///
/// # Safety
/// As [`row_tile`] for those steps.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn row_fma_steps<const V: usize>(
    steps: impl Iterator<Item = [usize; 2]>,
    w: Weights,
    b: *const f32,
) -> [[__m512; V]; ROW_CHANNELS] {
    let mut acc = [[_mm512_setzero_ps(); V]; ROW_CHANNELS];
    let (w, w_step) = (w.at.cast::<f32>(), w.step);
    // SAFETY: every address is in bounds by the caller's contract.
    unsafe {
        for [off, p] in steps {
            let wp = w.add(p * w_step);
            let mut wc = [_mm512_setzero_ps(); ROW_CHANNELS];
            for (c, x) in wc.iter_mut().enumerate() {
                *x = _mm512_set1_ps(*wp.add(c));
            }
            let bp = b.add(off);
            for v in 0..V {
                let x = _mm512_loadu_ps(bp.add(BLOCK * v));
                for (row, &wc) in acc.iter_mut().zip(&wc) {
                    row[v] = _mm512_fmadd_ps(wc, x, row[v]);
                }
            }
        }
    }
    acc
}

/// Whether some accumulator lane is +0 or -0.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn any_zero<const P: usize, const V: usize>(acc: &[[__m512; V]; P]) -> bool {
    let zero = _mm512_setzero_ps();
    acc.iter()
        .flatten()
        .any(|&a| _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(a, zero) != 0)
}

/// [`tile`] for `P` pixels and `V` vectors of 16 channels, `VDPBF16PS` on
/// channel pairs: per lane the instruction of the Bf16Dot GEMM's tile with
/// its operands' roles swapped (weights the vector, the image pair the
/// broadcast), whose two products and sum are the same; pixels in rows of
/// `R`, the copy's pixels `S` lanes apart and its rows `row_lanes`.
///
/// # Safety
/// As [`tile`] with `px.row * px.rows = P`, `px.row = R`, `lanes = 16 *
/// V`, `S = layout.lanes()`, and the CPU supports
/// AVX-512 BF16 and DQ.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")]
unsafe fn tile_kernel_dot<const P: usize, const V: usize, const S: usize, const R: usize>(
    live: Option<&LiveSteps>,
    offs: &[usize],
    w: Weights,
    b: *const f32,
    row_lanes: usize,
    store: &TileStore,
) {
    debug_assert!(live.is_none(), "pairs run every k step");
    let (w, w_step) = (w.at, w.step);
    let mut acc = [[_mm512_setzero_ps(); V]; P];
    store.prefetch(V * BLOCK, P);
    let b = b.cast::<i32>();
    // SAFETY: every address is in bounds by the caller's contract;
    // __m512bh and __m512i are both 512 plain bits.
    unsafe {
        for (p, &off) in offs.iter().enumerate() {
            let wp = w.add(p * w_step);
            let mut wv: [__m512bh; V] = std::mem::zeroed();
            for (v, x) in wv.iter_mut().enumerate() {
                *x = std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                    wp.add(BLOCK * v).cast(),
                ));
            }
            let bp = b.add(off);
            for (q, row) in acc.iter_mut().enumerate() {
                let x: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*bp.add(q % R * S + q / R * row_lanes)));
                for (a, &wx) in row.iter_mut().zip(&wv) {
                    *a = _mm512_dpbf16_ps(*a, wx, x);
                }
            }
        }
        finish_tile(&acc, store);
    }
}

/// The epilogue of a tile from its registers: `relu?(acc + row_bias)`
/// ([`bias_relu`], the general epilogue's bits), then transposed (the
/// output is NCHW), with a residual `relu?((acc + row_bias) + residual)`
/// (an NCHW residual's `P` pixels loaded per channel after the transpose,
/// an NCHW16c one's 16 channels per pixel before it), and stored per
/// channel with one masked store of `P` pixels, rounded to f16 with
/// `VCVTPS2PH` or to bf16 with the conversion's own `VCVTNE2PS2BF16` and
/// subnormal patch, as the GEMM's stores round. An NCHW16c output (f32) is
/// stored from the registers as they are, a pixel's 16 channels per store
/// ([`finish_blocked_tile`]): the same sums, no transposes.
///
/// # Safety
/// As [`tile`]'s store; bf16 output only at `avx512_core_bf16` and up.
#[inline(always)]
unsafe fn finish_tile<const P: usize, const V: usize>(acc: &[[__m512; V]; P], store: &TileStore) {
    let lanes = u16::MAX >> (BLOCK - P);
    // With a residual the ReLU comes after it.
    let relu_first = store.relu && store.residual.is_none();
    if store.layout == ChannelLayout::Nchw16c {
        // SAFETY: as below; the output is f32 (`run`'s contract).
        unsafe { return finish_blocked_tile(acc, store, relu_first) };
    }
    // SAFETY: the store's elements are writable and a residual's readable
    // (the caller's contract), the caller has AVX-512 F/BW/VL, and bf16
    // output implies AVX512_BF16.
    unsafe {
        for v in 0..V {
            let bias = store.row_bias.map(|r| _mm512_loadu_ps(r.add(BLOCK * v)));
            let mut rows = [_mm512_setzero_ps(); BLOCK];
            for (x, row) in rows.iter_mut().zip(acc) {
                *x = bias_relu(row[v], bias, relu_first);
            }
            if let Some(r) = store.residual
                && r.layout == ChannelLayout::Nchw16c
            {
                let at = r.at.add(store.offset_in(r.layout, v * BLOCK, 0));
                for (q, x) in rows.iter_mut().take(P).enumerate() {
                    let sum = _mm512_add_ps(*x, _mm512_loadu_ps(at.add(q * BLOCK)));
                    *x = bias_relu(sum, None, store.relu);
                }
            }
            // Channel j of the 16 at `first + j * ldc`.
            let first = store.offset(v * BLOCK, 0);
            for (j, &c) in transpose16(rows).iter().enumerate() {
                let at = first + j * store.ldc;
                let c = match store.residual {
                    Some(r) if r.layout == ChannelLayout::Nchw => {
                        // The residual element sits at the output's offset.
                        let sum = _mm512_add_ps(c, _mm512_maskz_loadu_ps(lanes, r.at.add(at)));
                        bias_relu(sum, None, store.relu)
                    }
                    _ => c,
                };
                let half = match store.out {
                    FloatType::F32 => {
                        _mm512_mask_storeu_ps(store.c.cast::<f32>().add(at), lanes, c);
                        continue;
                    }
                    FloatType::F16 => _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(c),
                    FloatType::Bf16 => _mm512_castsi512_si256(crate::convert::bf16_x32(c, c)),
                };
                _mm256_mask_storeu_epi16(store.c.cast::<u16>().add(at).cast(), lanes, half);
            }
        }
    }
}

/// [`finish_tile`] for an NCHW16c f32 output: each pixel's 16 channels
/// `relu?(acc + row_bias)`, or with a residual `relu?((acc + row_bias) +
/// residual)` (an NCHW residual's `P` pixels loaded per channel and
/// transposed), stored as one vector.
///
/// # Safety
/// As [`finish_tile`], the output f32.
#[inline(always)]
unsafe fn finish_blocked_tile<const P: usize, const V: usize>(
    acc: &[[__m512; V]; P],
    store: &TileStore,
    relu_first: bool,
) {
    debug_assert!(store.out == FloatType::F32);
    // SAFETY: the store's elements are writable and a residual's readable
    // (the caller's contract), the caller has AVX-512 F/BW/VL.
    unsafe {
        let lanes = u16::MAX >> (BLOCK - P);
        for v in 0..V {
            let bias = store.row_bias.map(|r| _mm512_loadu_ps(r.add(BLOCK * v)));
            // An NCHW residual's pixels, one vector of 16 channels each.
            let mut planar = [_mm512_setzero_ps(); BLOCK];
            if let Some(r) = store.residual
                && r.layout == ChannelLayout::Nchw
            {
                for (j, x) in planar.iter_mut().enumerate() {
                    let at = r.at.add(store.offset_in(r.layout, v * BLOCK + j, 0));
                    *x = _mm512_maskz_loadu_ps(lanes, at);
                }
                planar = transpose16(planar);
            }
            for (q, row) in acc.iter().enumerate() {
                let at = store.offset(v * BLOCK, q);
                let mut x = bias_relu(row[v], bias, relu_first);
                if let Some(r) = store.residual {
                    let residual = match r.layout {
                        ChannelLayout::Nchw => planar[q],
                        ChannelLayout::Nchw16c => _mm512_loadu_ps(r.at.add(at)),
                    };
                    x = bias_relu(_mm512_add_ps(x, residual), None, store.relu);
                }
                _mm512_storeu_ps(store.c.cast::<f32>().add(at), x);
            }
        }
    }
}
