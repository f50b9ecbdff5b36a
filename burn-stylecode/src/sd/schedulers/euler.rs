//! Euler's method on the probability-flow ODE (Karras et al. 2022,
//! algorithm 2 without churn), as diffusers' `EulerDiscreteScheduler`.

use super::schedule::{
    alphas_cumprod, interp, karras_sigmas, log_sigmas, np_linspace, sigma_to_t, spaced_timesteps, train_sigmas,
};
use super::{
    add_noise_with, check_steps, check_timesteps, combine, index_for_timestep, unsupported, FinalSigmas,
    PredictionType, Scheduler, SchedulerConfig, SchedulerError, SchedulerKind, TimestepSpacing, TimestepType,
};
use burn::prelude::*;

/// The timesteps and noise levels of the Euler schedulers (discrete and
/// ancestral), as diffusers' `EulerDiscreteScheduler.set_timesteps` makes
/// them.
#[derive(Debug, Clone)]
pub(super) struct SigmaSchedule {
    /// float32 values, as float64.
    pub timesteps: Vec<f64>,
    /// One per timestep, then the final sigma.
    pub sigmas: Vec<f32>,
    pub init_noise_sigma: f64,
}

impl SigmaSchedule {
    pub fn new(config: &SchedulerConfig, steps: usize, kind: SchedulerKind) -> Result<Self, SchedulerError> {
        config.check()?;
        check_steps(config, steps)?;
        for (field, set) in
            [("use_exponential_sigmas", config.use_exponential_sigmas), ("use_beta_sigmas", config.use_beta_sigmas)]
        {
            if set {
                return Err(unsupported(kind, field, true));
            }
        }
        if config.timestep_type == TimestepType::Continuous && config.prediction_type == PredictionType::VPrediction {
            return Err(unsupported(kind, "timestep_type", "continuous"));
        }

        let alphas_cumprod = alphas_cumprod(config, true)?;
        let train_sigmas = train_sigmas(&alphas_cumprod);
        let spacing = config.timestep_spacing.unwrap_or(TimestepSpacing::Linspace);
        let mut timesteps: Vec<f64> = match spacing {
            // np.linspace(0, train - 1, steps, dtype=float32)[::-1]: not rounded.
            TimestepSpacing::Linspace => np_linspace(0.0, (config.num_train_timesteps - 1) as f64, steps)
                .into_iter()
                .rev()
                .map(|t| t as f32 as f64)
                .collect(),
            other => spaced_timesteps(config, other, steps),
        };
        check_timesteps(config, &timesteps)?;
        let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| interp(t, &train_sigmas)).collect();
        if config.use_karras_sigmas {
            let sigma_min = config.sigma_min.unwrap_or(sigmas[sigmas.len() - 1]);
            let sigma_max = config.sigma_max.unwrap_or(sigmas[0]);
            sigmas = karras_sigmas(sigma_min, sigma_max, steps);
            let log_sigmas = log_sigmas(&train_sigmas);
            timesteps = sigmas.iter().map(|&s| sigma_to_t(s, &log_sigmas) as f32 as f64).collect();
        }
        let final_sigma = match config.final_sigmas_type {
            FinalSigmas::Zero => 0.0,
            FinalSigmas::SigmaMin => train_sigmas[0] as f64,
        };
        let sigmas: Vec<f32> = sigmas.into_iter().chain([final_sigma]).map(|s| s as f32).collect();

        let max_sigma = sigmas.iter().copied().fold(f32::MIN, f32::max);
        let init_noise_sigma = match spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max_sigma,
            TimestepSpacing::Leading => (max_sigma * max_sigma + 1.0).sqrt(),
        };
        Ok(Self { timesteps, sigmas, init_noise_sigma: init_noise_sigma as f64 })
    }

    /// `sample / sqrt(sigma² + 1)`: the UNet sees unit-variance input.
    pub fn scale_model_input<B: Backend>(&self, sample: Tensor<B, 4>, step_index: usize) -> Tensor<B, 4> {
        let sigma = self.sigmas[step_index];
        sample.div_scalar((sigma * sigma + 1.0).sqrt())
    }

    /// The coefficients `(a, b)` of the predicted clean sample
    /// `x̂₀ = a·sample + b·model_output` at noise level `sigma`.
    pub fn denoised_coefficients(prediction_type: PredictionType, sigma: f64) -> (f64, f64) {
        match prediction_type {
            PredictionType::Epsilon => (1.0, -sigma),
            PredictionType::VPrediction => {
                let variance = sigma * sigma + 1.0;
                (1.0 / variance, -sigma / variance.sqrt())
            }
            PredictionType::Sample => (0.0, 1.0),
        }
    }

    /// `original + sigma·noise` at each of `timesteps` (timesteps of this
    /// schedule).
    pub fn add_noise<B: Backend>(
        &self,
        kind: SchedulerKind,
        original: Tensor<B, 4>,
        noise: Tensor<B, 4>,
        timesteps: &[f64],
    ) -> Result<Tensor<B, 4>, SchedulerError> {
        let coefficients = timesteps
            .iter()
            .map(|&t| Ok((1.0, self.sigmas[index_for_timestep(kind, &self.timesteps, t)?])))
            .collect::<Result<Vec<_>, SchedulerError>>()?;
        add_noise_with(original, noise, &coefficients)
    }
}

/// Euler discrete: deterministic first-order steps in sigma.
#[derive(Debug, Clone)]
pub struct EulerDiscreteScheduler {
    schedule: SigmaSchedule,
    prediction_type: PredictionType,
}

impl EulerDiscreteScheduler {
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize) -> Result<Self, SchedulerError> {
        Ok(Self {
            schedule: SigmaSchedule::new(config, num_inference_steps, SchedulerKind::Euler)?,
            prediction_type: config.prediction_type,
        })
    }
}

impl<B: Backend> Scheduler<B> for EulerDiscreteScheduler {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Euler
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
        _noise: Option<Tensor<B, 4>>,
    ) -> Tensor<B, 4> {
        let sigma = self.schedule.sigmas[step_index] as f64;
        let dt = self.schedule.sigmas[step_index + 1] as f64 - sigma;
        // sample + dt·(sample - x̂₀)/sigma, with x̂₀ = a·sample + b·model_output.
        let (a, b) = SigmaSchedule::denoised_coefficients(self.prediction_type, sigma);
        combine(sample, 1.0 + (1.0 - a) * dt / sigma, model_output, -b * dt / sigma)
    }

    fn add_noise(
        &self,
        original: Tensor<B, 4>,
        noise: Tensor<B, 4>,
        timesteps: &[f64],
    ) -> Result<Tensor<B, 4>, SchedulerError> {
        self.schedule.add_noise(SchedulerKind::Euler, original, noise, timesteps)
    }
}
