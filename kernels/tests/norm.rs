//! Softmax, normalization and reductions: every level and the default dispatch
//! bit for bit against the scalar level (all dtype combinations, many row
//! lengths, unaligned starts, special values), and the scalar level against
//! f64 two-pass references within the bounds in the `norm` module docs.

mod common;

use common::*;
use mixprec_kernels::norm::{
    ReduceOp, layer_norm, layer_norm_at, reduce_rows, reduce_rows_at, rms_norm, rms_norm_at,
    softmax, softmax_at,
};
use mixprec_kernels::{FloatSlice, FloatSliceMut, FloatType, Isa};
use proptest::prelude::*;

#[derive(Clone, Copy, Debug)]
enum Kernel {
    Softmax,
    LogSoftmax,
    LayerNorm,
    LayerNormNoBeta,
    RmsNorm,
    Reduce(ReduceOp),
}

const KERNELS: [Kernel; 8] = [
    Kernel::Softmax,
    Kernel::LogSoftmax,
    Kernel::LayerNorm,
    Kernel::LayerNormNoBeta,
    Kernel::RmsNorm,
    Kernel::Reduce(ReduceOp::Sum),
    Kernel::Reduce(ReduceOp::Mean),
    Kernel::Reduce(ReduceOp::Max),
];

/// Runs `k` at `level` (`None`: default dispatch) on `x` with `cols` columns.
fn run(k: Kernel, level: Option<Isa>, x: FloatSlice, cols: usize, out_t: FloatType) -> Vec<f32> {
    let gamma: Vec<f32> = (0..cols).map(|j| 0.5 + (j % 7) as f32 * 0.25).collect();
    let beta: Vec<f32> = (0..cols).map(|j| (j % 5) as f32 * 0.1 - 0.2).collect();
    let n_out = match k {
        Kernel::Reduce(_) => x.len() / cols.max(1),
        _ => x.len(),
    };
    let mut y = Buf::filled(out_t, n_out);
    let ys: FloatSliceMut = y.slice_mut(0..n_out);
    let isa = level.unwrap_or(Isa::Scalar);
    let r = match (k, level) {
        (Kernel::Softmax, None) => {
            softmax(x, ys, cols, false);
            Ok(())
        }
        (Kernel::LogSoftmax, None) => {
            softmax(x, ys, cols, true);
            Ok(())
        }
        (Kernel::LayerNorm, None) => {
            layer_norm(x, ys, cols, &gamma, Some(&beta), 1e-5);
            Ok(())
        }
        (Kernel::LayerNormNoBeta, None) => {
            layer_norm(x, ys, cols, &gamma, None, 1e-5);
            Ok(())
        }
        (Kernel::RmsNorm, None) => {
            rms_norm(x, ys, cols, &gamma, 1e-6);
            Ok(())
        }
        (Kernel::Reduce(op), None) => {
            reduce_rows(op, x, cols, ys);
            Ok(())
        }
        (Kernel::Softmax, _) => softmax_at(isa, x, ys, cols, false),
        (Kernel::LogSoftmax, _) => softmax_at(isa, x, ys, cols, true),
        (Kernel::LayerNorm, _) => layer_norm_at(isa, x, ys, cols, &gamma, Some(&beta), 1e-5),
        (Kernel::LayerNormNoBeta, _) => layer_norm_at(isa, x, ys, cols, &gamma, None, 1e-5),
        (Kernel::RmsNorm, _) => rms_norm_at(isa, x, ys, cols, &gamma, 1e-6),
        (Kernel::Reduce(op), _) => reduce_rows_at(isa, op, x, cols, ys),
    };
    r.unwrap();
    y.to_vec()
}

