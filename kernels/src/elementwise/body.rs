// The kernel source shared by every dispatch level. It is not a module: each
// of `scalar.rs`, `avx2.rs` and `avx512.rs` defines the vector primitives
// (`V`, `M`, `LANES`, `splat`, `add`, `fma`, `select`, `load`, `store`, ...)
// and a `simd!` macro that puts its `#[target_feature]` on every function,
// then `include!`s this file; `load_part` and `store_part` (vectors cut short
// by the end of a slice) are per level too. The scalar level is the instance
// with `LANES == 1`; because every level runs the same operations in the same
// order (fused multiply-adds written out, no reassociation), all levels give
// bit-identical results, which the tests check.
//
// Reductions use one fixed order on every level: element `i` of a row goes to
// virtual accumulator `i % 32`; the 32 partial results are then folded
// pairwise, `acc[j] += acc[j + h]` for h = 16, 8, 4, 2, 1.

/// Lane count of the virtual accumulator set used by every reduction.
const RED_LANES: usize = 32;
const NACC: usize = RED_LANES / LANES;

const SIGN: f32 = f32::from_bits(0x8000_0000);
const ABS_MASK: f32 = f32::from_bits(0x7FFF_FFFF);
const MANT_MASK: f32 = f32::from_bits(0x007F_FFFF);

// Cephes expf: ln 2 split so that n * LN2_HI is exact for |n| <= 150.
const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const EXP_P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    5.000_000_1e-1,
];

// Cephes logf, on m - 1 with m in [sqrt(1/2), sqrt(2)).
const LOG_P: [f32; 9] = [
    7.037_683_6e-2,
    -1.151_461e-1,
    1.167_699_9e-1,
    -1.242_014_1e-1,
    1.424_932_3e-1,
    -1.666_805_8e-1,
    2.000_071_4e-1,
    -2.499_999_4e-1,
    3.333_333_1e-1,
];

// Cephes tanhf, odd polynomial for |x| < 0.625.
const TANH_P: [f32; 5] = [
    -5.704_988_7e-3,
    2.063_908_9e-2,
    -5.373_971_6e-2,
    1.333_144_2e-1,
    -3.333_328_2e-1,
];

// erf: Chebyshev fits (mpmath `chebyfit`, coefficients rounded to f32).
// erf(x) = x * ERF_A(x^2) for |x| < ERF_SPLIT, 1 - ERF_B(|x| - ERF_CENTRE)
// (ERF_B fitted to erfc) up to ERF_ONE, 1 beyond (erfc(3.92) < 2^-25).
const ERF_SPLIT: f32 = 1.5;
const ERF_CENTRE: f32 = 2.71;
const ERF_ONE: f32 = 3.92;
const ERF_A: [f32; 9] = [
    6.205_872_9e-7,
    -1.132_887_3e-5,
    1.130_967_6e-4,
    -8.454_627e-4,
    5.216_919_4e-3,
    -2.686_314_8e-2,
    1.128_372_6e-1,
    -3.761_263_5e-1,
    1.128_379_2,
];
const ERF_B: [f32; 13] = [
    5.217_172_7e-6,
    1.590_083_8e-6,
    -6.566_639e-5,
    1.178_090_2e-4,
    6.226_666_3e-5,
    -6.898_054_3e-4,
    1.840_587_5e-3,
    -3.167_242e-3,
    3.850_725_2e-3,
    -3.329_469_1e-3,
    1.976_604_3e-3,
    -7.292_996_7e-4,
    1.268_379e-4,
];

// GELU-tanh as x * sigmoid(v), v = x * (GT_C1 + GT_C3 x^2) = 2 sqrt(2/pi) (x + 0.044715 x^3).
const GT_C1: f32 = 1.595_769_1;
const GT_C3: f32 = 0.071_354_82;

/// Below this, x * sigmoid(x)-style products are -0 in f32 (|x| e^x < 2^-150
/// from about -110 on); clamping there avoids `-inf * 0 = NaN`.
const NEG_SATURATE: f32 = -200.0;
const TWO_M64: f32 = 5.421_010_9e-20;

// The loops are macros, not functions taking closures, so that each op gets
// its own straight-line loop body inside the `#[target_feature]` function that
// expands it (a closure cannot be a `#[target_feature]` fn, and an op chosen
// per vector by `match` kept LLVM from hoisting anything out of the loop).

