//! Noise schedulers, one file each, behind one trait: DDIM, Euler, Euler
//! ancestral and DPM-Solver++ 2M, each mirroring diffusers 0.42.
//!
//! A scheduler is built from a diffusers `scheduler_config.json` (any
//! scheduler's: as with diffusers' `from_config`, fields a scheduler does not
//! know are ignored and missing ones take that scheduler's defaults) and a
//! number of inference steps. The sampling loop is then
//!
//! ```text
//! let mut scheduler = build_scheduler::<B>(kind, &config, 20, None)?;
//! let mut latents = noise.mul_scalar(scheduler.init_noise_sigma());
//! for (i, &t) in scheduler.timesteps().to_vec().iter().enumerate() {
//!     let input = scheduler.scale_model_input(latents.clone(), i);
//!     let eps = unet.forward(input, t, ...);
//!     latents = scheduler.step(eps, i, latents, None);
//! }
//! ```
//!
//! The schedule arrays (betas, alphas_cumprod, sigmas, timesteps) are computed
//! on the host in the dtypes diffusers uses (torch float32 for betas and
//! alphas_cumprod, numpy float64 for interpolation, float32 sigmas), so the
//! timesteps match diffusers' and each step's output agrees to float32
//! rounding. Each step is a few scaled sums of tensors with scalar
//! coefficients.

pub mod ddim;
pub mod dpm_solver_multistep;
pub mod euler;
pub mod euler_ancestral;
mod schedule;

pub use ddim::DdimScheduler;
pub use dpm_solver_multistep::DpmSolverMultistepScheduler;
pub use euler::EulerDiscreteScheduler;
pub use euler_ancestral::EulerAncestralScheduler;

use crate::weights::JsonConfig;
use burn::prelude::*;
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::str::FromStr;

/// One denoising algorithm over a fixed list of timesteps.
///
/// Steps are addressed by their index into [`Scheduler::timesteps`]. Calling
/// `step` with an index out of range is a programming error and panics.
pub trait Scheduler<B: Backend>: Send {
    /// Which algorithm this is.
    fn kind(&self) -> SchedulerKind;

    /// The timesteps to give the UNet, first to last (diffusers'
    /// `scheduler.timesteps`; whole numbers except for Euler with Karras
    /// sigmas, whose values are float32).
    fn timesteps(&self) -> &[f64];

    /// The noise levels, one per timestep plus the final one (diffusers'
    /// `scheduler.sigmas`); `None` for DDIM, which has none.
    fn sigmas(&self) -> Option<&[f32]>;

    /// The standard deviation of the initial noise: multiply unit Gaussian
    /// latents by this before the first step.
    fn init_noise_sigma(&self) -> f64;

    /// The UNet's input at step `step_index` (the Euler family divides by
    /// `sqrt(sigma² + 1)`; the others return `sample` as is).
    fn scale_model_input(&self, sample: Tensor<B, 4>, step_index: usize) -> Tensor<B, 4>;

    /// One step from `sample` at `timesteps()[step_index]` to the next
    /// timestep, given the model's prediction there. Stochastic schedulers
    /// (Euler ancestral, DDIM with `eta > 0`) add `noise` (unit Gaussian,
    /// shaped like `sample`), or draw it from the backend's seeded generator
    /// when it is `None`; the others ignore it.
    ///
    /// `model_output` and `sample` must share a dtype and a device.
    fn step(
        &mut self,
        model_output: Tensor<B, 4>,
        step_index: usize,
        sample: Tensor<B, 4>,
        noise: Option<Tensor<B, 4>>,
    ) -> Tensor<B, 4>;

    /// Forward diffusion: `original` noised to the level of `timesteps`,
    /// given as one timestep for the whole batch or one per sample. DDIM
    /// takes any training timestep (for training); the sigma-based
    /// schedulers take timesteps of their schedule (for img2img).
    fn add_noise(
        &self,
        original: Tensor<B, 4>,
        noise: Tensor<B, 4>,
        timesteps: &[f64],
    ) -> Result<Tensor<B, 4>, SchedulerError>;

    /// Number of denoising steps.
    fn num_inference_steps(&self) -> usize {
        self.timesteps().len()
    }
}

