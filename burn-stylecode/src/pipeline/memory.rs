//! The memory a generation needs, estimated before anything is allocated,
//! so that a request too large for the machine is refused with its figures
//! instead of aborting on a failed allocation.
//!
//! The estimate is the weights (their element counts, from the safetensors
//! headers, at the load dtype) plus the larger of the UNet's and the VAE
//! decoder's peak activations, plus the output images. The activation
//! factors are per latent pixel (UNet) and per image pixel (VAE), in units
//! of the first block's channels: the UNet keeps its skip connections
//! (~5 × c₀ at full latent size) beside the feed-forward's 8 × c₀ and a few
//! c₀-wide resnet tensors; the VAE's last up block holds ~12 × c₀ at full
//! image size. Attention scores are held in blocks of at most 64 MiB
//! (`nn::attention`). The cross-attention keys and values of the prompts
//! are kept through the denoising loop (`sd::text_context`). Measured SD1.5
//! peaks are below these figures: the estimate errs on the side of refusing.

use crate::error::{Error, Result};
use crate::sd::diffusers_weights;
use crate::sd::unet_2d::UNetConfig;
use crate::sd::vae::VaeConfig;
use crate::weights::{JsonConfig, TensorFile};
use burn::tensor::DType;
use std::path::{Path, PathBuf};

/// UNet activation elements per latent pixel and image (per guidance copy), in units of c₀.
const UNET_PER_LATENT_PIXEL: u64 = 20;
/// The style-control branch beside the UNet, as a fraction of the UNet's activations.
const CONTROL_SHARE: f64 = 0.5;
/// VAE decoder activation elements per image pixel and image, in units of its c₀.
const VAE_PER_PIXEL: u64 = 12;
/// Text tokens per prompt: CLIP's context length in SD1.5.
const TEXT_TOKENS: u64 = 77;
/// Attention score blocks (up to 64 MiB), other fixed buffers, and the
/// kept tap windows of the convolutions over 1×1 images and of the
/// stride-2 ones over 2×2 (`nn::cpu::conv::window_weights`: ≈ 130 MiB for
/// the SD1.5 UNet at an 8² latent, where the score blocks are small).
const FIXED: u64 = 256 << 20;

/// What a generation of `batch` images needs, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    pub weights: u64,
    pub activations: u64,
    /// The prompts' cross-attention keys and values, kept for all the steps.
    pub text_keys_values: u64,
    pub images: u64,
}

impl MemoryEstimate {
    pub fn total(&self) -> u64 {
        [self.weights, self.activations, self.text_keys_values, self.images, FIXED]
            .into_iter()
            .fold(0, u64::saturating_add)
    }
}

/// What one generation call would run: the image size, how many images go
/// through the networks together, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenerationShape {
    pub width: usize,
    pub height: usize,
    pub batch: usize,
    /// Classifier-free guidance doubles the UNet's batch.
    pub guided: bool,
    /// The style-control branch runs beside the UNet.
    pub styled: bool,
}

/// Elements of every tensor in the safetensors file `path`.
pub fn tensor_elements(path: &Path) -> Result<u64> {
    Ok(elements(&TensorFile::open(path)?))
}

/// Elements of every tensor in `file`.
fn elements(file: &TensorFile) -> u64 {
    let keys: Vec<&str> = file.keys().collect();
    keys.iter().filter_map(|k| file.shape(k)).map(|shape| shape.iter().map(|&d| d as u64).product::<u64>()).sum()
}

/// Outputs of every cross-attention key and value projection in `file`
/// (`…attn2.to_k.weight`, `…attn2.to_v.weight`): one text token's keys and
/// values over all the layers.
fn cross_attention_outputs(file: &TensorFile) -> u64 {
    let keys: Vec<&str> = file.keys().collect();
    keys.iter()
        .filter(|key| key.ends_with("attn2.to_k.weight") || key.ends_with("attn2.to_v.weight"))
        .filter_map(|key| file.shape(key))
        .map(|shape| shape.first().map_or(0, |&rows| rows as u64))
        .sum()
}

/// Estimates a generation over the SD1.5 folder `sd15` (and, when styled,
/// the StyleCodes weights file `style_weights`), with weights in `dtype`.
pub fn estimate(
    sd15: &Path,
    style_weights: Option<&Path>,
    shape: &GenerationShape,
    dtype: DType,
) -> Result<MemoryEstimate> {
    let unet = UNetConfig::from_file(&sd15.join("unet").join("config.json"))?;
    let vae = VaeConfig::from_file(&sd15.join("vae").join("config.json"))?;
    let unet_weights = TensorFile::open(&diffusers_weights(&sd15.join("unet"))?)?;
    let mut parameters = elements(&unet_weights)
        + tensor_elements(&diffusers_weights(&sd15.join("vae"))?)?
        + tensor_elements(&sd15.join("text_encoder").join("model.safetensors"))?;
    let mut key_value_outputs = cross_attention_outputs(&unet_weights);
    if let Some(path) = style_weights.filter(|_| shape.styled) {
        let style = TensorFile::open(path)?;
        parameters += elements(&style);
        key_value_outputs += cross_attention_outputs(&style);
    }
    let bytes = dtype.size() as u64;
    // diffusers' `vae_scale_factor`: 2 per VAE block after the first.
    let factor = 1u64 << vae.block_out_channels.len().saturating_sub(1).min(16);
    let (width, height, batch) = (shape.width as u64, shape.height as u64, shape.batch as u64);
    let latent_pixels = (width / factor) * (height / factor);
    let copies = batch * if shape.guided { 2 } else { 1 };
    let c0 = |channels: &[usize]| channels.first().copied().unwrap_or(1) as u64;
    let mut unet_activations =
        latent_pixels.saturating_mul(copies).saturating_mul(UNET_PER_LATENT_PIXEL * c0(&unet.block_out_channels));
    if shape.styled {
        unet_activations = unet_activations.saturating_add((unet_activations as f64 * CONTROL_SHARE) as u64);
    }
    let vae_activations =
        (width * height).saturating_mul(batch).saturating_mul(VAE_PER_PIXEL * c0(&vae.block_out_channels));
    Ok(MemoryEstimate {
        weights: parameters.saturating_mul(bytes),
        activations: unet_activations.max(vae_activations).saturating_mul(bytes),
        text_keys_values: copies.saturating_mul(TEXT_TOKENS).saturating_mul(key_value_outputs).saturating_mul(bytes),
        // The decoded f32 pixels read back, and the 8-bit images.
        images: (width * height * 3).saturating_mul(batch).saturating_mul(4 + 1),
    })
}

