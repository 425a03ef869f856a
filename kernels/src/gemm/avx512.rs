//! AVX-512 micro-kernels (levels `avx512_core` and up).
//!
//! * `tile`: an `MR x (16 * NV)` register tile, `acc[i][v] += a[i] * b[v]`
//!   with `vfmadd231ps zmm` and A broadcast from the packed A panel, one FMA
//!   chain per element in increasing k. B rows are read from `b + p * b_rs`
//!   and widened in-register when they are bf16 (`vpmovzxwd` + shift, exact)
//!   or f16 (`vcvtph2ps`, exact). The large-m path calls it with f32 B panels
//!   (14 x 32 tile); the small-m path calls it straight on bf16/f16 weights
//!   so they stream at half the bytes.
//! * `dot_tile`: small m against column-contiguous B (`[out, in]` weights):
//!   16-lane partial sums over k per (row, column), reduced at the end.
//!
//! Callers must have checked the level with `Isa::require` (see `gemm::run`).

use std::arch::x86_64::*;

use super::driver::{BF16, F16, F32, dispatch_axpy_rows, prefetch_l2, tag};
use super::pack::KC;
use crate::element::FloatType;

/// Rows of the large-m register tile.
pub(super) const MR: usize = 14;
/// Columns handled by one small-m tile call (four zmm).
pub(super) const SMALL_COLS: usize = 64;

/// Lanes `0..cols - 16 * v` of vector `v`, clamped to 0..=16.
#[inline(always)]
fn lane_mask(cols: usize, v: usize) -> u16 {
    let left = cols.saturating_sub(16 * v);
    if left >= 16 {
        0xFFFF
    } else {
        ((1u32 << left) - 1) as u16
    }
}

/// Rounds `cols` f32 at `src` to f16 bits at `dst` with `VCVTPS2PH`
/// (round to nearest even), the instruction and bits of the f16
/// conversion's AVX-512 path. Inline in the AVX-512 epilogue's stores: a
/// call into the conversion per row of a 32-column tile cost about 4% of an
/// f16 512x768x768 GEMM.
///
/// # Safety
/// `src` holds `cols` f32 and `dst` `cols` u16; the CPU supports AVX-512
/// F/BW/VL.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn f32_to_f16_row(src: *const f32, dst: *mut u16, cols: usize) {
    for v in 0..cols.div_ceil(16) {
        let lanes = lane_mask(cols, v);
        // SAFETY: the lanes in `lanes` lie within both buffers (caller's
        // contract); masked-off lanes are not accessed.
        unsafe {
            let x = _mm512_maskz_loadu_ps(lanes, src.add(16 * v));
            let h = _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x);
            _mm256_mask_storeu_epi16(dst.add(16 * v).cast(), lanes, h);
        }
    }
}

/// Loads 16 elements of type `BT` at element pointer `p` (lanes outside `mask`
/// are zero and not read) and widens them to f32.
///
/// # Safety
/// The lanes in `mask` must be readable.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn load16<const BT: u8>(p: *const u8, mask: u16) -> __m512 {
    // SAFETY: the caller guarantees the masked lanes are readable; masked-off
    // lanes are not accessed by these instructions.
    unsafe {
        match BT {
            F32 => {
                if mask == 0xFFFF {
                    _mm512_loadu_ps(p.cast())
                } else {
                    _mm512_maskz_loadu_ps(mask, p.cast())
                }
            }
            BF16 => {
                let h = _mm256_maskz_loadu_epi16(mask, p.cast());
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
            }
            _ => _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, p.cast())),
        }
    }
}

