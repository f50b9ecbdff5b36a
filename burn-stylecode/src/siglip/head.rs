use super::SiglipMlp;
use crate::nn::attention::{MultiHeadAttention, MultiHeadAttentionConfig};
use crate::nn::{LayerNorm, LayerNormConfig};
use burn::module::{Module, Param};
use burn::prelude::*;

#[derive(Config, Debug)]
pub struct SiglipPoolingHeadConfig {
    pub hidden_size: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[config(default = 1e-6)]
    pub layer_norm_eps: f64,
}

impl SiglipPoolingHeadConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> SiglipPoolingHead<B> {
        SiglipPoolingHead {
            probe: Param::from_tensor(Tensor::random(
                [1, 1, self.hidden_size],
                burn::tensor::Distribution::Normal(0.0, 1.0),
                device,
            )),
            attention: MultiHeadAttentionConfig::new(self.hidden_size, self.num_attention_heads).init(device),
            layernorm: LayerNormConfig::new(self.hidden_size).with_epsilon(self.layer_norm_eps).init(device),
            mlp: SiglipMlp::new(self.hidden_size, self.intermediate_size, device),
        }
    }
}

/// `SiglipMultiheadAttentionPoolingHead`: a learned probe attends over the
/// tokens, then a residual MLP.
#[derive(Module, Debug)]
pub struct SiglipPoolingHead<B: Backend> {
    pub probe: Param<Tensor<B, 3>>,
    pub attention: MultiHeadAttention<B>,
    pub layernorm: LayerNorm<B>,
    pub mlp: SiglipMlp<B>,
}

impl<B: Backend> SiglipPoolingHead<B> {
    /// [B, L, D] → [B, D]
    pub fn forward(&self, hidden: Tensor<B, 3>) -> Tensor<B, 2> {
        let [batch, _, d_model] = hidden.dims();
        let probe = self.probe.val().expand([batch, 1, d_model]);
        let pooled = self.attention.forward(probe, hidden.clone(), hidden);
        let pooled = pooled.clone() + self.mlp.forward(self.layernorm.forward(pooled));
        pooled.reshape([batch, d_model])
    }
}
