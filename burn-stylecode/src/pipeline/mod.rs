//! The top layer: the [`StyleCodes`] handle that loads what a job needs
//! from a weights folder, once, and runs encoding and (styled) generation;
//! the requests and recipes it speaks in; and the PNG files it writes.

pub mod memory;
mod png_text;
mod recipe;
mod replay;
mod request;
mod weights_dir;

pub use png_text::{read_png_text, read_png_text_bytes, write_png};
pub use recipe::{pixels_sha256, Recipe, RecipeLora};
pub use replay::Replay;
pub use request::{GenerateRequest, GenerateSettings, GeneratedImage, ImageSpec, InitImage, Progress, Style};
pub use weights_dir::{WeightsDir, WeightsOrigin, WEIGHTS_ENV};

use crate::error::{Error, Result};
use crate::sd::lora::LoraSpec;
use crate::sd::pipeline::{self as sd_pipeline, Settings, StableDiffusion};
use crate::sd::unet_2d::UNetConfig;
use crate::siglip::preprocess::resize_lanczos;
use crate::siglip::{SiglipVisionConfig, SiglipVisionTransformer};
use crate::style::autoencoder::AttentionAutoencoder;
use crate::style::code::{blend, CODE_LEN};
use crate::style::control::StyleControl;
use crate::style::{check_fits_base, check_fits_siglip, EncodedStyle, StyleCode, StyleCondition, StyleEncoder};
use crate::style::{StylecodesConfig, WeightedCode};
use crate::weights::{JsonConfig, TensorFile};
use burn::prelude::*;
use burn::tensor::DType;
use image::RgbImage;
use sha2::{Digest, Sha256};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

/// StyleCodes on one device: encode images to codes, generate SD1.5
/// images in a code's style.
///
/// Each network is loaded on first use and kept: encoding loads SigLIP and
/// the autoencoder only; generation adds SD1.5 and, with a style, the
/// control branch (the autoencoder is shared).
pub struct StyleCodes<B: Backend> {
    weights: WeightsDir,
    sd15_dir: PathBuf,
    dtype: DType,
    device: B::Device,
    config: OnceLock<StylecodesConfig>,
    siglip: OnceLock<(SiglipVisionConfig, SiglipVisionTransformer<B>)>,
    autoencoder: OnceLock<AttentionAutoencoder<B>>,
    control: OnceLock<StyleControl<B>>,
    /// SD1.5 with the LoRAs of the last request that asked for it, and
    /// those LoRAs as recipes record them.
    sd: Mutex<Option<LoadedSd<B>>>,
    sd15_sha256: OnceLock<String>,
    stylecodes_sha256: OnceLock<String>,
    backend: String,
    /// A cap on a generation's estimated memory (`memory::check`).
    max_memory: Option<u64>,
}

/// An init image as diffusers' `VaeImageProcessor` prepares it: Pillow's
/// Lanczos to `width`×`height`, then `2·x/255 − 1`, as [1, 3, H, W].
pub fn vae_pixels<B: Backend>(image: &RgbImage, width: usize, height: usize, device: &B::Device) -> Tensor<B, 4> {
    let resized = resize_lanczos(image, width as u32, height as u32);
    let mut values = Vec::with_capacity(3 * width * height);
    for c in 0..3 {
        values.extend(resized.pixels().map(|p| 2.0 * (f32::from(p.0[c]) / 255.0) - 1.0));
    }
    Tensor::from_data(TensorData::new(values, [1, 3, height, width]), device)
}

/// The sha256 of the lines `REL_PATH SHA256` of the files `rels` under
/// `dir`, each file's sha256 taken from the folder's `manifest.json` (as
/// the import writes it) when it lists the file with its size, else computed.
fn files_identity(dir: &std::path::Path, rels: &[&str]) -> Result<String> {
    let manifest = crate::import::Manifest::read(dir).ok();
    let mut digest = Sha256::new();
    for rel in rels {
        let path = dir.join(rel);
        let size = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?.len();
        let listed = manifest
            .as_ref()
            .and_then(|m| m.files.iter().find(|f| f.path == *rel && f.bytes == size))
            .map(|f| f.sha256.clone());
        let sha256 = match listed {
            Some(sha256) => sha256,
            None => crate::import::sha256_file(&path).map_err(|e| Error::io(&path, e))?,
        };
        digest.update(format!("{rel} {sha256}\n"));
    }
    Ok(crate::import::hex_digest(digest))
}

