//! One training step's loss: the ε-prediction MSE of the base UNet steered
//! by the control branch, with the autoencoder trained jointly through the
//! straight-through quantiser.
//!
//! The frozen networks build no tape: SigLIP, CLIP, and the base UNet up to
//! its mid block run on the inner backend and their outputs are lifted.
//! Only the base up path (frozen parameters, but on the tape so gradients
//! reach the control branch through it), the control branch and the
//! autoencoder are differentiated.

use crate::sd::clip::ClipTextTransformer;
use crate::sd::unet_2d::{DownPath, UNet2DConditionModel};
use crate::siglip::SiglipVisionTransformer;
use crate::style::autoencoder::straight_through;
use crate::style::control::mid_grid;
use crate::style::StyleCodesModel;
use burn::module::{AutodiffModule, Module};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

/// SD's latent scaling factor (`vae.config.scaling_factor`).
pub const VAE_SCALING: f32 = 0.18215;

/// The borrowed, frozen networks of a training run.
pub struct Frozen<B: AutodiffBackend> {
    pub siglip: SiglipVisionTransformer<B::InnerBackend>,
    pub text_encoder: ClipTextTransformer<B::InnerBackend>,
    /// The base UNet on the tape (its up path), without gradients of its own.
    unet: UNet2DConditionModel<B>,
    /// The same weights on the inner backend (its down path and mid block).
    unet_inner: UNet2DConditionModel<B::InnerBackend>,
    /// ᾱ_t of every training timestep.
    alphas_cumprod: Vec<f32>,
}

impl<B: AutodiffBackend> Frozen<B> {
    pub fn new(
        siglip: SiglipVisionTransformer<B::InnerBackend>,
        text_encoder: ClipTextTransformer<B::InnerBackend>,
        unet: UNet2DConditionModel<B>,
        alphas_cumprod: Vec<f32>,
    ) -> Self {
        let unet = unet.no_grad();
        // `valid` shares the parameters' storage: no second copy of the weights.
        let unet_inner = unet.valid();
        Self { siglip, text_encoder, unet, unet_inner, alphas_cumprod }
    }

    pub fn unet(&self) -> &UNet2DConditionModel<B> {
        &self.unet
    }

    pub fn num_train_timesteps(&self) -> usize {
        self.alphas_cumprod.len()
    }
}

/// One micro-batch, on the inner backend; everything random in the step
/// (timesteps, noises, dropout) is drawn by the caller, so that a resumed
/// run and the PyTorch twin see the same values.
pub struct Batch<B: Backend> {
    /// Style images after the SigLIP preprocessing: [N, 3, S, S].
    pub style_pixels: Tensor<B, 4>,
    /// The targets' VAE posterior (cached): mean and log-variance [N, 4, h, w].
    pub latent_mean: Tensor<B, 4>,
    pub latent_logvar: Tensor<B, 4>,
    /// ε of the posterior sample, [N, 4, h, w].
    pub posterior_noise: Tensor<B, 4>,
    /// Prompt token ids (a dropped prompt is the empty prompt's): [N, L].
    pub prompt_ids: Tensor<B, 2, Int>,
    /// 1 keeps the style, 0 drops it (the zero latent): [N, 1].
    pub keep_style: Tensor<B, 2>,
    /// Training timesteps in `0..num_train_timesteps`, one per sample.
    pub timesteps: Vec<usize>,
    /// The noise the UNet must predict, [N, 4, h, w].
    pub noise: Tensor<B, 4>,
}

/// The step's loss (a scalar, f32) for `model` on `batch`, the control
/// branch mixing in with conditioning scale `scale`.
pub fn loss<B: AutodiffBackend>(
    model: &StyleCodesModel<B>,
    frozen: &Frozen<B>,
    batch: &Batch<B::InnerBackend>,
    scale: f64,
) -> Tensor<B, 1> {
    let device = batch.noise.device();
    let [n, channels, height, width] = batch.noise.dims();
    let dtype = model.autoencoder.tgt_init.val().dtype();

    // Frozen, off the tape.
    let features = frozen.siglip.penultimate(batch.style_pixels.clone());
    let context = frozen.text_encoder.forward(batch.prompt_ids.clone()).last_hidden_state;
    let z0 = (batch.latent_mean.clone() + (batch.latent_logvar.clone() * 0.5).exp() * batch.posterior_noise.clone())
        * VAE_SCALING;
    let per_sample =
        |values: Vec<f32>| Tensor::<B::InnerBackend, 1>::from_floats(values.as_slice(), &device).reshape([n, 1, 1, 1]);
    let abar: Vec<f32> = batch.timesteps.iter().map(|&t| frozen.alphas_cumprod[t]).collect();
    let signal = per_sample(abar.iter().map(|a| a.sqrt()).collect());
    let noise_level = per_sample(abar.iter().map(|a| (1.0 - a).sqrt()).collect());
    let noisy = z0 * signal + batch.noise.clone() * noise_level;
    let t = Tensor::<B::InnerBackend, 1>::from_floats(
        batch.timesteps.iter().map(|&t| t as f32).collect::<Vec<_>>().as_slice(),
        &device,
    )
    .cast(dtype);
    let down = frozen.unet_inner.down_path(noisy.cast(dtype), t, &context);

    // Trainable, on the tape.
    let latent = model.autoencoder.encode(Tensor::from_inner(features));
    let keep: Tensor<B, 2> = Tensor::from_inner(batch.keep_style.clone());
    let latent = straight_through(latent) * keep.cast(dtype);
    let [grid_h, grid_w] = mid_grid(frozen.unet(), [height, width]);
    let style = model.autoencoder.decode(latent, grid_h, grid_w);
    let context = Tensor::from_inner(context);
    let down = DownPath {
        mid: Tensor::from_inner(down.mid),
        skips: down.skips.into_iter().map(Tensor::from_inner).collect(),
        temb: Tensor::from_inner(down.temb),
    };
    let predicted = frozen.unet().up_path(down, &context, &mut model.control.hook(style, scale));
    debug_assert_eq!(predicted.dims(), [n, channels, height, width]);
    let error = predicted.cast(burn::tensor::DType::F32) - Tensor::from_inner(batch.noise.clone());
    error.powf_scalar(2.0).mean()
}
