//! DPM-Solver++ multistep (Lu et al. 2022), as diffusers'
//! `DPMSolverMultistepScheduler` with `algorithm_type = "dpmsolver++"`:
//! orders 1 and 2 ("2M"), midpoint or Heun second-order rule.
//!
//! The second-order update needs the previous step's predicted clean sample,
//! so this scheduler keeps it: steps must be taken in order. A step that
//! does not follow the previous one (step 0, or a jump, as when img2img
//! starts part-way) starts a fresh history with a first-order update, as a
//! fresh diffusers scheduler would.

use super::schedule::{
    alphas_cumprod, interp, karras_sigmas, log_sigmas, np_arange, np_linspace, sigma_to_t, train_sigmas,
};
use super::{
    add_noise_with, check_steps, check_timesteps, combine, index_for_timestep, scale, unsupported, BetaSchedule,
    FinalSigmas, PredictionType, Scheduler, SchedulerConfig, SchedulerError, SchedulerKind, SolverType,
    TimestepSpacing,
};
use burn::prelude::*;

const KIND: SchedulerKind = SchedulerKind::DpmPlusPlus2M;

/// DPM-Solver++ (2M with the default `solver_order = 2`) over a fixed
/// schedule, keeping the previous step's prediction.
pub struct DpmSolverMultistepScheduler<B: Backend> {
    /// Whole numbers.
    timesteps: Vec<f64>,
    /// One per timestep, then the final sigma.
    sigmas: Vec<f32>,
    prediction_type: PredictionType,
    solver_order: usize,
    solver_type: SolverType,
    /// Whether the last step is first order.
    first_order_final: bool,
    /// The previous step's index and predicted clean sample.
    previous: Option<(usize, Tensor<B, 4>)>,
}

impl<B: Backend> DpmSolverMultistepScheduler<B> {
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize) -> Result<Self, SchedulerError> {
        config.check()?;
        check_steps(config, num_inference_steps)?;
        for (field, set) in [
            ("thresholding", config.thresholding),
            ("use_exponential_sigmas", config.use_exponential_sigmas),
            ("use_beta_sigmas", config.use_beta_sigmas),
            ("use_lu_lambdas", config.use_lu_lambdas),
            ("use_flow_sigmas", config.use_flow_sigmas),
        ] {
            if set {
                return Err(unsupported(KIND, field, true));
            }
        }
        if config.solver_order > 2 {
            return Err(unsupported(KIND, "solver_order", config.solver_order));
        }

        let alphas_cumprod = alphas_cumprod(config, true)?;
        let train_sigmas = train_sigmas(&alphas_cumprod);
        let (timesteps, sigmas) = if config.use_karras_sigmas {
            // Over the whole training range: diffusers' DPM-Solver has no
            // sigma_min/sigma_max settings.
            let sigma_min = train_sigmas[0] as f64;
            let sigma_max = train_sigmas[train_sigmas.len() - 1] as f64;
            let sigmas = karras_sigmas(sigma_min, sigma_max, num_inference_steps);
            let log_sigmas = log_sigmas(&train_sigmas);
            let timesteps = sigmas
                .iter()
                .map(|&s| {
                    let t = sigma_to_t(s, &log_sigmas);
                    if config.beta_schedule == BetaSchedule::SquaredCosCapV2 {
                        t.trunc() // float timesteps cast to int64
                    } else {
                        t.round_ties_even()
                    }
                })
                .collect();
            (timesteps, sigmas)
        } else {
            let timesteps = spaced_timesteps(config, &alphas_cumprod, num_inference_steps)?;
            let sigmas = timesteps.iter().map(|&t| interp(t, &train_sigmas)).collect();
            (timesteps, sigmas)
        };
        let final_sigma = match config.final_sigmas_type {
            FinalSigmas::Zero => 0.0,
            FinalSigmas::SigmaMin => train_sigmas[0] as f64,
        };
        let sigmas: Vec<f32> = sigmas.into_iter().chain([final_sigma]).map(|s| s as f32).collect();
        let steps = timesteps.len();
        Ok(Self {
            timesteps,
            sigmas,
            prediction_type: config.prediction_type,
            solver_order: config.solver_order,
            solver_type: config.solver_type,
            first_order_final: config.euler_at_final
                || (config.lower_order_final && steps < 15)
                || config.final_sigmas_type == FinalSigmas::Zero,
            previous: None,
        })
    }

    /// `(alpha_t, sigma_t, lambda_t)` of noise level `sigma`: the signal and
    /// noise scales of the variance-preserving sample, and its log-SNR.
    fn alpha_sigma_lambda(&self, index: usize) -> (f64, f64, f64) {
        let sigma = self.sigmas[index] as f64;
        let alpha_t = 1.0 / (sigma * sigma + 1.0).sqrt();
        let sigma_t = sigma * alpha_t;
        (alpha_t, sigma_t, alpha_t.ln() - sigma_t.ln())
    }
}

