//! The UNet's and the VAE's blocks, as diffusers' `unet_2d_blocks`.
//!
//! One struct covers each block family: [`DownBlock2D`] is
//! `CrossAttnDownBlock2D` when it has attentions, `DownBlock2D` when it has
//! none, and the VAE's `DownEncoderBlock2D` without a time embedding;
//! [`UpBlock2D`] likewise covers `CrossAttnUpBlock2D`, `UpBlock2D` and the
//! VAE's `UpDecoderBlock2D`. Field names are diffusers' so that the key map
//! stays short.
//!
//! The blocks run one *sub-block* at a time: one resnet with its attention
//! if any; a downsampler is a down sub-block of its own; an upsampler joins
//! the last sub-block of its up block. The style control module mixes
//! hidden states between the up sub-blocks of two UNets.

use super::attention::{Attention, AttentionConfig, Transformer2DModel, Transformer2DModelConfig};
use super::resnet::{
    Downsample2D, Downsample2DConfig, ResnetBlock2D, ResnetBlock2DConfig, Upsample2D, Upsample2DConfig,
};
use super::text_context::TextContext;
use burn::module::Module;
use burn::prelude::*;

/// The cross-attention of a block: a [`Transformer2DModel`] after each resnet.
#[derive(Config, Debug)]
pub struct CrossAttentionConfig {
    /// Number of heads (what SD1.5 configs call `attention_head_dim`).
    pub heads: usize,
    /// Width of the text context.
    pub cross_attention_dim: usize,
    /// Transformer layers per attention.
    #[config(default = 1)]
    pub transformer_layers: usize,
    #[config(default = false)]
    pub use_linear_projection: bool,
}

impl CrossAttentionConfig {
    fn init<B: Backend>(&self, channels: usize, groups: usize, device: &B::Device) -> Transformer2DModel<B> {
        Transformer2DModelConfig::new(channels, self.heads, self.cross_attention_dim, groups)
            .with_num_layers(self.transformer_layers)
            .with_use_linear_projection(self.use_linear_projection)
            .init(device)
    }
}

/// Resnet settings shared by every block of a network.
#[derive(Config, Debug)]
pub struct ResnetSettings {
    /// Width of the time embedding; `None` in the VAE.
    pub temb_channels: Option<usize>,
    pub groups: usize,
    pub eps: f64,
    #[config(default = 0.0)]
    pub dropout: f64,
    #[config(default = 1.0)]
    pub output_scale_factor: f64,
}

impl ResnetSettings {
    fn init<B: Backend>(&self, in_channels: usize, out_channels: usize, device: &B::Device) -> ResnetBlock2D<B> {
        ResnetBlock2DConfig::new(in_channels, out_channels, self.groups)
            .with_temb_channels(self.temb_channels)
            .with_eps(self.eps)
            .with_dropout(self.dropout)
            .with_output_scale_factor(self.output_scale_factor)
            .init(device)
    }
}

/// Runs a resnet, then its attention if there is one.
fn resnet_then_attention<B: Backend>(
    resnet: &ResnetBlock2D<B>,
    attention: Option<&Transformer2DModel<B>>,
    x: Tensor<B, 4>,
    temb: Option<&Tensor<B, 2>>,
    context: Option<&TextContext<B>>,
) -> Tensor<B, 4> {
    then_attention(attention, resnet.forward(x, temb), context)
}

/// Runs the attention on a resnet's output `h`, if there is one.
fn then_attention<B: Backend>(
    attention: Option<&Transformer2DModel<B>>,
    h: Tensor<B, 4>,
    context: Option<&TextContext<B>>,
) -> Tensor<B, 4> {
    match attention {
        Some(attention) => attention.forward(h, context.expect("a cross-attention block needs the text context")),
        None => h,
    }
}

// ---------------------------------------------------------------------------
// down blocks

