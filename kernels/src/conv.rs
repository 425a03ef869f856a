//! 2-D convolution (NCHW, one image and one group per call) as a GEMM:
//! `C = epilogue(W * im2col(image))`, C being `out_channels x (out_h *
//! out_w)` (an NCHW output plane per row) and W `out_channels x k`,
//! `k = in_channels * kh * kw` in (channel, kernel row, kernel column) order,
//! the layout of ONNX and PyTorch weights. A 1-D convolution is a 2-D one
//! with height 1.
//!
//! # Numerics
//! * [`Accumulation::F32`]: exactly [`gemm::gemm_at`] at the same level with
//!   `alpha = 1`, `beta = 0`, A = W and B = the explicit im2col matrix (zero
//!   where a tap falls in the padding), bit for bit, on every path. So the
//!   GEMM's error bound holds and results do not depend on the thread count.
//! * [`Accumulation::Bf16Dot`] (bf16, `avx512_core_bf16` and up): exactly
//!   [`gemm::gemm_at`] with `Bf16Dot` on that im2col matrix with its k rows
//!   reordered to (channel pair, kernel row, kernel column, channel parity),
//!   an odd channel count padded with a zero channel: each `VDPBF16PS` pair
//!   is two neighbouring channels at one tap. For a 1x1 kernel this is the
//!   plain order. The GEMM's `Bf16Dot` bound holds with that k.
//! * The epilogue's `row_bias` is the per-channel bias, its `bias` is indexed
//!   by output position (`oy * out_w + ox`).
//!
//! # Paths
//! * A 1x1 kernel with stride 1, no padding and out size = in size: the
//!   image is B as it is (a plain GEMM), at every level, unless the
//!   channel-blocked tiles below take it, from 128 input channels: one
//!   thread, 1x512x7x7 -> 2048 1.35-1.39 -> 1.14 ms, 1x2048x7x7 -> 512
//!   1.34 -> 1.23, 1x256x14x14 -> 1024 1.12-1.13 -> 1.01. With 64 input
//!   channels a tile's store is spread over too few k steps: 1x64x56x56 ->
//!   256 went 1.09-1.11 -> 1.17 ms (a batch of 8: 11.5 -> 10.3).
//! * `avx512_core` and up, [`Accumulation::F32`], f32 or f16 output,
//!   output channels a multiple of 16 and an epilogue of at most
//!   `row_bias` and ReLU: a direct convolution over an f32 copy of the image
//!   in 16-channel blocks (NCHW16c) where the input channels are a multiple
//!   of 16, else in one plane per channel (with a stride, each copy row's
//!   columns split by stride phase), weights as vectors and image
//!   values as broadcasts, the accumulators in registers over all of k in
//!   im2col order (the GEMM's FMA chain), NCHW output through 16 x 16
//!   transposes (see `gemm/conv_blocked.rs`). 8x64x56x56 3x3 on one Zen 4
//!   core: 16.7 ms in f32 and 16.6 in f16, where the implicit GEMM below
//!   takes 17.9 and 18.6; ResNet-18's stride-2 convs at batch 1 (3x3 and
//!   1x1 shortcut): 1x256x14x14 -> 512 3x3 2.14 -> 1.22 ms (prepacked
//!   weights), 1x64x56x56 -> 128 1x1 0.35 -> 0.17; its 3-channel 7x7
//!   stride-2 stem over channel planes 2.18-2.20 ms (its NCHW rows in
//!   vectors of 16 pixels), 2.53 as an implicit GEMM.
//! * The same with [`Accumulation::Bf16Dot`] (`avx512_core_bf16` and up),
//!   f32, f16 or bf16 output, any stride: the copy's lanes are bf16
//!   channel pairs (blocks of 16 pairs where the input channels are a
//!   multiple of 32, else one plane per pair) and the tiles run
//!   `VDPBF16PS`, in the Bf16Dot GEMM's k-pair order (below). 8x64x56x56
//!   3x3: 8.8 ms (209 GFLOP/s), where the implicit GEMM takes 10.1;
//!   ResNet-18's stem in a bf16 plan 1.89 -> 1.80 ms.
//! * Otherwise (output channels not a multiple of 16, a wider epilogue, or
//!   bf16 output from f32 FMAs) `avx512_core` and up with
//!   [`Accumulation::F32`], `avx512_core_bf16` and up with
//!   [`Accumulation::Bf16Dot`]: an implicit GEMM that never builds
//!   im2col. The image is copied once into a zero-padded buffer split by
//!   stride phase (f32, or bf16 channel pairs), and the GEMM's 14 x 32
//!   micro-kernels read each k row of B straight from it (see
//!   `gemm/conv.rs`). This removes the im2col write (9x the image for 3x3)
//!   and the GEMM's packing of it. With f32 output and an epilogue of only
//!   `row_bias` and ReLU (a Conv+Relu), the f32 tiles apply it to their
//!   registers and store straight into the output rows (the same bits as
//!   the general epilogue, which runs otherwise).
//! * Otherwise (`scalar`, `avx2`): im2col into a buffer of the input type,
//!   then [`gemm::gemm_at`].
//!
//! [`conv2d_batch_at`] runs a batch in one call (the implicit GEMM splits
//! images x bands of output rows over the threads and packs the weights
//! once); its results are one [`conv2d_at`] per image, bit for bit. Weights
//! used by many calls can be packed for the channel-blocked tiles once
//! ([`PackedConvWeights`], [`ConvWeights::packed`]): 1x512x7x7 3x3 on one
//! Zen 4 thread takes 2.06 ms prepacked (112 GFLOP/s), 2.8-3.0 repacking
//! per call. [`conv2d_batch_residual_at`] adds a residual connection to f32
//! outputs (a ResNet block's Conv, Add, Relu) with the separate steps' bits,
//! in the channel-blocked tiles' registers where they run: four 64x56x56
//! residual blocks at batch 1, one thread, 8.72-8.90 ms as Conv + Add + Relu
//! steps, 8.47-8.52 folded (4.84-5.12 and 4.50-4.60 at two threads).
//! Where those tiles run in f32 ([`takes_nchw16c`]),
//! [`conv2d_batch_layout_at`] also takes images, outputs and residuals in
//! 16-channel blocks ([`ChannelLayout::Nchw16c`]), the tiles' own layout,
//! with the same bits permuted: a network keeps its Conv -> Conv
//! activations so and skips the transposes around each call (the batch-8
//! three-conv 64x56x56 net 51.2 -> 50.6 ms at one thread, ResNet-18 35.1
//! -> 34.5).

