//! What each fuzz target does with its input, shared by the libFuzzer
//! targets (`fuzz_targets/*.rs`) and the plain replay test
//! (`tests/tests/fuzz_corpus.rs`), which runs every committed corpus and
//! crash input through the same functions without a fuzzer.
//!
//! Every reader takes a path, so the input is written to a file in a fresh
//! temporary folder first. A reader may return an error; it must not panic,
//! abort or hang.

use burn::tensor::DType;
use burn_stylecode::import::{stylecodes_from_bin, ImportOptions, StylecodesSpec, WeightDtype};
use burn_stylecode::train::data::{Dataset, DatasetOptions};
use burn_stylecode::weights::TensorFile;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A fuzz target's body: any bytes in, nothing out.
pub type Target = fn(&[u8]);

/// The fuzz targets by name, as in `fuzz/Cargo.toml` and `fuzz/corpus/NAME/`.
pub const TARGETS: [(&str, Target); 4] =
    [("pickle_bin", pickle_bin), ("safetensors", safetensors), ("png_text", png_text), ("manifest", manifest)];

fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, data).expect("the temporary folder is writable");
    path
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temporary folder")
}

/// The tiny fixture autoencoder's spec: a `.bin` passes the pickle and zip
/// readers, then is checked against these shapes.
fn spec() -> &'static StylecodesSpec {
    static SPEC: OnceLock<StylecodesSpec> = OnceLock::new();
    SPEC.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/weights/stylecodes/config.json");
        let text = std::fs::read_to_string(path).expect("the fixture config");
        let config: burn_stylecode::style::StylecodesConfig = serde_json::from_str(&text).expect("valid config");
        StylecodesSpec::autoencoder_only(config.version, config.autoencoder)
    })
}

/// A PyTorch `.bin` (zip + restricted pickle), imported as StyleCodes weights.
pub fn pickle_bin(data: &[u8]) {
    let dir = tempdir();
    let path = write(dir.path(), "stylecodes.bin", data);
    let _ = stylecodes_from_bin(&path, &dir.path().join("out"), spec(), &ImportOptions::new(WeightDtype::F16));
}

/// A safetensors file: header, offsets, dtypes; every tensor read whole,
/// in both load dtypes, and in two row blocks where it splits.
pub fn safetensors(data: &[u8]) {
    let dir = tempdir();
    let path = write(dir.path(), "model.safetensors", data);
    let Ok(file) = TensorFile::open(&path) else { return };
    let keys: Vec<String> = file.keys().map(String::from).collect();
    for key in &keys {
        let _ = file.read(key, DType::F32);
        let _ = file.read(key, DType::F16);
        let _ = file.read_f32(key);
        if file.shape(key).is_some_and(|shape| shape.first().is_some_and(|rows| rows % 2 == 0)) {
            let _ = file.read_rows(key, 1, 2, DType::F32);
        }
    }
}

/// A PNG's text chunks (the recipe `generate` writes).
pub fn png_text(data: &[u8]) {
    let dir = tempdir();
    let path = write(dir.path(), "image.png", data);
    let _ = burn_stylecode::read_png_text(&path);
}

/// A training `manifest.jsonl` (its image paths mostly missing), strict and with `--skip-bad`.
pub fn manifest(data: &[u8]) {
    let dir = tempdir();
    write(dir.path(), "manifest.jsonl", data);
    for skip_bad in [false, true] {
        let _ = Dataset::open(dir.path(), &DatasetOptions { resolution: 64, skip_bad });
    }
}