/// `out[i][0..16*NV] (+)= sum_p a[i*AI + p*AP] * b[p*b_rs + 0..16*NV]`, `p < kc`.
///
/// A is either interleaved (`AI = 1, AP = MR_`, the small-m path) or a
/// row-major block with row stride `KC` (`AI = KC, AP = 1`, the large-m path,
/// whose packing is then plain row copies); both strides are constants, so
/// the broadcasts use immediate displacements.
///
/// # Safety
/// `a` holds the `MR_ x kc` block at those strides; for each `p < kc` the first `cols` elements (of
/// type `BT`) at `b + p * b_rs` are readable; `out` rows `i < MR` at stride
/// `ldo` hold `16 * NV` f32 (read when `load`).
#[inline]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
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
    let mut masks = [0u16; NV];
    for (v, m) in masks.iter_mut().enumerate() {
        *m = lane_mask(cols, v);
    }
    let mut acc = [[_mm512_setzero_ps(); NV]; MR_];
    // SAFETY: all pointer arithmetic stays within the extents the caller guarantees.
    unsafe {
        if load {
            for (i, row) in acc.iter_mut().enumerate() {
                for (v, x) in row.iter_mut().enumerate() {
                    *x = _mm512_loadu_ps(out.add(i * ldo + 16 * v));
                }
            }
        }
        let mut ap = a;
        let mut bp = b;
        for _ in 0..kc {
            let mut bv = [_mm512_setzero_ps(); NV];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = load16::<BT>(bp.add(16 * v * size), masks[v]);
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = _mm512_set1_ps(*ap.add(i * AI));
                for (v, x) in row.iter_mut().enumerate() {
                    *x = _mm512_fmadd_ps(ai, bv[v], *x);
                }
            }
            ap = ap.add(AP);
            bp = bp.add(b_rs * size);
        }
        for (i, row) in acc.iter().enumerate() {
            for (v, x) in row.iter().enumerate() {
                _mm512_storeu_ps(out.add(i * ldo + 16 * v), *x);
            }
        }
    }
}

/// Large-m tile: `mr <= MR` rows (A row-major at stride `KC`) by 32 columns
/// of a B panel (row stride 32) of element type `bt`: f32, or bf16/f16
/// widened in-register (exact), so a packed bf16/f16 B is read where it lies
/// instead of being widened into an f32 copy per call.
///
/// # Safety
/// As [`tile`] with `cols = 32`, `b_rs = 32` (B of type `bt`), and the CPU
/// supports AVX-512 F/BW/VL.
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
    macro_rules! go {
        ($bt:expr, $($n:literal)*) => {
            match mr {
                // SAFETY: forwarded from the caller's contract.
                $($n => unsafe { tile::<$n, 2, $bt, KC, 1>(kc, a, b, 32, 32, out, ldo, load) },)*
                _ => unreachable!("tile rows {mr} > {MR}"),
            }
        };
    }
    match tag(bt) {
        F32 => go!(F32, 1 2 3 4 5 6 7 8 9 10 11 12 13 14),
        BF16 => go!(BF16, 1 2 3 4 5 6 7 8 9 10 11 12 13 14),
        _ => go!(F16, 1 2 3 4 5 6 7 8 9 10 11 12 13 14),
    }
}

/// Where a convolution tile's B row `p` (32 f32, two vectors) comes from.
pub(super) trait ConvRows: Copy {
    /// Loads B row `p` of the tile whose pixel 0 is at `b`.
    ///
    /// # Safety
    /// The implementor's contract for row `p`, and the CPU supports
    /// AVX-512 F/BW/VL.
    unsafe fn row(self, b: *const f32, p: usize) -> [__m512; 2];
}

/// B row `p` is the 32 f32 at `b + offs[p]` of a band's zero-padded copy.
#[derive(Clone, Copy)]
pub(super) struct Padded(pub *const usize);

impl ConvRows for Padded {
    /// # Safety
    /// `offs[p]` is readable and the 32 f32 at `b + offs[p]` are readable.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn row(self, b: *const f32, p: usize) -> [__m512; 2] {
        // SAFETY: the caller guarantees offs[p] and the 32 f32 are readable
        // (the row's start is formed with wrapping arithmetic, so `b` itself
        // need not lie in the copy).
        unsafe {
            let bp = b.wrapping_add(*self.0.add(p));
            [_mm512_loadu_ps(bp), _mm512_loadu_ps(bp.add(16))]
        }
    }
}

/// One k row of a convolution read from the image in place: its element
/// offset from the pixel, and its kernel tap (which lane mask applies).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(super) struct Tap {
    /// Element offset of the input value under output pixel 0 (may be
    /// negative: the row above, the column left).
    pub offset: isize,
    /// Kernel tap `ki * kw + kj`, an index into the tile's masks.
    pub tap: usize,
}