use std::fmt;

use crate::element::{Element, FloatType};
use crate::gemm::{self, Accumulation, Epilogue, GemmError, MatMut, MatRef};
use crate::isa::{Isa, active_isa};

#[cfg(target_arch = "x86_64")]
use gemm::conv::BlockedWeights;

/// Input channels from which a pointwise convolution takes the
/// channel-blocked tiles rather than the plain GEMM (module docs: Paths).
#[cfg(target_arch = "x86_64")]
const POINTWISE_BLOCKED_MIN_K: usize = 128;

/// The geometry of one 2-D convolution of one image and one group.
///
/// Padding past the end is implied by `out_size`: taps outside the image
/// read zero, so any output size is valid (ONNX's `auto_pad` and explicit
/// end pads both resolve to `pad_begin` and `out_size`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dShape {
    /// Input channels of this group.
    pub in_channels: usize,
    /// Input (height, width).
    pub in_size: [usize; 2],
    /// Kernel (height, width); both at least 1.
    pub kernel: [usize; 2],
    /// Strides (height, width); both at least 1.
    pub stride: [usize; 2],
    /// Dilations (height, width); both at least 1.
    pub dilation: [usize; 2],
    /// Zero rows above and columns left of the image.
    pub pad_begin: [usize; 2],
    /// Output (height, width).
    pub out_size: [usize; 2],
}

impl Conv2dShape {
    /// `k`, the columns of the weight matrix: `in_channels * kh * kw`.
    pub fn k(&self) -> Option<usize> {
        self.in_channels
            .checked_mul(self.kernel[0])?
            .checked_mul(self.kernel[1])
    }

    /// Output positions per channel, `out_h * out_w`.
    pub fn positions(&self) -> Option<usize> {
        self.out_size[0].checked_mul(self.out_size[1])
    }

    /// The input elements one image holds, `in_channels * h * w`.
    pub fn image_len(&self) -> Option<usize> {
        self.in_channels
            .checked_mul(self.in_size[0])?
            .checked_mul(self.in_size[1])
    }

    /// Whether the convolution is a plain GEMM on the image (1x1, stride 1,
    /// no padding, same size).
    fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1]
            && self.stride == [1, 1]
            && self.pad_begin == [0, 0]
            && self.out_size == self.in_size
    }
}

/// How a batch's images or outputs keep their channels in memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ChannelLayout {
    /// One `h x w` plane per channel: channel `c`, pixel `p` (`y * w + x`)
    /// at element `c * h * w + p`.
    #[default]
    Nchw,
    /// Blocks of 16 channels, each block's pixels in order with their 16
    /// channels consecutive (oneDNN's `nChw16c`, onnxruntime's NCHWc with
    /// 16-channel blocks): channel `c`, pixel `p` at element
    /// `(c / 16 * h * w + p) * 16 + c % 16`. The channels are a multiple of
    /// 16, so the image has as many elements as in NCHW.
    Nchw16c,
}

/// The channel layouts of a [`conv2d_batch_layout_at`] call's images,
/// outputs and residual.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConvLayouts {
    /// The images' layout.
    pub image: ChannelLayout,
    /// The outputs' layout.
    pub output: ChannelLayout,
    /// The residual's layout (its images at the outputs' strides).
    pub residual: ChannelLayout,
}

