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
    origin: WeightsOrigin,
}

/// How a weights folder was chosen, for the message when a model is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightsOrigin {
    /// Given explicitly (`--weights`, or [`WeightsDir::new`]).
    Explicit,
    /// `$STYLECODE_WEIGHTS`.
    Env,
    /// The platform default.
    Default,
}

/// The SD1.5 diffusers sub-folders a generation reads.
const SD15_PARTS: [&str; 5] = ["unet", "vae", "text_encoder", "tokenizer", "scheduler"];

impl WeightsDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into(), origin: WeightsOrigin::Explicit }
    }

    /// `explicit` (a `--weights` flag) if given, else `$STYLECODE_WEIGHTS`,
    /// else the platform's data folder (`~/.local/share/burn-stylecode/weights`
    /// on Linux, `~/Library/Application Support/…` on macOS, `%APPDATA%\…` on Windows).
    pub fn resolve(explicit: Option<PathBuf>) -> Self {
        let env = || std::env::var_os(WEIGHTS_ENV).filter(|v| !v.is_empty()).map(PathBuf::from);
        let (root, origin) = match (explicit, env()) {
            (Some(root), _) => (root, WeightsOrigin::Explicit),
            (None, Some(root)) => (root, WeightsOrigin::Env),
            (None, None) => (Self::default_root(), WeightsOrigin::Default),
        };
        Self { root, origin }
    }

    pub fn origin(&self) -> WeightsOrigin {
        self.origin
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
        SiglipVisionConfig::from_file(&self.model_file("siglip", "config.json")?)
    }

    pub fn siglip_weights(&self) -> Result<PathBuf> {
        self.model_file("siglip", "model.safetensors")
    }

    /// `stylecodes/config.json`, or the official defaults (version `1`) if absent.
    pub fn stylecodes_config(&self) -> Result<StylecodesConfig> {
        StylecodesConfig::from_dir(&self.model("stylecodes")?)
    }

    /// The one `.safetensors` file in `stylecodes/`.
    pub fn stylecodes_weights(&self) -> Result<PathBuf> {
        stylecodes_weights(&self.model("stylecodes")?)
    }

    /// `sd15/`, checked to hold the diffusers sub-folders a generation reads.
    pub fn sd15(&self) -> Result<PathBuf> {
        let dir = self.model("sd15")?;
        match SD15_PARTS.iter().map(|part| dir.join(part)).find(|part| !part.is_dir()) {
            Some(part) => Err(self.missing("sd15", part)),
            None => Ok(dir),
        }
    }

    /// The folder of `model`, which must exist.
    fn model(&self, model: &'static str) -> Result<PathBuf> {
        let dir = self.root.join(model);
        if dir.is_dir() {
            Ok(dir)
        } else {
            Err(self.missing(model, if self.root.is_dir() { dir } else { self.root.clone() }))
        }
    }

    /// The file `name` of `model`, which must exist.
    fn model_file(&self, model: &'static str, name: &str) -> Result<PathBuf> {
        let path = self.model(model)?.join(name);
        if path.is_file() {
            Ok(path)
        } else {
            Err(self.missing(model, path))
        }
    }

    /// The error for `missing` (the folder, the model's folder or a file in
    /// it): where the folder came from and the command that fills it.
    fn missing(&self, model: &'static str, missing: PathBuf) -> Error {
        let why = match self.origin {
            WeightsOrigin::Explicit => "given by --weights",
            WeightsOrigin::Env => "from $STYLECODE_WEIGHTS",
            WeightsOrigin::Default => "the default, as neither --weights nor $STYLECODE_WEIGHTS is set",
        };
        // A whole folder missing needs every model; otherwise just this one.
        let (only, what) =
            if missing == self.root { (String::new(), "the models") } else { (format!(" --only {model}"), "it") };
        let out = match self.origin {
            WeightsOrigin::Explicit => format!(" --out {}", self.root.display()),
            WeightsOrigin::Env | WeightsOrigin::Default => String::new(),
        };
        let fix = format!("`cargo xtask import-weights{only}{out}` imports {what}, or pass --weights DIR for a folder that has {what}");
        Error::MissingWeights { root: self.root.clone(), why, model, missing, fix }
    }
}
