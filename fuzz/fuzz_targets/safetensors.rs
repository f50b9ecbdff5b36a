#![no_main]
//! `harness::safetensors`: any bytes, never a panic (see `fuzz/harness.rs`).

#[path = "../harness.rs"]
#[allow(dead_code)]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::safetensors(data));