/// Errors of the convolutions and of [`PackedConvWeights`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConvError {
    /// A kernel size, stride or dilation is zero.
    ZeroGeometry {
        /// Which field.
        field: &'static str,
    },
    /// A size computed from the shape overflows `usize`.
    SizeOverflow,
    /// The image slice does not hold `in_channels * h * w` elements.
    ImageLength {
        /// Elements the shape needs.
        expected: usize,
        /// Elements given.
        got: usize,
    },
    /// The weights are not `out_channels x k` or the output not
    /// `out_channels x out_h*out_w`.
    Shape {
        /// (rows, cols) of the weights.
        weights: (usize, usize),
        /// (rows, cols) of the output.
        out: (usize, usize),
        /// `k` of the shape.
        k: usize,
        /// Output positions of the shape.
        positions: usize,
    },
    /// A batch's outputs are closer together than one output's size.
    OutputStride {
        /// The stride given.
        stride: usize,
        /// Elements of one output, `out_channels * out_h * out_w`.
        per_image: usize,
    },
    /// A batch's output slice is shorter than the batch needs.
    OutputLength {
        /// Elements the batch needs.
        expected: usize,
        /// Elements given.
        got: usize,
    },
    /// A residual holds fewer elements than the batch's outputs span.
    ResidualLength {
        /// Elements the batch needs.
        expected: usize,
        /// Elements given.
        got: usize,
    },
    /// Weights to pack have a width that is not a whole number of kernel
    /// taps per input channel.
    KernelTaps {
        /// Columns of the weights (`k`).
        cols: usize,
        /// `kh * kw` of the kernel.
        taps: usize,
    },
    /// [`PackedConvWeights`] that do not fit the call: other weight
    /// dimensions, element type, kernel or accumulation.
    PackedMismatch {
        /// What differs.
        what: &'static str,
    },
    /// A channel layout the call cannot take ([`conv2d_batch_layout_at`]).
    Layout {
        /// Why.
        reason: &'static str,
    },
    /// An error of the underlying GEMM (level, accumulation, bias length).
    Gemm(GemmError),
}

impl fmt::Display for ConvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConvError::ZeroGeometry { field } => {
                write!(f, "convolution {field} must be at least 1")
            }
            ConvError::SizeOverflow => f.write_str("convolution sizes overflow usize"),
            ConvError::ImageLength { expected, got } => {
                write!(
                    f,
                    "convolution image has {got} elements, the shape needs {expected}"
                )
            }
            ConvError::Shape {
                weights,
                out,
                k,
                positions,
            } => write!(
                f,
                "convolution weights are {}x{} and output {}x{}; need out_channels x {k} and out_channels x {positions}",
                weights.0, weights.1, out.0, out.1
            ),
            ConvError::OutputStride { stride, per_image } => write!(
                f,
                "convolution batch outputs are {stride} elements apart but one output has {per_image}"
            ),
            ConvError::OutputLength { expected, got } => {
                write!(
                    f,
                    "convolution output has {got} elements, the batch needs {expected}"
                )
            }
            ConvError::ResidualLength { expected, got } => {
                write!(
                    f,
                    "convolution residual has {got} elements, the batch needs {expected}"
                )
            }
            ConvError::KernelTaps { cols, taps } => write!(
                f,
                "convolution weights have {cols} columns, not a multiple of the kernel's {taps} taps"
            ),
            ConvError::PackedMismatch { what } => {
                write!(f, "packed convolution weights do not fit the call: {what}")
            }
            ConvError::Layout { reason } => write!(f, "convolution channel layout: {reason}"),
            ConvError::Gemm(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ConvError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConvError::Gemm(e) => Some(e),
            _ => None,
        }
    }
}

impl From<GemmError> for ConvError {
    fn from(e: GemmError) -> Self {
        ConvError::Gemm(e)
    }
}

/// Convolution weights with the layout of the channel-blocked tiles (see
/// the module docs) built once, for weights used by many calls (a model's
/// layer): [`conv2d_batch_at`] with [`ConvWeights::packed`] then skips
/// repacking them. For 512 input and output channels, 3x3, that repacking
/// is 2.4 M lanes per call: 1x512x7x7 takes 2.06 ms prepacked and 2.8-3.0
/// without on one Zen 4 thread.
///
/// Packing keeps nothing where those tiles never read these weights (below
/// `avx512_core`, or output channel counts they do not take): the calls then run
/// as without it. Results are the same bits either way.
#[derive(Clone)]
pub struct PackedConvWeights {
    lanes: Option<BlockedWeights>,
    rows: usize,
    cols: usize,
    dtype: FloatType,
    kernel: [usize; 2],
    accumulation: Accumulation,
}

impl fmt::Debug for PackedConvWeights {
    // The lanes are millions of numbers for a large layer: their count only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PackedConvWeights")
            .field(
                "blocked_lanes",
                &self.lanes.as_ref().map(BlockedWeights::len),
            )
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("dtype", &self.dtype)
            .field("kernel", &self.kernel)
            .field("accumulation", &self.accumulation)
            .finish()
    }
}

