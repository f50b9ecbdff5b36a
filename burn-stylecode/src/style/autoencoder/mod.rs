//! The attention autoencoder of the official release (about 12.6 M
//! parameters at full size): SigLIP features → 20-dim latent → a feature
//! map for the style control module.

mod decoder;
mod positional;
mod quantize;

pub use decoder::{TransformerDecoderLayer, TransformerDecoderLayerConfig};
pub use positional::sinusoidal_table;
pub(crate) use positional::sinusoidal_values;
pub use quantize::{quantize_dequantize, straight_through};

use crate::nn::attention::{MultiHeadAttention, MultiHeadAttentionConfig};
use crate::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::module::{Module, Param};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// Shape of the autoencoder; the defaults are the official release's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AutoencoderConfig {
    pub input_dim: usize,
    pub d_model: usize,
    pub latent_dim: usize,
    pub num_heads: usize,
    pub num_encoder_layers: usize,
    pub num_decoder_layers: usize,
    pub dim_feedforward: usize,
    pub output_dim: usize,
    /// Dropout of the decoder layers (active only when training).
    pub dropout: f64,
}

impl Default for AutoencoderConfig {
    fn default() -> Self {
        Self {
            input_dim: 768,
            d_model: 512,
            latent_dim: crate::style::code::CODE_LEN,
            num_heads: 4,
            num_encoder_layers: 3,
            num_decoder_layers: 2,
            dim_feedforward: 2048,
            output_dim: 1280,
            dropout: 0.1,
        }
    }
}

impl AutoencoderConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> AttentionAutoencoder<B> {
        let d = self.d_model;
        let attention = MultiHeadAttentionConfig::new(d, self.num_heads);
        let decoder_layer =
            TransformerDecoderLayerConfig::new(d, self.num_heads, self.dim_feedforward).with_dropout(self.dropout);
        let learned_token =
            || Param::from_tensor(Tensor::random([1, d], burn::tensor::Distribution::Normal(0.0, 1.0), device));
        AttentionAutoencoder {
            input_proj: LinearConfig::new(self.input_dim, d).init(device),
            latent_init: learned_token(),
            attention_layers: (0..self.num_encoder_layers).map(|_| attention.init(device)).collect(),
            latent_proj: LinearConfig::new(d, self.latent_dim).init(device),
            latent_norm: LayerNormConfig::new(self.latent_dim).init(device),
            latent_to_d_model: LinearConfig::new(self.latent_dim, d).init(device),
            decoder_layers: (0..self.num_decoder_layers).map(|_| decoder_layer.init(device)).collect(),
            output_proj: LinearConfig::new(d, self.output_dim).init(device),
            tgt_init: learned_token(),
        }
    }
}

/// Encoder: a learned query attends three times over the projected
/// features; decoder: a transformer decoder over one memory token.
#[derive(Module, Debug)]
pub struct AttentionAutoencoder<B: Backend> {
    pub input_proj: Linear<B>,
    pub latent_init: Param<Tensor<B, 2>>,
    /// Chained cross-attention, no residual or norm in between (as released).
    pub attention_layers: Vec<MultiHeadAttention<B>>,
    pub latent_proj: Linear<B>,
    pub latent_norm: LayerNorm<B>,
    pub latent_to_d_model: Linear<B>,
    pub decoder_layers: Vec<TransformerDecoderLayer<B>>,
    pub output_proj: Linear<B>,
    pub tgt_init: Param<Tensor<B, 2>>,
}

impl<B: Backend> AttentionAutoencoder<B> {
    /// `src` [B, L, input_dim] → latent [B, latent_dim].
    pub fn encode(&self, src: Tensor<B, 3>) -> Tensor<B, 2> {
        let [batch, len, _] = src.dims();
        let src = self.input_proj.forward(src);
        let [_, _, d_model] = src.dims();
        let src = src
            + sinusoidal_table::<B>(len, d_model, &self.tgt_init.device(), self.tgt_init.val().dtype())
                .unsqueeze::<3>();
        let query = self.latent_init.val().unsqueeze::<3>().expand([batch, 1, d_model]);
        let latent = self
            .attention_layers
            .iter()
            .fold(query, |latent, attention| attention.forward(latent, src.clone(), src.clone()));
        let latent = self.latent_proj.forward(latent.reshape([batch, d_model]));
        self.latent_norm.forward(latent)
    }

    /// latent [B, latent_dim] → feature map [B, output_dim, h, w].
    pub fn decode(&self, latent: Tensor<B, 2>, h: usize, w: usize) -> Tensor<B, 4> {
        let [batch, _] = latent.dims();
        let memory = self.latent_to_d_model.forward(latent).unsqueeze_dim::<3>(1);
        let [_, d_model] = self.tgt_init.dims();
        let positions = sinusoidal_table::<B>(h * w, d_model, &self.tgt_init.device(), self.tgt_init.val().dtype());
        let target = (positions + self.tgt_init.val()).unsqueeze::<3>().expand([batch, h * w, d_model]);
        let out = self.decoder_layers.iter().fold(target, |x, layer| layer.forward(x, memory.clone()));
        let out = self.output_proj.forward(out);
        let [_, _, output_dim] = out.dims();
        out.reshape([batch, h, w, output_dim]).permute([0, 3, 1, 2])
    }
}
