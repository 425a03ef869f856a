//! `mixprec bench`: kernel throughput per ISA level, with reference figures
//! measured in the same run.
//!
//! A plain copy (`copy_from_slice`, i.e. the platform `memcpy`) of a buffer of
//! the same size is measured as a reference, but it is *not* used as the
//! conversions' ceiling: on the Zen 4 development machine the AVX-512
//! conversions move 1.3x to 1.9x more bytes per second than `memcpy` (and
//! than a safe-Rust read-only loop) at both sizes, because they use 64-byte
//! loads and non-temporal stores. A real ceiling needs a bandwidth loop and
//! bare conversion-instruction loops written in the kernels crate (where
//! `unsafe` lives; at n past the caches, `stream GB/s / 6` since every
//! conversion moves 6 bytes per element; in cache, the conversion instruction
//! alone). Until `mixprec_kernels::peak` offers them, the conversions'
//! `peak_fraction` is `null`; GEMM rows have one (the FMA peak loop).

use std::hint::black_box;
use std::io::Write;
use std::time::{Duration, Instant};

use half::{bf16, f16};
use mixprec_kernels::Element;
use mixprec_kernels::convert::{self, Conversion};
use mixprec_kernels::gemm::{self, Accumulation, Epilogue, MatMut, MatRef};
use mixprec_kernels::isa::Isa;
use mixprec_kernels::peak::{PeakKind, peak_gflops};

use super::model;
use super::{BenchArgs, CliError};

/// Sizes (elements) the conversions are measured at: in L1, and far past the last-level cache.
pub const CONVERT_SIZES: [usize; 2] = [4096, 16 << 20];

/// One measured figure.
#[derive(Clone, Debug, PartialEq)]
pub struct Measurement {
    /// What ran, e.g. `convert f32->bf16` or `copy`.
    pub kernel: String,
    /// The ISA level it ran at (`any` for the copy ceiling).
    pub isa: String,
    /// Problem size, e.g. `n=4096`.
    pub shape: String,
    /// The figure.
    pub value: f64,
    /// Its unit (`Gelem/s`, `GB/s`, `GFLOP/s`).
    pub unit: &'static str,
    /// `value` over the ceiling measured in the same run, if there is one.
    pub peak_fraction: Option<f64>,
}

impl Measurement {
    /// One JSON object (no trailing newline).
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "kernel": self.kernel,
            "isa": self.isa,
            "shape": self.shape,
            "value": self.value,
            "unit": self.unit,
            "peak_fraction": self.peak_fraction,
        })
        .to_string()
    }
}

/// How long to spend on each measurement, and how many repetitions at most.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// Time per measurement; repetitions stop once it is spent (after at least 3).
    pub per_measurement: Duration,
    /// Most repetitions per measurement.
    pub max_reps: usize,
}

impl Default for Budget {
    /// About 0.25 s per measurement: the whole default run stays well under 20 s.
    fn default() -> Self {
        Budget {
            per_measurement: Duration::from_millis(250),
            max_reps: 30,
        }
    }
}

/// Runs `mixprec bench`.
pub fn run(args: &BenchArgs, out: &mut impl Write) -> Result<(), CliError> {
    if let Some(case) = ModelCase::new(args)? {
        let rows = model_rows(&case)?;
        let result = if args.json {
            rows.iter()
                .try_for_each(|m| writeln!(out, "{}", m.to_json()))
        } else {
            write_model_table(out, &rows)
        };
        result.map_err(CliError::Output)?;
        if args.profile {
            write_model_profile(&case, out)?;
        }
        return Ok(());
    }
    let mut rows = measure_kernels(Budget::default());
    rows.extend(measure_gemm(Budget::default()));
    let result = if args.json {
        rows.iter()
            .try_for_each(|m| writeln!(out, "{}", m.to_json()))
    } else {
        write_table(out, &rows)
    };
    result.map_err(CliError::Output)?;
    if let Some(path) = &args.svg {
        let input = roofline(&rows, gemm::num_threads());
        let svg = crate::plot::roofline_svg(&input)
            .map_err(|e| CliError::Other(format!("roofline picture: {e}")))?;
        model::Output::reserve(path, "picture", &[])?.commit(svg.as_bytes())?;
        if !args.json {
            writeln!(out, "roofline written to {}", path.display()).map_err(CliError::Output)?;
        }
    }
    Ok(())
}