/// B row `p` read from the image itself: the 32 f32 at `b + taps[p].offset`
/// with the lanes outside the image (padding) zeroed. The masks are
/// `masks[32 * tap..][..32]`, one u32 per lane, all ones or zero.
///
/// The mask is applied with an AND after a plain load. On Zen 4, for an
/// 8x64x56x56 3x3 convolution, a masked load (`vmovups zmm{k}{z}`) ran 8%
/// slower than unmasked loads, merge-masked FMAs 5%, the AND 1-2% (LLVM
/// folds a mask-register select after a plain load back into a masked
/// load).
/// Every load must then be in bounds; near the image's ends
/// [`InPlaceEdge`] reads instead.
#[derive(Clone, Copy)]
pub(super) struct InPlace {
    pub taps: *const Tap,
    pub masks: *const u32,
}

impl ConvRows for InPlace {
    /// # Safety
    /// `taps[p]` and its 32 masks are readable, and so are the 32 f32 at
    /// `b + taps[p].offset`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn row(self, b: *const f32, p: usize) -> [__m512; 2] {
        // SAFETY: the caller guarantees the tap, its masks and the 32 f32
        // are readable. `b` is an output pixel's index in the image, which
        // lies past the image's end when a tall top padding makes every
        // tap's offset negative, so the row's start is formed with wrapping
        // arithmetic (only the loaded values must be in the image).
        unsafe {
            let t = *self.taps.add(p);
            let m = self.masks.add(32 * t.tap);
            let bp = b.wrapping_offset(t.offset);
            // An integer AND: `_mm512_and_ps` needs AVX512DQ.
            let masked = |i: usize| {
                let v = _mm512_castps_si512(_mm512_loadu_ps(bp.add(16 * i)));
                let lanes = _mm512_loadu_si512(m.add(16 * i).cast());
                _mm512_castsi512_ps(_mm512_and_si512(v, lanes))
            };
            [masked(0), masked(1)]
        }
    }
}

/// [`InPlace`] for tiles whose 32-value windows may reach past the image
/// (its first and last rows): masked loads, which touch only the lanes in
/// the image and give zeros for the padding.
#[derive(Clone, Copy)]
pub(super) struct InPlaceEdge(pub InPlace);

impl ConvRows for InPlaceEdge {
    /// # Safety
    /// `taps[p]` and its 32 masks are readable, and every lane whose mask is
    /// set addresses a readable f32 at `b + taps[p].offset + lane`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn row(self, b: *const f32, p: usize) -> [__m512; 2] {
        // SAFETY: the caller guarantees the tap, its masks and the masked-in
        // lanes are readable; masked-off lanes are not accessed, so the
        // address may lie outside the image (it is never dereferenced there).
        unsafe {
            let t = *self.0.taps.add(p);
            let m = self.0.masks.add(32 * t.tap);
            let bp = b.wrapping_offset(t.offset);
            let masked = |i: usize| {
                let lanes = _mm512_loadu_si512(m.add(16 * i).cast());
                let lanes = _mm512_test_epi32_mask(lanes, lanes);
                _mm512_maskz_loadu_ps(lanes, bp.wrapping_add(16 * i))
            };
            [masked(0), masked(1)]
        }
    }
}

