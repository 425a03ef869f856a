//! GEMM and GEMV kernels: `C = act(alpha * A * B + beta * C + bias)` with
//! A and B in f32, bf16 or f16 and C in any of the three.
//!
//! # Numerics
//! * Products are accumulated in f32 ([`Accumulation::F32`], the default):
//!   bf16 and f16 inputs are widened exactly to f32 and multiplied with f32
//!   FMAs (the scalar level uses a separate multiply and add). The result is
//!   rounded once, on store, per the crate's conversion contract
//!   ([`crate::convert`]). No path flushes subnormals.
//! * Error bound checked by the tests against an f64 reference:
//!   `|C - C_ref| <= 2 (k + 2) u |alpha| (|A| |B|)_ij + (rounding of the
//!   epilogue and of the store)`, `u = 2^-24`.
//! * The epilogue is the same f32 function on every path (see `epilogue.rs`):
//!   `v = alpha*acc; if beta != 0 { v += beta*c }; if bias { v += bias[j] };
//!   if row_bias { v += row_bias[i] }; act(v)`,
//!   without FMA contraction. `beta == 0` means C is not read, so NaN or
//!   garbage in C is overwritten. `alpha == 0` means A and B are not read
//!   (as in BLAS), so NaN in them does not reach C.
//! * Reproducibility: at a given level each element of C is produced by the
//!   same instruction sequence whatever the thread count (work is split over
//!   M/N blocks only, never over k), so results are bit-identical for any
//!   [`set_num_threads`] (and any [`set_thread_spin`], how long idle helper
//!   threads wait busily for the next job). The k loop of every SIMD path
//!   is one FMA chain per element in increasing k, so [`gemm_packed`] and
//!   [`gemm`] agree bit for bit, except on the small-m path (m <= 16) for
//!   column-contiguous B (`rs == 1`, e.g. `w.t()` of `[out, in]` weights),
//!   which reduces each dot product over 16-lane (AVX-512) or 8-lane (AVX2)
//!   partial sums.
//!   Different levels may differ in the last bits (different summation).
//! * [`Accumulation::F16Blocked`] (native `vfmadd231ph` over short k-blocks)
//!   needs AVX512-FP16 and is not implemented: [`gemm_at`] returns
//!   [`GemmError::Isa`] on CPUs without AVX512-FP16 and
//!   [`GemmError::AccumulationUnsupported`] otherwise.
//! * `VDPBF16PS` is not used by the default path: it flushes subnormal bf16
//!   inputs and results. [`Accumulation::Bf16Dot`] opts into it for bf16 A
//!   and B at `avx512_core_bf16` and up (on Zen 4 its peak is twice the f32
//!   FMA peak in flops); see that variant for its numerics.
//!
//! # Paths
//! | level | m > 16 | m <= 16 (passes of 4 rows) |
//! |---|---|---|
//! | `scalar` | triple loop, one thread | same |
//! | `avx2` | 6 x 16 ymm FMA tile over packed f32 panels | ymm streaming / dot kernels |
//! | `avx512_core` and up | 14 x 32 zmm FMA tile over packed f32 panels | zmm streaming / dot kernels |
//!
//! Large m packs A into f32 row tiles once per call and splits C into
//! blocks over the threads. The tiles multiply B in panels of 32 columns: a
//! view is packed into f32 panels per call (bf16/f16 widened exactly), an
//! f32 or [`PackedB::pack_widened`] B is read in place, and a bf16/f16
//! [`PackedB`] is widened by the tiles in registers (from 256 rows, into f32
//! panels once per call). Small m reads B in its storage type and widens in
//! registers, so bf16/f16 weights move half the bytes of f32: row-contiguous
//! B and [`PackedB`] are streamed, B with `rs == 1` goes through dot
//! products. `avx512_core_fp16` runs the `avx512_core` kernels. GELU
//! activations are the elementwise kernels'
//! ([`crate::elementwise::UnaryOp`]), vectorised over each output row, so a
//! fused activation equals a separate GELU op bit for bit.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod bf16dot;
#[cfg(target_arch = "x86_64")]
pub(crate) mod conv;
#[cfg(target_arch = "x86_64")]
mod conv_blocked;
#[cfg(target_arch = "x86_64")]
mod driver;
mod epilogue;
pub(crate) use epilogue::activate;
mod pack;
mod scalar;
mod threads;

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