/// The roofline of this machine with `rows` (one `mixprec bench` run) placed
/// on it: the rows of the active level, the compute ceilings of the peak
/// loops and the read bandwidths of L2 and DRAM, all measured now with
/// `threads` threads (the conversions run on one core).
pub fn roofline(rows: &[Measurement], threads: usize) -> crate::plot::RooflineInput {
    let active = crate::kernels::isa::active_isa();
    let tuples: Vec<(&str, &str, f64, &str)> = rows
        .iter()
        .filter(|m| m.isa == active.name())
        .map(|m| (m.kernel.as_str(), m.shape.as_str(), m.value, m.unit))
        .collect();
    let bw = crate::plot::measure_bandwidth(threads);
    let compute = [PeakKind::Bf16Dot, PeakKind::F32Fma, PeakKind::F16Fma]
        .into_iter()
        .map(|k| {
            // A peak is a maximum: interference from other work only lowers a run.
            let best = (0..3)
                .filter_map(|_| peak_gflops(k, threads))
                .reduce(f64::max);
            (format!("{}, {threads} thr", k.name()), best)
        })
        .collect();
    crate::plot::RooflineInput {
        cpu_model: crate::kernels::isa::cpu_model().unwrap_or_else(|| "unknown CPU".into()),
        isa: active.name().to_string(),
        compute_ceilings: compute,
        memory_ceilings: vec![
            (format!("L2 read, {threads} thr"), bw.l2_gbps),
            (format!("DRAM read, {threads} thr"), bw.dram_gbps),
        ],
        points: crate::plot::points_from(&tuples),
        notes: vec![
            format!(
                "GEMM/GEMV: {threads} thread(s), f32 output; intensity counts A, B \
                 and C crossing memory once."
            ),
            "Conversions: one core, 1 op per element, intensity 1/(bytes read + \
             written), so the height is Gelem/s and the distance below a memory roof \
             is the share of that bandwidth reached. n=4K fits L1 (no L1 roof drawn)."
                .to_string(),
            "Roofs: peak loops of one instruction (12 chains); read-only sum loops \
             (SSE2 loads) over 512 KiB per thread (L2) and 256 MiB (DRAM). The \
             16M conversions may pass the DRAM read roof: they use 64-byte loads \
             and non-temporal stores, which a read-only loop does not measure."
                .to_string(),
        ],
    }
}

/// Batch of synthetic inputs for a model file benchmarked without `--data`.
pub const DEFAULT_MODEL_BATCH: usize = 32;

/// Unit of the model latency rows.
pub const LATENCY_UNIT: &str = "ms (median)";
/// Unit of the model throughput rows.
pub const THROUGHPUT_UNIT: &str = "samples/s";

/// `bench --model`: median latency and throughput of the model in fp32 and
/// under the plan (`--plan`, or every lowerable node in bf16 without one),
/// at the active ISA level, on `--data` (or the demo's test images, or
/// synthetic inputs of `--batch` samples).
pub fn measure_model(args: &BenchArgs) -> Result<Vec<Measurement>, CliError> {
    match ModelCase::new(args)? {
        Some(case) => model_rows(&case),
        None => Ok(Vec::new()),
    }
}