/// Shape of a [`DownBlock2D`].
#[derive(Config, Debug)]
pub struct DownBlock2DConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub num_layers: usize,
    pub resnet: ResnetSettings,
    /// Cross-attention after each resnet (`CrossAttnDownBlock2D`).
    pub attention: Option<CrossAttentionConfig>,
    pub add_downsample: bool,
    /// 1 in the UNet; 0 in the VAE (asymmetric padding, see [`Downsample2DConfig`]).
    #[config(default = 1)]
    pub downsample_padding: usize,
}

impl DownBlock2DConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> DownBlock2D<B> {
        let (c_in, c_out) = (self.in_channels, self.out_channels);
        DownBlock2D {
            resnets: (0..self.num_layers)
                .map(|j| self.resnet.init(if j == 0 { c_in } else { c_out }, c_out, device))
                .collect(),
            attentions: match &self.attention {
                Some(attention) => {
                    (0..self.num_layers).map(|_| attention.init(c_out, self.resnet.groups, device)).collect()
                }
                None => Vec::new(),
            },
            downsampler: self
                .add_downsample
                .then(|| Downsample2DConfig::new(c_out).with_padding(self.downsample_padding).init(device)),
        }
    }
}

/// Resnets (each followed by an attention in a cross-attention block),
/// then an optional stride-2 downsampler. Every sub-block's output is a skip.
#[derive(Module, Debug)]
pub struct DownBlock2D<B: Backend> {
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// Empty, or one per resnet.
    pub attentions: Vec<Transformer2DModel<B>>,
    /// diffusers' `downsamplers.0`.
    pub downsampler: Option<Downsample2D<B>>,
}

impl<B: Backend> DownBlock2D<B> {
    pub fn sub_block_count(&self) -> usize {
        self.resnets.len() + usize::from(self.downsampler.is_some())
    }

    /// Sub-block `j`: resnet `j` with its attention, or the downsampler after the last.
    pub fn sub_block(
        &self,
        j: usize,
        x: Tensor<B, 4>,
        temb: Option<&Tensor<B, 2>>,
        context: Option<&TextContext<B>>,
    ) -> Tensor<B, 4> {
        match (self.resnets.get(j), &self.downsampler) {
            (Some(resnet), _) => resnet_then_attention(resnet, self.attentions.get(j), x, temb, context),
            (None, Some(down)) if j == self.resnets.len() => down.forward(x),
            _ => panic!("down block has {} sub-blocks, asked for {j}", self.sub_block_count()),
        }
    }

    /// The whole block without keeping the skips (the VAE encoder).
    pub fn forward(
        &self,
        x: Tensor<B, 4>,
        temb: Option<&Tensor<B, 2>>,
        context: Option<&TextContext<B>>,
    ) -> Tensor<B, 4> {
        (0..self.sub_block_count()).fold(x, |h, j| self.sub_block(j, h, temb, context))
    }
}

/// Sub-block access across a list of down blocks (the UNet's `down_blocks`).
pub trait DownSubBlocks<B: Backend> {
    /// Sub-blocks in all (11 in SD1.5).
    fn sub_block_count(&self) -> usize;
    /// (block, sub-block within it) of sub-block `i`.
    fn locate_sub_block(&self, i: usize) -> (usize, usize);
    /// Runs down sub-block `i`; its output is a skip.
    fn sub_block(
        &self,
        i: usize,
        x: Tensor<B, 4>,
        temb: Option<&Tensor<B, 2>>,
        context: Option<&TextContext<B>>,
    ) -> Tensor<B, 4>;
}

impl<B: Backend> DownSubBlocks<B> for [DownBlock2D<B>] {
    fn sub_block_count(&self) -> usize {
        self.iter().map(DownBlock2D::sub_block_count).sum()
    }

    fn locate_sub_block(&self, i: usize) -> (usize, usize) {
        locate(self.iter().map(DownBlock2D::sub_block_count), i).unwrap_or_else(|| {
            panic!("the UNet has {} down sub-blocks, asked for {i}", DownSubBlocks::sub_block_count(self))
        })
    }