/// `y[j] = $f` for every position `j` of the slice `$y`, where `$f` is an
/// expression of the vectors `$v`, each loaded from the slice `$s` at `j`
/// (every `$s` has `$y.len()` elements). `4;` unrolls cheap bodies by four
/// vectors; `1;` is for the long polynomial ones, which fill the out-of-order
/// window on their own. A last partial vector goes through zero-padded
/// buffers (lanes are independent, so the padding never reaches a result).
macro_rules! map {
    (4; $y:expr, [$($v:ident = $s:expr),*] => $f:expr) => {
        map!(@go true; $y, [$($v = $s),*] => $f)
    };
    (1; $y:expr, [$($v:ident = $s:expr),*] => $f:expr) => {
        map!(@go false; $y, [$($v = $s),*] => $f)
    };
    (@go $unroll:tt; $y:expr, [$($v:ident = $s:expr),*] => $f:expr) => {{
        let y = $y;
        let n = y.len();
        $(
            let $v = $s;
            assert_eq!($v.len(), n, "mixprec elementwise: operand length");
        )*
        let yp = y.as_mut_ptr();
        let mut i = 0;
        map!(@unrolled $unroll; yp, i, n, [$($v),*] => $f);
        while i + LANES <= n {
            map!(@step yp, i, [$($v),*] => $f);
            i += LANES;
        }
        if i < n {
            $( let $v = load_part(&$v[i..]); )*
            store_part(&mut y[i..], $f);
        }
    }};
    (@unrolled false; $($rest:tt)*) => {};
    (@unrolled true; $yp:ident, $i:ident, $n:ident, [$($v:ident),*] => $f:expr) => {
        while $i + 4 * LANES <= $n {
            map!(@step $yp, $i, [$($v),*] => $f);
            map!(@step $yp, $i + LANES, [$($v),*] => $f);
            map!(@step $yp, $i + 2 * LANES, [$($v),*] => $f);
            map!(@step $yp, $i + 3 * LANES, [$($v),*] => $f);
            $i += 4 * LANES;
        }
    };
    (@step $yp:ident, $j:expr, [$($v:ident),*] => $f:expr) => {{
        let j = $j;
        // SAFETY: the loops keep j + LANES <= n, the length of the output and
        // of every operand.
        $( let $v = unsafe { load($v.as_ptr().add(j)) }; )*
        let r = $f;
        // SAFETY: as above.
        unsafe { store($yp.add(j), r) };
    }};
}

/// `match $op` with one [`map!`] per binary op, `$p` and `$q` naming the
/// left and right operand vectors (loaded by `[$v = $s]` or bound by the caller).
macro_rules! binary_map {
    ($op:expr, $y:expr, [$($v:ident = $s:expr),*], |$p:ident, $q:ident|) => {
        match $op {
            BinaryOp::Add => map!(4; $y, [$($v = $s),*] => add($p, $q)),
            BinaryOp::Sub => map!(4; $y, [$($v = $s),*] => sub($p, $q)),
            BinaryOp::Mul => map!(4; $y, [$($v = $s),*] => mul($p, $q)),
            BinaryOp::Div => map!(4; $y, [$($v = $s),*] => div($p, $q)),
            BinaryOp::Max => map!(4; $y, [$($v = $s),*] => max_v($p, $q)),
            BinaryOp::Min => map!(4; $y, [$($v = $s),*] => min_v($p, $q)),
            BinaryOp::Pow => unreachable!("pow runs libm's powf before any backend is called"),
        }
    };
}

/// Runs one row `$x` through the 32 virtual accumulators in the documented
/// order (element `i` into accumulator `i % 32`, in increasing `i`) and
/// returns them for [`fold`]: `$a` is an accumulator vector, `$v` the row's
/// vector at position `$j`, and `$step` the accumulator's new value. Whole
/// blocks of 32 run without masks; in the last, partial block, `$step` also
/// runs on zero-padded lanes (and on positions up to the next multiple of 32),
/// whose results are discarded.
macro_rules! accumulate {
    ($x:expr, $init:expr, |$a:ident, $v:ident, $j:pat_param| $step:expr) => {{
        let x = $x;
        let n = x.len();
        let mut acc = [$init; NACC];
        let mut i = 0;
        while i + RED_LANES <= n {
            for (k, slot) in acc.iter_mut().enumerate() {
                let j = i + k * LANES;
                let $j = j;
                let $a = *slot;
                // SAFETY: j + LANES <= i + RED_LANES <= n.
                let $v = unsafe { load(x.as_ptr().add(j)) };
                *slot = $step;
            }
            i += RED_LANES;
        }
        if i < n {
            for slot in acc.iter_mut() {
                let $j = i;
                let $a = *slot;
                let $v = load_upto(x, i);
                *slot = select(live(i, n), $step, $a);
                i += LANES;
            }
        }
        acc
    }};
}

