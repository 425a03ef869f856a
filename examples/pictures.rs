//! Draws `docs/roofline.svg` and `docs/tuning.svg` from measurements on this
//! machine, the way `mixprec bench --svg` and `mixprec tune --svg` do:
//!
//! ```text
//! cargo run --release --example pictures [-- OUT_DIR [THREADS]]
//! ```
//!
//! THREADS (default 1) is the thread count of the GEMMs, the peak loops and
//! the bandwidth loops; the conversions always run on one core. One thread is
//! the default because a 2-thread peak loop on a shared two-core machine
//! measures whatever the other jobs leave, while one core is usually free.
//!
//! The roofline uses `mixprec bench`'s own measurements (conversions at n =
//! 4096 and 16M, GEMM 1024^3 and GEMV 1x4096x4096 per dtype) at the active
//! ISA level, the peak loops of `mixprec_kernels::peak` and the read
//! bandwidth of `mixprec::plot::measure_bandwidth`. The tuning picture is a
//! `mixprec tune` of the built-in demo with the CLI's defaults (bf16, top-1
//! on the 540 test images, 1% tolerable loss, 32 calibration images).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use mixprec::cli::bench::{self, Budget};
use mixprec::cli::{Cli, Command, model};
use mixprec::demo;
use mixprec::graph::Tensor;
use mixprec::kernels::gemm;
use mixprec::plot;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "docs".into()));
    std::fs::create_dir_all(&out)?;

    // --- roofline ---------------------------------------------------------
    let threads: usize = match std::env::args().nth(2) {
        Some(t) => t.parse()?,
        None => 1,
    };
    gemm::set_num_threads(threads);
    let threads = gemm::num_threads();
    eprintln!("measuring kernels (about half a minute)...");
    // Longer than the CLI's default budget: on a shared machine the best of
    // more repetitions is closer to what the hardware does.
    let budget = Budget {
        per_measurement: Duration::from_millis(600),
        max_reps: 60,
    };
    let mut rows = bench::measure_kernels(budget);
    rows.extend(bench::measure_gemm(budget));
    eprintln!("measuring peaks and bandwidth...");
    let input = bench::roofline(&rows, threads);
    for p in &input.points {
        eprintln!(
            "  {:<32} AI {:>8.3}  {:>8.1} G/s  {}",
            p.label, p.intensity, p.gflops, p.detail
        );
    }
    for (l, v) in &input.compute_ceilings {
        eprintln!("  {l}: {v:?} GFLOP/s");
    }
    for (l, v) in &input.memory_ceilings {
        eprintln!("  {l}: {v:.1} GB/s");
    }
    let svg = plot::roofline_svg(&input)?;
    std::fs::write(out.join("roofline.svg"), svg)?;

    // --- tuning ---------------------------------------------------------
    eprintln!("tuning the built-in demo...");
    let Command::Tune(args) = Cli::try_parse_from(["mixprec", "tune"])?.command else {
        unreachable!("parsed a tune command");
    };
    let loaded = model::load_model(&args.model)?;
    let m = loaded
        .demo
        .as_ref()
        .ok_or("the default model is the demo")?;
    let data = model::demo_data(m)?;
    // The CLI's calibration for the demo: 32 training images outside the test split.
    let cal = demo::calibration_data(&m.description, 32)?;
    let calibration = vec![(
        demo::INPUT_NAME.to_string(),
        Tensor::from_f32(&[cal.n, demo::NUM_FEATURES], cal.inputs)?,
    )];
    let outcome = mixprec::cli::tune::tune_loaded(&args, &loaded, data, calibration)?;
    eprintln!("{}", outcome.report);
    let svg = plot::tuning_svg(&outcome.report)?;
    std::fs::write(out.join("tuning.svg"), svg)?;
    eprintln!(
        "wrote {} and {}",
        out.join("roofline.svg").display(),
        out.join("tuning.svg").display()
    );
    Ok(())
}
