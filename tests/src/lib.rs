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

/// `tests/fixtures`, or `$STYLECODE_FIXTURES` for a test binary run away
/// from its source tree (the GPU check, `.ci/gpu-check`, on a lent machine).
pub fn fixtures() -> PathBuf {
    match std::env::var_os("STYLECODE_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures"),
    }
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
    assert_within(what, actual, expected, REL_TOL)
}

/// [`assert_close`] with another tolerance (f16 storage, 8-bit images).
pub fn assert_within<const D: usize>(
    what: &str,
    actual: Tensor<TestBackend, D>,
    expected: Tensor<TestBackend, D>,
    tolerance: f32,
) -> f32 {
    assert_eq!(actual.dims(), expected.dims(), "{what}: shape");
    assert_values_within(what, &values(actual), &values(expected), tolerance)
}

pub fn assert_close_values(what: &str, actual: &[f32], expected: &[f32]) -> f32 {
    assert_values_within(what, actual, expected, REL_TOL)
}

pub fn assert_values_within(what: &str, actual: &[f32], expected: &[f32], tolerance: f32) -> f32 {
    let relative = relative_error_values(what, actual, expected);
    eprintln!("parity {what}: max relative error {relative:.2e}");
    assert!(relative <= tolerance, "{what}: max error is {relative:e} of the reference's scale (> {tolerance:e})");
    relative
}

/// max |actual - expected| / max |expected|, with no bound; panics (naming
/// `what` and the index) on any NaN or infinity in either, which a plain
/// `max` would skip.
pub fn relative_error<const D: usize>(
    what: &str,
    actual: Tensor<TestBackend, D>,
    expected: Tensor<TestBackend, D>,
) -> f32 {
    assert_eq!(actual.dims(), expected.dims(), "{what}: shape");
    relative_error_values(what, &values(actual), &values(expected))
}

/// [`relative_error`] of host values.
pub fn relative_error_values(what: &str, actual: &[f32], expected: &[f32]) -> f32 {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    assert_finite(&format!("{what}: output"), actual);
    assert_finite(&format!("{what}: reference"), expected);
    let scale = expected.iter().fold(0f32, |m, x| m.max(x.abs())).max(f32::MIN_POSITIVE);
    let worst = actual.iter().zip(expected).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    worst / scale
}

/// Panics unless every value is finite, naming the first that is not.
pub fn assert_finite(what: &str, values: &[f32]) {
    if let Some((index, value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        let count = values.iter().filter(|v| !v.is_finite()).count();
        panic!("{what}: value {index} is {value} ({count} of {} not finite)", values.len());
    }
}

/// A tensor's values on the host, as f32.
pub fn values<const D: usize>(tensor: Tensor<TestBackend, D>) -> Vec<f32> {
    tensor.into_data().convert::<f32>().into_vec::<f32>().unwrap()
}

/// The backend's RNG is process-wide: a test that seeds it and expects the
/// same draws holds this lock from the seed to its last draw, and so does
/// every other test of its binary that draws (model init, random tensors).
pub fn backend_rng() -> std::sync::MutexGuard<'static, ()> {
    static BACKEND_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
    BACKEND_RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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

/// An edit for [`rewrite_safetensors`]: every value rounded to f16 and back,
/// so an f32 file holds exactly what an f16 copy stores.
pub fn round_through_f16((name, shape, values): Entry) -> Option<Entry> {
    Some((name, shape, values.into_iter().map(|v| half::f16::from_f32(v).to_f32()).collect()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "x: reference: value 1 is NaN (1 of 3 not finite)")]
    fn a_nan_in_the_reference_fails() {
        assert_close_values("x", &[1.0, 2.0, 3.0], &[1.0, f32::NAN, 3.0]);
    }

    #[test]
    #[should_panic(expected = "x: output: value 2 is NaN")]
    fn a_nan_in_the_output_fails() {
        assert_close_values("x", &[1.0, 2.0, f32::NAN], &[1.0, 2.0, 3.0]);
    }

    #[test]
    #[should_panic(expected = "x: output: value 0 is -inf")]
    fn an_infinity_fails() {
        assert_values_within("x", &[f32::NEG_INFINITY, 2.0], &[1.0, 2.0], f32::INFINITY);
    }

    #[test]
    #[should_panic(expected = "t: output: value 1 is NaN")]
    fn a_nan_tensor_fails_the_unbounded_comparison() {
        let nan = Tensor::<TestBackend, 1>::from_floats([0.5, f32::NAN], &device());
        relative_error("t", nan.clone(), nan.ones_like());
    }

    #[test]
    fn the_bound_is_relative_to_the_reference_scale() {
        assert_eq!(relative_error_values("x", &[1.0, 4.5], &[1.0, 4.0]), 0.125);
        assert_values_within("x", &[2.0, 4.0], &[2.0, 4.0], 0.0);
    }

    /// Why the comparisons read values back: burn-flex 0.21's `max` skips
    /// NaN, so a device-side `(a - b).abs().max()` passes a NaN output.
    #[test]
    fn the_backend_max_skips_nan() {
        let values = Tensor::<TestBackend, 1>::from_floats([0.5, f32::NAN, 0.25], &device());
        assert_eq!(values.abs().max().into_scalar(), 0.5);
    }
}
