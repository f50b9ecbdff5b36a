//! The `StyleCodes` handle: what it loads, the policy it applies (styled
//! defaults, the seed of image k, the version check), progress and
//! cancellation, and the recipes it returns.

use burn::tensor::DType;
use burn_stylecode::siglip::preprocess::load_rgb;
use burn_stylecode::{
    Error, GenerateRequest, GenerateSettings, ImageSpec, Progress, Recipe, Style, StyleCode, StyleCodes, WeightedCode,
};
use burn_stylecode_tests::*;
use std::ops::ControlFlow;

fn handle(weights: burn_stylecode::WeightsDir) -> StyleCodes<TestBackend> {
    StyleCodes::new(weights, DType::F32, device())
}

fn settings() -> GenerateSettings {
    GenerateSettings { steps: 2, width: 16, height: 24, ..GenerateSettings::default() }
}

fn spec(seed: u64, style: Style) -> ImageSpec {
    ImageSpec { prompt: "a red fox in the snow".into(), negative: "blurry".into(), seed, style }
}

fn go(_: Progress) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

fn drawing_code(styles: &StyleCodes<TestBackend>) -> StyleCode {
    styles.encode(&[load_rgb(fixtures().join("images/drawing.png")).unwrap()]).unwrap()[0].code
}

#[test]
fn encoding_reads_no_sd15_file() {
    let (_dir, weights) = weights_copy();
    std::fs::remove_dir_all(weights.sd15_dir()).unwrap();
    let codes = handle(weights).encode(&[load_rgb(fixtures().join("images/drawing.png")).unwrap()]).unwrap();
    assert_eq!(codes[0].code, drawing_code(&handle(burn_stylecode_tests::weights())));
}

#[test]
fn each_network_is_read_once() {
    let (_dir, weights) = weights_copy();
    let styles = handle(weights.clone());
    let code = drawing_code(&styles);
    styles.control().unwrap();
    styles.stable_diffusion().unwrap();
    // With the files gone, only what was loaded can run the styled job.
    std::fs::remove_dir_all(weights.stylecodes_dir()).unwrap();
    std::fs::remove_dir_all(weights.siglip_dir()).unwrap();
    std::fs::remove_dir_all(weights.sd15_dir()).unwrap();
    assert_eq!(drawing_code(&styles), code);
    let request = GenerateRequest::repeated(spec(3, Style::Codes(vec![code.into()])), 1, settings());
    assert_eq!(styles.generate(&request, go).unwrap().len(), 1);
}

#[test]
fn image_k_uses_seed_s_plus_k_and_styles_change_the_image() {
    let styles = handle(weights());
    let code = drawing_code(&styles);
    let styled = Style::Codes(vec![code.into()]);
    let three = styles.generate(&GenerateRequest::repeated(spec(40, styled.clone()), 3, settings()), go).unwrap();
    let seeds: Vec<u64> = three.iter().map(|made| made.recipe.seed).collect();
    assert_eq!(seeds, [40, 41, 42]);
    let alone = styles.generate(&GenerateRequest::repeated(spec(42, styled.clone()), 1, settings()), go).unwrap();
    assert_eq!(alone[0].image, three[2].image, "image 3 made again alone");
    assert_ne!(three[0].image, three[1].image, "another seed, another image");

    let plain = styles.generate(&GenerateRequest::repeated(spec(40, Style::None), 1, settings()), go).unwrap();
    assert_ne!(plain[0].image, three[0].image, "the style steers the UNet");
    // The latent the code came from, not rounded, is another (close) style.
    let latent = styles.encode(&[load_rgb(fixtures().join("images/drawing.png")).unwrap()]).unwrap()[0].latent;
    let exact =
        styles.generate(&GenerateRequest::repeated(spec(40, Style::Latent(latent)), 1, settings()), go).unwrap();
    assert_eq!(exact[0].recipe.stylecode.as_deref(), Some(code.to_paper().as_str()));
}

#[test]
fn styled_and_plain_images_get_their_defaults_and_recipes() {
    let styles = handle(weights());
    let code = drawing_code(&styles);
    let request = GenerateRequest {
        images: vec![spec(1, Style::None), spec(2, Style::Codes(vec![code.into()]))],
        settings: GenerateSettings { karras: false, ..settings() },
    };
    let made = styles.generate(&request, go).unwrap();
    let plain = &made[0].recipe;
    assert_eq!((plain.guidance_scale, plain.stylecode.as_ref(), plain.style_scale), (7.5, None, None));
    let styled = &made[1].recipe;
    assert_eq!(styled.guidance_scale, 3.0, "the release's guidance with a style");
    assert_eq!(styled.stylecode.as_deref(), Some(code.to_paper().as_str()));
    assert_eq!(styled.style_scale, Some(0.9));
    assert_eq!((styled.seed, styled.steps, styled.width, styled.height), (2, 2, 16, 24));
    assert_eq!(Recipe::from_text_chunks(&styled.text_chunks()).unwrap(), *styled);

    let guided = GenerateRequest { settings: GenerateSettings { guidance_scale: Some(5.0), ..settings() }, ..request };
    assert!(styles.generate(&guided, go).unwrap().iter().all(|m| m.recipe.guidance_scale == 5.0));
}

