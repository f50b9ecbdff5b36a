//! `stylecode generate --init-image` on the tiny fixture weights (CPU).

use std::path::PathBuf;
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn generate(out: &std::path::Path, extra: &[&str]) -> Output {
    let weights = fixtures().join("weights").display().to_string();
    // A small init image, 37x21: its own size rounds down to 32x16.
    let small = out.with_file_name("init.png");
    if !small.exists() {
        let drawing = image::open(fixtures().join("images/drawing.png")).unwrap();
        drawing.resize_exact(37, 21, image::imageops::FilterType::Triangle).to_rgb8().save(&small).unwrap();
    }
    let init = small.display().to_string();
    let out = out.display().to_string();
    let mut args = vec!["generate", "-p", "a lighthouse", "--steps", "3", "--seed", "2", "--init-image", &init];
    args.extend(["--out", &out, "--weights", &weights, "--style-scale", "0.5"]);
    args.extend_from_slice(extra);
    Command::new(env!("CARGO_BIN_EXE_stylecode")).args(&args).env_remove("STYLECODE_WEIGHTS").output().expect("runs")
}

#[test]
fn the_init_image_gives_the_size_and_strength_one_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("a.png");
    let output = generate(&out, &["--strength", "1.0", "--scheduler", "euler-a"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    // 37x21 rounded down to multiples of 8.
    assert_eq!(image::open(&out).unwrap().to_rgb8().dimensions(), (32, 16));

    let sized = dir.path().join("b.png");
    let output = generate(&sized, &["--strength", "0.7", "--width", "24", "--height", "16"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(image::open(&sized).unwrap().to_rgb8().dimensions(), (24, 16));

    let none = dir.path().join("c.png");
    let output = generate(&none, &["--strength", "0.2", "--width", "24", "--height", "16"]);
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("strength 0.2") && err.contains("no step"), "{err}");
    assert!(!none.exists());
}
