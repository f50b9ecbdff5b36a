//! `stylecodes/config.json`: the version of the weights and their shape.

use super::autoencoder::AutoencoderConfig;
use super::code::{is_version_char, OFFICIAL_VERSION};
use super::control::{MixInit, StyleControlConfig};
use crate::error::Result;
use crate::sd::unet_2d::UNetConfig;
use crate::weights::JsonConfig;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// `stylecodes/config.json`. Absent, the official model's (version `1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StylecodesConfig {
    /// The version character of the encoder/decoder weights; codes they
    /// make end with it.
    pub version: char,
    pub autoencoder: AutoencoderConfig,
    /// Attention heads of the control UNet (the release's `num_attention_heads`).
    pub control_attention_heads: usize,
    /// Initialisation of the mixing layers, for training.
    pub mix_init: MixInit,
}

impl Default for StylecodesConfig {
    fn default() -> Self {
        Self {
            version: OFFICIAL_VERSION,
            autoencoder: AutoencoderConfig::default(),
            control_attention_heads: 8,
            mix_init: MixInit::default(),
        }
    }
}

impl JsonConfig for StylecodesConfig {
    fn validate(&self) -> Result<(), String> {
        if !is_version_char(self.version) {
            return Err(format!("version {:?} is not a base64 symbol (A-Z a-z 0-9 + /)", self.version));
        }
        let a = &self.autoencoder;
        if a.num_heads == 0 || !a.d_model.is_multiple_of(a.num_heads) {
            return Err(format!("autoencoder.d_model {} is not divisible by num_heads {}", a.d_model, a.num_heads));
        }
        if a.latent_dim != super::code::CODE_LEN {
            return Err(format!(
                "autoencoder.latent_dim is {}, but a stylecode holds {} values",
                a.latent_dim,
                super::code::CODE_LEN
            ));
        }
        if self.control_attention_heads == 0 {
            return Err("control_attention_heads is 0".into());
        }
        Ok(())
    }
}

impl StylecodesConfig {
    /// `DIR/config.json`, or the official defaults if there is none.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Self::from_file_or_default(&dir.join("config.json"))
    }

    /// The control branch for a base UNet.
    pub fn control(&self, base: &UNetConfig) -> StyleControlConfig {
        StyleControlConfig::from_base(base, self.control_attention_heads, self.mix_init)
    }
}