pub use crate::element::Element;
use crate::element::FloatType;
#[cfg(test)]
use crate::isa::detected_isa;
use crate::isa::{Isa, IsaError, active_isa};
pub use pack::PackedB;

/// Row-major strided matrix view; element (i, j) of the *logical* matrix.
///
/// Internally a view has a row and a column stride, so [`MatRef::t`] is free.
#[derive(Clone, Copy)]
pub struct MatRef<'a, T> {
    pub(crate) data: &'a [T],
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

/// Checks that `len` elements cover a `rows x cols` view with `row_stride`.
fn check_view(len: usize, rows: usize, cols: usize, row_stride: usize) -> Result<(), GemmError> {
    if rows > 1 && row_stride < cols {
        return Err(GemmError::StrideTooSmall { cols, row_stride });
    }
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let needed = (rows - 1)
        .checked_mul(row_stride)
        .and_then(|x| x.checked_add(cols))
        .ok_or(GemmError::SizeOverflow)?;
    if len < needed {
        return Err(GemmError::DataTooShort { needed, len });
    }
    Ok(())
}

impl<'a, T: Element> MatRef<'a, T> {
    /// A `rows x cols` view with element (i, j) at `data[i * row_stride + j]`.
    ///
    /// Errors if `data` is too short or `row_stride < cols` while `rows > 1`.
    pub fn new(
        data: &'a [T],
        rows: usize,
        cols: usize,
        row_stride: usize,
    ) -> Result<Self, GemmError> {
        check_view(data.len(), rows, cols, row_stride)?;
        Ok(MatRef {
            data,
            rows,
            cols,
            rs: row_stride,
            cs: 1,
        })
    }

    /// The transposed view (no copy): rows and cols swap.
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Element (i, j); bounds were checked at construction.
    #[inline(always)]
    pub(crate) fn at(&self, i: usize, j: usize) -> T {
        self.data[i * self.rs + j * self.cs]
    }
}

impl<T> fmt::Debug for MatRef<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MatRef")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("row_stride", &self.rs)
            .field("col_stride", &self.cs)
            .finish()
    }
}

/// Mutable row-major strided matrix view (the output C).
pub struct MatMut<'a, T> {
    pub(crate) data: &'a mut [T],
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) rs: usize,
}

impl<'a, T: Element> MatMut<'a, T> {
    /// A `rows x cols` view with element (i, j) at `data[i * row_stride + j]`.
    ///
    /// Errors if `data` is too short or `row_stride < cols` while `rows > 1`.
    pub fn new(
        data: &'a mut [T],
        rows: usize,
        cols: usize,
        row_stride: usize,
    ) -> Result<Self, GemmError> {
        check_view(data.len(), rows, cols, row_stride)?;
        Ok(MatMut {
            data,
            rows,
            cols,
            rs: row_stride,
        })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// A shorter-lived copy of this view.
    pub fn rb_mut(&mut self) -> MatMut<'_, T> {
        MatMut {
            data: self.data,
            rows: self.rows,
            cols: self.cols,
            rs: self.rs,
        }
    }
}

impl<T> fmt::Debug for MatMut<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MatMut")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("row_stride", &self.rs)
            .finish()
    }
}

