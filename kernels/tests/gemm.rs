//! GEMM against an f64 reference on every available level, with the bound
//! `|C - C_ref| <= 2 (k + 2) u |alpha| (|A||B|)_ij + epilogue and store rounding`,
//! `u = 2^-24`; packed-B (stored or widened) vs unpacked and thread-count
//! bit-identity.

use half::{bf16, f16};
use mixprec_kernels::Isa;
use mixprec_kernels::gemm::{
    Accumulation, Activation, Element, Epilogue, GemmError, MatMut, MatRef, PackedB, gemm, gemm_at,
    gemm_packed, gemm_packed_at, set_num_threads,
};
use proptest::prelude::*;

mod gemm_common;

use gemm_common::{Lcg, Stored, reference};

struct Case {
    m: usize,
    n: usize,
    k: usize,
    pads: [usize; 3],
    ta: bool,
    tb: bool,
    alpha: f32,
    beta: f32,
    /// Bit 0: a column bias; bit 1: a row bias.
    bias: u8,
    act: Activation,
    seed: u64,
}

/// Checks `c` (the computed output) against the f64 reference.
#[allow(clippy::too_many_arguments)]
fn check<T: Element, O: Element>(
    case: &Case,
    a: &Stored<T>,
    b: &Stored<T>,
    c0: &[O],
    c: &[O],
    ldc: usize,
    ep: &Epilogue,
    what: &str,
) {
    for i in 0..case.m {
        for j in 0..case.n {
            let (want, tol) = reference::<T, O>(
                a,
                b,
                (i, j, case.k),
                case.alpha,
                case.beta,
                c0[i * ldc + j].to_f32(),
                ep,
                0.0,
            );
            let got = c[i * ldc + j].to_f32() as f64;
            assert!(
                (got - want).abs() <= tol,
                "{what}: C[{i},{j}] = {got}, reference {want}, tol {tol} (m={} n={} k={} ta={} tb={} alpha={} beta={} act={:?})",
                case.m,
                case.n,
                case.k,
                case.ta,
                case.tb,
                case.alpha,
                case.beta,
                case.act
            );
        }
    }
}

fn run_case<T: Element, O: Element>(case: &Case) {
    let mut rng = Lcg(case.seed);
    let a = Stored::<T>::new(&mut rng, case.m, case.k, case.pads[0], case.ta, 1.0);
    let b = Stored::<T>::new(&mut rng, case.k, case.n, case.pads[1], case.tb, 1.0);
    let ldc = case.n + case.pads[2];
    let clen = if case.m == 0 {
        0
    } else {
        (case.m - 1) * ldc + case.n
    };
    let c0: Vec<O> = (0..clen)
        .map(|_| {
            if case.beta == 0.0 {
                O::from_f32(f32::NAN)
            } else {
                O::from_f32(rng.next() * 2.0)
            }
        })
        .collect();
    let bias_v: Vec<f32> = (0..case.n).map(|_| rng.next()).collect();
    let row_bias_v: Vec<f32> = (0..case.m).map(|_| 4.0 * rng.next()).collect();
    let ep = Epilogue {
        bias: (case.bias & 1 != 0).then_some(&bias_v[..]),
        row_bias: (case.bias & 2 != 0).then_some(&row_bias_v[..]),
        activation: case.act,
    };
    let packed = PackedB::pack(b.view());
    let widened = PackedB::pack_widened(b.view());
    let bits = |v: &[O]| v.iter().map(|x| x.to_f32().to_bits()).collect::<Vec<_>>();
    for isa in Isa::available() {
        let mut c = c0.clone();
        gemm_at(
            isa,
            Accumulation::F32,
            case.alpha,
            a.view(),
            b.view(),
            case.beta,
            MatMut::new(&mut c, case.m, case.n, ldc).unwrap(),
            &ep,
        )
        .unwrap();
        check(case, &a, &b, &c0, &c, ldc, &ep, isa.name());
        let mut cp = c0.clone();
        gemm_packed_at(
            isa,
            case.alpha,
            a.view(),
            &packed,
            case.beta,
            MatMut::new(&mut cp, case.m, case.n, ldc).unwrap(),
            &ep,
        )
        .unwrap();
        // The documented exception: small m with column-contiguous B on SIMD levels.
        let exempt = isa != Isa::Scalar && case.m <= 16 && case.tb;
        if exempt {
            check(case, &a, &b, &c0, &cp, ldc, &ep, "packed");
        } else {
            assert_eq!(bits(&c), bits(&cp), "{isa}: packed B differs from unpacked");
        }
        let mut cw = c0.clone();
        gemm_packed_at(
            isa,
            case.alpha,
            a.view(),
            &widened,
            case.beta,
            MatMut::new(&mut cw, case.m, case.n, ldc).unwrap(),
            &ep,
        )
        .unwrap();
        assert_eq!(bits(&cw), bits(&cp), "{isa}: B widened when packed differs");
    }
    // Default dispatch too.
    let mut c = c0.clone();
    gemm(
        case.alpha,
        a.view(),
        b.view(),
        case.beta,
        MatMut::new(&mut c, case.m, case.n, ldc).unwrap(),
        &ep,
    )
    .unwrap();
    check(case, &a, &b, &c0, &c, ldc, &ep, "default");
}

