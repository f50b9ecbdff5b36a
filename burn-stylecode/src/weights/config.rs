//! The one way configs are read: JSON → [`JsonConfig::from_value`] (which
//! may pick a nested object) → [`JsonConfig::validate`], with file errors
//! as [`Error::Config`] naming the file.

use crate::error::{Error, Result};
use serde::de::DeserializeOwned;
use std::path::Path;

/// A model's JSON config (diffusers `config.json`, transformers
/// `config.json`, `stylecodes/config.json`, …).
pub trait JsonConfig: DeserializeOwned {
    /// Errors naming each field this crate does not support or that
    /// contradicts another.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }

    /// The config from parsed JSON, validated. Override to read a nested
    /// object (transformers' `vision_config`) or to name the field at fault.
    fn from_value(value: serde_json::Value) -> Result<Self, String> {
        let config: Self = serde_json::from_value(value).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    /// The config from JSON text, validated.
    fn from_json(text: &str) -> Result<Self, String> {
        let value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
        Self::from_value(value)
    }

    /// Reads `path`; errors name it.
    fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text).map_err(|message| Error::Config { path: path.to_path_buf(), message })
    }

    /// As [`from_file`](Self::from_file), or the defaults when `path` does not exist.
    fn from_file_or_default(path: &Path) -> Result<Self>
    where
        Self: Default,
    {
        if path.exists() {
            Self::from_file(path)
        } else {
            Ok(Self::default())
        }
    }
}
