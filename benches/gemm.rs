//! GEMM / GEMV throughput against the `gemm` (0.17) and `matrixmultiply`
//! crates in the same run, plus the peak-FLOP loops so each figure can be
//! read as a fraction of what this CPU does. Throughput is reported in
//! elements = flops (2 m n k), so criterion's "Gelem/s" is GFLOP/s.
//!
//! `cargo bench --bench gemm` (a few minutes); figures go in the issue notes.

use std::hint::black_box;
use std::time::Duration;

use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
    measurement::WallTime,
};
use half::{bf16, f16};
use mixprec_kernels::gemm::{
    Accumulation, Element, Epilogue, MatMut, MatRef, PackedB, gemm, gemm_at, gemm_packed,
    set_num_threads,
};
use mixprec_kernels::peak::{PeakKind, peak_gflops};

fn data<T: Element>(len: usize, seed: usize) -> Vec<T> {
    (0..len)
        .map(|i| T::from_f32(((i * 7 + seed) % 23) as f32 / 23.0 - 0.5))
        .collect()
}

fn peaks(_c: &mut Criterion) {
    // matrixmultiply sizes its pool from this variable on first use (default:
    // all physical cores); pin it to one thread so its row is single-threaded.
    // SAFETY: this runs first, before any thread of this process reads the
    // environment concurrently.
    unsafe { std::env::set_var("MATMUL_NUM_THREADS", "1") };
    for kind in [PeakKind::F32Fma, PeakKind::Bf16Dot, PeakKind::F16Fma] {
        for threads in [1, 2] {
            match peak_gflops(kind, threads) {
                Some(g) => println!("peak {} x{threads}: {g:.1} GFLOP/s", kind.name()),
                None => println!("peak {} x{threads}: not available on this CPU", kind.name()),
            }
        }
    }
}

/// Ours: C (f32) = A (m x k) * B, B either k x n row-major or the transposed
/// view of an [n, k] weight matrix.
fn ours<T: Element>(
    g: &mut BenchmarkGroup<WallTime>,
    name: &str,
    m: usize,
    n: usize,
    k: usize,
    wt: bool,
    threads: usize,
) {
    let a = data::<T>(m * k, 1);
    let b = data::<T>(k * n, 2);
    let mut c = vec![0.0f32; m * n];
    let id = format!(
        "{}/{}{}/t{threads}",
        name,
        T::DTYPE.name(),
        if wt { "-wT" } else { "" }
    );
    g.bench_function(BenchmarkId::new(id, format!("{m}x{k}x{n}")), |bch| {
        set_num_threads(threads);
        let av = MatRef::new(&a, m, k, k).unwrap();
        let bv = if wt {
            MatRef::new(&b, n, k, k).unwrap().t()
        } else {
            MatRef::new(&b, k, n, n).unwrap()
        };
        bch.iter(|| {
            gemm(
                1.0,
                black_box(av),
                black_box(bv),
                0.0,
                MatMut::new(&mut c, m, n, n).unwrap(),
                &Epilogue::default(),
            )
            .unwrap()
        });
    });
}

/// Weights packed once (`PackedB::pack_for`), as the graph does; skipped
/// with a line where the accumulation cannot run here.
fn ours_packed<T: Element>(
    g: &mut BenchmarkGroup<WallTime>,
    m: usize,
    n: usize,
    k: usize,
    threads: usize,
    accumulation: Accumulation,
) {
    let a = data::<T>(m * k, 1);
    let w = data::<T>(k * n, 2);
    let mut c = vec![0.0f32; m * n];
    let packed = PackedB::pack_for(MatRef::new(&w, n, k, k).unwrap().t(), accumulation);
    let av = MatRef::new(&a, m, k, k).unwrap();
    let call = |packed: &PackedB<T>, c: &mut [f32]| {
        gemm_packed(
            1.0,
            black_box(av),
            packed,
            0.0,
            MatMut::new(c, m, n, n).unwrap(),
            &Epilogue::default(),
        )
    };
    let mode = match accumulation {
        Accumulation::F32 => "packed",
        _ => "packed-bf16dot",
    };
    let id = format!("mixprec-{mode}/{}/t{threads}", T::DTYPE.name());
    let packed = match packed.map(|p| call(&p, &mut c).map(|_| p)) {
        Ok(Ok(p)) => p,
        Ok(Err(e)) | Err(e) => {
            println!("{id} {m}x{k}x{n}: skipped ({e})");
            return;
        }
    };
    g.bench_function(BenchmarkId::new(id, format!("{m}x{k}x{n}")), |bch| {
        set_num_threads(threads);
        bch.iter(|| call(&packed, &mut c).unwrap());
    });
}