/// The scheduler algorithms, by their command-line names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchedulerKind {
    /// `ddim`: DDIM (deterministic with the default `eta = 0`); the
    /// StyleCodes release's sampler.
    Ddim,
    /// `euler`: Euler discrete.
    Euler,
    /// `euler-a`: Euler ancestral (stochastic).
    EulerAncestral,
    /// `dpmpp-2m`: DPM-Solver++ 2M (second-order multistep).
    DpmPlusPlus2M,
}

impl SchedulerKind {
    pub const ALL: [SchedulerKind; 4] =
        [SchedulerKind::Ddim, SchedulerKind::Euler, SchedulerKind::EulerAncestral, SchedulerKind::DpmPlusPlus2M];

    pub fn name(self) -> &'static str {
        match self {
            SchedulerKind::Ddim => "ddim",
            SchedulerKind::Euler => "euler",
            SchedulerKind::EulerAncestral => "euler-a",
            SchedulerKind::DpmPlusPlus2M => "dpmpp-2m",
        }
    }

    /// Whether the Karras sigma schedule applies (not to DDIM).
    pub fn supports_karras(self) -> bool {
        self != SchedulerKind::Ddim
    }
}

impl fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SchedulerKind {
    type Err = SchedulerError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let wanted = name.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|kind| kind.name() == wanted)
            .ok_or_else(|| SchedulerError::UnknownKind(name.to_string()))
    }
}

/// ᾱ_t, the cumulative signal fraction of each training timestep (float32,
/// as diffusers computes it).
pub fn train_alphas_cumprod(config: &SchedulerConfig) -> Result<Vec<f32>, SchedulerError> {
    config.check()?;
    schedule::alphas_cumprod(config, false)
}

/// Builds the `kind` scheduler for `num_inference_steps` steps from a
/// scheduler config. `karras` overrides the config's `use_karras_sigmas`
/// (`None` keeps it); asking DDIM for Karras sigmas is an error.
pub fn build_scheduler<B: Backend>(
    kind: SchedulerKind,
    config: &SchedulerConfig,
    num_inference_steps: usize,
    karras: Option<bool>,
) -> Result<Box<dyn Scheduler<B>>, SchedulerError> {
    let mut config = config.clone();
    if let Some(karras) = karras {
        if karras && !kind.supports_karras() {
            return Err(SchedulerError::Unsupported {
                scheduler: kind,
                field: "use_karras_sigmas",
                value: "true".into(),
            });
        }
        config.use_karras_sigmas = karras;
    }
    Ok(match kind {
        SchedulerKind::Ddim => Box::new(DdimScheduler::new(&config, num_inference_steps)?),
        SchedulerKind::Euler => Box::new(EulerDiscreteScheduler::new(&config, num_inference_steps)?),
        SchedulerKind::EulerAncestral => Box::new(EulerAncestralScheduler::new(&config, num_inference_steps)?),
        SchedulerKind::DpmPlusPlus2M => Box::new(DpmSolverMultistepScheduler::<B>::new(&config, num_inference_steps)?),
    })
}

/// What can be wrong with a scheduler's name, config or arguments.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("unknown scheduler `{0}` (expected one of: ddim, euler, euler-a, dpmpp-2m)")]
    UnknownKind(String),
    // Whole messages, causes included, not also `source()` (see `crate::error::Error`).
    #[error("invalid scheduler config: {0}")]
    Json(String),
    #[error("scheduler config: `{field}`: {cause}")]
    BadField { field: String, cause: serde_json::Error },
    #[error("scheduler config: `{field}` = {value} is invalid: {reason}")]
    InvalidConfig { field: &'static str, value: String, reason: String },
    #[error("the {scheduler} scheduler does not support `{field}` = {value}")]
    Unsupported { scheduler: SchedulerKind, field: &'static str, value: String },
    #[error("{steps} inference steps: must be between 1 and num_train_timesteps ({max})")]
    InvalidSteps { steps: usize, max: usize },
    #[error("timestep {timestep} is not in the {scheduler} scheduler's timesteps {timesteps:?}")]
    TimestepNotInSchedule { scheduler: SchedulerKind, timestep: f64, timesteps: Vec<f64> },
    #[error("timestep {timestep} is not a training timestep (a whole number in 0..{num_train_timesteps})")]
    NotATrainTimestep { timestep: f64, num_train_timesteps: usize },
    #[error("{got} timesteps for a batch of {batch}: give one for all, or one per sample")]
    TimestepCount { got: usize, batch: usize },
}

/// How the betas of the training noise schedule are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    /// Evenly spaced from `beta_start` to `beta_end`.
    Linear,
    /// Evenly spaced square roots, squared (Stable Diffusion's).
    ScaledLinear,
    /// The cosine schedule of Nichol & Dhariwal, betas capped at 0.999.
    #[serde(rename = "squaredcos_cap_v2")]
    SquaredCosCapV2,
}

