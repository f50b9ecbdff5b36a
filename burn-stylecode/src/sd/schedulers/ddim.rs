//! DDIM (Song et al. 2021), as diffusers' `DDIMScheduler`.

use super::schedule::{alphas_cumprod, spaced_timesteps};
use super::{
    add_noise_with, check_steps, check_timesteps, combine, noise_like, unsupported, PredictionType, Scheduler,
    SchedulerConfig, SchedulerError, SchedulerKind, TimestepSpacing,
};
use burn::prelude::*;

/// DDIM over `num_inference_steps` of the training timesteps; deterministic
/// unless [`DdimScheduler::with_eta`] gives it some noise.
#[derive(Debug, Clone)]
pub struct DdimScheduler {
    alphas_cumprod: Vec<f32>,
    /// ᾱ of the step after the last (1, or ᾱ₀ with `set_alpha_to_one = false`).
    final_alpha_cumprod: f32,
    timesteps: Vec<f64>,
    /// Distance to the previous timestep: `num_train_timesteps / steps`,
    /// whatever the spacing, as diffusers has it.
    step_ratio: usize,
    prediction_type: PredictionType,
    clip_sample_range: Option<f64>,
    eta: f64,
}

impl DdimScheduler {
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize) -> Result<Self, SchedulerError> {
        config.check()?;
        check_steps(config, num_inference_steps)?;
        if config.thresholding {
            return Err(unsupported(SchedulerKind::Ddim, "thresholding", true));
        }
        let alphas_cumprod = alphas_cumprod(config, false)?;
        let spacing = config.timestep_spacing.unwrap_or(TimestepSpacing::Leading);
        let timesteps = spaced_timesteps(config, spacing, num_inference_steps);
        check_timesteps(config, &timesteps)?;
        Ok(Self {
            final_alpha_cumprod: if config.set_alpha_to_one { 1.0 } else { alphas_cumprod[0] },
            alphas_cumprod,
            timesteps,
            step_ratio: config.num_train_timesteps / num_inference_steps,
            prediction_type: config.prediction_type,
            clip_sample_range: config.clip_sample.then_some(config.clip_sample_range),
            eta: 0.0,
        })
    }

    /// The weight of the fresh noise added at each step: 0 is DDIM, 1 is
    /// DDPM-like ancestral sampling.
    pub fn with_eta(mut self, eta: f64) -> Self {
        self.eta = eta;
        self
    }

    pub fn eta(&self) -> f64 {
        self.eta
    }

    fn alpha_cumprod_at(&self, timestep: i64) -> f64 {
        if timestep >= 0 {
            self.alphas_cumprod[timestep as usize] as f64
        } else {
            self.final_alpha_cumprod as f64
        }
    }
}

impl<B: Backend> Scheduler<B> for DdimScheduler {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Ddim
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> Option<&[f32]> {
        None
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, sample: Tensor<B, 4>, _step_index: usize) -> Tensor<B, 4> {
        sample
    }

    fn step(
        &mut self,
        model_output: Tensor<B, 4>,
        step_index: usize,
        sample: Tensor<B, 4>,
        noise: Option<Tensor<B, 4>>,
    ) -> Tensor<B, 4> {
        let timestep = self.timesteps[step_index] as i64;
        let prev_timestep = timestep - self.step_ratio as i64;
        let alpha_t = self.alpha_cumprod_at(timestep);
        let alpha_prev = self.alpha_cumprod_at(prev_timestep);
        let beta_t = 1.0 - alpha_t;
        let (sqrt_alpha, sqrt_beta) = (alpha_t.sqrt(), beta_t.sqrt());

        // x̂₀ = a·sample + b·model_output and ε̂ = c·sample + d·model_output.
        let ((a, b), (c, d)) = match self.prediction_type {
            PredictionType::Epsilon => ((1.0 / sqrt_alpha, -sqrt_beta / sqrt_alpha), (0.0, 1.0)),
            PredictionType::Sample => ((0.0, 1.0), (1.0 / sqrt_beta, -sqrt_alpha / sqrt_beta)),
            PredictionType::VPrediction => ((sqrt_alpha, -sqrt_beta), (sqrt_beta, sqrt_alpha)),
        };

        let variance = (1.0 - alpha_prev) / beta_t * (1.0 - alpha_t / alpha_prev);
        let std_dev = self.eta * variance.sqrt();
        let direction = (1.0 - alpha_prev - std_dev * std_dev).sqrt();
        let sqrt_alpha_prev = alpha_prev.sqrt();

        let prev_sample = match self.clip_sample_range {
            Some(range) => {
                let x0 = combine(sample.clone(), a, model_output.clone(), b).clamp(-range, range);
                let eps = combine(sample, c, model_output, d);
                combine(x0, sqrt_alpha_prev, eps, direction)
            }
            // sqrt(ᾱ_prev)·x̂₀ + direction·ε̂, collected per input tensor.
            None => combine(
                sample.clone(),
                sqrt_alpha_prev * a + direction * c,
                model_output,
                sqrt_alpha_prev * b + direction * d,
            ),
        };
        if self.eta > 0.0 {
            let noise = noise_like(noise, &prev_sample);
            prev_sample + noise.mul_scalar(std_dev)
        } else {
            prev_sample
        }
    }

    fn add_noise(
        &self,
        original: Tensor<B, 4>,
        noise: Tensor<B, 4>,
        timesteps: &[f64],
    ) -> Result<Tensor<B, 4>, SchedulerError> {
        let coefficients = timesteps
            .iter()
            .map(|&t| {
                let n = self.alphas_cumprod.len();
                if t.fract() != 0.0 || !(0.0..n as f64).contains(&t) {
                    return Err(SchedulerError::NotATrainTimestep { timestep: t, num_train_timesteps: n });
                }
                let alpha = self.alphas_cumprod[t as usize];
                Ok((alpha.sqrt(), (1.0 - alpha).sqrt()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        add_noise_with(original, noise, &coefficients)
    }
}