simd! {
    fn horner<const N: usize>(x: V, c: &[f32; N]) -> V {
        let mut r = splat(c[0]);
        for &k in &c[1..] {
            r = fma(r, x, splat(k));
        }
        r
    }

    fn neg_v(x: V) -> V {
        xor(x, splat(SIGN))
    }

    fn abs_v(x: V) -> V {
        and(x, splat(ABS_MASK))
    }

    fn copysign_v(mag: V, sign: V) -> V {
        or(abs_v(mag), and(sign, splat(SIGN)))
    }

    fn relu_v(x: V) -> V {
        select(isnan(x), x, max_raw(x, splat(0.0)))
    }

    /// IEEE maximum: NaN if either is NaN, -0 < +0.
    fn max_v(a: V, b: V) -> V {
        let r = max_raw(a, b);
        // Equal operands differ only for (+0, -0); AND keeps +0.
        let r = select(eq(a, b), and(a, b), r);
        // max_raw already returns b when b is NaN.
        select(isnan(a), a, r)
    }

    fn min_v(a: V, b: V) -> V {
        let r = min_raw(a, b);
        let r = select(eq(a, b), or(a, b), r);
        select(isnan(a), a, r)
    }

    /// `e^x = y * 2^n` with `y = e^r`, `|r| <= ln2 / 2`, for `x` already
    /// clamped to [-128, 88.8] (or NaN).
    fn exp_parts(x: V) -> (V, V) {
        let n = round_even(mul(x, splat(LOG2E)));
        let r = fma(n, splat(-LN2_HI), x);
        let r = fma(n, splat(-LN2_LO), r);
        let z = mul(r, r);
        (add(fma(horner(r, &EXP_P), z, r), splat(1.0)), n)
    }

    // `scale2(y, n)`, a level primitive, is `y * 2^n` for `y` in [0.7, 1.5]
    // and integral `n` in [-150, 128] (the range these callers produce),
    // rounded once: on a subnormal result, the only case that rounds at all.

    fn exp_v(x: V) -> V {
        // Operand order makes a NaN x fall through both clamps.
        let xc = min_raw(splat(88.8), max_raw(splat(-104.0), x));
        let (y, n) = exp_parts(xc);
        scale2(y, n)
    }

    fn log_v(x: V) -> V {
        let tiny = lt(x, splat(f32::MIN_POSITIVE));
        let xs = select(tiny, mul(x, splat(8_388_608.0)), x);
        let e = sub(exponent_field(xs), select(tiny, splat(149.0), splat(126.0)));
        // m in [0.5, 1): the mantissa with exponent field 126.
        let m = or(and(xs, splat(MANT_MASK)), splat(0.5));
        let low = lt(m, splat(std::f32::consts::FRAC_1_SQRT_2));
        let e = select(low, sub(e, splat(1.0)), e);
        // Both subtractions are exact (Sterbenz).
        let m = select(low, sub(add(m, m), splat(1.0)), sub(m, splat(1.0)));
        let z = mul(m, m);
        let y = mul(mul(horner(m, &LOG_P), m), z);
        let y = fma(e, splat(LN2_LO), y);
        let y = fma(z, splat(-0.5), y);
        let r = fma(e, splat(LN2_HI), add(m, y));
        let r = select(eq(x, splat(0.0)), splat(f32::NEG_INFINITY), r);
        let r = select(lt(x, splat(0.0)), splat(f32::NAN), r);
        let r = select(eq(x, splat(f32::INFINITY)), x, r);
        select(isnan(x), x, r)
    }

    fn tanh_v(x: V) -> V {
        let a = abs_v(x);
        let e = exp_v(add(a, a));
        let big = sub(splat(1.0), div(splat(2.0), add(e, splat(1.0))));
        let z = mul(a, a);
        let small = fma(mul(horner(z, &TANH_P), z), a, a);
        copysign_v(select(lt(a, splat(0.625)), small, big), x)
    }

    fn sigmoid_v(x: V) -> V {
        let e = exp_v(neg_v(abs_v(x)));
        let num = select(lt(x, splat(0.0)), e, splat(1.0));
        div(num, add(splat(1.0), e))
    }

    /// `x * sigmoid(v)`, as `x e / (1 + e)` or `x / (1 + e)` with `e = e^-|v|`.
    /// Below `v = -64`, `e^v` is (nearly) subnormal and would lose bits, so
    /// `e^v * 2^64` is formed instead (by biasing the exponent), multiplied by
    /// `x` and scaled back by 2^-64 at the end; the denominator is 1 to f32
    /// precision there.
    fn x_sigmoid_v(x: V, v: V) -> V {
        let far = lt(v, splat(-64.0));
        let t = max_raw(splat(-128.0), select(far, v, neg_v(abs_v(v))));
        let (y, n) = exp_parts(t);
        let e = scale2(y, add(n, select(far, splat(64.0), splat(0.0))));
        let num = select(lt(v, splat(0.0)), e, splat(1.0));
        let den = select(far, splat(1.0), add(splat(1.0), e));
        let r = div(mul(x, num), den);
        select(far, mul(r, splat(TWO_M64)), r)
    }

    fn silu_v(x: V) -> V {
        let xc = max_raw(splat(NEG_SATURATE), x);
        x_sigmoid_v(xc, xc)
    }

    fn gelu_tanh_v(x: V) -> V {
        let xc = max_raw(splat(NEG_SATURATE), x);
        let v = mul(xc, fma(mul(xc, xc), splat(GT_C3), splat(GT_C1)));
        x_sigmoid_v(xc, v)
    }

    fn erf_v(x: V) -> V {
        let a = min_raw(abs_v(x), splat(ERF_ONE));
        let pa = mul(horner(mul(a, a), &ERF_A), a);
        let pb = sub(splat(1.0), horner(sub(a, splat(ERF_CENTRE)), &ERF_B));
        let r = select(lt(a, splat(ERF_SPLIT)), pa, pb);
        let r = select(lt(a, splat(ERF_ONE)), r, splat(1.0));
        select(isnan(x), x, copysign_v(r, x))
    }

    fn gelu_erf_v(x: V) -> V {
        let xc = max_raw(splat(NEG_SATURATE), x);
        let e = erf_v(mul(xc, splat(std::f32::consts::FRAC_1_SQRT_2)));
        mul(mul(splat(0.5), xc), add(splat(1.0), e))
    }

    fn recip_v(x: V) -> V {
        div(splat(1.0), x)
    }

    /// `LANES` elements of `x` from `i`, zero-padded past its end (`i` may be past it).
    fn load_upto<T: Element>(x: &[T], i: usize) -> V {
        if i + LANES <= x.len() {
            // SAFETY: i + LANES <= x.len() bounds the LANES-element load.
            unsafe { load(x.as_ptr().add(i)) }
        } else {
            load_part(&x[i.min(x.len())..])
        }
    }

    /// `y[i] = op(x[i])`; `x.len() == y.len()` (checked by the caller).
    pub(crate) fn unary<I: Element, O: Element>(op: UnaryOp, x: &[I], y: &mut [O]) {
        match op {
            UnaryOp::Neg => map!(4; y, [v = x] => neg_v(v)),
            UnaryOp::Abs => map!(4; y, [v = x] => abs_v(v)),
            UnaryOp::Sqrt => map!(4; y, [v = x] => sqrt(v)),
            UnaryOp::Reciprocal => map!(4; y, [v = x] => recip_v(v)),
            UnaryOp::Relu => map!(4; y, [v = x] => relu_v(v)),
            UnaryOp::Exp => map!(1; y, [v = x] => exp_v(v)),
            UnaryOp::Log => map!(1; y, [v = x] => log_v(v)),
            UnaryOp::Tanh => map!(1; y, [v = x] => tanh_v(v)),
            UnaryOp::Erf => map!(1; y, [v = x] => erf_v(v)),
            UnaryOp::Sigmoid => map!(1; y, [v = x] => sigmoid_v(v)),
            UnaryOp::GeluErf => map!(1; y, [v = x] => gelu_erf_v(v)),
            UnaryOp::GeluTanh => map!(1; y, [v = x] => gelu_tanh_v(v)),
            UnaryOp::Silu => map!(1; y, [v = x] => silu_v(v)),
        }
    }

    /// `y[i] = a[i] op b[i]`; all three have one length (checked by the caller).
    pub(crate) fn binary<A: Element, B: Element, O: Element>(
        op: BinaryOp,
        a: &[A],
        b: &[B],
        y: &mut [O],
    ) {
        binary_map!(op, y, [p = a, q = b], |p, q|)
    }

    /// `y[i] = a[i] op b`; `a.len() == y.len()` (checked by the caller).
    pub(crate) fn binary_splat_rhs<A: Element, O: Element>(
        op: BinaryOp,
        a: &[A],
        b: f32,
        y: &mut [O],
    ) {
        let q = splat(b);
        binary_map!(op, y, [p = a], |p, q|)
    }

    /// `y[i] = a op b[i]`; `b.len() == y.len()` (checked by the caller).
    pub(crate) fn binary_splat_lhs<B: Element, O: Element>(
        op: BinaryOp,
        a: f32,
        b: &[B],
        y: &mut [O],
    ) {
        let p = splat(a);
        binary_map!(op, y, [q = b], |p, q|)
    }

    /// Which lanes of the vector at `i` hold row elements (`i < n`).
    fn live(i: usize, n: usize) -> M {
        lanes_below(n.saturating_sub(i).min(LANES))
    }

    /// Folds the 32 virtual accumulators pairwise (the documented order).
    fn fold(acc: [V; NACC], f: fn(f32, f32) -> f32) -> f32 {
        let mut lanes = [0.0f32; RED_LANES];
        for (k, v) in acc.iter().enumerate() {
            lanes[k * LANES..(k + 1) * LANES].copy_from_slice(&to_array(*v));
        }
        let mut h = RED_LANES / 2;
        while h >= 1 {
            for j in 0..h {
                lanes[j] = f(lanes[j], lanes[j + h]);
            }
            h /= 2;
        }
        lanes[0]
    }

    fn row_sum<T: Element>(x: &[T]) -> f32 {
        fold(accumulate!(x, splat(0.0), |a, v, _| add(a, v)), add_f32)
    }

    fn row_max<T: Element>(x: &[T]) -> f32 {
        fold(accumulate!(x, splat(f32::NEG_INFINITY), |a, v, _| max_v(a, v)), max_f32)
    }

    /// Softmax (or log-softmax) of each row of `cols` elements.
    pub(crate) fn softmax<I: Element, O: Element>(x: &[I], y: &mut [O], cols: usize, log: bool) {
        // exp(x - m) of the row, kept from the sum for the division pass (the
        // same f32 values, so the result is as if recomputed); rounded up to
        // whole accumulator blocks so the tail block can store full vectors.
        let mut exps = if log {
            Vec::new()
        } else {
            vec![0.0f32; cols.next_multiple_of(RED_LANES)]
        };
        for (xr, yr) in x.chunks_exact(cols).zip(y.chunks_exact_mut(cols)) {
            let m = splat(row_max(xr));
            if log {
                let acc = accumulate!(xr, splat(0.0), |a, v, _| add(a, exp_v(sub(v, m))));
                let s = fold(acc, add_f32);
                let c = splat(to_array(log_v(splat(s)))[0]);
                map!(4; yr, [v = xr] => sub(sub(v, m), c));
            } else {
                let ep = exps.as_mut_ptr();
                let s = fold(
                    accumulate!(xr, splat(0.0), |a, v, j| {
                        let e = exp_v(sub(v, m));
                        // SAFETY: j + LANES <= cols rounded up to RED_LANES = exps.len().
                        unsafe { store(ep.add(j), e) };
                        add(a, e)
                    }),
                    add_f32,
                );
                let s = splat(s);
                map!(4; yr, [e = &exps[..cols]] => div(e, s));
            }
        }
    }

    /// Layer normalization of each row; `gamma` (and `beta`) have `cols` elements.
    pub(crate) fn layer_norm<I: Element, O: Element>(
        x: &[I],
        y: &mut [O],
        cols: usize,
        gamma: &[f32],
        beta: Option<&[f32]>,
        eps: f32,
    ) {
        for (xr, yr) in x.chunks_exact(cols).zip(y.chunks_exact_mut(cols)) {
            let mean = splat(row_sum(xr) / cols as f32);
            let sq = accumulate!(xr, splat(0.0), |a, v, _| {
                let d = sub(v, mean);
                fma(d, d, a)
            });
            let var = fold(sq, add_f32) / cols as f32;
            let rstd = splat(1.0 / (var + eps).sqrt());
            match beta {
                Some(beta) => map!(4; yr, [v = xr, g = gamma, b = beta] => {
                    fma(mul(sub(v, mean), rstd), g, b)
                }),
                None => map!(4; yr, [v = xr, g = gamma] => mul(mul(sub(v, mean), rstd), g)),
            }
        }
    }

    /// RMS normalization of each row; `gamma` has `cols` elements.
    pub(crate) fn rms_norm<I: Element, O: Element>(
        x: &[I],
        y: &mut [O],
        cols: usize,
        gamma: &[f32],
        eps: f32,
    ) {
        for (xr, yr) in x.chunks_exact(cols).zip(y.chunks_exact_mut(cols)) {
            // sum((x - 0)^2): x - 0 is x bit for bit, so the subtraction is left out.
            let ms = fold(accumulate!(xr, splat(0.0), |a, v, _| fma(v, v, a)), add_f32);
            let ms = ms / cols as f32;
            let rstd = splat(1.0 / (ms + eps).sqrt());
            map!(4; yr, [v = xr, g = gamma] => mul(mul(v, rstd), g));
        }
    }

    /// One reduction per row; `y` has one element per row (`cols > 0`).
    pub(crate) fn reduce<I: Element, O: Element>(op: ReduceOp, x: &[I], cols: usize, y: &mut [O]) {
        for (xr, out) in x.chunks_exact(cols).zip(y.iter_mut()) {
            let r = match op {
                ReduceOp::Sum => row_sum(xr),
                ReduceOp::Mean => row_sum(xr) / cols as f32,
                ReduceOp::Max => row_max(xr),
            };
            *out = O::from_f32(r);
        }
    }
}

