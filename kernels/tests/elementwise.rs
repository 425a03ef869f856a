//! Elementwise kernels: every level and the default dispatch against the
//! scalar reference bit for bit (all dtype combinations, lengths 0..=100 and
//! large, unaligned starts, special values), and the reference against f64
//! math within the bounds documented on `UnaryOp`.

mod common;

use common::*;
use mixprec_kernels::elementwise::{
    BinaryOp, UnaryOp, binary, binary_at, binary_scalar_lhs, binary_scalar_lhs_at,
    binary_scalar_rhs, binary_scalar_rhs_at, unary, unary_at,
};
use mixprec_kernels::{FloatSlice, FloatSliceMut, FloatType, Isa};
use proptest::prelude::*;

/// `None` is the default dispatch (`active_isa()`).
fn levels() -> Vec<Option<Isa>> {
    std::iter::once(None)
        .chain(Isa::available().map(Some))
        .collect()
}

const SENTINEL: f32 = 12345.0;

/// (length, start offset) pairs: every length 0..=100 at offsets 0..=3, and a few large ones.
fn shapes(pool_len: usize) -> Vec<(usize, usize)> {
    let mut v: Vec<(usize, usize)> = (0..=100)
        .flat_map(|n| (0..4).map(move |o| (n, o)))
        .collect();
    v.extend([(1000, 1), (4099, 3), (pool_len - 2, 2)]);
    v
}

/// Checks `got` (a window `off..off + len` of a sentinel-filled buffer) against `want`.
fn check_window(got: &Buf, off: usize, want: &[f32], what: &dyn Fn() -> String) {
    for i in 0..got.len() {
        let g = got.get(i);
        if i >= off && i < off + want.len() {
            let w = want[i - off];
            assert!(
                same(g, w),
                "{}: element {} got {g:e} ({:#x}) want {w:e} ({:#x})",
                what(),
                i - off,
                g.to_bits(),
                w.to_bits()
            );
        } else {
            assert_eq!(
                g,
                round_to_sentinel(got),
                "{}: wrote outside the output slice at {i}",
                what()
            );
        }
    }
}

fn round_to_sentinel(b: &Buf) -> f32 {
    let t = match b {
        Buf::F32(_) => FloatType::F32,
        Buf::Bf16(_) => FloatType::Bf16,
        Buf::F16(_) => FloatType::F16,
    };
    round_to(t, SENTINEL)
}

#[test]
fn unary_matches_reference_on_every_level_and_dtype() {
    let mut rng = Rng(0x5EED_0001);
    let values = pool(&mut rng, 4200);
    for in_t in DTYPES {
        let x = Buf::from_f32(in_t, &values);
        for out_t in DTYPES {
            for op in UnaryOp::ALL {
                let want: Vec<f32> = (0..x.len())
                    .map(|i| round_to(out_t, op.apply(x.get(i))))
                    .collect();
                for level in levels() {
                    for (n, off) in shapes(x.len()) {
                        let mut y = Buf::filled(out_t, n + off + 20);
                        let (xs, ys) = (x.slice(off..off + n), y.slice_mut(off..off + n));
                        match level {
                            None => unary(op, xs, ys),
                            Some(isa) => unary_at(isa, op, xs, ys).unwrap(),
                        }
                        let what = || {
                            format!("{op:?} {in_t:?}->{out_t:?} level {level:?} n={n} off={off}")
                        };
                        check_window(&y, off, &want[off..off + n], &what);
                    }
                }
            }
        }
    }
}

