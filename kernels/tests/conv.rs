//! `conv::conv2d_at` against the GEMM on an explicit im2col matrix built here
//! element by element: bit for bit at every available level with f32
//! accumulation (the implicit-GEMM path must be the same FMA chain), bit for
//! bit with `Bf16Dot` against the GEMM on the channel-pair k order the
//! module documents, plus an f64 bound, thread independence and the typed
//! errors.

mod gemm_common;

use gemm_common::Lcg;
use half::bf16;
use mixprec_kernels::conv::{
    ChannelLayout, Conv2dShape, ConvError, ConvLayouts, ConvWeights, PackedConvWeights, conv2d,
    conv2d_at, conv2d_batch_at, conv2d_batch_layout_at, conv2d_batch_residual_at, takes_nchw16c,
};
use mixprec_kernels::gemm::{
    self, Accumulation, Activation, Epilogue, GemmError, MatMut, MatRef, set_num_threads,
};
use mixprec_kernels::{Element, Isa, active_isa};
use proptest::prelude::*;

/// A convolution case: geometry, output channels and data.
#[derive(Clone, Debug)]
struct Case {
    shape: Conv2dShape,
    out_channels: usize,
    seed: u64,
    /// Whether about one value in 30 of the image and the weights is NaN or
    /// infinite: wherever padding is read, the result must still be that of
    /// a zero, whatever lies next to the image in memory.
    non_finite: bool,
}

impl Case {
    fn k(&self) -> usize {
        self.shape.k().unwrap()
    }
    fn positions(&self) -> usize {
        self.shape.positions().unwrap()
    }
    fn data<T: Element>(&self) -> (Vec<T>, Vec<T>) {
        let mut rng = Lcg(self.seed);
        let mut value = |i: usize| {
            let x = rng.next();
            match i % 30 {
                0 if self.non_finite => [f32::NAN, f32::INFINITY, -f32::INFINITY][i / 30 % 3],
                _ => x,
            }
        };
        let image = (0..self.shape.image_len().unwrap())
            .map(|i| T::from_f32(value(i)))
            .collect();
        let weights = (0..self.out_channels * self.k())
            .map(|i| T::from_f32(value(i + 7)))
            .collect();
        (image, weights)
    }
}

/// The im2col matrix (`k x positions`, k in (channel, ki, kj) order),
/// straight from the definition of a padded, strided, dilated convolution.
fn im2col<T: Element>(s: &Conv2dShape, image: &[T]) -> Vec<T> {
    let [h, w] = s.in_size;
    let [oh, ow] = s.out_size;
    let n = oh * ow;
    let mut col = vec![T::from_f32(0.0); s.k().unwrap() * n];
    for c in 0..s.in_channels {
        for ki in 0..s.kernel[0] {
            for kj in 0..s.kernel[1] {
                let row = (c * s.kernel[0] + ki) * s.kernel[1] + kj;
                for oy in 0..oh {
                    for ox in 0..ow {
                        let iy = (oy * s.stride[0] + ki * s.dilation[0]) as isize
                            - s.pad_begin[0] as isize;
                        let ix = (ox * s.stride[1] + kj * s.dilation[1]) as isize
                            - s.pad_begin[1] as isize;
                        if (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix) {
                            col[row * n + oy * ow + ox] =
                                image[(c * h + iy as usize) * w + ix as usize];
                        }
                    }
                }
            }
        }
    }
    col
}

/// The epilogue of a case: per-channel bias, per-position bias, ReLU.
fn epilogue_data(case: &Case) -> (Vec<f32>, Vec<f32>) {
    let mut rng = Lcg(case.seed ^ 0x5eed);
    let row_bias = (0..case.out_channels).map(|_| rng.next()).collect();
    let bias = (0..case.positions()).map(|_| rng.next() * 0.25).collect();
    (row_bias, bias)
}

/// The reference: `gemm_at` of the `m x k` weights and a `k x n` im2col.
fn gemm_on<T: Element, O: Element>(
    isa: Isa,
    accumulation: Accumulation,
    weights: &[T],
    col: &[T],
    (m, k, n): (usize, usize, usize),
    epi: &Epilogue,
) -> Vec<O> {
    let mut out = vec![O::from_f32(f32::NAN); m * n];
    gemm::gemm_at(
        isa,
        accumulation,
        1.0,
        MatRef::new(weights, m, k, k).unwrap(),
        MatRef::new(col, k, n, n).unwrap(),
        0.0,
        MatMut::new(&mut out, m, n, n).unwrap(),
        epi,
    )
    .unwrap();
    out
}

/// conv2d_at == gemm_at on the explicit im2col, bit for bit, with the
/// epilogues that take each store path: per-channel bias and ReLU only
/// (f32 output is then finished in the micro-kernel's registers), and one
/// with a per-position bias too (the general epilogue).
fn check_f32_path<T: Element, O: Element>(isa: Isa, case: &Case) {
    let (row_bias, bias) = epilogue_data(case);
    check_f32_epilogue::<T, O>(
        isa,
        case,
        &Epilogue {
            row_bias: Some(&row_bias),
            activation: Activation::Relu,
            ..Default::default()
        },
    );
    check_f32_epilogue::<T, O>(
        isa,
        case,
        &Epilogue {
            bias: Some(&bias),
            row_bias: Some(&row_bias),
            activation: Activation::Relu,
        },
    );
}

