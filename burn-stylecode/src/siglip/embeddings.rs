use crate::nn::image_to_tokens;
use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig};
use burn::prelude::*;

#[derive(Config, Debug)]
pub struct SiglipEmbeddingsConfig {
    pub num_channels: usize,
    pub hidden_size: usize,
    pub image_size: usize,
    pub patch_size: usize,
}

impl SiglipEmbeddingsConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> SiglipEmbeddings<B> {
        let p = self.patch_size;
        let num_patches = (self.image_size / p).pow(2);
        SiglipEmbeddings {
            patch_embedding: Conv2dConfig::new([self.num_channels, self.hidden_size], [p, p])
                .with_stride([p, p])
                .init(device),
            position_embedding: EmbeddingConfig::new(num_patches, self.hidden_size).init(device),
        }
    }
}

/// Non-overlapping patch convolution plus learned position embeddings (no class token).
#[derive(Module, Debug)]
pub struct SiglipEmbeddings<B: Backend> {
    pub patch_embedding: Conv2d<B>,
    pub position_embedding: Embedding<B>,
}

impl<B: Backend> SiglipEmbeddings<B> {
    /// [B, C, H, W] → [B, patches, hidden]
    pub fn forward(&self, pixel_values: Tensor<B, 4>) -> Tensor<B, 3> {
        let patches = self.patch_embedding.forward(pixel_values);
        let [_, _, gh, gw] = patches.dims();
        let tokens = image_to_tokens(patches);
        let positions: &Param<Tensor<B, 2>> = &self.position_embedding.weight;
        let [num_positions, _] = positions.dims();
        assert_eq!(
            num_positions,
            gh * gw,
            "image gives {gh}x{gw} patches but the model has {num_positions} position embeddings: \
             resize to the configured image size"
        );
        tokens + positions.val().unsqueeze::<3>()
    }
}