/// Dense sweeps where the exp-based ops produce subnormal or saturated
/// results: the only inputs on which the levels' `2^n` scalings (two exact
/// multiplies, or `vscalefps` at AVX-512) round at all, and the `v < -64`
/// switch of the sigmoid products.
#[test]
fn exp_based_ops_agree_where_results_are_subnormal() {
    let ranges: [(UnaryOp, f32, f32); 6] = [
        (UnaryOp::Exp, -105.0, -86.0),
        (UnaryOp::Sigmoid, -105.0, -86.0),
        (UnaryOp::Silu, -130.0, -60.0),
        (UnaryOp::GeluTanh, -12.0, -7.5),
        (UnaryOp::Tanh, -46.0, -40.0),
        (UnaryOp::Exp, 87.0, 89.0),
    ];
    const N: usize = 40_000;
    for (op, lo, hi) in ranges {
        let x: Vec<f32> = (0..N)
            .map(|i| lo + (hi - lo) * (i as f32 / N as f32))
            .collect();
        let want: Vec<f32> = x.iter().map(|&v| op.apply(v)).collect();
        assert!(
            op != UnaryOp::Exp || lo > 0.0 || want.iter().any(|w| *w != 0.0 && !w.is_normal()),
            "the {op:?} sweep reaches subnormal results"
        );
        for level in levels() {
            let mut y = vec![0.0f32; N];
            let (xs, ys) = (FloatSlice::F32(&x), FloatSliceMut::F32(&mut y));
            match level {
                None => unary(op, xs, ys),
                Some(isa) => unary_at(isa, op, xs, ys).unwrap(),
            }
            for i in 0..N {
                assert!(
                    same(y[i], want[i]),
                    "{op:?}({:e}) at {level:?}: {:e} vs {:e}",
                    x[i],
                    y[i],
                    want[i]
                );
            }
        }
    }
}