/// `out[i][0..32] (+)= sum_p a[i * KC + p] * B_p`, `p < kc`, with `B_p` from
/// `rows`: the [`big_tile`] chain with B row `p` read where the convolution
/// keeps it, so a convolution's B rows come straight from the (padded)
/// image instead of a packed im2col panel.
///
/// # Safety
/// `a` holds the `MR_ x kc` block at row stride `KC`; `rows` can load rows
/// `0..kc` at `b` ([`ConvRows::row`]); `out` rows `i < MR_` at stride `ldo`
/// hold 32 f32 (read when `load`; written unless `finish`, whose contract
/// [`DirectStore::store`] states).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[allow(clippy::too_many_arguments)]
unsafe fn gather_tile<const MR_: usize, R: ConvRows>(
    kc: usize,
    a: *const f32,
    b: *const f32,
    rows: R,
    out: *mut f32,
    ldo: usize,
    load: bool,
    finish: Option<&DirectStore>,
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; MR_];
    // SAFETY: all pointer arithmetic stays within the extents the caller guarantees.
    unsafe {
        if load {
            for (i, row) in acc.iter_mut().enumerate() {
                for (v, x) in row.iter_mut().enumerate() {
                    *x = _mm512_loadu_ps(out.add(i * ldo + 16 * v));
                }
            }
        }
        for p in 0..kc {
            let bv = rows.row(b, p);
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = _mm512_set1_ps(*a.add(i * KC + p));
                for (v, x) in row.iter_mut().enumerate() {
                    *x = _mm512_fmadd_ps(ai, bv[v], *x);
                }
            }
        }
        if let Some(d) = finish {
            d.store(&acc);
            return;
        }
        for (i, row) in acc.iter().enumerate() {
            for (v, x) in row.iter().enumerate() {
                _mm512_storeu_ps(out.add(i * ldo + 16 * v), *x);
            }
        }
    }
}

/// `relu?(x + bias)` on 16 lanes with the general epilogue's operations
/// and bits (`Ep::bias_relu` without a column bias): the bias added when
/// given (not `+ 0`, which would turn -0 into +0), then `epilogue::relu`.
/// Shared by the tiles that finish from their registers.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn bias_relu(x: __m512, bias: Option<__m512>, relu: bool) -> __m512 {
    let x = bias.map_or(x, |b| _mm512_add_ps(x, b));
    if relu {
        // epilogue::relu: x where x > 0 or NaN (not <=), else +0.
        _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_NLE_UQ>(x, _mm512_setzero_ps()), x)
    } else {
        x
    }
}

/// Most output rows one 16-lane vector of a [`DirectStore`] may touch.
pub(super) const MAX_PIECES: usize = 3;

/// A convolution tile's epilogue done from its registers into f32, bf16 or
/// f16 output: `relu?(acc + row_bias[i])`, rounded for 16-bit output, the
/// operations (and bits) of the general epilogue with `alpha = 1`,
/// `beta = 0` and no column bias. The tile's pixels are consecutive "wide"
/// pixels that map to at most [`MAX_PIECES`] runs of output columns per
/// vector; each run is one masked store. It saves the workspace round trip
/// and a scatter call per run.
pub(super) struct DirectStore {
    /// Output element of tile row 0 that lane 0 of a piece with offset 0
    /// would hit; row `i` is `ldc` elements further. Its element type is
    /// `out`.
    pub c: *mut u8,
    /// The output's element type.
    pub out: FloatType,
    /// Output row stride (elements).
    pub ldc: usize,
    /// Bias of tile row `i` at `row_bias[i]`, if any.
    pub row_bias: Option<*const f32>,
    /// Whether ReLU follows the bias.
    pub relu: bool,
    /// Per vector (16 lanes each), its pieces: the lanes that go to one
    /// output row, and the element offset of lane 0 for that row; unused
    /// pieces have no lanes.
    pub pieces: [[(u16, isize); MAX_PIECES]; 2],
}

impl DirectStore {
    /// Output element `offset` of tile row `i` (as a byte pointer; the
    /// address is not dereferenced here).
    fn at(&self, i: usize, offset: isize) -> *mut u8 {
        let size = if self.out == FloatType::F32 { 4 } else { 2 };
        let elem = (i * self.ldc) as isize + offset;
        self.c.wrapping_offset(elem * size)
    }

    /// Asks for the output lines of the first `rows` rows into L2, ahead of
    /// the tile's last k block: a batch's output has left the cache, and
    /// the epilogue's stores would otherwise wait for every line in turn
    /// (about 3% of a 3x3 convolution over a batch of eight 56x56 images;
    /// prefetching into L1, or for writing, measured less).
    #[inline]
    pub(super) fn prefetch(&self, rows: usize) {
        for i in 0..rows {
            for &(lanes, offset) in self.pieces.iter().flatten() {
                if lanes == 0 {
                    continue;
                }
                let first = offset + lanes.trailing_zeros() as isize;
                let last = offset + 15 - lanes.leading_zeros() as isize;
                for lane in [first, last] {
                    prefetch_l2(self.at(i, lane));
                }
            }
        }
    }

