//! The host-side arithmetic the schedulers share: the training noise
//! schedule and the timestep and sigma lists, each computed as diffusers
//! computes it (torch float32 for betas and alphas_cumprod, numpy float64 for
//! spacing and interpolation) so that the results agree with diffusers'.

use super::{invalid, BetaSchedule, SchedulerConfig, SchedulerError, TimestepSpacing};

/// The training betas, as diffusers' constructors make them (float32).
pub(super) fn betas(config: &SchedulerConfig) -> Result<Vec<f32>, SchedulerError> {
    let n = config.num_train_timesteps;
    let betas: Vec<f32> = match (&config.trained_betas, config.beta_schedule) {
        (Some(betas), _) => betas.iter().map(|&b| b as f32).collect(),
        (None, BetaSchedule::Linear) => torch_linspace(config.beta_start, config.beta_end, n),
        (None, BetaSchedule::ScaledLinear) => {
            torch_linspace(config.beta_start.sqrt(), config.beta_end.sqrt(), n).into_iter().map(|b| b * b).collect()
        }
        (None, BetaSchedule::SquaredCosCapV2) => cosine_betas(n),
    };
    if let Some(bad) = betas.iter().find(|b| !(**b > 0.0 && **b < 1.0)) {
        let field = if config.trained_betas.is_some() { "trained_betas" } else { "beta_start/beta_end" };
        let value = match config.trained_betas {
            Some(_) => format!("[.., {bad}, ..]"),
            None => format!("{}/{}", config.beta_start, config.beta_end),
        };
        return Err(invalid(field, value, format!("gives a beta of {bad}; every beta must be in (0, 1)")));
    }
    Ok(betas)
}

/// ᾱ_t, the cumulative products of `1 - beta` (float32). `for_sigmas`: the
/// sigma-based schedulers replace a zero terminal ᾱ by 2⁻²⁴ so that the
/// largest sigma stays finite.
pub(super) fn alphas_cumprod(config: &SchedulerConfig, for_sigmas: bool) -> Result<Vec<f32>, SchedulerError> {
    let mut betas = betas(config)?;
    if config.rescale_betas_zero_snr {
        betas = rescale_zero_terminal_snr(&betas);
    }
    let mut alphas_cumprod = cumprod(betas.iter().map(|b| 1.0 - b));
    if config.rescale_betas_zero_snr && for_sigmas {
        *alphas_cumprod.last_mut().expect("at least 2 timesteps") = 2f32.powi(-24);
    }
    Ok(alphas_cumprod)
}

/// `sqrt((1 - ᾱ) / ᾱ)` per training timestep (float32).
pub(super) fn train_sigmas(alphas_cumprod: &[f32]) -> Vec<f32> {
    alphas_cumprod.iter().map(|&a| ((1.0 - a) / a).sqrt()).collect()
}

/// `np.log` of float32 sigmas, kept in float32.
pub(super) fn log_sigmas(sigmas: &[f32]) -> Vec<f32> {
    sigmas.iter().map(|&s| (s as f64).ln() as f32).collect()
}

/// `torch.linspace(start, end, n, dtype=float32)`: float32 endpoints and
/// step, each value a fused multiply-add from the nearer end.
fn torch_linspace(start: f64, end: f64, n: usize) -> Vec<f32> {
    let (start, end) = (start as f32, end as f32);
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let halfway = n / 2;
    (0..n)
        .map(|i| if i < halfway { step.mul_add(i as f32, start) } else { (-step).mul_add((n - 1 - i) as f32, end) })
        .collect()
}

/// `torch.cumprod` on float32: accumulated in float64, each value rounded.
fn cumprod(values: impl Iterator<Item = f32>) -> Vec<f32> {
    let mut product = 1f64;
    values
        .map(|v| {
            product *= v as f64;
            product as f32
        })
        .collect()
}

/// diffusers' `betas_for_alpha_bar` with the cosine `alpha_bar`, in float64
/// and then float32.
fn cosine_betas(n: usize) -> Vec<f32> {
    let alpha_bar = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos().powi(2);
    (0..n)
        .map(|i| {
            let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// diffusers' `rescale_zero_terminal_snr` (Lin et al. 2023, algorithm 1), in
/// float32: shift and scale sqrt(ᾱ) so that its last value is 0.
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let sqrt_alphas_cumprod: Vec<f32> = cumprod(betas.iter().map(|b| 1.0 - b)).iter().map(|a| a.sqrt()).collect();
    let first = sqrt_alphas_cumprod[0];
    let last = *sqrt_alphas_cumprod.last().expect("at least 2 timesteps");
    let factor = first / (first - last);
    let alphas_bar: Vec<f32> = sqrt_alphas_cumprod.iter().map(|s| ((s - last) * factor).powi(2)).collect();
    std::iter::once(alphas_bar[0]).chain(alphas_bar.windows(2).map(|w| w[1] / w[0])).map(|alpha| 1.0 - alpha).collect()
}

/// `np.linspace(start, stop, n)` (float64): `i·step + start`, the last value
/// exactly `stop`.
pub(super) fn np_linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (stop - start) / (n - 1) as f64;
    let mut values: Vec<f64> = (0..n).map(|i| i as f64 * step + start).collect();
    values[n - 1] = stop;
    values
}

/// `np.arange(start, stop, step)` for a float step: numpy fills
/// `start + i·delta` with `delta = (start + step) - start`.
pub(super) fn np_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil().max(0.0) as usize;
    let delta = (start + step) - start;
    (0..len).map(|i| if i == 1 { start + step } else { start + i as f64 * delta }).collect()
}

