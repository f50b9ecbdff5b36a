//! Timestep embeddings, as diffusers' `Timesteps` and `TimestepEmbedding`.

use crate::nn::{Linear, LinearConfig};
use burn::module::Module;
use burn::prelude::*;
use burn::tensor::activation::silu;

/// The sinusoidal embedding's longest period.
const MAX_PERIOD: f64 = 10_000.0;

/// Shape of a [`Timesteps`] embedding.
#[derive(Config, Debug)]
pub struct TimestepsConfig {
    /// Width of the embedding.
    pub num_channels: usize,
    /// Order the halves `cos, sin` (SD1.5) instead of `sin, cos`.
    #[config(default = true)]
    pub flip_sin_to_cos: bool,
    /// Subtracted from the half width in the frequency exponent (0 for SD1.5).
    #[config(default = 0.0)]
    pub downscale_freq_shift: f64,
}

impl TimestepsConfig {
    pub fn init(&self) -> Timesteps {
        Timesteps {
            num_channels: self.num_channels,
            flip_sin_to_cos: self.flip_sin_to_cos,
            downscale_freq_shift: self.downscale_freq_shift,
        }
    }
}

/// Sinusoidal timestep embedding (no parameters): frequency `i` of the
/// `half = num_channels / 2` is `exp(-ln(10000) · i / (half - shift))`.
#[derive(Module, Clone, Debug)]
pub struct Timesteps {
    pub num_channels: usize,
    pub flip_sin_to_cos: bool,
    pub downscale_freq_shift: f64,
}

impl Timesteps {
    /// The frequencies, computed in f32 in the order PyTorch does, so that
    /// `t · freq` rounds to the same value for large `t` (SD's t ≤ 999).
    pub fn frequencies(&self) -> Vec<f32> {
        let half = self.num_channels / 2;
        let denominator = (half as f64 - self.downscale_freq_shift) as f32;
        // PyTorch: a Python float times an f32 range, divided, exponentiated, all in f32.
        let log_period = -MAX_PERIOD.ln() as f32;
        (0..half).map(|i| ((log_period * i as f32) / denominator).exp()).collect()
    }

    /// `timesteps` `[N]` (possibly fractional) → `[N, num_channels]`, in
    /// the backend's default float type.
    pub fn forward<B: Backend>(&self, timesteps: Tensor<B, 1>) -> Tensor<B, 2> {
        let device = timesteps.device();
        let [n] = timesteps.dims();
        let frequencies = self.frequencies();
        let half = frequencies.len();
        let frequencies = Tensor::<B, 1>::from_floats(frequencies.as_slice(), &device);
        // In the backend's float type (f32) whatever the model's dtype, as diffusers does.
        let timesteps = timesteps.cast(frequencies.dtype());
        let angles = timesteps.unsqueeze_dim::<2>(1) * frequencies.unsqueeze_dim::<2>(0);
        let (sin, cos) = (angles.clone().sin(), angles.cos());
        let mut halves = if self.flip_sin_to_cos { vec![cos, sin] } else { vec![sin, cos] };
        if self.num_channels % 2 == 1 {
            halves.push(Tensor::zeros([n, 1], &device));
        }
        debug_assert_eq!(2 * half + self.num_channels % 2, self.num_channels);
        Tensor::cat(halves, 1)
    }
}

/// Shape of a [`TimestepEmbedding`].
#[derive(Config, Debug)]
pub struct TimestepEmbeddingConfig {
    pub in_channels: usize,
    pub time_embed_dim: usize,
}

impl TimestepEmbeddingConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> TimestepEmbedding<B> {
        TimestepEmbedding {
            linear_1: LinearConfig::new(self.in_channels, self.time_embed_dim).init(device),
            linear_2: LinearConfig::new(self.time_embed_dim, self.time_embed_dim).init(device),
        }
    }
}

/// `linear_2(silu(linear_1(x)))`: the sinusoidal embedding to the UNet's
/// time embedding (`temb`).
#[derive(Module, Debug)]
pub struct TimestepEmbedding<B: Backend> {
    pub linear_1: Linear<B>,
    pub linear_2: Linear<B>,
}

impl<B: Backend> TimestepEmbedding<B> {
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.linear_2.forward(silu(self.linear_1.forward(x)))
    }
}
