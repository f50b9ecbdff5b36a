//! The style control module: the official release's `StyleCodesModel`.
//!
//! A second UNet, of which only the mid block and the up blocks exist
//! (full width, `use_linear_projection = true`, its own weights), runs in
//! lock-step with the frozen base UNet. Its input is the autoencoder's
//! decoding of a stylecode, a feature map the size of the base's mid-block
//! grid. At 13 communication points (after the mid block and after each of
//! the 12 up sub-blocks) a per-pixel `Linear(2C, 2C)` mixes
//! `[h_ctrl, h_base]`; its second half replaces the base's hidden state in
//! proportion `s`, the conditioning scale: `h_base·(1-s) + mixed·s`. The
//! control up sub-blocks see zeros where the base sees its skips.

use crate::nn::{in_dtype, Linear, LinearConfig};
use crate::sd::text_context::TextContext;
use crate::sd::unet_2d::{PerBlock, UNet2DConditionModel, UNetConfig};
use crate::sd::unet_2d_blocks::{MidBlock2DCrossAttn, UpBlock2D, UpSubBlocks};
use crate::sd::unet_hook::{HookInputs, UNetHook, UpStep};
use burn::module::Module;
use burn::nn::Initializer;
use burn::prelude::*;
use burn::tensor::DType;
use serde::{Deserialize, Serialize};

/// How the mixing layers start out (training only; loading overwrites them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MixInit {
    /// The official release: each mixing layer is the identity map, so the
    /// base is untouched at any scale.
    #[default]
    Identity,
    /// The paper: the mixing layer's output is added to its input as a
    /// residual, and starts at zero.
    ZeroResidual,
}

/// Shape of the control module, derived from the base UNet's config.
#[derive(Debug, Clone)]
pub struct StyleControlConfig {
    /// The control UNet: the base's, with linear projections in its
    /// transformers and the release's attention heads.
    pub unet: UNetConfig,
    pub mix_init: MixInit,
}

impl StyleControlConfig {
    /// The release builds the control UNet from the base's config with
    /// `use_linear_projection = true` and `num_attention_heads` heads (8).
    pub fn from_base(base: &UNetConfig, num_attention_heads: usize, mix_init: MixInit) -> Self {
        let mut unet = base.clone();
        unet.use_linear_projection = true;
        unet.attention_head_dim = PerBlock::One(num_attention_heads);
        Self { unet, mix_init }
    }

    pub fn init<B: Backend>(&self, device: &B::Device) -> StyleControl<B> {
        let mid_block = self.unet.init_mid_block(device);
        let up_blocks = self.unet.init_up_blocks(device);
        let mid_channels = *self.unet.block_out_channels.last().expect("at least one block");
        let mix = |channels: usize| Mixer::new(2 * channels, self.mix_init, device);
        let up_channels: Vec<usize> = up_blocks
            .iter()
            .flat_map(|block| std::iter::repeat_n(block.out_channels(), block.sub_block_count()))
            .collect();
        StyleControl {
            mid_block,
            up_blocks,
            middle_block_out: mix(mid_channels),
            up_zero_convs_out: up_channels.into_iter().map(mix).collect(),
        }
    }
}

/// The control branch and its 13 mixing layers (the autoencoder that makes
/// the branch's input lives in [`super::autoencoder`]).
#[derive(Module, Debug)]
pub struct StyleControl<B: Backend> {
    pub mid_block: MidBlock2DCrossAttn<B>,
    pub up_blocks: Vec<UpBlock2D<B>>,
    /// Mixing after the mid block (communication point 0).
    pub middle_block_out: Mixer<B>,
    /// Mixing after each up sub-block.
    pub up_zero_convs_out: Vec<Mixer<B>>,
}

/// A per-pixel `Linear(2C, 2C)` over `[h_ctrl, h_base]`.
#[derive(Module, Debug)]
pub struct Mixer<B: Backend> {
    pub linear: Linear<B>,
    /// Add the input to the output ([`MixInit::ZeroResidual`]).
    pub residual: bool,
}

impl<B: Backend> Mixer<B> {
    fn new(width: usize, init: MixInit, device: &B::Device) -> Self {
        let mut linear = LinearConfig::new(width, width).with_initializer(Initializer::Zeros).init(device);
        if init == MixInit::Identity {
            // `map` keeps the parameter's id and its layout mappers, but takes
            // `require_grad` from the new value: make the sum a leaf and mark
            // it, or the mixers would never train (tests/tests/train_step.rs).
            linear.weight = linear.weight.map(|zeros| (zeros + Tensor::eye(width, device)).detach().require_grad());
        }
        Self { linear, residual: init == MixInit::ZeroResidual }
    }