/// The inference timesteps, first (noisiest) to last, for the three
/// spacings of diffusers' DDIM and Euler schedulers (before any Karras
/// conversion), as float64 values of numpy's float64 or integer results.
pub(super) fn spaced_timesteps(config: &SchedulerConfig, spacing: TimestepSpacing, steps: usize) -> Vec<f64> {
    let train = config.num_train_timesteps;
    match spacing {
        // np.linspace(0, train - 1, steps).round()[::-1]
        TimestepSpacing::Linspace => {
            np_linspace(0.0, (train - 1) as f64, steps).into_iter().rev().map(f64::round_ties_even).collect()
        }
        // (np.arange(steps) * (train // steps))[::-1] + steps_offset
        TimestepSpacing::Leading => {
            let ratio = train / steps;
            (0..steps).rev().map(|i| (i * ratio + config.steps_offset) as f64).collect()
        }
        // np.round(np.arange(train, 0, -train / steps)) - 1
        TimestepSpacing::Trailing => np_arange(train as f64, 0.0, -(train as f64 / steps as f64))
            .into_iter()
            .map(|t| t.round_ties_even() - 1.0)
            .collect(),
    }
}

/// `np.interp(x, arange(len(fp)), fp)` in float64.
pub(super) fn interp(x: f64, fp: &[f32]) -> f64 {
    let last = fp.len() - 1;
    if x <= 0.0 {
        return fp[0] as f64;
    }
    if x >= last as f64 {
        return fp[last] as f64;
    }
    let j = x.floor() as usize;
    if j as f64 == x {
        return fp[j] as f64;
    }
    let slope = fp[j + 1] as f64 - fp[j] as f64;
    slope * (x - j as f64) + fp[j] as f64
}

/// Karras et al. (2022) noise levels: evenly spaced in `sigma^(1/7)` from
/// `sigma_max` down to `sigma_min` (float64).
pub(super) fn karras_sigmas(sigma_min: f64, sigma_max: f64, steps: usize) -> Vec<f64> {
    const RHO: f64 = 7.0;
    let (min_inv_rho, max_inv_rho) = (sigma_min.powf(1.0 / RHO), sigma_max.powf(1.0 / RHO));
    np_linspace(0.0, 1.0, steps)
        .into_iter()
        .map(|ramp| (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)).powf(RHO))
        .collect()
}

/// diffusers' `_sigma_to_t`: the fractional training timestep whose sigma
/// is `sigma`, interpolating log-sigma linearly between neighbours (numpy's
/// mix of float64 and float32 kept).
pub(super) fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    // argmax of cumsum(log_sigma >= log_sigmas): the last index at or below.
    let low_idx = log_sigmas.iter().rposition(|&l| log_sigma - l as f64 >= 0.0).unwrap_or(0).min(log_sigmas.len() - 2);
    let high_idx = low_idx + 1;
    let (low, high) = (log_sigmas[low_idx], log_sigmas[high_idx]);
    let w = ((low as f64 - log_sigma) / (low - high) as f64).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * high_idx as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_spacings() {
        assert_eq!(np_linspace(0.0, 999.0, 4), vec![0.0, 333.0, 666.0, 999.0]);
        assert_eq!(np_arange(1000.0, 0.0, -250.0), vec![1000.0, 750.0, 500.0, 250.0]);
        assert_eq!(np_arange(10.0, 0.0, -3.0).len(), 4);
        assert_eq!(interp(2.5, &[0.0, 1.0, 2.0, 4.0]), 3.0);
        assert_eq!(interp(7.0, &[0.0, 1.0]), 1.0);
    }

    #[test]
    fn sigma_to_t_inverts_the_training_sigmas() {
        let config = SchedulerConfig::stable_diffusion_v1_5();
        let sigmas = train_sigmas(&alphas_cumprod(&config, true).unwrap());
        let logs = log_sigmas(&sigmas);
        for t in [0usize, 1, 500, 998, 999] {
            assert!((sigma_to_t(sigmas[t] as f64, &logs) - t as f64).abs() < 1e-3, "t = {t}");
        }
    }
}
