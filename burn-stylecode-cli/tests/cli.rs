//! The `stylecode` binary, end to end on the tiny fixture weights.

use std::path::PathBuf;
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn stylecode(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stylecode")).args(args).env_remove("STYLECODE_WEIGHTS").output().expect("runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

/// (path, paper code, official code) of the two fixture images. The PNG's
/// codes are PyTorch's (the pipeline is exact on lossless input); the JPEG's
/// come from the library, since JPEG decoders differ by a level or two (see
/// tests/tests/encode.rs for how that is bounded).
fn reference_codes() -> Vec<(String, String, String)> {
    use burn_stylecode::siglip::preprocess::load_rgb;
    let text = std::fs::read_to_string(fixtures().join("reference/encode.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let encoder = burn_stylecode::StyleCodes::<burn::backend::Flex>::new(
        burn_stylecode::WeightsDir::new(fixtures().join("weights")),
        burn::tensor::DType::F32,
        Default::default(),
    );
    json["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let path = e["path"].as_str().unwrap().to_string();
            if path.ends_with(".png") {
                (path, e["code"].as_str().unwrap().to_string(), e["official"].as_str().unwrap().to_string())
            } else {
                let style = &encoder.encode(&[load_rgb(fixtures().join(&path)).unwrap()]).unwrap()[0];
                (path, style.code.to_paper(), style.code.to_official())
            }
        })
        .collect()
}

fn image(rel: &str) -> String {
    fixtures().join(rel).display().to_string()
}

fn weights() -> String {
    fixtures().join("weights").display().to_string()
}

#[test]
fn encode_prints_the_reference_codes_for_jpeg_and_png() {
    let refs = reference_codes();
    let paths: Vec<String> = refs.iter().map(|(p, _, _)| image(p)).collect();
    let out = stylecode(&["encode", &paths[0], &paths[1], "--weights", &weights()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<String> = stdout(&out).lines().map(String::from).collect();
    assert_eq!(lines, refs.iter().map(|(_, c, _)| c.clone()).collect::<Vec<_>>());
    assert!(stderr(&out).is_empty(), "quiet by default: {}", stderr(&out));

    let out = stylecode(&["encode", &paths[1], "--weights", &weights(), "--format", "official"]);
    assert_eq!(stdout(&out).trim(), refs[1].2);
}

/// Encoding needs SigLIP and the autoencoder only: a weights folder without
/// SD1.5 (or the control branch's tensors being read) gives the same codes.
#[test]
fn encode_reads_no_sd15_file() {
    let dir = tempfile::tempdir().unwrap();
    for model in ["siglip", "stylecodes"] {
        let (src, dst) = (fixtures().join("weights").join(model), dir.path().join(model));
        std::fs::create_dir_all(&dst).unwrap();
        for entry in std::fs::read_dir(&src).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
        }
    }
    let refs = reference_codes();
    let out = stylecode(&["encode", &image(&refs[1].0), "--weights", &dir.path().display().to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), refs[1].1);
}

#[test]
fn encode_json_lines_and_batch_size_one() {
    let refs = reference_codes();
    let paths: Vec<String> = refs.iter().map(|(p, _, _)| image(p)).collect();
    let out = stylecode(&["encode", &paths[0], &paths[1], "--json", "--batch-size", "1", "--weights", &weights()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let objects: Vec<serde_json::Value> = stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(objects.len(), 2);
    for (object, (path, code, _)) in objects.iter().zip(&refs) {
        assert_eq!(object["code"], code.as_str());
        assert!(object["path"].as_str().unwrap().ends_with(path.as_str()));
        assert_eq!(object["latent"].as_array().unwrap().len(), 20);
    }
}

#[test]
fn unreadable_image_is_reported_and_the_others_still_encode() {
    let refs = reference_codes();
    let bad = image("images/not_an_image.jpg");
    let missing = image("images/nope.png");
    let out = stylecode(&["encode", &bad, &image(&refs[0].0), &missing, "--weights", &weights()]);
    assert!(!out.status.success());
    assert_eq!(stdout(&out).trim(), refs[0].1);
    let err = stderr(&out);
    assert!(err.contains("not_an_image.jpg") && err.contains("nope.png"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn weights_come_from_the_environment_variable() {
    let refs = reference_codes();
    let out = Command::new(env!("CARGO_BIN_EXE_stylecode"))
        .args(["encode", &image(&refs[0].0)])
        .env("STYLECODE_WEIGHTS", weights())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), refs[0].1);
}

#[test]
fn missing_weights_give_a_clear_error() {
    let dir = std::env::temp_dir().join("stylecode-no-weights-here");
    let out = stylecode(&["encode", &image("images/photo.jpg"), "--weights", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.starts_with("error: ") && err.contains("stylecode-no-weights-here"), "{err}");
}

#[test]
fn inspect_shows_values_and_latent() {
    let out = stylecode(&["inspect", "Aj8dPwAACD8rECAlCC8UGzU/HwI", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(json["format"], "official");
    assert_eq!(json["version"], "1");
    let values: Vec<u8> = serde_json::from_value(json["values"].clone()).unwrap();
    assert_eq!(values, [2, 63, 29, 63, 0, 0, 8, 63, 43, 16, 32, 37, 8, 47, 20, 27, 53, 63, 31, 2]);
    let latent: Vec<f32> = serde_json::from_value(json["latent"].clone()).unwrap();
    assert!((latent[0] - (2.0 * 2.0 / 63.0 - 1.0)).abs() < 1e-6 && latent[1] == 1.0);

    let out = stylecode(&["inspect", "C/d/AAI/rQglIvUb1/fC1"]);
    let text = stdout(&out);
    assert!(text.contains("format:  paper") && text.contains("version: 1"), "{text}");
}

#[test]
fn convert_is_lossless_both_ways() {
    let out = stylecode(&["convert", "Aj8dPwAACD8rECAlCC8UGzU/HwI", "--to", "paper"]);
    assert_eq!(stdout(&out).trim(), "C/d/AAI/rQglIvUb1/fC1");
    let out = stylecode(&["convert", "C/d/AAI/rQglIvUb1/fC1", "--to", "official"]);
    assert_eq!(stdout(&out).trim(), "Aj8dPwAACD8rECAlCC8UGzU/HwI");
}

#[test]
fn malformed_codes_fail_cleanly() {
    for (code, needle) in [
        ("C/d/AAI/rQgl*vUb1/fC1", "position 12"),
        ("short", "has 5"),
        ("C/d/AAI/rQglIvUb1/fC!", "version"),
        ("/wAAAAAAAAAAAAAAAAAAAAAAAAA", "over the 6-bit maximum"),
    ] {
        let out = stylecode(&["inspect", code]);
        assert!(!out.status.success(), "{code}");
        let err = stderr(&out);
        assert!(err.contains(needle) && !err.contains("panicked"), "{code}: {err}");
    }
}

#[test]
fn backend_not_compiled_in_names_the_feature() {
    if cfg!(feature = "wgpu") {
        return;
    }
    let out = stylecode(&["encode", &image("images/photo.jpg"), "--backend", "wgpu", "--weights", &weights()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--features wgpu"), "{}", stderr(&out));
}
