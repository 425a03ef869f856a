//! The blocked, threaded driver shared by the SIMD levels.
//!
//! Large m: A is packed once into f32 row tiles of `MR` rows (k-major inside a
//! tile), B once into f32 column panels of 32 (bf16/f16 widened exactly while
//! packing), or a [`PackedB`] is read as it is, bf16/f16 panels widened in
//! registers by the tile (none left to widen after
//! [`PackedB::pack_widened`]). C is cut into blocks of
//! `MC x NC` that threads take from a shared counter; inside a block the k
//! loop is blocked by `KC`, partial sums live in an f32 workspace, and the
//! epilogue runs on each register tile right after its last k block, while
//! the tile is still in L1.
//!
//! Small m (`<= STREAMING_ROWS`): no packing of B. Row-contiguous B and
//! packed B are streamed row by row in their element type with bf16/f16
//! widened in registers, so half-width weights read half the bytes;
//! column-contiguous B (`w.t()`) goes through 16-lane dot products.
//!
//! Work is split over M/N only, never k, and every k loop is the same FMA
//! chain per element, so results do not depend on the thread count.

use super::pack::{KC, NR};
use super::threads::{parallel_for, put_buf, take_buf};
use super::{
    Activation, BSource, Element, Epilogue, MatMut, MatRef, PackedB, STREAMING_ROWS, epilogue,
    num_threads,
};
use crate::convert;
use crate::element::{FloatSlice, FloatSliceMut, FloatType};
use crate::elementwise::{self, UnaryOp};
use crate::isa::Isa;

/// Element-type tags for the SIMD kernels' const generic `BT` (one set for
/// every level, so a tag means the same type in each).
pub(super) const F32: u8 = 0;
pub(super) const BF16: u8 = 1;
pub(super) const F16: u8 = 2;

/// The `BT` tag of an element type.
pub(super) fn tag(t: FloatType) -> u8 {
    match t {
        FloatType::F32 => F32,
        FloatType::Bf16 => BF16,
        FloatType::F16 => F16,
    }
}

/// The body of each level's `axpy_rows`: its `axpy_block::<MR_, BT>` (the
/// calling module's, so each level calls its own `#[target_feature]`
/// kernel) for `mr` rows of 1-4 and B's element type, with the caller's
/// arguments and its safety contract forwarded.
macro_rules! dispatch_axpy_rows {
    ($bt:expr, $mr:expr, ($($arg:expr),*)) => {{
        macro_rules! go {
            ($t:expr) => {
                // SAFETY: forwarded from the caller's contract (every arm).
                unsafe {
                    match $mr {
                        1 => axpy_block::<1, $t>($($arg),*),
                        2 => axpy_block::<2, $t>($($arg),*),
                        3 => axpy_block::<3, $t>($($arg),*),
                        4 => axpy_block::<4, $t>($($arg),*),
                        mr => unreachable!("axpy rows {mr} > 4"),
                    }
                }
            };
        }
        use $crate::gemm::driver::{BF16, F16, F32, tag};
        match tag($bt) {
            F32 => go!(F32),
            BF16 => go!(BF16),
            _ => go!(F16),
        }
    }};
}
pub(super) use dispatch_axpy_rows;

/// Register tiles per M block.
pub(super) const MC_TILES: usize = 8;
/// Rows of A from which the large-m path widens a packed bf16/f16 B into f32
/// panels once per call rather than in every tile: the tiles' in-register
/// widening costs about 5% of the FMA time, the widening once a fixed
/// k x n. f16 on one Zen 4 core: 512x768x768 6.07-6.16 -> 5.81-5.85 ms,
/// 256x768x768 2.97-2.99 -> 2.85 ms; below ~150 rows it does not pay (an
/// f16 MLP at batch 64 was slower widening every call).
const WIDEN_B_ROWS: usize = 256;
/// 32-column panels per N block.
const NC_PANELS: usize = 8;
/// Rows per pass of the small-m kernels.
const SMALL_ROWS: usize = 4;
/// Most columns per work item of the row-contiguous small-m path: wide items
/// keep each B row segment long and sequential for the prefetchers.
const AXPY_COLS: usize = 4096;
/// Below this many flops one thread does all the work, unless B is large
/// (see [`gemm_threads`]).
pub(super) const PAR_MIN_FLOPS: usize = 1 << 22;
/// Bytes of B from which a product runs on every thread whatever its
/// flops: a product of few rows streams B, from memory once it outgrows the
/// caches, and one core draws only its share of the memory bandwidth.
const PAR_MIN_B_BYTES: usize = 1 << 20;
/// Columns per work item on the small-m path.
const SMALL_ITEM_COLS: usize = 256;

