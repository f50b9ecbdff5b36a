//! diffusers' `AutoencoderKL`: images ↔ SD latents (8× smaller, 4 channels).

use super::resnet::{conv1x1, conv3x3};
use super::unet_2d::ActFn;
use super::unet_2d_blocks::{
    DownBlock2D, DownBlock2DConfig, ResnetSettings, UNetMidBlock2D, UNetMidBlock2DConfig, UpBlock2D, UpBlock2DConfig,
};
use crate::nn::{conv2d, on_workers, GroupNorm, GroupNormConfig};
use crate::weights::JsonConfig;
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::prelude::*;
use serde::Deserialize;

/// Epsilon of every group norm in the VAE (fixed by diffusers).
const VAE_NORM_EPS: f64 = 1e-6;

/// The VAE encoder's block type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum DownEncoderBlockType {
    DownEncoderBlock2D,
}

/// The VAE decoder's block type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum UpDecoderBlockType {
    UpDecoderBlock2D,
}

/// A diffusers `AutoencoderKL` `config.json`; defaults are diffusers'.
/// [`VaeConfig::sd15`] is `runwayml/stable-diffusion-v1-5`'s VAE.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct VaeConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub down_block_types: Vec<DownEncoderBlockType>,
    pub up_block_types: Vec<UpDecoderBlockType>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub act_fn: ActFn,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    /// Latents are `scaling_factor × (z - shift_factor)` in the diffusion space.
    pub scaling_factor: f64,
    pub shift_factor: Option<f64>,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    pub mid_block_add_attention: bool,
}

impl Default for VaeConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec![DownEncoderBlockType::DownEncoderBlock2D],
            up_block_types: vec![UpDecoderBlockType::UpDecoderBlock2D],
            block_out_channels: vec![64],
            layers_per_block: 1,
            act_fn: ActFn::Silu,
            latent_channels: 4,
            norm_num_groups: 32,
            scaling_factor: 0.18215,
            shift_factor: None,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
        }
    }
}

impl VaeConfig {
    /// `runwayml/stable-diffusion-v1-5`'s VAE.
    pub fn sd15() -> Self {
        Self {
            down_block_types: vec![DownEncoderBlockType::DownEncoderBlock2D; 4],
            up_block_types: vec![UpDecoderBlockType::UpDecoderBlock2D; 4],
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            ..Self::default()
        }
    }
}

impl JsonConfig for VaeConfig {
    /// Errors naming what does not fit together.
    fn validate(&self) -> Result<(), String> {
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err("block_out_channels is empty".into());
        }
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(format!(
                "{} down and {} up block types for {n} block_out_channels",
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        if let Some(c) = self
            .block_out_channels
            .iter()
            .find(|c| self.norm_num_groups == 0 || !c.is_multiple_of(self.norm_num_groups))
        {
            return Err(format!("{c} channels are not divisible by norm_num_groups {}", self.norm_num_groups));
        }
        Ok(())
    }
}

impl VaeConfig {
    fn resnet(&self) -> ResnetSettings {
        ResnetSettings::new(self.norm_num_groups, VAE_NORM_EPS)
    }

    fn mid_block<B: Backend>(&self, device: &B::Device) -> UNetMidBlock2D<B> {
        UNetMidBlock2DConfig::new(*self.block_out_channels.last().expect("blocks"), self.resnet())
            .with_add_attention(self.mid_block_add_attention)
            .init(device)
    }

    pub fn init<B: Backend>(&self, device: &B::Device) -> AutoencoderKL<B> {
        if let Err(problem) = self.validate() {
            panic!("{problem}");
        }
        let channels = &self.block_out_channels;
        let n = channels.len();
        let (first, last) = (channels[0], channels[n - 1]);
        let norm = |c| GroupNormConfig::new(self.norm_num_groups, c).with_epsilon(VAE_NORM_EPS).init(device);
        let latent = self.latent_channels;
        let encoder = Encoder {
            conv_in: conv3x3(self.in_channels, first, device),
            down_blocks: (0..n)
                .map(|i| {
                    DownBlock2DConfig::new(
                        channels[i.saturating_sub(1)],
                        channels[i],
                        self.layers_per_block,
                        self.resnet(),
                        i + 1 < n,
                    )
                    .with_downsample_padding(0)
                    .init(device)
                })
                .collect(),
            mid_block: self.mid_block(device),
            conv_norm_out: norm(last),
            conv_out: conv3x3(last, 2 * latent, device),
        };
        let reversed = |i: usize| channels[n - 1 - i];
        let decoder = Decoder {
            conv_in: conv3x3(latent, last, device),
            mid_block: self.mid_block(device),
            up_blocks: (0..n)
                .map(|i| {
                    UpBlock2DConfig::new(
                        reversed(i.saturating_sub(1)),
                        reversed(i),
                        self.layers_per_block + 1,
                        self.resnet(),
                        i + 1 < n,
                    )
                    .init(device)
                })
                .collect(),
            conv_norm_out: norm(first),
            conv_out: conv3x3(first, self.out_channels, device),
        };
        AutoencoderKL {
            encoder,
            decoder,
            quant_conv: self.use_quant_conv.then(|| conv1x1(2 * latent, 2 * latent, device)),
            post_quant_conv: self.use_post_quant_conv.then(|| conv1x1(latent, latent, device)),
            scaling_factor: self.scaling_factor,
            shift_factor: self.shift_factor.unwrap_or(0.0),
        }
    }
}

/// Image → 2 × latent channels (mean and log-variance).
#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    pub conv_in: Conv2d<B>,
    /// `DownEncoderBlock2D`s: resnets without time embedding, downsampler
    /// padded at the bottom/right.
    pub down_blocks: Vec<DownBlock2D<B>>,
    pub mid_block: UNetMidBlock2D<B>,
    pub conv_norm_out: GroupNorm<B>,
    pub conv_out: Conv2d<B>,
}

