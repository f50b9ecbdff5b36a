//! `stylecode generate` end to end on the tiny fixture weights (CPU).

use burn_stylecode::sd::schedulers::SchedulerKind;
use burn_stylecode::Style;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn weights() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/weights").display().to_string()
}

fn generate(out: &Path, extra: &[&str]) -> Output {
    let mut args =
        vec!["generate", "--prompt", "a lighthouse at dusk", "--width", "48", "--height", "32", "--steps", "3"];
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
    burn_stylecode::read_png_text(path).unwrap()
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

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

const CODE_A: &str = "mbtZR/Z/jqAif/G2kOcA1";
const CODE_B: &str = "C/d/AAI/rQglIvUb1/fC1";

#[test]
fn a_style_code_steers_the_image_and_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.png");
    let styled = dir.path().join("styled.png");
    let again = dir.path().join("again.png");
    let unscaled = dir.path().join("unscaled.png");
    ok(&generate(&plain, &["--seed", "5", "--cfg", "3"]));
    ok(&generate(&styled, &["--seed", "5", "--style", CODE_A]));
    ok(&generate(&again, &["--seed", "5", "--style", CODE_A]));
    ok(&generate(&unscaled, &["--seed", "5", "--cfg", "3", "--style", CODE_A, "--style-scale", "0"]));
    assert_eq!(pixels(&styled), pixels(&again));
    assert_ne!(pixels(&styled), pixels(&plain));
    assert_eq!(pixels(&unscaled), pixels(&plain), "scale 0 leaves the base model untouched");
    let meta = text(&styled);
    assert_eq!(get(&meta, "stylecode"), CODE_A);
    assert_eq!(get(&meta, "style_scale"), "0.9");
    assert_eq!(get(&meta, "guidance_scale"), "3", "guidance defaults to 3 with a style");

    // The official 27-character form of the same code gives the same image.
    let official = dir.path().join("official.png");
    ok(&generate(&official, &["--seed", "5", "--style", "JhstGRE/GT8jKgAiHz8GNiQOHAA"]));
    assert_eq!(pixels(&official), pixels(&styled));
}

#[test]
fn blended_codes_and_version_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let blend = dir.path().join("blend.png");
    let weight_a = format!("{CODE_A}:0.7");
    let weight_b = format!("{CODE_B}:0.3");
    ok(&generate(&blend, &["--seed", "5", "--style", &weight_a, "--style", &weight_b]));
    let mixed = Command::new(env!("CARGO_BIN_EXE_stylecode")).args(["mix", &weight_a, &weight_b]).output().unwrap();
    ok(&mixed);
    assert_eq!(get(&text(&blend), "stylecode"), stdout(&mixed).trim());

    let wrong = dir.path().join("wrong.png");
    let out = generate(&wrong, &["--seed", "5", "--style", "mbtZR/Z/jqAif/G2kOcA2"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("version 2") && err.contains("version 1"), "{err}");
    assert!(!wrong.exists());
}

#[test]
fn style_image_is_encoded_and_its_code_printed_and_stored() {
    let dir = tempfile::tempdir().unwrap();
    let drawing = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/images/drawing.png");
    let drawing = drawing.display().to_string();
    let encoded = Command::new(env!("CARGO_BIN_EXE_stylecode"))
        .args(["encode", &drawing, "--weights", &weights()])
        .output()
        .unwrap();
    ok(&encoded);
    let code = stdout(&encoded).trim().to_string();

    let out_path = dir.path().join("from-image.png");
    let out = generate(&out_path, &["--seed", "5", "--style-image", &drawing]);
    ok(&out);
    assert!(stdout(&out).contains(&format!("style code: {code}")), "{}", stdout(&out));
    assert_eq!(get(&text(&out_path), "stylecode"), code);
    // The same as giving the code itself (the release's quantise round trip).
    let by_code = dir.path().join("by-code.png");
    ok(&generate(&by_code, &["--seed", "5", "--style", &code]));
    assert_eq!(pixels(&by_code), pixels(&out_path));

    // `encode` on the generated PNG reports the code it carries.
    let path = out_path.display().to_string();
    let report = Command::new(env!("CARGO_BIN_EXE_stylecode"))
        .args(["encode", &path, "--json", "--weights", &weights()])
        .output()
        .unwrap();
    ok(&report);
    let json: serde_json::Value = serde_json::from_str(stdout(&report).trim()).unwrap();
    assert_eq!(json["stored_code"], code.as_str());
    assert_eq!(json["code"].as_str().unwrap().len(), 21);
}

#[test]
fn random_codes_are_valid_and_seeded() {
    let run = |seed: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_stylecode")).args(["random", "--seed", seed]).output().unwrap();
        ok(&out);
        stdout(&out).trim().to_string()
    };
    let (a, b, c) = (run("1"), run("1"), run("2"));
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(burn_stylecode::StyleCode::parse(&a).is_ok() && a.ends_with('1'));
}

