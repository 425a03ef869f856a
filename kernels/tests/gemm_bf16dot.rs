//! `Accumulation::Bf16Dot` (VDPBF16PS) against an f64 reference with the
//! documented bound `2 (k + 2) u |alpha| (|A||B|)_ij + |alpha| e_ftz +
//! epilogue and store rounding`, the DAZ behaviour on subnormal inputs, and
//! the typed errors for other input types and capped levels.

use half::{bf16, f16};
use mixprec_kernels::Isa;
use mixprec_kernels::gemm::{
    Accumulation, Activation, Element, Epilogue, GemmError, MatMut, MatRef, PackedB, gemm_at,
    gemm_packed_at,
};
use mixprec_kernels::isa::{IsaError, detected_isa};
use proptest::prelude::*;

fn have_bf16() -> bool {
    Isa::Avx512CoreBf16.is_available()
}

mod gemm_common;

use gemm_common::{Lcg, reference};

/// The bf16 test matrices of this file.
type Stored = gemm_common::Stored<bf16>;

/// A bf16 matrix of values in [-2, 2).
fn stored(rng: &mut Lcg, rows: usize, cols: usize, pad: usize, transposed: bool) -> Stored {
    Stored::new(rng, rows, cols, pad, transposed, 2.0)
}

#[derive(Debug, Clone)]
struct Case {
    m: usize,
    n: usize,
    k: usize,
    pads: [usize; 3],
    ta: bool,
    tb: bool,
    alpha: f32,
    beta: f32,
    bias: bool,
    act: Activation,
    seed: u64,
}

fn run_case<O: Element>(case: &Case, isa: Isa) {
    let mut rng = Lcg(case.seed);
    let a = stored(&mut rng, case.m, case.k, case.pads[0], case.ta);
    let b = stored(&mut rng, case.k, case.n, case.pads[1], case.tb);
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
    let row_bias_v: Vec<f32> = (0..case.m).map(|_| rng.next()).collect();
    // `bias` turns on both biases.
    let bias = case.bias.then_some(&bias_v[..]);
    let row_bias = case.bias.then_some(&row_bias_v[..]);
    let ep = Epilogue {
        bias,
        row_bias,
        activation: case.act,
    };
    let mut c = c0.clone();
    gemm_at(
        isa,
        Accumulation::Bf16Dot,
        case.alpha,
        a.view(),
        b.view(),
        case.beta,
        MatMut::new(&mut c, case.m, case.n, ldc).unwrap(),
        &ep,
    )
    .unwrap();
    let maxa = a
        .data
        .iter()
        .fold(0.0f64, |m, x| m.max(x.to_f32().abs() as f64));
    let maxb = b
        .data
        .iter()
        .fold(0.0f64, |m, x| m.max(x.to_f32().abs() as f64));
    let e_ftz = 2.0 * case.k as f64 * 2f64.powi(-126) * (1.0 + maxa) * (1.0 + maxb);
    for i in 0..case.m {
        for j in 0..case.n {
            let (want, tol) = reference::<bf16, O>(
                &a,
                &b,
                (i, j, case.k),
                case.alpha,
                case.beta,
                c0[i * ldc + j].to_f32(),
                &ep,
                e_ftz,
            );
            let got = c[i * ldc + j].to_f32() as f64;
            assert!(
                (got - want).abs() <= tol,
                "C[{i},{j}] = {got}, reference {want}, tol {tol}, {case:?}"
            );
        }
    }
    // Untouched padding of C stays as it was.
    for i in 0..case.m.saturating_sub(1) {
        for j in case.n..ldc {
            let idx = i * ldc + j;
            assert_eq!(
                c[idx].to_f32().to_bits(),
                c0[idx].to_f32().to_bits(),
                "padding C[{idx}] written"
            );
        }
    }
}

fn dim() -> impl Strategy<Value = usize> {
    prop_oneof![0usize..=2, 0usize..=70]
}

fn activation() -> impl Strategy<Value = Activation> {
    prop_oneof![
        Just(Activation::Identity),
        Just(Activation::Relu),
        Just(Activation::GeluErf),
        Just(Activation::GeluTanh),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]
    #[test]
    fn bf16dot_matches_f64_reference(
        m in dim(), n in dim(), k in dim(),
        pads in prop::array::uniform3(0usize..3),
        ta in any::<bool>(), tb in any::<bool>(),
        alpha in prop_oneof![Just(1.0f32), Just(0.0f32), -2.0f32..2.0],
        beta in prop_oneof![Just(0.0f32), Just(1.0f32), -1.5f32..1.5],
        bias in any::<bool>(),
        act in activation(),
        out in 0u8..3,
        seed in any::<u64>(),
    ) {
        prop_assume!(have_bf16());
        let case = Case { m, n, k, pads, ta, tb, alpha, beta, bias, act, seed };
        for isa in Isa::available().filter(|&i| i >= Isa::Avx512CoreBf16) {
            match out {
                0 => run_case::<f32>(&case, isa),
                1 => run_case::<bf16>(&case, isa),
                _ => run_case::<f16>(&case, isa),
            }
        }
    }
}

