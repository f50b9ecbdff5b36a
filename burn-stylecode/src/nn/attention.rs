//! Multi-head attention with separate q/k/v/out projections, on burn's
//! fused attention op.
//!
//! SigLIP stores the four projections apart (`q_proj`, …); PyTorch's
//! `nn.MultiheadAttention` packs q, k and v into `in_proj_weight`. Both load
//! into this one module: the loader splits the packed form.

use crate::nn::{swap_dims_1_2, Linear, LinearConfig};
use burn::module::Module;
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
            self.num_heads > 0 && self.d_model.is_multiple_of(self.num_heads),
            "d_model {} is not divisible by num_heads {}",
            self.d_model,
            self.num_heads
        );
        let linear = || LinearConfig::new(self.d_model, self.d_model).init(device);
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

/// Score elements one attention call may hold: B·heads·Lq·Lk ≤ 2^24 (64 MiB
/// in f32). Backends without a fused kernel (burn-cubecl's fallback, which
/// wgpu uses) materialise the whole score matrix: SD1.5 at 512×512 (4,096
/// tokens, 8 heads, batch 2) would need 1 GiB in one buffer, past the
/// 128 MiB storage-binding limit of some wgpu devices, and the memory of
/// many GPUs. Softmax rows are independent, so splitting the queries into
/// blocks gives the same result.
const MAX_SCORES: usize = 1 << 24;

/// Scaled dot-product attention over `num_heads` heads of already projected
/// `q` [B, Lq, D], `k` and `v` [B, Lk, D] → [B, Lq, D], on burn's fused op.
/// Every attention in the crate goes through here.
pub fn attend<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    num_heads: usize,
    is_causal: bool,
) -> Tensor<B, 3> {
    if !is_causal && super::cpu::runs_here(&q) {
        return attend_on_cpu(q, k, v, num_heads);
    }
    attend_in_blocks(q, k, v, num_heads, is_causal, MAX_SCORES)
}

/// burn-flex in f32: this crate's multi-threaded kernel ([`super::cpu::attention`]).
fn attend_on_cpu<B: Backend>(q: Tensor<B, 3>, k: Tensor<B, 3>, v: Tensor<B, 3>, heads: usize) -> Tensor<B, 3> {
    use super::cpu::{attention, from_values, to_flex, values};
    let [batch, len_q, d_model] = q.dims();
    let len_k = k.dims()[1];
    let shape = attention::AttentionShape { batch, len_q, len_k, d_model, heads };
    let (q, k, v) = (to_flex(q), to_flex(k), to_flex(v));
    from_values(attention::attention(values(&q), values(&k), values(&v), shape), [batch, len_q, d_model])
}

fn attend_in_blocks<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    num_heads: usize,
    is_causal: bool,
    max_scores: usize,
) -> Tensor<B, 3> {
    let [batch, len_q, d_model] = q.dims();
    let len_k = k.dims()[1];
    let options = AttentionModuleOptions { is_causal, ..Default::default() };
    let (q, k, v) = (split_heads(q, num_heads), split_heads(k, num_heads), split_heads(v, num_heads));
    let rows = (max_scores / (batch * num_heads * len_k).max(1)).max(1);
    // A causal mask is relative to the query's position: keep it whole (CLIP's 77 tokens).
    let out = if is_causal || len_q <= rows {
        attention(q, k, v, None, None, options)
    } else {
        let blocks = (0..len_q)
            .step_by(rows)
            .map(|start| {
                let block = q.clone().slice([0..batch, 0..num_heads, start..(start + rows).min(len_q)]);
                attention(block, k.clone(), v.clone(), None, None, options)
            })
            .collect();
        Tensor::cat(blocks, 2)
    };
    swap_dims_1_2(out).reshape([batch, len_q, d_model])
}

/// [B, L, D] → [B, heads, L, D/heads]
fn split_heads<B: Backend>(x: Tensor<B, 3>, num_heads: usize) -> Tensor<B, 4> {
    let [batch, len, d_model] = x.dims();
    swap_dims_1_2(x.reshape([batch, len, num_heads, d_model / num_heads]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::testing::max_abs_difference;
    use burn::backend::Flex;
    use burn::tensor::Distribution;

    #[test]
    fn the_cpu_kernel_gives_burns_attention() {
        let device = Default::default();
        let random = |len| Tensor::<Flex, 3>::random([2, len, 24], Distribution::Normal(0.0, 1.0), &device);
        let (q, k, v) = (random(70), random(77), random(77));
        let generic = attend_in_blocks(q.clone(), k.clone(), v.clone(), 3, false, MAX_SCORES);
        let kernel = attend(q, k, v, 3, false);
        let difference = max_abs_difference(generic, kernel);
        assert!(difference < 1e-5, "{difference}");
    }

    #[test]
    fn query_blocks_give_the_same_attention() {
        let device = Default::default();
        let random = |len| Tensor::<Flex, 3>::random([2, len, 16], Distribution::Normal(0.0, 1.0), &device);
        let (q, k, v) = (random(37), random(29), random(29));
        let whole = attend_in_blocks(q.clone(), k.clone(), v.clone(), 4, false, usize::MAX);
        // 2·4·29 scores a query row: blocks of 2 rows, the last one shorter.
        let blocked = attend_in_blocks(q, k, v, 4, false, 2 * 4 * 29 * 2);
        assert_eq!(blocked.dims(), [2, 37, 16]);
        let difference = max_abs_difference(whole, blocked);
        assert!(difference < 1e-6, "{difference}");
    }
}