/// f16 is the default on GPU backends; `--dtype f16` runs the same path on
/// the CPU. Every network (CLIP, UNet, VAE, style control, SigLIP and the
/// autoencoder for `--style-image`) must run in f16 and land close to f32.
#[test]
fn f16_runs_every_network_and_stays_close_to_f32() {
    let dir = tempfile::tempdir().unwrap();
    let drawing = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/images/drawing.png");
    let drawing = drawing.display().to_string();
    for (name, style) in
        [("plain", vec![]), ("code", vec!["--style", CODE_A]), ("image", vec!["--style-image", drawing.as_str()])]
    {
        let [full, half] = ["f32", "f16"].map(|dtype| dir.path().join(format!("{name}-{dtype}.png")));
        for (path, dtype) in [(&full, "f32"), (&half, "f16")] {
            let mut args = vec!["--seed", "9", "--dtype", dtype];
            args.extend(&style);
            ok(&generate(path, &args));
        }
        let (a, b) = (pixels(&full), pixels(&half));
        let diffs: Vec<i32> = a.iter().zip(&b).map(|(x, y)| (i32::from(*x) - i32::from(*y)).abs()).collect();
        let mean = diffs.iter().sum::<i32>() as f64 / diffs.len() as f64;
        let max = diffs.iter().max().copied().unwrap_or(0);
        eprintln!("{name}: f16 vs f32 pixels: mean |diff| {mean:.3}, max {max}");
        assert!(mean <= 1.0 && max <= 8, "{name}: f16 strays from f32: mean |diff| {mean:.3}, max {max}");
    }
}

/// The images the library's `StyleCodes::generate` makes for the request the
/// command line below asks for. That handle runs the pipeline tested against
/// diffusers (`tests/tests/pipeline.rs`, `parity_style_control.rs`), so equal
/// pixels tie the CLI to the references.
fn library_pixels(style: Style, num: usize) -> Vec<Vec<u8>> {
    use burn_stylecode::{GenerateRequest, GenerateSettings, ImageSpec, StyleCodes};
    use burn_stylecode_tests::{device, weights, TestBackend};
    let styles = StyleCodes::<TestBackend>::new(weights(), burn::tensor::DType::F32, device());
    let settings = GenerateSettings {
        steps: 3,
        scheduler: SchedulerKind::EulerAncestral,
        width: 48,
        height: 32,
        style_scale: 0.8,
        ..GenerateSettings::default()
    };
    let spec = ImageSpec { prompt: "a lighthouse at dusk".into(), negative: "blurry".into(), seed: 11, style };
    let made = styles.generate(&GenerateRequest::repeated(spec, num, settings), |_| ControlFlow::Continue(())).unwrap();
    made.into_iter().map(|image| image.image.into_raw()).collect()
}

/// Equal pixels, or a failure saying how many differ and by how much.
fn assert_same_pixels(what: &str, actual: &[u8], expected: &[u8]) {
    assert_eq!(actual.len(), expected.len(), "{what}: size");
    let differ = actual.iter().zip(expected).filter(|(a, b)| a != b).count();
    let worst = actual.iter().zip(expected).map(|(&a, &b)| a.abs_diff(b)).max().unwrap_or(0);
    assert_eq!(differ, 0, "{what}: {differ} of {} values differ, by up to {worst} levels", actual.len());
}

#[test]
fn generated_pixels_are_the_library_pipelines() {
    let dir = tempfile::tempdir().unwrap();
    let common = ["--seed", "11", "--negative", "blurry", "--scheduler", "euler-a", "--dtype", "f32"];
    let plain = dir.path().join("plain.png");
    ok(&generate(&plain, &common));
    let expected = library_pixels(Style::None, 1);
    assert_same_pixels("plain", &pixels(&plain), &expected[0]);

    // Two styled images in one batch (as the library request runs them):
    // image 2 takes seed 12, in the CLI as in the library.
    let styled = dir.path().join("styled.png");
    ok(&generate(
        &styled,
        &[&common[..], &["--style", CODE_A, "--style-scale", "0.8", "--num", "2", "--batch-size", "2"]].concat(),
    ));
    let expected_styled = library_pixels(Style::Codes(vec![CODE_A.parse().unwrap()]), 2);
    for (k, expected) in expected_styled.iter().enumerate() {
        let path = dir.path().join(format!("styled-{}.png", k + 1));
        assert_same_pixels(&format!("styled image {}", k + 1), &pixels(&path), expected);
    }
    // The comparison can fail: the style and the seed change the pixels.
    assert_ne!(expected_styled[0], expected[0]);
    assert_ne!(expected_styled[0], expected_styled[1]);
}