/// The `gemm` crate, f32 or f16 (its f16 kernel), row-major operands.
fn gemm_crate<T: Element>(
    g: &mut BenchmarkGroup<WallTime>,
    m: usize,
    n: usize,
    k: usize,
    threads: usize,
) {
    let a = data::<T>(m * k, 1);
    let b = data::<T>(k * n, 2);
    let mut c = data::<T>(m * n, 3);
    let par = if threads == 1 {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(threads)
    };
    let id = format!("gemm-crate/{}/t{threads}", T::DTYPE.name());
    g.bench_function(BenchmarkId::new(id, format!("{m}x{k}x{n}")), |bch| {
        bch.iter(|| {
            // SAFETY: the three buffers hold m x k, k x n and m x n row-major
            // elements with the strides given; f16 is half::f16 in both crates.
            unsafe {
                match T::DTYPE {
                    mixprec_kernels::FloatType::F32 => gemm::gemm::<f32>(
                        m,
                        n,
                        k,
                        c.as_mut_ptr().cast(),
                        1,
                        n as isize,
                        false,
                        a.as_ptr().cast(),
                        1,
                        k as isize,
                        b.as_ptr().cast(),
                        1,
                        n as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        par,
                    ),
                    _ => gemm::gemm::<gemm::f16>(
                        m,
                        n,
                        k,
                        c.as_mut_ptr().cast(),
                        1,
                        n as isize,
                        false,
                        a.as_ptr().cast(),
                        1,
                        k as isize,
                        b.as_ptr().cast(),
                        1,
                        n as isize,
                        gemm::f16::ZERO,
                        gemm::f16::ONE,
                        false,
                        false,
                        false,
                        par,
                    ),
                }
            }
        });
    });
}

fn matrixmultiply_f32(g: &mut BenchmarkGroup<WallTime>, m: usize, n: usize, k: usize) {
    let a = data::<f32>(m * k, 1);
    let b = data::<f32>(k * n, 2);
    let mut c = vec![0.0f32; m * n];
    g.bench_function(
        BenchmarkId::new("matrixmultiply/f32/t1", format!("{m}x{k}x{n}")),
        |bch| {
            // SAFETY: buffers hold the row-major m x k, k x n and m x n matrices.
            bch.iter(|| unsafe {
                matrixmultiply::sgemm(
                    m,
                    k,
                    n,
                    1.0,
                    a.as_ptr(),
                    k as isize,
                    1,
                    b.as_ptr(),
                    n as isize,
                    1,
                    0.0,
                    c.as_mut_ptr(),
                    n as isize,
                    1,
                )
            });
        },
    );
}

fn group<'a>(c: &'a mut Criterion, name: &str, flops: u64) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g.throughput(Throughput::Elements(flops));
    g
}

fn squares(c: &mut Criterion) {
    for s in [256, 1024, 2048] {
        let mut g = group(c, &format!("square-{s}"), 2 * (s * s * s) as u64);
        for t in [1, 2] {
            ours::<f32>(&mut g, "mixprec", s, s, s, false, t);
            ours::<bf16>(&mut g, "mixprec", s, s, s, false, t);
            ours::<f16>(&mut g, "mixprec", s, s, s, false, t);
            gemm_crate::<f32>(&mut g, s, s, s, t);
        }
        gemm_crate::<f16>(&mut g, s, s, s, 1);
        matrixmultiply_f32(&mut g, s, s, s);
        g.finish();
    }
    set_num_threads(0);
}

