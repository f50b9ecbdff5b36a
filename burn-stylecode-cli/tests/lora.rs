//! `stylecode generate --lora` and `stylecode merge-lora` on the tiny fixture
//! weights and LoRAs (CPU).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn lora(name: &str) -> String {
    fixtures().join("lora").join(name).display().to_string()
}

fn stylecode(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stylecode")).args(args).env_remove("STYLECODE_WEIGHTS").output().expect("runs")
}

fn generate(out: &Path, extra: &[&str]) -> Vec<u8> {
    let weights = fixtures().join("weights").display().to_string();
    let out_arg = out.display().to_string();
    let mut args = vec!["generate", "--prompt", "a lighthouse at dusk", "--width", "24", "--height", "16"];
    args.extend(["--steps", "2", "--seed", "5", "--out", &out_arg, "--weights", &weights]);
    args.extend_from_slice(extra);
    ok(&stylecode(&args));
    image::open(out).unwrap().to_rgb8().into_raw()
}

fn ok(output: &Output) {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn weight_zero_is_the_plain_image_and_weight_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let plain = generate(&dir.path().join("plain.png"), &[]);
    let zero = format!("{}:0", lora("kohya.safetensors"));
    assert_eq!(generate(&dir.path().join("zero.png"), &["--lora", &zero]), plain, "byte for byte");
    let one = lora("kohya.safetensors");
    assert_ne!(generate(&dir.path().join("one.png"), &["--lora", &one]), plain);
}

#[test]
fn two_half_loras_equal_the_folder_merge_lora_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (kohya, peft) = (
        format!("{}:0.5", lora("kohya.safetensors")),
        format!("{}:0.5", lora("peft/pytorch_lora_weights.safetensors")),
    );
    let merged = dir.path().join("merged");
    let base = fixtures().join("weights/sd15").display().to_string();
    let merged_arg = merged.display().to_string();
    let output = stylecode(&["merge-lora", "--base", &base, "--lora", &kohya, "--lora", &peft, "--out", &merged_arg]);
    ok(&output);
    assert!(merged.join("manifest.json").is_file() && merged.join("tokenizer/vocab.json").is_file());
    assert!(!std::fs::read_dir(dir.path()).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().starts_with('.')));

    let on_the_fly = generate(&dir.path().join("fly.png"), &["--lora", &kohya, "--lora", &peft]);
    let baked = generate(&dir.path().join("baked.png"), &["--base", &merged_arg]);
    assert_eq!(on_the_fly, baked);
    let plain = generate(&dir.path().join("plain.png"), &[]);
    assert_ne!(baked, plain);
}

#[test]
fn a_bad_lora_stops_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_lora = fixtures().join("weights/sd15/vae/diffusion_pytorch_model.safetensors").display().to_string();
    let weights = fixtures().join("weights").display().to_string();
    let out = dir.path().join("x.png").display().to_string();
    let output = stylecode(&["generate", "-p", "x", "--lora", &not_a_lora, "--out", &out, "--weights", &weights]);
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("not a LoRA") && err.contains("vae"), "{err}");
    assert!(!dir.path().join("x.png").exists());
}
