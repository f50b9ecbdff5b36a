//! diffusers' `Attention`, `BasicTransformerBlock` (self-attention,
//! cross-attention to the text, GEGLU feed-forward) and `Transformer2DModel`
//! (the spatial transformer of the UNet's cross-attention blocks).

use crate::nn::attention::attend;
use crate::nn::{
    conv2d, geglu, image_to_tokens, tokens_to_image, GroupNorm, GroupNormConfig, LayerNorm, LayerNormConfig, Linear,
    LinearConfig,
};
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::prelude::*;

use super::resnet::conv1x1;
use super::text_context::TextContext;

/// Shape of an [`Attention`].
#[derive(Config, Debug)]
pub struct AttentionConfig {
    /// Width of the queries (and of the output).
    pub query_dim: usize,
    /// Width of the keys/values' source; `None` for self-attention.
    pub cross_attention_dim: Option<usize>,
    pub heads: usize,
    pub dim_head: usize,
    /// Whether `to_q`/`to_k`/`to_v` have biases (not in the UNet, yes in the VAE).
    #[config(default = false)]
    pub bias: bool,
    /// A group norm applied to the input first (the VAE's mid-block
    /// attention): its number of groups and epsilon.
    pub group_norm: Option<(usize, f64)>,
}

impl AttentionConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> Attention<B> {
        let inner = self.heads * self.dim_head;
        let kv_dim = self.cross_attention_dim.unwrap_or(self.query_dim);
        let projection = |d_in| LinearConfig::new(d_in, inner).with_bias(self.bias).init(device);
        Attention {
            group_norm: self
                .group_norm
                .map(|(groups, eps)| GroupNormConfig::new(groups, self.query_dim).with_epsilon(eps).init(device)),
            to_q: projection(self.query_dim),
            to_k: projection(kv_dim),
            to_v: projection(kv_dim),
            to_out: LinearConfig::new(inner, self.query_dim).init(device),
            heads: self.heads,
        }
    }
}

/// Multi-head attention with diffusers' names: `to_q`, `to_k`, `to_v`,
/// `to_out.0` (the only one with a bias in the UNet).
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub group_norm: Option<GroupNorm<B>>,
    pub to_q: Linear<B>,
    pub to_k: Linear<B>,
    pub to_v: Linear<B>,
    pub to_out: Linear<B>,
    pub heads: usize,
}

impl<B: Backend> Attention<B> {
    /// `x` [B, L, query_dim] attends over `context` [B, Lc, cross_dim]
    /// (cross-attention, its keys and values computed once per context) or
    /// over itself (`None`) → [B, L, query_dim].
    pub fn forward(&self, x: Tensor<B, 3>, context: Option<&TextContext<B>>) -> Tensor<B, 3> {
        let q = self.to_q.forward(x.clone());
        let [k, v] = match context {
            Some(context) => context.keys_values(self),
            None => [self.to_k.forward(x.clone()), self.to_v.forward(x)],
        };
        self.to_out.forward(attend(q, k, v, self.heads, false))
    }

    /// Self-attention over the pixels of `x` [B, C, H, W] with its group
    /// norm first and the residual added: the VAE's mid-block attention.
    pub fn forward_spatial(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [_, _, height, width] = x.dims();
        let h = match &self.group_norm {
            Some(norm) => norm.forward(x.clone()),
            None => x.clone(),
        };
        let out = tokens_to_image(self.forward(image_to_tokens(h), None), height, width);
        x + out
    }
}

/// Shape of a [`FeedForward`].
#[derive(Config, Debug)]
pub struct FeedForwardConfig {
    pub dim: usize,
    /// Hidden width: 4 × `dim` in diffusers.
    pub inner_dim: usize,
}

impl FeedForwardConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> FeedForward<B> {
        FeedForward {
            proj: LinearConfig::new(self.dim, 2 * self.inner_dim).init(device),
            out: LinearConfig::new(self.inner_dim, self.dim).init(device),
        }
    }
}

/// GEGLU feed-forward: `proj` (diffusers `ff.net.0.proj`) gives a value and
/// a gate half; `out(value * gelu(gate))` (`ff.net.2`).
#[derive(Module, Debug)]
pub struct FeedForward<B: Backend> {
    pub proj: Linear<B>,
    pub out: Linear<B>,
}

impl<B: Backend> FeedForward<B> {
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.out.forward(geglu(self.proj.forward(x)))
    }
}

/// Shape of a [`BasicTransformerBlock`].
#[derive(Config, Debug)]
pub struct BasicTransformerBlockConfig {
    pub dim: usize,
    pub heads: usize,
    pub cross_attention_dim: usize,
    #[config(default = 1e-5)]
    pub norm_eps: f64,
}

