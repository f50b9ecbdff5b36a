//! The weights folder: each model in its upstream format.
//!
//! ```text
//! weights/
//!   siglip/       HuggingFace SigLIP folder: config.json, model.safetensors
//!   stylecodes/   config.json (version, autoencoder shape), *.safetensors
//!                 with the official StyleCodesModel key names
//!   sd15/         diffusers SD1.5 folder (unet/, vae/, text_encoder/, …)
//! ```

use crate::error::{Error, Result};
use crate::siglip::SiglipVisionConfig;
use crate::style::{stylecodes_weights, StylecodesConfig};
use crate::weights::JsonConfig;
use std::path::{Path, PathBuf};

/// The environment variable that overrides the default weights folder.
pub const WEIGHTS_ENV: &str = "STYLECODE_WEIGHTS";

/// A weights folder.
#[derive(Debug, Clone)]
pub struct WeightsDir {
    root: PathBuf,
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
        SiglipVisionConfig::from_file(&self.siglip_dir().join("config.json"))
    }

    pub fn siglip_weights(&self) -> Result<PathBuf> {
        existing(self.siglip_dir().join("model.safetensors"))
    }

    /// `stylecodes/config.json`, or the official defaults (version `1`) if absent.
    pub fn stylecodes_config(&self) -> Result<StylecodesConfig> {
        StylecodesConfig::from_dir(&self.stylecodes_dir())
    }

    /// The one `.safetensors` file in `stylecodes/`.
    pub fn stylecodes_weights(&self) -> Result<PathBuf> {
        stylecodes_weights(&self.stylecodes_dir())
    }
}

fn existing(path: PathBuf) -> Result<PathBuf> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "file not found")))
    }
}