/// Output rows [`fold_windows`] folds side by side, one accumulator each:
/// a max fold's step waits on the previous tap's (max, then the NaN select),
/// so a single row's chain leaves the vector units idle (ResNet's 64x112x112
/// 3x3 s2 MaxPool: 2.75 cycles per tap with one row; the one-node model
/// 0.306-0.314 -> 0.288-0.294 ms with four).
const FOLD_ROWS: usize = 4;

/// [`fold_windows`]' loop with the fold `$f` of accumulator `$a` and tap
/// value `$v`: per output vector, every tap in order with the accumulator in
/// a register, then one store; rows go [`FOLD_ROWS`] at a time, the last
/// `rows % FOLD_ROWS` one by one.
macro_rules! windows_loop {
    ($src:expr, $taps:expr, $row_stride:expr, $out:expr, $width:expr, $init:expr,
     |$a:ident, $v:ident| $f:expr) => {{
        let (src, taps, row_stride, width): (&[f32], &[usize], usize, usize) =
            ($src, $taps, $row_stride, $width);
        let out: &mut [f32] = $out;
        let grouped = out.len() / (width * FOLD_ROWS) * FOLD_ROWS;
        let (head, tail) = out.split_at_mut(grouped * width);
        for (g, rows) in head.chunks_exact_mut(FOLD_ROWS * width).enumerate() {
            let first = g * FOLD_ROWS;
            windows_rows!(src, taps, row_stride, first, rows, width, $init, FOLD_ROWS, |$a, $v| $f);
        }
        for (i, row) in tail.chunks_exact_mut(width).enumerate() {
            windows_rows!(src, taps, row_stride, grouped + i, row, width, $init, 1, |$a, $v| $f);
        }
    }};
}