/// Activation applied last in the epilogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Activation {
    /// No activation.
    #[default]
    Identity,
    /// `x` if `x > 0`, NaN if NaN, else `+0`.
    Relu,
    /// `0.5 * x * (1 + erf(x / sqrt 2))`, as [`crate::elementwise::UnaryOp::GeluErf`].
    GeluErf,
    /// `0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))`, as
    /// [`crate::elementwise::UnaryOp::GeluTanh`].
    GeluTanh,
}

/// Products of at most this many rows (m) stream B in its element type
/// (bf16/f16 weights move half the bytes of f32); more rows are computed in
/// register tiles that multiply f32 panels of B (see
/// [`PackedB::pack_widened`]).
pub const STREAMING_ROWS: usize = 16;

/// Work fused into the store of C.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    /// Per-column bias (length n), added after `alpha * A B + beta * C`.
    pub bias: Option<&'a [f32]>,
    /// Per-row bias (length m), added after the column bias: a convolution's
    /// per-channel bias when C is `channels x positions`. Kept in f32 like
    /// the accumulator, whatever C's storage type.
    pub row_bias: Option<&'a [f32]>,
    /// Activation applied after the bias.
    pub activation: Activation,
}

/// How products are accumulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Accumulation {
    /// f32 accumulation for every input type (the default).
    #[default]
    F32,
    /// f16 inputs: native f16 FMAs over short k-blocks summed into f32.
    /// Needs AVX512-FP16; not implemented (see the module docs).
    F16Blocked,
    /// bf16 A and B multiplied with `VDPBF16PS` (levels `avx512_core_bf16`
    /// and up), about twice the f32 FMA throughput on Zen 4: through
    /// [`gemm_at`], or [`gemm_packed`] with weights packed by
    /// [`PackedB::pack_for`]. One micro-kernel serves every m (GEMV
    /// included) with the same per-element instruction sequence, so a row of
    /// C does not depend on how many rows are computed with it, and packed and
    /// unpacked B give the same bits.
    ///
    /// Numerics (Intel SDM, `VDPBF16PS`): k is taken in pairs (an odd k is
    /// padded with a zero); per output element and pair `q` the instruction
    /// does `acc += a[2q+1] b[2q+1]`, then `acc += a[2q] b[2q]`, each product
    /// exact in f32 and each addition rounded to nearest even, with
    /// subnormal bf16 inputs read as zero (DAZ) and subnormal results flushed
    /// to zero (FTZ), whatever MXCSR says. Only the summation order differs
    /// from [`Accumulation::F32`], so the bound keeps its form,
    /// `|C - C_ref| <= 2 (k + 2) u |alpha| (|A| |B|)_ij + |alpha| e_ftz + (epilogue and store)`,
    /// `u = 2^-24`, plus `e_ftz <= 2k 2^-126 (1 + max|A|)(1 + max|B|)` for
    /// the flushed subnormal inputs and partial sums. The epilogue and store
    /// are the F32 path's. Results do not depend on the thread count; they
    /// are not bit-identical to [`Accumulation::F32`].
    Bf16Dot,
}

/// Errors of the GEMM entry points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GemmError {
    /// A view with more than one row has `row_stride < cols`.
    StrideTooSmall {
        /// Columns of the view.
        cols: usize,
        /// The row stride given.
        row_stride: usize,
    },
    /// The slice is shorter than the view needs.
    DataTooShort {
        /// Elements the view needs.
        needed: usize,
        /// Elements the slice has.
        len: usize,
    },
    /// The view's extent overflows `usize`.
    SizeOverflow,
    /// A is m x k, B is k x n and C is m x n does not hold.
    Shape {
        /// (rows, cols) of A.
        a: (usize, usize),
        /// (rows, cols) of B.
        b: (usize, usize),
        /// (rows, cols) of C.
        c: (usize, usize),
    },
    /// The bias does not have n elements.
    BiasLength {
        /// n, the columns of C.
        expected: usize,
        /// The bias length given.
        got: usize,
    },
    /// The row bias does not have m elements.
    RowBiasLength {
        /// m, the rows of C.
        expected: usize,
        /// The row bias length given.
        got: usize,
    },
    /// The accumulation mode cannot run for this input type or is not implemented.
    AccumulationUnsupported {
        /// The mode asked for.
        accumulation: Accumulation,
        /// Why it cannot run.
        reason: &'static str,
    },
    /// The ISA level asked for is not available on this CPU.
    Isa(IsaError),
}