    fn sub_block(
        &self,
        i: usize,
        x: Tensor<B, 4>,
        temb: Option<&Tensor<B, 2>>,
        context: Option<&TextContext<B>>,
    ) -> Tensor<B, 4> {
        let (block, j) = self.locate_sub_block(i);
        self[block].sub_block(j, x, temb, context)
    }
}

/// Index `i` into a concatenation of lists of the given lengths.
fn locate(lengths: impl Iterator<Item = usize>, mut i: usize) -> Option<(usize, usize)> {
    for (block, len) in lengths.enumerate() {
        if i < len {
            return Some((block, i));
        }
        i -= len;
    }
    None
}

// ---------------------------------------------------------------------------
// mid blocks

/// Shape of a [`MidBlock2DCrossAttn`].
#[derive(Config, Debug)]
pub struct MidBlock2DCrossAttnConfig {
    pub channels: usize,
    pub resnet: ResnetSettings,
    pub attention: CrossAttentionConfig,
    /// Attention + resnet pairs after the first resnet.
    #[config(default = 1)]
    pub num_layers: usize,
}

impl MidBlock2DCrossAttnConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> MidBlock2DCrossAttn<B> {
        let c = self.channels;
        MidBlock2DCrossAttn {
            resnets: (0..=self.num_layers).map(|_| self.resnet.init(c, c, device)).collect(),
            attentions: (0..self.num_layers).map(|_| self.attention.init(c, self.resnet.groups, device)).collect(),
        }
    }
}

/// `UNetMidBlock2DCrossAttn`: resnet, then (attention, resnet) pairs.
#[derive(Module, Debug)]
pub struct MidBlock2DCrossAttn<B: Backend> {
    pub resnets: Vec<ResnetBlock2D<B>>,
    pub attentions: Vec<Transformer2DModel<B>>,
}

impl<B: Backend> MidBlock2DCrossAttn<B> {
    pub fn forward(&self, x: Tensor<B, 4>, temb: &Tensor<B, 2>, context: &TextContext<B>) -> Tensor<B, 4> {
        let (first, rest) = self.resnets.split_first().expect("a mid block has resnets");
        let h = first.forward(x, Some(temb));
        self.attentions
            .iter()
            .zip(rest)
            .fold(h, |h, (attention, resnet)| resnet.forward(attention.forward(h, context), Some(temb)))
    }
}

/// Shape of a [`UNetMidBlock2D`] (the VAE's mid block).
#[derive(Config, Debug)]
pub struct UNetMidBlock2DConfig {
    pub channels: usize,
    pub resnet: ResnetSettings,
    /// Whether the self-attention between the resnets exists.
    #[config(default = true)]
    pub add_attention: bool,
}

impl UNetMidBlock2DConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> UNetMidBlock2D<B> {
        let c = self.channels;
        // One head over all channels (diffusers: attention_head_dim = channels).
        let attention =
            AttentionConfig::new(c, 1, c).with_bias(true).with_group_norm(Some((self.resnet.groups, self.resnet.eps)));
        UNetMidBlock2D {
            resnets: (0..2).map(|_| self.resnet.init(c, c, device)).collect(),
            attentions: if self.add_attention { vec![attention.init(device)] } else { Vec::new() },
        }
    }
}

/// `UNetMidBlock2D` as the VAE uses it: resnet, single-head spatial
/// self-attention (group norm inside, residual), resnet; no time embedding.
#[derive(Module, Debug)]
pub struct UNetMidBlock2D<B: Backend> {
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// Empty when `mid_block_add_attention` is false.
    pub attentions: Vec<Attention<B>>,
}