#[test]
fn larger_cases_cross_blocks_and_threads() {
    if !have_bf16() {
        return;
    }
    // m, n past one M/N block (112 x 256) and k past one k block (384) with odd k.
    for (m, n, k, ta, tb) in [(130, 300, 777, false, false), (229, 70, 401, true, true)] {
        let case = Case {
            m,
            n,
            k,
            pads: [1, 2, 3],
            ta,
            tb,
            alpha: 0.75,
            beta: 0.5,
            bias: true,
            act: Activation::Relu,
            seed: (m * n + k) as u64,
        };
        run_case::<f32>(&case, Isa::Avx512CoreBf16);
        run_case::<bf16>(&case, detected_isa());
    }
}

fn bf16dot_1xk(a: &[bf16], b: &[bf16]) -> Result<f32, GemmError> {
    let k = a.len();
    let mut c = [0.0f32];
    gemm_at(
        detected_isa(),
        Accumulation::Bf16Dot,
        1.0,
        MatRef::new(a, 1, k, k).unwrap(),
        MatRef::new(b, k, 1, 1).unwrap(),
        0.0,
        MatMut::new(&mut c, 1, 1, 1).unwrap(),
        &Epilogue::default(),
    )?;
    Ok(c[0])
}

#[test]
fn subnormal_inputs_are_flushed() {
    if !have_bf16() {
        return;
    }
    // 2^-130 is a bf16 subnormal; times 2^20 it would be 2^-110, a normal f32.
    let sub = bf16::from_bits(0x0008);
    assert!(sub.to_f32() != 0.0 && !sub.is_normal());
    let big = bf16::from_f32(2f32.powi(20));
    assert_eq!(bf16dot_1xk(&[sub], &[big]).unwrap(), 0.0);
    // The F32 path keeps it: that is the documented difference.
    let mut c = [0.0f32];
    gemm_at(
        detected_isa(),
        Accumulation::F32,
        1.0,
        MatRef::new(&[sub], 1, 1, 1).unwrap(),
        MatRef::new(&[big], 1, 1, 1).unwrap(),
        0.0,
        MatMut::new(&mut c, 1, 1, 1).unwrap(),
        &Epilogue::default(),
    )
    .unwrap();
    assert_eq!(c[0], sub.to_f32() * big.to_f32());
    // A subnormal in the second element of a pair too, next to a normal product.
    let one = bf16::ONE;
    assert_eq!(
        bf16dot_1xk(&[one, sub, sub], &[one, big, big]).unwrap(),
        1.0
    );
    // Normal inputs whose product is subnormal in f32 are flushed (FTZ).
    let tiny = bf16::from_f32(2f32.powi(-70));
    assert_eq!(bf16dot_1xk(&[tiny], &[tiny]).unwrap(), 0.0);
}

/// `C = A A` for a 2x2 all-ones `A` of type `T` through Bf16Dot at `isa`.
fn bf16dot_2x2<T: Element>(isa: Isa) -> Result<[f32; 4], GemmError> {
    let a = [T::from_f32(1.0); 4];
    let av = MatRef::new(&a, 2, 2, 2).unwrap();
    // NaN in C: beta = 0 must overwrite it.
    let mut c = [f32::NAN; 4];
    gemm_at(
        isa,
        Accumulation::Bf16Dot,
        1.0,
        av,
        av,
        0.0,
        MatMut::new(&mut c, 2, 2, 2).unwrap(),
        &Epilogue::default(),
    )?;
    Ok(c)
}

#[test]
fn typed_errors() {
    let err = bf16dot_2x2::<f32>(detected_isa()).unwrap_err();
    assert!(
        matches!(
            err,
            GemmError::AccumulationUnsupported {
                accumulation: Accumulation::Bf16Dot,
                ..
            }
        ),
        "{err}"
    );
    let err = bf16dot_2x2::<f16>(detected_isa()).unwrap_err();
    assert!(
        matches!(err, GemmError::AccumulationUnsupported { .. }),
        "{err}"
    );
    for isa in Isa::available().filter(|&i| i < Isa::Avx512CoreBf16) {
        let err = bf16dot_2x2::<bf16>(isa).unwrap_err();
        assert!(
            matches!(
                err,
                GemmError::Isa(IsaError::Unsupported {
                    requested: Isa::Avx512CoreBf16,
                    ..
                })
            ),
            "{isa}: {err}"
        );
    }
    if !have_bf16() {
        let err = bf16dot_2x2::<bf16>(detected_isa()).unwrap_err();
        assert!(
            matches!(err, GemmError::Isa(IsaError::Unsupported { .. })),
            "{err}"
        );
    } else {
        assert_eq!(bf16dot_2x2::<bf16>(detected_isa()).unwrap(), [2.0; 4]);
    }
}

