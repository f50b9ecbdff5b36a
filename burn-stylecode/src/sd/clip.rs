//! The CLIP text encoder of Stable Diffusion 1.5, as transformers'
//! `CLIPTextModel`: token + position embeddings, pre-norm transformer layers
//! with causal self-attention and a quick-GELU MLP, a final layer norm.
//!
//! The UNet's cross-attention reads `last_hidden_state` [B, 77, 768];
//! `pooled_output` is the final state at each sequence's end-of-text token.
//! "Clip skip" (an earlier layer's output, then the final norm) is
//! [`ClipTextTransformer::forward_clip_skip`].

use crate::error::Result;
use crate::nn::attention::{MultiHeadAttention, MultiHeadAttentionConfig};
use crate::nn::{gelu, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use crate::weights::JsonConfig;
use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig};
use burn::prelude::*;
use burn::tensor::activation::sigmoid;
use serde::{Deserialize, Deserializer, Serialize};

/// transformers' `CLIPTextConfig`; unset fields take transformers' defaults
/// (those of openai/clip-vit-base-patch32, not SD1.5's: see [`Self::sd15`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: ClipActivation,
    pub layer_norm_eps: f64,
    /// Decides where `pooled_output` is taken: see [`EosPooling`].
    #[serde(deserialize_with = "first_id")]
    pub eos_token_id: i64,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: ClipActivation::QuickGelu,
            layer_norm_eps: 1e-5,
            eos_token_id: 49407,
        }
    }
}

impl ClipTextConfig {
    /// SD1.5's `text_encoder/config.json` (openai/clip-vit-large-patch14's text tower).
    pub fn sd15() -> Self {
        Self { hidden_size: 768, intermediate_size: 3072, num_attention_heads: 12, eos_token_id: 2, ..Self::default() }
    }
}

impl JsonConfig for ClipTextConfig {
    /// A `CLIPTextConfig`, or a whole `CLIPConfig` (its `text_config`).
    fn from_value(value: serde_json::Value) -> Result<Self, String> {
        let text_config = value.get("text_config").cloned().unwrap_or(value);
        let config: Self = serde_json::from_value(text_config).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        Ok(())
    }
}

impl ClipTextConfig {
    /// How transformers picks the pooled position for this config.
    pub fn eos_pooling(&self) -> EosPooling {
        // Configs written before transformers PR #24773 (SD1.5's among them)
        // carry eos_token_id 2; transformers then keeps the old rule.
        if self.eos_token_id == 2 {
            EosPooling::HighestId
        } else {
            EosPooling::FirstId(self.eos_token_id)
        }
    }

    pub fn init<B: Backend>(&self, device: &B::Device) -> ClipTextTransformer<B> {
        let layer = ClipEncoderLayerConfig::new(self.hidden_size, self.num_attention_heads, self.intermediate_size)
            .with_layer_norm_eps(self.layer_norm_eps)
            .with_activation(self.hidden_act);
        ClipTextTransformer {
            embeddings: ClipTextEmbeddingsConfig::new(self.vocab_size, self.max_position_embeddings, self.hidden_size)
                .init(device),
            layers: (0..self.num_hidden_layers).map(|_| layer.init(device)).collect(),
            final_layer_norm: LayerNormConfig::new(self.hidden_size).with_epsilon(self.layer_norm_eps).init(device),
            pooling: self.eos_pooling(),
        }
    }
}

/// `eos_token_id` may be an id or (rarely) a list of ids: keep the first.
fn first_id<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Ids {
        One(i64),
        Many(Vec<i64>),
    }
    match Ids::deserialize(deserializer)? {
        Ids::One(id) => Ok(id),
        Ids::Many(ids) => ids.first().copied().ok_or_else(|| serde::de::Error::custom("eos_token_id is an empty list")),
    }
}

/// The MLP's activation (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClipActivation {
    /// `x · sigmoid(1.702 x)`: OpenAI CLIP, SD1.5.
    QuickGelu,
    /// Exact (erf) GELU: OpenCLIP text towers.
    Gelu,
}