/// [`windows_loop`] over the `$r` rows `$rows` (output rows `$first..`).
macro_rules! windows_rows {
    ($src:expr, $taps:expr, $row_stride:expr, $first:expr, $rows:expr, $width:expr, $init:expr,
     $r:expr, |$a:ident, $v:ident| $f:expr) => {{
        let rows: &mut [f32] = $rows;
        let base = $src.as_ptr().wrapping_add($first * $row_stride);
        let mut j = 0;
        while j < $width {
            let n = LANES.min($width - j);
            let mut acc = [splat($init); $r];
            for &t in $taps {
                for (r, slot) in acc.iter_mut().enumerate() {
                    let p = base.wrapping_add(r * $row_stride + t + j);
                    // SAFETY: `crate::pool::fold_windows` checked that every tap's
                    // row of `width` values lies in `src`; lanes n.. are not read.
                    let $v = unsafe {
                        if n == LANES {
                            load(p)
                        } else {
                            load_part(std::slice::from_raw_parts(p, n))
                        }
                    };
                    let $a = *slot;
                    *slot = $f;
                }
            }
            for (row, &a) in rows.chunks_exact_mut($width).zip(&acc) {
                if n == LANES {
                    // SAFETY: j + LANES <= width, the row's length.
                    unsafe { store(row.as_mut_ptr().add(j), a) };
                } else {
                    store_part(&mut row[j..], a);
                }
            }
            j += LANES;
        }
    }};
}