impl fmt::Display for GemmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GemmError::StrideTooSmall { cols, row_stride } => {
                write!(
                    f,
                    "row stride {row_stride} is smaller than the {cols} columns of the matrix"
                )
            }
            GemmError::DataTooShort { needed, len } => {
                write!(
                    f,
                    "matrix view needs {needed} elements but the slice has {len}"
                )
            }
            GemmError::SizeOverflow => f.write_str("matrix view extent overflows usize"),
            GemmError::Shape { a, b, c } => write!(
                f,
                "gemm shape mismatch: A is {}x{}, B is {}x{}, C is {}x{} (need A m x k, B k x n, C m x n)",
                a.0, a.1, b.0, b.1, c.0, c.1
            ),
            GemmError::BiasLength { expected, got } => {
                write!(f, "bias has {got} elements but C has {expected} columns")
            }
            GemmError::RowBiasLength { expected, got } => {
                write!(f, "row bias has {got} elements but C has {expected} rows")
            }
            GemmError::AccumulationUnsupported {
                accumulation,
                reason,
            } => {
                write!(f, "accumulation {accumulation:?} unsupported: {reason}")
            }
            GemmError::Isa(err) => write!(f, "{err}"),
        }
    }
}

impl std::error::Error for GemmError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            GemmError::Isa(err) => Some(err),
            _ => None,
        }
    }
}

impl From<IsaError> for GemmError {
    fn from(err: IsaError) -> Self {
        GemmError::Isa(err)
    }
}

static NUM_THREADS: AtomicUsize = AtomicUsize::new(0);

/// What GEMM runs at `isa` (for `mixprec info` and `mixprec bench`).
pub const fn implementation(isa: Isa) -> &'static str {
    match isa {
        Isa::Scalar => "scalar f32 reference (f32 accumulation)",
        Isa::Avx2 => "avx2 6x16 ymm FMA tiles over packed f32 panels; small-m streaming",
        // bf16/f16 inputs are widened exactly while packing; VDPBF16PS is not
        // used (it flushes subnormal inputs and rounds after each pair).
        Isa::Avx512Core => "avx512 14x32 zmm FMA tiles over packed f32 panels; small-m streaming",
        Isa::Avx512CoreBf16 | Isa::Avx512CoreFp16 => {
            "avx512 14x32 zmm FMA tiles over packed f32 panels; small-m streaming; \
             Accumulation::Bf16Dot (bf16 graph nodes by default): vdpbf16ps 1..14 x 32 tiles over bf16 k-pairs"
        }
    }
}

/// Sets the number of threads GEMM may use; `0` restores the default (the
/// available cores). Results do not depend on this setting.
pub fn set_num_threads(n: usize) {
    NUM_THREADS.store(n, Ordering::Relaxed);
}

/// Sets how long the kernels' helper threads spin for the next job before
/// they sleep (default 2 ms). Spinning keeps a model's back-to-back
/// parallel steps from waiting on the OS to wake a thread; a process that
/// makes a parallel call now and then and wants its other cores left alone
/// can set zero, so helpers sleep as soon as a job ends. Results do not
/// depend on this setting.
pub fn set_thread_spin(spin: std::time::Duration) {
    threads::set_spin(spin);
}

/// Runs `f(0)`, ..., `f(parts - 1)` on the GEMM threads (up to
/// [`num_threads`], the calling thread among them), so work split outside
/// the kernels (the graph's row-parallel steps) shares the GEMM's threads
/// instead of starting a second set. Which thread runs a part is not fixed.
pub fn for_each_part(parts: usize, f: impl Fn(usize) + Sync) {
    threads::parallel_for(num_threads(), parts, 0, |i, _| f(i));
}