/// SD1.5 as loaded, with its LoRAs as recipes record them.
type LoadedSd<B> = (Arc<StableDiffusion<B>>, Vec<RecipeLora>);

/// `cell`'s value, loading it first if needed.
fn get_or_load<T>(cell: &OnceLock<T>, load: impl FnOnce() -> Result<T>) -> Result<&T> {
    if let Some(value) = cell.get() {
        return Ok(value);
    }
    let value = load()?;
    Ok(cell.get_or_init(|| value))
}

impl<B: Backend> StyleCodes<B> {
    /// Nothing is read until a job needs it.
    pub fn new(weights: WeightsDir, dtype: DType, device: B::Device) -> Self {
        let sd15_dir = weights.sd15_dir();
        Self {
            weights,
            sd15_dir,
            dtype,
            device,
            config: OnceLock::new(),
            siglip: OnceLock::new(),
            autoencoder: OnceLock::new(),
            control: OnceLock::new(),
            sd: Mutex::new(None),
            sd15_sha256: OnceLock::new(),
            stylecodes_sha256: OnceLock::new(),
            backend: "cpu".into(),
            max_memory: None,
        }
    }

    /// Refuse generations estimated to need more than `bytes` (besides
    /// those over the machine's available memory, always refused).
    pub fn with_max_memory(mut self, bytes: Option<u64>) -> Self {
        self.max_memory = bytes;
        self
    }

    /// Another SD1.5 (a fine-tune in the diffusers layout) than `WEIGHTS/sd15`.
    pub fn with_sd15_dir(mut self, dir: PathBuf) -> Self {
        self.sd15_dir = dir;
        self
    }

    /// The backend's name recorded in recipes (`cpu` unless told).
    pub fn with_backend_name(mut self, name: impl Into<String>) -> Self {
        self.backend = name.into();
        self
    }

    /// The identity of the SD1.5 weights: the sha256 of the lines
    /// `REL_PATH SHA256` of its UNet, text encoder and VAE weights files
    /// ([`files_identity`]; once per handle).
    pub fn sd15_sha256(&self) -> Result<&str> {
        get_or_load(&self.sd15_sha256, || {
            files_identity(
                &self.sd15()?,
                &[
                    "unet/diffusion_pytorch_model.safetensors",
                    "text_encoder/model.safetensors",
                    "vae/diffusion_pytorch_model.safetensors",
                ],
            )
        })
        .map(String::as_str)
    }

    /// The identity of the StyleCodes weights file, as [`sd15_sha256`](Self::sd15_sha256).
    pub fn stylecodes_sha256(&self) -> Result<&str> {
        get_or_load(&self.stylecodes_sha256, || {
            let file = self.weights.stylecodes_weights()?;
            let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            files_identity(&self.weights.stylecodes_dir(), &[&name])
        })
        .map(String::as_str)
    }

    /// The SD1.5 folder: the weights folder's, checked to be there, or the
    /// one given to [`Self::with_sd15_dir`] (whose loader errors name it).
    fn sd15(&self) -> Result<PathBuf> {
        if self.sd15_dir == self.weights.sd15_dir() {
            self.weights.sd15()
        } else {
            Ok(self.sd15_dir.clone())
        }
    }

    pub fn weights(&self) -> &WeightsDir {
        &self.weights
    }

    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// `stylecodes/config.json` (version `1` if absent).
    pub fn stylecodes_config(&self) -> Result<&StylecodesConfig> {
        get_or_load(&self.config, || self.weights.stylecodes_config())
    }

    /// The version character of the loaded StyleCodes weights.
    pub fn version(&self) -> Result<char> {
        Ok(self.stylecodes_config()?.version)
    }

    fn stylecodes_file(&self) -> Result<TensorFile> {
        TensorFile::open(self.weights.stylecodes_weights()?)
    }

    pub fn autoencoder(&self) -> Result<&AttentionAutoencoder<B>> {
        get_or_load(&self.autoencoder, || {
            let config = &self.stylecodes_config()?.autoencoder;
            AttentionAutoencoder::load(config, &self.stylecodes_file()?, self.dtype, &self.device)
        })
    }