simd! {
    /// Pooling's window fold (`crate::pool::fold_windows`). `max_raw(v, a)`
    /// is `v > a ? v : a` (a NaN `a` stays); a NaN `v` replaces it.
    pub(crate) fn fold_windows(
        fold: crate::pool::PoolFold,
        src: &[f32],
        taps: &[usize],
        row_stride: usize,
        out: &mut [f32],
        width: usize,
    ) {
        match fold {
            crate::pool::PoolFold::Max => {
                windows_loop!(src, taps, row_stride, out, width, f32::NEG_INFINITY, |a, v| {
                    select(isnan(v), v, max_raw(v, a))
                })
            }
            crate::pool::PoolFold::Sum => {
                windows_loop!(src, taps, row_stride, out, width, 0.0, |a, v| add(a, v))
            }
        }
    }
}

simd! {
    /// Pooling's padded, stride-phase-split layout (`crate::pool::pad_phases`):
    /// plain slice code, vectorised by the compiler at this level's width.
    pub(crate) fn pad_phases(
        src: &[f32],
        h: usize,
        w: usize,
        layout: &crate::pool::PhaseLayout,
        pad: f32,
        dst: &mut [f32],
    ) {
        let crate::pool::PhaseLayout {
            rows,
            stride: sw,
            phase_len: len,
            pad_top,
            pad_left,
        } = *layout;
        for q in 0..sw {
            // Phase q holds padded columns t * sw + q, input column
            // t * sw + q - pad_left: the input's are t0..t0 + n, from input
            // column ix0 on (none where n is 0).
            let (t0, t1) = crate::conv::valid_range(q, pad_left, sw, w, len);
            let n = t1 - t0;
            let ix0 = (t0 * sw + q).saturating_sub(pad_left);
            for y in 0..rows {
                let seg = &mut dst[(q * rows + y) * len..][..len];
                let row = y
                    .checked_sub(pad_top)
                    .filter(|&iy| iy < h && n > 0)
                    .map(|iy| &src[iy * w + ix0..(iy + 1) * w]);
                let Some(row) = row else {
                    seg.fill(pad);
                    continue;
                };
                seg[..t0].fill(pad);
                seg[t0 + n..].fill(pad);
                let out = &mut seg[t0..t0 + n];
                if sw == 1 {
                    out.copy_from_slice(&row[..n]);
                } else if sw == 2 {
                    // The common stride, as pairs the compiler vectorises.
                    let pairs = row.chunks_exact(2);
                    if let [last] = pairs.remainder() {
                        out[n - 1] = *last;
                    }
                    for (d, pair) in out.iter_mut().zip(pairs) {
                        *d = pair[0];
                    }
                } else {
                    for (d, &v) in out.iter_mut().zip(row.iter().step_by(sw)) {
                        *d = v;
                    }
                }
            }
        }
    }
}

