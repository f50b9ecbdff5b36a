//! Text-to-image with Stable Diffusion 1.5: prompts → CLIP context →
//! denoising loop with classifier-free guidance → VAE decode.
//!
//! The loop takes the noise prediction as a closure, so the same loop runs
//! the plain UNet and a hooked one (the style control branch lives in
//! `crate::style`; this module knows nothing about styles).

use super::clip::{ClipTextConfig, ClipTextTransformer};
use super::clip_keys::text_prefix;
use super::lora::{merge_patch, Component, Lora, LoraKeyTable, LoraSpec};
use super::schedulers::{build_scheduler, SchedulerConfig, SchedulerKind};
use super::text_context::TextContext;
use super::tokenizer::ClipTokenizer;
use super::unet_2d::{UNet2DConditionModel, UNetConfig};
use super::unet_keys::diffusers_weights;
use super::vae::AutoencoderKL;
use crate::error::{Error, Result};
use crate::weights::{JsonConfig, TensorFile};
use burn::prelude::*;
use burn::tensor::DType;
use image::RgbImage;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::ops::ControlFlow;
use std::path::Path;

/// What to generate, besides the prompts.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub steps: usize,
    /// Classifier-free guidance scale; ≤ 1 runs without the unconditional half.
    pub guidance_scale: f64,
    pub scheduler: SchedulerKind,
    /// Karras sigmas (not for DDIM); `None` keeps the scheduler config's choice.
    pub karras: Option<bool>,
    /// Pixels, multiples of 8 (as diffusers requires).
    pub width: usize,
    pub height: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self { steps: 20, guidance_scale: 7.5, scheduler: SchedulerKind::Ddim, karras: None, width: 512, height: 512 }
    }
}

impl Settings {
    pub fn validate(&self) -> Result<()> {
        for (name, value) in [("width", self.width), ("height", self.height)] {
            if value == 0 || value % 8 != 0 {
                return Err(Error::InvalidRequest(format!("{name} {value} is not a positive multiple of 8")));
            }
        }
        if self.steps == 0 {
            return Err(Error::InvalidRequest("steps must be at least 1".into()));
        }
        if !self.guidance_scale.is_finite() {
            return Err(Error::InvalidRequest(format!("guidance scale {} is not a number", self.guidance_scale)));
        }
        Ok(())
    }

    /// Whether classifier-free guidance runs (an unconditional half in every batch).
    pub fn guided(&self) -> bool {
        self.guidance_scale > 1.0
    }
}

/// The SD1.5 components, loaded from a diffusers folder.
#[derive(Debug)]
pub struct StableDiffusion<B: Backend> {
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextTransformer<B>,
    pub unet: UNet2DConditionModel<B>,
    pub vae: AutoencoderKL<B>,
    pub scheduler_config: SchedulerConfig,
    /// The LoRAs merged into the UNet and text encoder, in order.
    pub loras: Vec<Lora>,
    dtype: DType,
    device: B::Device,
}

/// img2img's init image: pixels [1, 3, H, W] in [-1, 1] at the request's
/// size, and the share of the schedule to run, 0 < strength ≤ 1.
#[derive(Debug, Clone)]
pub struct InitImage<B: Backend> {
    pub pixels: Tensor<B, 4>,
    pub strength: f64,
}

/// img2img's start: the init image's clean diffusion latents [B, 4, h, w].
#[derive(Debug, Clone)]
pub struct InitLatents<B: Backend> {
    pub latents: Tensor<B, 4>,
    pub strength: f64,
}

/// diffusers' img2img `get_timesteps`: the index of the first step run,
/// `steps - min(floor(steps·strength), steps)`; an error if no step runs.
pub fn img2img_start(steps: usize, strength: f64) -> Result<usize> {
    if !(strength > 0.0 && strength <= 1.0) {
        return Err(Error::InvalidRequest(format!("strength {strength} is not in (0, 1]")));
    }
    let kept = ((steps as f64 * strength) as usize).min(steps);
    if kept == 0 {
        return Err(Error::InvalidRequest(format!(
            "strength {strength} of {steps} steps runs no step: raise the strength or the steps"
        )));
    }
    Ok(steps - kept)
}