/// The per-level micro-kernels the driver calls.
pub(super) struct Kernels {
    /// Rows of a large-m register tile.
    pub mr: usize,
    /// Columns one `small_tile` call covers at most.
    pub small_cols: usize,
    /// `(bt, mr, kc, a, b, out, ldo, load)`: an `mr x 32` tile over a panel
    /// of element type `bt`.
    #[allow(clippy::type_complexity)]
    pub big_tile: unsafe fn(FloatType, usize, usize, *const f32, *const u8, *mut f32, usize, bool),
    /// `(bt, mr, k, a, b, b_rs, cols, out, ldo)`: small-m rows over strided B rows.
    #[allow(clippy::type_complexity)]
    pub small_tile:
        unsafe fn(FloatType, usize, usize, *const f32, *const u8, usize, usize, *mut f32, usize),
    /// `(bt, mr, k, a, b, b_rs, cols, out, ldo)`: small-m rows over row-contiguous B,
    /// accumulators in `out` (rows padded to a multiple of 16).
    #[allow(clippy::type_complexity)]
    pub axpy_rows:
        unsafe fn(FloatType, usize, usize, *const f32, *const u8, usize, usize, *mut f32, usize),
    /// `(bt, m, nj, k, a, w, w_rs, out, ldo)`: small-m dot products with `nj <= 4` rows of `w`.
    #[allow(clippy::type_complexity)]
    pub dot_tile:
        unsafe fn(FloatType, usize, usize, usize, *const f32, *const u8, usize, *mut f32, usize),
}

/// A pointer that may cross threads; every use writes a disjoint block.
#[derive(Clone, Copy)]
pub(super) struct SendPtr<T>(pub(super) *mut T);
// SAFETY: the driver hands each work item a disjoint block of C, so no two
// threads touch the same element.
unsafe impl<T> Send for SendPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// The pointer (a method, so closures capture the whole `SendPtr`).
    #[inline(always)]
    pub(super) fn get(self) -> *mut T {
        self.0
    }
}

thread_local! {
    /// The calling thread's packed A and B buffers, kept between calls.
    static PACK_A: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    static PACK_B: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Epilogue parameters.
#[derive(Clone, Copy)]
pub(super) struct Ep<'a> {
    isa: Isa,
    alpha: f32,
    beta: f32,
    bias: Option<&'a [f32]>,
    row_bias: Option<&'a [f32]>,
    act: Activation,
}

impl<'a> Ep<'a> {
    /// The epilogue of a call at `isa`.
    pub(super) fn new(isa: Isa, alpha: f32, beta: f32, epi: &Epilogue<'a>) -> Self {
        Ep {
            isa,
            alpha,
            beta,
            bias: epi.bias,
            row_bias: epi.row_bias,
            act: epi.activation,
        }
    }

    /// The row biases and whether to apply ReLU, when the epilogue is only
    /// those (`alpha = 1`, `beta = 0`, no column bias, identity or ReLU):
    /// the case a micro-kernel may finish from its registers.
    pub(super) fn row_bias_relu(&self) -> Option<(Option<&'a [f32]>, bool)> {
        let relu = match self.act {
            Activation::Identity => false,
            Activation::Relu => true,
            Activation::GeluErf | Activation::GeluTanh => return None,
        };
        (self.alpha == 1.0 && self.beta == 0.0 && self.bias.is_none())
            .then_some((self.row_bias, relu))
    }

    /// The epilogue for the rows from `r0` on (row 0 of the result is row
    /// `r0` of C), for passes over a slice of C's rows.
    fn rows_from(&self, r0: usize) -> Self {
        Ep {
            row_bias: self.row_bias.map(|b| &b[r0..]),
            ..*self
        }
    }