impl PackedConvWeights {
    /// Packs the `out_channels x k` `weights` of a `kernel` (`kh, kw`)
    /// convolution for calls with `accumulation` at `isa`.
    ///
    /// Errors if `k` is not a whole number of taps per input channel or
    /// `isa` is not available on this CPU.
    pub fn pack<T: Element>(
        isa: Isa,
        accumulation: Accumulation,
        kernel: [usize; 2],
        weights: MatRef<T>,
    ) -> Result<Self, ConvError> {
        let isa = isa.require().map_err(GemmError::from)?;
        let taps = kernel[0].saturating_mul(kernel[1]);
        if taps == 0 || !weights.cols().is_multiple_of(taps) {
            return Err(ConvError::KernelTaps {
                cols: weights.cols(),
                taps,
            });
        }
        #[cfg(target_arch = "x86_64")]
        let lanes = gemm::conv::pack_blocked_weights(isa, accumulation, taps, &weights);
        #[cfg(not(target_arch = "x86_64"))]
        let lanes = {
            let _ = isa;
            None
        };
        Ok(PackedConvWeights {
            lanes,
            rows: weights.rows(),
            cols: weights.cols(),
            dtype: T::DTYPE,
            kernel,
            accumulation,
        })
    }

    /// Whether the blocked tiles' layout was built (else calls repack
    /// nothing and take another path).
    pub fn is_blocked(&self) -> bool {
        self.lanes.is_some()
    }
}

/// Off x86 no tiles read packed weights, so none are built.
#[cfg(not(target_arch = "x86_64"))]
#[derive(Clone)]
enum BlockedWeights {}

#[cfg(not(target_arch = "x86_64"))]
impl BlockedWeights {
    fn len(&self) -> usize {
        match *self {}
    }
}

/// The weights of a [`conv2d_batch_at`] call: the `out_channels x k`
/// matrix, with its [`PackedConvWeights`] where the caller keeps them. A
/// [`MatRef`] converts into one without.
#[derive(Clone, Copy, Debug)]
pub struct ConvWeights<'a, T> {
    matrix: MatRef<'a, T>,
    packed: Option<&'a PackedConvWeights>,
}

impl<'a, T: Element> ConvWeights<'a, T> {
    /// `matrix` with `packed`, which must have been packed from it: the
    /// dimensions and element type are checked, the values cannot be (with
    /// other values the results are those of the packed ones).
    pub fn packed(matrix: MatRef<'a, T>, packed: &'a PackedConvWeights) -> Result<Self, ConvError> {
        if (packed.rows, packed.cols) != (matrix.rows(), matrix.cols()) {
            return Err(ConvError::PackedMismatch {
                what: "weight dimensions",
            });
        }
        if packed.dtype != T::DTYPE {
            return Err(ConvError::PackedMismatch {
                what: "element type",
            });
        }
        Ok(ConvWeights {
            matrix,
            packed: Some(packed),
        })
    }
}

impl<'a, T> From<MatRef<'a, T>> for ConvWeights<'a, T> {
    fn from(matrix: MatRef<'a, T>) -> Self {
        ConvWeights {
            matrix,
            packed: None,
        }
    }
}

/// What a convolution runs at `isa` (for `mixprec info`); 1x1 ones below
/// 128 input channels are a plain GEMM on the image.
pub const fn implementation(isa: Isa) -> &'static str {
    match isa {
        Isa::Scalar => "scalar im2col + GEMM",
        Isa::Avx2 => "avx2 im2col + GEMM",
        Isa::Avx512Core => {
            "avx512: convs with output channels in multiples of 16 (stride-1 1x1 from 128 \
             input channels) as 32-channel x 14-pixel FMA tiles over an f32 NCHW16c copy \
             (channel planes for other input channel counts, whose NCHW output rows a \
             multiple of 16 wide take 16-pixel x 4-channel tiles; NCHW16c activations \
             kept between such f32 convs); others an implicit GEMM of \
             14x32 tiles reading stride-1 'same' f32 images in place (padding masked), else \
             a padded copy"
        }
        Isa::Avx512CoreBf16 | Isa::Avx512CoreFp16 => {
            "avx512: convs with output channels in multiples of 16 (stride-1 1x1 from 128 \
             input channels) as 32-channel x 14-pixel FMA tiles over an f32 NCHW16c copy \
             (channel planes for other input channel counts, whose NCHW output rows a \
             multiple of 16 wide take 16-pixel x 4-channel tiles; NCHW16c activations \
             kept between such f32 convs); others an implicit GEMM of \
             14x32 tiles reading stride-1 'same' f32 images in place (padding masked), else \
             a padded copy; \
             Bf16Dot: vdpbf16ps tiles over blocked channel pairs (planes of pairs where the \
             input channels are not a multiple of 32), else 14x32 tiles over a channel-pair \
             copy"
        }
    }
}

/// [`conv2d_at`] on the active level with f32 accumulation.
pub fn conv2d<T: Element, O: Element>(
    shape: &Conv2dShape,
    image: &[T],
    weights: MatRef<T>,
    out: MatMut<O>,
    epilogue: &Epilogue,
) -> Result<(), ConvError> {
    conv2d_at(
        active_isa(),
        Accumulation::F32,
        shape,
        image,
        weights,
        out,
        epilogue,
    )
}