/// `C = A B` in f32 through the Bf16Dot view path at the detected level.
fn bf16dot_view(a: MatRef<bf16>, b: MatRef<bf16>, bias: Option<&[f32]>) -> Vec<f32> {
    let (m, n) = (a.rows(), b.cols());
    let mut c = vec![f32::NAN; m * n];
    let ep = Epilogue {
        bias,
        activation: Activation::GeluTanh,
        ..Default::default()
    };
    gemm_at(
        detected_isa(),
        Accumulation::Bf16Dot,
        1.0,
        a,
        b,
        0.0,
        MatMut::new(&mut c, m, n, n).unwrap(),
        &ep,
    )
    .unwrap();
    c
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Weights packed once into k-pair panels give the same bits as the
    /// per-call packing, for every tile height (m = 1..=29 covers each
    /// partial tile), and a row's result does not depend on m: row i of an
    /// m-row product equals the 1-row product of A's row i.
    #[test]
    fn packed_weights_match_view_path_bit_for_bit(
        m in 1usize..30, n in 1usize..70, k in 1usize..90,
        tb in any::<bool>(), bias in any::<bool>(), seed in any::<u64>(),
    ) {
        prop_assume!(have_bf16());
        let mut rng = Lcg(seed);
        let a = stored(&mut rng, m, k, 1, false);
        let b = stored(&mut rng, k, n, 2, tb);
        let bias_v: Vec<f32> = (0..n).map(|_| rng.next()).collect();
        let bias = bias.then_some(&bias_v[..]);
        let want = bf16dot_view(a.view(), b.view(), bias);
        let packed = PackedB::pack_for(b.view(), Accumulation::Bf16Dot).unwrap();
        prop_assert_eq!(packed.accumulation(), Accumulation::Bf16Dot);
        prop_assert_eq!((packed.k(), packed.n()), (k, n));
        let mut got = vec![f32::NAN; m * n];
        let ep = Epilogue { bias, activation: Activation::GeluTanh, ..Default::default() };
        gemm_packed_at(
            detected_isa(), 1.0, a.view(), &packed, 0.0,
            MatMut::new(&mut got, m, n, n).unwrap(), &ep,
        ).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        prop_assert_eq!(bits(&got), bits(&want));
        let ad: Vec<bf16> = (0..m * k).map(|x| bf16::from_f64(a.at(x / k, x % k))).collect();
        for i in [0, m / 2, m - 1] {
            let row = MatRef::new(&ad[i * k..(i + 1) * k], 1, k, k).unwrap();
            let one = bf16dot_view(row, b.view(), bias);
            prop_assert_eq!(bits(&one), bits(&want[i * n..(i + 1) * n]), "row {}", i);
        }
    }
}

#[test]
fn packing_for_bf16dot_has_typed_errors() {
    let w16 = [f16::ONE; 6];
    let err =
        PackedB::pack_for(MatRef::new(&w16, 2, 3, 3).unwrap(), Accumulation::Bf16Dot).unwrap_err();
    assert!(
        matches!(err, GemmError::AccumulationUnsupported { .. }),
        "{err}"
    );
    let wb = [bf16::ONE; 6];
    let f32_packed = PackedB::pack_for(MatRef::new(&wb, 2, 3, 3).unwrap(), Accumulation::F32);
    assert_eq!(f32_packed.unwrap().accumulation(), Accumulation::F32);
    let packed =
        PackedB::pack_for(MatRef::new(&wb, 2, 3, 3).unwrap(), Accumulation::Bf16Dot).unwrap();
    let a = [bf16::ONE; 4];
    let mut c = [0.0f32; 6];
    for isa in Isa::available().filter(|&i| i < Isa::Avx512CoreBf16) {
        let err = gemm_packed_at(
            isa,
            1.0,
            MatRef::new(&a, 2, 2, 2).unwrap(),
            &packed,
            0.0,
            MatMut::new(&mut c, 2, 3, 3).unwrap(),
            &Epilogue::default(),
        )
        .unwrap_err();
        assert!(matches!(err, GemmError::Isa(_)), "{isa}: {err}");
    }
}