fn dim() -> impl Strategy<Value = usize> {
    prop_oneof![0usize..=2, 0usize..=67]
}

fn activation() -> impl Strategy<Value = Activation> {
    prop_oneof![
        Just(Activation::Identity),
        Just(Activation::Relu),
        Just(Activation::GeluErf),
        Just(Activation::GeluTanh)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(debug_assertions) { 24 } else { 160 }, ..ProptestConfig::default() })]

    #[test]
    fn gemm_matches_f64_reference(
        m in dim(), n in dim(), k in dim(),
        pads in prop::array::uniform3(prop_oneof![Just(0usize), 1usize..=5]),
        ta in any::<bool>(), tb in any::<bool>(),
        alpha in prop_oneof![Just(1.0f32), Just(-0.5), Just(0.0), Just(2.5)],
        beta in prop_oneof![Just(0.0f32), Just(1.0), Just(-1.5)],
        bias in 0u8..4, act in activation(),
        types in 0usize..9, seed in any::<u64>(),
    ) {
        let case = Case { m, n, k, pads, ta, tb, alpha, beta, bias, act, seed };
        match types {
            0 => run_case::<f32, f32>(&case),
            1 => run_case::<f32, bf16>(&case),
            2 => run_case::<f32, f16>(&case),
            3 => run_case::<bf16, f32>(&case),
            4 => run_case::<bf16, bf16>(&case),
            5 => run_case::<bf16, f16>(&case),
            6 => run_case::<f16, f32>(&case),
            7 => run_case::<f16, bf16>(&case),
            _ => run_case::<f16, f16>(&case),
        }
    }
}

fn fixed(m: usize, n: usize, k: usize, ta: bool, tb: bool, beta: f32) -> Case {
    Case {
        m,
        n,
        k,
        pads: [3, 0, 1],
        ta,
        tb,
        alpha: 1.0,
        beta,
        bias: 3,
        act: Activation::Identity,
        seed: 7,
    }
}

#[test]
fn large_fixed_cases() {
    // Unoptimised builds run a smaller version; CI runs the tests in release.
    if cfg!(debug_assertions) {
        run_case::<f32, f32>(&fixed(100, 150, 230, false, false, 0.0));
        run_case::<bf16, f32>(&fixed(1, 100, 300, false, true, 0.0));
        return;
    }
    run_case::<f32, f32>(&fixed(300, 500, 700, false, false, 0.0));
    run_case::<bf16, bf16>(&fixed(300, 500, 700, false, true, 1.0));
    run_case::<f16, f32>(&fixed(129, 257, 1031, true, false, 0.0));
    // GEMV and small-m shapes with long k.
    run_case::<bf16, f32>(&fixed(1, 1000, 2000, false, true, 0.0));
    run_case::<f16, f32>(&fixed(3, 999, 2001, false, false, 1.0));
}

fn bits<O: Element>(v: &[O]) -> Vec<u32> {
    v.iter().map(|x| x.to_f32().to_bits()).collect()
}

fn threads_case<T: Element>(m: usize, n: usize, k: usize, tb: bool) {
    let mut rng = Lcg(99);
    let a = Stored::<T>::new(&mut rng, m, k, 1, false, 1.0);
    let b = Stored::<T>::new(&mut rng, k, n, 0, tb, 1.0);
    let bias: Vec<f32> = (0..n).map(|_| rng.next()).collect();
    let ep = Epilogue {
        bias: Some(&bias),
        activation: Activation::GeluTanh,
        ..Default::default()
    };
    let packed = PackedB::pack(b.view());
    let mut results = Vec::new();
    for threads in [1, 2, 3] {
        set_num_threads(threads);
        // Packed first: the view path leaves its widened B in the thread's
        // buffer, which a packed call that failed to write it would read.
        let mut cp = vec![0.5f32; m * n];
        gemm_packed(
            1.5,
            a.view(),
            &packed,
            0.5,
            MatMut::new(&mut cp, m, n, n).unwrap(),
            &ep,
        )
        .unwrap();
        let mut c = vec![0.5f32; m * n];
        gemm(
            1.5,
            a.view(),
            b.view(),
            0.5,
            MatMut::new(&mut c, m, n, n).unwrap(),
            &ep,
        )
        .unwrap();
        // Packed equals the view path bit for bit (the documented exception
        // is small m with column-contiguous B), also where m reaches
        // WIDEN_B_ROWS and a 16-bit packed B is widened once per call.
        if m > 16 || !tb {
            assert_eq!(bits(&c), bits(&cp), "packed vs view (m={m} n={n} k={k})");
        }
        results.push((bits(&c), bits(&cp)));
    }
    set_num_threads(0);
    for r in &results[1..] {
        assert!(
            r == &results[0],
            "results differ across thread counts (m={m} n={n} k={k})"
        );
    }
}

