use serde::Deserialize;

/// transformers' `SiglipVisionConfig`; defaults are transformers' defaults,
/// which are also `google/siglip-base-patch16-224`'s.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct SiglipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    /// Whether the attention-pooling head exists.
    pub vision_use_head: bool,
}

impl Default for SiglipVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 16,
            hidden_act: "gelu_pytorch_tanh".into(),
            layer_norm_eps: 1e-6,
            vision_use_head: true,
        }
    }
}

impl SiglipVisionConfig {
    /// Reads a `config.json`: either a whole `SiglipConfig` (with a
    /// `vision_config` object) or a bare `SiglipVisionConfig`.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        let value: serde_json::Value = serde_json::from_str(text)?;
        let vision = value.get("vision_config").cloned().unwrap_or(value);
        serde_json::from_value(vision)
    }

    /// Number of patch tokens.
    pub fn num_patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }
}