#[test]
fn a_code_of_other_weights_is_refused() {
    let styles = handle(weights());
    let other = StyleCode::new([7; 20], 'Z').unwrap();
    let request = GenerateRequest::repeated(spec(1, Style::Codes(vec![WeightedCode::from(other)])), 1, settings());
    let error = styles.generate(&request, go).unwrap_err();
    assert!(matches!(error, Error::VersionMismatch { code: 'Z', weights: '1', .. }), "{error}");
    assert!(error.to_string().contains("stylecodes"), "{error}");
}

#[test]
fn progress_counts_steps_per_batch_and_can_cancel() {
    let styles = handle(weights());
    let request = GenerateRequest {
        images: vec![spec(1, Style::None), spec(2, Style::None)],
        settings: GenerateSettings { steps: 3, ..settings() },
    };
    let mut steps = Vec::new();
    let mut previews = Vec::new();
    styles
        .generate(&request, |p| {
            steps.push((p.step, p.steps, p.batch));
            // The preview is made only when asked: one small image per image of the batch.
            previews.push(p.preview(4).unwrap().iter().map(|image| image.dimensions()).collect::<Vec<_>>());
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(steps, [(1, 3, 2), (2, 3, 2), (3, 3, 2)]);
    let (width, height) = (request.settings.width / 2, request.settings.height / 2); // the tiny VAE's factor
    let expected = burn_stylecode::sd::preview::preview_size(width, height, 4);
    assert!(previews.iter().all(|batch| batch == &[expected, expected]), "{previews:?} ≠ {expected:?}");

    let mut calls = 0;
    let result = styles.generate(&request, |_| {
        calls += 1;
        ControlFlow::Break(())
    });
    assert!(matches!(result, Err(Error::Cancelled)));
    assert_eq!(calls, 1, "the run stops after the step that asked");
}

#[test]
fn bad_settings_are_refused_before_any_work() {
    let styles = handle(burn_stylecode::WeightsDir::new("/nonexistent"));
    let bad = |settings: GenerateSettings| {
        let request = GenerateRequest::repeated(spec(1, Style::None), 1, settings);
        styles.generate(&request, go).unwrap_err().to_string()
    };
    let karras = bad(GenerateSettings { karras: true, ..settings() });
    assert!(karras.contains("Karras") && karras.contains("ddim"), "{karras}");
    let scale = bad(GenerateSettings { style_scale: 1.5, ..settings() });
    assert!(scale.contains("1.5"), "{scale}");
}

#[test]
fn recipes_record_the_model_loras_init_image_backend_and_dtype() {
    let (_dir, weights) = weights_copy();
    let styles = handle(weights.clone());
    let lora = fixtures().join("lora/kohya.safetensors");
    let photo = load_rgb(fixtures().join("images/drawing.png")).unwrap();
    let settings = GenerateSettings {
        loras: vec![burn_stylecode::LoraSpec { path: lora.clone(), unet_weight: 0.5, text_encoder_weight: 0.25 }],
        init_image: Some(burn_stylecode::InitImage { image: photo, strength: 0.5 }),
        ..settings()
    };
    let made = styles.generate(&GenerateRequest::repeated(spec(9, Style::None), 1, settings), go).unwrap();
    let recipe = &made[0].recipe;
    let model = recipe.model_sha256.clone().unwrap();
    assert_eq!(model.len(), 64);
    assert_eq!(recipe.loras.len(), 1);
    assert_eq!(recipe.loras[0].sha256, burn_stylecode::import::sha256_file(&lora).unwrap());
    assert_eq!((recipe.loras[0].name.as_str(), recipe.loras[0].unet_weight), ("kohya.safetensors", 0.5));
    assert_eq!(recipe.init_image.as_ref().map(|(h, s)| (h.len(), *s)), Some((64, 0.5)));
    assert_eq!((recipe.backend.as_deref(), recipe.dtype.as_deref()), (Some("cpu"), Some("f32")));
    assert_eq!(&Recipe::from_text_chunks(&recipe.text_chunks()).unwrap(), recipe);
    let parameters = recipe.a1111_parameters();
    assert!(
        parameters.contains("Lora hashes: \"kohya.safetensors: ") && parameters.contains("Denoising strength: 0.5")
    );

    // Another VAE file, another model identity.
    let vae = weights.sd15_dir().join("vae/diffusion_pytorch_model.safetensors");
    let mut bytes = std::fs::read(&vae).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&vae, bytes).unwrap();
    assert_ne!(handle(weights).sd15_sha256().unwrap(), model);
}