/// Unit Gaussian noise for one image, reproducible from its seed on every
/// backend (drawn on the host).
pub struct NoiseSource {
    rng: StdRng,
}

impl NoiseSource {
    pub fn new(seed: u64) -> Self {
        Self { rng: StdRng::seed_from_u64(seed) }
    }

    /// `count` standard normal values (Box–Muller).
    pub fn normal(&mut self, count: usize) -> Vec<f32> {
        let mut values = Vec::with_capacity(count + 1);
        while values.len() < count {
            let u1: f64 = 1.0 - self.rng.random::<f64>();
            let u2: f64 = self.rng.random::<f64>();
            let radius = (-2.0 * u1.ln()).sqrt();
            let angle = std::f64::consts::TAU * u2;
            values.push((radius * angle.cos()) as f32);
            values.push((radius * angle.sin()) as f32);
        }
        values.truncate(count);
        values
    }
}

/// The UNet and text encoder weights files of a diffusers folder, each
/// patched to merge `loras` (checked against the configs) as it is read.
pub fn weights_files(
    dir: &Path,
    unet: &UNetConfig,
    text_encoder: &ClipTextConfig,
    loras: &[LoraSpec],
) -> Result<(TensorFile, TensorFile, Vec<Lora>)> {
    let mut unet_file = TensorFile::open(diffusers_weights(&dir.join("unet"))?)?;
    let mut text_file = TensorFile::open(dir.join("text_encoder").join("model.safetensors"))?;
    if loras.is_empty() {
        return Ok((unet_file, text_file, Vec::new()));
    }
    let config_error = |message: String| Error::Config { path: dir.join("unet").join("config.json"), message };
    let table = LoraKeyTable::new(unet, text_encoder).map_err(config_error)?;
    let loras = loras.iter().map(|spec| Lora::open(spec, &table)).collect::<Result<Vec<_>>>()?;
    if let Some(patch) = merge_patch(&loras, Component::Unet, "") {
        unet_file = unet_file.with_patch(patch);
    }
    let prefix = text_prefix(&text_file)?;
    if let Some(patch) = merge_patch(&loras, Component::TextEncoder, prefix) {
        text_file = text_file.with_patch(patch);
    }
    Ok((unet_file, text_file, loras))
}

impl<B: Backend> StableDiffusion<B> {
    /// Loads `unet/`, `vae/`, `text_encoder/`, `tokenizer/` and
    /// `scheduler/` from a diffusers SD1.5 folder.
    pub fn load(dir: &Path, dtype: DType, device: &B::Device) -> Result<Self> {
        Self::load_with_loras(dir, &[], dtype, device)
    }

