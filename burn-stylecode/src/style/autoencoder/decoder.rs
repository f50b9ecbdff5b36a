use crate::nn::attention::{MultiHeadAttention, MultiHeadAttentionConfig};
use crate::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;

/// PyTorch's `nn.TransformerDecoderLayer` defaults: post-norm, ReLU, eps 1e-5.
#[derive(Config, Debug)]
pub struct TransformerDecoderLayerConfig {
    pub d_model: usize,
    pub num_heads: usize,
    pub dim_feedforward: usize,
    #[config(default = 0.1)]
    pub dropout: f64,
}

impl TransformerDecoderLayerConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> TransformerDecoderLayer<B> {
        let attention = MultiHeadAttentionConfig::new(self.d_model, self.num_heads);
        let norm = || LayerNormConfig::new(self.d_model).init(device);
        TransformerDecoderLayer {
            self_attn: attention.init(device),
            multihead_attn: attention.init(device),
            linear1: LinearConfig::new(self.d_model, self.dim_feedforward).init(device),
            linear2: LinearConfig::new(self.dim_feedforward, self.d_model).init(device),
            norm1: norm(),
            norm2: norm(),
            norm3: norm(),
            dropout: DropoutConfig::new(self.dropout).init(),
        }
    }
}

/// Self-attention, cross-attention to the memory, feed-forward; each
/// followed by dropout, a residual and a layer norm.
///
/// Unlike PyTorch, no dropout is applied to the attention weights: burn's
/// fused attention has none.
#[derive(Module, Debug)]
pub struct TransformerDecoderLayer<B: Backend> {
    pub self_attn: MultiHeadAttention<B>,
    pub multihead_attn: MultiHeadAttention<B>,
    pub linear1: Linear<B>,
    pub linear2: Linear<B>,
    pub norm1: LayerNorm<B>,
    pub norm2: LayerNorm<B>,
    pub norm3: LayerNorm<B>,
    pub dropout: Dropout,
}

impl<B: Backend> TransformerDecoderLayer<B> {
    /// `x` [B, L, D], `memory` [B, M, D] → [B, L, D]
    pub fn forward(&self, x: Tensor<B, 3>, memory: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = self.norm1.forward(x.clone() + self.dropout.forward(self.self_attn.forward_self(x)));
        let x = self
            .norm2
            .forward(x.clone() + self.dropout.forward(self.multihead_attn.forward(x, memory.clone(), memory)));
        let ff = self.linear2.forward(self.dropout.forward(relu(self.linear1.forward(x.clone()))));
        self.norm3.forward(x + self.dropout.forward(ff))
    }
}