#[test]
fn bit_identical_for_any_thread_count() {
    threads_case::<f32>(257, 301, 600, false);
    threads_case::<bf16>(200, 1000, 300, true);
    threads_case::<f16>(64, 777, 129, false);
    threads_case::<f32>(2, 3000, 500, true);
    threads_case::<bf16>(4, 3000, 500, false);
    // Few flops over a B of 2 MB, split over the threads for bandwidth.
    threads_case::<f32>(1, 1000, 512, true);
    // 16-bit packed B widened into f32 panels once per call (m >= 256).
    threads_case::<f16>(300, 777, 129, false);
    threads_case::<bf16>(256, 100, 200, true);
}

#[test]
fn typed_errors_for_bad_shapes() {
    let d = [1.0f32; 64];
    let mut c = [0.0f32; 64];
    let a = MatRef::new(&d, 4, 3, 3).unwrap();
    let b = MatRef::new(&d, 4, 5, 5).unwrap();
    let err = gemm(
        1.0,
        a,
        b,
        0.0,
        MatMut::new(&mut c, 4, 5, 5).unwrap(),
        &Epilogue::default(),
    )
    .unwrap_err();
    assert_eq!(
        err,
        GemmError::Shape {
            a: (4, 3),
            b: (4, 5),
            c: (4, 5)
        }
    );
    assert!(err.to_string().contains("4x3"));
    let b = MatRef::new(&d, 3, 5, 5).unwrap();
    let ep = Epilogue {
        bias: Some(&[0.0; 4]),
        activation: Activation::Relu,
        ..Default::default()
    };
    let err = gemm(1.0, a, b, 0.0, MatMut::new(&mut c, 4, 5, 5).unwrap(), &ep).unwrap_err();
    assert_eq!(
        err,
        GemmError::BiasLength {
            expected: 5,
            got: 4
        }
    );
    let ep = Epilogue {
        row_bias: Some(&[0.0; 5]),
        ..Default::default()
    };
    let err = gemm(1.0, a, b, 0.0, MatMut::new(&mut c, 4, 5, 5).unwrap(), &ep).unwrap_err();
    assert_eq!(
        err,
        GemmError::RowBiasLength {
            expected: 4,
            got: 5
        }
    );
    assert!(MatMut::new(&mut c, 9, 8, 8).is_err());
}

#[test]
fn beta_zero_overwrites_nan_and_alpha_zero_ignores_inputs() {
    let a = [f32::NAN; 6];
    let b = [f32::INFINITY; 6];
    let mut c = [f32::NAN; 4];
    for isa in Isa::available() {
        let av = MatRef::new(&a, 2, 3, 3).unwrap();
        let bv = MatRef::new(&b, 3, 2, 2).unwrap();
        let ep = Epilogue {
            bias: Some(&[1.0, -2.0]),
            activation: Activation::Relu,
            ..Default::default()
        };
        gemm_at(
            isa,
            Accumulation::F32,
            0.0,
            av,
            bv,
            0.0,
            MatMut::new(&mut c, 2, 2, 2).unwrap(),
            &ep,
        )
        .unwrap();
        assert_eq!(c, [1.0, 0.0, 1.0, 0.0], "{isa}");
    }
}

#[test]
fn unavailable_levels_are_typed_errors() {
    let d = [1.0f32; 4];
    let mut c = [0.0f32; 4];
    for isa in Isa::ALL.into_iter().filter(|i| !i.is_available()) {
        let v = MatRef::new(&d, 2, 2, 2).unwrap();
        let r = gemm_at(
            isa,
            Accumulation::F32,
            1.0,
            v,
            v,
            0.0,
            MatMut::new(&mut c, 2, 2, 2).unwrap(),
            &Epilogue::default(),
        );
        assert!(matches!(r, Err(GemmError::Isa(_))));
    }
}
