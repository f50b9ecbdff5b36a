//! One full-size SD1.5 UNet denoising step (batch 2, 4×64×64 latents, 77×768
//! context made once, as a generation does; random weights), plain and with
//! the style control module, and
//! one full-size VAE decode (a 4×64×64 latent → 512×512).
//!
//! `cargo bench -p burn-stylecode-cli --bench unet_step -- [cpu|wgpu|cuda] [plain|styled|vae] [REPEATS] [LATENT]`
//! prints one JSON line: the backend, the mode, seconds per step (median of
//! the repeats, after one warm-up) and the process's peak resident memory.
//! Run one configuration per process so that peak memory is its own;
//! `cargo xtask bench` runs them all beside PyTorch (`unet_step.py`).

use burn::prelude::*;
use burn_stylecode::sd::text_context::TextContext;
use burn_stylecode::sd::unet_2d::{UNet2DConditionModel, UNetConfig};
use burn_stylecode::sd::vae::{AutoencoderKL, VaeConfig};
use burn_stylecode::style::control::{MixInit, StyleControl, StyleControlConfig};
mod common;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let backend = args.first().map_or("cpu", String::as_str);
    let mode = args.get(1).map_or("plain", String::as_str);
    let repeats: usize = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(3);
    // The UNet's latent side (64: 512² images; 8: how the step's cost follows its FLOPs).
    let latent: usize = args.get(3).and_then(|r| r.parse().ok()).unwrap_or(64);
    match backend {
        "cpu" => run::<burn::backend::Flex>(Default::default(), backend, mode, repeats, latent),
        #[cfg(feature = "wgpu")]
        "wgpu" => run::<burn::backend::Wgpu>(Default::default(), backend, mode, repeats, latent),
        #[cfg(feature = "cuda")]
        "cuda" => run::<burn::backend::Cuda>(Default::default(), backend, mode, repeats, latent),
        other => panic!("backend `{other}` is not built in (cargo features `wgpu`, `cuda`)"),
    }
}

fn run<B: Backend>(device: B::Device, backend: &str, mode: &str, repeats: usize, latent: usize) {
    if mode == "vae" {
        return decode::<B>(device, backend, repeats);
    }
    let config = UNetConfig::sd15();
    let unet: UNet2DConditionModel<B> = config.init(&device);
    let control: Option<StyleControl<B>> =
        (mode == "styled").then(|| StyleControlConfig::from_base(&config, 8, MixInit::Identity).init(&device));
    let sample = Tensor::<B, 4>::random([2, 4, latent, latent], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
    // One context for all the steps, as in a generation: its cross-attention
    // keys and values are computed on the warm-up step and kept (diffusers
    // computes them on every step).
    let context =
        TextContext::new(Tensor::<B, 3>::random([2, 77, 768], burn::tensor::Distribution::Normal(0.0, 1.0), &device));
    let mid = latent.div_ceil(8);
    let style = Tensor::<B, 4>::random([2, 1280, mid, mid], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
    let timestep = Tensor::<B, 1>::from_floats([500.0], &device);

    let step = || {
        let noise = match &control {
            Some(control) => control.forward(&unet, sample.clone(), timestep.clone(), &context, style.clone(), 0.9),
            None => unet.forward(sample.clone(), timestep.clone(), &context),
        };
        // Reading one value back waits for the device to finish.
        noise.slice([0..1, 0..1, 0..1, 0..1]).into_data();
    };
    let (_, seconds) = common::time_repeats(repeats, step);
    common::report(serde_json::json!({ "impl": "burn", "backend": backend, "mode": mode, "latent": latent }), &seconds);
}

/// One VAE decode of a 64×64 latent (what ends a 512² generation).
fn decode<B: Backend>(device: B::Device, backend: &str, repeats: usize) {
    let vae: AutoencoderKL<B> = VaeConfig::sd15().init(&device);
    let latents = Tensor::<B, 4>::random([1, 4, 64, 64], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
    let step = || {
        let image = vae.decode(latents.clone());
        assert_eq!(image.dims(), [1, 3, 512, 512]);
        image.slice([0..1, 0..1, 0..1, 0..1]).into_data();
    };
    let (_, seconds) = common::time_repeats(repeats, step);
    common::report(serde_json::json!({ "impl": "burn", "backend": backend, "mode": "vae" }), &seconds);
}