fn check_f32_epilogue<T: Element, O: Element>(isa: Isa, case: &Case, epi: &Epilogue) {
    let (image, weights) = case.data::<T>();
    let (m, k, n) = (case.out_channels, case.k(), case.positions());
    let wv = MatRef::new(&weights, m, k, k).unwrap();
    let mut got = vec![O::from_f32(f32::NAN); m * n];
    conv2d_at(
        isa,
        Accumulation::F32,
        &case.shape,
        &image,
        wv,
        MatMut::new(&mut got, m, n, n).unwrap(),
        epi,
    )
    .unwrap();
    // The same weights stored k x m and passed as a transposed view (column
    // stride m): the paths that read weight rows along must not assume them
    // contiguous.
    let stored_t: Vec<T> = (0..k * m).map(|x| weights[(x % m) * k + x / m]).collect();
    let mut got_t = vec![O::from_f32(f32::NAN); m * n];
    conv2d_at(
        isa,
        Accumulation::F32,
        &case.shape,
        &image,
        MatRef::new(&stored_t, k, m, m).unwrap().t(),
        MatMut::new(&mut got_t, m, n, n).unwrap(),
        epi,
    )
    .unwrap();
    let bits = |v: &[O]| v.iter().map(|x| x.to_f32().to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&got_t),
        bits(&got),
        "{isa} {case:?}: transposed weight view"
    );
    let col = im2col(&case.shape, &image);
    let want: Vec<O> = gemm_on(isa, Accumulation::F32, &weights, &col, (m, k, n), epi);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(
            g.to_f32().to_bits(),
            w.to_f32().to_bits(),
            "{isa} {case:?}: element {i}: conv {} vs gemm on im2col {}",
            g.to_f32(),
            w.to_f32()
        );
    }
}

/// The weights (`m x kq`) and im2col (`kq x positions`) of a case with k
/// reordered to (channel pair, ki, kj, parity), an odd channel count padded
/// with zeros: the GEMM a Bf16Dot convolution must equal.
fn channel_pair_order(case: &Case, image: &[bf16], weights: &[bf16]) -> (Vec<bf16>, Vec<bf16>) {
    let (m, k, n) = (case.out_channels, case.k(), case.positions());
    let cin = case.shape.in_channels;
    let taps = case.shape.kernel[0] * case.shape.kernel[1];
    let kq = cin.div_ceil(2) * 2 * taps;
    let col = im2col(&case.shape, image);
    let mut colq = vec![bf16::ZERO; kq * n];
    let mut wq = vec![bf16::ZERO; m * kq];
    for c in 0..cin {
        for tap in 0..taps {
            let (from, to) = (c * taps + tap, ((c / 2) * taps + tap) * 2 + c % 2);
            colq[to * n..(to + 1) * n].copy_from_slice(&col[from * n..(from + 1) * n]);
            for i in 0..m {
                wq[i * kq + to] = weights[i * k + from];
            }
        }
    }
    (wq, colq)
}

/// Bf16Dot: conv2d_at == gemm_at on the im2col with k reordered to
/// (channel pair, ki, kj, parity), an odd channel count padded with zeros.
fn check_bf16dot(case: &Case) {
    check_bf16dot_epilogue::<f32>(case, false);
}

/// [`check_bf16dot`] into output type `O`, with ReLU or without.
fn check_bf16dot_epilogue<O: Element>(case: &Case, relu: bool) {
    let (image, weights) = case.data::<bf16>();
    let (m, k, n) = (case.out_channels, case.k(), case.positions());
    let (row_bias, _) = epilogue_data(case);
    let epi = Epilogue {
        row_bias: Some(&row_bias),
        activation: if relu {
            Activation::Relu
        } else {
            Activation::Identity
        },
        ..Default::default()
    };
    let mut got = vec![O::from_f32(f32::NAN); m * n];
    conv2d_at(
        Isa::Avx512CoreBf16,
        Accumulation::Bf16Dot,
        &case.shape,
        &image,
        MatRef::new(&weights, m, k, k).unwrap(),
        MatMut::new(&mut got, m, n, n).unwrap(),
        &epi,
    )
    .unwrap();
    let (wq, colq) = channel_pair_order(case, &image, &weights);
    let kq = wq.len() / m;
    let want: Vec<O> = gemm_on(
        Isa::Avx512CoreBf16,
        Accumulation::Bf16Dot,
        &wq,
        &colq,
        (m, kq, n),
        &epi,
    );
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let (g, w) = (g.to_f32(), w.to_f32());
        assert_eq!(
            g.to_bits(),
            w.to_bits(),
            "{case:?} relu {relu}: element {i}: {g} vs {w}"
        );
    }
}

/// The Bf16Dot conv finishes f32 and bf16 outputs from its registers
/// (bias, ReLU, bf16 rounding): bit for bit the GEMM's general epilogue on
/// the channel-pair im2col, including rows whose sum is exactly zero and
/// whose bias is subnormal (rounded to bf16 by the integer path, since
/// `VCVTNE2PS2BF16` flushes subnormals) or NaN, with and without ReLU.
#[test]
fn bf16dot_direct_stores_round_as_the_conversions_do() {
    if !bf16dot_available() {
        eprintln!("skipping: no AVX512-BF16 on this CPU");
        return;
    }
    let c = case(6, [9, 11], [3, 3], [1, 1], [1, 1], [1, 1], 0, 20, 11).unwrap();
    let (image, mut weights) = c.data::<bf16>();
    let (k, n) = (c.k(), c.positions());
    // Rows 0..4 multiply by zero weights: their sum is +0 and the bias is
    // the result.
    weights[..4 * k].fill(bf16::ZERO);
    let (mut row_bias, _) = epilogue_data(&c);
    row_bias[..4].copy_from_slice(&[f32::from_bits(1), -1.0e-40, 3.0e-39, f32::NAN]);
    let (wq, colq) = channel_pair_order(&c, &image, &weights);
    fn run<O: Element>(
        c: &Case,
        image: &[bf16],
        (weights, wq, colq): (&[bf16], &[bf16], &[bf16]),
        epi: &Epilogue,
    ) -> (Vec<u32>, Vec<u32>) {
        let (m, k, n) = (c.out_channels, c.k(), c.positions());
        let kq = wq.len() / m;
        let mut got = vec![O::from_f32(-7.0); m * n];
        conv2d_at(
            Isa::Avx512CoreBf16,
            Accumulation::Bf16Dot,
            &c.shape,
            image,
            MatRef::new(weights, m, k, k).unwrap(),
            MatMut::new(&mut got, m, n, n).unwrap(),
            epi,
        )
        .unwrap();
        let want: Vec<O> = gemm_on(
            Isa::Avx512CoreBf16,
            Accumulation::Bf16Dot,
            wq,
            colq,
            (m, kq, n),
            epi,
        );
        let bits = |v: &[O]| v.iter().map(|x| x.to_f32().to_bits()).collect();
        (bits(&got), bits(&want))
    }
    for activation in [Activation::Identity, Activation::Relu] {
        let epi = Epilogue {
            row_bias: Some(&row_bias),
            activation,
            ..Default::default()
        };
        let data = (&weights[..], &wq[..], &colq[..]);
        let (got, want) = run::<bf16>(&c, &image, data, &epi);
        assert_eq!(got, want, "bf16 output, {activation:?}");
        // The subnormal biases survive as bf16 subnormals, not zeros.
        assert!(
            activation == Activation::Relu || got[n] != 0,
            "row 1 flushed"
        );
        let (got, want) = run::<f32>(&c, &image, data, &epi);
        assert_eq!(got, want, "f32 output, {activation:?}");
    }
}

