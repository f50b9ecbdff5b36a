//! One training step's loss: the ε-prediction MSE of the base UNet steered
//! by the control branch, with the autoencoder trained jointly through the
//! straight-through quantiser.
//!
//! The frozen networks build no tape: SigLIP, CLIP and the VAE encoder run
//! before the step (once, into the feature cache, or per batch), and the
//! base UNet up to its mid block runs on the inner backend; their outputs
//! are lifted.
//! Only the base up path (frozen parameters, but on the tape so gradients
//! reach the control branch through it), the control branch and the
//! autoencoder are differentiated.

use crate::error::{Error, Result};
use crate::pipeline::WeightsDir;
use crate::sd::pipeline::StableDiffusion;
use crate::sd::schedulers::{train_alphas_cumprod, PredictionType, SchedulerConfig};
use crate::sd::text_context::TextContext;
use crate::sd::unet_2d::{DownPath, UNet2DConditionModel};
use crate::siglip::SiglipVisionTransformer;
use crate::style::autoencoder::straight_through;
use crate::style::control::mid_grid;
use crate::style::StyleCodesModel;
use burn::module::{AutodiffModule, Module};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::DType;
use std::path::PathBuf;

/// The frozen base UNet as the step uses it: off the tape up to its mid
/// block, on the tape (without gradients of its own) after it, with the
/// training noise schedule and the VAE → diffusion latent map.
pub struct TrainBase<B: AutodiffBackend> {
    inner: UNet2DConditionModel<B::InnerBackend>,
    /// The same UNet on the tape; `from_inner` shares the parameters'
    /// storage, so there is no second copy of the weights.
    tape: UNet2DConditionModel<B>,
    /// ᾱ_t of every training timestep.
    alphas_cumprod: Vec<f32>,
    /// What the UNet predicts (the scheduler config's `prediction_type`),
    /// and so the loss's target: ε for SD1.5.
    prediction: PredictionType,
    /// Diffusion latents are `scaling_factor × (z − shift_factor)`.
    scaling_factor: f64,
    shift_factor: f64,
    /// The UNet's dtype: the frozen half of mixed precision.
    dtype: DType,
}

impl<B: AutodiffBackend> TrainBase<B> {
    /// `unet`, loaded in `dtype`, with `scheduler`'s training schedule.
    pub fn new(
        unet: UNet2DConditionModel<B::InnerBackend>,
        dtype: DType,
        scheduler: &SchedulerConfig,
        scaling_factor: f64,
        shift_factor: f64,
    ) -> Result<Self> {
        let alphas_cumprod = train_alphas_cumprod(scheduler)
            .map_err(|e| Error::Incompatible(format!("the training noise schedule: {e}")))?;
        let tape = UNet2DConditionModel::from_inner(unet.clone()).no_grad();
        let prediction = scheduler.prediction_type;
        Ok(Self { inner: unet, tape, alphas_cumprod, prediction, scaling_factor, shift_factor, dtype })
    }

    /// The base UNet on the tape.
    pub fn unet(&self) -> &UNet2DConditionModel<B> {
        &self.tape
    }

    pub fn num_train_timesteps(&self) -> usize {
        self.alphas_cumprod.len()
    }
}

/// The borrowed, frozen networks of a training run.
pub struct Frozen<B: AutodiffBackend> {
    pub siglip: SiglipVisionTransformer<B::InnerBackend>,
    /// The tokenizer, text encoder, VAE and base UNet, off the tape.
    pub sd: StableDiffusion<B::InnerBackend>,
    base: TrainBase<B>,
    /// SigLIP's input side.
    image_size: u32,
    dtype: DType,
    /// The files the frozen encoders were loaded from (the feature cache's fingerprint).
    sources: Vec<PathBuf>,
}

impl<B: AutodiffBackend> Frozen<B> {
    /// SigLIP and SD1.5 of a weights folder, in `dtype`.
    pub fn load(weights: &WeightsDir, dtype: DType, device: &B::Device) -> Result<Self> {
        let siglip_config = weights.siglip_config()?;
        let siglip = SiglipVisionTransformer::from_hf_dir(&weights.siglip_dir(), dtype, device)?;
        let sd15 = weights.sd15()?;
        let sd = StableDiffusion::load(&sd15, dtype, device)?;
        let base = TrainBase::new(
            sd.unet.clone(),
            dtype,
            &sd.scheduler_config,
            sd.vae.scaling_factor(),
            sd.vae.shift_factor(),
        )?;
        let mut sources = Vec::new();
        for dir in [weights.siglip_dir(), sd15.join("text_encoder"), sd15.join("tokenizer"), sd15.join("vae")] {
            let entries = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
            let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
            files.sort();
            sources.extend(files);
        }
        Ok(Self { siglip, sd, base, image_size: siglip_config.image_size as u32, dtype, sources })
    }