/// `$dst[j]` = the max fold, in order, of `$src[t + j]` over the taps `t`
/// of `$taps` (nonempty): by `max_raw` alone, or by pooling's exact fold
/// where a value may be a NaN (`$exact`). A macro, so that each row's loop
/// is straight-line code in the calling kernel.
macro_rules! fold_max_taps {
    ($src:expr, $taps:expr, $dst:expr, $exact:expr) => {{
        let (src, taps, dst): (&[f32], &[usize], &mut [f32]) = ($src, $taps, $dst);
        let last = taps.iter().copied().max().expect("a tap");
        assert!(
            last + dst.len().next_multiple_of(LANES) <= src.len(),
            "mixprec max pool: tap {last} past {} values",
            src.len()
        );
        if $exact {
            fold_max_taps!(@go src, taps, dst, |v, a| select(isnan(v), v, max_raw(v, a)))
        } else {
            fold_max_taps!(@go src, taps, dst, |v, a| max_raw(v, a))
        }
    }};
    (@go $src:ident, $taps:ident, $dst:ident, |$v:ident, $a:ident| $f:expr) => {{
        // Windows of two and three taps (2x2 and 3x3 pools) get loops of
        // their own: a loop over the taps inside the loop over the vectors
        // doubled the scalar level's time and cost avx2 a fifth.
        match $taps {
            &[t0, t1] => fold_max_taps!(@each $src, $dst, |$v, $a| [t0, t1] => $f),
            &[t0, t1, t2] => fold_max_taps!(@each $src, $dst, |$v, $a| [t0, t1, t2] => $f),
            _ => fold_max_taps!(@each $src, $dst, |$v, $a| $taps => $f),
        }
    }};
    (@each $src:ident, $dst:ident, |$v:ident, $a:ident| $taps:expr => $f:expr) => {{
        let taps = $taps;
        let (&first, rest) = taps.split_first().expect("a tap");
        let n = $dst.len();
        let mut j = 0;
        while j < n {
            // SAFETY: every tap t is at most `last`, and j < n, so
            // t + j + LANES <= last + n rounded up to LANES <= src.len()
            // (asserted).
            let mut $a = unsafe { load($src.as_ptr().add(first + j)) };
            for &t in rest {
                // SAFETY: as above.
                let $v = unsafe { load($src.as_ptr().add(t + j)) };
                $a = $f;
            }
            if j + LANES <= n {
                // SAFETY: j + LANES <= n = dst.len().
                unsafe { store($dst.as_mut_ptr().add(j), $a) };
            } else {
                store_part(&mut $dst[j..], $a);
            }
            j += LANES;
        }
    }};
}