/// diffusers' DPM-Solver timesteps: `steps + 1` points, the last dropped,
/// over the training timesteps above `lambda_min_clipped`.
fn spaced_timesteps(
    config: &SchedulerConfig,
    alphas_cumprod: &[f32],
    steps: usize,
) -> Result<Vec<f64>, SchedulerError> {
    let train = config.num_train_timesteps;
    // searchsorted(flip(lambda), lambda_min_clipped): the clipped low-SNR end.
    let clipped = match config.lambda_min_clipped {
        Some(min) if min > f64::NEG_INFINITY => alphas_cumprod
            .iter()
            .filter(|&&a| {
                let a = a as f64;
                0.5 * a.ln() - 0.5 * (1.0 - a).ln() < min
            })
            .count(),
        _ => 0,
    };
    let last_timestep = train - clipped;
    if last_timestep < 2 {
        return Err(super::invalid(
            "lambda_min_clipped",
            config.lambda_min_clipped.unwrap_or(f64::NAN),
            "clips every timestep",
        ));
    }
    let timesteps: Vec<f64> = match config.timestep_spacing.unwrap_or(TimestepSpacing::Linspace) {
        TimestepSpacing::Linspace => np_linspace(0.0, (last_timestep - 1) as f64, steps + 1)
            .into_iter()
            .rev()
            .take(steps)
            .map(f64::round_ties_even)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = last_timestep / (steps + 1);
            (1..=steps).rev().map(|i| (i * ratio + config.steps_offset) as f64).collect()
        }
        TimestepSpacing::Trailing => np_arange(last_timestep as f64, 0.0, -(train as f64 / steps as f64))
            .into_iter()
            .map(|t| t.round_ties_even() - 1.0)
            .collect(),
    };
    check_timesteps(config, &timesteps)?;
    Ok(timesteps)
}

impl<B: Backend> Scheduler<B> for DpmSolverMultistepScheduler<B> {
    fn kind(&self) -> SchedulerKind {
        KIND
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.sigmas)
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
        _noise: Option<Tensor<B, 4>>,
    ) -> Tensor<B, 4> {
        let (alpha_s0, sigma_s0, lambda_s0) = self.alpha_sigma_lambda(step_index);
        let (alpha_t, sigma_t, lambda_t) = self.alpha_sigma_lambda(step_index + 1);

        // The model's prediction of the clean sample: x̂₀ = a·sample + b·model_output.
        let (a, b) = match self.prediction_type {
            PredictionType::Epsilon => (1.0 / alpha_s0, -sigma_s0 / alpha_s0),
            PredictionType::VPrediction => (alpha_s0, -sigma_s0),
            PredictionType::Sample => (0.0, 1.0),
        };
        let x0 = combine(sample.clone(), a, model_output, b);

        let previous = match self.previous.take() {
            Some((index, x0_prev)) if index + 1 == step_index => Some(x0_prev),
            _ => None,
        };
        let last = step_index + 1 == self.timesteps.len();
        let first_order = self.solver_order == 1 || (last && self.first_order_final);

        // With a zero final sigma, lambda_t = inf, h = inf and exp(-h) = 0:
        // the last step returns x̂₀.
        let h = lambda_t - lambda_s0;
        let phi = -alpha_t * (-h).exp_m1(); // -alpha_t·(e^{-h} - 1)
        let sample_coefficient = sigma_t / sigma_s0;
        let prev_sample = match previous {
            Some(x0_prev) if !first_order => {
                let (_, _, lambda_s1) = self.alpha_sigma_lambda(step_index - 1);
                let r0 = (lambda_s0 - lambda_s1) / h;
                // D1 = (x̂₀ - x̂₀_prev) / r0, weighted by the solver's rule.
                let d1_weight = match self.solver_type {
                    SolverType::Midpoint => 0.5 * phi,
                    SolverType::Heun => alpha_t * ((-h).exp_m1() / h + 1.0),
                } / r0;
                scale(sample, sample_coefficient) + combine(x0.clone(), phi + d1_weight, x0_prev, -d1_weight)
            }
            _ => combine(sample, sample_coefficient, x0.clone(), phi),
        };
        self.previous = Some((step_index, x0));
        prev_sample
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
                let sigma = self.sigmas[index_for_timestep(KIND, &self.timesteps, t)?];
                let alpha_t = 1.0 / (sigma * sigma + 1.0).sqrt();
                Ok((alpha_t, sigma * alpha_t))
            })
            .collect::<Result<Vec<_>, SchedulerError>>()?;
        add_noise_with(original, noise, &coefficients)
    }
}
