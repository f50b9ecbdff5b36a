//! `manifest.json`: what an imported model folder holds and where it came
//! from, so that a rerun can tell a complete, verified import from a
//! stale or damaged one.

use super::write::sha256_file;
use super::ImportError;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const MANIFEST: &str = "manifest.json";
const FORMAT: u32 = 1;

/// One source checkpoint or file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceRecord {
    /// The path it was read from.
    pub path: String,
    /// Where it came from, if fetched (e.g. `hf://CiaraRowles/stylecodes/stylecodes_sd15_v1.bin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// `safetensors`, `pytorch-zip`, or `file` (configs, tokenizer).
    pub format: String,
    pub bytes: u64,
    /// Modification time, seconds since the epoch.
    #[serde(default)]
    pub modified: Option<u64>,
    pub sha256: String,
}

/// One file the import wrote, relative to the model folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileRecord {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
    /// Number of tensors, for safetensors files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensors: Option<usize>,
}

/// The manifest of one imported model folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// `sd15`, `stylecodes` or `siglip`.
    pub model: String,
    /// The crate version that wrote it.
    pub tool: String,
    /// Storage type of the written tensors: `f16` or `f32`.
    pub dtype: String,
    /// The form converted from: `ldm-single-file`, `diffusers`,
    /// `stylecodes-pickle`, `stylecodes-safetensors`, `transformers`.
    pub converted_from: String,
    /// sha256 of the expected-tensor table the import verified against.
    pub spec: String,
    pub sources: Vec<SourceRecord>,
    pub files: Vec<FileRecord>,
    /// Source tensors (and non-tensor entries) not used by any model.
    pub leftover: Vec<String>,
    /// Tensors written without a shape check (no table covers them).
    #[serde(default)]
    pub unchecked: Vec<String>,
}

impl Manifest {
    pub(crate) fn new(model: &str, dtype: &str, converted_from: &str, spec: String) -> Self {
        Self {
            format: FORMAT,
            model: model.into(),
            tool: concat!("burn-stylecode ", env!("CARGO_PKG_VERSION")).into(),
            dtype: dtype.into(),
            converted_from: converted_from.into(),
            spec,
            sources: Vec::new(),
            files: Vec::new(),
            leftover: Vec::new(),
            unchecked: Vec::new(),
        }
    }

    /// Reads `dir/manifest.json`.
    pub fn read(dir: &Path) -> Result<Self, ImportError> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| ImportError::io(&path, e))?;
        let manifest: Self = serde_json::from_str(&text)
            .map_err(|e| ImportError::Config { path: path.clone(), message: e.to_string() })?;
        if manifest.format != FORMAT {
            return Err(ImportError::Config {
                path,
                message: format!("manifest format {} (this build writes {FORMAT})", manifest.format),
            });
        }
        Ok(manifest)
    }

    /// Checks every listed file: present, same size, same sha256.
    pub fn verify(&self, dir: &Path) -> Result<(), String> {
        for file in &self.files {
            let path = dir.join(&file.path);
            let bytes = std::fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?.len();
            if bytes != file.bytes {
                return Err(format!("{}: {bytes} bytes, the manifest says {}", path.display(), file.bytes));
            }
            let sha = sha256_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            if sha != file.sha256 {
                return Err(format!("{}: sha256 differs from the manifest", path.display()));
            }
        }
        Ok(())
    }
}

/// A source file's identity: size, mtime, and (unless `known` has the same
/// size and mtime) a fresh sha256.
pub(crate) fn source_record(
    path: &Path,
    format: &str,
    origin: Option<&str>,
    known: Option<&SourceRecord>,
) -> Result<SourceRecord, ImportError> {
    let meta = std::fs::metadata(path).map_err(|e| ImportError::io(path, e))?;
    let modified = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_secs());
    let path_text = path.display().to_string();
    let sha256 = match known {
        Some(k) if k.path == path_text && k.bytes == meta.len() && k.modified.is_some() && k.modified == modified => {
            k.sha256.clone()
        }
        _ => sha256_file(path).map_err(|e| ImportError::io(path, e))?,
    };
    Ok(SourceRecord {
        path: path_text,
        origin: origin.map(String::from),
        format: format.into(),
        bytes: meta.len(),
        modified,
        sha256,
    })
}