    /// `relu?(x + row_bias)`, as `Ep::bias_relu` (no column bias).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    fn finished(&self, x: __m512, row_bias: Option<__m512>) -> __m512 {
        bias_relu(x, row_bias, self.relu)
    }

    /// Row `i`'s bias as a vector.
    ///
    /// # Safety
    /// `row_bias`, if given, holds more than `i` values.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn row_bias(&self, i: usize) -> Option<__m512> {
        // SAFETY: the caller guarantees row_bias holds the value.
        self.row_bias.map(|b| _mm512_set1_ps(unsafe { *b.add(i) }))
    }

    /// Stores row `i`'s two vectors of 16 u16 (bf16 or f16 bits) to their
    /// pieces.
    ///
    /// # Safety
    /// As [`DirectStore::store`], with 2-byte output elements.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn store_u16(&self, i: usize, halves: [__m256i; 2]) {
        for (v, half) in halves.into_iter().enumerate() {
            for &(lanes, offset) in &self.pieces[v] {
                let c = self.at(i, offset).cast::<__m256i>();
                // SAFETY: the lanes of the piece are output elements (caller's
                // contract); masked-off lanes are not accessed.
                unsafe {
                    if lanes == 0xFFFF {
                        _mm256_storeu_si256(c, half);
                    } else if lanes != 0 {
                        _mm256_mask_storeu_epi16(c.cast(), lanes, half);
                    }
                }
            }
        }
    }

    /// Finishes and stores a tile into f32 or f16 output (`out`), rounding
    /// to f16 as the conversions do (`VCVTPS2PH`, round to nearest even).
    ///
    /// # Safety
    /// `out` is f32 or f16; every lane of every piece addresses a writable
    /// element of the output (`c + i * ldc + offset + lane` for rows
    /// `i < MR_`); `row_bias`, if given, holds `MR_` values; the CPU supports
    /// AVX-512 F/BW/VL.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn store<const MR_: usize>(&self, acc: &[[__m512; 2]; MR_]) {
        for (i, row) in acc.iter().enumerate() {
            // SAFETY: forwarded from the caller's contract.
            let bias = unsafe { self.row_bias(i) };
            let y = row.map(|x| self.finished(x, bias));
            if self.out == FloatType::F16 {
                let f16 = |x| _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x);
                // SAFETY: forwarded from the caller's contract.
                unsafe { self.store_u16(i, [f16(y[0]), f16(y[1])]) };
                continue;
            }
            debug_assert_eq!(self.out, FloatType::F32);
            for (v, &y) in y.iter().enumerate() {
                for &(lanes, offset) in &self.pieces[v] {
                    let c = self.at(i, offset).cast::<f32>();
                    // SAFETY: the lanes of the piece are output elements
                    // (caller's contract); masked-off lanes are not accessed.
                    unsafe {
                        if lanes == 0xFFFF {
                            _mm512_storeu_ps(c, y);
                        } else if lanes != 0 {
                            _mm512_mask_storeu_ps(c, lanes, y);
                        }
                    }
                }
            }
        }
    }

    /// [`DirectStore::store`] for bf16 output too, rounding to bf16 as the
    /// conversions do ([`crate::convert::bf16_x32`]).
    ///
    /// # Safety
    /// As [`DirectStore::store`] with `out` f32, f16 or bf16, and the CPU
    /// supports AVX-512 F/BW/DQ/VL and BF16.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")]
    pub(super) unsafe fn store_any<const MR_: usize>(&self, acc: &[[__m512; 2]; MR_]) {
        if self.out != FloatType::Bf16 {
            // SAFETY: forwarded from the caller's contract.
            return unsafe { self.store(acc) };
        }
        for (i, row) in acc.iter().enumerate() {
            // SAFETY: forwarded from the caller's contract.
            let bias = unsafe { self.row_bias(i) };
            let y =
                crate::convert::bf16_x32(self.finished(row[0], bias), self.finished(row[1], bias));
            let halves = [_mm512_castsi512_si256(y), _mm512_extracti64x4_epi64::<1>(y)];
            // SAFETY: forwarded from the caller's contract.
            unsafe { self.store_u16(i, halves) };
        }
    }
}

