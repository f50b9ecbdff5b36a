//! How stylecodes steer one generation: the code latents, decoded once into
//! the control branch's input, and the branch hooked into every UNet step.

use super::autoencoder::AttentionAutoencoder;
use super::control::{mid_grid, StyleControl};
use crate::sd::text_context::TextContext;
use crate::sd::unet_2d::UNet2DConditionModel;
use burn::prelude::*;

/// The style of a batch of images.
pub struct StyleCondition<'a, B: Backend> {
    pub autoencoder: &'a AttentionAutoencoder<B>,
    pub control: &'a StyleControl<B>,
    /// Dequantised code latents [B, 20], one per image (any float dtype).
    pub latents: Tensor<B, 2>,
    /// Conditioning scale `s` in 0..=1 (0 leaves the base untouched).
    pub scale: f64,
}

impl<B: Backend> StyleCondition<'_, B> {
    /// The control branch's input for diffusion latents of `[height, width]`:
    /// the decoded codes at the base's mid-block grid, in the model's dtype.
    pub fn features(&self, base: &UNet2DConditionModel<B>, latent_size: [usize; 2]) -> Tensor<B, 4> {
        let [height, width] = mid_grid(base, latent_size);
        let latents = self.latents.clone().cast(self.autoencoder.tgt_init.val().dtype());
        self.autoencoder.decode(latents, height, width)
    }

    /// The styled noise prediction for [`StableDiffusion::denoise`](crate::sd::pipeline::StableDiffusion::denoise),
    /// whose batch is `[cond; uncond]` when `guided` (both halves get the
    /// style; guidance is on text only). The style is decoded here, once.
    pub fn predictor<'b>(
        &'b self,
        base: &'b UNet2DConditionModel<B>,
        latent_size: [usize; 2],
        guided: bool,
    ) -> impl FnMut(Tensor<B, 4>, Tensor<B, 1>, TextContext<B>) -> Tensor<B, 4> + 'b {
        let features = self.features(base, latent_size);
        let features = if guided { Tensor::cat(vec![features.clone(), features], 0) } else { features };
        move |sample, timesteps, context| {
            base.forward_with_hook(sample, timesteps, &context, &mut self.control.hook(features.clone(), self.scale))
        }
    }
}