#[test]
fn binary_matches_reference_on_every_level_and_dtype() {
    let mut rng = Rng(0x5EED_0002);
    let va = pool(&mut rng, 1200);
    let vb = pool(&mut rng, 1200);
    let shapes: Vec<(usize, usize)> = (0..=100)
        .step_by(3)
        .flat_map(|n| (0..4).map(move |o| (n, o)))
        .chain([(1100, 1)])
        .collect();
    for a_t in DTYPES {
        let a = Buf::from_f32(a_t, &va);
        for b_t in DTYPES {
            let b = Buf::from_f32(b_t, &vb);
            for out_t in DTYPES {
                for op in BinaryOp::ALL {
                    let want: Vec<f32> = (0..a.len())
                        .map(|i| round_to(out_t, op.apply(a.get(i), b.get(i))))
                        .collect();
                    for level in levels() {
                        for &(n, off) in &shapes {
                            let mut y = Buf::filled(out_t, n + off + 20);
                            let (as_, bs, ys) = (
                                a.slice(off..off + n),
                                b.slice(off..off + n),
                                y.slice_mut(off..off + n),
                            );
                            match level {
                                None => binary(op, as_, bs, ys),
                                Some(isa) => binary_at(isa, op, as_, bs, ys).unwrap(),
                            }
                            let what = || {
                                format!(
                                    "{op:?} {a_t:?},{b_t:?}->{out_t:?} level {level:?} n={n} off={off}"
                                )
                            };
                            check_window(&y, off, &want[off..off + n], &what);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn binary_with_a_scalar_operand_matches_reference() {
    let mut rng = Rng(0x5EED_0003);
    let values = pool(&mut rng, 300);
    let scalars = [
        0.0f32,
        -0.0,
        1.5,
        -2.0,
        f32::INFINITY,
        f32::NAN,
        1e-40,
        3.0e38,
    ];
    for in_t in DTYPES {
        let x = Buf::from_f32(in_t, &values);
        for out_t in DTYPES {
            for op in BinaryOp::ALL {
                for &s in &scalars {
                    let want_r: Vec<f32> = (0..x.len())
                        .map(|i| round_to(out_t, op.apply(x.get(i), s)))
                        .collect();
                    let want_l: Vec<f32> = (0..x.len())
                        .map(|i| round_to(out_t, op.apply(s, x.get(i))))
                        .collect();
                    for level in levels() {
                        for (n, off) in [(0, 0), (1, 1), (15, 2), (17, 0), (33, 3), (297, 1)] {
                            let what = || {
                                format!(
                                    "{op:?} scalar {s} {in_t:?}->{out_t:?} level {level:?} n={n} off={off}"
                                )
                            };
                            let mut y = Buf::filled(out_t, n + off + 20);
                            let (xs, ys) = (x.slice(off..off + n), y.slice_mut(off..off + n));
                            match level {
                                None => binary_scalar_rhs(op, xs, s, ys),
                                Some(isa) => binary_scalar_rhs_at(isa, op, xs, s, ys).unwrap(),
                            }
                            check_window(&y, off, &want_r[off..off + n], &what);
                            let mut y = Buf::filled(out_t, n + off + 20);
                            let (xs, ys) = (x.slice(off..off + n), y.slice_mut(off..off + n));
                            match level {
                                None => binary_scalar_lhs(op, s, xs, ys),
                                Some(isa) => binary_scalar_lhs_at(isa, op, s, xs, ys).unwrap(),
                            }
                            check_window(&y, off, &want_l[off..off + n], &what);
                        }
                    }
                }
            }
        }
    }
}

/// Exactly rounded ops must equal plain IEEE f32 arithmetic (not just our reference).
#[test]
fn exact_ops_are_ieee() {
    let mut rng = Rng(0x5EED_0004);
    let a = pool(&mut rng, 5000);
    let b = pool(&mut rng, 5000);
    for (&x, &z) in a.iter().zip(&b) {
        assert!(same(UnaryOp::Neg.apply(x), -x));
        assert!(same(UnaryOp::Abs.apply(x), x.abs()));
        assert!(same(UnaryOp::Sqrt.apply(x), x.sqrt()));
        assert!(same(UnaryOp::Reciprocal.apply(x), 1.0 / x));
        // NaN propagates; everything not above zero (-0.0 included) is +0.0.
        let relu = if x.is_nan() || x > 0.0 { x } else { 0.0 };
        assert!(same(UnaryOp::Relu.apply(x), relu), "relu {x}");
        assert!(same(BinaryOp::Add.apply(x, z), x + z));
        assert!(same(BinaryOp::Sub.apply(x, z), x - z));
        assert!(same(BinaryOp::Mul.apply(x, z), x * z));
        assert!(same(BinaryOp::Div.apply(x, z), x / z));
        assert!(same(BinaryOp::Pow.apply(x, z), x.powf(z)));
        // IEEE 754-2019 maximum / minimum, written independently.
        let (mx, mn) = if x.is_nan() || z.is_nan() {
            (f32::NAN, f32::NAN)
        } else if x == z {
            (
                if x.is_sign_positive() { x } else { z },
                if x.is_sign_negative() { x } else { z },
            )
        } else {
            (x.max(z), x.min(z))
        };
        assert!(same(BinaryOp::Max.apply(x, z), mx), "max({x}, {z})");
        assert!(same(BinaryOp::Min.apply(x, z), mn), "min({x}, {z})");
    }
}

#[test]
fn documented_special_values() {
    let bits = |x: f32| x.to_bits();
    let u = |op: UnaryOp, x: f32| op.apply(x);
    assert_eq!(u(UnaryOp::Exp, f32::NEG_INFINITY), 0.0);
    assert_eq!(u(UnaryOp::Exp, f32::INFINITY), f32::INFINITY);
    assert_eq!(u(UnaryOp::Exp, 89.0), f32::INFINITY);
    assert_eq!(u(UnaryOp::Exp, -104.0), 0.0);
    assert_eq!(u(UnaryOp::Exp, 0.0), 1.0);
    assert!(u(UnaryOp::Exp, -100.0) > 0.0, "exp keeps subnormal results");
    assert_eq!(u(UnaryOp::Log, 0.0), f32::NEG_INFINITY);
    assert_eq!(u(UnaryOp::Log, -0.0), f32::NEG_INFINITY);
    assert!(u(UnaryOp::Log, -1.0).is_nan());
    assert_eq!(u(UnaryOp::Log, f32::INFINITY), f32::INFINITY);
    assert_eq!(u(UnaryOp::Log, 1.0), 0.0);
    assert_eq!(u(UnaryOp::Tanh, f32::INFINITY), 1.0);
    assert_eq!(u(UnaryOp::Tanh, f32::NEG_INFINITY), -1.0);
    assert_eq!(u(UnaryOp::Tanh, 1e30), 1.0);
    assert_eq!(bits(u(UnaryOp::Tanh, -0.0)), bits(-0.0));
    assert_eq!(u(UnaryOp::Erf, f32::INFINITY), 1.0);
    assert_eq!(u(UnaryOp::Erf, -6.0), -1.0);
    assert_eq!(bits(u(UnaryOp::Erf, -0.0)), bits(-0.0));
    assert_eq!(u(UnaryOp::Sigmoid, f32::INFINITY), 1.0);
    assert_eq!(u(UnaryOp::Sigmoid, f32::NEG_INFINITY), 0.0);
    assert_eq!(u(UnaryOp::Sigmoid, 0.0), 0.5);
    assert_eq!(bits(u(UnaryOp::Relu, -0.0)), bits(0.0));
    for op in [UnaryOp::GeluErf, UnaryOp::GeluTanh, UnaryOp::Silu] {
        assert_eq!(bits(u(op, f32::NEG_INFINITY)), bits(-0.0), "{op:?}(-inf)");
        assert_eq!(u(op, f32::INFINITY), f32::INFINITY, "{op:?}(inf)");
        assert_eq!(bits(u(op, 0.0)), bits(0.0), "{op:?}(0)");
        assert_eq!(u(op, 1e30), 1e30, "{op:?}(1e30)");
    }
    for op in UnaryOp::ALL {
        assert!(u(op, f32::NAN).is_nan(), "{op:?}(NaN)");
    }
    for op in [BinaryOp::Max, BinaryOp::Min] {
        assert!(op.apply(f32::NAN, 1.0).is_nan() && op.apply(1.0, f32::NAN).is_nan());
    }
    assert_eq!(bits(BinaryOp::Max.apply(-0.0, 0.0)), bits(0.0));
    assert_eq!(bits(BinaryOp::Max.apply(0.0, -0.0)), bits(0.0));
    assert_eq!(bits(BinaryOp::Min.apply(-0.0, 0.0)), bits(-0.0));
    assert_eq!(bits(BinaryOp::Min.apply(0.0, -0.0)), bits(-0.0));
}

unsafe extern "C" {
    // The platform libm's double-precision erf and erfc: the references.
    safe fn erf(x: f64) -> f64;
    safe fn erfc(x: f64) -> f64;
}

fn sigmoid64(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        x.exp() / (1.0 + x.exp())
    }
}

/// Exact (f64) value of each approximated op.
fn exact(op: UnaryOp, x: f64) -> f64 {
    match op {
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Erf => erf(x),
        UnaryOp::Sigmoid => sigmoid64(x),
        UnaryOp::Silu => x * sigmoid64(x),
        UnaryOp::GeluErf => 0.5 * x * erfc(-x * std::f64::consts::FRAC_1_SQRT_2),
        UnaryOp::GeluTanh => {
            let v = 2.0 * (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
            x * sigmoid64(v)
        }
        _ => unreachable!(),
    }
}

/// The f32 ulp at the magnitude of `t` (subnormal spacing below `MIN_POSITIVE`).
fn ulp(t: f64) -> f64 {
    let e = ((t.abs().to_bits() >> 52) as i32 - 1023).max(-126);
    2f64.powi(e - 23)
}

/// Documented bound for each approximated op at `x`: (ulps, extra absolute error per |x|).
fn bound(op: UnaryOp, x: f64) -> (f64, f64) {
    match op {
        UnaryOp::Exp => (1.01, 0.0),
        UnaryOp::Log => (1.0, 0.0),
        UnaryOp::Tanh => (2.0, 0.0),
        UnaryOp::Erf => (0.0, 0.0), // absolute 1.5e-7, checked separately
        UnaryOp::Sigmoid => (3.0, 0.0),
        UnaryOp::Silu => (4.0, 0.0),
        UnaryOp::GeluTanh => {
            let v = 2.0 * (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
            (4.0 + 3.0 * v.abs(), 0.0)
        }
        UnaryOp::GeluErf => (2.0, 1e-7),
        _ => unreachable!(),
    }
}

/// Inputs for accuracy sweeps: a stride through every positive and negative
/// f32 bit pattern, plus a dense grid where the approximations switch pieces.
fn sweep() -> Vec<f32> {
    let mut v: Vec<f32> = (0..0x7F80_0000u32)
        .step_by(4999)
        .flat_map(|b| [f32::from_bits(b), -f32::from_bits(b)])
        .collect();
    v.extend((-200_000..200_000).map(|i| i as f32 * 5e-5));
    v
}

#[test]
fn reference_is_within_documented_bounds_of_exact_math() {
    let xs = sweep();
    for op in [
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Tanh,
        UnaryOp::Erf,
        UnaryOp::Sigmoid,
        UnaryOp::Silu,
        UnaryOp::GeluErf,
        UnaryOp::GeluTanh,
    ] {
        let mut worst = (0.0f64, 0.0f32);
        for &x in &xs {
            let y = op.apply(x);
            let t = exact(op, x as f64);
            if t.is_nan() {
                assert!(y.is_nan(), "{op:?}({x:e}) = {y:e}, expected NaN");
                continue;
            }
            let t32 = t as f32;
            if t32.is_infinite() {
                assert!(
                    y == t32 || y.abs() == f32::MAX && y.signum() == t32.signum(),
                    "{op:?}({x:e}) = {y:e}, expected {t32}"
                );
                continue;
            }
            let err = (y as f64 - t).abs();
            let (ulps, per_x) = if std::env::var("MEASURE").is_ok() {
                (1.0, 0.0)
            } else {
                bound(op, x as f64)
            };
            let allowed = if op == UnaryOp::Erf {
                1.75e-7
            } else {
                // Subnormal results: spacing 2^-149, plus the documented 2^-126 slack.
                let floor = if t.abs() < f32::MIN_POSITIVE as f64 {
                    f32::MIN_POSITIVE as f64
                } else {
                    0.0
                };
                ulps * ulp(t) + per_x * (x as f64).abs() + floor
            };
            let rel = err / allowed.max(f64::MIN_POSITIVE);
            if rel > worst.0 {
                worst = (rel, x);
            }
            if std::env::var("MEASURE").is_err() {
                assert!(
                    err <= allowed,
                    "{op:?}({x:e}) = {y:e}, exact {t:e}: error {err:e} > {allowed:e} ({:.2} ulp)",
                    err / ulp(t)
                );
            }
        }
        let x = worst.1;
        println!(
            "{op:?}: worst at x = {x:e}: {:.3} of the bound ({:.2} ulp)",
            worst.0,
            (op.apply(x) as f64 - exact(op, x as f64)).abs() / ulp(exact(op, x as f64))
        );
    }
}

#[test]
fn softplus_like_identities_hold_on_slices() {
    // sigmoid(x) + sigmoid(-x) = 1 and tanh(x) = 2 sigmoid(2x) - 1, within the bounds.
    for i in -2000..2000 {
        let x = i as f32 * 0.01;
        let s = UnaryOp::Sigmoid.apply(x) + UnaryOp::Sigmoid.apply(-x);
        assert!(
            (s - 1.0).abs() <= 4e-7,
            "sigmoid({x}) + sigmoid(-{x}) = {s}"
        );
        let t = UnaryOp::Tanh.apply(x);
        let t2 = 2.0 * UnaryOp::Sigmoid.apply(2.0 * x) - 1.0;
        assert!((t - t2).abs() <= 1e-6, "tanh({x}) = {t} vs {t2}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn random_unary_is_identical_on_every_level(
        bits in proptest::collection::vec(any::<u32>(), 0..80),
        op_i in 0usize..13,
        in_i in 0usize..3,
        out_i in 0usize..3,
    ) {
        let op = UnaryOp::ALL[op_i];
        let values: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
        let x = Buf::from_f32(DTYPES[in_i], &values);
        let mut want = Buf::filled(DTYPES[out_i], x.len());
        unary_at(Isa::Scalar, op, x.slice(0..x.len()), want.slice_mut(0..x.len())).unwrap();
        for isa in Isa::available() {
            let mut y = Buf::filled(DTYPES[out_i], x.len());
            unary_at(isa, op, x.slice(0..x.len()), y.slice_mut(0..x.len())).unwrap();
            for i in 0..x.len() {
                prop_assert!(same(y.get(i), want.get(i)), "{:?} {} x={:e}", op, isa, x.get(i));
            }
        }
    }

    #[test]
    fn random_binary_is_identical_on_every_level(
        pairs in proptest::collection::vec((-1e6f32..1e6, any::<u32>()), 0..80),
        op_i in 0usize..7,
        out_i in 0usize..3,
    ) {
        let op = BinaryOp::ALL[op_i];
        let a: Vec<f32> = pairs.iter().map(|p| p.0).collect();
        let b: Vec<f32> = pairs.iter().map(|p| f32::from_bits(p.1)).collect();
        let (a, b) = (Buf::from_f32(FloatType::F32, &a), Buf::from_f32(FloatType::Bf16, &b));
        let n = a.len();
        let mut want = Buf::filled(DTYPES[out_i], n);
        binary_at(Isa::Scalar, op, a.slice(0..n), b.slice(0..n), want.slice_mut(0..n)).unwrap();
        for isa in Isa::available() {
            let mut y = Buf::filled(DTYPES[out_i], n);
            binary_at(isa, op, a.slice(0..n), b.slice(0..n), y.slice_mut(0..n)).unwrap();
            for i in 0..n {
                prop_assert!(same(y.get(i), want.get(i)), "{:?} {} {:e} {:e}", op, isa, a.get(i), b.get(i));
            }
        }
    }
}