/// Implicit-GEMM convolution tile: `mr <= MR` rows by 32 columns, B rows
/// from `rows` (see [`gather_tile`]).
///
/// With `finish`, the tile is finished and stored to the output instead of
/// `out` (after this k block, which must be the last).
///
/// # Safety
/// As [`gather_tile`] with `MR_ = mr` and [`DirectStore::store`] for
/// `finish`, and the CPU supports AVX-512 F/BW/VL.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn conv_tile<R: ConvRows>(
    mr: usize,
    kc: usize,
    a: *const f32,
    b: *const f32,
    rows: R,
    out: *mut f32,
    ldo: usize,
    load: bool,
    finish: Option<&DirectStore>,
) {
    macro_rules! go {
        ($($n:literal)*) => {
            match mr {
                // SAFETY: forwarded from the caller's contract.
                $($n => unsafe { gather_tile::<$n, R>(kc, a, b, rows, out, ldo, load, finish) },)*
                _ => unreachable!("tile rows {mr} > {MR}"),
            }
        };
    }
    go!(1 2 3 4 5 6 7 8 9 10 11 12 13 14)
}

/// Small-m tile: `mr <= 4` rows by `cols <= 64` columns of B of type `bt`
/// read at `b + p * b_rs` (elements), over all `kc` in one pass (no reload).
/// Writes 32 columns of `out` per row when `cols <= 32`, else 64.
///
/// # Safety
/// As [`tile`], and the CPU supports AVX-512 F/BW/VL.
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
    // Two zmm per row when 32 columns suffice (a packed panel): no FMAs on
    // masked-off lanes, and only 32 columns of `out` are written.
    macro_rules! go {
        ($bt:expr, $($n:literal)*) => {
            match (mr, cols <= 32) {
                // SAFETY: forwarded from the caller's contract.
                $(($n, true) => unsafe { tile::<$n, 2, $bt, 1, $n>(kc, a, b, b_rs, cols, out, ldo, false) },)*
                // SAFETY: forwarded from the caller's contract.
                $(($n, false) => unsafe { tile::<$n, 4, $bt, 1, $n>(kc, a, b, b_rs, cols, out, ldo, false) },)*
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

/// `out[i * ldo + jj] = sum_p a[i * k + p] * w[jj * w_rs + p]` for `i < MR_`,
/// `jj < NJ`, with 16-lane partial sums.
///
/// # Safety
/// `a` holds `MR_ * k` f32; each of the `NJ` rows of `w` holds `k` readable
/// elements of type `BT`; `out` is writable for the `MR_ x NJ` block.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn dot_block<const MR_: usize, const NJ: usize, const BT: u8>(
    k: usize,
    a: *const f32,
    w: *const u8,
    w_rs: usize,
    out: *mut f32,
    ldo: usize,
) {
    let size = if BT == F32 { 4 } else { 2 };
    let mut acc = [[_mm512_setzero_ps(); NJ]; MR_];
    // SAFETY: pointer arithmetic stays within the extents the caller guarantees.
    unsafe {
        let mut p = 0;
        while p < k {
            let mask = lane_mask(k - p, 0);
            let mut wv = [_mm512_setzero_ps(); NJ];
            for (jj, x) in wv.iter_mut().enumerate() {
                *x = load16::<BT>(w.add((jj * w_rs + p) * size), mask);
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let av = _mm512_maskz_loadu_ps(mask, a.add(i * k + p));
                for (jj, x) in row.iter_mut().enumerate() {
                    *x = _mm512_fmadd_ps(av, wv[jj], *x);
                }
            }
            p += 16;
        }
        for (i, row) in acc.iter().enumerate() {
            for (jj, x) in row.iter().enumerate() {
                *out.add(i * ldo + jj) = _mm512_reduce_add_ps(*x);
            }
        }
    }
}

/// Small m (`m <= 4`) against column-contiguous B: `nj <= 4` output columns.
///
/// # Safety
/// As [`dot_block`] with `MR_ = m`, `NJ = nj`, and the CPU supports AVX-512 F/BW/VL.
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
    macro_rules! go {
        ($bt:expr) => {
            // SAFETY: forwarded from the caller's contract (every arm).
            unsafe {
                match (m, nj) {
                    (1, 4) => dot_block::<1, 4, $bt>(k, a, w, w_rs, out, ldo),
                    (2, 4) => dot_block::<2, 4, $bt>(k, a, w, w_rs, out, ldo),
                    (3, 4) => dot_block::<3, 4, $bt>(k, a, w, w_rs, out, ldo),
                    (4, 4) => dot_block::<4, 4, $bt>(k, a, w, w_rs, out, ldo),
                    (1, _) => dot_block::<1, 1, $bt>(k, a, w, w_rs, out, ldo),
                    (2, _) => dot_block::<2, 1, $bt>(k, a, w, w_rs, out, ldo),
                    (3, _) => dot_block::<3, 1, $bt>(k, a, w, w_rs, out, ldo),
                    (4, _) => dot_block::<4, 1, $bt>(k, a, w, w_rs, out, ldo),
                    _ => unreachable!("dot tile rows {m} > 4"),
                }
            }
        };
    }
    if nj == 4 || nj == 1 {
        match tag(bt) {
            F32 => go!(F32),
            BF16 => go!(BF16),
            _ => go!(F16),
        }
    } else {
        // Two or three columns left: one column per call, same sums per column.
        let size = if bt == FloatType::F32 { 4 } else { 2 };
        for jj in 0..nj {
            // SAFETY: column jj's row of w and out column jj are within the caller's extents.
            unsafe {
                dot_tile(
                    bt,
                    m,
                    1,
                    k,
                    a,
                    w.add(jj * w_rs * size),
                    w_rs,
                    out.add(jj),
                    ldo,
                )
            };
        }
    }
}

/// `out[i][0..cols] = sum_p a[p*MR_ + i] * b[p*b_rs + 0..cols]` with the
/// accumulators in memory (`out`, stride `ldo`, zeroed here): one pass over
/// each B row segment, so row-major weights stream sequentially. Each element
/// is the same FMA chain in increasing p as in [`tile`].
///
/// # Safety
/// `a` holds `k * MR_` f32; row p of B has `cols` readable elements at
/// `b + p * b_rs`; `out` holds `MR_` rows of `cols.next_multiple_of(16)` f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
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
    let nv = cols.div_ceil(16);
    // SAFETY: all accesses stay within the extents the caller guarantees.
    unsafe {
        for i in 0..MR_ {
            for v in 0..nv {
                _mm512_storeu_ps(out.add(i * ldo + 16 * v), _mm512_setzero_ps());
            }
        }
        // Four B rows per sweep: each accumulator is loaded and stored once per
        // four FMAs, and the four row streams are sequential.
        let mut p = 0;
        while p < k {
            let rows = 4.min(k - p);
            let mut ai = [[_mm512_setzero_ps(); MR_]; 4];
            for (r, row) in ai.iter_mut().enumerate().take(rows) {
                for (i, x) in row.iter_mut().enumerate() {
                    *x = _mm512_set1_ps(*a.add((p + r) * MR_ + i));
                }
            }
            let row0 = b.add(p * b_rs * size);
            for v in 0..nv {
                let mask = lane_mask(cols, v);
                let mut bv = [_mm512_setzero_ps(); 4];
                for (r, x) in bv.iter_mut().enumerate().take(rows) {
                    *x = load16::<BT>(row0.add((r * b_rs + 16 * v) * size), mask);
                }
                for i in 0..MR_ {
                    let o = out.add(i * ldo + 16 * v);
                    let mut acc = _mm512_loadu_ps(o);
                    for r in 0..rows {
                        acc = _mm512_fmadd_ps(ai[r][i], bv[r], acc);
                    }
                    _mm512_storeu_ps(o, acc);
                }
            }
            p += 4;
        }
    }
}

/// Small-m rows (`mr <= 4`) against row-contiguous B, accumulating in `out`.
///
/// # Safety
/// As [`axpy_block`] with `MR_ = mr`, and the CPU supports AVX-512 F/BW/VL.
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
