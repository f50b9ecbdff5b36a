//! `stylecode reproduce` on the tiny fixture weights (CPU): the same pixels
//! and recipe again, and a refusal naming whatever differs from the recipe.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    burn_stylecode_tests::fixtures()
}

fn weights() -> String {
    fixtures().join("weights").display().to_string()
}

fn stylecode(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stylecode")).args(args).env_remove("STYLECODE_WEIGHTS").output().expect("runs")
}

fn ok(output: &Output) -> String {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The error of a failed run.
fn fails(output: &Output) -> String {
    assert!(!output.status.success(), "should fail: {}", String::from_utf8_lossy(&output.stdout));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `generate` on `weights` with small settings and `extra`, into `out`.
fn generate_on(weights: &str, out: &Path, extra: &[&str]) {
    let out_arg = out.display().to_string();
    let mut args = vec!["generate", "--prompt", "a lighthouse at dusk", "--negative", "fog", "--width", "24"];
    args.extend(["--height", "16", "--steps", "3", "--seed", "5", "--out", &out_arg, "--weights", weights]);
    args.extend_from_slice(extra);
    ok(&stylecode(&args));
}

fn reproduce(image: &Path, weights: &str, extra: &[&str]) -> Output {
    let image = image.display().to_string();
    let mut args = vec!["reproduce", &image, "--weights", weights];
    args.extend_from_slice(extra);
    stylecode(&args)
}

fn pixels(path: &Path) -> Vec<u8> {
    image::open(path).unwrap().to_rgb8().into_raw()
}

fn text(path: &Path) -> Vec<(String, String)> {
    burn_stylecode::read_png_text(path).unwrap()
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// Reproduces `made` into `made-reproduced.png` and checks pixels and recipe.
fn same_again(made: &Path, extra: &[&str]) {
    let stderr = ok(&reproduce(made, &weights(), extra));
    assert!(stderr.contains("identical"), "{stderr}");
    let again = made.with_file_name(format!("{}-reproduced.png", made.file_stem().unwrap().to_string_lossy()));
    assert_eq!(pixels(&again), pixels(made), "{}", made.display());
    assert_eq!(text(&again), text(made), "the same recipe");
}

fn lora(name: &str) -> String {
    fixtures().join("lora").join(name).display().to_string()
}

#[test]
fn plain_styled_blended_lora_and_img2img_images_come_back_pixel_for_pixel() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.png");
    generate_on(&weights(), &plain, &["--scheduler", "euler-a"]);
    same_again(&plain, &[]);
    // Never over the input or an earlier reproduction: the next free name.
    ok(&reproduce(&plain, &weights(), &[]));
    assert_eq!(files(dir.path()), ["plain-reproduced-2.png", "plain-reproduced.png", "plain.png"]);

    let random = |seed: &str| String::from_utf8(stylecode(&["random", "--seed", seed]).stdout).unwrap();
    let (a, b) = (random("1"), random("2"));
    let styled = dir.path().join("styled.png");
    generate_on(&weights(), &styled, &["--style", a.trim(), "--style-scale", "0.7"]);
    same_again(&styled, &[]);
    // A blend's latent is not its code's: it is recorded and used.
    let blended = dir.path().join("blended.png");
    generate_on(&weights(), &blended, &["--style", &format!("{}:0.3", a.trim()), "--style", b.trim()]);
    assert!(text(&blended).iter().any(|(k, _)| k == "style_latent"));
    same_again(&blended, &[]);

    let with_lora = dir.path().join("lora.png");
    let kohya = lora("kohya.safetensors");
    generate_on(&weights(), &with_lora, &["--lora", &format!("{kohya}:0.5:0.25")]);
    let error = fails(&reproduce(&with_lora, &weights(), &[]));
    assert!(error.contains("`kohya.safetensors`") && error.contains("--lora"), "{error}");
    same_again(&with_lora, &["--lora", &kohya]);

    let drawing = fixtures().join("images/drawing.png").display().to_string();
    let img2img = dir.path().join("img2img.png");
    generate_on(&weights(), &img2img, &["--init-image", &drawing, "--strength", "0.7"]);
    let error = fails(&reproduce(&img2img, &weights(), &[]));
    assert!(error.contains("init image") && error.contains("--init-image"), "{error}");
    same_again(&img2img, &["--init-image", &drawing]);
    let photo = fixtures().join("images/photo.jpg").display().to_string();
    let error = fails(&reproduce(&img2img, &weights(), &["--init-image", &photo, "--out", "/nonexistent/x.png"]));
    assert!(error.contains("the init image") && error.contains("photo.jpg"), "{error}");
}

#[test]
fn changed_weights_are_named_and_allow_different_weights_goes_on() {
    let (dir, copy) = burn_stylecode_tests::weights_copy();
    let copy_root = copy.root().display().to_string();
    let made = dir.path().join("made.png");
    generate_on(&copy_root, &made, &[]);
    // One VAE tensor changed, the file's size kept.
    let vae = copy.root().join("sd15/vae/diffusion_pytorch_model.safetensors");
    let original = dir.path().join("vae-original.safetensors");
    std::fs::copy(&vae, &original).unwrap();
    let mut changed = false;
    burn_stylecode_tests::rewrite_safetensors(
        &original,
        &vae,
        |(name, shape, mut values)| {
            if !changed && name.contains("decoder.conv_out.bias") {
                values[0] += 0.5;
                changed = true;
            }
            Some((name, shape, values))
        },
        Vec::new(),
        safetensors::Dtype::F32,
    );
    assert!(changed);
    std::fs::remove_file(&original).unwrap();
    let before = files(dir.path());
    let error = fails(&reproduce(&made, &copy_root, &[]));
    assert!(error.contains("SD1.5 weights") && error.contains(&copy_root), "{error}");
    assert!(error.contains("--allow-different-weights"), "{error}");
    assert_eq!(files(dir.path()), before, "nothing written");

    let stderr = ok(&reproduce(&made, &copy_root, &["--allow-different-weights"]));
    assert!(stderr.contains("warning") && stderr.contains("SD1.5 weights"), "{stderr}");
    assert_ne!(pixels(&dir.path().join("made-reproduced.png")), pixels(&made));
}

#[test]
fn a_changed_lora_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let made = dir.path().join("made.png");
    generate_on(&weights(), &made, &["--lora", &lora("kohya.safetensors")]);
    // Another file under the recorded name.
    let impostor = dir.path().join("kohya.safetensors");
    std::fs::copy(fixtures().join("lora/kohya_ldm.safetensors"), &impostor).unwrap();
    let impostor = impostor.display().to_string();
    let error = fails(&reproduce(&made, &weights(), &["--lora", &impostor]));
    assert!(error.contains("the LoRA `kohya.safetensors`") && error.contains(&impostor), "{error}");
    assert!(!dir.path().join("made-reproduced.png").exists());
    // A LoRA the recipe does not use.
    let error = fails(&reproduce(
        &made,
        &weights(),
        &["--lora", &lora("kohya.safetensors"), "--lora", &lora("lycoris.safetensors")],
    ));
    assert!(error.contains("`lycoris.safetensors`"), "{error}");
    let stderr = ok(&reproduce(&made, &weights(), &["--lora", &impostor, "--allow-different-weights"]));
    assert!(stderr.contains("kohya.safetensors"), "{stderr}");
}

#[test]
fn other_pngs_and_taken_outputs_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let foreign = dir.path().join("drawing.png");
    std::fs::copy(fixtures().join("images/drawing.png"), &foreign).unwrap();
    let error = fails(&reproduce(&foreign, &weights(), &[]));
    assert!(error.contains("drawing.png") && error.contains("not made by stylecode"), "{error}");
    let jpeg = dir.path().join("photo.jpg");
    std::fs::copy(fixtures().join("images/photo.jpg"), &jpeg).unwrap();
    let error = fails(&reproduce(&jpeg, &weights(), &[]));
    assert!(error.contains("photo.jpg"), "{error}");
    assert_eq!(files(dir.path()), ["drawing.png", "photo.jpg"]);

    let made = dir.path().join("made.png");
    generate_on(&weights(), &made, &[]);
    let before = pixels(&made);
    for out in [made.clone(), foreign.clone()] {
        let error = fails(&reproduce(&made, &weights(), &["--out", &out.display().to_string()]));
        assert!(error.contains("exists") && error.contains("--out"), "{error}");
    }
    assert_eq!(pixels(&made), before);
    assert_eq!(files(dir.path()), ["drawing.png", "made.png", "photo.jpg"]);
}
