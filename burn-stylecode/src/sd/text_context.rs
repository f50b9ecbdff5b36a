//! The text a UNet's cross-attention layers attend to, with each layer's
//! keys and values kept after their first use.
//!
//! The keys and values of a cross-attention layer depend only on the prompt
//! and the layer's weights, not on the step: a generation computes them
//! once instead of once per step (16 layers of `[B, 77, 768] → [B, 77, C]`
//! twice in SD1.5, ≈ 6 GFLOP per batch-2 step: a fifth of an 8×8-latent step).

use super::attention::Attention;
use burn::module::ParamId;
use burn::prelude::*;
use burn::tensor::DType;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The keys and values kept so far, by the ids of the layer's `to_k` and
/// `to_v` weights.
type KeysValues<B> = HashMap<(ParamId, ParamId), [Tensor<B, 3>; 2]>;

/// The text context `[B, L, D]` of one generation (or one training step).
///
/// Clones share what has been computed. Two layers share an entry only if
/// they share their `to_k` and `to_v` parameters (the same layer, or a clone
/// of a module taken without changing its weights).
#[derive(Clone, Debug)]
pub struct TextContext<B: Backend> {
    tokens: Tensor<B, 3>,
    keys_values: Arc<Mutex<KeysValues<B>>>,
}

impl<B: Backend> TextContext<B> {
    /// `tokens` [B, L, D]: the text encoder's output, one row per image of the batch.
    pub fn new(tokens: Tensor<B, 3>) -> Self {
        Self { tokens, keys_values: Arc::default() }
    }

    /// The text encoder's output, [B, L, D].
    pub fn tokens(&self) -> &Tensor<B, 3> {
        &self.tokens
    }

    /// The same context in `dtype`: itself when it is in `dtype` already
    /// (sharing what it has computed), else a new one.
    pub fn cast(&self, dtype: DType) -> Self {
        if self.tokens.dtype() == dtype {
            self.clone()
        } else {
            Self::new(self.tokens.clone().cast(dtype))
        }
    }

    /// `attention`'s keys and values over these tokens: computed on the
    /// first call for this layer, the kept ones after it. On an autodiff
    /// backend nothing is kept: each forward pass needs its own graph, or a
    /// second pass's `to_k`/`to_v` would get no gradient.
    pub(crate) fn keys_values(&self, attention: &Attention<B>) -> [Tensor<B, 3>; 2] {
        let compute = || [attention.to_k.forward(self.tokens.clone()), attention.to_v.forward(self.tokens.clone())];
        if B::ad_enabled(&self.tokens.device()) {
            return compute();
        }
        let key = (attention.to_k.weight.id, attention.to_v.weight.id);
        let mut kept = self.keys_values.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        kept.entry(key).or_insert_with(compute).clone()
    }

    /// Layers whose keys and values are kept.
    #[cfg(test)]
    fn kept(&self) -> usize {
        self.keys_values.lock().map_or(0, |kept| kept.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sd::attention::AttentionConfig;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::Distribution;

    fn random<const D: usize>(shape: [usize; D]) -> Tensor<Flex, D> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
    }

    fn cross_attention() -> Attention<Flex> {
        AttentionConfig::new(24, 4, 6).with_cross_attention_dim(Some(16)).init(&Default::default())
    }

    /// Two layers over one context each get their own keys and values, kept
    /// after the first step: every later step equals a step on a fresh context.
    #[test]
    fn each_layer_keeps_its_own_keys_and_values() {
        let (first, second) = (cross_attention(), cross_attention());
        let tokens = random([2, 7, 16]);
        let context = TextContext::new(tokens.clone());
        for step in 0..3 {
            let x = random([2, 5, 24]);
            for layer in [&first, &second] {
                let fresh = layer.forward(x.clone(), Some(&TextContext::new(tokens.clone())));
                let kept = layer.forward(x.clone(), Some(&context));
                assert_eq!(kept.into_data(), fresh.into_data(), "step {step}");
            }
            assert_eq!(context.kept(), 2, "step {step}");
        }
    }

    /// Under autodiff every pass computes its own keys and values, so that
    /// each pass's graph reaches `to_k` and `to_v`.
    #[test]
    fn autodiff_passes_keep_nothing() {
        type Ad = Autodiff<Flex>;
        let layer: Attention<Ad> =
            AttentionConfig::new(24, 4, 6).with_cross_attention_dim(Some(16)).init(&Default::default());
        let tokens = Tensor::<Ad, 3>::random([1, 3, 16], Distribution::Normal(0.0, 1.0), &Default::default());
        let context = TextContext::new(tokens);
        for pass in 0..2 {
            let x = Tensor::<Ad, 3>::random([1, 4, 24], Distribution::Normal(0.0, 1.0), &Default::default());
            let gradients = layer.forward(x, Some(&context)).sum().backward();
            assert!(layer.to_k.weight.grad(&gradients).is_some(), "pass {pass}: to_k has no gradient");
            assert!(layer.to_v.weight.grad(&gradients).is_some(), "pass {pass}: to_v has no gradient");
        }
        assert_eq!(context.kept(), 0);
    }

    /// A clone shares what was computed; a cast to another dtype starts anew.
    #[test]
    fn clones_share_and_casts_start_anew() {
        let layer = cross_attention();
        let context = TextContext::new(random([1, 3, 16]));
        layer.forward(random([1, 4, 24]), Some(&context.clone()));
        assert_eq!(context.kept(), 1);
        assert_eq!(context.cast(DType::F32).kept(), 1);
        let half = context.cast(DType::F16);
        assert_eq!((half.kept(), half.tokens().dtype()), (0, DType::F16));
    }
}