    /// The image → code networks.
    pub fn encoder(&self) -> Result<StyleEncoder<'_, B>> {
        let (config, siglip) = get_or_load(&self.siglip, || {
            let config = self.weights.siglip_config()?;
            let file = TensorFile::open(self.weights.siglip_weights()?)?;
            let siglip = SiglipVisionTransformer::load(&config, &file, self.dtype, &self.device)?;
            Ok((config, siglip))
        })?;
        let stylecodes = self.stylecodes_config()?;
        check_fits_siglip(&stylecodes.autoencoder, config)?;
        Ok(StyleEncoder {
            siglip,
            autoencoder: self.autoencoder()?,
            image_size: config.image_size as u32,
            version: stylecodes.version,
        })
    }

    /// Each image's code, in order (one batch through the networks).
    pub fn encode(&self, images: &[RgbImage]) -> Result<Vec<EncodedStyle>> {
        self.encoder()?.encode(images)
    }

    /// SD1.5 without LoRAs.
    pub fn stable_diffusion(&self) -> Result<Arc<StableDiffusion<B>>> {
        self.stable_diffusion_with(&[])
    }

    /// SD1.5 with `loras` merged. The last one loaded is kept; another set
    /// of LoRAs loads the base again (the previous copy is freed first).
    pub fn stable_diffusion_with(&self, loras: &[LoraSpec]) -> Result<Arc<StableDiffusion<B>>> {
        Ok(self.loaded_sd(loras)?.0)
    }

    /// SD1.5 with `loras`, and the LoRAs as recipes record them (with their sha256).
    fn loaded_sd(&self, loras: &[LoraSpec]) -> Result<LoadedSd<B>> {
        let mut slot = self.sd.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(loaded) = slot.as_ref().filter(|(sd, _)| sd.loras.iter().map(|l| &l.spec).eq(loras)) {
            return Ok(loaded.clone());
        }
        *slot = None;
        // The identity is taken with the weights, which are not read again.
        self.sd15_sha256()?;
        let sd = Arc::new(StableDiffusion::load_with_loras(&self.sd15()?, loras, self.dtype, &self.device)?);
        let recipes = loras
            .iter()
            .map(|spec| {
                let sha256 = crate::import::sha256_file(&spec.path).map_err(|e| Error::io(&spec.path, e))?;
                let name = spec
                    .path
                    .file_name()
                    .map_or_else(|| spec.path.display().to_string(), |n| n.to_string_lossy().into_owned());
                Ok(RecipeLora {
                    name,
                    unet_weight: spec.unet_weight,
                    text_encoder_weight: spec.text_encoder_weight,
                    sha256,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        *slot = Some((sd.clone(), recipes.clone()));
        Ok((sd, recipes))
    }

    /// The control branch, shaped after the base UNet.
    pub fn control(&self) -> Result<&StyleControl<B>> {
        get_or_load(&self.control, || {
            // The identity is taken with the weights, which are not read again.
            self.stylecodes_sha256()?;
            let base = UNetConfig::from_file(&self.sd15()?.join("unet").join("config.json"))?;
            let config = self.stylecodes_config()?;
            check_fits_base(&config.autoencoder, &base)?;
            StyleControl::load(&config.control(&base), &self.stylecodes_file()?, self.dtype, &self.device)
        })
    }

    /// A style's latent and the code recorded for it; codes must be of the
    /// loaded weights' version.
    pub fn resolve_style(&self, codes: &[WeightedCode]) -> Result<([f32; CODE_LEN], StyleCode)> {
        let (latent, version) = blend(codes)?;
        let weights = self.version()?;
        if version != weights {
            return Err(Error::VersionMismatch { code: version, weights, path: self.weights.stylecodes_dir() });
        }
        let code = match codes {
            [single] => single.code,
            _ => StyleCode::from_latent(&latent, version)?,
        };
        Ok((latent, code))
    }

    /// Generates the request's images as one batch. `progress` hears of
    /// every denoising step and may stop the run there ([`Error::Cancelled`]).
    /// Images with a style and images without run as separate batches.
    pub fn generate(
        &self,
        request: &GenerateRequest,
        mut progress: impl FnMut(Progress) -> ControlFlow<()>,
    ) -> Result<Vec<GeneratedImage>> {
        request.settings.validate()?;
        self.memory_check().check(request)?;
        let mut images = Vec::with_capacity(request.images.len());
        let mut first = 0;
        for group in request.images.chunk_by(|a, b| a.style.is_none() == b.style.is_none()) {
            let on_step = |step, steps, latents: &Tensor<B, 4>| {
                let preview = |max_side| crate::sd::preview::latent_preview(latents, max_side);
                progress(Progress { step, steps, first_image: first, batch: group.len(), preview: &preview })
            };
            images.extend(self.generate_batch(group, &request.settings, on_step)?);
            first += group.len();
        }
        Ok(images)
    }

    /// The memory check [`generate`](Self::generate) applies, to run
    /// elsewhere (before queueing a request).
    pub fn memory_check(&self) -> memory::MemoryCheck {
        memory::MemoryCheck {
            sd15_dir: self.sd15_dir.clone(),
            style_weights: self.weights.stylecodes_weights().ok(),
            dtype: self.dtype,
            max_memory: self.max_memory,
        }
    }

    /// Images that all have a style, or all have none.
    fn generate_batch(
        &self,
        specs: &[ImageSpec],
        settings: &GenerateSettings,
        on_step: impl FnMut(usize, usize, &Tensor<B, 4>) -> ControlFlow<()>,
    ) -> Result<Vec<GeneratedImage>> {
        let styled = specs.iter().any(|spec| !spec.style.is_none());
        let sd_settings = Settings {
            steps: settings.steps,
            guidance_scale: settings.guidance(styled),
            scheduler: settings.scheduler,
            karras: settings.karras.then_some(true),
            width: settings.width,
            height: settings.height,
        };
        let prompts: Vec<String> = specs.iter().map(|s| s.prompt.clone()).collect();
        let negatives: Vec<String> = specs.iter().map(|s| s.negative.clone()).collect();
        let seeds: Vec<u64> = specs.iter().map(|s| s.seed).collect();
        let (sd, lora_recipes) = self.loaded_sd(&settings.loras)?;
        let model_sha256 = self.sd15_sha256()?.to_string();
        let style_model_sha256 = if styled { Some(self.stylecodes_sha256()?.to_string()) } else { None };
        let init_image = settings.init_image.as_ref().map(|init| (recipe::pixels_sha256(&init.image), init.strength));
        let init = settings.init_image.as_ref().map(|init| sd_pipeline::InitImage {
            pixels: vae_pixels(&init.image, settings.width, settings.height, &self.device).cast(self.dtype),
            strength: init.strength,
        });

        let mut codes = Vec::with_capacity(specs.len());
        let latents = if styled {
            let mut values = Vec::with_capacity(specs.len() * CODE_LEN);
            for spec in specs {
                let (latent, code) = match &spec.style {
                    Style::Codes(weighted) => self.resolve_style(weighted)?,
                    Style::Latent(latent) => (*latent, StyleCode::from_latent(latent, self.version()?)?),
                    Style::None => unreachable!("a batch is all styled or all plain"),
                };
                values.extend(latent);
                // The latent is recorded too where the code alone would not give it back.
                codes.push(Some((code.to_paper(), (latent != code.latent()).then_some(latent))));
            }
            let latents = Tensor::<B, 1>::from_floats(values.as_slice(), &self.device).reshape([specs.len(), CODE_LEN]);
            let condition = StyleCondition {
                autoencoder: self.autoencoder()?,
                control: self.control()?,
                latents,
                scale: settings.style_scale,
            };
            sd_settings.validate()?;
            let predict = condition.predictor(&sd.unet, sd.latent_size(&sd_settings), sd_settings.guided());
            sd.generate_latents_from(init.as_ref(), &prompts, &negatives, &seeds, &sd_settings, predict, on_step)?
        } else {
            codes.resize(specs.len(), None);
            let predict = |x, t, ctx| sd.unet.forward(x, t, &ctx);
            sd.generate_latents_from(init.as_ref(), &prompts, &negatives, &seeds, &sd_settings, predict, on_step)?
        };

        let images = sd.decode(latents)?;
        Ok(images
            .into_iter()
            .zip(specs)
            .zip(codes)
            .map(|((image, spec), style)| GeneratedImage {
                image,
                recipe: Recipe {
                    prompt: spec.prompt.clone(),
                    negative_prompt: spec.negative.clone(),
                    seed: spec.seed,
                    steps: settings.steps,
                    scheduler: settings.scheduler,
                    karras: settings.karras,
                    guidance_scale: sd_settings.guidance_scale,
                    width: settings.width,
                    height: settings.height,
                    style_scale: style.is_some().then_some(settings.style_scale),
                    style_latent: style.as_ref().and_then(|(_, latent)| *latent),
                    style_model_sha256: style_model_sha256.clone(),
                    stylecode: style.map(|(code, _)| code),
                    model_sha256: Some(model_sha256.clone()),
                    loras: lora_recipes.clone(),
                    init_image: init_image.clone(),
                    backend: Some(self.backend.clone()),
                    dtype: Some(format!("{:?}", self.dtype).to_lowercase()),
                },
            })
            .collect())
    }
}
