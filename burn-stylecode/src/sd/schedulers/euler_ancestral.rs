//! Euler ancestral sampling, as diffusers' `EulerAncestralDiscreteScheduler`:
//! an Euler step down to a lower noise level, then fresh noise back up to
//! the next sigma.
//!
//! diffusers' class has no Karras option; with `use_karras_sigmas` this
//! scheduler takes Euler discrete's Karras schedule (sigmas and fractional
//! timesteps) and steps it ancestrally, as k-diffusion's
//! `sample_euler_ancestral` does with Karras sigmas.

use super::euler::SigmaSchedule;
use super::{
    combine, noise_like, unsupported, FinalSigmas, PredictionType, Scheduler, SchedulerConfig, SchedulerError,
    SchedulerKind, TimestepType,
};
use burn::prelude::*;

#[derive(Debug, Clone)]
pub struct EulerAncestralScheduler {
    schedule: SigmaSchedule,
    prediction_type: PredictionType,
}

impl EulerAncestralScheduler {
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize) -> Result<Self, SchedulerError> {
        if config.prediction_type == PredictionType::Sample {
            // Not implemented in diffusers either.
            return Err(unsupported(SchedulerKind::EulerAncestral, "prediction_type", "sample"));
        }
        // Fields diffusers' ancestral scheduler does not have keep Euler's defaults.
        let config = SchedulerConfig {
            final_sigmas_type: FinalSigmas::Zero,
            timestep_type: TimestepType::Discrete,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            ..config.clone()
        };
        Ok(Self {
            schedule: SigmaSchedule::new(&config, num_inference_steps, SchedulerKind::EulerAncestral)?,
            prediction_type: config.prediction_type,
        })
    }
}

impl<B: Backend> Scheduler<B> for EulerAncestralScheduler {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::EulerAncestral
    }

    fn timesteps(&self) -> &[f64] {
        &self.schedule.timesteps
    }

    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.schedule.sigmas)
    }

    fn init_noise_sigma(&self) -> f64 {
        self.schedule.init_noise_sigma
    }

    fn scale_model_input(&self, sample: Tensor<B, 4>, step_index: usize) -> Tensor<B, 4> {
        self.schedule.scale_model_input(sample, step_index)
    }

    fn step(
        &mut self,
        model_output: Tensor<B, 4>,
        step_index: usize,
        sample: Tensor<B, 4>,
        noise: Option<Tensor<B, 4>>,
    ) -> Tensor<B, 4> {
        let sigma_from = self.schedule.sigmas[step_index] as f64;
        let sigma_to = self.schedule.sigmas[step_index + 1] as f64;
        // Split sigma_to² into a deterministic part sigma_down² and fresh
        // noise sigma_up².
        let sigma_up =
            (sigma_to * sigma_to * (sigma_from * sigma_from - sigma_to * sigma_to) / (sigma_from * sigma_from)).sqrt();
        let sigma_down = (sigma_to * sigma_to - sigma_up * sigma_up).sqrt();
        let dt = sigma_down - sigma_from;
        let (a, b) = SigmaSchedule::denoised_coefficients(self.prediction_type, sigma_from);
        let noise = noise_like(noise, &sample);
        let prev = combine(sample, 1.0 + (1.0 - a) * dt / sigma_from, model_output, -b * dt / sigma_from);
        prev + noise.mul_scalar(sigma_up)
    }

    fn add_noise(
        &self,
        original: Tensor<B, 4>,
        noise: Tensor<B, 4>,
        timesteps: &[f64],
    ) -> Result<Tensor<B, 4>, SchedulerError> {
        self.schedule.add_noise(SchedulerKind::EulerAncestral, original, noise, timesteps)
    }
}
