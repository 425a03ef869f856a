#![no_main]
//! See `mixprec::fuzzing::eval_data`; the corpus replay test runs the same function.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mixprec::fuzzing::eval_data(data));