/// The latency and throughput rows of [`measure_model`].
fn model_rows(case: &ModelCase) -> Result<Vec<Measurement>, CliError> {
    let (graph, batch) = (&case.loaded.graph, case.batch);
    let refs = case.refs();
    let isa = mixprec_kernels::isa::active_isa().name();
    let mut rows = Vec::new();
    for (name, plan, compiled) in &case.plans {
        let secs = model::median_latency(compiled, &refs, 101, Duration::from_secs(1))?;
        let shape = format!(
            "model={} batch={batch} plan={name} ({})",
            case.loaded.label,
            model::plan_counts(graph, plan)
        );
        rows.push(Measurement {
            kernel: "model".into(),
            isa: isa.into(),
            shape: shape.clone(),
            value: secs * 1e3,
            unit: LATENCY_UNIT,
            peak_fraction: None,
        });
        rows.push(Measurement {
            kernel: "model".into(),
            isa: isa.into(),
            shape,
            value: batch as f64 / secs,
            unit: THROUGHPUT_UNIT,
            peak_fraction: None,
        });
    }
    Ok(rows)
}

/// What `bench --model` runs: the model, fp32 and the plan (each compiled
/// once, for the latency table and the profile), the inputs.
struct ModelCase {
    loaded: model::LoadedModel,
    plans: Vec<(
        String,
        crate::graph::PrecisionPlan,
        crate::graph::CompiledModel,
    )>,
    inputs: Vec<(String, crate::graph::Tensor)>,
    batch: usize,
}

impl ModelCase {
    /// The case `args` describe; `None` without `--model`.
    fn new(args: &BenchArgs) -> Result<Option<ModelCase>, CliError> {
        let Some(src) = &args.model else {
            return Ok(None);
        };
        let loaded = model::load_model(src)?;
        let graph = &loaded.graph;
        let mut plans = vec![("fp32".to_string(), crate::graph::PrecisionPlan::new())];
        match &args.plan {
            Some(p) => plans.push((p.display().to_string(), model::load_plan(p, graph)?)),
            None => plans.push((
                "all-bf16".to_string(),
                crate::graph::PrecisionPlan::all(graph, mixprec_kernels::FloatType::Bf16),
            )),
        }
        let data = match (&args.data, &loaded.demo) {
            (Some(p), _) => model::load_data(p, graph, "data")?,
            (None, Some(m)) => model::demo_data(m)?,
            (None, None) => {
                model::synthetic_inputs(graph, args.batch.unwrap_or(DEFAULT_MODEL_BATCH))?
            }
        };
        let inputs = match args.batch {
            Some(b) if b < data.batch => data.head(graph, b),
            _ => data.inputs.clone(),
        };
        let batch = inputs
            .first()
            .and_then(|(_, t)| t.shape().first().copied())
            .unwrap_or(1);
        let plans = plans
            .into_iter()
            .map(|(name, plan)| {
                let compiled = model::compile(&loaded.graph, &plan, args.bf16_gemm.into(), &name)?;
                Ok((name, plan, compiled))
            })
            .collect::<Result<_, CliError>>()?;
        Ok(Some(ModelCase {
            loaded,
            plans,
            inputs,
            batch,
        }))
    }

    fn refs(&self) -> Vec<(&str, &crate::graph::Tensor)> {
        self.inputs.iter().map(|(n, t)| (n.as_str(), t)).collect()
    }
}

/// Profiled runs per plan of `bench --model --profile`; the fastest is shown.
const PROFILE_RUNS: usize = 5;
/// Nodes listed per plan, slowest first.
const PROFILE_NODES: usize = 10;

/// `bench --model --profile`: per plan, where the fastest of
/// [`PROFILE_RUNS`] runs spent its time, by op type and by node. Steps that
/// compile folds into a GEMM (see `CompileOptions::keep_all_steps`) count
/// in the GEMM's node.
fn write_model_profile(case: &ModelCase, out: &mut impl Write) -> Result<(), CliError> {
    let refs = case.refs();
    for (name, _, compiled) in &case.plans {
        let mut best: Option<crate::graph::Profile> = None;
        for _ in 0..PROFILE_RUNS {
            let (_, p) = compiled
                .run_profiled(&refs)
                .map_err(|e| CliError::Other(format!("running the model: {e}")))?;
            if best
                .as_ref()
                .is_none_or(|b| p.total_seconds < b.total_seconds)
            {
                best = Some(p);
            }
        }
        let p = best.expect("PROFILE_RUNS > 0");
        write_profile(out, name, &p).map_err(CliError::Output)?;
    }
    Ok(())
}