impl<B: Backend> UNetMidBlock2D<B> {
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut h = x;
        for (j, resnet) in self.resnets.iter().enumerate() {
            if j > 0 {
                if let Some(attention) = self.attentions.get(j - 1) {
                    h = attention.forward_spatial(h);
                }
            }
            h = resnet.forward(h, None);
        }
        h
    }
}

// ---------------------------------------------------------------------------
// up blocks

/// Shape of an [`UpBlock2D`].
#[derive(Config, Debug)]
pub struct UpBlock2DConfig {
    /// Channels of the hidden state entering the block.
    pub prev_output_channels: usize,
    pub out_channels: usize,
    /// Channels of the skip the LAST resnet takes (the others take
    /// `out_channels`); `None` for a block without skips (the VAE decoder).
    pub last_skip_channels: Option<usize>,
    pub num_layers: usize,
    pub resnet: ResnetSettings,
    /// Cross-attention after each resnet (`CrossAttnUpBlock2D`).
    pub attention: Option<CrossAttentionConfig>,
    pub add_upsample: bool,
}

impl UpBlock2DConfig {
    /// Input channels of resnet `j`: the hidden state plus its skip.
    fn resnet_in_channels(&self, j: usize) -> usize {
        let hidden = if j == 0 { self.prev_output_channels } else { self.out_channels };
        let skip = match self.last_skip_channels {
            Some(last) if j + 1 == self.num_layers => last,
            Some(_) => self.out_channels,
            None => 0,
        };
        hidden + skip
    }

    pub fn init<B: Backend>(&self, device: &B::Device) -> UpBlock2D<B> {
        let c_out = self.out_channels;
        UpBlock2D {
            resnets: (0..self.num_layers)
                .map(|j| self.resnet.init(self.resnet_in_channels(j), c_out, device))
                .collect(),
            attentions: match &self.attention {
                Some(attention) => {
                    (0..self.num_layers).map(|_| attention.init(c_out, self.resnet.groups, device)).collect()
                }
                None => Vec::new(),
            },
            upsampler: self.add_upsample.then(|| Upsample2DConfig::new(c_out).init(device)),
            prev_output_channels: self.prev_output_channels,
        }
    }
}

/// Resnets (each followed by an attention in a cross-attention block), each
/// taking the hidden state concatenated with a skip on channels, then an
/// optional nearest-×2 upsampler.
#[derive(Module, Debug)]
pub struct UpBlock2D<B: Backend> {
    pub resnets: Vec<ResnetBlock2D<B>>,
    /// Empty, or one per resnet.
    pub attentions: Vec<Transformer2DModel<B>>,
    /// diffusers' `upsamplers.0`.
    pub upsampler: Option<Upsample2D<B>>,
    /// Channels of the hidden state entering the block.
    pub prev_output_channels: usize,
}

impl<B: Backend> UpBlock2D<B> {
    pub fn sub_block_count(&self) -> usize {
        self.resnets.len()
    }

    pub fn out_channels(&self) -> usize {
        self.resnets.last().map_or(self.prev_output_channels, |r| r.out_channels)
    }

    /// Channels of the skip that sub-block `j` expects concatenated to the
    /// hidden state (0 in the VAE decoder).
    pub fn skip_channels(&self, j: usize) -> usize {
        let hidden = if j == 0 { self.prev_output_channels } else { self.out_channels() };
        self.resnets[j].in_channels - hidden
    }

    /// Sub-block `j`: resnet `j` on `x` (hidden state and skip already
    /// concatenated), its attention, and for the last, the upsampler: to
    /// `upsample_to` [H, W] if given, else ×2. `upsample_to` is ignored by
    /// the other sub-blocks.
    pub fn sub_block(
        &self,
        j: usize,
        x: Tensor<B, 4>,
        temb: Option<&Tensor<B, 2>>,
        context: Option<&TextContext<B>>,
        upsample_to: Option<[usize; 2]>,
    ) -> Tensor<B, 4> {
        let h = resnet_then_attention(self.resnet(j), self.attentions.get(j), x, temb, context);
        self.upsample_after(j, h, upsample_to)
    }