/// `out = epilogue(weights * im2col(image))` at an explicit level and
/// accumulation (see the module docs for the numerics and paths).
///
/// `image` is `in_channels x h x w` (NCHW, one image), `weights` is
/// `out_channels x k` and `out` is `out_channels x out_h*out_w`.
pub fn conv2d_at<T: Element, O: Element>(
    isa: Isa,
    accumulation: Accumulation,
    shape: &Conv2dShape,
    image: &[T],
    weights: MatRef<T>,
    out: MatMut<O>,
    epilogue: &Epilogue,
) -> Result<(), ConvError> {
    let (k, positions, image_len) = validate(shape, &weights)?;
    if image.len() != image_len {
        return Err(ConvError::ImageLength {
            expected: image_len,
            got: image.len(),
        });
    }
    if out.cols() != positions || weights.rows() != out.rows() {
        return Err(ConvError::Shape {
            weights: (weights.rows(), weights.cols()),
            out: (out.rows(), out.cols()),
            k,
            positions,
        });
    }
    let ldc = out.rs;
    let batch = Images {
        count: 1,
        images: image,
        image_stride: image_len,
        out: out.data,
        out_stride: 0,
        ldc,
        residual: None,
        layouts: ConvLayouts::default(),
    };
    convolve(isa, accumulation, shape, batch, weights, None, epilogue)
}

/// [`conv2d_at`] over a batch of `count` images in one call: image `n` is
/// `images[n * image_stride..]` (`in_channels x h x w`), its output
/// `out[n * out_stride..]` (`out_channels` rows of `out_h * out_w`,
/// contiguous). For NCHW tensors, one group of a grouped convolution is
/// `images = &x[g * cg * h * w..]` with `image_stride = c * h * w` and
/// likewise for the output. Results are those of one [`conv2d_at`] call per
/// image, bit for bit; the batch is split over the threads as a whole.
/// `weights` is a [`MatRef`] or [`ConvWeights::packed`]; packed weights
/// must be for this call's kernel and accumulation.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_batch_at<'w, T: Element, O: Element>(
    isa: Isa,
    accumulation: Accumulation,
    shape: &Conv2dShape,
    count: usize,
    images: &[T],
    image_stride: usize,
    weights: impl Into<ConvWeights<'w, T>>,
    out: &mut [O],
    out_stride: usize,
    epilogue: &Epilogue,
) -> Result<(), ConvError> {
    let batch = BatchArgs {
        count,
        images,
        image_stride,
        out,
        out_stride,
    };
    conv2d_batch(
        isa,
        accumulation,
        shape,
        batch,
        weights.into(),
        epilogue,
        None,
        ConvLayouts::default(),
    )
}

/// [`conv2d_batch_at`] with f32 outputs and a residual connection:
/// `out = act(conv + row_bias + residual)`, the additions rounded to f32 in
/// that order and the epilogue's activation last, so the bits are those of
/// the convolution without its activation followed by an elementwise add of
/// `residual` and then the activation (a ResNet block's Conv, Add, Relu).
/// `residual` is laid out as `out`: image `n`'s element `i` at
/// `n * out_stride + i`. Where the channel-blocked tiles run (module docs:
/// Paths) the sum is formed in their registers; elsewhere the convolution
/// is stored first and the residual added in a second pass.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_batch_residual_at<'w, T: Element>(
    isa: Isa,
    accumulation: Accumulation,
    shape: &Conv2dShape,
    count: usize,
    images: &[T],
    image_stride: usize,
    weights: impl Into<ConvWeights<'w, T>>,
    out: &mut [f32],
    out_stride: usize,
    epilogue: &Epilogue,
    residual: &[f32],
) -> Result<(), ConvError> {
    let weights = weights.into();
    let m = weights.matrix.rows();
    let per_out = check_residual(shape, m, count, out_stride, residual)?;
    #[cfg(target_arch = "x86_64")]
    let in_registers = isa
        .require()
        .is_ok_and(|isa| runs_blocked_tiles::<f32>(isa, accumulation, shape, m, epilogue));
    #[cfg(not(target_arch = "x86_64"))]
    let in_registers = false;
    let batch = BatchArgs {
        count,
        images,
        image_stride,
        out,
        out_stride,
    };
    if in_registers {
        return conv2d_batch(
            isa,
            accumulation,
            shape,
            batch,
            weights,
            epilogue,
            Some(residual),
            ConvLayouts::default(),
        );
    }
    let plain = Epilogue {
        activation: gemm::Activation::Identity,
        ..*epilogue
    };
    conv2d_batch(
        isa,
        accumulation,
        shape,
        batch,
        weights,
        &plain,
        None,
        ConvLayouts::default(),
    )?;
    for n in 0..count {
        let y = &mut out[n * out_stride..][..per_out];
        for (y, &r) in y.iter_mut().zip(&residual[n * out_stride..][..per_out]) {
            *y = gemm::activate(epilogue.activation, *y + r);
        }
    }
    Ok(())
}

/// Checks that `residual` spans a batch's outputs; returns one output's
/// elements (0 where the geometry overflows, which the convolution's own
/// checks report).
fn check_residual(
    shape: &Conv2dShape,
    m: usize,
    count: usize,
    out_stride: usize,
    residual: &[f32],
) -> Result<usize, ConvError> {
    let per_out = shape.positions().map_or(0, |p| m.saturating_mul(p));
    let needed = count
        .saturating_sub(1)
        .saturating_mul(out_stride)
        .saturating_add(per_out);
    if count > 0 && residual.len() < needed {
        return Err(ConvError::ResidualLength {
            expected: needed,
            got: residual.len(),
        });
    }
    Ok(per_out)
}

