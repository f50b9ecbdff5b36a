use crate::nn::attention::{MultiHeadAttention, MultiHeadAttentionConfig};
use crate::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::module::Module;
use burn::prelude::*;

#[derive(Config, Debug)]
pub struct SiglipEncoderLayerConfig {
    pub hidden_size: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[config(default = 1e-6)]
    pub layer_norm_eps: f64,
}

impl SiglipEncoderLayerConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> SiglipEncoderLayer<B> {
        let norm = || LayerNormConfig::new(self.hidden_size).with_epsilon(self.layer_norm_eps).init(device);
        SiglipEncoderLayer {
            layer_norm1: norm(),
            self_attn: MultiHeadAttentionConfig::new(self.hidden_size, self.num_attention_heads).init(device),
            layer_norm2: norm(),
            mlp: SiglipMlp::new(self.hidden_size, self.intermediate_size, device),
        }
    }
}

/// Pre-norm transformer layer: `x + attn(ln1(x))`, then `x + mlp(ln2(x))`.
#[derive(Module, Debug)]
pub struct SiglipEncoderLayer<B: Backend> {
    pub layer_norm1: LayerNorm<B>,
    pub self_attn: MultiHeadAttention<B>,
    pub layer_norm2: LayerNorm<B>,
    pub mlp: SiglipMlp<B>,
}

impl<B: Backend> SiglipEncoderLayer<B> {
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = x.clone() + self.self_attn.forward_self(self.layer_norm1.forward(x));
        x.clone() + self.mlp.forward(self.layer_norm2.forward(x))
    }
}

/// `fc2(gelu_tanh(fc1(x)))`
#[derive(Module, Debug)]
pub struct SiglipMlp<B: Backend> {
    pub fc1: Linear<B>,
    pub fc2: Linear<B>,
}

impl<B: Backend> SiglipMlp<B> {
    pub fn new(hidden: usize, intermediate: usize, device: &B::Device) -> Self {
        Self {
            fc1: LinearConfig::new(hidden, intermediate).init(device),
            fc2: LinearConfig::new(intermediate, hidden).init(device),
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        self.fc2.forward(crate::nn::gelu_tanh(self.fc1.forward(x)))
    }
}