/// The number of threads GEMM may use (default: the available cores).
pub fn num_threads() -> usize {
    match NUM_THREADS.load(Ordering::Relaxed) {
        0 => available_cores(),
        n => n,
    }
}

/// The available cores, asked once: `available_parallelism` reads cgroup
/// files under /proc on Linux (~30 us a call), which every small GEMM, cast
/// and elementwise step of a graph run paid before this was cached.
fn available_cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Where B comes from: a strided view or a [`PackedB`].
#[derive(Clone, Copy)]
pub(crate) enum BSource<'a, T> {
    View(MatRef<'a, T>),
    Packed(&'a PackedB<T>),
}

impl<T: Element> BSource<'_, T> {
    fn shape(&self) -> (usize, usize) {
        match self {
            BSource::View(b) => (b.rows, b.cols),
            BSource::Packed(p) => (p.k, p.n),
        }
    }

    #[inline(always)]
    pub(crate) fn at(&self, kk: usize, j: usize) -> T {
        match self {
            BSource::View(b) => b.at(kk, j),
            BSource::Packed(p) => p.at(kk, j),
        }
    }
}

pub(crate) fn check_accumulation<T: Element>(accumulation: Accumulation) -> Result<(), GemmError> {
    match accumulation {
        Accumulation::F32 => Ok(()),
        Accumulation::F16Blocked if T::DTYPE != FloatType::F16 => {
            Err(GemmError::AccumulationUnsupported {
                accumulation,
                reason: "F16Blocked applies to f16 inputs only",
            })
        }
        Accumulation::Bf16Dot if T::DTYPE != FloatType::Bf16 => {
            Err(GemmError::AccumulationUnsupported {
                accumulation,
                reason: "Bf16Dot applies to bf16 inputs only",
            })
        }
        Accumulation::Bf16Dot => Ok(()),
        Accumulation::F16Blocked => {
            Isa::Avx512CoreFp16.require()?;
            Err(GemmError::AccumulationUnsupported {
                accumulation,
                reason: "native f16 accumulation is not implemented yet (no AVX512-FP16 machine to test on)",
            })
        }
    }
}

pub(crate) fn check_shapes<O: Element>(
    a: (usize, usize),
    b: (usize, usize),
    c: &MatMut<O>,
    epilogue: &Epilogue,
) -> Result<(), GemmError> {
    let cs = (c.rows, c.cols);
    if a.1 != b.0 || a.0 != cs.0 || b.1 != cs.1 {
        return Err(GemmError::Shape { a, b, c: cs });
    }
    if let Some(bias) = epilogue.bias
        && bias.len() != cs.1
    {
        return Err(GemmError::BiasLength {
            expected: cs.1,
            got: bias.len(),
        });
    }
    if let Some(bias) = epilogue.row_bias
        && bias.len() != cs.0
    {
        return Err(GemmError::RowBiasLength {
            expected: cs.0,
            got: bias.len(),
        });
    }
    Ok(())
}

/// `C = act(alpha * A * B + beta * C + bias)` on the active level with f32 accumulation.
///
/// A is m x k, B is k x n, C is m x n; `beta == 0` means C is not read.
pub fn gemm<T: Element, O: Element>(
    alpha: f32,
    a: MatRef<T>,
    b: MatRef<T>,
    beta: f32,
    c: MatMut<O>,
    epilogue: &Epilogue,
) -> Result<(), GemmError> {
    gemm_at(
        active_isa(),
        Accumulation::F32,
        alpha,
        a,
        b,
        beta,
        c,
        epilogue,
    )
}

