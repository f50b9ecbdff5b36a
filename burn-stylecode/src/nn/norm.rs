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
        self.normalize(x, self.gamma.val(), self.beta.val(), self.num_groups, false)
    }

    /// `silu(self.forward(x))`, fused on burn-flex.
    pub fn forward_silu<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        self.normalize(x, self.gamma.val(), self.beta.val(), self.num_groups, true)
    }

    /// `silu(self.forward(cat([head, 0^zeros], 1)))` for `head` [B, c_h, H, W],
    /// without most of the zeros: returns the head's channels [B, c_h, H, W]
    /// and, per sample, the value of each zero channel [B, zeros] (constant
    /// over the image).
    ///
    /// The statistics count the zeros. A group that straddles the head's end
    /// is normalised with its zeros made (fewer than a group's width), as
    /// [`Self::forward_silu`] would; a group of zeros only has mean and
    /// variance 0, so its channels are `silu(β)`.
    pub(crate) fn forward_silu_zero_tail(&self, head: Tensor<B, 4>, zeros: usize) -> (Tensor<B, 4>, Tensor<B, 2>) {
        let [batch, head_channels, height, width] = head.dims();
        let channels = head_channels + zeros;
        assert_eq!(channels, self.gamma.dims()[0], "{head_channels} + {zeros} channels into a norm of other width");
        assert!(height > 0 && width > 0, "an empty image has no zero channels to read");
        let per_group = channels / self.num_groups;
        let straddling = (per_group - head_channels % per_group) % per_group;
        let prefix = head_channels + straddling;
        let options = (&head.device(), head.dtype());
        let head = crate::nn::with_zero_channels(head, straddling);
        let (gamma, beta) = (self.gamma.val(), self.beta.val());
        let mut tail = Vec::with_capacity(2);
        let normed = if prefix == 0 {
            head
        } else {
            let normed = self.normalize(
                head,
                gamma.narrow(0, 0, prefix),
                beta.clone().narrow(0, 0, prefix),
                prefix / per_group,
                true,
            );
            if straddling > 0 {
                let corner = normed.clone().narrow(1, head_channels, straddling).narrow(2, 0, 1).narrow(3, 0, 1);
                tail.push(corner.reshape([batch, straddling]));
            }
            normed.narrow(1, 0, head_channels)
        };
        if prefix < channels {
            let lone = burn::tensor::activation::silu(beta.narrow(0, prefix, channels - prefix).cast(options.1));
            tail.push(lone.unsqueeze::<2>().expand([batch, channels - prefix]));
        }
        let tail = if tail.is_empty() { Tensor::zeros([batch, 0], options) } else { Tensor::cat(tail, 1) };
        (normed, tail)
    }

    /// The normalisation of `x` in `groups` groups with these `gamma` and
    /// `beta` (the layer's own, or a leading part of them).
    fn normalize<const D: usize>(
        &self,
        x: Tensor<B, D>,
        gamma: Tensor<B, 1>,
        beta: Tensor<B, 1>,
        groups: usize,
        silu: bool,
    ) -> Tensor<B, D> {
        if let Some(out) = on_cpu(&x, &gamma, &beta, groups, self.epsilon, silu) {
            return out;
        }
        let dtype = x.dtype();
        let shape = x.shape();
        let (batch, channels) = (shape[0], shape[1]);
        let grouped = widened(x).reshape([batch, groups, shape.num_elements() / (batch * groups)]);
        let centered = grouped.clone() - grouped.mean_dim(2);
        let variance = centered.clone().square().mean_dim(2);
        let normalized = (centered / (variance + self.epsilon).sqrt()).reshape(shape);
        let mut per_channel = [1; D];
        per_channel[1] = channels;
        let wide = normalized.dtype();
        let gamma = gamma.cast(wide).reshape(per_channel);
        let beta = beta.cast(wide).reshape(per_channel);
        let out = (normalized * gamma + beta).cast(dtype);
        if silu {
            burn::tensor::activation::silu(out)
        } else {
            out
        }
    }
}

/// This crate's kernel ([`super::cpu::group_norm`]) for burn-flex in f32.
fn on_cpu<B: Backend, const D: usize>(
    x: &Tensor<B, D>,
    gamma: &Tensor<B, 1>,
    beta: &Tensor<B, 1>,
    groups: usize,
    epsilon: f64,
    silu: bool,
) -> Option<Tensor<B, D>> {
    use super::cpu::{from_values, group_norm, runs_here, to_flex, values};
    if !runs_here(x) || gamma.dtype() != x.dtype() {
        return None;
    }
    let dims = x.dims();
    let shape =
        group_norm::GroupNormShape { batch: dims[0], channels: dims[1], groups, spatial: dims[2..].iter().product() };
    let (x, gamma, beta) = (to_flex(x.clone()), to_flex(gamma.clone()), to_flex(beta.clone()));
    let out = group_norm::group_norm(values(&x), values(&gamma), values(&beta), epsilon, silu, shape);
    Some(from_values(out, dims))
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
    use burn::tensor::Distribution;

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

    /// `forward_silu_zero_tail` against `forward_silu` of the zero-padded
    /// input: on burn-flex's kernel (f32), the generic ops (f16, bf16) and
    /// under autodiff; groups straddling the head's end, groups of zeros only.
    #[test]
    fn zero_tail_gives_the_zero_padded_normalisation() {
        fn check<B: Backend>(dtype: DType, tolerance: f32) {
            let device = Default::default();
            for (head_channels, zeros, groups) in [(7, 5, 4), (10, 14, 8), (8, 4, 4), (1, 2, 1)] {
                let mut norm = GroupNormConfig::new(groups, head_channels + zeros).init::<B>(&device);
                let jitter = |t: Tensor<B, 1>| (t.clone() + t.random_like(Distribution::Normal(0.0, 0.5))).cast(dtype);
                norm.gamma = norm.gamma.map(jitter);
                norm.beta = norm.beta.map(jitter);
                let [batch, height, width] = [2, 3, 5];
                let head = Tensor::<B, 4>::random(
                    [batch, head_channels, height, width],
                    Distribution::Normal(0.5, 2.0),
                    &device,
                )
                .cast(dtype);
                let padded = crate::nn::with_zero_channels(head.clone(), zeros);
                let expected = norm.forward_silu(padded);
                let (got_head, got_tail) = norm.forward_silu_zero_tail(head, zeros);
                let got_tail = got_tail.reshape([batch, zeros, 1, 1]).expand([batch, zeros, height, width]);
                let scale = expected.clone().cast(DType::F32).abs().max().into_scalar().elem::<f32>();
                let case = (dtype, head_channels, zeros, groups);
                let error = max_abs_difference(got_head, expected.clone().narrow(1, 0, head_channels)) / scale;
                assert!(error <= tolerance, "{case:?}: head channels: relative error {error:e}");
                let error = max_abs_difference(got_tail, expected.narrow(1, head_channels, zeros)) / scale;
                assert!(error <= tolerance, "{case:?}: zero channels: relative error {error:e}");
            }
        }
        check::<B>(DType::F32, 1e-6);
        check::<B>(DType::F16, 1e-3);
        check::<B>(DType::BF16, 8e-3);
        check::<burn::backend::Autodiff<B>>(DType::F32, 1e-6);
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
