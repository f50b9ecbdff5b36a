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

/// (path, paper code, official code) of the two fixture images: PyTorch's
/// codes, which the pipeline reproduces exactly for the PNG and the JPEG
/// alike (JPEGs decode through libjpeg-turbo, as PIL).
fn reference_codes() -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(fixtures().join("reference/encode.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let field = |key: &str| e[key].as_str().unwrap().to_string();
            (field("path"), field("code"), field("official"))
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

#[test]
fn truncated_images_are_errors_unless_allowed() {
    let truncated = image("images/jpeg/truncated_baseline.jpg");
    let out = stylecode(&["encode", &truncated, "--weights", &weights()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("truncated_baseline.jpg") && err.contains("truncated or corrupt"), "{err}");

    let out = stylecode(&["encode", &truncated, "--allow-truncated", "--weights", &weights()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim().len(), 21, "a paper code");
    let err = stderr(&out);
    assert!(err.starts_with("warning: ") && err.contains("truncated_baseline.jpg"), "{err}");
}

#[test]
fn generation_too_large_for_memory_is_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let out_png = dir.path().join("huge.png");
    let weights = weights();
    let base = ["generate", "-p", "a cat", "--steps", "1", "-q", "--weights", &weights];
    let run = |extra: &[&str]| {
        let mut args: Vec<&str> = base.to_vec();
        args.extend(["-o", out_png.to_str().unwrap()]);
        args.extend(extra);
        stylecode(&args)
    };
    let out = run(&["--width", "80000", "--height", "80000"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: 1 image(s) of 80000x80000") && err.contains("needs an estimated"), "{err}");
    assert!(err.contains("TiB") && err.contains("over the limit of"), "{err}");

    let out = run(&["--width", "64", "--height", "64", "--max-memory", "1M"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("64x64") && err.contains("1.0 MiB (the --max-memory limit)"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing written");

    // Billions of images would need their paths listed first: refused by the parser.
    let out = run(&["--num", "4294967295"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--num") && !stderr(&out).contains("memory allocation"), "{}", stderr(&out));
}