fn write_profile(
    out: &mut impl Write,
    plan: &str,
    p: &crate::graph::Profile,
) -> std::io::Result<()> {
    let total = p.total_seconds;
    let share = |s: f64| if total > 0.0 { 100.0 * s / total } else { 0.0 };
    writeln!(
        out,
        "\nplan {plan}: {:.3} ms (fastest of {PROFILE_RUNS} profiled runs)",
        total * 1e3
    )?;
    let mut by_op: Vec<(&str, usize, f64)> = Vec::new();
    for e in &p.entries {
        match by_op.iter_mut().find(|(op, ..)| *op == e.op_type) {
            Some(row) => {
                row.1 += 1;
                row.2 += e.seconds;
            }
            None => by_op.push((e.op_type, 1, e.seconds)),
        }
    }
    by_op.sort_by(|a, b| b.2.total_cmp(&a.2));
    writeln!(out, "{:>10} {:>6} {:>6}  op type", "ms", "%", "steps")?;
    for (op, n, s) in &by_op {
        writeln!(out, "{:>10.3} {:>6.1} {n:>6}  {op}", s * 1e3, share(*s))?;
    }
    let mut nodes: Vec<&crate::graph::ProfileEntry> = p.entries.iter().collect();
    nodes.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    writeln!(out, "{:>10} {:>6} {:>6}  slowest steps", "ms", "%", "dtype")?;
    for e in nodes.iter().take(PROFILE_NODES) {
        writeln!(
            out,
            "{:>10.3} {:>6.1} {:>6}  {} ({})",
            e.seconds * 1e3,
            share(e.seconds),
            e.dtype.to_string(),
            e.name,
            e.op_type
        )?;
    }
    Ok(())
}

/// The `bench --model` table: one line per plan, with the speedup over the
/// first (fp32) row.
pub fn write_model_table(out: &mut impl Write, rows: &[Measurement]) -> std::io::Result<()> {
    let lat: Vec<&Measurement> = rows.iter().filter(|r| r.unit == LATENCY_UNIT).collect();
    writeln!(
        out,
        "model latency at {}, {} thread(s), median of up to 101 runs (1 s per plan)",
        mixprec_kernels::isa::active_isa(),
        gemm::num_threads()
    )?;
    writeln!(
        out,
        "{:>12} {:>14} {:>8}  model / batch / plan",
        "latency ms", "samples/s", "vs fp32"
    )?;
    let base = lat.first().map(|r| r.value);
    for r in lat {
        let tput = rows
            .iter()
            .find(|t| t.unit == THROUGHPUT_UNIT && t.shape == r.shape)
            .map_or(f64::NAN, |t| t.value);
        let speedup = base.map_or(f64::NAN, |b| b / r.value);
        writeln!(
            out,
            "{:>12.4} {:>14.0} {:>7.2}x  {}",
            r.value, tput, speedup, r.shape
        )?;
    }
    Ok(())
}

/// Seconds of the fastest of up to `budget.max_reps` runs of `f` (at least
/// 3, stopping early once the budget is spent).
fn best_of(budget: Budget, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut best = f64::INFINITY;
    for rep in 0..budget.max_reps {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
        if rep >= 2 && start.elapsed() >= budget.per_measurement {
            break;
        }
    }
    best
}

/// How many calls one timed repetition makes at `n` elements: enough that a
/// repetition lasts well past the timer's resolution at L1 sizes.
fn calls_per_rep(n: usize) -> usize {
    (1usize << 20).div_ceil(n.max(1))
}

struct Buffers {
    f32_src: Vec<f32>,
    f32_dst: Vec<f32>,
    bf16_src: Vec<bf16>,
    f16_src: Vec<f16>,
    bf16_dst: Vec<bf16>,
    f16_dst: Vec<f16>,
}

