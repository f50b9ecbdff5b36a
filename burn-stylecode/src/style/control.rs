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

use crate::nn::{image_to_tokens, in_dtype, tokens_to_image, Linear, LinearConfig};
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
        let [_, _, height, width] = h_ctrl.dims();
        let base_dtype = h_base.dtype();
        let h_base = in_dtype(h_base, h_ctrl.dtype());
        let both = image_to_tokens(Tensor::cat(vec![h_ctrl, h_base.clone()], 1));
        let mut mixed = self.linear.forward(both.clone());
        if self.residual {
            mixed = mixed + both;
        }
        let mixed = tokens_to_image(mixed, height, width);
        let mut halves = mixed.chunk(2, 1).into_iter();
        let (h_ctrl, h_base_out) = (halves.next().unwrap(), halves.next().unwrap());
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
        context: Tensor<B, 3>,
        style: Tensor<B, 4>,
        scale: f64,
    ) -> Tensor<B, 4> {
        base.forward_with_hook(sample, timesteps, &context, &mut self.hook(style, scale))
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
    inputs: Option<(Tensor<B, 2>, Tensor<B, 3>)>,
}

impl<B: Backend> ControlHook<'_, B> {
    fn branch_inputs(&mut self, inputs: &HookInputs<'_, B>, dtype: DType) -> (Tensor<B, 2>, Tensor<B, 3>) {
        self.inputs
            .get_or_insert_with(|| (in_dtype(inputs.temb.clone(), dtype), in_dtype(inputs.context.clone(), dtype)))
            .clone()
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
        let no_skip = Tensor::zeros(step.skip_dims, (&h_ctrl.device(), h_ctrl.dtype()));
        let (temb, context) = self.branch_inputs(inputs, h_ctrl.dtype());
        let h_ctrl = self.control.up_blocks.sub_block(
            step.index,
            Tensor::cat(vec![h_ctrl, no_skip], 1),
            &temb,
            &context,
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