    /// Mixes the two branches; returns the new `(h_ctrl, h_base)` with the
    /// base blended by `scale`. The mixing runs in the branch's dtype, and
    /// the base's state comes back in its own (they differ under mixed
    /// precision: a half-precision base, an f32 branch).
    pub fn forward(&self, h_ctrl: Tensor<B, 4>, h_base: Tensor<B, 4>, scale: f64) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let base_dtype = h_base.dtype();
        let h_base = in_dtype(h_base, h_ctrl.dtype());
        let [h_ctrl, h_base_out] = self.linear.forward_channel_pair(h_ctrl, h_base.clone(), self.residual);
        (h_ctrl, in_dtype(h_base * (1.0 - scale) + h_base_out * scale, base_dtype))
    }
}

impl<B: Backend> StyleControl<B> {
    /// One denoising step of the base UNet steered by the control branch.
    ///
    /// `style` is the autoencoder's output for each sample's code, shaped
    /// like the base's mid-block output [B, C_mid, h, w]; compute it once per
    /// generation (it does not change between steps).
    pub fn forward(
        &self,
        base: &UNet2DConditionModel<B>,
        sample: Tensor<B, 4>,
        timesteps: Tensor<B, 1>,
        context: &TextContext<B>,
        style: Tensor<B, 4>,
        scale: f64,
    ) -> Tensor<B, 4> {
        base.forward_with_hook(sample, timesteps, context, &mut self.hook(style, scale))
    }

    /// The branch as a hook on the base UNet's forward pass.
    pub fn hook(&self, style: Tensor<B, 4>, scale: f64) -> ControlHook<'_, B> {
        ControlHook { control: self, style: Some(style), h_ctrl: None, scale, inputs: None }
    }
}

/// The control branch running in lock-step with the base UNet: its mid
/// block starts from the style features, each of its up sub-blocks sees
/// zeros where the base sees its skip, and a [`Mixer`] joins the two after
/// the mid block and after every up sub-block.
pub struct ControlHook<'a, B: Backend> {
    control: &'a StyleControl<B>,
    /// The mid block's input, taken once.
    style: Option<Tensor<B, 4>>,
    /// The branch's hidden state since the mid block.
    h_ctrl: Option<Tensor<B, 4>>,
    scale: f64,
    /// The base's time embedding and text context in the branch's dtype,
    /// cast once per step.
    inputs: Option<(Tensor<B, 2>, TextContext<B>)>,
}

impl<B: Backend> ControlHook<'_, B> {
    fn branch_inputs(&mut self, inputs: &HookInputs<'_, B>, dtype: DType) -> (Tensor<B, 2>, TextContext<B>) {
        self.inputs.get_or_insert_with(|| (in_dtype(inputs.temb.clone(), dtype), inputs.context.cast(dtype))).clone()
    }
}

impl<B: Backend> UNetHook<B> for ControlHook<'_, B> {
    fn after_mid(&mut self, h_base: Tensor<B, 4>, inputs: &HookInputs<'_, B>) -> Tensor<B, 4> {
        let style = self.style.take().expect("the mid block runs once per step");
        let (temb, context) = self.branch_inputs(inputs, style.dtype());
        let h_ctrl = self.control.mid_block.forward(style, &temb, &context);
        let (h_ctrl, h_base) = self.control.middle_block_out.forward(h_ctrl, h_base, self.scale);
        self.h_ctrl = Some(h_ctrl);
        h_base
    }

    fn after_up(&mut self, step: UpStep, h_base: Tensor<B, 4>, inputs: &HookInputs<'_, B>) -> Tensor<B, 4> {
        let h_ctrl = self.h_ctrl.take().expect("the mid block runs before the up blocks");
        let [_, skip_channels, skip_h, skip_w] = step.skip_dims;
        assert_eq!([skip_h, skip_w], h_ctrl.dims()[2..], "the base's skip and the branch's state share a grid");
        let (temb, context) = self.branch_inputs(inputs, h_ctrl.dtype());
        // The sub-block's input is [h_ctrl, zeros in the skip's place]; the
        // zeros are never made nor convolved.
        let (block, j) = self.control.up_blocks.locate_sub_block(step.index);
        let h_ctrl = self.control.up_blocks[block].sub_block_zero_skip(
            j,
            h_ctrl,
            skip_channels,
            Some(&temb),
            Some(&context),
            step.upsample_to,
        );
        let (h_ctrl, h_base) = self.control.up_zero_convs_out[step.index].forward(h_ctrl, h_base, self.scale);
        self.h_ctrl = Some(h_ctrl);
        h_base
    }
}

