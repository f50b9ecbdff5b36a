#![no_main]
//! Any string: parsing never panics, and whatever parses round-trips.
//!
//! The parser's module (and the error types it uses) is compiled in
//! directly, so that fuzzing does not build burn with sanitizer
//! instrumentation.

#[path = "../../burn-stylecode/src/error.rs"]
#[allow(dead_code)]
mod error;

#[path = "../../burn-stylecode/src/style/code.rs"]
#[allow(dead_code)]
mod code;

use code::{CodeFormat, StyleCode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok((code, format)) = StyleCode::parse(text) {
        let again = StyleCode::parse(&code.format(format)).expect("a printed code parses");
        assert_eq!(again.0, code);
        assert_eq!(StyleCode::parse(&code.to_paper()).unwrap(), (code, CodeFormat::Paper));
        assert_eq!(StyleCode::parse(&code.to_official()).unwrap().0.values(), code.values());
    }
});