impl ClipActivation {
    fn apply<B: Backend, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            ClipActivation::QuickGelu => x.clone() * sigmoid(x * 1.702),
            ClipActivation::Gelu => gelu(x),
        }
    }
}

/// Where `pooled_output` is read in each sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EosPooling {
    /// At the (first) largest id: the end-of-text token is the last of
    /// CLIP's vocabulary. transformers' rule for configs with eos_token_id 2.
    HighestId,
    /// At the first occurrence of this id (position 0 if there is none).
    FirstId(i64),
}

impl EosPooling {
    /// The pooled position of each row of `ids`.
    pub fn positions(self, ids: &[Vec<i64>]) -> Vec<usize> {
        ids.iter()
            .map(|row| match self {
                // The first of equal maxima, as torch.argmax.
                EosPooling::HighestId => {
                    row.iter()
                        .enumerate()
                        .fold((0, i64::MIN), |best, (i, &id)| if id > best.1 { (i, id) } else { best })
                        .0
                }
                EosPooling::FirstId(eos) => row.iter().position(|&id| id == eos).unwrap_or(0),
            })
            .collect()
    }
}

#[derive(Config, Debug)]
pub struct ClipTextEmbeddingsConfig {
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub hidden_size: usize,
}

impl ClipTextEmbeddingsConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> ClipTextEmbeddings<B> {
        ClipTextEmbeddings {
            token_embedding: EmbeddingConfig::new(self.vocab_size, self.hidden_size).init(device),
            position_embedding: EmbeddingConfig::new(self.max_position_embeddings, self.hidden_size).init(device),
        }
    }
}

/// Learned token and absolute position embeddings, summed.
#[derive(Module, Debug)]
pub struct ClipTextEmbeddings<B: Backend> {
    pub token_embedding: Embedding<B>,
    pub position_embedding: Embedding<B>,
}

impl<B: Backend> ClipTextEmbeddings<B> {
    /// ids [B, L] → [B, L, hidden]; L must not exceed the position table.
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [_, len] = input_ids.dims();
        let [num_positions, hidden] = self.position_embedding.weight.dims();
        assert!(len <= num_positions, "{len} tokens, but the CLIP text encoder has {num_positions} positions");
        let positions = self.position_embedding.weight.val().slice([0..len, 0..hidden]);
        self.token_embedding.forward(input_ids) + positions.unsqueeze::<3>()
    }
}

#[derive(Config, Debug)]
pub struct ClipEncoderLayerConfig {
    pub hidden_size: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
    #[config(default = "ClipActivation::QuickGelu")]
    pub activation: ClipActivation,
}

impl ClipEncoderLayerConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> ClipEncoderLayer<B> {
        let norm = || LayerNormConfig::new(self.hidden_size).with_epsilon(self.layer_norm_eps).init(device);
        ClipEncoderLayer {
            layer_norm1: norm(),
            self_attn: MultiHeadAttentionConfig::new(self.hidden_size, self.num_attention_heads).init(device),
            layer_norm2: norm(),
            mlp: ClipMlp {
                fc1: LinearConfig::new(self.hidden_size, self.intermediate_size).init(device),
                fc2: LinearConfig::new(self.intermediate_size, self.hidden_size).init(device),
                activation: self.activation,
            },
        }
    }
}

/// Pre-norm layer: `x + causal_attn(ln1(x))`, then `x + mlp(ln2(x))`.
#[derive(Module, Debug)]
pub struct ClipEncoderLayer<B: Backend> {
    pub layer_norm1: LayerNorm<B>,
    pub self_attn: MultiHeadAttention<B>,
    pub layer_norm2: LayerNorm<B>,
    pub mlp: ClipMlp<B>,
}

impl<B: Backend> ClipEncoderLayer<B> {
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        // Causal: each token sees only those before it, so a prompt's states
        // do not depend on the padding after it.
        let x = x.clone() + self.self_attn.forward_causal(self.layer_norm1.forward(x));
        x.clone() + self.mlp.forward(self.layer_norm2.forward(x))
    }
}