/// [`gemm`] at an explicit level and accumulation mode.
#[allow(clippy::too_many_arguments)]
pub fn gemm_at<T: Element, O: Element>(
    isa: Isa,
    accumulation: Accumulation,
    alpha: f32,
    a: MatRef<T>,
    b: MatRef<T>,
    beta: f32,
    c: MatMut<O>,
    epilogue: &Epilogue,
) -> Result<(), GemmError> {
    let isa = isa.require()?;
    check_accumulation::<T>(accumulation)?;
    if accumulation == Accumulation::Bf16Dot {
        require_bf16dot(isa)?;
    }
    check_shapes((a.rows, a.cols), (b.rows, b.cols), &c, epilogue)?;
    run_mode(
        isa,
        accumulation,
        alpha,
        a,
        BSource::View(b),
        beta,
        c,
        epilogue,
    );
    Ok(())
}

/// `Accumulation::Bf16Dot` needs AVX512-BF16 on the CPU and a caller's
/// level (a cap) that includes it.
pub(crate) fn require_bf16dot(isa: Isa) -> Result<(), GemmError> {
    Isa::Avx512CoreBf16.require()?;
    if isa < Isa::Avx512CoreBf16 {
        return Err(GemmError::Isa(IsaError::Unsupported {
            requested: Isa::Avx512CoreBf16,
            detected: isa,
        }));
    }
    Ok(())
}

