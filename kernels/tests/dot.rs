//! `dot` on every level against an f64 reference with the documented bound.

use half::{bf16, f16};
use mixprec_kernels::Isa;
use mixprec_kernels::dot::{dot, dot_at};
use mixprec_kernels::gemm::Element;
use proptest::prelude::*;

fn check<T: Element>(xs: &[f32], ys: &[f32]) {
    let a: Vec<T> = xs.iter().map(|&x| T::from_f32(x)).collect();
    let b: Vec<T> = ys.iter().map(|&x| T::from_f32(x)).collect();
    let (mut want, mut mag) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(&b) {
        let p = x.to_f32() as f64 * y.to_f32() as f64;
        want += p;
        mag += p.abs();
    }
    let tol = (a.len() as f64 + 8.0) * 2.0 * f32::EPSILON as f64 * 0.5 * mag + 1e-35;
    for isa in Isa::available() {
        let got = dot_at(isa, &a, &b).unwrap() as f64;
        assert!(
            (got - want).abs() <= tol,
            "{isa}: {got} vs {want} (n={})",
            a.len()
        );
    }
    assert!((dot(&a, &b) as f64 - want).abs() <= tol);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
    #[test]
    fn dot_matches_reference(v in prop::collection::vec((-1e3f32..1e3, -1e3f32..1e3), 0..300), t in 0usize..3) {
        let (xs, ys): (Vec<f32>, Vec<f32>) = v.into_iter().unzip();
        match t {
            0 => check::<f32>(&xs, &ys),
            1 => check::<bf16>(&xs, &ys),
            _ => check::<f16>(&xs, &ys),
        }
    }
}

#[test]
fn long_dot_and_exact_small_integers() {
    let n: usize = 100_003;
    let xs: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let ys: Vec<f32> = (0..n)
        .map(|i| ((i * 104729) % 997) as f32 / 498.5 - 1.0)
        .collect();
    check::<f32>(&xs, &ys);
    check::<bf16>(&xs, &ys);
    // Small integers are exact in every type, and so is their dot product.
    let a: Vec<bf16> = (0..1000).map(|i| bf16::from_f32((i % 7) as f32)).collect();
    let want: f32 = (0..1000).map(|i| ((i % 7) * (i % 7)) as f32).sum();
    for isa in Isa::available() {
        assert_eq!(dot_at(isa, &a, &a).unwrap(), want, "{isa}");
    }
    assert_eq!(dot::<f16>(&[], &[]), 0.0);
}

#[test]
#[should_panic(expected = "a has 3 elements but b has 2")]
fn length_mismatch_panics() {
    dot(&[1.0f32; 3], &[1.0f32; 2]);
}