simd! {
    /// The max pool of output rows `first..` of one plane
    /// (`crate::pool::max_pool_plane`), separably: each input row the band's
    /// windows reach is split by column phase (`split_row`) and folded over
    /// the window's columns at every output column, then those row maxima
    /// are folded over the window's rows. The row-major fold allows it bit
    /// for bit (the first of equal values in the first row that holds one,
    /// the last NaN of the last row that holds one), and -inf fills every
    /// tap outside the plane, which the fold passes over. Rows without a NaN
    /// fold by `max_raw` alone. `scratch` holds the split row
    /// (`strides[1] * phase_len`), then one `folded_stride` row of maxima
    /// per input row.
    pub(crate) fn max_pool_band(
        win: &crate::pool::PoolWindow,
        phase_len: usize,
        folded_stride: usize,
        src: &[f32],
        first: usize,
        out: &mut [f32],
        scratch: &mut [f32],
    ) {
        let crate::pool::PoolWindow {
            h,
            w,
            ow,
            kernel: [kh, kw],
            strides: [sh, sw],
            dilations: [dh, dw],
            pad_begin: [pad_top, pad_left],
            ..
        } = *win;
        let rows = out.len() / ow;
        // The input rows the band's windows reach, clipped to the plane.
        let lo = (first * sh).saturating_sub(pad_top).min(h);
        let hi = ((first + rows - 1) * sh + (kh - 1) * dh + 1)
            .saturating_sub(pad_top)
            .min(h)
            .max(lo);
        let (split, folded) = scratch.split_at_mut(sw * phase_len);
        // Only input columns are written below: the padding stays -inf.
        split.fill(f32::NEG_INFINITY);
        let col_taps: Vec<usize> = (0..kw)
            .map(|kj| kj * dw % sw * phase_len + kj * dw / sw)
            .collect();
        let mut any_nan = false;
        for y in lo..hi {
            let nan = split_row(&src[y * w..][..w], pad_left, sw, phase_len, split);
            any_nan |= nan;
            let dst = &mut folded[(y - lo) * folded_stride..][..folded_stride];
            fold_max_taps!(split, &col_taps, dst, nan);
        }
        let mut row_taps = Vec::with_capacity(kh);
        for (r, out_row) in out.chunks_exact_mut(ow).enumerate() {
            let top = (first + r) * sh;
            row_taps.clear();
            for ki in 0..kh {
                let y = top + ki * dh;
                if y >= pad_top && y - pad_top < h {
                    row_taps.push((y - pad_top - lo) * folded_stride);
                }
            }
            if row_taps.is_empty() {
                out_row.fill(f32::NEG_INFINITY);
            } else {
                fold_max_taps!(folded, &row_taps, out_row, any_nan);
            }
        }
    }

    /// Writes one input row's values into `phases`, padded column `c` (input
    /// column `c - pad_left`) at `c % sw * phase_len + c / sw`, leaving every
    /// other cell; returns whether the row holds a NaN.
    fn split_row(
        row: &[f32],
        pad_left: usize,
        sw: usize,
        phase_len: usize,
        phases: &mut [f32],
    ) -> bool {
        let w = row.len();
        let mut nan = false;
        if sw == 2 {
            // Input column k is padded column k + pad_left: the even input
            // columns fill one phase, the odd ones the other.
            let even_at = pad_left % 2 * phase_len + pad_left / 2;
            let odd_at = (pad_left + 1) % 2 * phase_len + pad_left.div_ceil(2);
            let (evens, odds) = (w.div_ceil(2), w / 2);
            let (even_dst, odd_dst) = if even_at < odd_at {
                let (a, b) = phases.split_at_mut(odd_at);
                (&mut a[even_at..even_at + evens], &mut b[..odds])
            } else {
                let (a, b) = phases.split_at_mut(even_at);
                (&mut b[..evens], &mut a[odd_at..odd_at + odds])
            };
            let mut k = 0;
            while k + 2 * LANES <= w {
                // SAFETY: k + 2 * LANES <= w = row.len().
                let (a, b) = unsafe { (load(row.as_ptr().add(k)), load(row.as_ptr().add(k + LANES))) };
                nan |= any(unordered(a, b));
                let (even, odd) = deinterleave2(a, b);
                // SAFETY: k / 2 + LANES <= w / 2 <= odds <= evens, the
                // lengths of the two destinations.
                unsafe {
                    store(even_dst.as_mut_ptr().add(k / 2), even);
                    store(odd_dst.as_mut_ptr().add(k / 2), odd);
                }
                k += 2 * LANES;
            }
            if k < w {
                let (a, b) = (load_upto(row, k), load_upto(row, k + LANES));
                nan |= any(unordered(a, b));
                let (even, odd) = deinterleave2(a, b);
                store_part(&mut even_dst[k / 2..], even);
                store_part(&mut odd_dst[k / 2..], odd);
            }
        } else if sw == 1 {
            let dst = &mut phases[pad_left..pad_left + w];
            let mut k = 0;
            while k + LANES <= w {
                // SAFETY: k + LANES <= w, the length of `row` and `dst`.
                let v = unsafe { load(row.as_ptr().add(k)) };
                nan |= any(isnan(v));
                // SAFETY: as above.
                unsafe { store(dst.as_mut_ptr().add(k), v) };
                k += LANES;
            }
            if k < w {
                let v = load_part(&row[k..]);
                nan |= any(isnan(v));
                store_part(&mut dst[k..], v);
            }
        } else {
            for (k, &v) in row.iter().enumerate() {
                let c = k + pad_left;
                phases[c % sw * phase_len + c / sw] = v;
                nan |= v.is_nan();
            }
        }
        nan
    }
}

fn add_f32(a: f32, b: f32) -> f32 {
    a + b
}

/// [`max_v`] on one value, for folding lanes.
fn max_f32(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        a + b
    } else if a == b {
        f32::from_bits(a.to_bits() & b.to_bits())
    } else if a > b {
        a
    } else {
        b
    }
}
