//! End-to-end tests of the `mixprec` binary: `info` and `convert` (round trip
//! and every bad-input case). `tune`, `run` and `bench --model` are in
//! `tests/cli_tune.rs`.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use half::{bf16, f16};
use mixprec::kernels::isa::{self, Isa};
use safetensors::Dtype;
use safetensors::tensor::TensorView;

fn mixprec(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mixprec"));
    cmd.args(args).env_remove("MIXPREC_MAX_CPU_ISA");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the mixprec binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// Non-zero exit, exactly one stderr line and it starts with `error:`; no panic.
fn assert_one_error_line(o: &Output, what: &str) -> String {
    let err = stderr(o);
    assert!(!o.status.success(), "{what}: exited 0; stderr {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{what}: stderr not one line: {err}");
    assert!(lines[0].starts_with("error: "), "{what}: {err}");
    assert!(!err.contains("panicked"), "{what}: {err}");
    lines[0].to_string()
}

#[test]
fn info_reports_active_level_and_each_family() {
    let o = mixprec(&["info"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let detected = isa::detected_isa();
    assert!(
        out.contains(&format!("detected level: {detected}")),
        "{out}"
    );
    assert!(
        out.contains(&format!("active level:   {detected} (detected)")),
        "{out}"
    );
    for family in [
        "convert f32->bf16",
        "convert bf16->f32",
        "convert f32->f16",
        "convert f16->f32",
    ] {
        assert!(out.contains(family), "{family} missing: {out}");
    }
    for family in ["gemm", "dot", "elementwise", "norm"] {
        assert!(
            out.lines().any(|l| l.trim_start().starts_with(family)),
            "{family} missing: {out}"
        );
    }
    for (feature, _) in isa::cpu_features() {
        assert!(out.contains(feature), "{feature} missing: {out}");
    }
}

#[test]
fn threads_option_sets_the_kernels_threads_and_rejects_zero() {
    let default = mixprec(&["info"], &[]);
    assert!(default.status.success(), "{}", stderr(&default));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        stdout(&default).contains(&format!("threads:        {cpus} ")),
        "{}",
        stdout(&default)
    );
    // Global: before or after the subcommand.
    for args in [
        &["--threads", "3", "info"][..],
        &["info", "--threads", "3"][..],
    ] {
        let o = mixprec(args, &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stdout(&o).contains("threads:        3 "), "{}", stdout(&o));
    }
    let zero = mixprec(&["--threads", "0", "info"], &[]);
    assert!(!zero.status.success());
    let line = assert_one_error_line(&zero, "threads");
    assert!(line.contains("--threads"), "{line}");
}

#[test]
fn info_follows_the_cap() {
    let o = mixprec(&["info"], &[("MIXPREC_MAX_CPU_ISA", "SCALAR")]);
    assert!(o.status.success());
    let out = stdout(&o);
    assert!(
        out.contains("active level:   scalar (capped by MIXPREC_MAX_CPU_ISA=scalar)"),
        "{out}"
    );
    assert!(out.contains("scalar integer RNE"), "{out}");
    assert!(!out.contains("warning"), "{out}");
}

#[test]
fn invalid_cap_is_reported_and_detection_kept() {
    for (value, phrase) in [
        ("sse9", "unknown ISA level"),
        ("avx512_core_amx", "recognised but not implemented"),
    ] {
        let o = mixprec(&["info"], &[("MIXPREC_MAX_CPU_ISA", value)]);
        assert!(o.status.success(), "{}", stderr(&o));
        let out = stdout(&o);
        let warning = out
            .lines()
            .find(|l| l.starts_with("warning: MIXPREC_MAX_CPU_ISA="))
            .unwrap_or_else(|| panic!("no warning for {value}: {out}"));
        assert!(
            warning.contains(value) && warning.contains(phrase),
            "{warning}"
        );
        assert!(
            out.contains(&format!("active level:   {}", isa::detected_isa())),
            "{out}"
        );
    }
}

#[test]
fn usage_errors_exit_non_zero_with_an_error_line() {
    for args in [
        &[
            "convert",
            "x.safetensors",
            "--to",
            "bf16",
            "-o",
            "y",
            "--bogus",
        ][..],
        &["convert", "x.safetensors", "--to", "int8", "-o", "y"],
        &["frobnicate"],
        &["convert"],
    ] {
        let o = mixprec(args, &[]);
        assert!(!o.status.success(), "{args:?}");
        let err = stderr(&o);
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        assert_eq!(
            err.lines().count(),
            1,
            "one line, like every failure: {err}"
        );
        assert!(!err.contains("panicked"));
    }
}

/// Values that exercise rounding: ties, subnormals, overflow, signed zero, infinities.
fn sample_f32() -> Vec<f32> {
    vec![
        1.0,
        -2.5,
        0.1,
        1.0 + f32::EPSILON,
        f32::from_bits(0x3F80_8000), // exact bf16 tie, rounds to even
        f32::from_bits(0x3F81_8000), // tie, rounds up
        3.0e-39,                     // f32 subnormal
        -0.0,
        f32::MAX,
        f32::INFINITY,
        f32::NEG_INFINITY,
        65520.0,
        6.0e-8,
        -123456.78,
    ]
}

fn le_bytes_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn write_sample(path: &Path) -> Vec<f32> {
    let w = sample_f32();
    let w_bytes = le_bytes_f32(&w);
    let ids: Vec<u8> = [5i64, -1, 1 << 40]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let mask: Vec<u8> = vec![1, 0, 1, 1];
    let f64s: Vec<u8> = [0.1f64, -3.5]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let h: Vec<u8> = [1.5f32, -0.75, 1.0e-6]
        .iter()
        .flat_map(|&x| f16::from_f32(x).to_le_bytes())
        .collect();
    let tensors = vec![
        (
            "layer.weight",
            TensorView::new(Dtype::F32, vec![2, 7], &w_bytes).unwrap(),
        ),
        ("ids", TensorView::new(Dtype::I64, vec![3], &ids).unwrap()),
        (
            "mask",
            TensorView::new(Dtype::U8, vec![2, 2], &mask).unwrap(),
        ),
        (
            "double",
            TensorView::new(Dtype::F64, vec![2], &f64s).unwrap(),
        ),
        ("half", TensorView::new(Dtype::F16, vec![3], &h).unwrap()),
    ];
    let meta = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("note".to_string(), "keep me".to_string()),
    ]);
    safetensors::serialize_to_file(tensors, &Some(meta), path).unwrap();
    w
}

