//! Pooling's window fold and max pool: every level bit for bit against the
//! definition (taps folded in order), including NaN payloads and signed
//! zeros for max, row widths around the vector width, and the typed bound
//! check.

use mixprec_kernels::Isa;
use mixprec_kernels::pool::{
    PhaseLayout, PoolFold, PoolWindow, fold_windows, fold_windows_at, max_pool_plane,
    max_pool_plane_at, pad_phases,
};
use proptest::prelude::*;

/// The definition: output `(i, j)` folds `src[t + i * row_stride + j]` over
/// the taps in order.
fn definition(
    fold: PoolFold,
    src: &[f32],
    taps: &[usize],
    row_stride: usize,
    rows: usize,
    width: usize,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * width);
    for i in 0..rows {
        for j in 0..width {
            let mut acc = match fold {
                PoolFold::Max => f32::NEG_INFINITY,
                PoolFold::Sum => 0.0,
            };
            for &t in taps {
                let v = src[t + i * row_stride + j];
                acc = match fold {
                    PoolFold::Max if v > acc || v.is_nan() => v,
                    PoolFold::Max => acc,
                    PoolFold::Sum => acc + v,
                };
            }
            out.push(acc);
        }
    }
    out
}

/// Values that tell folds apart: NaNs of two payloads and signs, signed
/// zeros, infinities, ties.
fn value() -> impl Strategy<Value = f32> {
    prop_oneof![
        4 => -4.0f32..4.0,
        1 => Just(f32::from_bits(0x7fc0_0001)),
        1 => Just(f32::from_bits(0xffc0_0002)),
        1 => Just(0.0f32),
        1 => Just(-0.0f32),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NEG_INFINITY),
        1 => Just(1.5f32),
    ]
}