impl<B: Backend> Encoder<B> {
    pub fn forward(&self, image: Tensor<B, 4>) -> Tensor<B, 4> {
        let h = conv2d(&self.conv_in, image);
        let h = self.down_blocks.iter().fold(h, |h, block| block.forward(h, None, None));
        let h = self.mid_block.forward(h);
        conv2d(&self.conv_out, self.conv_norm_out.forward_silu(h))
    }
}

/// Latents → image.
#[derive(Module, Debug)]
pub struct Decoder<B: Backend> {
    pub conv_in: Conv2d<B>,
    pub mid_block: UNetMidBlock2D<B>,
    /// `UpDecoderBlock2D`s: resnets without skips or time embedding, ×2 upsampler.
    pub up_blocks: Vec<UpBlock2D<B>>,
    pub conv_norm_out: GroupNorm<B>,
    pub conv_out: Conv2d<B>,
}

impl<B: Backend> Decoder<B> {
    pub fn forward(&self, latents: Tensor<B, 4>) -> Tensor<B, 4> {
        let h = self.mid_block.forward(conv2d(&self.conv_in, latents));
        let h = self.up_blocks.iter().fold(h, |h, block| block.forward(h, None));
        conv2d(&self.conv_out, self.conv_norm_out.forward_silu(h))
    }
}

/// The SD VAE. Images are in [-1, 1]; latents are in the VAE's own scale:
/// multiply by [`scaling_factor`](Self::scaling_factor) for the UNet's.
#[derive(Module, Debug)]
pub struct AutoencoderKL<B: Backend> {
    pub encoder: Encoder<B>,
    pub decoder: Decoder<B>,
    pub quant_conv: Option<Conv2d<B>>,
    pub post_quant_conv: Option<Conv2d<B>>,
    pub scaling_factor: f64,
    pub shift_factor: f64,
}

impl<B: Backend> AutoencoderKL<B> {
    /// `image` [B, 3, H, W] → (mean, logvar), each [B, latent, H/8, W/8];
    /// logvar clamped to [-30, 20] as diffusers' `DiagonalGaussianDistribution`.
    pub fn encode(&self, image: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let moments = self.encoder.forward(image);
        let moments = match &self.quant_conv {
            Some(conv) => conv2d(conv, moments),
            None => moments,
        };
        let mut halves = moments.chunk(2, 1);
        let logvar = halves.pop().expect("two halves").clamp(-30.0, 20.0);
        let mean = halves.pop().expect("two halves");
        (mean, logvar)
    }

    /// A draw from the posterior: `mean + exp(logvar / 2) · noise`, `noise`
    /// standard normal shaped like `mean` (the caller seeds it).
    pub fn sample(mean: Tensor<B, 4>, logvar: Tensor<B, 4>, noise: Tensor<B, 4>) -> Tensor<B, 4> {
        mean + (logvar * 0.5).exp() * noise
    }

    /// `latents` [B, latent, h, w] (VAE scale) → image [B, 3, H, W], ×2 per
    /// upsampler (8h × 8w in SD1.5), about [-1, 1].
    pub fn decode(&self, latents: Tensor<B, 4>) -> Tensor<B, 4> {
        on_workers::<B, _>(|| {
            let latents = match &self.post_quant_conv {
                Some(conv) => conv2d(conv, latents),
                None => latents,
            };
            self.decoder.forward(latents)
        })
    }

    /// VAE latents → the diffusion model's latents.
    pub fn to_diffusion(&self, latents: Tensor<B, 4>) -> Tensor<B, 4> {
        (latents - self.shift_factor) * self.scaling_factor
    }

    /// The diffusion model's latents → VAE latents, ready for [`decode`](Self::decode).
    pub fn from_diffusion(&self, latents: Tensor<B, 4>) -> Tensor<B, 4> {
        latents / self.scaling_factor + self.shift_factor
    }

    pub fn shift_factor(&self) -> f64 {
        self.shift_factor
    }

    pub fn scaling_factor(&self) -> f64 {
        self.scaling_factor
    }
}
