//! Pooling's window fold: every level bit for bit against the definition
//! (taps folded in order), including NaN payloads and signed zeros for max,
//! row widths around the vector width, and the typed bound check.

use mixprec_kernels::Isa;
use mixprec_kernels::pool::{PhaseLayout, PoolFold, fold_windows, fold_windows_at, pad_phases};
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
