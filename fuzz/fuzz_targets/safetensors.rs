#![no_main]
//! `harness::safetensors`: any bytes, never a panic (see `fuzz/harness.rs`).

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::safetensors(data));
