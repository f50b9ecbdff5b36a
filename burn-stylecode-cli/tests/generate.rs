//! `stylecode generate` end to end on the tiny fixture weights (CPU).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn weights() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/weights").display().to_string()
}

fn generate(out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["generate", "--prompt", "a lighthouse at dusk", "--width", "48", "--height", "32", "--steps", "3"];
    args.extend_from_slice(extra);
    let out_arg = out.display().to_string();
    Command::new(env!("CARGO_BIN_EXE_stylecode"))
        .args(&args)
        .args(["--out", &out_arg, "--weights", &weights()])
        .env_remove("STYLECODE_WEIGHTS")
        .output()
        .expect("runs")
}

fn ok(output: &Output) {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

fn pixels(path: &Path) -> Vec<u8> {
    image::open(path).unwrap().to_rgb8().into_raw()
}

fn text(path: &Path) -> Vec<(String, String)> {
    burn_stylecode::png_text::read_png_text(path).unwrap()
}

fn get<'a>(text: &'a [(String, String)], key: &str) -> &'a str {
    &text.iter().find(|(k, _)| k == key).unwrap_or_else(|| panic!("no `{key}` in {text:?}")).1
}

#[test]
fn same_seed_same_png_with_its_settings_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (dir.path().join("a.png"), dir.path().join("b.png"), dir.path().join("c.png"));
    ok(&generate(&a, &["--seed", "7", "--negative", "blurry"]));
    ok(&generate(&b, &["--seed", "7", "--negative", "blurry"]));
    ok(&generate(&c, &["--seed", "8", "--negative", "blurry"]));
    assert_eq!(pixels(&a), pixels(&b));
    assert_ne!(pixels(&a), pixels(&c));
    assert_eq!(image::open(&a).unwrap().to_rgb8().dimensions(), (48, 32));
    let meta = text(&a);
    for (key, value) in [
        ("prompt", "a lighthouse at dusk"),
        ("negative_prompt", "blurry"),
        ("seed", "7"),
        ("steps", "3"),
        ("scheduler", "ddim"),
        ("guidance_scale", "7.5"),
        ("width", "48"),
        ("height", "32"),
    ] {
        assert_eq!(get(&meta, key), value);
    }
}

#[test]
fn existing_files_are_kept_unless_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keep.png");
    ok(&generate(&path, &["--seed", "1"]));
    let before = pixels(&path);
    let again = generate(&path, &["--seed", "2"]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("keep.png") && err.contains("--overwrite"), "{err}");
    assert_eq!(pixels(&path), before);
    ok(&generate(&path, &["--seed", "2", "--overwrite"]));
    assert_ne!(pixels(&path), before);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary files left");
}

#[test]
fn several_images_take_consecutive_seeds() {
    let dir = tempfile::tempdir().unwrap();
    ok(&generate(&dir.path().join("batch.png"), &["--seed", "40", "--num", "3", "--batch-size", "2"]));
    let second = dir.path().join("batch-2.png");
    assert_eq!(get(&text(&second), "seed"), "41");
    let alone = dir.path().join("alone.png");
    ok(&generate(&alone, &["--seed", "41"]));
    assert_eq!(pixels(&second), pixels(&alone), "image 2 of a batch is reproducible on its own");
    assert_ne!(pixels(&dir.path().join("batch-1.png")), pixels(&second));
    assert!(dir.path().join("batch-3.png").exists());
}

#[test]
fn every_scheduler_runs_and_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    for scheduler in ["ddim", "euler", "euler-a", "dpmpp-2m"] {
        let (a, b) = (dir.path().join(format!("{scheduler}-a.png")), dir.path().join(format!("{scheduler}-b.png")));
        ok(&generate(&a, &["--seed", "3", "--scheduler", scheduler]));
        ok(&generate(&b, &["--seed", "3", "--scheduler", scheduler]));
        assert_eq!(pixels(&a), pixels(&b), "{scheduler}");
        assert_eq!(get(&text(&a), "scheduler"), scheduler);
    }
    ok(&generate(&dir.path().join("k.png"), &["--seed", "3", "--scheduler", "dpmpp-2m", "--karras"]));
}

#[test]
fn bad_settings_fail_before_writing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("never.png");
    for (extra, needle) in [
        (&["--width", "50"][..], "multiple"),
        (&["--scheduler", "plms"][..], "plms"),
        (&["--scheduler", "ddim", "--karras"][..], "karras"),
        (&["--steps", "0"][..], "steps"),
    ] {
        let out = generate(&path, extra);
        assert!(!out.status.success(), "{extra:?}");
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(err.contains(needle) && !err.contains("panicked"), "{extra:?}: {err}");
        assert!(!path.exists());
    }
}