impl Buffers {
    fn new(n: usize) -> Buffers {
        // Ordinary normal values of mixed sign and magnitude (no subnormals,
        // which real weights and activations seldom hold).
        let f32_src: Vec<f32> = (0..n)
            .map(|i| ((i as f32) * 0.377).sin() * 1.0e3 + 1.0e-3)
            .collect();
        let bf16_src = f32_src.iter().map(|&x| bf16::from_f32(x)).collect();
        let f16_src = f32_src.iter().map(|&x| f16::from_f32(x / 64.0)).collect();
        Buffers {
            f32_dst: vec![0.0; n],
            bf16_dst: vec![bf16::ZERO; n],
            f16_dst: vec![f16::ZERO; n],
            f32_src,
            bf16_src,
            f16_src,
        }
    }

    fn run(&mut self, c: Conversion, isa: Isa) {
        // Levels come from `Isa::available()`, so these cannot fail.
        let r = match c {
            Conversion::F32ToBf16 => {
                convert::f32_to_bf16_at(isa, &self.f32_src, &mut self.bf16_dst)
            }
            Conversion::Bf16ToF32 => {
                convert::bf16_to_f32_at(isa, &self.bf16_src, &mut self.f32_dst)
            }
            Conversion::F32ToF16 => convert::f32_to_f16_at(isa, &self.f32_src, &mut self.f16_dst),
            Conversion::F16ToF32 => convert::f16_to_f32_at(isa, &self.f16_src, &mut self.f32_dst),
        };
        debug_assert!(r.is_ok());
        black_box((&self.f32_dst, &self.bf16_dst, &self.f16_dst));
    }
}

/// Measures copy bandwidth (GB/s, bytes read plus written) of a `bytes`-long buffer.
pub fn measure_copy(bytes: usize, budget: Budget) -> f64 {
    let src: Vec<u8> = (0..bytes).map(|i| i as u8).collect();
    let mut dst = vec![0u8; bytes];
    let calls = calls_per_rep(bytes / 4);
    dst.copy_from_slice(&src); // first touch outside the timing
    let secs = best_of(budget, || {
        for _ in 0..calls {
            dst.copy_from_slice(black_box(&src));
            black_box(&mut dst);
        }
    });
    (2 * bytes * calls) as f64 / secs / 1e9
}

/// Measures every conversion at every available level and size, with a
/// copy ceiling per size.
pub fn measure_kernels(budget: Budget) -> Vec<Measurement> {
    measure_kernels_at(budget, &CONVERT_SIZES)
}

/// [`measure_kernels`] at chosen sizes (elements).
pub fn measure_kernels_at(budget: Budget, sizes: &[usize]) -> Vec<Measurement> {
    let mut rows = Vec::new();
    for &n in sizes {
        let shape = format!("n={n}");
        let copy_gbps = measure_copy(n * 4, budget);
        rows.push(Measurement {
            kernel: "memcpy (reference)".into(),
            isa: "any".into(),
            shape: format!("bytes={}", n * 4),
            value: copy_gbps,
            unit: "GB/s",
            peak_fraction: None,
        });
        let mut bufs = Buffers::new(n);
        let calls = calls_per_rep(n);
        for isa in Isa::available() {
            for c in Conversion::ALL {
                bufs.run(c, isa); // warm up: page faults, caches
                let secs = best_of(budget, || {
                    for _ in 0..calls {
                        bufs.run(c, isa);
                    }
                });
                let gelem = (n * calls) as f64 / secs / 1e9;
                rows.push(Measurement {
                    kernel: format!("convert {}", c.name()),
                    isa: isa.name().into(),
                    shape: shape.clone(),
                    value: gelem,
                    unit: "Gelem/s",
                    // No measured ceiling yet (see the module docs).
                    peak_fraction: None,
                });
            }
        }
    }
    rows
}