    /// Applies the epilogue to a `rows x cols` block of accumulators (`ws`,
    /// stride `ldw`) and stores it into C (element (0, 0) at `c`, stride
    /// `ldc`) from row `i0`, column `j0`. Same operations, same order as
    /// `epilogue::finish`. Any width: the level's loops take 64 columns at a
    /// time (the staging block's width).
    ///
    /// # Safety
    /// `ws` is readable and C readable/writable for the block.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn store<O: Element>(
        &self,
        ws: *const f32,
        ldw: usize,
        rows: usize,
        cols: usize,
        c: *mut O,
        ldc: usize,
        (i0, j0): (usize, usize),
    ) {
        for c0 in (0..cols).step_by(64) {
            let (ws, cols, at) = (ws.wrapping_add(c0), 64.min(cols - c0), (i0, j0 + c0));
            // The same loops compiled for the call's level, so the per-element
            // epilogue is vectorized with its registers (IEEE operations, no
            // contraction: the bits do not depend on the width).
            if self.isa >= Isa::Avx512Core {
                // SAFETY: `isa` was checked available by the caller; the piece
                // lies in the block (caller's contract).
                unsafe { store_avx512(self, ws, ldw, rows, cols, c, ldc, at) }
            } else if self.isa >= Isa::Avx2 {
                // SAFETY: as above.
                unsafe { store_avx2(self, ws, ldw, rows, cols, c, ldc, at) }
            } else {
                // SAFETY: the piece lies in the block (caller's contract).
                unsafe { self.store_body(ws, ldw, rows, cols, c, ldc, at) }
            }
        }
    }

    /// [`Ep::store`]'s loops, inlined into each level's instance.
    ///
    /// # Safety
    /// As [`Ep::store`], and `cols <= 64`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn store_body<O: Element>(
        &self,
        ws: *const f32,
        ldw: usize,
        rows: usize,
        cols: usize,
        c: *mut O,
        ldc: usize,
        (i0, j0): (usize, usize),
    ) {
        // SAFETY: the block's first element is inside C (caller's contract).
        let c = unsafe { c.add(i0 * ldc + j0) };
        let gelu = self.gelu();
        if O::DTYPE == FloatType::F32 && gelu.is_none() {
            // f32 C: the same operations, in place, with no staging copy.
            for r in 0..rows {
                // SAFETY: row r of the block is within the caller's extents.
                let (acc, crow) = unsafe {
                    (
                        std::slice::from_raw_parts(ws.add(r * ldw), cols),
                        std::slice::from_raw_parts_mut(c.add(r * ldc).cast::<f32>(), cols),
                    )
                };
                if self.beta != 0.0 {
                    for (x, a) in crow.iter_mut().zip(acc) {
                        *x = self.alpha * *a + self.beta * *x;
                    }
                } else {
                    for (x, a) in crow.iter_mut().zip(acc) {
                        *x = self.alpha * *a;
                    }
                }
                self.bias_relu(crow, i0 + r, j0);
            }
            return;
        }
        // The epilogue of up to 16 rows into a staging block, then their
        // GELU and conversion straight into C: their vector loads then read
        // values stored rows earlier, not the stores just issued (a load
        // spanning several recent smaller stores stalls until they retire;
        // a GELU done in place in C cost five times a separate GELU pass).
        const BLOCK_ROWS: usize = 16;
        let mut block = [[0.0f32; 64]; BLOCK_ROWS];
        let mut old = [0.0f32; 64];
        for r0 in (0..rows).step_by(BLOCK_ROWS) {
            let n = BLOCK_ROWS.min(rows - r0);
            for (dr, buf) in block.iter_mut().enumerate().take(n) {
                let r = r0 + dr;
                let buf = &mut buf[..cols];
                // SAFETY: row r of the block is within the caller's extents.
                let (acc, crow) = unsafe {
                    (
                        std::slice::from_raw_parts(ws.add(r * ldw), cols),
                        std::slice::from_raw_parts(c.add(r * ldc), cols),
                    )
                };
                for (x, a) in buf.iter_mut().zip(acc) {
                    *x = self.alpha * *a;
                }
                if self.beta != 0.0 {
                    let old = &mut old[..cols];
                    for (o, c) in old.iter_mut().zip(crow.iter()) {
                        *o = c.to_f32();
                    }
                    for (x, o) in buf.iter_mut().zip(old.iter()) {
                        *x += self.beta * *o;
                    }
                }
                self.bias_relu(buf, i0 + r, j0);
            }
            for (dr, buf) in block.iter().enumerate().take(n) {
                // SAFETY: row r0 + dr of the block is within the caller's extents.
                let crow = unsafe { std::slice::from_raw_parts_mut(c.add((r0 + dr) * ldc), cols) };
                match gelu {
                    // The elementwise kernel computes in f32 and rounds to O
                    // as the conversions do: GELU then the store's rounding.
                    Some(op) => elementwise::unary_at(
                        self.isa,
                        op,
                        FloatSlice::F32(&buf[..cols]),
                        float_slice_mut(crow),
                    )
                    .expect("level checked by the caller"),
                    None => store_row(self.isa, &buf[..cols], crow),
                }
            }
        }
    }
}

/// [`Ep::store`] compiled for AVX-512.
///
/// # Safety
/// As [`Ep::store`], and the CPU supports AVX-512 F/BW/VL.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[allow(clippy::too_many_arguments)]
unsafe fn store_avx512<O: Element>(
    ep: &Ep,
    ws: *const f32,
    ldw: usize,
    rows: usize,
    cols: usize,
    c: *mut O,
    ldc: usize,
    at: (usize, usize),
) {
    // SAFETY: forwarded from the caller's contract.
    unsafe { ep.store_body(ws, ldw, rows, cols, c, ldc, at) }
}

/// [`Ep::store`] compiled for AVX2.
///
/// # Safety
/// As [`Ep::store`], and the CPU supports AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn store_avx2<O: Element>(
    ep: &Ep,
    ws: *const f32,
    ldw: usize,
    rows: usize,
    cols: usize,
    c: *mut O,
    ldc: usize,
    at: (usize, usize),
) {
    // SAFETY: forwarded from the caller's contract.
    unsafe { ep.store_body(ws, ldw, rows, cols, c, ldc, at) }
}

impl Ep<'_> {
    /// Adds the biases (row `i` of C, columns `j0..`) and applies a ReLU, in
    /// place; a GELU is left to the caller ([`Ep::gelu`]).
    #[inline(always)]
    fn bias_relu(&self, v: &mut [f32], i: usize, j0: usize) {
        if let Some(bias) = self.bias {
            let len = v.len();
            for (x, b) in v.iter_mut().zip(&bias[j0..j0 + len]) {
                *x += *b;
            }
        }
        if let Some(row_bias) = self.row_bias {
            let b = row_bias[i];
            v.iter_mut().for_each(|x| *x += b);
        }
        if self.act == Activation::Relu {
            v.iter_mut().for_each(|x| *x = epilogue::relu(*x));
        }
    }

    /// Whether tiles are stored as they finish. A GELU epilogue is stored
    /// once per block instead ([`Ep::store`] of the whole block): stored per 32-column
    /// tile, its calls added 2.5 ms to fc1 of a BERT-base layer (512x768 by
    /// 768x3072, one thread), where a separate GELU step takes 1.
    pub(super) fn per_tile_store(&self) -> bool {
        self.gelu().is_none()
    }

    /// The elementwise op of a GELU activation.
    fn gelu(&self) -> Option<UnaryOp> {
        match self.act {
            Activation::GeluErf => Some(UnaryOp::GeluErf),
            Activation::GeluTanh => Some(UnaryOp::GeluTanh),
            Activation::Identity | Activation::Relu => None,
        }
    }
}