/// The base UNet's mid-block grid for a latent of `[height, width]`: each
/// downsampler (stride 2, padding 1) maps n to ⌈n/2⌉.
pub fn mid_grid<B: Backend>(base: &UNet2DConditionModel<B>, [height, width]: [usize; 2]) -> [usize; 2] {
    let halvings = base.down_blocks.iter().filter(|block| block.downsampler.is_some()).count();
    (0..halvings).fold([height, width], |[h, w], _| [h.div_ceil(2), w.div_ceil(2)])
}

#[cfg(test)]
mod tests {
    //! The branch against its first form, each up sub-block run on
    //! `cat([h_ctrl, zeros])`.
    use super::*;
    use crate::sd::resnet::tests::{gradients_by_path, relative_error, CastTo};
    use crate::sd::unet_2d::{DownBlockType, UpBlockType};
    use burn::backend::{Autodiff, Flex};
    use burn::module::{ModuleMapper, Param};
    use burn::tensor::Distribution;

    /// Three levels of widths 8, 12, 20 in 4 groups: the control's up
    /// sub-blocks take 40, 32 (twice), 20 (twice) and 16 channels, so
    /// groups straddle the end of the hidden state by 4 and 3 channels,
    /// and some hold zeros only.
    fn tiny_base() -> UNetConfig {
        UNetConfig {
            block_out_channels: vec![8, 12, 20],
            down_block_types: vec![
                DownBlockType::CrossAttnDownBlock2D,
                DownBlockType::CrossAttnDownBlock2D,
                DownBlockType::DownBlock2D,
            ],
            up_block_types: vec![
                UpBlockType::UpBlock2D,
                UpBlockType::CrossAttnUpBlock2D,
                UpBlockType::CrossAttnUpBlock2D,
            ],
            layers_per_block: PerBlock::One(1),
            norm_num_groups: Some(4),
            attention_head_dim: PerBlock::One(2),
            cross_attention_dim: PerBlock::One(16),
            ..UNetConfig::default()
        }
    }

    /// Noise on every norm, bias and linear weight (kept trainable): with
    /// the defaults (γ = 1, β = 0, identity mixers) every zero channel's
    /// constant would be 0 and a mishandled one would not show.
    struct Jitter;