/// `fc2(act(fc1(x)))`
#[derive(Module, Debug)]
pub struct ClipMlp<B: Backend> {
    pub fc1: Linear<B>,
    pub fc2: Linear<B>,
    #[module(skip)]
    pub activation: ClipActivation,
}

impl<B: Backend> ClipMlp<B> {
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        self.fc2.forward(self.activation.apply(self.fc1.forward(x)))
    }
}

/// Outputs of [`ClipTextTransformer::forward`].
#[derive(Debug, Clone)]
pub struct ClipTextOutput<B: Backend> {
    /// After the final layer norm: [B, L, hidden]. The UNet's text context.
    pub last_hidden_state: Tensor<B, 3>,
    /// `last_hidden_state` at each sequence's end-of-text token: [B, hidden].
    pub pooled_output: Tensor<B, 2>,
}

/// `CLIPTextModel.text_model`.
#[derive(Module, Debug)]
pub struct ClipTextTransformer<B: Backend> {
    pub embeddings: ClipTextEmbeddings<B>,
    pub layers: Vec<ClipEncoderLayer<B>>,
    pub final_layer_norm: LayerNorm<B>,
    #[module(skip)]
    pub pooling: EosPooling,
}

impl<B: Backend> ClipTextTransformer<B> {
    /// `input_ids` [B, L] (L ≤ max_position_embeddings, 77) → both outputs.
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>) -> ClipTextOutput<B> {
        let positions = self.pooling.positions(&rows(&input_ids));
        let last_hidden_state = self.final_layer_norm.forward(self.hidden_state(input_ids, 1));
        let pooled_output = gather_rows(last_hidden_state.clone(), &positions);
        ClipTextOutput { last_hidden_state, pooled_output }
    }

    /// transformers' `hidden_states[-from_last]` (before the final norm):
    /// 1 is the last layer's output, `num_layers + 1` the embeddings. Runs
    /// only the layers needed.
    pub fn hidden_state(&self, input_ids: Tensor<B, 2, Int>, from_last: usize) -> Tensor<B, 3> {
        let count = self.layers.len() + 1;
        assert!(
            (1..=count).contains(&from_last),
            "hidden_states[-{from_last}] does not exist: there are {count} (the embeddings and {} layers)",
            self.layers.len()
        );
        let upto = count - from_last;
        let hidden = self.embeddings.forward(input_ids);
        self.layers[..upto].iter().fold(hidden, |h, layer| layer.forward(h))
    }

    /// diffusers' `clip_skip`: the output of `clip_skip` layers before the
    /// last, through the final layer norm: [B, L, hidden]. 0 gives
    /// `last_hidden_state`.
    pub fn forward_clip_skip(&self, input_ids: Tensor<B, 2, Int>, clip_skip: usize) -> Tensor<B, 3> {
        self.final_layer_norm.forward(self.hidden_state(input_ids, clip_skip + 1))
    }
}

/// Token ids [B, L] as host rows.
fn rows<B: Backend>(input_ids: &Tensor<B, 2, Int>) -> Vec<Vec<i64>> {
    let [_, len] = input_ids.dims();
    let flat: Vec<i64> = input_ids.to_data().iter::<i64>().collect();
    flat.chunks(len.max(1)).map(<[i64]>::to_vec).collect()
}

/// `x[b, positions[b], :]` for each b: [B, L, D] → [B, D].
fn gather_rows<B: Backend>(x: Tensor<B, 3>, positions: &[usize]) -> Tensor<B, 2> {
    let [batch, len, hidden] = x.dims();
    let flat_index: Vec<i64> = positions.iter().enumerate().map(|(b, &p)| (b * len + p) as i64).collect();
    let index = Tensor::<B, 1, Int>::from_data(TensorData::new(flat_index, [batch]), &x.device());
    x.reshape([batch * len, hidden]).select(0, index)
}