/// `dst` as the elementwise kernels' output type.
fn float_slice_mut<O: Element>(dst: &mut [O]) -> FloatSliceMut<'_> {
    match O::DTYPE {
        FloatType::F32 => FloatSliceMut::F32(bytemuck::cast_slice_mut(dst)),
        FloatType::Bf16 => FloatSliceMut::Bf16(bytemuck::cast_slice_mut(dst)),
        FloatType::F16 => FloatSliceMut::F16(bytemuck::cast_slice_mut(dst)),
    }
}

/// Rounds `src` into `dst` per the conversion contract.
#[inline(always)]
fn store_row<O: Element>(isa: Isa, src: &[f32], dst: &mut [O]) {
    // The level was checked by the caller, so the conversions cannot fail.
    match O::DTYPE {
        FloatType::F32 => dst.copy_from_slice(bytemuck::cast_slice(src)),
        #[cfg(target_arch = "x86_64")]
        FloatType::F16 if isa >= Isa::Avx512Core => {
            assert_eq!(src.len(), dst.len());
            // SAFETY: the caller checked the level, so the CPU has AVX-512
            // F/BW/VL; both slices hold src.len() elements.
            unsafe {
                super::avx512::f32_to_f16_row(src.as_ptr(), dst.as_mut_ptr().cast(), src.len())
            }
        }
        FloatType::Bf16 => {
            convert::f32_to_bf16_at(isa, src, bytemuck::cast_slice_mut(dst)).expect("level checked")
        }
        FloatType::F16 => {
            convert::f32_to_f16_at(isa, src, bytemuck::cast_slice_mut(dst)).expect("level checked")
        }
    }
}

/// Packs rows `r0 .. r0 + rows` (`rows <= 16`) of A into `dst` as f32,
/// k-major: `dst[p * rows + i] = A[r0 + i, p]`.
fn pack_a_tile<T: Element>(isa: Isa, a: &MatRef<T>, r0: usize, rows: usize, dst: &mut [f32]) {
    const PB: usize = 256;
    let k = a.cols;
    if a.cs == 1 {
        // Widen PB columns of each row with the vector conversions, then
        // interleave; the writes stay sequential.
        let mut tmp = [[0.0f32; PB]; 16];
        for p0 in (0..k).step_by(PB) {
            let len = PB.min(k - p0);
            for (i, t) in tmp.iter_mut().enumerate().take(rows) {
                let start = (r0 + i) * a.rs + p0;
                widen_into(isa, &a.data[start..start + len], &mut t[..len]);
            }
            for (p, d) in dst[p0 * rows..(p0 + len) * rows]
                .chunks_exact_mut(rows)
                .enumerate()
            {
                for (i, x) in d.iter_mut().enumerate() {
                    *x = tmp[i][p];
                }
            }
        }
    } else {
        for p in 0..k {
            for i in 0..rows {
                dst[p * rows + i] = a.data[(r0 + i) * a.rs + p * a.cs].to_f32();
            }
        }
    }
}

/// Packs rows `r0 .. r0 + rows` of A into k blocks of `KC` columns, each a
/// row-major `mr x KC` block: `dst[(p / KC) * mr * KC + i * KC + p % KC] = A[r0 + i, p]`.
pub(super) fn pack_a_blocks<T: Element>(
    isa: Isa,
    a: &MatRef<T>,
    r0: usize,
    rows: usize,
    mr: usize,
    dst: &mut [f32],
) {
    let k = a.cols;
    for (b, pc) in (0..k).step_by(KC).enumerate() {
        let kc = KC.min(k - pc);
        let block = &mut dst[b * mr * KC..(b + 1) * mr * KC];
        for i in 0..rows {
            let out = &mut block[i * KC..i * KC + kc];
            if a.cs == 1 {
                let start = (r0 + i) * a.rs + pc;
                widen_into(isa, &a.data[start..start + kc], out);
            } else {
                for (p, x) in out.iter_mut().enumerate() {
                    *x = a.at(r0 + i, pc + p).to_f32();
                }
            }
        }
    }
}

/// Entry for every SIMD level; shapes and level were validated.
#[allow(clippy::too_many_arguments)]
pub(super) fn run<T: Element, O: Element>(
    isa: Isa,
    kern: &Kernels,
    alpha: f32,
    a: MatRef<T>,
    b: BSource<T>,
    beta: f32,
    c: MatMut<O>,
    epi: &Epilogue,
) {
    let (m, n, k) = (c.rows, c.cols, a.cols);
    let ep = Ep::new(isa, alpha, beta, epi);
    let ldc = c.rs;
    let cp = SendPtr(c.data.as_mut_ptr());
    if alpha == 0.0 || k == 0 {
        // No product to form: the epilogue on zero accumulators.
        let zeros = [0.0f32; 64];
        for i in 0..m {
            for j0 in (0..n).step_by(64) {
                let cols = 64.min(n - j0);
                // SAFETY: row i, columns j0..j0+cols of C are in bounds (validated view).
                unsafe { ep.store(zeros.as_ptr(), 0, 1, cols, cp.get(), ldc, (i, j0)) };
            }
        }
        return;
    }
    let threads = gemm_threads(m, n, k, T::DTYPE);
    if m <= STREAMING_ROWS {
        // Passes of up to SMALL_ROWS rows, each streaming B once.
        let packed;
        let b = match b {
            BSource::View(v) if v.cs != 1 && v.rs != 1 => {
                packed = PackedB::pack(v);
                BSource::Packed(&packed)
            }
            other => other,
        };
        for r0 in (0..m).step_by(SMALL_ROWS) {
            let rows = SMALL_ROWS.min(m - r0);
            let a_rows = MatRef {
                data: &a.data[r0 * a.rs..],
                rows,
                ..a
            };
            // SAFETY: row r0 of C is in bounds (r0 < m).
            let c_rows = SendPtr(unsafe { cp.get().add(r0 * ldc) });
            let ep = ep.rows_from(r0);
            small(kern, &ep, threads, a_rows, b, c_rows, ldc, rows, n, k);
        }
    } else {
        large(kern, &ep, threads, a, b, cp, ldc, m, n, k);
    }
}

