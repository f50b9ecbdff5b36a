//! Shared helpers for the integration and parity tests.
//!
//! The fixtures under `fixtures/` are made by `fixtures/make_fixtures.py`
//! (PyTorch, run by hand); the tests load them through the real import path.

use burn::prelude::*;
use burn_stylecode::weights::safetensors::TensorFile;
use burn_stylecode::WeightsDir;
use std::path::PathBuf;

/// The CPU backend every test runs on.
pub type TestBackend = burn::backend::Flex;

/// Parity tolerance: max |actual - expected| ≤ REL_TOL × max |expected|.
pub const REL_TOL: f32 = 1e-4;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// The tiny weights folder holding every model.
pub fn weights() -> WeightsDir {
    WeightsDir::new(fixtures().join("weights"))
}

/// A reference file under `fixtures/reference/`.
pub fn reference(name: &str) -> TensorFile {
    TensorFile::open(fixtures().join("reference").join(name)).expect("reference file")
}

pub fn reference_json(name: &str) -> serde_json::Value {
    let path = fixtures().join("reference").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).expect("reference json")).expect("valid json")
}

/// Settings of the whole-pipeline reference run (`reference/pipeline.json`).
pub fn pipeline_reference_settings(json: &serde_json::Value) -> burn_stylecode::sd::pipeline::Settings {
    let number = |key: &str| json[key].as_u64().unwrap() as usize;
    burn_stylecode::sd::pipeline::Settings {
        steps: number("steps"),
        guidance_scale: json["guidance_scale"].as_f64().unwrap(),
        scheduler: burn_stylecode::sd::schedulers::SchedulerKind::Ddim,
        karras: None,
        width: number("width"),
        height: number("height"),
    }
}

pub fn device() -> burn::tensor::Device<TestBackend> {
    Default::default()
}

/// A reference tensor on the test device.
pub fn tensor<const D: usize>(file: &TensorFile, key: &str) -> Tensor<TestBackend, D> {
    let shape = file.shape(key).unwrap_or_else(|| panic!("no `{key}` in {}", file.path().display())).to_vec();
    let values = file.read_f32(key).unwrap();
    Tensor::from_data(TensorData::new(values, shape), &device())
}

/// Asserts parity within [`REL_TOL`] of the reference's scale; returns the
/// relative error for reporting.
pub fn assert_close<const D: usize>(
    what: &str,
    actual: Tensor<TestBackend, D>,
    expected: Tensor<TestBackend, D>,
) -> f32 {
    assert_eq!(actual.dims(), expected.dims(), "{what}: shape");
    let actual = actual.into_data().into_vec::<f32>().unwrap();
    let expected = expected.into_data().into_vec::<f32>().unwrap();
    assert_close_values(what, &actual, &expected)
}

pub fn assert_close_values(what: &str, actual: &[f32], expected: &[f32]) -> f32 {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    let scale = expected.iter().fold(0f32, |m, x| m.max(x.abs())).max(f32::MIN_POSITIVE);
    let worst = actual.iter().zip(expected).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(actual.iter().all(|x| x.is_finite()), "{what}: non-finite output");
    let relative = worst / scale;
    eprintln!("parity {what}: max relative error {relative:.2e}");
    assert!(relative <= REL_TOL, "{what}: max error {worst} is {relative:e} of the scale {scale} (> {REL_TOL:e})");
    relative
}

/// One tensor of a safetensors file being rewritten: name, shape, f32 values.
pub type Entry = (String, Vec<usize>, Vec<f32>);

/// Writes `dst` from the tensors of `src`, each passed through `edit`
/// (return `None` to drop it), then `extra` appended; stored as `dtype`.
pub fn rewrite_safetensors(
    src: &std::path::Path,
    dst: &std::path::Path,
    mut edit: impl FnMut(Entry) -> Option<Entry>,
    extra: Vec<Entry>,
    dtype: safetensors::Dtype,
) {
    let file = TensorFile::open(src).unwrap();
    let mut entries: Vec<Entry> = file
        .keys()
        .map(|k| (k.to_string(), file.shape(k).unwrap().to_vec(), file.read_f32(k).unwrap()))
        .filter_map(&mut edit)
        .collect();
    entries.extend(extra);
    let buffers: Vec<(String, Vec<usize>, Vec<u8>)> = entries
        .into_iter()
        .map(|(name, shape, values)| {
            let bytes = match dtype {
                safetensors::Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                safetensors::Dtype::F16 => values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
                other => panic!("unsupported {other:?}"),
            };
            (name, shape, bytes)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = buffers
        .iter()
        .map(|(name, shape, bytes)| {
            (name.clone(), safetensors::tensor::TensorView::new(dtype, shape.clone(), bytes).unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, dst).unwrap();
}

/// A copy of the tiny weights folder in a temporary directory, to break.
pub fn weights_copy() -> (tempfile::TempDir, WeightsDir) {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("weights"), dir.path());
    let weights = WeightsDir::new(dir.path());
    (dir, weights)
}

/// Copies a folder tree (small fixture folders).
pub fn copy_dir(src: &std::path::Path, dst: &std::path::Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let target = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