impl BasicTransformerBlockConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> BasicTransformerBlock<B> {
        let norm = || LayerNormConfig::new(self.dim).with_epsilon(self.norm_eps).init(device);
        let dim_head = self.dim / self.heads;
        BasicTransformerBlock {
            norm1: norm(),
            attn1: AttentionConfig::new(self.dim, self.heads, dim_head).init(device),
            norm2: norm(),
            attn2: AttentionConfig::new(self.dim, self.heads, dim_head)
                .with_cross_attention_dim(Some(self.cross_attention_dim))
                .init(device),
            norm3: norm(),
            ff: FeedForwardConfig::new(self.dim, 4 * self.dim).init(device),
        }
    }
}

/// Pre-norm transformer layer: self-attention, cross-attention to the
/// text context, GEGLU feed-forward, each with a residual.
#[derive(Module, Debug)]
pub struct BasicTransformerBlock<B: Backend> {
    pub norm1: LayerNorm<B>,
    pub attn1: Attention<B>,
    pub norm2: LayerNorm<B>,
    pub attn2: Attention<B>,
    pub norm3: LayerNorm<B>,
    pub ff: FeedForward<B>,
}

impl<B: Backend> BasicTransformerBlock<B> {
    /// `x` [B, L, dim], `context` [B, Lc, cross_attention_dim].
    pub fn forward(&self, x: Tensor<B, 3>, context: &TextContext<B>) -> Tensor<B, 3> {
        let x = x.clone() + self.attn1.forward(self.norm1.forward(x), None);
        let x = x.clone() + self.attn2.forward(self.norm2.forward(x), Some(context));
        x.clone() + self.ff.forward(self.norm3.forward(x))
    }
}

/// `proj_in`/`proj_out` of a [`Transformer2DModel`]: a 1x1 convolution on
/// the image (SD1.5) or a linear map on the tokens (`use_linear_projection`).
#[derive(Module, Debug)]
pub enum Projection<B: Backend> {
    Conv(Conv2d<B>),
    Linear(Linear<B>),
}

impl<B: Backend> Projection<B> {
    fn new(linear: bool, d_in: usize, d_out: usize, device: &B::Device) -> Self {
        if linear {
            Projection::Linear(LinearConfig::new(d_in, d_out).init(device))
        } else {
            Projection::Conv(conv1x1(d_in, d_out, device))
        }
    }
}

/// Shape of a [`Transformer2DModel`].
#[derive(Config, Debug)]
pub struct Transformer2DModelConfig {
    /// Channels of the image (= the transformer width in SD).
    pub channels: usize,
    pub heads: usize,
    pub cross_attention_dim: usize,
    /// Groups of the input group norm.
    pub norm_num_groups: usize,
    /// Transformer layers (1 in SD1.5).
    #[config(default = 1)]
    pub num_layers: usize,
    #[config(default = false)]
    pub use_linear_projection: bool,
}

impl Transformer2DModelConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> Transformer2DModel<B> {
        let c = self.channels;
        let block = BasicTransformerBlockConfig::new(c, self.heads, self.cross_attention_dim);
        Transformer2DModel {
            norm: GroupNormConfig::new(self.norm_num_groups, c).with_epsilon(1e-6).init(device),
            proj_in: Projection::new(self.use_linear_projection, c, c, device),
            transformer_blocks: (0..self.num_layers).map(|_| block.init(device)).collect(),
            proj_out: Projection::new(self.use_linear_projection, c, c, device),
        }
    }
}

/// The spatial transformer: group norm, `proj_in`, the pixels as tokens
/// through the transformer blocks, `proj_out`, plus the input.
#[derive(Module, Debug)]
pub struct Transformer2DModel<B: Backend> {
    pub norm: GroupNorm<B>,
    pub proj_in: Projection<B>,
    pub transformer_blocks: Vec<BasicTransformerBlock<B>>,
    pub proj_out: Projection<B>,
}

impl<B: Backend> Transformer2DModel<B> {
    /// `x` [B, C, H, W], `context` [B, Lc, cross_attention_dim] → [B, C, H, W].
    pub fn forward(&self, x: Tensor<B, 4>, context: &TextContext<B>) -> Tensor<B, 4> {
        let [_, channels, height, width] = x.dims();
        let h = self.norm.forward(x.clone());
        let tokens = match &self.proj_in {
            Projection::Conv(conv) => image_to_tokens(conv2d(conv, h)),
            Projection::Linear(linear) => linear.forward(image_to_tokens(h)),
        };
        let tokens = self.transformer_blocks.iter().fold(tokens, |t, block| block.forward(t, context));
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv2d(conv, tokens_to_image(tokens, height, width)),
            Projection::Linear(linear) => tokens_to_image(linear.forward(tokens), height, width),
        };
        debug_assert_eq!(out.dims()[1], channels);
        out + x
    }
}