/// The threads an `m x k` by `k x n` product with B of element type `bt`
/// runs on: one below [`PAR_MIN_FLOPS`], unless B takes
/// [`PAR_MIN_B_BYTES`] or more (ResNet-18's 512 x 1000 f32 classifier at
/// batch 1: 1 M flops over 2 MB of weights).
pub(super) fn gemm_threads(m: usize, n: usize, k: usize, bt: FloatType) -> usize {
    if 2 * m * n * k < PAR_MIN_FLOPS && k * n * bt.size() < PAR_MIN_B_BYTES {
        1
    } else {
        num_threads()
    }
}

#[allow(clippy::too_many_arguments)]
fn small<T: Element, O: Element>(
    kern: &Kernels,
    ep: &Ep,
    threads: usize,
    a: MatRef<T>,
    b: BSource<T>,
    cp: SendPtr<O>,
    ldc: usize,
    m: usize,
    n: usize,
    k: usize,
) {
    let bt = T::DTYPE;
    let size = std::mem::size_of::<T>();
    let items = n.div_ceil(SMALL_ITEM_COLS);
    let ws_len = m * SMALL_ITEM_COLS;
    let b = match b {
        BSource::View(v) if v.cs != 1 && v.rs == 1 => {
            // Column-contiguous B: dot products against A's rows.
            let mut arows = vec![0.0f32; m * k];
            for i in 0..m {
                for p in 0..k {
                    arows[i * k + p] = a.at(i, p).to_f32();
                }
            }
            let arows = &arows;
            parallel_for(threads, items, ws_len, |item, ws| {
                let j0 = item * SMALL_ITEM_COLS;
                let w = SMALL_ITEM_COLS.min(n - j0);
                for jj in (0..w).step_by(4) {
                    let nj = 4.min(w - jj);
                    // SAFETY: rows j0+jj.. of w (= columns of B) hold k elements each
                    // (validated view); ws holds m x SMALL_ITEM_COLS.
                    unsafe {
                        (kern.dot_tile)(
                            bt,
                            m,
                            nj,
                            k,
                            arows.as_ptr(),
                            v.data.as_ptr().add((j0 + jj) * v.cs).cast(),
                            v.cs,
                            ws.as_mut_ptr().add(jj),
                            SMALL_ITEM_COLS,
                        )
                    };
                }
                // SAFETY: the item's block of C is in bounds and only this item writes it.
                unsafe { ep.store(ws.as_ptr(), SMALL_ITEM_COLS, m, w, cp.get(), ldc, (0, j0)) };
            });
            return;
        }
        BSource::View(v) => {
            // Row-contiguous B: one pass over each row segment per item.
            let mut ainter = vec![0.0f32; m * k];
            pack_a_tile(ep.isa, &a, 0, m, &mut ainter);
            let ainter = &ainter;
            // Split n evenly over the threads, in multiples of 16 columns.
            let width = n.div_ceil(threads).next_multiple_of(16).min(AXPY_COLS);
            let items = n.div_ceil(width);
            parallel_for(threads, items, m * width, |item, ws| {
                let j0 = item * width;
                let w = width.min(n - j0);
                // SAFETY: for each p < k row p of B holds columns j0..j0+w (validated
                // view, cs == 1); ws holds m rows of `width` (a multiple of 16).
                unsafe {
                    (kern.axpy_rows)(
                        bt,
                        m,
                        k,
                        ainter.as_ptr(),
                        v.data.as_ptr().add(j0).cast(),
                        v.rs,
                        w,
                        ws.as_mut_ptr(),
                        width,
                    )
                };
                // SAFETY: the item's block of C is in bounds and only this item writes it.
                unsafe { ep.store(ws.as_ptr(), width, m, w, cp.get(), ldc, (0, j0)) };
            });
            return;
        }
        other => other,
    };
    // Rows of A interleaved for broadcasting: ainter[p * m + i].
    let mut ainter = vec![0.0f32; m * k];
    pack_a_tile(ep.isa, &a, 0, m, &mut ainter);
    let ainter = &ainter;
    parallel_for(threads, items, ws_len, |item, ws| {
        let j0 = item * SMALL_ITEM_COLS;
        let w = SMALL_ITEM_COLS.min(n - j0);
        match b {
            BSource::View(v) => {
                for jj in (0..w).step_by(kern.small_cols) {
                    let cols = kern.small_cols.min(w - jj);
                    // SAFETY: for each p < k the row p of B holds columns j0+jj..+cols
                    // (validated view with cs == 1); ws holds m x SMALL_ITEM_COLS.
                    unsafe {
                        (kern.small_tile)(
                            bt,
                            m,
                            k,
                            ainter.as_ptr(),
                            v.data.as_ptr().add(j0 + jj).cast(),
                            v.rs,
                            cols,
                            ws.as_mut_ptr().add(jj),
                            SMALL_ITEM_COLS,
                        )
                    };
                }
            }
            BSource::Packed(pb) => {
                for jj in (0..w).step_by(NR) {
                    let cols = NR.min(w - jj);
                    let (panel, bt) = pb.panel((j0 + jj) / NR);
                    // SAFETY: a panel holds k rows of NR elements of type bt; ws as above.
                    unsafe {
                        (kern.small_tile)(
                            bt,
                            m,
                            k,
                            ainter.as_ptr(),
                            panel.as_ptr().cast(),
                            NR,
                            cols,
                            ws.as_mut_ptr().add(jj),
                            SMALL_ITEM_COLS,
                        )
                    };
                }
            }
        }
        // SAFETY: the item's block of C is in bounds and only this item writes it.
        unsafe { ep.store(ws.as_ptr(), SMALL_ITEM_COLS, m, w, cp.get(), ldc, (0, j0)) };
    });
    let _ = size;
}

