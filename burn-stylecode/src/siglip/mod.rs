//! The SigLIP vision tower, as transformers' `SiglipVisionModel`.
//!
//! The style encoder reads the penultimate encoder layer's output
//! (`hidden_states[-2]`, before `post_layernorm`); the whole tower, with the
//! attention-pooling head, is here so that `pooled_output` is available too.

mod config;
mod embeddings;
mod encoder;
mod head;
mod keys;
pub mod preprocess;

pub use config::SiglipVisionConfig;
pub use embeddings::{SiglipEmbeddings, SiglipEmbeddingsConfig};
pub use encoder::{SiglipEncoderLayer, SiglipEncoderLayerConfig, SiglipMlp};
pub use head::{SiglipPoolingHead, SiglipPoolingHeadConfig};

use crate::nn::{LayerNorm, LayerNormConfig};
use burn::module::Module;
use burn::prelude::*;

/// Outputs of a full forward pass.
#[derive(Debug, Clone)]
pub struct SiglipVisionOutput<B: Backend> {
    /// Output of the penultimate encoder layer, before the post-layernorm: [B, patches, hidden].
    pub penultimate: Tensor<B, 3>,
    /// Output of the last layer after `post_layernorm`: [B, patches, hidden].
    pub last_hidden_state: Tensor<B, 3>,
    /// Attention-pooling head output: [B, hidden] (`None` without a head).
    pub pooled_output: Option<Tensor<B, 2>>,
}

/// `SiglipVisionModel.vision_model`.
#[derive(Module, Debug)]
pub struct SiglipVisionTransformer<B: Backend> {
    pub embeddings: SiglipEmbeddings<B>,
    pub layers: Vec<SiglipEncoderLayer<B>>,
    pub post_layernorm: LayerNorm<B>,
    pub head: Option<SiglipPoolingHead<B>>,
}

impl SiglipVisionConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> SiglipVisionTransformer<B> {
        let layer = SiglipEncoderLayerConfig::new(self.hidden_size, self.num_attention_heads, self.intermediate_size)
            .with_layer_norm_eps(self.layer_norm_eps);
        SiglipVisionTransformer {
            embeddings: SiglipEmbeddingsConfig::new(
                self.num_channels,
                self.hidden_size,
                self.image_size,
                self.patch_size,
            )
            .init(device),
            layers: (0..self.num_hidden_layers).map(|_| layer.init(device)).collect(),
            post_layernorm: LayerNormConfig::new(self.hidden_size).with_epsilon(self.layer_norm_eps).init(device),
            head: self.vision_use_head.then(|| {
                SiglipPoolingHeadConfig::new(self.hidden_size, self.num_attention_heads, self.intermediate_size)
                    .with_layer_norm_eps(self.layer_norm_eps)
                    .init(device)
            }),
        }
    }
}

impl<B: Backend> SiglipVisionTransformer<B> {
    /// The style features: the penultimate layer's output, [B, patches, hidden].
    /// Runs one layer less than [`forward`](Self::forward).
    pub fn penultimate(&self, pixel_values: Tensor<B, 4>) -> Tensor<B, 3> {
        let hidden = self.embeddings.forward(pixel_values);
        let upto = self.layers.len().saturating_sub(1);
        self.layers[..upto].iter().fold(hidden, |h, layer| layer.forward(h))
    }

    /// The whole tower: `pixel_values` [B, 3, H, W] normalised as the processor does.
    pub fn forward(&self, pixel_values: Tensor<B, 4>) -> SiglipVisionOutput<B> {
        let penultimate = self.penultimate(pixel_values);
        let last = match self.layers.last() {
            Some(layer) => layer.forward(penultimate.clone()),
            None => penultimate.clone(),
        };
        let last_hidden_state = self.post_layernorm.forward(last);
        let pooled_output = self.head.as_ref().map(|head| head.forward(last_hidden_state.clone()));
        SiglipVisionOutput { penultimate, last_hidden_state, pooled_output }
    }
}