/// Whether [`conv2d_batch_layout_at`] takes NCHW16c images or outputs for
/// this call: at `avx512_core` and up (available here), where the
/// channel-blocked tiles run it with f32 FMAs (output channels a multiple
/// of 16, an epilogue of at most `row_bias` and ReLU, a pointwise kernel
/// from 128 input channels; module docs: Paths). NCHW16c images need input
/// channels a multiple of 16 as well.
pub fn takes_nchw16c(
    isa: Isa,
    shape: &Conv2dShape,
    out_channels: usize,
    epilogue: &Epilogue,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        isa.require().is_ok_and(|isa| {
            runs_blocked_tiles::<f32>(isa, Accumulation::F32, shape, out_channels, epilogue)
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (isa, shape, out_channels, epilogue);
        false
    }
}

/// [`conv2d_batch_at`] (f32, [`Accumulation::F32`]) with the images,
/// outputs and an optional residual ([`conv2d_batch_residual_at`]'s
/// `act(conv + row_bias + residual)`, at the outputs' strides) in the
/// channel layouts `layouts` gives. Each image and output occupies the
/// same elements as in NCHW (`image_stride` and `out_stride` apart), and
/// the results are the NCHW call's bits, permuted: a network's Conv ->
/// Conv activations can stay in 16-channel blocks, the layout the tiles
/// compute in, instead of being transposed out and back in around each
/// call.
///
/// Errors with [`ConvError::Layout`] where a layout is NCHW16c but
/// [`takes_nchw16c`] does not hold, or the images' input channels are not
/// a multiple of 16.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_batch_layout_at<'w>(
    isa: Isa,
    shape: &Conv2dShape,
    count: usize,
    images: &[f32],
    image_stride: usize,
    weights: impl Into<ConvWeights<'w, f32>>,
    out: &mut [f32],
    out_stride: usize,
    epilogue: &Epilogue,
    residual: Option<&[f32]>,
    layouts: ConvLayouts,
) -> Result<(), ConvError> {
    let weights = weights.into();
    let m = weights.matrix.rows();
    if layouts == ConvLayouts::default() {
        // NCHW: the residual call's fallback where the tiles do not run.
        if let Some(r) = residual {
            return conv2d_batch_residual_at(
                isa,
                Accumulation::F32,
                shape,
                count,
                images,
                image_stride,
                weights,
                out,
                out_stride,
                epilogue,
                r,
            );
        }
    } else {
        check_nchw16c(isa, shape, m, epilogue, layouts)?;
    }
    if let Some(r) = residual {
        check_residual(shape, m, count, out_stride, r)?;
    }
    let batch = BatchArgs {
        count,
        images,
        image_stride,
        out,
        out_stride,
    };
    conv2d_batch(
        isa,
        Accumulation::F32,
        shape,
        batch,
        weights,
        epilogue,
        residual,
        layouts,
    )
}

/// Errors unless [`conv2d_batch_layout_at`] can take `layouts` (some
/// NCHW16c) for this call.
fn check_nchw16c(
    isa: Isa,
    shape: &Conv2dShape,
    m: usize,
    epilogue: &Epilogue,
    layouts: ConvLayouts,
) -> Result<(), ConvError> {
    if !takes_nchw16c(isa, shape, m, epilogue) {
        return Err(ConvError::Layout {
            reason: "the channel-blocked f32 tiles do not run this convolution here",
        });
    }
    if layouts.image == ChannelLayout::Nchw16c && !shape.in_channels.is_multiple_of(16) {
        return Err(ConvError::Layout {
            reason: "NCHW16c images need input channels in multiples of 16",
        });
    }
    Ok(())
}

/// Whether a validated call at an available `isa` runs the channel-blocked
/// tiles: the direct paths' level, and either the tiles' own conditions
/// or, for a pointwise convolution (otherwise a plain GEMM on the image),
/// at least [`POINTWISE_BLOCKED_MIN_K`] input channels as well.
#[cfg(target_arch = "x86_64")]
fn runs_blocked_tiles<O: Element>(
    isa: Isa,
    accumulation: Accumulation,
    shape: &Conv2dShape,
    m: usize,
    epilogue: &Epilogue,
) -> bool {
    let level = match accumulation {
        Accumulation::F32 => isa >= Isa::Avx512Core,
        Accumulation::Bf16Dot => isa >= Isa::Avx512CoreBf16,
        Accumulation::F16Blocked => false,
    };
    level
        && (!shape.is_pointwise() || shape.in_channels >= POINTWISE_BLOCKED_MIN_K)
        && gemm::conv::takes_blocked_tiles::<O>(isa, accumulation, m, epilogue)
}

/// The batch arguments of [`conv2d_batch_at`].
struct BatchArgs<'a, 'o, T, O> {
    count: usize,
    images: &'a [T],
    image_stride: usize,
    out: &'o mut [O],
    out_stride: usize,
}