    /// The base UNet and schedule the step trains against.
    pub fn base(&self) -> &TrainBase<B> {
        &self.base
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The side of SigLIP's square input.
    pub fn image_size(&self) -> u32 {
        self.image_size
    }

    pub fn source_files(&self) -> &[PathBuf] {
        &self.sources
    }

    pub fn unet(&self) -> &UNet2DConditionModel<B> {
        self.base.unet()
    }

    pub fn num_train_timesteps(&self) -> usize {
        self.base.num_train_timesteps()
    }

    /// SigLIP's penultimate features [N, T, D] of preprocessed style images.
    pub fn style_features(&self, pixels: Tensor<B::InnerBackend, 4>) -> Tensor<B::InnerBackend, 3> {
        self.siglip.penultimate(pixels)
    }

    /// CLIP's last hidden state [N, L, C] of each prompt.
    pub fn prompt_context(&self, prompts: &[String]) -> Result<Tensor<B::InnerBackend, 3>> {
        let ids = self.sd.tokenizer.encode_batch(prompts)?;
        let len = self.sd.tokenizer.max_length();
        let flat: Vec<i64> = ids.iter().flatten().map(|&id| i64::from(id)).collect();
        let ids = Tensor::from_data(TensorData::new(flat, [prompts.len(), len]), self.sd.device());
        Ok(self.sd.text_encoder.forward(ids).last_hidden_state)
    }

    /// The VAE posterior (mean, log-variance) of targets [N, 3, R, R] in [-1, 1].
    pub fn posterior(
        &self,
        targets: Tensor<B::InnerBackend, 4>,
    ) -> (Tensor<B::InnerBackend, 4>, Tensor<B::InnerBackend, 4>) {
        self.sd.vae.encode(targets)
    }
}

/// One micro-batch, on the inner backend, with the frozen encoders' outputs
/// ([`Frozen::style_features`], [`Frozen::prompt_context`],
/// [`Frozen::posterior`]); everything random in the step (timesteps, noises,
/// dropout) is drawn by the caller, so that a resumed run and the PyTorch
/// twin see the same values.
pub struct Batch<B: Backend> {
    /// SigLIP penultimate features of the style images: [N, T, D].
    pub style_features: Tensor<B, 3>,
    /// CLIP context of the prompts (a dropped prompt has the empty prompt's): [N, L, C].
    pub context: Tensor<B, 3>,
    /// The targets' VAE posterior (cached): mean and log-variance [N, 4, h, w].
    pub latent_mean: Tensor<B, 4>,
    pub latent_logvar: Tensor<B, 4>,
    /// ε of the posterior sample, [N, 4, h, w].
    pub posterior_noise: Tensor<B, 4>,
    /// 1 keeps the style, 0 drops it (the zero latent): [N, 1].
    pub keep_style: Tensor<B, 2>,
    /// Training timesteps in `0..num_train_timesteps`, one per sample.
    pub timesteps: Vec<usize>,
    /// The noise the UNet must predict, [N, 4, h, w].
    pub noise: Tensor<B, 4>,
}

/// The step's loss (a scalar, f32) for `model` on `batch`, the control
/// branch mixing in with conditioning scale `scale`: the MSE of the UNet's
/// prediction against ε (SD1.5), or against `v` or `x₀` when the base's
/// scheduler says it predicts those.
pub fn loss<B: AutodiffBackend>(
    model: &StyleCodesModel<B>,
    base: &TrainBase<B>,
    batch: &Batch<B::InnerBackend>,
    scale: f64,
) -> Tensor<B, 1> {
    let device = batch.noise.device();
    let [n, channels, height, width] = batch.noise.dims();
    // Mixed precision: the frozen base and its activations in `half` (f32
    // without mixed precision), the trainable branch in its master dtype.
    let master = model.autoencoder.tgt_init.val().dtype();
    let half = base.dtype;

    // Frozen, off the tape.
    let context = batch.context.clone().cast(half);
    // The posterior sample in the UNet's space (`vae.config.scaling_factor`).
    let z0 = (batch.latent_mean.clone() + (batch.latent_logvar.clone() * 0.5).exp() * batch.posterior_noise.clone()
        - base.shift_factor)
        * base.scaling_factor;
    let per_sample =
        |values: Vec<f32>| Tensor::<B::InnerBackend, 1>::from_floats(values.as_slice(), &device).reshape([n, 1, 1, 1]);
    let abar: Vec<f32> = batch.timesteps.iter().map(|&t| base.alphas_cumprod[t]).collect();
    let signal = per_sample(abar.iter().map(|a| a.sqrt()).collect());
    let noise_level = per_sample(abar.iter().map(|a| (1.0 - a).sqrt()).collect());
    let noisy = z0.clone() * signal.clone() + batch.noise.clone() * noise_level.clone();
    // The target, as diffusers' training scripts take it from the scheduler.
    let target = match base.prediction {
        PredictionType::Epsilon => batch.noise.clone(),
        PredictionType::VPrediction => batch.noise.clone() * signal - z0 * noise_level,
        PredictionType::Sample => z0,
    };
    let t = Tensor::<B::InnerBackend, 1>::from_floats(
        batch.timesteps.iter().map(|&t| t as f32).collect::<Vec<_>>().as_slice(),
        &device,
    )
    .cast(half);
    let down = base.inner.down_path(noisy.cast(half), t, &TextContext::new(context.clone()));

    // Trainable, on the tape.
    let latent = model.autoencoder.encode(Tensor::from_inner(batch.style_features.clone().cast(master)));
    let keep: Tensor<B, 2> = Tensor::from_inner(batch.keep_style.clone());
    let latent = straight_through(latent) * keep.cast(master);
    let [grid_h, grid_w] = mid_grid(base.unet(), [height, width]);
    let style = model.autoencoder.decode(latent, grid_h, grid_w);
    let context = TextContext::new(Tensor::from_inner(context));
    let down = DownPath {
        mid: Tensor::from_inner(down.mid),
        skips: down.skips.into_iter().map(Tensor::from_inner).collect(),
        temb: Tensor::from_inner(down.temb),
    };
    let predicted = base.unet().up_path(down, &context, &mut model.control.hook(style, scale));
    debug_assert_eq!(predicted.dims(), [n, channels, height, width]);
    let error = predicted.cast(DType::F32) - Tensor::from_inner(target);
    error.powf_scalar(2.0).mean()
}