/// Validated entry for every mode: shapes agree, `isa` is available and
/// covers `accumulation`, T suits it.
#[allow(clippy::too_many_arguments)]
fn run_mode<T: Element, O: Element>(
    isa: Isa,
    accumulation: Accumulation,
    alpha: f32,
    a: MatRef<T>,
    b: BSource<T>,
    beta: f32,
    c: MatMut<O>,
    epilogue: &Epilogue,
) {
    #[cfg(target_arch = "x86_64")]
    if accumulation == Accumulation::Bf16Dot
        && alpha != 0.0
        && a.cols != 0
        && c.rows != 0
        && c.cols != 0
    {
        let ep = driver::Ep::new(isa, alpha, beta, epilogue);
        // SAFETY: T is bf16 (check_accumulation), the shapes were checked and
        // are non-empty, and the CPU has AVX-512 F/BW/VL and BF16
        // (`require_bf16dot` passed).
        unsafe { bf16dot::run(&ep, a, b, c) };
        return;
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = accumulation;
    // alpha == 0 or k == 0 forms no product: every mode is the epilogue on
    // zeros, which the F32 path does without reading B.
    run(isa, alpha, a, b, beta, c, epilogue);
}

/// [`gemm`] with a pre-packed B on the active level.
pub fn gemm_packed<T: Element, O: Element>(
    alpha: f32,
    a: MatRef<T>,
    b: &PackedB<T>,
    beta: f32,
    c: MatMut<O>,
    epilogue: &Epilogue,
) -> Result<(), GemmError> {
    gemm_packed_at(active_isa(), alpha, a, b, beta, c, epilogue)
}

/// [`gemm_packed`] at an explicit level.
///
/// A B packed for [`Accumulation::Bf16Dot`] ([`PackedB::pack_for`]) runs
/// with that accumulation and needs `avx512_core_bf16` (else
/// [`GemmError::Isa`]).
pub fn gemm_packed_at<T: Element, O: Element>(
    isa: Isa,
    alpha: f32,
    a: MatRef<T>,
    b: &PackedB<T>,
    beta: f32,
    c: MatMut<O>,
    epilogue: &Epilogue,
) -> Result<(), GemmError> {
    let isa = isa.require()?;
    let accumulation = b.accumulation();
    if accumulation == Accumulation::Bf16Dot {
        require_bf16dot(isa)?;
    }
    check_shapes((a.rows, a.cols), (b.k, b.n), &c, epilogue)?;
    run_mode(
        isa,
        accumulation,
        alpha,
        a,
        BSource::Packed(b),
        beta,
        c,
        epilogue,
    );
    Ok(())
}

/// AVX-512 micro-kernels; only reached at a level that includes AVX-512 F/BW/VL.
#[cfg(target_arch = "x86_64")]
static AVX512: driver::Kernels = driver::Kernels {
    mr: avx512::MR,
    small_cols: avx512::SMALL_COLS,
    big_tile: avx512::big_tile,
    small_tile: avx512::small_tile,
    axpy_rows: avx512::axpy_rows,
    dot_tile: avx512::dot_tile,
};

/// AVX2 micro-kernels; only reached at a level that includes AVX2/FMA/F16C.
#[cfg(target_arch = "x86_64")]
static AVX2: driver::Kernels = driver::Kernels {
    mr: avx2::MR,
    small_cols: avx2::SMALL_COLS,
    big_tile: avx2::big_tile,
    small_tile: avx2::small_tile,
    axpy_rows: avx2::axpy_rows,
    dot_tile: avx2::dot_tile,
};

/// Validated entry: shapes agree, `isa` is available.
fn run<T: Element, O: Element>(
    isa: Isa,
    alpha: f32,
    a: MatRef<T>,
    b: BSource<T>,
    beta: f32,
    c: MatMut<O>,
    epilogue: &Epilogue,
) {
    debug_assert_eq!(b.shape().0, a.cols);
    if c.rows == 0 || c.cols == 0 {
        return;
    }
    match isa {
        Isa::Scalar => scalar::gemm(alpha, a, b, beta, c, epilogue),
        // SAFETY of the kernel table: `isa` passed `Isa::require` (or is
        // `active_isa()`), so the CPU has AVX2, FMA and F16C.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => driver::run(isa, &AVX2, alpha, a, b, beta, c, epilogue),
        // SAFETY of the kernel table: `isa` passed `Isa::require` (or is
        // `active_isa()`), so the CPU has AVX-512 F/BW/DQ/VL.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Core | Isa::Avx512CoreBf16 | Isa::Avx512CoreFp16 => {
            driver::run(isa, &AVX512, alpha, a, b, beta, c, epilogue)
        }
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("no level above scalar is ever detected on this target"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_reject_bad_geometry() {
        let d = [0.0f32; 10];
        assert_eq!(
            MatRef::new(&d, 2, 4, 3).unwrap_err(),
            GemmError::StrideTooSmall {
                cols: 4,
                row_stride: 3
            }
        );
        assert_eq!(
            MatRef::new(&d, 3, 4, 4).unwrap_err(),
            GemmError::DataTooShort {
                needed: 12,
                len: 10
            }
        );
        assert!(MatRef::new(&d, 1, 10, 0).is_ok());
        assert!(MatRef::new(&d, 0, 100, 100).is_ok());
        assert_eq!(
            MatRef::new(&d, usize::MAX, 2, usize::MAX).unwrap_err(),
            GemmError::SizeOverflow
        );
        let t = MatRef::new(&d, 2, 5, 5).unwrap().t();
        assert_eq!((t.rows(), t.cols()), (5, 2));
        assert_eq!(t.at(3, 1), d[8]);
    }

    #[test]
    fn f16_blocked_is_a_typed_error() {
        let a = [half::f16::ONE; 4];
        let mut c = [0.0f32; 4];
        let av = MatRef::new(&a, 2, 2, 2).unwrap();
        let err = gemm_at(
            Isa::Scalar,
            Accumulation::F16Blocked,
            1.0,
            av,
            av,
            0.0,
            MatMut::new(&mut c, 2, 2, 2).unwrap(),
            &Epilogue::default(),
        )
        .unwrap_err();
        if detected_isa() < Isa::Avx512CoreFp16 {
            assert!(
                matches!(err, GemmError::Isa(IsaError::Unsupported { .. })),
                "{err}"
            );
        } else {
            assert!(matches!(err, GemmError::AccumulationUnsupported { .. }));
        }
    }
}
