use crate::weights::JsonConfig;
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

impl JsonConfig for SiglipVisionConfig {
    /// A whole `SiglipConfig` (its `vision_config`) or a bare `SiglipVisionConfig`.
    fn from_value(value: serde_json::Value) -> Result<Self, String> {
        let vision = value.get("vision_config").cloned().unwrap_or(value);
        let config: Self = serde_json::from_value(vision).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if self.hidden_act != "gelu_pytorch_tanh" {
            return Err(format!("hidden_act `{}` is not supported (SigLIP uses `gelu_pytorch_tanh`)", self.hidden_act));
        }
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.patch_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            return Err(format!("image_size {} is not a multiple of patch_size {}", self.image_size, self.patch_size));
        }
        Ok(())
    }
}

impl SiglipVisionConfig {
    /// Number of patch tokens.
    pub fn num_patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }
}
