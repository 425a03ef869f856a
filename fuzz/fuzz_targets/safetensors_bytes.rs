#![no_main]
//! See `mixprec::fuzzing::safetensors_bytes`; the corpus replay test runs the same function.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mixprec::fuzzing::safetensors_bytes(data));
