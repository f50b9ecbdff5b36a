//! Multi-head attention with separate q/k/v/out projections, on burn's
//! fused attention op.
//!
//! SigLIP stores the four projections apart (`q_proj`, …); PyTorch's
//! `nn.MultiheadAttention` packs q, k and v into `in_proj_weight`. Both load
//! into this one module: the loader splits the packed form.

use burn::module::Module;
use super::linear_config;
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

/// Shape of a [`MultiHeadAttention`].
#[derive(Config, Debug)]
pub struct MultiHeadAttentionConfig {
    /// Model width (query, key, value and output).
    pub d_model: usize,
    /// Number of heads; must divide `d_model`.
    pub num_heads: usize,
}

impl MultiHeadAttentionConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> MultiHeadAttention<B> {
        assert!(
            self.num_heads > 0 && self.d_model % self.num_heads == 0,
            "d_model {} is not divisible by num_heads {}",
            self.d_model,
            self.num_heads
        );
        let linear = || linear_config(self.d_model, self.d_model).init(device);
        MultiHeadAttention {
            q_proj: linear(),
            k_proj: linear(),
            v_proj: linear(),
            out_proj: linear(),
            num_heads: self.num_heads,
        }
    }
}

/// `softmax(q kᵀ / sqrt(d_head)) v` over `num_heads` heads, with biased
/// input and output projections.
#[derive(Module, Debug)]
pub struct MultiHeadAttention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub out_proj: Linear<B>,
    pub num_heads: usize,
}

impl<B: Backend> MultiHeadAttention<B> {
    /// `query` [B, Lq, D], `key` and `value` [B, Lk, D] → [B, Lq, D].
    pub fn forward(&self, query: Tensor<B, 3>, key: Tensor<B, 3>, value: Tensor<B, 3>) -> Tensor<B, 3> {
        let q = self.q_proj.forward(query);
        let k = self.k_proj.forward(key);
        let v = self.v_proj.forward(value);
        self.out_proj.forward(attend(q, k, v, self.num_heads, false))
    }

    /// Self-attention: query, key and value are all `x`.
    pub fn forward_self(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.forward(x.clone(), x.clone(), x)
    }

    /// Causal self-attention: position i attends to positions ≤ i.
    pub fn forward_causal(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let q = self.q_proj.forward(x.clone());
        let k = self.k_proj.forward(x.clone());
        let v = self.v_proj.forward(x);
        self.out_proj.forward(attend(q, k, v, self.num_heads, true))
    }
}

/// Scaled dot-product attention over `num_heads` heads of already projected
/// `q` [B, Lq, D], `k` and `v` [B, Lk, D] → [B, Lq, D], on burn's fused op.
/// Every attention in the crate goes through here.
pub fn attend<B: Backend>(q: Tensor<B, 3>, k: Tensor<B, 3>, v: Tensor<B, 3>, num_heads: usize, is_causal: bool) -> Tensor<B, 3> {
    let [batch, len_q, d_model] = q.dims();
    let options = AttentionModuleOptions { is_causal, ..Default::default() };
    let out = attention(split_heads(q, num_heads), split_heads(k, num_heads), split_heads(v, num_heads), None, None, options);
    out.swap_dims(1, 2).reshape([batch, len_q, d_model])
}

/// [B, L, D] → [B, heads, L, D/heads]
fn split_heads<B: Backend>(x: Tensor<B, 3>, num_heads: usize) -> Tensor<B, 4> {
    let [batch, len, d_model] = x.dims();
    x.reshape([batch, len, num_heads, d_model / num_heads]).swap_dims(1, 2)
}