/// What the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    /// The noise (Stable Diffusion 1.5).
    Epsilon,
    /// The velocity `sqrt(ᾱ)·ε - sqrt(1-ᾱ)·x₀` (SD 2.x 768).
    VPrediction,
    /// The clean sample itself.
    #[serde(alias = "original_sample")]
    Sample,
}

/// How the inference timesteps are spread over the training timesteps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    Linspace,
    Leading,
    Trailing,
}

/// The sigma after the last step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalSigmas {
    Zero,
    SigmaMin,
}

/// How Euler's sigmas are read off the training schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InterpolationType {
    Linear,
}

/// Euler's timestep values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepType {
    Discrete,
    Continuous,
}

/// DPM-Solver's formulation; only the data-prediction one ("++") is
/// implemented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AlgorithmType {
    #[serde(rename = "dpmsolver++")]
    DpmSolverPlusPlus,
}

/// DPM-Solver's second-order update rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SolverType {
    Midpoint,
    Heun,
}

/// A diffusers `scheduler_config.json`: the fields of the four schedulers'
/// constructors. Unknown fields are ignored; missing fields take diffusers'
/// constructor defaults (those shared by the four classes, and for
/// `timestep_spacing` each class's own: `leading` for DDIM, `linspace` for
/// the others). [`SchedulerConfig::stable_diffusion_v1_5`] is SD1.5's.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    /// Explicit betas, overriding `beta_schedule`.
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: PredictionType,
    /// `None`: the scheduler's own default.
    pub timestep_spacing: Option<TimestepSpacing>,
    /// Added to "leading" timesteps (1 for SD1.5).
    pub steps_offset: usize,
    /// Rescale the betas to zero terminal SNR (Lin et al. 2023).
    pub rescale_betas_zero_snr: bool,

    // DDIM
    /// Clip the predicted clean sample to `±clip_sample_range`.
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    /// Whether the step after the last uses ᾱ = 1 (else ᾱ₀).
    pub set_alpha_to_one: bool,
    /// Dynamic thresholding (DDIM, DPM-Solver); not supported.
    pub thresholding: bool,

    // Euler and DPM-Solver
    #[serde(deserialize_with = "null_as_false")]
    pub use_karras_sigmas: bool,
    /// Karras range; `None`: the ends of the training schedule.
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    pub final_sigmas_type: FinalSigmas,
    pub interpolation_type: InterpolationType,
    pub timestep_type: TimestepType,
    /// Other sigma schedules of diffusers; not supported.
    #[serde(deserialize_with = "null_as_false")]
    pub use_exponential_sigmas: bool,
    #[serde(deserialize_with = "null_as_false")]
    pub use_beta_sigmas: bool,
    #[serde(deserialize_with = "null_as_false")]
    pub use_lu_lambdas: bool,
    #[serde(deserialize_with = "null_as_false")]
    pub use_flow_sigmas: bool,

    // DPM-Solver
    pub solver_order: usize,
    pub algorithm_type: AlgorithmType,
    pub solver_type: SolverType,
    /// Use first-order updates at the end (for < 15 steps, and always with
    /// a zero final sigma).
    pub lower_order_final: bool,
    pub euler_at_final: bool,
    /// Timesteps whose log-SNR is below this are never used; `None` (or
    /// `-Infinity`, as diffusers writes it) clips nothing.
    pub lambda_min_clipped: Option<f64>,
}

impl Default for SchedulerConfig {
    /// diffusers' constructor defaults (not SD1.5's: see
    /// [`SchedulerConfig::stable_diffusion_v1_5`]).
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            prediction_type: PredictionType::Epsilon,
            timestep_spacing: None,
            steps_offset: 0,
            rescale_betas_zero_snr: false,
            clip_sample: true,
            clip_sample_range: 1.0,
            set_alpha_to_one: true,
            thresholding: false,
            use_karras_sigmas: false,
            sigma_min: None,
            sigma_max: None,
            final_sigmas_type: FinalSigmas::Zero,
            interpolation_type: InterpolationType::Linear,
            timestep_type: TimestepType::Discrete,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            use_lu_lambdas: false,
            use_flow_sigmas: false,
            solver_order: 2,
            algorithm_type: AlgorithmType::DpmSolverPlusPlus,
            solver_type: SolverType::Midpoint,
            lower_order_final: true,
            euler_at_final: false,
            lambda_min_clipped: None,
        }
    }
}