/// [`conv2d_batch_at`], and with `residual` (f32 `out`, blocked tiles) its
/// residual form; NCHW16c `layouts` only where [`takes_nchw16c`] holds.
#[allow(clippy::too_many_arguments)]
fn conv2d_batch<'w, T: Element, O: Element>(
    isa: Isa,
    accumulation: Accumulation,
    shape: &Conv2dShape,
    batch: BatchArgs<'_, '_, T, O>,
    weights: ConvWeights<'w, T>,
    epilogue: &Epilogue,
    residual: Option<&[f32]>,
    layouts: ConvLayouts,
) -> Result<(), ConvError> {
    let BatchArgs {
        count,
        images,
        image_stride,
        out,
        out_stride,
    } = batch;
    let ConvWeights {
        matrix: weights,
        packed,
    } = weights;
    if let Some(p) = packed {
        if p.kernel != shape.kernel {
            return Err(ConvError::PackedMismatch { what: "kernel" });
        }
        if p.accumulation != accumulation {
            return Err(ConvError::PackedMismatch {
                what: "accumulation",
            });
        }
    }
    let packed = packed.and_then(|p| p.lanes.as_ref());
    let (_, positions, image_len) = validate(shape, &weights)?;
    if count == 0 {
        return Ok(());
    }
    let per_out = weights
        .rows()
        .checked_mul(positions)
        .ok_or(ConvError::SizeOverflow)?;
    if count > 1 && out_stride < per_out {
        return Err(ConvError::OutputStride {
            stride: out_stride,
            per_image: per_out,
        });
    }
    let extent = |stride: usize, len: usize| {
        (count - 1)
            .checked_mul(stride)
            .and_then(|x| x.checked_add(len))
            .ok_or(ConvError::SizeOverflow)
    };
    let needed = extent(image_stride, image_len)?;
    if images.len() < needed {
        return Err(ConvError::ImageLength {
            expected: needed,
            got: images.len(),
        });
    }
    let needed = extent(out_stride, per_out)?;
    if out.len() < needed {
        return Err(ConvError::OutputLength {
            expected: needed,
            got: out.len(),
        });
    }
    let batch = Images {
        count,
        images,
        image_stride,
        out,
        out_stride,
        ldc: positions,
        residual,
        layouts,
    };
    convolve(isa, accumulation, shape, batch, weights, packed, epilogue)
}

/// Checks the geometry and the weights' width; returns `k`, the output
/// positions and the image length.
fn validate<T: Element>(
    shape: &Conv2dShape,
    weights: &MatRef<T>,
) -> Result<(usize, usize, usize), ConvError> {
    for (field, v) in [
        ("kernel", shape.kernel),
        ("stride", shape.stride),
        ("dilation", shape.dilation),
    ] {
        if v.contains(&0) {
            return Err(ConvError::ZeroGeometry { field });
        }
    }
    let (k, positions, image_len) = match (shape.k(), shape.positions(), shape.image_len()) {
        (Some(k), Some(p), Some(l)) => (k, p, l),
        _ => return Err(ConvError::SizeOverflow),
    };
    if weights.cols() != k {
        return Err(ConvError::Shape {
            weights: (weights.rows(), weights.cols()),
            out: (weights.rows(), positions),
            k,
            positions,
        });
    }
    Ok((k, positions, image_len))
}

/// Validated images and outputs: output `n` is `out[n * out_stride..]`,
/// `m` rows of `positions` at row stride `ldc`, all inside `out`.
struct Images<'a, 'o, T, O> {
    count: usize,
    images: &'a [T],
    image_stride: usize,
    out: &'o mut [O],
    out_stride: usize,
    ldc: usize,
    /// Laid out as `out` (f32 `out` only); only where [`runs_blocked_tiles`].
    residual: Option<&'o [f32]>,
    /// NCHW16c only where [`takes_nchw16c`] (checked by the caller).
    layouts: ConvLayouts,
}