#[test]
fn every_level_matches_the_scalar_level_bitwise() {
    let mut rng = Rng(0x0A0B_0001);
    // Mostly well-scaled data with a sprinkling of specials in some rows.
    let mut values: Vec<f32> = (0..20_000).map(|_| rng.range(-8.0, 8.0)).collect();
    let s = specials();
    for (i, v) in s.iter().enumerate() {
        values[i * 97 + 5000] = *v;
    }
    let mut cols_list: Vec<usize> = (1..=70).collect();
    cols_list.extend([96, 100, 127, 128, 129, 1000, 4099]);
    for in_t in DTYPES {
        let x = Buf::from_f32(in_t, &values);
        for out_t in DTYPES {
            for k in KERNELS {
                for &cols in &cols_list {
                    for off in [0usize, 1, 3] {
                        let rows = (3 + 4100 / cols).min(9);
                        let start = off + if cols % 3 == 0 { 5000 } else { 0 };
                        let xs = x.slice(start..start + rows * cols);
                        let want = run(k, Some(Isa::Scalar), xs, cols, out_t);
                        for level in std::iter::once(None).chain(Isa::available().map(Some)) {
                            let got = run(k, level, xs, cols, out_t);
                            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                                assert!(
                                    same(*g, *w),
                                    "{k:?} {in_t:?}->{out_t:?} {level:?} cols={cols} off={off} [{i}]: {g:e} vs {w:e}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Bound on the summation error of the documented order for `n` terms of total magnitude `mag`.
fn sum_bound(n: usize, mag: f64) -> f64 {
    (n as f64 / 32.0 + 5.0) * 2f64.powi(-24) * mag
}

fn softmax64(x: &[f64]) -> Vec<f64> {
    let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let s: f64 = x.iter().map(|v| (v - m).exp()).sum();
    x.iter().map(|v| (v - m).exp() / s).collect()
}

#[test]
fn softmax_is_accurate_against_f64() {
    let mut rng = Rng(0x0A0B_0002);
    for cols in [1usize, 2, 7, 31, 32, 33, 100, 1000, 4096] {
        for scale in [0.1f32, 3.0, 30.0] {
            let x: Vec<f32> = (0..cols * 3).map(|_| rng.range(-scale, scale)).collect();
            let mut y = vec![0.0f32; x.len()];
            let mut ly = vec![0.0f32; x.len()];
            softmax(FloatSlice::F32(&x), FloatSliceMut::F32(&mut y), cols, false);
            softmax(FloatSlice::F32(&x), FloatSliceMut::F32(&mut ly), cols, true);
            for r in 0..3 {
                let row: Vec<f64> = x[r * cols..(r + 1) * cols]
                    .iter()
                    .map(|&v| v as f64)
                    .collect();
                let exact = softmax64(&row);
                let tol = (4.0 + cols as f64 / 32.0) * 2f64.powi(-24);
                let mut total = 0.0f64;
                for j in 0..cols {
                    let (g, e) = (y[r * cols + j] as f64, exact[j]);
                    total += g;
                    let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    // Documented: relative 2^-24 (4 + n/32 + |x - m|) (x - m is rounded).
                    let rel = tol + 2f64.powi(-24) * (row[j] - m).abs();
                    assert!(
                        (g - e).abs() <= rel * e + 1e-44,
                        "softmax cols={cols} [{j}] {g:e} vs {e:e}"
                    );
                    let (lg, le) = (ly[r * cols + j] as f64, e.ln());
                    let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    // Documented: 2^-24 (6 + n/32 + 2|x - m| + 2|log s|).
                    let log_s = (row[j] - m) - le;
                    let ltol = 2f64.powi(-24)
                        * (6.0 + cols as f64 / 32.0 + 2.0 * (row[j] - m).abs() + 2.0 * log_s.abs());
                    assert!(
                        (lg - le).abs() <= ltol,
                        "log_softmax cols={cols} [{j}] {lg:e} vs {le:e}"
                    );
                }
                assert!((total - 1.0).abs() <= tol * 2.0, "softmax row sum {total}");
            }
        }
    }
}

#[test]
fn softmax_special_rows() {
    let inf = f32::INFINITY;
    let cases: [(&[f32], &[f32]); 3] = [
        (&[0.0, f32::NEG_INFINITY, 0.0], &[0.5, 0.0, 0.5]),
        (&[1000.0, 1000.0], &[0.5, 0.5]),
        (&[-1e30, 0.0], &[0.0, 1.0]),
    ];
    for (x, want) in cases {
        let mut y = vec![9.0f32; x.len()];
        softmax(
            FloatSlice::F32(x),
            FloatSliceMut::F32(&mut y),
            x.len(),
            false,
        );
        assert_eq!(y, want, "softmax({x:?})");
    }
    for x in [[f32::NAN, 1.0], [inf, 1.0], [f32::NEG_INFINITY; 2]] {
        let mut y = vec![9.0f32; 2];
        softmax(FloatSlice::F32(&x), FloatSliceMut::F32(&mut y), 2, false);
        assert!(y.iter().all(|v| v.is_nan()), "softmax({x:?}) = {y:?}");
    }
}

#[test]
fn layer_norm_and_rms_norm_are_accurate_against_f64() {
    let mut rng = Rng(0x0A0B_0003);
    for cols in [1usize, 3, 32, 33, 100, 1000, 4096] {
        // Offsets far above the spread: E[x^2] - E[x]^2 would lose every digit here.
        for (offset, spread) in [(0.0f32, 1.0f32), (1e4, 1.0), (-300.0, 1e-2), (0.0, 1e3)] {
            let x: Vec<f32> = (0..cols * 2)
                .map(|_| offset + rng.range(-spread, spread))
                .collect();
            let gamma: Vec<f32> = (0..cols).map(|_| rng.range(0.5, 2.0)).collect();
            let beta: Vec<f32> = (0..cols).map(|_| rng.range(-1.0, 1.0)).collect();
            let mut y = vec![0.0f32; x.len()];
            let mut z = vec![0.0f32; x.len()];
            layer_norm(
                FloatSlice::F32(&x),
                FloatSliceMut::F32(&mut y),
                cols,
                &gamma,
                Some(&beta),
                1e-5,
            );
            rms_norm(
                FloatSlice::F32(&x),
                FloatSliceMut::F32(&mut z),
                cols,
                &gamma,
                1e-6,
            );
            for r in 0..2 {
                let row: Vec<f64> = x[r * cols..(r + 1) * cols]
                    .iter()
                    .map(|&v| v as f64)
                    .collect();
                let n = cols as f64;
                let mean = row.iter().sum::<f64>() / n;
                let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
                let rstd = 1.0 / (var + 1e-5f32 as f64).sqrt();
                let ms = row.iter().map(|v| v * v).sum::<f64>() / n;
                let rrms = 1.0 / (ms + 1e-6f32 as f64).sqrt();
                // Error in the mean, relative to the standard deviation, drives the output error.
                let mag: f64 = row.iter().map(|v| v.abs()).sum::<f64>() / n;
                let mean_err = sum_bound(cols, mag) * rstd;
                for j in 0..cols {
                    let t = (row[j] - mean) * rstd;
                    let e = t * gamma[j] as f64 + beta[j] as f64;
                    let g = y[r * cols + j] as f64;
                    let tol = (mean_err + 16.0 * 2f64.powi(-24) * (1.0 + t.abs()))
                        * gamma[j] as f64
                        + 2f64.powi(-23) * e.abs();
                    assert!(
                        (g - e).abs() <= tol,
                        "layer_norm cols={cols} off={offset} [{j}] {g:e} vs {e:e} (tol {tol:e})"
                    );
                    let e = row[j] * rrms * gamma[j] as f64;
                    let g = z[r * cols + j] as f64;
                    let tol = (cols as f64 / 32.0 + 8.0) * 2f64.powi(-24) * e.abs() + 1e-30;
                    assert!(
                        (g - e).abs() <= tol,
                        "rms_norm cols={cols} [{j}] {g:e} vs {e:e}"
                    );
                }
            }
        }
    }
}

#[test]
fn reductions_are_accurate_against_f64() {
    let mut rng = Rng(0x0A0B_0004);
    for cols in [1usize, 5, 31, 32, 33, 64, 65, 1000, 100_000] {
        let x: Vec<f32> = (0..cols * 2).map(|_| rng.range(-10.0, 10.0)).collect();
        for op in ReduceOp::ALL {
            let mut y = vec![0.0f32; 2];
            reduce_rows(op, FloatSlice::F32(&x), cols, FloatSliceMut::F32(&mut y));
            for r in 0..2 {
                let row = &x[r * cols..(r + 1) * cols];
                let sum: f64 = row.iter().map(|&v| v as f64).sum();
                let mag: f64 = row.iter().map(|&v| (v as f64).abs()).sum();
                match op {
                    ReduceOp::Sum => assert!(
                        (y[r] as f64 - sum).abs() <= sum_bound(cols, mag),
                        "sum cols={cols}"
                    ),
                    ReduceOp::Mean => assert!(
                        (y[r] as f64 - sum / cols as f64).abs()
                            <= sum_bound(cols, mag) / cols as f64
                                + 2f64.powi(-24) * (sum / cols as f64).abs(),
                        "mean cols={cols}"
                    ),
                    ReduceOp::Max => {
                        assert_eq!(y[r], row.iter().cloned().fold(f32::NEG_INFINITY, f32::max))
                    }
                }
            }
        }
    }
    // NaN propagates through Max wherever it is; -0 < +0; empty rows.
    let mut y = [0.0f32; 1];
    for pos in 0..40 {
        let mut x = vec![1.0f32; 40];
        x[pos] = f32::NAN;
        reduce_rows(
            ReduceOp::Max,
            FloatSlice::F32(&x),
            40,
            FloatSliceMut::F32(&mut y),
        );
        assert!(y[0].is_nan());
    }
    reduce_rows(
        ReduceOp::Max,
        FloatSlice::F32(&[-0.0, 0.0, -0.0]),
        3,
        FloatSliceMut::F32(&mut y),
    );
    assert_eq!(y[0].to_bits(), 0.0f32.to_bits());
    let mut y = [5.0f32; 2];
    reduce_rows(
        ReduceOp::Sum,
        FloatSlice::F32(&[]),
        0,
        FloatSliceMut::F32(&mut y),
    );
    assert_eq!(y, [0.0, 0.0]);
    reduce_rows(
        ReduceOp::Max,
        FloatSlice::F32(&[]),
        0,
        FloatSliceMut::F32(&mut y),
    );
    assert_eq!(y, [f32::NEG_INFINITY; 2]);
}

#[test]
fn summation_order_is_the_documented_one() {
    // Element i goes to partial i % 32, partials fold pairwise: rebuild that here.
    let mut rng = Rng(0x0A0B_0005);
    for cols in [1usize, 31, 33, 95, 1000] {
        let x: Vec<f32> = (0..cols)
            .map(|_| rng.range(-1.0, 1.0) * 10f32.powi((rng.next_u64() % 8) as i32))
            .collect();
        let mut parts = [0.0f32; 32];
        for (i, v) in x.iter().enumerate() {
            parts[i % 32] += v;
        }
        let mut h = 16;
        while h >= 1 {
            for j in 0..h {
                parts[j] += parts[j + h];
            }
            h /= 2;
        }
        for isa in Isa::available() {
            let mut y = [0.0f32];
            reduce_rows_at(
                isa,
                ReduceOp::Sum,
                FloatSlice::F32(&x),
                cols,
                FloatSliceMut::F32(&mut y),
            )
            .unwrap();
            assert_eq!(y[0].to_bits(), parts[0].to_bits(), "{isa} cols={cols}");
        }
    }
}

#[test]
#[should_panic(expected = "not a multiple of cols")]
fn ragged_input_panics() {
    softmax(
        FloatSlice::F32(&[1.0; 5]),
        FloatSliceMut::F32(&mut [0.0; 5]),
        2,
        false,
    );
}

#[test]
#[should_panic(expected = "gamma has 2 elements, expected 3")]
fn wrong_gamma_panics() {
    rms_norm(
        FloatSlice::F32(&[1.0; 6]),
        FloatSliceMut::F32(&mut [0.0; 6]),
        3,
        &[1.0; 2],
        1e-6,
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_rows_are_identical_on_every_level(
        values in proptest::collection::vec(-50f32..50.0, 1..300),
        cols_pick in 1usize..40,
        k_i in 0usize..8,
        out_i in 0usize..3,
    ) {
        let cols = cols_pick.min(values.len());
        let rows = values.len() / cols;
        let x = Buf::from_f32(FloatType::Bf16, &values);
        let xs = x.slice(0..rows * cols);
        let want = run(KERNELS[k_i], Some(Isa::Scalar), xs, cols, DTYPES[out_i]);
        for isa in Isa::available() {
            let got = run(KERNELS[k_i], Some(isa), xs, cols, DTYPES[out_i]);
            for (g, w) in got.iter().zip(&want) {
                prop_assert!(same(*g, *w));
            }
        }
    }
}
