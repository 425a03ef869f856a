#![no_main]
//! See `mixprec::fuzzing::plan_json`; the corpus replay test runs the same function.

libfuzzer_sys::fuzz_target!(|data: &[u8]| mixprec::fuzzing::plan_json(data));