    /// [`load`](Self::load) with `loras` merged into the UNet and text
    /// encoder weights as they are read (in f32, then cast to `dtype`).
    pub fn load_with_loras(dir: &Path, loras: &[LoraSpec], dtype: DType, device: &B::Device) -> Result<Self> {
        let unet_dir = dir.join("unet");
        let text_dir = dir.join("text_encoder");
        let unet_config = UNetConfig::from_file(&unet_dir.join("config.json"))?;
        let text_config = ClipTextConfig::from_file(&text_dir.join("config.json"))?;
        let (unet_file, text_file, loras) = weights_files(dir, &unet_config, &text_config, loras)?;
        Ok(Self {
            tokenizer: ClipTokenizer::from_dir(dir.join("tokenizer"))?,
            text_encoder: ClipTextTransformer::load(&text_config, &text_file, dtype, device)?,
            unet: UNet2DConditionModel::load(&unet_config, &unet_file, dtype, device)?,
            vae: AutoencoderKL::from_diffusers_dir(&dir.join("vae"), dtype, device)?,
            scheduler_config: SchedulerConfig::from_file(&dir.join("scheduler").join("scheduler_config.json"))?,
            loras,
            dtype,
            device: device.clone(),
        })
    }

    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// The UNet's text context: [cond(B); uncond(B)] with guidance, else [cond(B)].
    pub fn text_context(
        &self,
        prompts: &[String],
        negatives: &[String],
        settings: &Settings,
    ) -> Result<TextContext<B>> {
        let mut texts: Vec<&str> = prompts.iter().map(String::as_str).collect();
        if settings.guided() {
            texts.extend(negatives.iter().map(String::as_str));
        }
        let ids = self.tokenizer.encode_batch(&texts)?;
        let len = self.tokenizer.max_length();
        let flat: Vec<i64> = ids.iter().flatten().map(|&id| i64::from(id)).collect();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [texts.len(), len]), &self.device);
        Ok(TextContext::new(self.text_encoder.forward(ids).last_hidden_state))
    }

    /// Initial latents [B, 4, H/f, W/f] (f = [`vae_scale_factor`](Self::vae_scale_factor)),
    /// unit Gaussian, one seed per image.
    pub fn initial_noise(&self, sources: &mut [NoiseSource], settings: &Settings) -> Tensor<B, 4> {
        let shape = self.latent_shape(sources.len(), settings);
        let per_image = shape[1] * shape[2] * shape[3];
        let values: Vec<f32> = sources.iter_mut().flat_map(|s| s.normal(per_image)).collect();
        self.tensor(values, shape)
    }

    /// Pixels per latent cell along each side: ×2 per upsampler of the VAE
    /// decoder (8 for SD1.5), as diffusers' `vae_scale_factor`.
    pub fn vae_scale_factor(&self) -> usize {
        1 << self.vae.decoder.up_blocks.iter().filter(|block| block.upsampler.is_some()).count()
    }

    /// [height, width] of the diffusion latents for `settings`.
    pub fn latent_size(&self, settings: &Settings) -> [usize; 2] {
        let factor = self.vae_scale_factor();
        [settings.height / factor, settings.width / factor]
    }

    fn latent_shape(&self, batch: usize, settings: &Settings) -> [usize; 4] {
        let [height, width] = self.latent_size(settings);
        [batch, self.unet.conv_in.weight.dims()[1], height, width]
    }

    fn tensor(&self, values: Vec<f32>, shape: [usize; 4]) -> Tensor<B, 4> {
        Tensor::from_data(TensorData::new(values, shape), (&self.device, self.dtype))
    }

    /// The denoising loop from unit `noise` [B, 4, h, w]. `predict(sample,
    /// timestep, context)` returns the noise prediction for a batch laid out
    /// like `context` ([cond; uncond] with guidance). `sources` give
    /// stochastic schedulers their per-step noise; `on_step(done, total)`
    /// reports progress after each step and may stop the loop there
    /// ([`Error::Cancelled`]).
    pub fn denoise(
        &self,
        noise: Tensor<B, 4>,
        context: &TextContext<B>,
        settings: &Settings,
        sources: &mut [NoiseSource],
        predict: impl FnMut(Tensor<B, 4>, Tensor<B, 1>, TextContext<B>) -> Tensor<B, 4>,
        mut on_step: impl FnMut(usize, usize) -> ControlFlow<()>,
    ) -> Result<Tensor<B, 4>> {
        let on_step = |done, total, _: &Tensor<B, 4>| on_step(done, total);
        self.denoise_from(None, noise, context, settings, sources, predict, on_step)
    }

    /// [`denoise`](Self::denoise), for img2img from `init` when given (as
    /// diffusers' `StableDiffusionImg2ImgPipeline`): its latents noised with
    /// `noise` to the first kept timestep ([`img2img_start`]), then the
    /// remaining steps; `on_step(done, total, latents)` counts those and also
    /// sees the latents after each step (for a preview; nothing is read back
    /// unless it asks).
    #[allow(clippy::too_many_arguments)]
    pub fn denoise_from(
        &self,
        init: Option<InitLatents<B>>,
        noise: Tensor<B, 4>,
        context: &TextContext<B>,
        settings: &Settings,
        sources: &mut [NoiseSource],
        mut predict: impl FnMut(Tensor<B, 4>, Tensor<B, 1>, TextContext<B>) -> Tensor<B, 4>,
        mut on_step: impl FnMut(usize, usize, &Tensor<B, 4>) -> ControlFlow<()>,
    ) -> Result<Tensor<B, 4>> {
        let mut scheduler =
            build_scheduler::<B>(settings.scheduler, &self.scheduler_config, settings.steps, settings.karras)
                .map_err(|e| Error::InvalidRequest(e.to_string()))?;
        let timesteps = scheduler.timesteps().to_vec();
        let (start, mut latents) = match init {
            None => (0, noise * scheduler.init_noise_sigma()),
            Some(init) => {
                let start = img2img_start(timesteps.len(), init.strength)?;
                let latents = scheduler
                    .add_noise(init.latents, noise, &[timesteps[start]])
                    .map_err(|e| Error::InvalidRequest(e.to_string()))?;
                (start, latents)
            }
        };
        let [batch, c, h, w] = latents.dims();
        let run = timesteps.len() - start;
        for (index, &t) in timesteps.iter().enumerate().skip(start) {
            let input = scheduler.scale_model_input(latents.clone(), index);
            let input = if settings.guided() { Tensor::cat(vec![input.clone(), input], 0) } else { input };
            let timestep = Tensor::<B, 1>::from_data(TensorData::new(vec![t as f32], [1]), (&self.device, self.dtype));
            let prediction = predict(input, timestep, context.clone());
            check_finite(
                &prediction,
                "the UNet's noise prediction",
                format!("step {} of {}", index + 1, timesteps.len()),
            )?;
            let prediction = if settings.guided() {
                let mut halves = prediction.chunk(2, 0);
                let uncond = halves.pop().expect("two halves");
                let cond = halves.pop().expect("two halves");
                uncond.clone() + (cond - uncond) * settings.guidance_scale
            } else {
                prediction
            };
            // Only the ancestral sampler consumes fresh noise.
            let step_noise = (settings.scheduler == SchedulerKind::EulerAncestral)
                .then(|| self.tensor(sources.iter_mut().flat_map(|s| s.normal(c * h * w)).collect(), [batch, c, h, w]));
            latents = scheduler.step(prediction, index, latents, step_noise);
            if on_step(index + 1 - start, run, &latents).is_break() {
                return Err(Error::Cancelled);
            }
        }
        Ok(latents)
    }

    /// Diffusion latents → 8-bit RGB images.
    pub fn decode(&self, latents: Tensor<B, 4>) -> Result<Vec<RgbImage>> {
        let image = self.vae.decode(self.vae.from_diffusion(latents));
        check_finite(&image, "the VAE decoder's image", "the end of denoising".into())?;
        let image = (image / 2.0 + 0.5).clamp(0.0, 1.0);
        let [batch, _, height, width] = image.dims();
        // [B, 3, H, W] → [B, H, W, 3] bytes, rounded as diffusers does.
        let bytes = (image.permute([0, 2, 3, 1]) * 255.0)
            .round()
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| Error::ReadBack { what: "the image", message: format!("{e:?}") })?;
        let plane = height * width * 3;
        Ok((0..batch)
            .map(|b| {
                let pixels = bytes[b * plane..(b + 1) * plane].iter().map(|&v| v as u8).collect();
                RgbImage::from_raw(width as u32, height as u32, pixels).expect("buffer matches size")
            })
            .collect())
    }

    /// Prompts (with their negatives) → images with the plain UNet. Image
    /// `k` uses `seeds[k]`.
    pub fn generate(
        &self,
        prompts: &[String],
        negatives: &[String],
        seeds: &[u64],
        settings: &Settings,
        on_step: impl FnMut(usize, usize) -> ControlFlow<()>,
    ) -> Result<Vec<RgbImage>> {
        let predict = |x, t, ctx| self.unet.forward(x, t, &ctx);
        let latents = self.generate_latents(prompts, negatives, seeds, settings, predict, on_step)?;
        self.decode(latents)
    }

    /// The whole loop up to the final latents, before the VAE, with `predict`
    /// as the noise prediction (see [`denoise`](Self::denoise)).
    pub fn generate_latents(
        &self,
        prompts: &[String],
        negatives: &[String],
        seeds: &[u64],
        settings: &Settings,
        predict: impl FnMut(Tensor<B, 4>, Tensor<B, 1>, TextContext<B>) -> Tensor<B, 4>,
        mut on_step: impl FnMut(usize, usize) -> ControlFlow<()>,
    ) -> Result<Tensor<B, 4>> {
        let on_step = |done, total, _: &Tensor<B, 4>| on_step(done, total);
        self.generate_latents_from(None, prompts, negatives, seeds, settings, predict, on_step)
    }

    /// [`generate_latents`](Self::generate_latents), for img2img from
    /// `init` when given: every image starts from it. Each image's seed
    /// gives, in order, the VAE posterior's noise, the noise added to the
    /// init latents, then the ancestral sampler's. `on_step` sees the
    /// latents too, as in [`denoise_from`](Self::denoise_from).
    #[allow(clippy::too_many_arguments)]
    pub fn generate_latents_from(
        &self,
        init: Option<&InitImage<B>>,
        prompts: &[String],
        negatives: &[String],
        seeds: &[u64],
        settings: &Settings,
        predict: impl FnMut(Tensor<B, 4>, Tensor<B, 1>, TextContext<B>) -> Tensor<B, 4>,
        on_step: impl FnMut(usize, usize, &Tensor<B, 4>) -> ControlFlow<()>,
    ) -> Result<Tensor<B, 4>> {
        settings.validate()?;
        if negatives.len() != prompts.len() || seeds.len() != prompts.len() {
            return Err(Error::InvalidRequest(format!(
                "{} prompts, {} negative prompts and {} seeds: give one of each per image",
                prompts.len(),
                negatives.len(),
                seeds.len()
            )));
        }
        let mut sources: Vec<NoiseSource> = seeds.iter().map(|&s| NoiseSource::new(s)).collect();
        let init = match init {
            None => None,
            Some(init) => {
                let [_, _, height, width] = init.pixels.dims();
                if [height, width] != [settings.height, settings.width] {
                    return Err(Error::InvalidRequest(format!(
                        "the init image is {width}x{height}, the request {}x{}",
                        settings.width, settings.height
                    )));
                }
                img2img_start(settings.steps, init.strength)?;
                let pixels = init.pixels.clone().repeat_dim(0, seeds.len());
                let (mean, logvar) = self.vae.encode(pixels);
                let shape = mean.dims();
                let per_image = shape[1] * shape[2] * shape[3];
                let eps = self.tensor(sources.iter_mut().flat_map(|s| s.normal(per_image)).collect(), shape);
                let latents = self.vae.to_diffusion(AutoencoderKL::sample(mean, logvar, eps));
                Some(InitLatents { latents, strength: init.strength })
            }
        };
        let noise = self.initial_noise(&mut sources, settings);
        let context = self.text_context(prompts, negatives, settings)?;
        self.denoise_from(init, noise, &context, settings, &mut sources, predict, on_step)
    }
}

/// Fails with [`Error::NonFinite`] if `tensor` holds a NaN or an infinity
/// (f16 overflow, broken weights), which would otherwise come out as a
/// black or noise image. One read-back of a count per call.
fn check_finite<B: Backend, const D: usize>(tensor: &Tensor<B, D>, stage: &'static str, at: String) -> Result<()> {
    let count = tensor.clone().is_finite().bool_not().int().sum().into_data().convert::<i64>().into_vec::<i64>();
    let count = count.map_err(|e| Error::ReadBack { what: "a finiteness count", message: format!("{e:?}") })?;
    match count.first().copied().unwrap_or(0) {
        0 => Ok(()),
        count => Err(Error::NonFinite { stage, at, count: count as u64 }),
    }
}