impl SchedulerConfig {
    /// SD1.5's `scheduler/scheduler_config.json`, which is also the
    /// StyleCodes release's DDIM setup: `scaled_linear` betas
    /// 0.00085..0.012 over 1000 steps, `steps_offset = 1`,
    /// `clip_sample = false`, `set_alpha_to_one = false`, epsilon prediction.
    pub fn stable_diffusion_v1_5() -> Self {
        Self {
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            steps_offset: 1,
            clip_sample: false,
            set_alpha_to_one: false,
            ..Self::default()
        }
    }

    /// Checks the values every scheduler relies on.
    pub fn check(&self) -> Result<(), SchedulerError> {
        if self.num_train_timesteps < 2 {
            return Err(invalid("num_train_timesteps", self.num_train_timesteps, "must be at least 2"));
        }
        if let Some(betas) = &self.trained_betas {
            if betas.len() != self.num_train_timesteps {
                return Err(invalid(
                    "trained_betas",
                    format!("[{} values]", betas.len()),
                    format!("needs one beta per training timestep ({})", self.num_train_timesteps),
                ));
            }
        }
        if self.clip_sample_range.is_nan() || self.clip_sample_range <= 0.0 {
            return Err(invalid("clip_sample_range", self.clip_sample_range, "must be positive"));
        }
        for (field, value) in [("sigma_min", self.sigma_min), ("sigma_max", self.sigma_max)] {
            if let Some(value) = value {
                if !(value > 0.0 && value.is_finite()) {
                    return Err(invalid(field, value, "must be positive"));
                }
            }
        }
        if self.solver_order == 0 {
            return Err(invalid("solver_order", 0, "must be at least 1"));
        }
        schedule::betas(self).map(|_| ())
    }
}

impl JsonConfig for SchedulerConfig {
    fn validate(&self) -> Result<(), String> {
        self.check().map_err(|e| e.to_string())
    }

    /// As diffusers writes them (`Infinity`, `NaN` allowed); a field of the
    /// wrong type is named.
    fn from_value(value: serde_json::Value) -> Result<Self, String> {
        let config: Self = serde_json::from_value(value.clone()).map_err(|error| {
            // serde does not say which field is at fault: find the first
            // that fails on its own.
            let mut fields = value.as_object().into_iter().flatten();
            fields
                .find_map(|(field, v)| {
                    let alone = serde_json::Value::Object([(field.clone(), v.clone())].into_iter().collect());
                    serde_json::from_value::<Self>(alone)
                        .err()
                        .map(|cause| SchedulerError::BadField { field: field.clone(), cause })
                })
                .unwrap_or(SchedulerError::Json(error.to_string()))
                .to_string()
        })?;
        config.validate()?;
        Ok(config)
    }

    fn from_json(text: &str) -> Result<Self, String> {
        let value = serde_json::from_str(&non_finite_as_null(text)).map_err(|e| format!("invalid JSON: {e}"))?;
        Self::from_value(value)
    }
}

fn invalid(field: &'static str, value: impl fmt::Display, reason: impl Into<String>) -> SchedulerError {
    SchedulerError::InvalidConfig { field, value: value.to_string(), reason: reason.into() }
}

fn unsupported(scheduler: SchedulerKind, field: &'static str, value: impl fmt::Debug) -> SchedulerError {
    SchedulerError::Unsupported { scheduler, field, value: format!("{value:?}") }
}

/// diffusers annotates some flags `bool | None`; `null` is `false`.
fn null_as_false<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(deserializer)?.unwrap_or(false))
}

/// Python's `json` writes `-Infinity`, `Infinity` and `NaN` (DPM-Solver's
/// `lambda_min_clipped` is `-Infinity` by default), which JSON lacks: read
/// them, outside strings, as `null`.
fn non_finite_as_null(text: &str) -> std::borrow::Cow<'_, str> {
    const TOKENS: [&str; 3] = ["-Infinity", "Infinity", "NaN"];
    if !TOKENS.iter().any(|token| text.contains(token)) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if !in_string {
            if let Some(token) = TOKENS.iter().find(|token| rest.starts_with(**token)) {
                out.push_str("null");
                rest = &rest[token.len()..];
                continue;
            }
        }
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out.into()
}

