//! Group and layer normalisation whose statistics are taken in f32 when the
//! model runs in f16 or bf16, as PyTorch takes them.
//!
//! burn's `GroupNorm` sums squares in the input's dtype: over one group of
//! an SD feature map (up to 40,960 values) that sum passes f16's 65,504 and
//! the output collapses. So the normalisation itself runs in f32 and only
//! its result goes back to the model's dtype. In f32 nothing is cast.
//! Parameter names (`gamma`, `beta`) are burn's, so weights load the same.

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::prelude::*;
use burn::tensor::{DType, TensorPrimitive};

/// f16/bf16 → f32; any other dtype is kept.
fn widened<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    match x.dtype() {
        DType::F16 | DType::BF16 => x.cast(DType::F32),
        _ => x,
    }
}

/// Shape of a [`GroupNorm`].
#[derive(Config, Debug)]
pub struct GroupNormConfig {
    pub num_groups: usize,
    pub num_channels: usize,
    #[config(default = 1e-5)]
    pub epsilon: f64,
}

impl GroupNormConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> GroupNorm<B> {
        assert!(
            self.num_groups > 0 && self.num_channels.is_multiple_of(self.num_groups),
            "{} channels cannot be split into {} groups",
            self.num_channels,
            self.num_groups
        );
        GroupNorm {
            gamma: Initializer::Ones.init([self.num_channels], device),
            beta: Initializer::Zeros.init([self.num_channels], device),
            num_groups: self.num_groups,
            epsilon: self.epsilon,
        }
    }
}

/// Normalises each group of channels of `[B, C, ...]` to zero mean and unit
/// variance, then scales and shifts each channel.
#[derive(Module, Debug)]
pub struct GroupNorm<B: Backend> {
    pub gamma: Param<Tensor<B, 1>>,
    pub beta: Param<Tensor<B, 1>>,
    pub num_groups: usize,
    pub epsilon: f64,
}

impl<B: Backend> GroupNorm<B> {
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        if let Some(out) = self.on_cpu(&x, false) {
            return out;
        }
        let dtype = x.dtype();
        let shape = x.shape();
        let (batch, channels) = (shape[0], shape[1]);
        let grouped = widened(x).reshape([batch, self.num_groups, shape.num_elements() / (batch * self.num_groups)]);
        let centered = grouped.clone() - grouped.mean_dim(2);
        let variance = centered.clone().square().mean_dim(2);
        let normalized = (centered / (variance + self.epsilon).sqrt()).reshape(shape);
        let mut per_channel = [1; D];
        per_channel[1] = channels;
        let wide = normalized.dtype();
        let gamma = self.gamma.val().cast(wide).reshape(per_channel);
        let beta = self.beta.val().cast(wide).reshape(per_channel);
        (normalized * gamma + beta).cast(dtype)
    }

    /// `silu(self.forward(x))`, fused on burn-flex.
    pub fn forward_silu<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self.on_cpu(&x, true) {
            Some(out) => out,
            None => burn::tensor::activation::silu(self.forward(x)),
        }
    }

    /// This crate's kernel ([`super::cpu::group_norm`]) for burn-flex in f32.
    fn on_cpu<const D: usize>(&self, x: &Tensor<B, D>, silu: bool) -> Option<Tensor<B, D>> {
        use super::cpu::{from_values, group_norm, runs_here, to_flex, values};
        if !runs_here(x) || self.gamma.val().dtype() != x.dtype() {
            return None;
        }
        let dims = x.dims();
        let shape = group_norm::GroupNormShape {
            batch: dims[0],
            channels: dims[1],
            groups: self.num_groups,
            spatial: dims[2..].iter().product(),
        };
        let (x, gamma, beta) = (to_flex(x.clone()), to_flex(self.gamma.val()), to_flex(self.beta.val()));
        let out = group_norm::group_norm(values(&x), values(&gamma), values(&beta), self.epsilon, silu, shape);
        Some(from_values(out, dims))
    }
}

/// Shape of a [`LayerNorm`].
#[derive(Config, Debug)]
pub struct LayerNormConfig {
    pub d_model: usize,
    #[config(default = 1e-5)]
    pub epsilon: f64,
}

impl LayerNormConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> LayerNorm<B> {
        LayerNorm {
            gamma: Initializer::Ones.init([self.d_model], device),
            beta: Initializer::Zeros.init([self.d_model], device),
            epsilon: self.epsilon,
        }
    }
}

/// Normalises the last axis, then scales and shifts it (the backend's fused op).
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    pub gamma: Param<Tensor<B, 1>>,
    pub beta: Param<Tensor<B, 1>>,
    pub epsilon: f64,
}

impl<B: Backend> LayerNorm<B> {
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dtype = x.dtype();
        let x = widened(x);
        let wide = x.dtype();
        let normalized = B::layer_norm(
            x.into_primitive().tensor(),
            self.gamma.val().cast(wide).into_primitive().tensor(),
            Some(self.beta.val().cast(wide).into_primitive().tensor()),
            self.epsilon,
        );
        Tensor::<B, D>::from_primitive(TensorPrimitive::Float(normalized)).cast(dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::testing::max_abs_difference;
    use burn::backend::Flex;

    type B = Flex;

    /// Large activations, as SD's feature maps have: in f16 their sum of
    /// squares over a group overflows, which must not reach the output.
    fn large_input(dtype: DType) -> Tensor<B, 4> {
        let values: Vec<f32> = (0..2 * 8 * 32 * 32).map(|i| ((i * 37 % 101) as f32 - 50.0) * 4.0).collect();
        Tensor::<B, 4>::from_data(TensorData::new(values, [2, 8, 32, 32]), (&Default::default(), dtype))
    }

    #[test]
    fn group_norm_in_f16_follows_f32_on_large_activations() {
        let device = Default::default();
        let norm = GroupNormConfig::new(2, 8).init::<B>(&device);
        let full = norm.forward(large_input(DType::F32));
        let out = norm.forward(large_input(DType::F16));
        assert_eq!(out.dtype(), DType::F16);
        // Normalised values are O(1): f16 rounding is ~1e-3 of them.
        assert!(max_abs_difference(out, full.clone()) < 5e-3);
        // And the f32 result is a true normalisation: unit variance per group.
        let grouped = full.reshape([2, 2, 4 * 32 * 32]);
        let variance = grouped.clone().var_bias(2).into_data().to_vec::<f32>().unwrap();
        assert!(variance.iter().all(|v| (v - 1.0).abs() < 1e-3), "{variance:?}");
    }

    #[test]
    fn layer_norm_in_f16_follows_f32_on_large_activations() {
        let device = Default::default();
        let norm = LayerNormConfig::new(32).init::<B>(&device);
        let out = norm.forward(large_input(DType::F16));
        assert_eq!(out.dtype(), DType::F16);
        assert!(max_abs_difference(out, norm.forward(large_input(DType::F32))) < 5e-3);
    }
}
