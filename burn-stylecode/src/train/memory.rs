//! The memory a training run needs, estimated before anything is loaded, so
//! that a run too large for the machine is refused with its figures instead
//! of aborting in its first step (the generation estimate's twin,
//! [`crate::pipeline::memory`]).
//!
//! The estimate is:
//! - the frozen weights (SigLIP, CLIP, the VAE, the UNet) at the frozen dtype;
//! - the trainable weights (the autoencoder and the control branch, sized
//!   from the weights folder's StyleCodes file, whose shapes `--init paper`
//!   shares) in f32, four times: weights, gradients and AdamW's two moments,
//!   and a fifth with gradient accumulation;
//! - what the tape keeps for one micro-batch: the base UNet's up path and the
//!   control branch at every latent pixel, in units of the UNet's first
//!   block width c₀ ([`TAPE_PER_LATENT_PIXEL`], from the full-size training
//!   step benchmark, with margin).

use super::TrainConfig;
use crate::error::{Error, Result};
use crate::pipeline::memory::{available_memory, human_bytes, limit, tensor_elements};
use crate::pipeline::WeightsDir;
use crate::sd::diffusers_weights;
use crate::sd::unet_2d::UNetConfig;
use crate::sd::vae::VaeConfig;
use crate::weights::JsonConfig;

/// Activation elements the tape keeps per latent pixel and sample, in units
/// of c₀ (f32). Measured on the full-size training step benchmark (c₀ = 320):
/// from 128² to 256² at batch 1, the peak grew by ~280 × c₀ per latent pixel
/// on burn-flex and ~340 × c₀ on PyTorch; this bound has 3× margin.
pub const TAPE_PER_LATENT_PIXEL: u64 = 1_000;
/// Attention score blocks, the feature batch and other fixed buffers.
const FIXED: u64 = 512 << 20;

/// What a run of `config` needs, in bytes: (frozen weights, trainable state, tape).
pub fn estimate(weights: &WeightsDir, config: &TrainConfig) -> Result<(u64, u64, u64)> {
    let sd15 = weights.sd15()?;
    let unet = UNetConfig::from_file(&sd15.join("unet").join("config.json"))?;
    let vae = VaeConfig::from_file(&sd15.join("vae").join("config.json"))?;
    let frozen_elements = tensor_elements(&weights.siglip_weights()?)?
        + tensor_elements(&sd15.join("text_encoder").join("model.safetensors"))?
        + tensor_elements(&diffusers_weights(&sd15.join("vae"))?)?
        + tensor_elements(&diffusers_weights(&sd15.join("unet"))?)?;
    let trainable = tensor_elements(&weights.stylecodes_weights()?)?;
    let copies = if config.grad_accum > 1 { 5 } else { 4 };
    let factor = 1u64 << vae.block_out_channels.len().saturating_sub(1).min(16);
    let latent_pixels = (u64::from(config.resolution) / factor).pow(2);
    let c0 = unet.block_out_channels.first().copied().unwrap_or(1) as u64;
    let tape = latent_pixels.saturating_mul(config.batch_size as u64).saturating_mul(TAPE_PER_LATENT_PIXEL * c0 * 4);
    Ok((
        frozen_elements.saturating_mul(config.frozen_dtype().size() as u64),
        trainable.saturating_mul(4 * copies),
        tape.saturating_add(FIXED),
    ))
}

/// Refuses a run estimated over `config.max_memory` or the machine's
/// available memory, naming the run, the estimate and the limit. Unreadable
/// weights are left to the loader, whose errors say how to fix them.
pub fn check(weights: &WeightsDir, config: &TrainConfig) -> Result<()> {
    let Some((limit, source)) = limit(config.max_memory, available_memory()) else { return Ok(()) };
    let Ok((frozen_bytes, trainable, tape)) = estimate(weights, config) else { return Ok(()) };
    let (batch_size, resolution) = (config.batch_size, config.resolution);
    let total = frozen_bytes.saturating_add(trainable).saturating_add(tape);
    if total <= limit {
        return Ok(());
    }
    Err(Error::OutOfMemory {
        request: format!("training micro-batches of {batch_size} at {resolution}x{resolution}"),
        estimate: format!(
            "{} ({} frozen weights, {} trainable weights with gradients and AdamW state, {} of activations kept \
             for the backward pass)",
            human_bytes(total),
            human_bytes(frozen_bytes),
            human_bytes(trainable),
            human_bytes(tape)
        ),
        limit: format!("{} ({source})", human_bytes(limit)),
    })
}
