//! The weights folder: each model in its upstream format.
//!
//! ```text
//! weights/
//!   siglip/       HuggingFace SigLIP folder: config.json, model.safetensors
//!   stylecodes/   config.json (version, autoencoder shape), *.safetensors
//!                 with the official StyleCodesModel key names
//!   sd15/         diffusers SD1.5 folder (unet/, vae/, text_encoder/, …)
//! ```

pub mod loader;
pub mod safetensors;

use crate::autoencoder::AutoencoderConfig;
use crate::code::OFFICIAL_VERSION;
use crate::error::{Error, Result};
use crate::siglip::SiglipVisionConfig;
use crate::style_control::MixInit;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The environment variable that overrides the default weights folder.
pub const WEIGHTS_ENV: &str = "STYLECODE_WEIGHTS";

/// A weights folder.
#[derive(Debug, Clone)]
pub struct WeightsDir {
    root: PathBuf,
}

/// `stylecodes/config.json`.
#[derive(Debug, Clone, Deserialize)]
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

impl WeightsDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `explicit` (a `--weights` flag) if given, else `$STYLECODE_WEIGHTS`,
    /// else the platform's data folder (`~/.local/share/burn-stylecode/weights`
    /// on Linux, `~/Library/Application Support/…` on macOS, `%APPDATA%\…` on Windows).
    pub fn resolve(explicit: Option<PathBuf>) -> Self {
        let root = explicit
            .or_else(|| std::env::var_os(WEIGHTS_ENV).filter(|v| !v.is_empty()).map(PathBuf::from))
            .unwrap_or_else(Self::default_root);
        Self::new(root)
    }

    /// The platform default, whether or not it exists.
    pub fn default_root() -> PathBuf {
        dirs::data_dir().unwrap_or_else(|| PathBuf::from(".")).join("burn-stylecode").join("weights")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn siglip_dir(&self) -> PathBuf {
        self.root.join("siglip")
    }

    pub fn stylecodes_dir(&self) -> PathBuf {
        self.root.join("stylecodes")
    }

    pub fn sd15_dir(&self) -> PathBuf {
        self.root.join("sd15")
    }

    pub fn siglip_config(&self) -> Result<SiglipVisionConfig> {
        let path = self.siglip_dir().join("config.json");
        let text = read_to_string(&path)?;
        let config = SiglipVisionConfig::from_json(&text).map_err(|source| Error::Json { path: path.clone(), source })?;
        if config.hidden_act != "gelu_pytorch_tanh" {
            return Err(Error::Config {
                path,
                message: format!("hidden_act `{}` is not supported (SigLIP uses `gelu_pytorch_tanh`)", config.hidden_act),
            });
        }
        Ok(config)
    }

    pub fn siglip_weights(&self) -> Result<PathBuf> {
        existing(self.siglip_dir().join("model.safetensors"))
    }

    /// `stylecodes/config.json`, or the official defaults (version `1`) if absent.
    pub fn stylecodes_config(&self) -> Result<StylecodesConfig> {
        let path = self.stylecodes_dir().join("config.json");
        if !path.exists() {
            return Ok(StylecodesConfig::default());
        }
        let text = read_to_string(&path)?;
        serde_json::from_str(&text).map_err(|source| Error::Json { path, source })
    }

    /// The one `.safetensors` file in `stylecodes/`.
    pub fn stylecodes_weights(&self) -> Result<PathBuf> {
        let dir = self.stylecodes_dir();
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        match files.len() {
            1 => Ok(files.remove(0)),
            0 => Err(Error::Config {
                path: dir,
                message: "no .safetensors file: run `cargo xtask import-weights` to import the StyleCodes checkpoint".into(),
            }),
            _ => Err(Error::Config { path: dir, message: format!("several .safetensors files, expected one: {files:?}") }),
        }
    }
}

fn read_to_string(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

fn existing(path: PathBuf) -> Result<PathBuf> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "file not found")))
    }
}