/// GEMM at 1024^3 and a 1 x 4096 x 4096 GEMV (weights `[out, in]`, used as
/// `w.t()`), f32 / bf16 / f16 inputs with f32 output, at every available
/// level that has a SIMD GEMM path (avx512_core and up; below it the scalar
/// reference runs, far too slow for these sizes), with the f32 FMA peak.
/// The GEMV is memory-bound, so it gets no compute `peak_fraction`.
pub fn measure_gemm(budget: Budget) -> Vec<Measurement> {
    let levels: Vec<Isa> = Isa::available().filter(|&i| i >= Isa::Avx512Core).collect();
    if levels.is_empty() {
        return Vec::new();
    }
    let threads = gemm::num_threads();
    let peak = peak_gflops(PeakKind::F32Fma, threads);
    let mut rows = Vec::new();
    if let Some(p) = peak {
        rows.push(Measurement {
            kernel: PeakKind::F32Fma.name().into(),
            isa: Isa::Avx512Core.name().into(),
            shape: format!("threads={threads}"),
            value: p,
            unit: "GFLOP/s (peak)",
            peak_fraction: None,
        });
    }
    for isa in levels {
        rows.push(gemm_row::<f32>(
            isa,
            "f32",
            [1024, 1024, 1024],
            budget,
            peak,
        ));
        rows.push(gemm_row::<bf16>(
            isa,
            "bf16",
            [1024, 1024, 1024],
            budget,
            peak,
        ));
        rows.push(gemm_row::<f16>(
            isa,
            "f16",
            [1024, 1024, 1024],
            budget,
            peak,
        ));
        rows.push(gemm_row::<f32>(isa, "f32", [1, 4096, 4096], budget, None));
        rows.push(gemm_row::<bf16>(isa, "bf16", [1, 4096, 4096], budget, None));
    }
    rows
}

fn gemm_row<T: Element>(
    isa: Isa,
    dtype: &str,
    [m, k, n]: [usize; 3],
    budget: Budget,
    peak: Option<f64>,
) -> Measurement {
    let a: Vec<T> = (0..m * k)
        .map(|i| T::from_f32(((i % 13) as f32 - 6.0) * 0.125))
        .collect();
    // Weights stored [out, in] = [n, k] and used through `t()`, as layers do.
    let w: Vec<T> = (0..n * k)
        .map(|i| T::from_f32(((i % 7) as f32 - 3.0) * 0.25))
        .collect();
    let mut c = vec![0.0f32; m * n];
    let mut call = || {
        let a = MatRef::new(&a, m, k, k).expect("valid view");
        let b = MatRef::new(&w, n, k, k).expect("valid view").t();
        let c = MatMut::new(&mut c, m, n, n).expect("valid view");
        // Shapes are consistent and `isa` is available, so this cannot fail.
        let r = gemm::gemm_at(
            isa,
            Accumulation::F32,
            1.0,
            a,
            b,
            0.0,
            c,
            &Epilogue::default(),
        );
        debug_assert!(r.is_ok());
    };
    call();
    let gemv = m == 1;
    let calls = if gemv { 16 } else { 1 };
    let secs = best_of(budget, || {
        for _ in 0..calls {
            call();
        }
    });
    black_box(&c);
    let gflops = (2 * m * n * k * calls) as f64 / secs / 1e9;
    Measurement {
        kernel: format!("{} {dtype}", if gemv { "gemv" } else { "gemm" }),
        isa: isa.name().into(),
        shape: format!("{m}x{k}x{n}"),
        value: gflops,
        unit: "GFLOP/s",
        peak_fraction: peak.map(|p| gflops / p),
    }
}