fn transformer(c: &mut Criterion) {
    // (m, k, n): decode (m = 1, 8), prefill (128, 1024), QKV / MLP sizes.
    for (m, k, n) in [
        (1, 1536, 4096),
        (8, 1536, 4096),
        (128, 384, 1536),
        (128, 4096, 1536),
        (1024, 1536, 1536),
    ] {
        let mut g = group(c, &format!("linear-{m}x{k}x{n}"), 2 * (m * n * k) as u64);
        ours::<f32>(&mut g, "mixprec", m, n, k, true, 1);
        ours::<bf16>(&mut g, "mixprec", m, n, k, true, 1);
        ours_packed::<bf16>(&mut g, m, n, k, 1, Accumulation::F32);
        ours_packed::<bf16>(&mut g, m, n, k, 1, Accumulation::Bf16Dot);
        ours::<bf16>(&mut g, "mixprec", m, n, k, true, 2);
        gemm_crate::<f32>(&mut g, m, n, k, 1);
        g.finish();
    }
    set_num_threads(0);
}

fn gemv(c: &mut Criterion) {
    let (k, n) = (4096, 4096);
    let mut g = group(c, "gemv-4096", 2 * (k * n) as u64);
    for t in [1, 2] {
        for wt in [false, true] {
            ours::<f32>(&mut g, "mixprec", 1, n, k, wt, t);
            ours::<bf16>(&mut g, "mixprec", 1, n, k, wt, t);
            ours::<f16>(&mut g, "mixprec", 1, n, k, wt, t);
        }
        ours_packed::<bf16>(&mut g, 1, n, k, t, Accumulation::Bf16Dot);
    }
    gemm_crate::<f32>(&mut g, 1, n, k, 1);
    g.finish();
    set_num_threads(0);
}

/// bf16 squares, one thread: `Accumulation::Bf16Dot` (VDPBF16PS) against the
/// default f32 accumulation; `-- bf16dot` runs just these.
fn bf16dot(c: &mut Criterion) {
    let isa = mixprec_kernels::active_isa();
    for s in [1024, 2048] {
        let a = data::<bf16>(s * s, 1);
        let b = data::<bf16>(s * s, 2);
        let mut out = vec![0.0f32; s * s];
        let mut g = group(c, &format!("bf16dot-{s}"), 2 * (s * s * s) as u64);
        set_num_threads(1);
        for (name, acc) in [
            ("bf16dot", Accumulation::Bf16Dot),
            ("f32acc", Accumulation::F32),
        ] {
            let call = |out: &mut [f32]| {
                gemm_at(
                    isa,
                    acc,
                    1.0,
                    black_box(MatRef::new(&a, s, s, s).unwrap()),
                    black_box(MatRef::new(&b, s, s, s).unwrap()),
                    0.0,
                    MatMut::new(out, s, s, s).unwrap(),
                    &Epilogue::default(),
                )
            };
            if let Err(e) = call(&mut out) {
                println!("bf16dot-{s} {name}: skipped ({e})");
                continue;
            }
            let id = format!("mixprec-{name}/bf16/t1");
            g.bench_function(BenchmarkId::new(id, format!("{s}x{s}x{s}")), |bch| {
                bch.iter(|| call(&mut out).unwrap())
            });
        }
        g.finish();
    }
    set_num_threads(0);
}

