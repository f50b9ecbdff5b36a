#![no_main]
//! `harness::pickle_bin`: any bytes, never a panic (see `fuzz/harness.rs`).

#[path = "../harness.rs"]
#[allow(dead_code)]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::pickle_bin(data));
