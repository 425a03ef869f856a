#![no_main]
//! See `mixprec::fuzzing::onnx_bytes`; the corpus replay test runs the same function.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mixprec::fuzzing::onnx_bytes(data));