/// 3x3 "same" convolutions, one thread unless named: 56x56 images in f32
/// at every level (avx512 levels run the channel-blocked tiles for 64
/// channels), 60 channels (not a multiple of 16: the implicit GEMM reading
/// the image in place), bf16 with `Bf16Dot` for 64 channels (blocked
/// channel pairs) and 48 (not a multiple of 32: planes of channel pairs),
/// a batch of 8 at one and two threads; and a ResNet
/// last-stage layer (1x512x7x7, 9.4 MB of f32 weights) with its weights
/// packed per call and once (`PackedConvWeights`, as compile does). `--
/// conv` runs just these.
fn convolution(c: &mut Criterion) {
    use mixprec_kernels::conv::{Conv2dShape, ConvWeights, PackedConvWeights, conv2d_batch_at};
    use mixprec_kernels::{Isa, active_isa};
    let shape = |ch: usize, hw: usize| Conv2dShape {
        in_channels: ch,
        in_size: [hw, hw],
        kernel: [3, 3],
        stride: [1, 1],
        dilation: [1, 1],
        pad_begin: [1, 1],
        out_size: [hw, hw],
    };
    #[allow(clippy::too_many_arguments)]
    fn run<T: Element>(
        g: &mut BenchmarkGroup<WallTime>,
        id: String,
        isa: Isa,
        acc: Accumulation,
        shape: Conv2dShape,
        count: usize,
        prepacked: bool,
    ) {
        let ch = shape.in_channels;
        let [h, w] = shape.in_size;
        let (k, n) = (ch * 9, h * w);
        let images = data::<T>(count * ch * n, 1);
        let weights = data::<T>(ch * k, 2);
        let wv = MatRef::new(&weights, ch, k, k).unwrap();
        let packed = match PackedConvWeights::pack(isa, acc, shape.kernel, wv) {
            Ok(p) => p,
            Err(e) => {
                println!("{id}: skipped ({e})");
                return;
            }
        };
        let mut out = vec![0.0f32; count * ch * n];
        let mut call = || {
            let weights = if prepacked {
                ConvWeights::packed(wv, &packed).unwrap()
            } else {
                wv.into()
            };
            conv2d_batch_at(
                isa,
                acc,
                &shape,
                count,
                black_box(&images),
                ch * n,
                weights,
                &mut out,
                ch * n,
                &Epilogue::default(),
            )
        };
        if let Err(e) = call() {
            println!("{id}: skipped ({e})");
            return;
        }
        g.throughput(Throughput::Elements((2 * ch * k * n * count) as u64));
        g.bench_function(
            BenchmarkId::new(id, format!("{count}x{ch}x{h}x{w}")),
            |bch| bch.iter(|| call().unwrap()),
        );
    }
    // Throughput is set per entry (channels and batch differ).
    let mut g = group(c, "conv3x3-56x56", 1);
    set_num_threads(1);
    for isa in Isa::available() {
        let id = format!("f32/{isa}/t1");
        run::<f32>(&mut g, id, isa, Accumulation::F32, shape(64, 56), 1, false);
    }
    let isa = active_isa();
    let id = format!("f32/{isa}/t1");
    run::<f32>(&mut g, id, isa, Accumulation::F32, shape(60, 56), 1, false);
    for ch in [64, 48] {
        let id = format!("bf16-bf16dot/{isa}/t1");
        run::<bf16>(
            &mut g,
            id,
            isa,
            Accumulation::Bf16Dot,
            shape(ch, 56),
            1,
            false,
        );
    }
    for t in [1, 2] {
        set_num_threads(t);
        let id = format!("f32/{isa}/t{t}");
        run::<f32>(&mut g, id, isa, Accumulation::F32, shape(64, 56), 8, false);
    }
    g.finish();
    let mut g = group(c, "conv3x3-7x7x512", 1);
    for t in [1, 2] {
        set_num_threads(t);
        for prepacked in [false, true] {
            let how = if prepacked {
                "prepacked"
            } else {
                "packed-per-call"
            };
            let id = format!("f32-{how}/{isa}/t{t}");
            run::<f32>(
                &mut g,
                id,
                isa,
                Accumulation::F32,
                shape(512, 7),
                1,
                prepacked,
            );
        }
    }
    set_num_threads(1);
    let id = format!("bf16-bf16dot-prepacked/{isa}/t1");
    run::<bf16>(
        &mut g,
        id,
        isa,
        Accumulation::Bf16Dot,
        shape(512, 7),
        1,
        true,
    );
    g.finish();
    set_num_threads(0);
}

criterion_group!(
    benches,
    peaks,
    squares,
    transformer,
    gemv,
    bf16dot,
    convolution
);
criterion_main!(benches);