#[allow(clippy::too_many_arguments)]
fn large<T: Element, O: Element>(
    kern: &Kernels,
    ep: &Ep,
    threads: usize,
    a: MatRef<T>,
    b: BSource<T>,
    cp: SendPtr<O>,
    ldc: usize,
    m: usize,
    n: usize,
    k: usize,
) {
    let mr = kern.mr;
    // A packed B with f32 panels (an f32 B, or `PackedB::pack_widened`) is
    // read in place; a bf16/f16 one too, widened by the tile, unless A has
    // WIDEN_B_ROWS rows or more (widening it into f32 panels on every call
    // made an f16 MLP at batch 64 slower than f32). Otherwise, and for a
    // view, B is packed (and widened) into a reused buffer.
    let mut bbuf = Vec::new();
    let (bpack, bt): (&[u8], FloatType) = match b {
        BSource::Packed(pb) if pb.row_panels().1 == FloatType::F32 || m < WIDEN_B_ROWS => {
            pb.row_panels()
        }
        _ => {
            bbuf = take_buf(&PACK_B, n.div_ceil(NR) * NR * k);
            pack_b_f32(ep.isa, threads, b, &mut bbuf);
            (bytemuck::cast_slice(&bbuf), FloatType::F32)
        }
    };
    let size = if bt == FloatType::F32 { 4 } else { 2 };
    // A as f32 row tiles of `mr` rows, each cut into k blocks of KC columns
    // stored row-major with row stride KC: block `b` of tile `t` starts at
    // `(t * kb + b) * mr * KC`, so the kernels broadcast at constant offsets.
    let tiles = m.div_ceil(mr);
    let kb = k.div_ceil(KC);
    let mut apack = take_buf(&PACK_A, tiles * kb * mr * KC);
    {
        let ap = SendPtr(apack.as_mut_ptr());
        let a = &a;
        parallel_for(threads, tiles, 0, |t, _| {
            let rows = mr.min(m - t * mr);
            // SAFETY: tile t owns apack[t*kb*mr*KC .. (t+1)*kb*mr*KC], disjoint per tile.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(ap.get().add(t * kb * mr * KC), kb * mr * KC)
            };
            pack_a_blocks(ep.isa, a, t * mr, rows, mr, dst);
        });
    }
    let nc = NR * NC_PANELS;
    let nblocks = n.div_ceil(nc);
    let mc = mr * mc_tiles(tiles, nblocks, threads);
    let mblocks = m.div_ceil(mc);
    let per_tile_store = ep.per_tile_store();
    parallel_for(threads, mblocks * nblocks, mc * nc, |item, ws| {
        let (ib, jb) = (item / nblocks, item % nblocks);
        let (i0, j0) = (ib * mc, jb * nc);
        let (mcb, ncb) = (mc.min(m - i0), nc.min(n - j0));
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            // Tiles are stored as they finish their last k block, unless the
            // epilogue is stored per block below.
            let last = pc + kc == k;
            let store_tile = last && per_tile_store;
            for q in 0..ncb.div_ceil(NR) {
                let panel = (j0 / NR) + q;
                let bptr = bpack[(panel * k * NR + pc * NR) * size..].as_ptr();
                for tl in 0..mcb.div_ceil(mr) {
                    let t = i0 / mr + tl;
                    let rows = mr.min(m - t * mr);
                    let aptr = apack[(t * kb + pc / KC) * mr * KC..].as_ptr();
                    let wsp = ws[tl * mr * nc + q * NR..].as_mut_ptr();
                    if last {
                        let cols = NR.min(ncb - q * NR);
                        prefetch_tile_output(
                            cp.get().cast_const(),
                            ldc,
                            (t * mr, j0 + q * NR),
                            rows,
                            cols,
                        );
                    }
                    // SAFETY: the A block holds rows x kc f32 at row stride KC, the B panel
                    // kc*NR elements of type bt from pc*NR on; the workspace tile is rows
                    // x NR at stride nc.
                    unsafe { (kern.big_tile)(bt, rows, kc, aptr, bptr, wsp, nc, pc > 0) };
                    if store_tile {
                        let cols = NR.min(ncb - q * NR);
                        let (r0, c0) = (t * mr, j0 + q * NR);
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
    put_buf(&PACK_A, apack);
    if !bbuf.is_empty() {
        put_buf(&PACK_B, bbuf);
    }
}

/// Row tiles per M block: `MC_TILES`, or fewer when that leaves too few
/// work items to balance over the threads (e.g. 512 x 768 on two threads:
/// 5 x 3 = 15 equal items, one thread doing 8; 6 x 3 = 18 splits evenly).
/// Blocks never go below 4 tiles, so each B panel block still serves 56+
/// rows from L1/L2.
pub(super) fn mc_tiles(tiles: usize, nblocks: usize, threads: usize) -> usize {
    if threads <= 1 {
        return MC_TILES;
    }
    let want_items = 8 * threads;
    let mut mblocks = tiles.div_ceil(MC_TILES);
    while mblocks * nblocks < want_items && tiles.div_ceil(mblocks + 1) >= 4 {
        mblocks += 1;
    }
    // Items that are a multiple of the threads split evenly.
    while !(mblocks * nblocks).is_multiple_of(threads) && tiles.div_ceil(mblocks + 1) >= 4 {
        mblocks += 1;
    }
    tiles.div_ceil(mblocks)
}

/// Packs B into f32 panels of `NR` columns (`k` rows each, zero-padded),
/// the layout of [`PackedB`] widened; panels are split over threads.
fn pack_b_f32<T: Element>(isa: Isa, threads: usize, b: BSource<T>, dst: &mut [f32]) {
    let (k, n) = match b {
        BSource::View(v) => (v.rows, v.cols),
        BSource::Packed(pb) => (pb.k, pb.n),
    };
    let panels = n.div_ceil(NR);
    let dp = SendPtr(dst.as_mut_ptr());
    if let BSource::View(v) = b
        && v.cs == 1
    {
        // Row-contiguous B: read each row once, sequentially, and deal its
        // 32-column pieces out to the panels; threads take blocks of rows.
        const KB: usize = 64;
        parallel_for(
            threads,
            k.div_ceil(KB),
            if T::DTYPE == FloatType::F32 { 0 } else { n },
            |blk, tmp| {
                for kk in blk * KB..k.min((blk + 1) * KB) {
                    let src = &v.data[kk * v.rs..kk * v.rs + n];
                    // f32 rows are dealt out in place; others are widened first.
                    let row: &[f32] = if T::DTYPE == FloatType::F32 {
                        bytemuck::cast_slice(src)
                    } else {
                        widen_into(isa, src, &mut tmp[..n]);
                        &tmp[..n]
                    };
                    let mut pieces = row.chunks_exact(NR);
                    for (p, piece) in pieces.by_ref().enumerate() {
                        let piece: &[f32; NR] = piece.try_into().expect("chunk of NR");
                        // SAFETY: row kk of panel p lies in dst[p*k*NR..(p+1)*k*NR]; row
                        // blocks are disjoint per work item.
                        unsafe { *dp.get().add(p * k * NR + kk * NR).cast::<[f32; NR]>() = *piece };
                    }
                    let rest = pieces.remainder();
                    if !rest.is_empty() {
                        let mut last = [0.0f32; NR];
                        last[..rest.len()].copy_from_slice(rest);
                        let p = n / NR;
                        // SAFETY: as above, for the last (partial) panel.
                        unsafe { *dp.get().add(p * k * NR + kk * NR).cast::<[f32; NR]>() = last };
                    }
                }
            },
        );
        return;
    }
    parallel_for(
        threads,
        panels,
        if T::DTYPE == FloatType::F32 { 0 } else { k },
        |p, tmp| {
            // SAFETY: panel p owns dst[p*k*NR .. (p+1)*k*NR], disjoint per panel.
            let panel = unsafe { std::slice::from_raw_parts_mut(dp.get().add(p * k * NR), k * NR) };
            let j0 = p * NR;
            let w = NR.min(n - j0);
            match b {
                BSource::Packed(pb) => match pb.panel(p) {
                    (wide, FloatType::F32) => panel.copy_from_slice(bytemuck::cast_slice(wide)),
                    (stored, _) => widen_into::<T>(isa, bytemuck::cast_slice(stored), panel),
                },
                BSource::View(v) => {
                    if w < NR {
                        panel.fill(0.0);
                    }
                    for jj in 0..w {
                        // Column j of B is contiguous when rs == 1 (a transposed
                        // [out, in] matrix): widen it whole, then scatter.
                        let col = (j0 + jj) * v.cs;
                        if v.rs == 1 && T::DTYPE != FloatType::F32 {
                            widen_into(isa, &v.data[col..col + k], &mut tmp[..k]);
                            for kk in 0..k {
                                panel[kk * NR + jj] = tmp[kk];
                            }
                        } else {
                            for kk in 0..k {
                                panel[kk * NR + jj] = v.data[kk * v.rs + col].to_f32();
                            }
                        }
                    }
                }
            }
        },
    );
}

/// Widens `src` into `dst` (same length) exactly.
pub(super) fn widen_into<T: Element>(isa: Isa, src: &[T], dst: &mut [f32]) {
    // The level was checked by the caller, so the conversions cannot fail.
    match T::DTYPE {
        FloatType::F32 => dst.copy_from_slice(bytemuck::cast_slice(src)),
        FloatType::Bf16 => {
            convert::bf16_to_f32_at(isa, bytemuck::cast_slice(src), dst).expect("level checked")
        }
        FloatType::F16 => {
            convert::f16_to_f32_at(isa, bytemuck::cast_slice(src), dst).expect("level checked")
        }
    }
}

/// `dst[i] = src[i * stride]` widened to f32, for every `i < dst.len()`:
/// the stride-phase copies of the convolutions (a padded row's phase run).
/// Stride 1 is [`widen_into`]; stride 2 goes as pairs, which the compiler
/// vectorises where `step_by` stays scalar (ResNet's 3x224x224 7x7
/// stride-2 stem through the implicit GEMM: 2.49-2.51 -> 2.43-2.46 ms).
///
/// # Panics
/// With a stride of 1 or 2, if `src` holds no element `(dst.len() - 1) *
/// stride` (a caller's bug; the convolutions' layouts cover their runs).
pub(super) fn widen_strided<T: Element>(isa: Isa, src: &[T], stride: usize, dst: &mut [f32]) {
    match stride {
        1 => widen_into(isa, &src[..dst.len()], dst),
        2 => {
            let pairs = dst.len().min(src.len() / 2);
            for (d, pair) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = pair[0].to_f32();
            }
            if let Some(d) = dst.get_mut(pairs) {
                *d = src[2 * pairs].to_f32();
            }
        }
        _ => {
            for (d, x) in dst.iter_mut().zip(src.iter().step_by(stride)) {
                *d = x.to_f32();
            }
        }
    }
}

/// `dst[i]` = bf16 bits `even[i * stride]` in the low half and
/// `odd[i * stride]` in the high half (zero without `odd`), for every
/// `i < dst.len()`: the channel-pair copies of the `Bf16Dot`
/// convolutions. Strides 1 and 2 go as zipped slices and pairs, which the
/// compiler vectorises (a scalar loop was 6-7% of an 8x64x56x56 3x3 conv).
///
/// # Panics
/// With a stride of 2, if `even` (or `odd`) holds no element
/// `(dst.len() - 1) * 2` (a caller's bug; the layouts cover their runs).
pub(super) fn pair_strided(even: &[u16], odd: Option<&[u16]>, stride: usize, dst: &mut [u32]) {
    let pair = |e: u16, o: u16| u32::from(e) | u32::from(o) << 16;
    match (stride, odd) {
        (1, Some(odd)) => {
            for ((d, &e), &o) in dst.iter_mut().zip(even).zip(odd) {
                *d = pair(e, o);
            }
        }
        (1, None) => {
            for (d, &e) in dst.iter_mut().zip(even) {
                *d = pair(e, 0);
            }
        }
        (2, _) => {
            let full = dst.len().min(even.len() / 2);
            match odd {
                Some(odd) => {
                    let pairs = even.chunks_exact(2).zip(odd.chunks_exact(2));
                    for (d, (e, o)) in dst.iter_mut().zip(pairs) {
                        *d = pair(e[0], o[0]);
                    }
                }
                None => {
                    for (d, e) in dst.iter_mut().zip(even.chunks_exact(2)) {
                        *d = pair(e[0], 0);
                    }
                }
            }
            if let Some(d) = dst.get_mut(full) {
                *d = pair(even[2 * full], odd.map_or(0, |o| o[2 * full]));
            }
        }
        (_, Some(odd)) => {
            let pairs = even.iter().step_by(stride).zip(odd.iter().step_by(stride));
            for (d, (&e, &o)) in dst.iter_mut().zip(pairs) {
                *d = pair(e, o);
            }
        }
        (_, None) => {
            for (d, &e) in dst.iter_mut().zip(even.iter().step_by(stride)) {
                *d = pair(e, 0);
            }
        }
    }
}

/// Asks for the output lines of a tile (`rows` rows of `cols` elements of
/// C from `(r0, c0)`, row stride `ldc`) into L2 ahead of its last k block:
/// between a model's runs its weights stream through the cache and evict
/// the outputs, and the tile's stores would otherwise wait on each line's
/// read for ownership in turn (one thread, caches flushed: 512x768x3072
/// 23.98-24.37 -> 23.20-23.76 ms, 64x768x768 0.781-0.799 -> 0.764-0.783).
/// The convolution tiles ask for theirs the same way
/// (`conv_blocked::TileStore::prefetch`).
#[inline(always)]
pub(super) fn prefetch_tile_output<O>(
    c: *const O,
    ldc: usize,
    (r0, c0): (usize, usize),
    rows: usize,
    cols: usize,
) {
    for r in r0..r0 + rows {
        for col in [c0, c0 + cols - 1] {
            prefetch_l2(c.wrapping_add(r * ldc + col));
        }
    }
}

/// Asks for the cache line holding `p` into L2 (hint `T1`); `p` need not
/// point anywhere valid.
#[inline(always)]
pub(super) fn prefetch_l2<T>(p: *const T) {
    use std::arch::x86_64::{_MM_HINT_T1, _mm_prefetch};
    // SAFETY: a prefetch has no architectural effect and cannot fault,
    // whatever the address.
    unsafe { _mm_prefetch::<_MM_HINT_T1>(p.cast()) };
}
