//! Replays every committed fuzz corpus file (`fuzz/corpus/<target>/`) and
//! every saved crash reproducer through the same entry points the cargo-fuzz
//! targets use, so CI covers them on stable without libFuzzer.

use std::path::Path;

fn replay(target: &str, f: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} has no seeds", dir.display());
    for p in &files {
        let data = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let r = std::panic::catch_unwind(|| f(&data));
        assert!(r.is_ok(), "{target}: {} panicked", p.display());
    }
    println!("{target}: replayed {} files", files.len());
}

#[test]
fn onnx_bytes() {
    replay("onnx_bytes", mixprec::fuzzing::onnx_bytes);
}

#[test]
fn safetensors_bytes() {
    replay("safetensors_bytes", mixprec::fuzzing::safetensors_bytes);
}

#[test]
fn plan_json() {
    replay("plan_json", mixprec::fuzzing::plan_json);
}

#[test]
fn eval_data() {
    replay("eval_data", mixprec::fuzzing::eval_data);
}

#[test]
fn convert_differential() {
    replay(
        "convert_differential",
        mixprec::fuzzing::convert_differential,
    );
}

#[test]
fn gemm_differential() {
    replay("gemm_differential", mixprec::fuzzing::gemm_differential);
}

#[test]
fn conv_differential() {
    replay("conv_differential", mixprec::fuzzing::conv_differential);
}

#[test]
fn pool_differential() {
    replay("pool_differential", mixprec::fuzzing::pool_differential);
}
