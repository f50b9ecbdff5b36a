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

use crate::sd::unet_2d::{UNet2DConditionModel, UNetConfig};
use crate::sd::unet_2d_blocks::{MidBlock2DCrossAttn, UpBlock2D, UpSubBlocks};
use burn::module::Module;
use burn::nn::Initializer;
use crate::nn::{image_to_tokens, tokens_to_image, Linear, LinearConfig};
use burn::prelude::*;
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
        unet.attention_head_dim = crate::sd::unet_2d::PerBlock::One(num_attention_heads);
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
/// the branch's input lives in [`crate::autoencoder`]).
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
            // `map` keeps the parameter's id and its layout mappers.
            linear.weight = linear.weight.map(|zeros| zeros + Tensor::eye(width, device));
        }
        Self { linear, residual: init == MixInit::ZeroResidual }
    }

    /// Mixes the two branches; returns the new `(h_ctrl, h_base)` with the
    /// base blended by `scale`.
    pub fn forward(&self, h_ctrl: Tensor<B, 4>, h_base: Tensor<B, 4>, scale: f64) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [_, _, height, width] = h_ctrl.dims();
        let both = image_to_tokens(Tensor::cat(vec![h_ctrl, h_base.clone()], 1));
        let mut mixed = self.linear.forward(both.clone());
        if self.residual {
            mixed = mixed + both;
        }
        let mixed = tokens_to_image(mixed, height, width);
        let mut halves = mixed.chunk(2, 1).into_iter();
        let (h_ctrl, h_base_out) = (halves.next().unwrap(), halves.next().unwrap());
        (h_ctrl, h_base * (1.0 - scale) + h_base_out * scale)
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
        let [batch, ..] = sample.dims();
        let temb = base.batch_time_embedding(timesteps, batch);

        let mut h_base = base.conv_in(sample);
        let mut skips = vec![h_base.clone()];
        for i in 0..base.down_sub_block_count() {
            h_base = base.down_sub_block(i, h_base, &temb, &context);
            skips.push(h_base.clone());
        }
        let h_base = base.mid_block(h_base, &temb, &context);
        let h_ctrl = self.mid_block.forward(style, &temb, &context);
        let (mut h_ctrl, mut h_base) = self.middle_block_out.forward(h_ctrl, h_base, scale);

        for (i, mixer) in self.up_zero_convs_out.iter().enumerate() {
            let skip = skips.pop().expect("one skip per up sub-block");
            let upsample_to = skips.last().map(|next| {
                let [_, _, height, width] = next.dims();
                [height, width]
            });
            let no_skip = Tensor::zeros_like(&skip);
            h_ctrl = self.up_blocks.sub_block(i, Tensor::cat(vec![h_ctrl, no_skip], 1), &temb, &context, upsample_to);
            h_base = base.up_sub_block(i, Tensor::cat(vec![h_base, skip], 1), &temb, &context, upsample_to);
            (h_ctrl, h_base) = mixer.forward(h_ctrl, h_base, scale);
        }
        base.head(h_base)
    }
}

/// The base UNet's mid-block grid for a latent of `[height, width]`: each
/// downsampler (stride 2, padding 1) maps n to ⌈n/2⌉.
pub fn mid_grid<B: Backend>(base: &UNet2DConditionModel<B>, [height, width]: [usize; 2]) -> [usize; 2] {
    let halvings = base.down_blocks.iter().filter(|block| block.downsampler.is_some()).count();
    (0..halvings).fold([height, width], |[h, w], _| [h.div_ceil(2), w.div_ceil(2)])
}

/// What a stylecode conditions generation with: the autoencoder (its
/// decoder turns a code into the control branch's input), the control
/// module, and the version of these weights.
#[derive(Debug)]
pub struct StyleCodes<B: Backend> {
    pub autoencoder: crate::autoencoder::AttentionAutoencoder<B>,
    pub control: StyleControl<B>,
    pub version: char,
}

impl<B: Backend> StyleCodes<B> {
    /// Loads the autoencoder and the control module from the weights
    /// folder's `stylecodes/`, shaped after the base UNet's config.
    pub fn load(
        weights: &crate::WeightsDir,
        base: &UNetConfig,
        dtype: burn::tensor::DType,
        device: &B::Device,
    ) -> crate::Result<Self> {
        use crate::weights::loader::{load_autoencoder, load_style_control};
        let config = weights.stylecodes_config()?;
        let file = crate::weights::safetensors::TensorFile::open(weights.stylecodes_weights()?)?;
        let autoencoder = load_autoencoder(&config.autoencoder, &file, dtype, device)?;
        let control_config = StyleControlConfig::from_base(base, config.control_attention_heads, config.mix_init);
        let control = load_style_control(&control_config, &file, dtype, device)?;
        let mid_channels = *base.block_out_channels.last().unwrap_or(&0);
        if config.autoencoder.output_dim != mid_channels {
            return Err(crate::Error::Other(format!(
                "the style autoencoder makes {}-channel features but the base UNet's mid block has {mid_channels} channels",
                config.autoencoder.output_dim
            )));
        }
        Ok(Self { autoencoder, control, version: config.version })
    }

    /// The control branch's input for code latents [B, 20] (dequantised, any
    /// float dtype), at the mid-block grid [h, w], in the model's dtype.
    /// Constant over a generation: compute it once, outside the denoising loop.
    pub fn features(&self, latents: Tensor<B, 2>, [height, width]: [usize; 2]) -> Tensor<B, 4> {
        let latents = latents.cast(self.autoencoder.tgt_init.val().dtype());
        self.autoencoder.decode(latents, height, width)
    }
}