/// Checks a step count against the training schedule.
fn check_steps(config: &SchedulerConfig, steps: usize) -> Result<(), SchedulerError> {
    if steps == 0 || steps > config.num_train_timesteps {
        return Err(SchedulerError::InvalidSteps { steps, max: config.num_train_timesteps });
    }
    Ok(())
}

/// Checks that the spaced timesteps (plus `steps_offset`) are training
/// timesteps.
fn check_timesteps(config: &SchedulerConfig, timesteps: &[f64]) -> Result<(), SchedulerError> {
    let train = config.num_train_timesteps;
    match timesteps.iter().find(|&&t| !(0.0..train as f64).contains(&t)) {
        Some(t) => Err(invalid(
            "steps_offset",
            config.steps_offset,
            format!("with {} steps it gives timestep {t}, outside the {train} training timesteps", timesteps.len()),
        )),
        None => Ok(()),
    }
}

/// `a·x + b·y` with host-side scalar coefficients.
fn combine<B: Backend>(x: Tensor<B, 4>, a: f64, y: Tensor<B, 4>, b: f64) -> Tensor<B, 4> {
    scale(x, a) + scale(y, b)
}

fn scale<B: Backend>(x: Tensor<B, 4>, a: f64) -> Tensor<B, 4> {
    if a == 1.0 {
        x
    } else {
        x.mul_scalar(a)
    }
}

/// Unit Gaussian noise shaped like `like`, from `given` or the backend's
/// seeded generator.
fn noise_like<B: Backend>(given: Option<Tensor<B, 4>>, like: &Tensor<B, 4>) -> Tensor<B, 4> {
    given.unwrap_or_else(|| {
        Tensor::<B, 4>::random(like.shape(), burn::tensor::Distribution::Normal(0.0, 1.0), &like.device())
            .cast(like.dtype())
    })
}

/// `a[i]·original + b[i]·noise` for each sample `i` of the batch, with one
/// coefficient pair for the whole batch or one per sample.
fn add_noise_with<B: Backend>(
    original: Tensor<B, 4>,
    noise: Tensor<B, 4>,
    coefficients: &[(f32, f32)],
) -> Result<Tensor<B, 4>, SchedulerError> {
    let batch = original.dims()[0];
    match coefficients {
        [(a, b)] => Ok(combine(original, *a as f64, noise, *b as f64)),
        per_sample if per_sample.len() == batch => {
            let (device, dtype) = (original.device(), original.dtype());
            let column = |values: Vec<f32>| {
                Tensor::<B, 1>::from_floats(values.as_slice(), &device).cast(dtype).reshape([batch, 1, 1, 1])
            };
            let a = column(per_sample.iter().map(|c| c.0).collect());
            let b = column(per_sample.iter().map(|c| c.1).collect());
            Ok(original * a + noise * b)
        }
        other => Err(SchedulerError::TimestepCount { got: other.len(), batch }),
    }
}

/// The index of `timestep` in a schedule, as diffusers' `index_for_timestep`
/// picks it (the second of two equal ones, so that img2img starting at a
/// repeated timestep does not skip a step).
fn index_for_timestep(kind: SchedulerKind, timesteps: &[f64], timestep: f64) -> Result<usize, SchedulerError> {
    let mut matches = timesteps.iter().enumerate().filter(|(_, &t)| t == timestep).map(|(i, _)| i);
    let first = matches.next();
    match (first, matches.next()) {
        (_, Some(second)) => Ok(second),
        (Some(first), None) => Ok(first),
        (None, _) => {
            Err(SchedulerError::TimestepNotInSchedule { scheduler: kind, timestep, timesteps: timesteps.to_vec() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for kind in SchedulerKind::ALL {
            assert_eq!(kind.name().parse::<SchedulerKind>().unwrap(), kind);
        }
        assert_eq!("Euler-A".parse::<SchedulerKind>().unwrap(), SchedulerKind::EulerAncestral);
    }

    #[test]
    fn non_finite_numbers_read_as_null() {
        let text = r#"{"a": -Infinity, "b": "NaN -Infinity \" Infinity", "c": [Infinity, NaN]}"#;
        assert_eq!(non_finite_as_null(text), r#"{"a": null, "b": "NaN -Infinity \" Infinity", "c": [null, null]}"#);
    }
}