fn bf16dot_available() -> bool {
    Isa::available().any(|i| i == Isa::Avx512CoreBf16)
}

/// A case from drawn geometry; the output size is ONNX's with an extra end
/// pad of `extra` (so taps past the image's end read zeros too).
#[allow(clippy::too_many_arguments)]
fn case(
    cin: usize,
    hw: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    pad: [usize; 2],
    extra: usize,
    cout: usize,
    seed: u64,
) -> Option<Case> {
    let out = |d: usize| {
        let span = dilation[d] * (kernel[d] - 1) + 1;
        let padded = hw[d] + 2 * pad[d] + extra;
        (padded >= span).then(|| (padded - span) / stride[d] + 1)
    };
    Some(Case {
        shape: Conv2dShape {
            in_channels: cin,
            in_size: hw,
            kernel,
            stride,
            dilation,
            pad_begin: pad,
            out_size: [out(0)?, out(1)?],
        },
        out_channels: cout,
        seed,
        non_finite: false,
    })
}

fn arb_case() -> impl Strategy<Value = Case> {
    (
        1usize..8,
        [1usize..14, 1usize..14],
        [1usize..5, 1usize..5],
        [1usize..4, 1usize..4],
        [1usize..4, 1usize..4],
        [0usize..4, 0usize..4],
        0usize..3,
        prop_oneof![1usize..17, 17usize..40],
        any::<u64>(),
    )
        .prop_filter_map("kernel larger than the padded image", |a| {
            case(a.0, a.1, a.2, a.3, a.4, a.5, a.6, a.7, a.8)
        })
}

