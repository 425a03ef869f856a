#![no_main]
//! See `mixprec::fuzzing::convert_differential`; the corpus replay test runs the same function.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mixprec::fuzzing::convert_differential(data));