fn load(path: &Path) -> (Vec<u8>, HashMap<String, String>) {
    let bytes = fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    (bytes, meta.metadata().clone().unwrap_or_default())
}

fn u16s(data: &[u8]) -> Vec<u16> {
    data.chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn convert_round_trip_f32_bf16_f32() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    let mid = dir.path().join("mid.safetensors");
    let back = dir.path().join("back.safetensors");
    let w = write_sample(&input);
    let input_before = fs::read(&input).unwrap();

    let o = mixprec(
        &[
            "convert",
            input.to_str().unwrap(),
            "--to",
            "bf16",
            "-o",
            mid.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("double (F64)"),
        "F64 kept is not reported: {}",
        stdout(&o)
    );
    assert_eq!(fs::read(&input).unwrap(), input_before, "input changed");

    let (bytes, meta) = load(&mid);
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(meta.get("format").map(String::as_str), Some("pt"));
    assert_eq!(meta.get("note").map(String::as_str), Some("keep me"));
    let t = st.tensor("layer.weight").unwrap();
    assert_eq!((t.dtype(), t.shape()), (Dtype::BF16, &[2usize, 7][..]));
    let want: Vec<u16> = w.iter().map(|&x| bf16::from_f32(x).to_bits()).collect();
    assert_eq!(u16s(t.data()), want);
    let h = st.tensor("half").unwrap();
    assert_eq!(h.dtype(), Dtype::BF16);
    let want_h: Vec<u16> = [1.5f32, -0.75, 1.0e-6]
        .iter()
        .map(|&x| bf16::from_f32(f16::from_f32(x).to_f32()).to_bits())
        .collect();
    assert_eq!(u16s(h.data()), want_h);

    let o = mixprec(
        &[
            "convert",
            mid.to_str().unwrap(),
            "--to",
            "f32",
            "-o",
            back.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let (bytes, meta) = load(&back);
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(meta.len(), 2);
    let t = st.tensor("layer.weight").unwrap();
    assert_eq!(t.dtype(), Dtype::F32);
    let want: Vec<u8> = le_bytes_f32(
        &w.iter()
            .map(|&x| bf16::from_f32(x).to_f32())
            .collect::<Vec<_>>(),
    );
    assert_eq!(t.data(), &want[..]);

    // Integer, bool-like and F64 tensors are untouched by both passes.
    let orig = safetensors::SafeTensors::deserialize(&input_before).unwrap();
    for name in ["ids", "mask", "double"] {
        let (a, b) = (orig.tensor(name).unwrap(), st.tensor(name).unwrap());
        assert_eq!(
            (a.dtype(), a.shape(), a.data()),
            (b.dtype(), b.shape(), b.data()),
            "{name}"
        );
    }
    // Nothing but the three files: no temporary left behind.
    assert_eq!(files_in(dir.path()), vec![back, input, mid]);
}

#[test]
fn convert_to_f16_matches_half() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    let out = dir.path().join("out.safetensors");
    let w = write_sample(&input);
    let o = mixprec(
        &[
            "convert",
            input.to_str().unwrap(),
            "--to",
            "f16",
            "--output",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("layer.weight").unwrap();
    assert_eq!(t.dtype(), Dtype::F16);
    let want: Vec<u16> = w.iter().map(|&x| f16::from_f32(x).to_bits()).collect();
    assert_eq!(u16s(t.data()), want);
}

/// A well-formed file as raw bytes, for corrupting.
fn raw_file(header: &str, data: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.extend_from_slice(data);
    v
}

#[test]
fn bad_inputs_fail_cleanly_and_leave_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    write_sample(&good);
    let good_bytes = fs::read(&good).unwrap();

    let ok_header = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let cases: Vec<(&str, Option<Vec<u8>>, &str)> = vec![
        ("missing", None, "cannot open"),
        ("empty", Some(Vec::new()), "too short"),
        (
            "truncated",
            Some(good_bytes[..good_bytes.len() - 5].to_vec()),
            "past the end",
        ),
        (
            "corrupt header",
            Some(raw_file("{\"a\": nonsense", &[0; 8])),
            "not valid",
        ),
        (
            "header length past EOF",
            Some({
                let mut v = raw_file(ok_header, &[0; 8]);
                v[..8].copy_from_slice(&(1u64 << 20).to_le_bytes());
                v
            }),
            "past the end of the file",
        ),
        (
            "overlapping offsets",
            Some(raw_file(
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                &[0; 8],
            )),
            "overlap",
        ),
        (
            "unknown dtype",
            Some(raw_file(
                r#"{"a":{"dtype":"F31","shape":[2],"data_offsets":[0,8]}}"#,
                &[0; 8],
            )),
            "unknown dtype",
        ),
        (
            "shape does not match bytes",
            Some(raw_file(
                r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
                &[0; 8],
            )),
            "need 12 bytes",
        ),
    ];
    for (what, content, phrase) in cases {
        let input = dir
            .path()
            .join(format!("{}.safetensors", what.replace(' ', "_")));
        if let Some(bytes) = &content {
            fs::write(&input, bytes).unwrap();
        }
        let out = dir.path().join("out.safetensors");
        let o = mixprec(
            &[
                "convert",
                input.to_str().unwrap(),
                "--to",
                "bf16",
                "-o",
                out.to_str().unwrap(),
            ],
            &[],
        );
        let line = assert_one_error_line(&o, what);
        assert!(line.contains(phrase), "{what}: {line}");
        assert!(!out.exists(), "{what}: output left behind");
        if let Some(bytes) = content {
            assert_eq!(fs::read(&input).unwrap(), bytes, "{what}: input changed");
        }
    }
    // Only the inputs we wrote: no temporary files.
    assert!(
        files_in(dir.path()).iter().all(|p| !p
            .file_name()
            .unwrap()
            .to_string_lossy()
            .contains("mixprec")),
        "{:?}",
        files_in(dir.path())
    );
}

#[test]
fn convert_refuses_to_overwrite_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    write_sample(&input);
    let before = fs::read(&input).unwrap();
    let same_via_dots = dir.path().join(".").join("in.safetensors");
    let mut targets = vec![input.clone(), same_via_dots];
    #[cfg(unix)]
    {
        let link = dir.path().join("link.safetensors");
        std::os::unix::fs::symlink(&input, &link).unwrap();
        targets.push(link);
        let hard = dir.path().join("hard.safetensors");
        fs::hard_link(&input, &hard).unwrap();
        targets.push(hard);
    }
    for target in targets {
        let o = mixprec(
            &[
                "convert",
                input.to_str().unwrap(),
                "--to",
                "bf16",
                "-o",
                target.to_str().unwrap(),
            ],
            &[],
        );
        let line = assert_one_error_line(&o, &target.display().to_string());
        assert!(line.contains("is the input file"), "{line}");
        assert_eq!(fs::read(&input).unwrap(), before);
    }
}

#[test]
fn failed_convert_keeps_an_existing_output() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bad.safetensors");
    fs::write(&input, raw_file("{\"a\":", &[])).unwrap();
    let out = dir.path().join("out.safetensors");
    fs::write(&out, b"previous contents").unwrap();
    let o = mixprec(
        &[
            "convert",
            input.to_str().unwrap(),
            "--to",
            "f16",
            "-o",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert_one_error_line(&o, "bad header");
    assert_eq!(fs::read(&out).unwrap(), b"previous contents");
}

#[test]
fn convert_to_a_missing_folder_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    write_sample(&input);
    let out = dir.path().join("no such folder").join("out.safetensors");
    let o = mixprec(
        &[
            "convert",
            input.to_str().unwrap(),
            "--to",
            "bf16",
            "-o",
            out.to_str().unwrap(),
        ],
        &[],
    );
    let line = assert_one_error_line(&o, "missing folder");
    assert!(line.contains("cannot write"), "{line}");
}

#[test]
fn isa_levels_listed_are_the_available_ones() {
    let out = stdout(&mixprec(&["info"], &[]));
    let line = out.lines().find(|l| l.starts_with("available:")).unwrap();
    let listed: Vec<&str> = line["available:".len()..]
        .split(',')
        .map(str::trim)
        .collect();
    let expected: Vec<&str> = Isa::available().map(Isa::name).collect();
    assert_eq!(listed, expected);
}

#[test]
fn bench_svg_draws_a_roofline_of_the_measured_kernels() {
    let tmp = tempfile::tempdir().unwrap();
    let svg = tmp.path().join("roofline.svg");
    let o = mixprec(&["bench", "--json", "--svg", svg.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let text = fs::read_to_string(&svg).unwrap();
    let doc = roxmltree::Document::parse(&text).expect("the roofline is well-formed XML");
    let texts: Vec<&str> = doc
        .descendants()
        .filter_map(|n| n.text())
        .map(str::trim)
        .collect();
    let active = isa::active_isa().name();
    assert!(
        texts.iter().any(|t| t.contains(active)),
        "title names the ISA level"
    );
    assert!(texts.contains(&"arithmetic intensity (FLOP/byte)"));
    // Every GEMM row of the active level is a labelled point.
    let gemm_rows = rows
        .iter()
        .filter(|r| r["isa"] == active && r["kernel"].as_str().unwrap().starts_with("gemm"))
        .count();
    let gemm_labels = texts.iter().filter(|t| t.contains("gemm")).count();
    assert!(
        gemm_labels >= gemm_rows,
        "{gemm_labels} labels for {gemm_rows} GEMM rows"
    );
}