    /// [`Self::sub_block`] on `x = cat([head, 0^zeros], 1)` given only `head`:
    /// the resnet skips the work on the zeros
    /// ([`ResnetBlock2D::forward_zero_tail`]), the rest is unchanged.
    pub(crate) fn sub_block_zero_skip(
        &self,
        j: usize,
        head: Tensor<B, 4>,
        zeros: usize,
        temb: Option<&Tensor<B, 2>>,
        context: Option<&TextContext<B>>,
        upsample_to: Option<[usize; 2]>,
    ) -> Tensor<B, 4> {
        let h = then_attention(self.attentions.get(j), self.resnet(j).forward_zero_tail(head, zeros, temb), context);
        self.upsample_after(j, h, upsample_to)
    }

    /// Resnet `j`, which sub-block `j` starts with.
    fn resnet(&self, j: usize) -> &ResnetBlock2D<B> {
        self.resnets.get(j).unwrap_or_else(|| panic!("up block has {} sub-blocks, asked for {j}", self.resnets.len()))
    }

    /// The upsampler where sub-block `j` is the last.
    fn upsample_after(&self, j: usize, h: Tensor<B, 4>, upsample_to: Option<[usize; 2]>) -> Tensor<B, 4> {
        match &self.upsampler {
            Some(up) if j + 1 == self.resnets.len() => up.forward(h, upsample_to),
            _ => h,
        }
    }

    /// The whole block without skips (the VAE decoder).
    pub fn forward(&self, x: Tensor<B, 4>, temb: Option<&Tensor<B, 2>>) -> Tensor<B, 4> {
        (0..self.sub_block_count()).fold(x, |h, j| self.sub_block(j, h, temb, None, None))
    }
}

/// Sub-block access across a list of up blocks: the UNet's `up_blocks`, or
/// the style control module's own.
pub trait UpSubBlocks<B: Backend> {
    /// Sub-blocks in all (12 in SD1.5).
    fn sub_block_count(&self) -> usize;
    /// (block, sub-block within it) of sub-block `i`.
    fn locate_sub_block(&self, i: usize) -> (usize, usize);
    /// Channels of the skip each sub-block expects, in order.
    fn skip_channels(&self) -> Vec<usize>;
    /// Runs up sub-block `i` on `x` = [hidden state, skip] concatenated on
    /// channels. Where the sub-block ends with an upsampler, it scales to
    /// `upsample_to` (the next skip's [H, W]) if given, else ×2.
    fn sub_block(
        &self,
        i: usize,
        x: Tensor<B, 4>,
        temb: &Tensor<B, 2>,
        context: &TextContext<B>,
        upsample_to: Option<[usize; 2]>,
    ) -> Tensor<B, 4>;
}

impl<B: Backend> UpSubBlocks<B> for [UpBlock2D<B>] {
    fn sub_block_count(&self) -> usize {
        self.iter().map(UpBlock2D::sub_block_count).sum()
    }

    fn locate_sub_block(&self, i: usize) -> (usize, usize) {
        locate(self.iter().map(UpBlock2D::sub_block_count), i)
            .unwrap_or_else(|| panic!("there are {} up sub-blocks, asked for {i}", UpSubBlocks::sub_block_count(self)))
    }

    fn skip_channels(&self) -> Vec<usize> {
        self.iter().flat_map(|block| (0..block.sub_block_count()).map(|j| block.skip_channels(j))).collect()
    }

    fn sub_block(
        &self,
        i: usize,
        x: Tensor<B, 4>,
        temb: &Tensor<B, 2>,
        context: &TextContext<B>,
        upsample_to: Option<[usize; 2]>,
    ) -> Tensor<B, 4> {
        let (block, j) = self.locate_sub_block(i);
        self[block].sub_block(j, x, Some(temb), Some(context), upsample_to)
    }
}