/// Runs a validated batch on the path the level and accumulation select;
/// `packed` is the blocked tiles' layout of `weights` for this
/// accumulation ([`PackedConvWeights`]) where the caller has it.
fn convolve<T: Element, O: Element>(
    isa: Isa,
    accumulation: Accumulation,
    shape: &Conv2dShape,
    batch: Images<'_, '_, T, O>,
    weights: MatRef<T>,
    packed: Option<&BlockedWeights>,
    epilogue: &Epilogue,
) -> Result<(), ConvError> {
    #[cfg(not(target_arch = "x86_64"))]
    let _ = packed;
    let (m, k) = (weights.rows(), weights.cols());
    let positions = shape.out_size[0] * shape.out_size[1];
    let image_len = shape.in_channels * shape.in_size[0] * shape.in_size[1];
    let image = |n: usize| &batch.images[n * batch.image_stride..][..image_len];
    // The GEMM checks the level, the accumulation and the epilogue's lengths
    // against one image's C (the first), for every path.
    let first = MatMut::new(&mut batch.out[..], m, positions, batch.ldc)?;
    gemm::check_shapes((m, k), (k, positions), &first, epilogue)?;
    #[cfg(target_arch = "x86_64")]
    if k > 0 && m > 0 && positions > 0 {
        let isa = isa.require().map_err(GemmError::from)?;
        gemm::check_accumulation::<T>(accumulation)?;
        let direct = match accumulation {
            Accumulation::F32 => isa >= Isa::Avx512Core,
            Accumulation::Bf16Dot => {
                gemm::require_bf16dot(isa)?;
                true
            }
            Accumulation::F16Blocked => false,
        };
        // A pointwise convolution is a plain GEMM on the image unless the
        // blocked tiles take it (module docs: Paths).
        let direct = direct
            && (!shape.is_pointwise()
                || runs_blocked_tiles::<O>(isa, accumulation, shape, m, epilogue));
        if direct {
            let run = gemm::conv::Batch {
                images: batch.images,
                image_stride: batch.image_stride,
                count: batch.count,
                out: batch.out.as_mut_ptr(),
                out_stride: batch.out_stride,
                ldc: batch.ldc,
                residual: batch.residual.map(<[f32]>::as_ptr),
                layouts: batch.layouts,
            };
            // SAFETY: validated by the callers and above: each image and each
            // output (m rows of positions at stride ldc, out_stride apart, not
            // overlapping) lies in its slice, weights are m x k, m, k and the
            // positions are non-zero; `isa` is available and is avx512_core or
            // higher for F32; for Bf16Dot T is bf16 (`check_accumulation`)
            // and the level has AVX512-BF16 (`require_bf16dot`).
            // `packed` (checked against the weights' dimensions, kernel and
            // accumulation) is `pack_blocked_weights` of these weights.
            // NCHW16c layouts come only from `conv2d_batch_layout_at`, which
            // checked `takes_nchw16c` and the channels.
            unsafe { gemm::conv::run(isa, accumulation, shape, run, weights, packed, epilogue) };
            return Ok(());
        }
    }
    assert!(
        batch.residual.is_none() && batch.layouts == ConvLayouts::default(),
        "a residual or NCHW16c needs the blocked tiles"
    );
    for n in 0..batch.count {
        let c = MatMut::new(
            &mut batch.out[n * batch.out_stride..],
            m,
            positions,
            batch.ldc,
        )?;
        // A pointwise convolution's im2col is the image itself.
        let col;
        let b = if shape.is_pointwise() {
            image(n)
        } else {
            col = im2col(shape, image(n), k, positions);
            &col
        };
        let b = MatRef::new(b, k, positions, positions)?;
        gemm::gemm_at(isa, accumulation, 1.0, weights, b, 0.0, c, epilogue)?;
    }
    Ok(())
}

/// The explicit `k x positions` im2col matrix (zeros in the padding).
fn im2col<T: Element>(shape: &Conv2dShape, image: &[T], k: usize, positions: usize) -> Vec<T> {
    let [h, wd] = shape.in_size;
    let [kh, kw] = shape.kernel;
    let [sh, sw] = shape.stride;
    let [dh, dw] = shape.dilation;
    let [ph, pw] = shape.pad_begin;
    let ow = shape.out_size[1];
    let zero = T::from_f32(0.0);
    let mut col = vec![zero; k * positions];
    if positions == 0 {
        return col;
    }
    // Output columns whose taps fall inside the row, per kernel column.
    let ranges: Vec<(usize, usize)> = (0..kw)
        .map(|kj| valid_range(kj * dw, pw, sw, wd, ow))
        .collect();
    for ci in 0..shape.in_channels {
        let plane = &image[ci * h * wd..(ci + 1) * h * wd];
        for ki in 0..kh {
            for (kj, &(lo, hi)) in ranges.iter().enumerate() {
                let row = (ci * kh + ki) * kw + kj;
                let dst = &mut col[row * positions..(row + 1) * positions];
                for (oy, drow) in dst.chunks_exact_mut(ow).enumerate() {
                    let iy = (oy * sh + ki * dh) as isize - ph as isize;
                    if iy < 0 || iy as usize >= h || hi == lo {
                        continue;
                    }
                    let src = &plane[iy as usize * wd..(iy as usize + 1) * wd];
                    let first = lo * sw + kj * dw - pw;
                    if sw == 1 {
                        drow[lo..hi].copy_from_slice(&src[first..first + hi - lo]);
                    } else {
                        for (d, s) in drow[lo..hi].iter_mut().zip(src[first..].iter().step_by(sw)) {
                            *d = *s;
                        }
                    }
                }
            }
        }
    }
    col
}

/// The output positions `lo..hi` (clamped to `0..out`) for which the input
/// index `o * stride + off - pad` lies in `0..len`.
pub(crate) fn valid_range(
    off: usize,
    pad: usize,
    stride: usize,
    len: usize,
    out: usize,
) -> (usize, usize) {
    // o * stride + off >= pad  <=>  o >= ceil((pad - off) / stride)
    let lo = pad.saturating_sub(off).div_ceil(stride).min(out);
    // o * stride + off < len + pad  <=>  o < ceil((len + pad - off) / stride)
    let hi = (len + pad)
        .saturating_sub(off)
        .div_ceil(stride)
        .min(out)
        .max(lo);
    (lo, hi)
}