/// Writes the measurements as a table, one row per (level, kernel), one
/// column pair per size.
pub fn write_table(out: &mut impl Write, rows: &[Measurement]) -> std::io::Result<()> {
    let state = mixprec_kernels::isa::isa_state();
    writeln!(
        out,
        "mixprec bench on {} (detected {}, active {})",
        mixprec_kernels::isa::cpu_model()
            .as_deref()
            .unwrap_or("unknown CPU"),
        state.detected,
        state.active
    )?;
    writeln!(
        out,
        "conversions, one core, Gelem/s, best of several runs (% of the measured ceiling where there is one)"
    )?;
    let mut shapes: Vec<String> = Vec::new();
    for r in rows.iter().filter(|r| r.unit == "Gelem/s") {
        if !shapes.contains(&r.shape) {
            shapes.push(r.shape.clone());
        }
    }
    write!(out, "{:<18} {:<11}", "isa", "kernel")?;
    for s in &shapes {
        write!(out, " {s:>18}")?;
    }
    writeln!(out)?;
    let mut keys: Vec<(String, String)> = Vec::new();
    for r in rows.iter().filter(|r| r.unit == "Gelem/s") {
        let key = (r.isa.clone(), r.kernel.clone());
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    for (isa, kernel) in keys {
        write!(
            out,
            "{isa:<18} {:<11}",
            kernel.trim_start_matches("convert ")
        )?;
        for s in &shapes {
            match rows
                .iter()
                .find(|r| r.isa == isa && r.kernel == kernel && &r.shape == s)
            {
                Some(r) => match r.peak_fraction {
                    Some(f) => write!(out, " {:>10.2} ({:>4.0}%)", r.value, 100.0 * f)?,
                    None => write!(out, " {:>10.2}       ", r.value)?,
                },
                None => write!(out, " {:>18}", "-")?,
            }
        }
        writeln!(out)?;
    }
    for r in rows.iter().filter(|r| r.unit == "GB/s") {
        writeln!(
            out,
            "{} at {}: {:.1} GB/s (read + write)",
            r.kernel, r.shape, r.value
        )?;
    }
    if rows
        .iter()
        .any(|r| r.unit == "Gelem/s" && r.peak_fraction.is_none())
    {
        writeln!(
            out,
            "conversion ceilings: not measured yet (memcpy is no ceiling: the AVX-512 paths beat it)"
        )?;
    }
    let gemm_rows: Vec<&Measurement> = rows.iter().filter(|r| r.unit == "GFLOP/s").collect();
    if !gemm_rows.is_empty() {
        writeln!(
            out,
            "gemm, {} thread(s), f32 output, GFLOP/s (% of the vfmadd231ps zmm peak measured now)",
            gemm::num_threads()
        )?;
        for r in gemm_rows {
            write!(
                out,
                "{:<18} {:<11} {:>14} {:>10.1}",
                r.isa, r.kernel, r.shape, r.value
            )?;
            match r.peak_fraction {
                Some(f) => writeln!(out, " ({:>4.0}%)", 100.0 * f)?,
                None => writeln!(out)?,
            }
        }
    }
    for r in rows.iter().filter(|r| r.unit == "GFLOP/s (peak)") {
        writeln!(
            out,
            "peak {} ({}): {:.1} GFLOP/s",
            r.kernel, r.shape, r.value
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_rows_have_the_documented_fields() {
        let m = Measurement {
            kernel: "convert f32->bf16".into(),
            isa: "avx2".into(),
            shape: "n=4096".into(),
            value: 12.5,
            unit: "Gelem/s",
            peak_fraction: Some(0.5),
        };
        let v: serde_json::Value = serde_json::from_str(&m.to_json()).unwrap();
        for key in ["kernel", "isa", "shape", "value", "unit", "peak_fraction"] {
            assert!(v.get(key).is_some(), "{key} missing");
        }
        assert_eq!(v["value"], 12.5);
        assert_eq!(v["peak_fraction"], 0.5);
    }

    #[test]
    fn quick_measurement_covers_every_level_and_conversion() {
        let budget = Budget {
            per_measurement: Duration::ZERO,
            max_reps: 1,
        };
        let rows = measure_kernels_at(budget, &[64]);
        for isa in Isa::available() {
            for c in Conversion::ALL {
                let r = rows
                    .iter()
                    .find(|r| r.isa == isa.name() && r.kernel.ends_with(c.name()))
                    .unwrap_or_else(|| panic!("{isa} {c:?} missing"));
                assert!(r.value > 0.0 && r.value.is_finite());
                assert_eq!(r.peak_fraction, None, "no conversion ceiling is claimed");
            }
        }
        let mut table = Vec::new();
        write_table(&mut table, &rows).unwrap();
        let table = String::from_utf8(table).unwrap();
        assert!(table.contains("f32->bf16"));
    }
}