/// The memory this process may still use: Linux's `MemAvailable`, or
/// `None` where it cannot be read.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A size for people: `1.5 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The limit a request must fit in: the smaller of `max_memory` and the
/// memory available, and which of the two it is; `None` when neither is known.
pub fn limit(max_memory: Option<u64>, available: Option<u64>) -> Option<(u64, &'static str)> {
    match (max_memory, available) {
        (Some(cap), Some(free)) if free < cap => Some((free, "the machine's available memory")),
        (Some(cap), _) => Some((cap, "the --max-memory limit")),
        (None, Some(free)) => Some((free, "the machine's available memory")),
        (None, None) => None,
    }
}

/// Fails when `estimate` is over `limit`, naming the request, the estimate and the limit.
pub fn check(estimate: &MemoryEstimate, shape: &GenerationShape, limit: Option<(u64, &str)>) -> Result<()> {
    let Some((limit, source)) = limit else { return Ok(()) };
    if estimate.total() <= limit {
        return Ok(());
    }
    Err(Error::OutOfMemory {
        request: format!("{} image(s) of {}x{} in one batch", shape.batch, shape.width, shape.height),
        estimate: format!(
            "{} ({} weights, {} activations, {} text keys and values, {} images)",
            human_bytes(estimate.total()),
            human_bytes(estimate.weights),
            human_bytes(estimate.activations),
            human_bytes(estimate.text_keys_values),
            human_bytes(estimate.images)
        ),
        limit: format!("{} ({source})", human_bytes(limit)),
    })
}

/// A handle's memory check, apart from the handle, so a request can be
/// checked where the models are not (the server checks before queueing).
#[derive(Debug, Clone)]
pub struct MemoryCheck {
    pub sd15_dir: PathBuf,
    /// The StyleCodes weights file, counted for styled batches.
    pub style_weights: Option<PathBuf>,
    pub dtype: DType,
    /// `--max-memory`; the machine's available memory always applies too.
    pub max_memory: Option<u64>,
}

impl MemoryCheck {
    /// Refuses `request` before anything is allocated if one of its batches
    /// (styled and plain images run apart) is estimated over the limit.
    pub fn check(&self, request: &super::GenerateRequest) -> Result<()> {
        let limit = limit(self.max_memory, available_memory());
        for group in request.images.chunk_by(|a, b| a.style.is_none() == b.style.is_none()) {
            let styled = !group[0].style.is_none();
            let settings = &request.settings;
            let shape = GenerationShape {
                width: settings.width,
                height: settings.height,
                batch: group.len(),
                guided: settings.guidance(styled) > 1.0,
                styled,
            };
            // Unreadable weights are left to the loader, whose errors say how to fix them.
            if let Ok(estimate) = estimate(&self.sd15_dir, self.style_weights.as_deref(), &shape, self.dtype) {
                check(&estimate, &shape, limit)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_for_people() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
        assert_eq!(human_bytes(u64::MAX), "16777216.0 TiB");
    }

    #[test]
    fn the_smaller_limit_applies() {
        assert_eq!(limit(Some(10), Some(20)), Some((10, "the --max-memory limit")));
        assert_eq!(limit(Some(30), Some(20)), Some((20, "the machine's available memory")));
        assert_eq!(limit(None, Some(20)), Some((20, "the machine's available memory")));
        assert_eq!(limit(None, None), None);
    }

    #[test]
    fn over_the_limit_is_refused_with_every_figure() {
        let estimate = MemoryEstimate { weights: 1 << 30, activations: 2 << 30, text_keys_values: 1 << 20, images: 0 };
        let shape = GenerationShape { width: 1024, height: 768, batch: 2, guided: true, styled: false };
        let error = check(&estimate, &shape, Some((1 << 30, "the --max-memory limit"))).unwrap_err().to_string();
        assert!(error.contains("2 image(s) of 1024x768"), "{error}");
        assert!(
            error.contains("3.3 GiB (1.0 GiB weights, 2.0 GiB activations, 1.0 MiB text keys and values"),
            "{error}"
        );
        assert!(error.contains("1.0 GiB (the --max-memory limit)"), "{error}");
        assert!(check(&estimate, &shape, Some((4 << 30, "the --max-memory limit"))).is_ok());
        assert!(check(&estimate, &shape, None).is_ok());
    }
}
