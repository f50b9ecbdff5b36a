//! What a generation asks for, and what it gives back.

use crate::error::{Error, Result};
use crate::sd::lora::LoraSpec;
use crate::sd::schedulers::SchedulerKind;
use crate::style::code::CODE_LEN;
use crate::style::WeightedCode;
use image::RgbImage;

/// The style of one image.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Style {
    /// The plain SD1.5 UNet.
    #[default]
    None,
    /// One code, or several blended (the weighted mean of their latents).
    Codes(Vec<WeightedCode>),
    /// A latent as the encoder made it (not rounded to a code), from the
    /// loaded weights.
    Latent([f32; CODE_LEN]),
}

impl Style {
    pub fn is_none(&self) -> bool {
        matches!(self, Style::None)
    }
}

/// One image to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSpec {
    pub prompt: String,
    pub negative: String,
    pub seed: u64,
    pub style: Style,
}

/// Settings shared by the images of a request. The defaults are the
/// release's: DDIM, 20 steps, 512², guidance 7.5 (3 with a style), style
/// scale 0.9.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateSettings {
    pub steps: usize,
    /// Classifier-free guidance; `None` takes [`GenerateSettings::guidance`]'s default.
    pub guidance_scale: Option<f64>,
    pub scheduler: SchedulerKind,
    /// Karras sigmas (not for DDIM).
    pub karras: bool,
    /// Pixels, multiples of the VAE's scale factor (8).
    pub width: usize,
    pub height: usize,
    /// Conditioning scale of the style, 0..=1.
    pub style_scale: f64,
    /// LoRAs merged into the UNet and text encoder, in order (none by default).
    pub loras: Vec<LoraSpec>,
    /// img2img: start every image from this one (none by default).
    pub init_image: Option<InitImage>,
}

/// img2img's start: a picture (resized to the request's size) and the
/// share of the schedule to run again, 0 < strength ≤ 1 (1 ignores the
/// picture but for its noise level: every step runs).
#[derive(Debug, Clone, PartialEq)]
pub struct InitImage {
    pub image: RgbImage,
    pub strength: f64,
}

impl Default for GenerateSettings {
    fn default() -> Self {
        Self {
            steps: 20,
            guidance_scale: None,
            scheduler: SchedulerKind::Ddim,
            karras: false,
            width: 512,
            height: 512,
            style_scale: 0.9,
            loras: Vec::new(),
            init_image: None,
        }
    }
}

impl GenerateSettings {
    /// Guidance without a style as diffusers' default; with one, 3 as the release.
    pub const PLAIN_GUIDANCE: f64 = 7.5;
    pub const STYLED_GUIDANCE: f64 = 3.0;

    /// The guidance scale for images with or without a style.
    pub fn guidance(&self, styled: bool) -> f64 {
        self.guidance_scale.unwrap_or(if styled { Self::STYLED_GUIDANCE } else { Self::PLAIN_GUIDANCE })
    }

    /// Errors naming the setting at fault, before any model is loaded.
    pub fn validate(&self) -> Result<()> {
        // Sizes, steps and guidance as the SD pipeline checks them.
        let sd = crate::sd::pipeline::Settings {
            steps: self.steps,
            guidance_scale: self.guidance(false),
            width: self.width,
            height: self.height,
            ..Default::default()
        };
        sd.validate()?;
        if self.karras && !self.scheduler.supports_karras() {
            return Err(Error::InvalidRequest(format!(
                "Karras sigmas do not apply to the {} scheduler",
                self.scheduler
            )));
        }
        if let Some(init) = &self.init_image {
            crate::sd::pipeline::img2img_start(self.steps, init.strength)?;
        }
        if !(0.0..=1.0).contains(&self.style_scale) {
            return Err(Error::InvalidRequest(format!("style scale {} is not between 0 and 1", self.style_scale)));
        }
        Ok(())
    }
}

/// Images to generate, each with its own prompt, seed and style.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    pub images: Vec<ImageSpec>,
    pub settings: GenerateSettings,
}

impl GenerateRequest {
    /// `num` images of one prompt and style; image `k` (from 0) uses seed
    /// `first_seed + k`, so any of them can be made again alone.
    pub fn repeated(image: ImageSpec, num: usize, settings: GenerateSettings) -> Self {
        let images = (0..num as u64).map(|k| ImageSpec { seed: image.seed.wrapping_add(k), ..image.clone() }).collect();
        Self { images, settings }
    }

    /// The request in parts of at most `batch` images, in order (each part
    /// goes through the networks as one batch).
    pub fn batches(&self, batch: usize) -> impl Iterator<Item = GenerateRequest> + '_ {
        self.images
            .chunks(batch.max(1))
            .map(|images| GenerateRequest { images: images.to_vec(), settings: self.settings.clone() })
    }
}

/// Where a generation is: after `step` of `steps` denoising steps.
#[derive(Clone, Copy)]
pub struct Progress<'a> {
    pub step: usize,
    pub steps: usize,
    /// Index in the request of the first image of the batch running.
    pub first_image: usize,
    /// Images in that batch.
    pub batch: usize,
    /// The batch's latents as small RGB images, made only when asked.
    pub(super) preview: &'a dyn Fn(u32) -> crate::error::Result<Vec<RgbImage>>,
}

impl Progress<'_> {
    /// The batch's images as they stand: the current latents through a
    /// cheap linear latent → RGB map (no VAE), one image per image of the
    /// batch, at most `max_side` pixels a side ([`crate::sd::preview`]).
    pub fn preview(&self, max_side: u32) -> crate::error::Result<Vec<RgbImage>> {
        (self.preview)(max_side)
    }
}

impl std::fmt::Debug for Progress<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("step", &self.step)
            .field("steps", &self.steps)
            .field("first_image", &self.first_image)
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

/// One finished image and how to make it again.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedImage {
    pub image: RgbImage,
    pub recipe: super::Recipe,
}