/// Stride 1 and an output as wide as the input (any kernel, dilation and
/// split of the width's padding; any height padding): the f32 path then
/// reads the image in place, masking the padding per tap, so these cases
/// also draw images whose widths are below, at and above one 16-lane
/// vector, and NaN or infinite values next to the padding.
fn arb_same_width_case() -> impl Strategy<Value = Case> {
    (
        (1usize..8, 1usize..9, 1usize..40),
        ([1usize..5, 1usize..5], [1usize..4, 1usize..4]),
        (0usize..4, 0usize..3, 0usize..=100),
        (
            prop_oneof![1usize..17, 17usize..40],
            any::<u64>(),
            any::<bool>(),
        ),
    )
        .prop_filter_map(
            "kernel taller than the padded image",
            |(
                (cin, h, w),
                (kernel, dilation),
                (pad_top, pad_bottom, left),
                (cout, seed, non_finite),
            )| {
                let span = |d: usize| dilation[d] * (kernel[d] - 1) + 1;
                let oh = (h + pad_top + pad_bottom + 1).checked_sub(span(0))?;
                // Left padding anywhere in 0..span; the right takes the rest.
                let pad_left = left * span(1) / 101;
                Some(Case {
                    shape: Conv2dShape {
                        in_channels: cin,
                        in_size: [h, w],
                        kernel,
                        stride: [1, 1],
                        dilation,
                        pad_begin: [pad_top, pad_left],
                        out_size: [oh.max(1), w],
                    },
                    out_channels: cout,
                    seed,
                    non_finite,
                })
                .filter(|_| oh > 0)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn same_width_convolutions_equal_gemm_on_im2col_every_level(c in arb_same_width_case()) {
        for isa in Isa::available() {
            check_f32_path::<f32, f32>(isa, &c);
            // 16-bit outputs are finished from the registers too.
            check_f32_path::<f32, half::f16>(isa, &c);
            check_f32_path::<f32, bf16>(isa, &c);
        }
        check_batch::<f32>(&c, Accumulation::F32, active_isa());
    }

    #[test]
    fn blocked_channel_convolutions_equal_gemm_on_im2col_every_level(c in arb_blocked_case()) {
        for isa in Isa::available() {
            check_f32_path::<f32, f32>(isa, &c);
            check_f32_epilogue::<f32, f32>(isa, &c, &Epilogue::default());
            // 16-bit images are widened by the copy, f16 outputs rounded in
            // registers; bf16 outputs take the implicit GEMM.
            check_f32_path::<half::f16, half::f16>(isa, &c);
            check_f32_path::<bf16, f32>(isa, &c);
            check_f32_path::<f32, bf16>(isa, &c);
        }
        check_batch::<f32>(&c, Accumulation::F32, active_isa());
        check_batch::<half::f16>(&c, Accumulation::F32, active_isa());
        check_residual(&c);
        check_layouts(&c);
        if bf16dot_available() {
            // VDPBF16PS tiles over blocked channel pairs (32n input channels)
            // or planes of pairs.
            check_bf16dot_epilogue::<f32>(&c, c.seed % 2 == 0);
            check_bf16dot_epilogue::<bf16>(&c, true);
            check_bf16dot_epilogue::<half::f16>(&c, false);
            check_batch::<bf16>(&c, Accumulation::Bf16Dot, Isa::Avx512CoreBf16);
        }
    }

    #[test]
    fn conv_equals_gemm_on_im2col_every_level(c in arb_case()) {
        for isa in Isa::available() {
            check_f32_path::<f32, f32>(isa, &c);
            check_f32_path::<bf16, bf16>(isa, &c);
            check_f32_path::<half::f16, f32>(isa, &c);
            check_f32_path::<half::f16, half::f16>(isa, &c);
        }
    }

    #[test]
    fn conv_bf16dot_equals_gemm_on_channel_pair_order(c in arb_case()) {
        if bf16dot_available() {
            check_bf16dot(&c);
        }
    }
}

/// `conv2d` of a case on the active level, no epilogue.
fn conv_f32(c: &Case, image: &[f32], weights: &[f32]) -> Vec<f32> {
    let (m, k, n) = (c.out_channels, c.k(), c.positions());
    let mut out = vec![0.0f32; m * n];
    conv2d(
        &c.shape,
        image,
        MatRef::new(weights, m, k, k).unwrap(),
        MatMut::new(&mut out, m, n, n).unwrap(),
        &Epilogue::default(),
    )
    .unwrap();
    out
}

/// Larger than one work item in every direction: k = 630 spans four KC
/// blocks, 130 output channels two row blocks, 22x23 pixels several pixel
/// blocks; plus a strided, dilated one and a pointwise one.
fn big_cases() -> Vec<Case> {
    vec![
        case(70, [22, 23], [3, 3], [1, 1], [1, 1], [1, 1], 0, 130, 1).unwrap(),
        case(9, [31, 29], [5, 3], [2, 3], [2, 1], [3, 0], 1, 33, 2).unwrap(),
        case(64, [17, 15], [1, 1], [1, 1], [1, 1], [0, 0], 0, 20, 3).unwrap(),
        // Pointwise with 128 input channels: the blocked tiles, not the
        // plain GEMM on the image, from avx512_core up.
        case(128, [17, 15], [1, 1], [1, 1], [1, 1], [0, 0], 0, 48, 7).unwrap(),
        case(3, [64, 64], [7, 7], [2, 2], [1, 1], [3, 3], 0, 16, 4).unwrap(),
        // Stems over planes with NCHW output rows a multiple of 16 wide:
        // pixel-row tiles of 16-pixel vectors by 4 channels. 32 columns
        // (one tile of two vectors; a last group of 16 channels), 112 as
        // ResNet's (three vectors and four), 80 (two and three).
        case(3, [37, 64], [7, 7], [2, 2], [1, 1], [3, 3], 0, 48, 11).unwrap(),
        case(3, [20, 224], [7, 7], [2, 2], [1, 1], [3, 3], 0, 32, 12).unwrap(),
        case(5, [9, 80], [3, 3], [1, 1], [1, 1], [1, 1], 0, 16, 13).unwrap(),
        // Channel-blocked, copied in three bands of output rows.
        case(64, [72, 70], [3, 3], [1, 1], [1, 1], [1, 1], 0, 48, 6).unwrap(),
        // Channel-blocked and strided (ResNet's downsampling 3x3 and 1x1
        // shortcut), over several bands and KC blocks.
        case(64, [57, 57], [3, 3], [2, 2], [1, 1], [1, 1], 0, 48, 8).unwrap(),
        case(128, [29, 30], [1, 1], [2, 2], [1, 1], [0, 0], 0, 32, 9).unwrap(),
        // Read in place with an output taller than the image and a top pad
        // that every tap reaches back over: the last rows' tiles start past
        // the image's end and load only the row above (an unsafe review's
        // case; their start pointer is formed with wrapping arithmetic).
        case(1, [4, 64], [1, 1], [1, 1], [1, 1], [1, 0], 0, 8, 10).unwrap(),
    ]
}

#[test]
fn large_convolutions_match_gemm_and_ignore_thread_count() {
    for c in big_cases() {
        for isa in Isa::available() {
            check_f32_path::<f32, f32>(isa, &c);
        }
        if bf16dot_available() {
            check_bf16dot(&c);
        }
        // Same bits for 1 and 3 threads (3 > cores here: uneven splits).
        let (image, weights) = c.data::<f32>();
        let run = |threads: usize| {
            set_num_threads(threads);
            let out = conv_f32(&c, &image, &weights);
            set_num_threads(0);
            out
        };
        check_residual(&c);
        let (one, three) = (run(1), run(3));
        assert!(
            one.iter()
                .zip(&three)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{c:?}"
        );
    }
}

/// The GEMM's stated bound, `|C - C_ref| <= 2 (k + 2) u sum |w| |x|`,
/// against an f64 evaluation of the convolution's definition.
#[test]
fn f32_error_within_the_gemm_bound() {
    for c in big_cases() {
        let (image, weights) = c.data::<f32>();
        let (m, k, n) = (c.out_channels, c.k(), c.positions());
        let out = conv_f32(&c, &image, &weights);
        let col = im2col(&c.shape, &image);
        let u = f64::from(f32::EPSILON) / 2.0;
        for i in 0..m {
            for j in 0..n {
                let (mut exact, mut mag) = (0.0f64, 0.0f64);
                for p in 0..k {
                    let prod = f64::from(weights[i * k + p]) * f64::from(col[p * n + j]);
                    exact += prod;
                    mag += prod.abs();
                }
                let err = (f64::from(out[i * n + j]) - exact).abs();
                assert!(
                    err <= 2.0 * (k + 2) as f64 * u * mag,
                    "{c:?} ({i}, {j}): error {err} over the bound"
                );
            }
        }
    }
}

#[test]
fn bad_geometry_and_shapes_are_typed_errors() {
    let c = case(2, [5, 5], [3, 3], [1, 1], [1, 1], [1, 1], 0, 4, 9).unwrap();
    let (image, weights) = c.data::<f32>();
    let (m, k, n) = (c.out_channels, c.k(), c.positions());
    let mut out = vec![0.0f32; m * n];
    let run = |shape: &Conv2dShape, image: &[f32], wrows: usize, out: &mut [f32]| {
        conv2d(
            shape,
            image,
            MatRef::new(&weights[..wrows * k], wrows, k, k).unwrap(),
            MatMut::new(out, m, n, n).unwrap(),
            &Epilogue::default(),
        )
    };
    for (field, shape) in [
        (
            "stride",
            Conv2dShape {
                stride: [0, 1],
                ..c.shape
            },
        ),
        (
            "kernel",
            Conv2dShape {
                kernel: [3, 0],
                ..c.shape
            },
        ),
        (
            "dilation",
            Conv2dShape {
                dilation: [1, 0],
                ..c.shape
            },
        ),
    ] {
        assert_eq!(
            run(&shape, &image, m, &mut out),
            Err(ConvError::ZeroGeometry { field })
        );
    }
    assert_eq!(
        run(&c.shape, &image[1..], m, &mut out),
        Err(ConvError::ImageLength {
            expected: image.len(),
            got: image.len() - 1
        })
    );
    assert!(matches!(
        run(&c.shape, &image, m - 1, &mut out),
        Err(ConvError::Shape { .. })
    ));
    let huge = Conv2dShape {
        in_channels: usize::MAX / 2,
        ..c.shape
    };
    assert_eq!(
        run(&huge, &image, m, &mut out),
        Err(ConvError::SizeOverflow)
    );
    // Bf16Dot on f32 inputs: the GEMM's typed error, whatever the CPU.
    let err = conv2d_at(
        Isa::Scalar,
        Accumulation::Bf16Dot,
        &c.shape,
        &image,
        MatRef::new(&weights, m, k, k).unwrap(),
        MatMut::new(&mut out, m, n, n).unwrap(),
        &Epilogue::default(),
    );
    assert!(
        matches!(
            err,
            Err(ConvError::Gemm(GemmError::AccumulationUnsupported { .. }))
        ),
        "{err:?}"
    );
    // A wrong row bias length is the GEMM's error on every path.
    let short = vec![0.0f32; m - 1];
    for isa in Isa::available() {
        let err = conv2d_at(
            isa,
            Accumulation::F32,
            &c.shape,
            &image,
            MatRef::new(&weights, m, k, k).unwrap(),
            MatMut::new(&mut out, m, n, n).unwrap(),
            &Epilogue {
                row_bias: Some(&short),
                ..Default::default()
            },
        );
        assert_eq!(
            err,
            Err(ConvError::Gemm(GemmError::RowBiasLength {
                expected: m,
                got: m - 1
            }))
        );
    }
}

/// Output channels multiples of 16: the f32 and Bf16Dot paths then
/// convolve a channel-blocked copy (`gemm/conv_blocked.rs`; 16n input
/// channels, 32n for Bf16Dot's pairs) or, for other counts (a 3-channel
/// stem), a copy in channel (pair) planes, in tiles of up to 14 pixels of
/// one output row (two rows of up to 7), so widths cover whole tiles and
/// every shorter last tile, and NaN or infinite values lie next to the
/// padding.
fn arb_blocked_case() -> impl Strategy<Value = Case> {
    (
        (
            prop_oneof![Just(16usize), Just(32), 1usize..16, Just(24)],
            1usize..12,
            1usize..40,
        ),
        (
            [1usize..5, 1usize..5],
            [1usize..3, 1usize..3],
            [0usize..4, 0usize..4],
            0usize..3,
            // Strided copies split their columns by phase.
            prop_oneof![Just([1usize, 1]), [1usize..4, 1usize..4]],
        ),
        (
            prop_oneof![Just(16usize), Just(32), Just(48)],
            any::<u64>(),
            any::<bool>(),
        ),
    )
        .prop_filter_map(
            "kernel larger than the padded image",
            |((cin, h, w), (kernel, dilation, pad, extra, stride), (cout, seed, non_finite))| {
                let mut c = case(
                    cin,
                    [h, w],
                    kernel,
                    stride,
                    dilation,
                    pad,
                    extra,
                    cout,
                    seed,
                )?;
                c.non_finite = non_finite;
                Some(c)
            },
        )
}

/// The residual form == the convolution without its ReLU, then `relu(y +
/// r)` elementwise, bit for bit: in the blocked tiles' registers (with
/// packed weights too) and through the second pass elsewhere, on every
/// level, for two images with gaps between their outputs.
fn check_residual(c: &Case) {
    let (image, weights) = c.data::<f32>();
    let (m, k, n) = (c.out_channels, c.k(), c.positions());
    let (count, out_stride) = (2, m * n + 3);
    let images: Vec<f32> = image.iter().chain(&image).copied().collect();
    let image_len = image.len();
    let mut rng = Lcg(c.seed ^ 0x5e5);
    let residual: Vec<f32> = (0..count * out_stride).map(|_| rng.next()).collect();
    let bias: Vec<f32> = (0..m).map(|_| rng.next()).collect();
    let wv = MatRef::new(&weights, m, k, k).unwrap();
    for isa in Isa::available() {
        let plain = Epilogue {
            bias: None,
            row_bias: Some(&bias),
            activation: Activation::Identity,
        };
        let mut want = vec![0.5f32; count * out_stride];
        conv2d_batch_at(
            isa,
            Accumulation::F32,
            &c.shape,
            count,
            &images,
            image_len,
            wv,
            &mut want,
            out_stride,
            &plain,
        )
        .unwrap();
        for img in 0..count {
            let at = img * out_stride;
            for (y, r) in want[at..at + m * n].iter_mut().zip(&residual[at..]) {
                let v = *y + *r;
                *y = if v > 0.0 || v.is_nan() { v } else { 0.0 };
            }
        }
        let relu = Epilogue {
            activation: Activation::Relu,
            ..plain
        };
        let packed = PackedConvWeights::pack(isa, Accumulation::F32, c.shape.kernel, wv).unwrap();
        for weights in [wv.into(), ConvWeights::packed(wv, &packed).unwrap()] {
            let mut got = vec![0.5f32; count * out_stride];
            conv2d_batch_residual_at(
                isa,
                Accumulation::F32,
                &c.shape,
                count,
                &images,
                image_len,
                weights,
                &mut got,
                out_stride,
                &relu,
                &residual,
            )
            .unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{isa} {c:?}: residual");
        }
    }
    let mut short = vec![0.0f32; count * out_stride];
    let err = conv2d_batch_residual_at(
        active_isa(),
        Accumulation::F32,
        &c.shape,
        count,
        &images,
        image_len,
        wv,
        &mut short,
        out_stride,
        &Epilogue::default(),
        &residual[..out_stride + m * n - 1],
    );
    assert!(
        matches!(err, Err(ConvError::ResidualLength { .. })),
        "{err:?}"
    );
}

/// `x` (images of `channels` planes of `plane` pixels, `stride` apart)
/// with each image's channels from NCHW into `layout` (`to_layout`) or
/// back; elements between images are kept.
fn permute(
    x: &[f32],
    channels: usize,
    plane: usize,
    stride: usize,
    layout: ChannelLayout,
    to_layout: bool,
) -> Vec<f32> {
    let mut y = x.to_vec();
    // Other channel counts have no NCHW16c form (the call must refuse them).
    if layout == ChannelLayout::Nchw16c && channels.is_multiple_of(16) {
        for (n, c, p) in image_channel_pixel(x.len() / stride, channels, plane) {
            let nchw = n * stride + c * plane + p;
            let blocked = n * stride + (c / 16 * plane + p) * 16 + c % 16;
            let (to, from) = if to_layout {
                (blocked, nchw)
            } else {
                (nchw, blocked)
            };
            y[to] = x[from];
        }
    }
    y
}

/// Every (image, channel, pixel).
fn image_channel_pixel(
    images: usize,
    channels: usize,
    plane: usize,
) -> impl Iterator<Item = (usize, usize, usize)> {
    (0..images)
        .flat_map(move |n| (0..channels).flat_map(move |c| (0..plane).map(move |p| (n, c, p))))
}

/// `conv2d_batch_layout_at` with NCHW16c images, outputs or residuals, in
/// every combination, == the NCHW call, permuted, bit for
/// bit, on every level where `takes_nchw16c` holds, touching nothing
/// between the outputs; a typed error where it does not hold or the
/// images' channels are not a multiple of 16.
fn check_layouts(c: &Case) {
    use ChannelLayout::{Nchw, Nchw16c};
    let (image, weights) = c.data::<f32>();
    let (m, k, n) = (c.out_channels, c.k(), c.positions());
    let (cin, plane_in) = (c.shape.in_channels, c.shape.in_size[0] * c.shape.in_size[1]);
    let (count, image_stride, out_stride) = (2, image.len(), m * n + 5);
    let images: Vec<f32> = image.iter().chain(&image).copied().collect();
    let mut rng = Lcg(c.seed ^ 0x1a7);
    let images: Vec<f32> = images
        .iter()
        .map(|&x| x * (1.0 + rng.next() / 8.0))
        .collect();
    let residual: Vec<f32> = (0..count * out_stride).map(|_| rng.next()).collect();
    let bias: Vec<f32> = (0..m).map(|_| rng.next()).collect();
    let wv = MatRef::new(&weights, m, k, k).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for isa in Isa::available() {
        let packed = PackedConvWeights::pack(isa, Accumulation::F32, c.shape.kernel, wv).unwrap();
        for (relu, with_residual) in [(false, false), (true, false), (true, true)] {
            let epi = Epilogue {
                bias: None,
                row_bias: Some(&bias),
                activation: if relu {
                    Activation::Relu
                } else {
                    Activation::Identity
                },
            };
            let residual = with_residual.then_some(&residual[..]);
            let mut want = vec![0.5f32; count * out_stride];
            conv2d_batch_layout_at(
                isa,
                &c.shape,
                count,
                &images,
                image_stride,
                wv,
                &mut want,
                out_stride,
                &epi,
                residual,
                ConvLayouts::default(),
            )
            .unwrap();
            let both = [Nchw, Nchw16c];
            let residual_layouts = if with_residual { &both[..] } else { &both[..1] };
            let combinations = both.iter().flat_map(|&image| {
                both.iter().flat_map(move |&output| {
                    residual_layouts.iter().map(move |&residual| ConvLayouts {
                        image,
                        output,
                        residual,
                    })
                })
            });
            for layouts in combinations.skip(1) {
                let x = permute(&images, cin, plane_in, image_stride, layouts.image, true);
                let r = residual.map(|r| permute(r, m, n, out_stride, layouts.residual, true));
                let mut got = vec![0.5f32; count * out_stride];
                let result = conv2d_batch_layout_at(
                    isa,
                    &c.shape,
                    count,
                    &x,
                    image_stride,
                    ConvWeights::packed(wv, &packed).unwrap(),
                    &mut got,
                    out_stride,
                    &epi,
                    r.as_deref(),
                    layouts,
                );
                let takes = takes_nchw16c(isa, &c.shape, m, &epi)
                    && (layouts.image == Nchw || cin.is_multiple_of(16));
                if !takes {
                    assert!(
                        matches!(result, Err(ConvError::Layout { .. })),
                        "{isa} {layouts:?} {c:?}: {result:?}"
                    );
                    continue;
                }
                result.unwrap();
                let got = permute(&got, m, n, out_stride, layouts.output, false);
                assert_eq!(
                    bits(&got),
                    bits(&want),
                    "{isa} {layouts:?} {c:?} relu {relu} residual {with_residual}"
                );
            }
        }
    }
}

/// A batch in one call == one call per image, bit for bit, with gaps
/// between images and between outputs (as for one group of a grouped
/// convolution) that the call must not touch; on every level, and with
/// Bf16Dot. Three threads and three images make the items split unevenly.
fn check_batch<T: Element>(c: &Case, accumulation: Accumulation, isa: Isa) {
    let count = 3;
    let (m, k, n) = (c.out_channels, c.k(), c.positions());
    let image_len = c.shape.image_len().unwrap();
    let (image_stride, out_stride) = (image_len + 5, m * n + 7);
    let mut rng = Lcg(c.seed ^ 0xba7c);
    let images: Vec<T> = (0..(count - 1) * image_stride + image_len)
        .map(|_| T::from_f32(rng.next()))
        .collect();
    let weights: Vec<T> = (0..m * k).map(|_| T::from_f32(rng.next())).collect();
    let wv = MatRef::new(&weights, m, k, k).unwrap();
    let (row_bias, _) = epilogue_data(c);
    let epi = Epilogue {
        row_bias: Some(&row_bias),
        activation: Activation::Relu,
        ..Default::default()
    };
    const SENTINEL: f32 = -12345.0;
    let batch = |weights: ConvWeights<'_, T>| {
        let mut got = vec![SENTINEL; (count - 1) * out_stride + m * n];
        conv2d_batch_at(
            isa,
            accumulation,
            &c.shape,
            count,
            &images,
            image_stride,
            weights,
            &mut got,
            out_stride,
            &epi,
        )
        .unwrap();
        got
    };
    set_num_threads(3);
    let got = batch(wv.into());
    // Weights packed once give the same bits; the blocked tiles take them
    // for 16n output channels from avx512_core up (avx512_core_bf16 for
    // Bf16Dot), over planes where the input channels are not 16n (32n for
    // Bf16Dot's pairs).
    let packed = PackedConvWeights::pack(isa, accumulation, c.shape.kernel, wv).unwrap();
    let blocked = isa >= Isa::Avx512Core
        && m.is_multiple_of(16)
        && (accumulation == Accumulation::F32 || isa >= Isa::Avx512CoreBf16);
    assert_eq!(
        packed.is_blocked(),
        cfg!(target_arch = "x86_64") && blocked,
        "{c:?}"
    );
    let got_packed = batch(ConvWeights::packed(wv, &packed).unwrap());
    set_num_threads(0);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&got_packed),
        bits(&got),
        "{isa} {accumulation:?} {c:?}: packed weights"
    );
    for i in 0..count {
        let mut want = vec![0.0f32; m * n];
        conv2d_at(
            isa,
            accumulation,
            &c.shape,
            &images[i * image_stride..i * image_stride + image_len],
            wv,
            MatMut::new(&mut want, m, n, n).unwrap(),
            &epi,
        )
        .unwrap();
        let slot = &got[i * out_stride..i * out_stride + m * n];
        assert!(
            slot.iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{isa} {accumulation:?} {c:?}: image {i}"
        );
        if i + 1 < count {
            assert!(
                got[i * out_stride + m * n..(i + 1) * out_stride]
                    .iter()
                    .all(|&v| v == SENTINEL)
            );
        }
    }
}