prop_compose! {
    fn case()(rows in 1usize..6, width in 1usize..40, extra in 0usize..20, ntaps in 0usize..10)(
        taps in proptest::collection::vec(0usize..=extra, ntaps),
        src in proptest::collection::vec(value(), (rows - 1) * (width + extra) + width + extra),
        rows in Just(rows), width in Just(width), extra in Just(extra),
        max in any::<bool>(),
    ) -> (PoolFold, Vec<f32>, Vec<usize>, usize, usize, usize) {
        let fold = if max { PoolFold::Max } else { PoolFold::Sum };
        (fold, src, taps, width + extra, rows, width)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_level_folds_as_the_definition((fold, src, taps, row_stride, rows, width) in case()) {
        let want = definition(fold, &src, &taps, row_stride, rows, width);
        for isa in Isa::available() {
            let mut got = vec![7.0f32; rows * width];
            fold_windows_at(isa, fold, &src, &taps, row_stride, &mut got, width).unwrap();
            for (g, w) in got.iter().zip(&want) {
                // Max moves values, so NaN payloads must match; a sum's NaN
                // payload is unspecified.
                let same = g.to_bits() == w.to_bits()
                    || (fold == PoolFold::Sum && g.is_nan() && w.is_nan());
                prop_assert!(same, "{isa} {fold:?}: {g:?} vs {w:?} (taps {taps:?})");
            }
        }
    }
}

#[test]
#[should_panic(expected = "reach past src")]
fn a_tap_past_the_end_panics() {
    let src = vec![0.0f32; 10];
    let mut out = vec![0.0f32; 4];
    // Two rows of 2 at stride 5: the tap at 4 reads src[4 + 5 + 1] = src[10].
    fold_windows(PoolFold::Max, &src, &[0, 4], 5, &mut out, 2);
}

prop_compose! {
    fn layout_case()(
        h in 1usize..9, w in 1usize..80, stride in 1usize..5, rows in 1usize..14,
        phase_len in 1usize..48, pad_top in 0usize..5, pad_left in 0usize..7,
    )(
        src in proptest::collection::vec(value(), h * w),
        h in Just(h), w in Just(w),
        layout in Just(PhaseLayout { rows, stride, phase_len, pad_top, pad_left }),
    ) -> (Vec<f32>, usize, usize, PhaseLayout) {
        (src, h, w, layout)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Every cell of the layout is its padded-plane value: the input where
    /// `(y - pad_top, x - pad_left)` lies inside it, the pad value elsewhere.
    #[test]
    fn phase_layout_holds_the_padded_plane((src, h, w, l) in layout_case()) {
        let mut dst = vec![7.0f32; l.stride * l.rows * l.phase_len];
        pad_phases(&src, h, w, &l, f32::NEG_INFINITY, &mut dst);
        for q in 0..l.stride {
            for y in 0..l.rows {
                for t in 0..l.phase_len {
                    let x = t * l.stride + q;
                    let want = match (y.checked_sub(l.pad_top), x.checked_sub(l.pad_left)) {
                        (Some(iy), Some(ix)) if iy < h && ix < w => src[iy * w + ix],
                        _ => f32::NEG_INFINITY,
                    };
                    let got = dst[(q * l.rows + y) * l.phase_len + t];
                    prop_assert_eq!(got.to_bits(), want.to_bits(), "q {} y {} t {} {:?}", q, y, t, l);
                }
            }
        }
    }
}

/// The definition of a max pool: output `(i, j)` folds the input at row
/// `i * sh + ki * dh - pad_top`, column `j * sw + kj * dw - pad_left` over
/// the window's taps inside the plane in row-major order, from -inf.
fn max_pool_definition(win: &PoolWindow, src: &[f32]) -> Vec<f32> {
    let PoolWindow {
        h,
        w,
        oh,
        ow,
        kernel,
        strides,
        dilations,
        pad_begin,
    } = *win;
    let mut out = Vec::with_capacity(oh * ow);
    for i in 0..oh {
        for j in 0..ow {
            let mut acc = f32::NEG_INFINITY;
            for ki in 0..kernel[0] {
                for kj in 0..kernel[1] {
                    let y = (i * strides[0] + ki * dilations[0]).checked_sub(pad_begin[0]);
                    let x = (j * strides[1] + kj * dilations[1]).checked_sub(pad_begin[1]);
                    let (Some(y), Some(x)) = (y, x) else { continue };
                    if y < h && x < w {
                        let v = src[y * w + x];
                        if v > acc || v.is_nan() {
                            acc = v;
                        }
                    }
                }
            }
            out.push(acc);
        }
    }
    out
}

/// Values without NaNs or -0, whose max does not depend on the fold order
/// (the AVX-512 stride-2 path's own case).
fn ordinary_value() -> impl Strategy<Value = f32> {
    prop_oneof![
        6 => -4.0f32..4.0,
        1 => Just(0.0f32),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NEG_INFINITY),
        1 => Just(1.5f32),
    ]
}

prop_compose! {
    fn max_pool_case()(
        h in 0usize..12, w in 0usize..90, out_rows in 0usize..8, out_cols in 0usize..50,
        // Half the cases in the shape of the AVX-512 path: stride 2, window 3
        // from padded column 0 or window 2 from input column 0.
        common in any::<bool>(), wide in any::<bool>(),
        kernel in (1usize..5, 1usize..5), strides in (1usize..4, 1usize..4),
        dilations in (1usize..3, 1usize..3), pad_begin in (0usize..4, 0usize..4),
        ordinary in any::<bool>(),
    )(
        mut src in proptest::collection::vec(
            if ordinary { ordinary_value().boxed() } else { value().boxed() },
            h * w,
        ),
        // One NaN or -0 among ordinary values, anywhere in a vector.
        lone in proptest::option::of((any::<proptest::sample::Index>(), value())),
        win in Just(PoolWindow {
            h, w, oh: out_rows, ow: out_cols,
            kernel: [kernel.0, if common { if wide { 3 } else { 2 } } else { kernel.1 }],
            strides: [strides.0, if common { 2 } else { strides.1 }],
            dilations: [dilations.0, if common { 1 } else { dilations.1 }],
            pad_begin: [pad_begin.0, if common { usize::from(wide) } else { pad_begin.1 }],
        }),
    ) -> (PoolWindow, Vec<f32>) {
        if let (Some((at, v)), false) = (lone, src.is_empty()) {
            let at = at.index(src.len());
            src[at] = v;
        }
        (win, src)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// Every level gives the definition's bits, NaN payloads and zero signs
    /// included, for any geometry (windows reaching past the plane, or
    /// wholly outside it, give -inf).
    #[test]
    fn max_pool_is_the_definition_on_every_level((win, src) in max_pool_case()) {
        let want = max_pool_definition(&win, &src);
        let mut scratch = vec![7.0f32; 3];
        for isa in Isa::available() {
            let mut got = vec![7.0f32; win.oh * win.ow];
            max_pool_plane_at(isa, &win, &src, &mut got, &mut scratch).unwrap();
            for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                prop_assert_eq!(g.to_bits(), w.to_bits(), "{} output {}: {:?} vs {:?}", isa, k, g, w);
            }
        }
    }
}

/// ResNet's pool on a plane big enough for bands and the AVX-512 path's
/// full and masked blocks, with a NaN and a -0 placed late, in the second
/// vector of a block (the order-keeping path must take over from the
/// register one), and without.
#[test]
fn resnet_pool_plane_is_the_definition() {
    let win = PoolWindow {
        h: 112,
        w: 112,
        oh: 56,
        ow: 56,
        kernel: [3, 3],
        strides: [2, 2],
        dilations: [1, 1],
        pad_begin: [1, 1],
    };
    let mut src: Vec<f32> = (0..112 * 112)
        .map(|i| ((i * 7919) % 1013) as f32 - 500.0)
        .collect();
    for special in [None, Some(f32::from_bits(0x7fc0_0123)), Some(-0.0)] {
        if let Some(v) = special {
            src[100 * 112 + 93] = v;
        }
        let want = max_pool_definition(&win, &src);
        let mut scratch = Vec::new();
        for isa in Isa::available() {
            let mut got = vec![7.0f32; 56 * 56];
            max_pool_plane_at(isa, &win, &src, &mut got, &mut scratch).unwrap();
            let diff = got
                .iter()
                .zip(&want)
                .position(|(g, w)| g.to_bits() != w.to_bits());
            assert_eq!(diff, None, "{isa} with {special:?}");
        }
    }
}

#[test]
#[should_panic(expected = "zero kernel, stride or dilation")]
fn a_zero_stride_panics() {
    let win = PoolWindow {
        h: 2,
        w: 2,
        oh: 1,
        ow: 1,
        kernel: [1, 1],
        strides: [0, 1],
        dilations: [1, 1],
        pad_begin: [0, 0],
    };
    max_pool_plane(&win, &[0.0; 4], &mut [0.0], &mut Vec::new());
}
