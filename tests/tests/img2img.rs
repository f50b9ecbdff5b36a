//! img2img against diffusers' `StableDiffusionImg2ImgPipeline` on the tiny
//! sd15/ folder, with the same Gaussian draws (fixtures made by
//! `fixtures/make_img2img_fixtures.py`), for DDIM, Euler and DPM++ 2M.

use burn::prelude::*;
use burn::tensor::DType;
use burn_stylecode::pipeline::vae_pixels;
use burn_stylecode::sd::pipeline::{img2img_start, InitLatents, Settings, StableDiffusion};
use burn_stylecode::sd::schedulers::SchedulerKind;
use burn_stylecode::sd::vae::AutoencoderKL;
use burn_stylecode::siglip::preprocess::load_rgb;
use burn_stylecode::{Error, GenerateRequest, GenerateSettings, ImageSpec, InitImage, StyleCodes};
use burn_stylecode_tests::*;
use std::ops::ControlFlow;

type Sd = StableDiffusion<TestBackend>;

fn tiny_sd() -> Sd {
    StableDiffusion::load(&weights().sd15_dir(), DType::F32, &device()).unwrap()
}

#[test]
fn the_init_image_is_prepared_as_diffusers_vae_image_processor() {
    let reference = reference("img2img.safetensors");
    let image = load_rgb(fixtures().join("images/drawing.png")).unwrap();
    let ours: Tensor<TestBackend, 4> = vae_pixels(&image, 24, 16, &device());
    let theirs: Tensor<TestBackend, 4> = tensor(&reference, "pixels");
    assert_eq!(ours.into_data().into_vec::<f32>().unwrap(), theirs.into_data().into_vec::<f32>().unwrap());
}

#[test]
fn img2img_matches_diffusers_for_each_scheduler() {
    let json = reference_json("img2img.json");
    let reference = reference("img2img.safetensors");
    let sd = tiny_sd();
    let text = |key: &str| json[key].as_str().unwrap().to_string();
    let strength = json["strength"].as_f64().unwrap();
    for (name, kind) in
        [("ddim", SchedulerKind::Ddim), ("euler", SchedulerKind::Euler), ("dpmpp-2m", SchedulerKind::DpmPlusPlus2M)]
    {
        let settings = Settings {
            steps: json["steps"].as_u64().unwrap() as usize,
            guidance_scale: json["guidance_scale"].as_f64().unwrap(),
            scheduler: kind,
            karras: None,
            width: json["width"].as_u64().unwrap() as usize,
            height: json["height"].as_u64().unwrap() as usize,
        };
        let context = sd.text_context(&[text("prompt")], &[text("negative_prompt")], &settings).unwrap();
        let (mean, logvar) = sd.vae.encode(tensor(&reference, "pixels"));
        let clean =
            sd.vae.to_diffusion(AutoencoderKL::sample(mean, logvar, tensor(&reference, &format!("{name}.vae_noise"))));
        let init = InitLatents { latents: clean, strength };
        let mut steps = Vec::new();
        let predict = |x, t, ctx| sd.unet.forward(x, t, &ctx);
        let on_step = |done, total, _: &Tensor<TestBackend, 4>| {
            steps.push((done, total));
            ControlFlow::Continue(())
        };
        let noise = tensor(&reference, &format!("{name}.noise"));
        let latents = sd.denoise_from(Some(init), noise, &context, &settings, &mut [], predict, on_step).unwrap();
        assert_eq!(steps, [(1, 3), (2, 3), (3, 3)], "{name}: strength 0.75 of 4 steps runs the last 3");
        assert_close(&format!("{name} latents"), latents.clone(), tensor(&reference, &format!("{name}.latents")));
        let image = (sd.vae.decode(sd.vae.from_diffusion(latents)) / 2.0 + 0.5).clamp(0.0, 1.0);
        assert_close(&format!("{name} image"), image, tensor(&reference, &format!("{name}.image")));
    }
}

#[test]
fn strength_picks_the_first_step_as_diffusers() {
    assert_eq!(img2img_start(4, 0.75).unwrap(), 1);
    assert_eq!(img2img_start(10, 1.0).unwrap(), 0);
    assert_eq!(img2img_start(10, 0.35).unwrap(), 7, "floor(3.5) = 3 steps run");
    let error = img2img_start(3, 0.2).unwrap_err().to_string();
    assert!(error.contains("runs no step"), "{error}");
    assert!(img2img_start(3, 0.0).is_err() && img2img_start(3, 1.5).is_err() && img2img_start(3, f64::NAN).is_err());
}

#[test]
fn the_handle_runs_img2img_for_every_scheduler_with_and_without_a_style() {
    let styles = StyleCodes::<TestBackend>::new(weights(), DType::F32, device());
    let photo = load_rgb(fixtures().join("images/drawing.png")).unwrap();
    let code = styles.encode(std::slice::from_ref(&photo)).unwrap()[0].code;
    let spec = |style| ImageSpec { prompt: "a fox".into(), negative: String::new(), seed: 3, style };
    for kind in SchedulerKind::ALL {
        for strength in [0.5, 1.0] {
            let settings = GenerateSettings {
                steps: 4,
                width: 16,
                height: 24,
                scheduler: kind,
                init_image: Some(InitImage { image: photo.clone(), strength }),
                ..GenerateSettings::default()
            };
            let mut seen = Vec::new();
            let styled = burn_stylecode::Style::Codes(vec![code.into()]);
            let request = GenerateRequest { images: vec![spec(burn_stylecode::Style::None), spec(styled)], settings };
            let images = styles
                .generate(&request, |p| {
                    seen.push(p.steps);
                    ControlFlow::Continue(())
                })
                .unwrap();
            assert_eq!(images.len(), 2);
            let run = if strength == 1.0 { 4 } else { 2 };
            assert!(seen.iter().all(|&s| s == run) && seen.len() == 2 * run, "{kind}: {seen:?}");
        }
    }
    let settings = GenerateSettings {
        steps: 2,
        width: 16,
        height: 24,
        init_image: Some(InitImage { image: photo, strength: 0.2 }),
        ..GenerateSettings::default()
    };
    let request = GenerateRequest { images: vec![spec(burn_stylecode::Style::None)], settings };
    assert!(matches!(styles.generate(&request, |_| ControlFlow::Continue(())), Err(Error::InvalidRequest(_))));
}