    impl<B: Backend> ModuleMapper<B> for Jitter {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let std = match D {
                1 => 0.3,
                2 => 0.05,
                _ => return param,
            };
            param.map(|t| {
                let trains = t.is_require_grad();
                (t.clone() + t.random_like(Distribution::Normal(0.0, std))).detach().set_require_grad(trains)
            })
        }
    }

    fn random<B: Backend, const D: usize>(shape: [usize; D]) -> Tensor<B, D> {
        Tensor::<B, D>::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
    }

    /// [`ControlHook`] as first written (in f32).
    struct ZeroSkipHook<'a, B: Backend> {
        control: &'a StyleControl<B>,
        style: Option<Tensor<B, 4>>,
        h_ctrl: Option<Tensor<B, 4>>,
        scale: f64,
    }

    impl<B: Backend> UNetHook<B> for ZeroSkipHook<'_, B> {
        fn after_mid(&mut self, h_base: Tensor<B, 4>, inputs: &HookInputs<'_, B>) -> Tensor<B, 4> {
            let style = self.style.take().unwrap();
            let h_ctrl = self.control.mid_block.forward(style, inputs.temb, inputs.context);
            let (h_ctrl, h_base) = self.control.middle_block_out.forward(h_ctrl, h_base, self.scale);
            self.h_ctrl = Some(h_ctrl);
            h_base
        }

        fn after_up(&mut self, step: UpStep, h_base: Tensor<B, 4>, inputs: &HookInputs<'_, B>) -> Tensor<B, 4> {
            let h_ctrl = self.h_ctrl.take().unwrap();
            let no_skip = Tensor::<B, 4>::zeros(step.skip_dims, &h_ctrl.device()).cast(h_ctrl.dtype());
            let x = Tensor::cat(vec![h_ctrl, no_skip], 1);
            let h_ctrl = self.control.up_blocks.sub_block(step.index, x, inputs.temb, inputs.context, step.upsample_to);
            let (h_ctrl, h_base) = self.control.up_zero_convs_out[step.index].forward(h_ctrl, h_base, self.scale);
            self.h_ctrl = Some(h_ctrl);
            h_base
        }
    }

    /// A base UNet, a control branch and one step's inputs, all random, in `dtype`.
    struct Case<B: Backend> {
        base: UNet2DConditionModel<B>,
        control: StyleControl<B>,
        sample: Tensor<B, 4>,
        timesteps: Tensor<B, 1>,
        context: TextContext<B>,
        style: Tensor<B, 4>,
    }

    impl<B: Backend> Case<B> {
        fn new(batch: usize, [height, width]: [usize; 2], mix_init: MixInit, dtype: DType) -> Self {
            let device = Default::default();
            let config = tiny_base();
            let base = config.init::<B>(&device).map(&mut Jitter).map(&mut CastTo(dtype));
            let control = StyleControlConfig::from_base(&config, 2, mix_init)
                .init::<B>(&device)
                .map(&mut Jitter)
                .map(&mut CastTo(dtype));
            let [mid_h, mid_w] = mid_grid(&base, [height, width]);
            Case {
                sample: random([batch, 4, height, width]).cast(dtype),
                timesteps: Tensor::from_floats([500.0], &device),
                context: TextContext::new(random([batch, 5, 16]).cast(dtype)),
                style: random([batch, 20, mid_h, mid_w]).cast(dtype),
                base,
                control,
            }
        }

        /// The step's noise prediction through the branch, or through its first form.
        fn noise(&self, zero_skip_reference: bool) -> Tensor<B, 4> {
            let (sample, timesteps, context) = (self.sample.clone(), self.timesteps.clone(), &self.context);
            if zero_skip_reference {
                let mut hook =
                    ZeroSkipHook { control: &self.control, style: Some(self.style.clone()), h_ctrl: None, scale: 0.7 };
                self.base.forward_with_hook(sample, timesteps, context, &mut hook)
            } else {
                self.control.forward(&self.base, sample, timesteps, context, self.style.clone(), 0.7)
            }
        }
    }

    /// Batch 1 and 2, a mid-block grid of 1x1 and of 2x3 (H ≠ W), both mixer kinds.
    #[test]
    fn branch_matches_its_zero_skip_form() {
        for mix_init in [MixInit::Identity, MixInit::ZeroResidual] {
            for (batch, grid) in [(1, [3, 4]), (2, [3, 4]), (2, [5, 9])] {
                let case = Case::<Flex>::new(batch, grid, mix_init, DType::F32);
                let (got, expected) = (case.noise(false), case.noise(true));
                let error = relative_error(got, expected);
                assert!(error <= 1e-5, "{mix_init:?}, batch {batch}, {grid:?}: relative error {error:e}");
            }
        }
    }

    /// Training: every parameter of the branch gets the gradient its first
    /// form gives it, the zero channels' γ and β, conv1's weights on them
    /// and the mixers included.
    ///
    /// In f64, as this checks the algebra: each gradient sums over the whole
    /// step in another order, and in f32 cancelling sums put the two forms
    /// up to 2e-5 of a tensor's largest apart (200 random draws), close to
    /// any tolerance that would still catch a mistake.
    #[test]
    fn branch_gradients_match_its_zero_skip_form() {
        type A = Autodiff<Flex>;
        let dtype = DType::F64;
        for mix_init in [MixInit::Identity, MixInit::ZeroResidual] {
            let case = Case::<A>::new(2, [5, 6], mix_init, dtype);
            let weights = random::<A, 4>([2, 4, 5, 6]).cast(dtype);
            let gradients = |zero_skip_reference: bool| {
                let grads = (case.noise(zero_skip_reference) * weights.clone()).sum().backward();
                gradients_by_path(&case.control, &grads)
            };
            let (got, expected) = (gradients(false), gradients(true));
            let paths: Vec<&str> = expected.iter().map(|(path, _)| path.as_str()).collect();
            assert_eq!(got.iter().map(|(path, _)| path.as_str()).collect::<Vec<_>>(), paths);
            for block in 0..3 {
                for resnet in 0..2 {
                    for name in ["norm1.gamma", "norm1.beta", "conv1.weight", "conv1.bias", "conv_shortcut.weight"] {
                        let path = format!("up_blocks.{block}.resnets.{resnet}.{name}");
                        assert!(paths.contains(&path.as_str()), "no gradient for {path}");
                    }
                }
            }
            for mixer in 0..6 {
                for name in ["weight", "bias"] {
                    let path = format!("up_zero_convs_out.{mixer}.linear.{name}");
                    assert!(paths.contains(&path.as_str()), "no gradient for {path}");
                }
            }
            for ((path, got), (_, expected)) in got.into_iter().zip(expected) {
                assert_eq!(got.dtype(), dtype, "{path}");
                let error = relative_error(got, expected);
                assert!(error <= 1e-6, "{mix_init:?}: {path}: relative error {error:e}");
            }
        }
    }
}