/// The blocked tiles skip the kernel rows that read only padding at the
/// image's top and bottom edges; a skipped `fma(w, +0, acc)` would have
/// turned an accumulator of -0 into +0 where `w` is positive, so such tiles
/// must come out as the GEMM's full chain does. Input channel 0 holds tiny
/// values whose products with tiny negative weights underflow to -0,
/// channel 1 zeros times -1: every live product is -0, so the full chain
/// ends at +0 only through the positive weight at a skipped tap (kernel
/// row 0 of channel 1 for output channel 0, the top edge; row 2 for
/// output channel 1, the bottom edge). Weights packed once and per call,
/// planes (2 input channels) and blocks (16), and an infinite weight at a
/// skipped tap (whose product with the padding is NaN).
#[test]
fn skipped_edge_rows_keep_the_chains_signed_zeros_and_nans() {
    for cin in [2, 16] {
        // 9 columns: tiles of one output row (rows of 7 or fewer pair up).
        let c = case(cin, [4, 9], [3, 3], [1, 1], [1, 1], [1, 1], 0, 16, 1).unwrap();
        let (m, k, n) = (c.out_channels, c.k(), c.positions());
        let [h, w] = c.shape.in_size;
        let image: Vec<f32> = (0..c.shape.image_len().unwrap())
            .map(|i| if i < h * w { 1e-30 } else { 0.0 })
            .collect();
        for infinite in [false, true] {
            let mut weights = vec![0.5f32; m * k];
            for j in 0..m {
                for (kk, wt) in weights[j * k..(j + 1) * k].iter_mut().enumerate() {
                    let (u, ki) = (kk / 9, kk / 3 % 3);
                    *wt = match (j, u) {
                        (_, 0) => -1e-30,
                        (0, 1) if ki == 0 => 1.0,
                        (1, 1) if ki == 2 => 1.0,
                        (0 | 1, _) => -1.0,
                        _ => *wt,
                    };
                }
            }
            if infinite {
                // Channel 2's first tap: read only as padding in output row 0.
                weights[2 * k] = f32::INFINITY;
            }
            let wv = MatRef::new(&weights, m, k, k).unwrap();
            let want: Vec<f32> = gemm_on(
                active_isa(),
                Accumulation::F32,
                &weights,
                &im2col(&c.shape, &image),
                (m, k, n),
                &Epilogue::default(),
            );
            assert_eq!(want[0].to_bits(), 0, "the reference chain ends at +0");
            assert!(!infinite || want[2 * n].is_nan());
            for isa in Isa::available() {
                let packed =
                    PackedConvWeights::pack(isa, Accumulation::F32, c.shape.kernel, wv).unwrap();
                for weights in [wv.into(), ConvWeights::packed(wv, &packed).unwrap()] {
                    let mut got = vec![f32::NAN; m * n];
                    conv2d_batch_at(
                        isa,
                        Accumulation::F32,
                        &c.shape,
                        1,
                        &image,
                        0,
                        weights,
                        &mut got,
                        0,
                        &Epilogue::default(),
                    )
                    .unwrap();
                    for (i, (g, r)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(
                            g.to_bits(),
                            r.to_bits(),
                            "{isa} cin {cin} infinite {infinite}: channel {} pixel {}",
                            i / n,
                            i % n
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn a_batch_equals_one_call_per_image() {
    let mut cases = big_cases();
    cases.push(case(3, [5, 4], [2, 3], [1, 2], [1, 1], [1, 0], 1, 6, 5).unwrap());
    for c in &cases {
        for isa in Isa::available() {
            check_batch::<f32>(c, Accumulation::F32, isa);
        }
        if bf16dot_available() {
            check_batch::<bf16>(c, Accumulation::Bf16Dot, Isa::Avx512CoreBf16);
        }
    }
}

#[test]
fn batch_extents_are_typed_errors() {
    let c = case(2, [5, 5], [3, 3], [1, 1], [1, 1], [1, 1], 0, 4, 9).unwrap();
    let (image, weights) = c.data::<f32>();
    let (m, k, n) = (c.out_channels, c.k(), c.positions());
    let wv = MatRef::new(&weights, m, k, k).unwrap();
    let len = image.len();
    let run = |images: &[f32], out: &mut [f32], out_stride: usize| {
        conv2d_batch_at(
            Isa::Scalar,
            Accumulation::F32,
            &c.shape,
            2,
            images,
            len,
            wv,
            out,
            out_stride,
            &Epilogue::default(),
        )
    };
    let two = [image.clone(), image.clone()].concat();
    let mut out = vec![0.0f32; 2 * m * n];
    assert_eq!(run(&two, &mut out, m * n), Ok(()));
    assert_eq!(
        run(&two, &mut out, m * n - 1),
        Err(ConvError::OutputStride {
            stride: m * n - 1,
            per_image: m * n
        })
    );
    assert_eq!(
        run(&two[1..], &mut out, m * n),
        Err(ConvError::ImageLength {
            expected: 2 * len,
            got: 2 * len - 1
        })
    );
    assert_eq!(
        run(&two, &mut out[1..], m * n),
        Err(ConvError::OutputLength {
            expected: 2 * m * n,
            got: 2 * m * n - 1
        })
    );
    // An empty batch reads and writes nothing.
    assert_eq!(
        conv2d_batch_at(
            Isa::Scalar,
            Accumulation::F32,
            &c.shape,
            0,
            &[] as &[f32],
            len,
            wv,
            &mut [] as &mut [f32],
            m * n,
            &Epilogue::default(),
        ),
        Ok(())
    );
}

#[test]
fn packed_weights_that_do_not_fit_are_typed_errors() {
    let c = case(16, [5, 5], [3, 3], [1, 1], [1, 1], [1, 1], 0, 16, 3).unwrap();
    let (image, weights) = c.data::<f32>();
    let (m, k, n) = (c.out_channels, c.k(), c.positions());
    let wv = MatRef::new(&weights, m, k, k).unwrap();
    let isa = active_isa();
    assert_eq!(
        PackedConvWeights::pack(isa, Accumulation::F32, [2, 5], wv).unwrap_err(),
        ConvError::KernelTaps { cols: k, taps: 10 }
    );
    assert!(matches!(
        PackedConvWeights::pack(isa, Accumulation::F32, [0, 3], wv),
        Err(ConvError::KernelTaps { .. })
    ));
    let packed = PackedConvWeights::pack(isa, Accumulation::F32, [3, 3], wv).unwrap();
    let narrower = MatRef::new(&weights, m - 1, k, k).unwrap();
    assert_eq!(
        ConvWeights::packed(narrower, &packed).unwrap_err(),
        ConvError::PackedMismatch {
            what: "weight dimensions"
        }
    );
    let halves: Vec<bf16> = weights.iter().map(|&x| bf16::from_f32(x)).collect();
    let hv = MatRef::new(&halves, m, k, k).unwrap();
    assert_eq!(
        ConvWeights::packed(hv, &packed).unwrap_err(),
        ConvError::PackedMismatch {
            what: "element type"
        }
    );
    let run = |shape: &Conv2dShape, accumulation: Accumulation, packed: &PackedConvWeights| {
        let mut out = vec![0.0f32; m * n];
        conv2d_batch_at(
            isa,
            accumulation,
            shape,
            1,
            &image,
            image.len(),
            ConvWeights::packed(wv, packed).unwrap(),
            &mut out,
            m * n,
            &Epilogue::default(),
        )
        .map(|()| out)
    };
    let plain = conv_f32(&c, &image, &weights);
    assert_eq!(run(&c.shape, Accumulation::F32, &packed), Ok(plain));
    // The same k as a 1x9 kernel: packed for 3x3, so refused.
    let wide = Conv2dShape {
        kernel: [1, 9],
        dilation: [1, 1],
        pad_begin: [0, 4],
        ..c.shape
    };
    assert_eq!(
        run(&wide, Accumulation::F32, &packed),
        Err(ConvError::PackedMismatch { what: "kernel" })
    );
    let packed16 = PackedConvWeights::pack(isa, Accumulation::F16Blocked, [3, 3], wv).unwrap();
    assert!(!packed16.is_blocked());
    assert_eq!(
        run(&c.shape, Accumulation::F32, &packed16),
        Err(ConvError::PackedMismatch {
            what: "accumulation"
        })
    );
}
