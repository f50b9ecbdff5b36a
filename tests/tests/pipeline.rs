//! The whole SD1.5 pipeline against diffusers' `StableDiffusionPipeline` on
//! the tiny sd15/ folder (made by `fixtures/make_pipeline_fixtures.py`).

use burn::prelude::*;
use burn::tensor::DType;
use burn_stylecode::sd::pipeline::{Settings, StableDiffusion};
use burn_stylecode::Error;
use burn_stylecode_tests::*;
use std::ops::ControlFlow;

type Sd = StableDiffusion<TestBackend>;

fn tiny_sd() -> Sd {
    StableDiffusion::load(&weights().sd15_dir(), DType::F32, &device()).unwrap()
}

fn text(json: &serde_json::Value, key: &str) -> String {
    json[key].as_str().unwrap().to_string()
}

#[test]
fn whole_pipeline_matches_diffusers() {
    let json = reference_json("pipeline.json");
    let reference = reference("pipeline.safetensors");
    let settings = pipeline_reference_settings(&json);
    let sd = tiny_sd();
    // diffusers' latent size: the tiny VAE has one upsampler, not SD1.5's three.
    assert_eq!(sd.vae_scale_factor(), json["vae_scale_factor"].as_u64().unwrap() as usize);

    let context = sd.text_context(&[text(&json, "prompt")], &[text(&json, "negative_prompt")], &settings).unwrap();
    let noise: Tensor<TestBackend, 4> = tensor(&reference, "noise");
    let [_, _, h, w] = noise.dims();
    assert_eq!([h, w], [settings.height / sd.vae_scale_factor(), settings.width / sd.vae_scale_factor()]);
    let mut steps = Vec::new();
    let predict = |x, t, ctx| sd.unet.forward(x, t, &ctx);
    let on_step = |done, total| {
        steps.push((done, total));
        ControlFlow::Continue(())
    };
    let latents = sd.denoise(noise, &context, &settings, &mut [], predict, on_step).unwrap();
    assert_eq!(steps, [(1, 3), (2, 3), (3, 3)]);
    let error = assert_close("latents", latents.clone(), tensor(&reference, "latents"));
    println!("latents: max relative error {error:e}");

    // The image before 8-bit conversion, as diffusers' output_type="pt".
    let expected: Tensor<TestBackend, 4> = tensor(&reference, "image");
    let image = (sd.vae.decode(sd.vae.from_diffusion(latents.clone())) / 2.0 + 0.5).clamp(0.0, 1.0);
    let error = assert_close("image", image, expected.clone());
    println!("image: max relative error {error:e}");

    // And the 8-bit image: within one level of the rounded reference.
    let images = sd.decode(latents).unwrap();
    assert_eq!(
        (images.len(), images[0].width(), images[0].height()),
        (1, settings.width as u32, settings.height as u32)
    );
    let expected = expected.permute([0, 2, 3, 1]).into_data().into_vec::<f32>().unwrap();
    let worst = images[0]
        .as_raw()
        .iter()
        .zip(&expected)
        .map(|(&a, &b)| (f32::from(a) - (b * 255.0).round()).abs())
        .fold(0f32, f32::max);
    assert!(worst <= 1.0, "8-bit image differs by {worst} levels");
}

fn small_settings() -> Settings {
    Settings { steps: 2, guidance_scale: 5.0, width: 16, height: 24, ..Settings::default() }
}

fn prompts(n: usize) -> (Vec<String>, Vec<String>) {
    let prompts = ["a red fox in the snow", "a city at night"];
    let negatives = ["blurry", ""];
    (prompts[..n].iter().map(|s| s.to_string()).collect(), negatives[..n].iter().map(|s| s.to_string()).collect())
}

#[test]
fn generate_is_deterministic_per_seed() {
    let sd = tiny_sd();
    let settings = small_settings();
    let (prompts, negatives) = prompts(2);
    let generate =
        |seeds: &[u64]| sd.generate(&prompts, &negatives, seeds, &settings, |_, _| ControlFlow::Continue(())).unwrap();
    let first = generate(&[7, 8]);
    assert_eq!(first.len(), 2);
    assert_eq!((first[0].width(), first[0].height()), (16, 24));
    assert_eq!(first, generate(&[7, 8]), "same seeds, same images");
    let other = generate(&[7, 9]);
    assert_eq!(first[0], other[0], "image 0 depends on its own seed only");
    assert_ne!(first[1], other[1], "another seed, another image");

    // The latents behind them are the VAE's size: 1/2 here, 1/8 in SD1.5.
    let predict = |x, t, ctx| sd.unet.forward(x, t, &ctx);
    let latents =
        sd.generate_latents(&prompts[..1], &negatives[..1], &[7], &settings, predict, |_, _| ControlFlow::Continue(()));
    assert_eq!(latents.unwrap().dims(), [1, 4, 12, 8]);
}

#[test]
fn the_progress_callback_cancels_between_steps() {
    let sd = tiny_sd();
    let (prompts, negatives) = prompts(1);
    let mut seen = Vec::new();
    let result = sd.generate(&prompts, &negatives, &[1], &small_settings(), |step, steps| {
        seen.push((step, steps));
        if step == 2 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    assert!(matches!(result, Err(Error::Cancelled)), "{:?}", result.map(|images| images.len()));
    assert_eq!(seen, [(1, small_settings().steps), (2, small_settings().steps)], "no step runs after the stop");
}

fn error_of(settings: &Settings, n_prompts: usize, n_negatives: usize, seeds: &[u64]) -> String {
    let sd = tiny_sd();
    let (prompts, negatives) = prompts(2);
    match sd
        .generate(&prompts[..n_prompts], &negatives[..n_negatives], seeds, settings, |_, _| ControlFlow::Continue(()))
    {
        Ok(_) => {
            panic!("{settings:?} with {n_prompts} prompts, {n_negatives} negatives, {} seeds was accepted", seeds.len())
        }
        Err(Error::InvalidRequest(message)) => message,
        Err(other) => panic!("unexpected error kind: {other}"),
    }
}

#[test]
fn bad_settings_give_clear_errors() {
    let good = small_settings();
    let message = error_of(&Settings { width: 20, ..good.clone() }, 1, 1, &[1]);
    assert!(message.contains("width 20") && message.contains("multiple of 8"), "{message}");
    let message = error_of(&Settings { height: 0, ..good.clone() }, 1, 1, &[1]);
    assert!(message.contains("height 0"), "{message}");
    let message = error_of(&Settings { steps: 0, ..good.clone() }, 1, 1, &[1]);
    assert!(message.contains("steps"), "{message}");
    let message = error_of(&Settings { guidance_scale: f64::NAN, ..good.clone() }, 1, 1, &[1]);
    assert!(message.contains("guidance"), "{message}");
    let message = error_of(&good, 2, 2, &[1]);
    assert!(message.contains("2 prompts") && message.contains("1 seeds"), "{message}");
    let message = error_of(&good, 2, 1, &[1, 2]);
    assert!(message.contains("1 negative prompts"), "{message}");
}
