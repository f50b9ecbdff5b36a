//! Importing real checkpoints into the weights folder, safely and verifiably.
//!
//! ```text
//! weights/
//!   stylecodes/  stylecodes.safetensors (official key names), config.json, manifest.json
//!   siglip/      model.safetensors (vision tower), config.json, preprocessor_config.json, manifest.json
//!   sd15/        model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/, manifest.json
//! ```
//!
//! - [`stylecodes_from_bin`]: the official `stylecodes_sd15_v1.bin` (a
//!   PyTorch zip pickle `{"controlnet": state_dict}`), read without running
//!   pickle code (see `pickle.rs`); also a `.safetensors` of the same keys.
//! - [`sd15_from_single_file`]: an SD1.5 checkpoint with the original LDM
//!   names (`.safetensors` or `.ckpt`), converted to the diffusers layout.
//! - [`sd15_from_diffusers_dir`]: a diffusers SD1.5 folder (also with
//!   `.fp16` or `.bin` weights, transformers-5 CLIP names, or the old VAE
//!   attention names), rewritten in the canonical layout.
//! - [`siglip_from_dir`]: a HuggingFace SigLIP folder; the vision tower is kept.
//!
//! Each import first checks, against tables derived from the model configs
//! ([`expected`]), that every tensor the models load is present with the
//! right shape; it refuses to write anything otherwise. Tensors of the
//! source that no model uses are listed (returned and in the manifest).
//! Files are written into a staging folder and renamed into place, with a
//! `manifest.json` recording the sources, sha256 of every file, and the
//! dtype. A rerun with the same sources and options skips a folder whose
//! files still match its manifest.

pub mod expected;
mod lora;
mod manifest;
mod pickle;
mod sd15;
mod siglip;
mod source;
mod stylecodes;
mod write;

pub use expected::ExpectedTensor;
pub use lora::sd15_with_loras;
pub use manifest::{FileRecord, Manifest, SourceRecord, MANIFEST};
pub use sd15::{sd15_from_diffusers_dir, sd15_from_single_file, Sd15Configs};
pub use siglip::siglip_from_dir;
pub use source::SrcDtype;
pub use stylecodes::{stylecodes_from_bin, StylecodesSpec};
pub use write::{hex_digest, sha256_file};

use crate::error::preview;
use expected::Row;
use manifest::source_record;
use serde_json::Value;
use source::Checkpoint;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use write::{OutTensor, Staging};

/// Storage type of the imported tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightDtype {
    F16,
    F32,
}

impl WeightDtype {
    pub fn size(self) -> usize {
        match self {
            WeightDtype::F16 => 2,
            WeightDtype::F32 => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            WeightDtype::F16 => "f16",
            WeightDtype::F32 => "f32",
        }
    }

    fn safetensors_name(self) -> &'static str {
        match self {
            WeightDtype::F16 => "F16",
            WeightDtype::F32 => "F32",
        }
    }
}

impl std::str::FromStr for WeightDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f16" | "fp16" | "float16" => Ok(WeightDtype::F16),
            "f32" | "fp32" | "float32" => Ok(WeightDtype::F32),
            other => Err(format!("unknown dtype `{other}` (expected f16 or f32)")),
        }
    }
}

/// How to import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub dtype: WeightDtype,
    /// Where the sources came from (e.g. `hf://owner/repo`), for the manifest.
    pub origin: Option<String>,
    /// Import even if the folder is complete and verified.
    pub force: bool,
}

impl ImportOptions {
    pub fn new(dtype: WeightDtype) -> Self {
        Self { dtype, origin: None, force: false }
    }
}

/// What an import did.
#[derive(Debug, Clone)]
pub struct ImportReport {
    /// The model folder, e.g. `weights/sd15`.
    pub dir: PathBuf,
    /// True when the folder was already complete and verified.
    pub skipped: bool,
    pub manifest: Manifest,
}

/// Everything that can stop an import, each naming the file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Whole messages, causes included, not also `source()` (see [`crate::error::Error`]).
    #[error("{}: {}", path.display(), crate::error::os_message(cause))]
    Io { path: PathBuf, cause: std::io::Error },
    #[error("{}: not a checkpoint: {reason}", path.display())]
    NotACheckpoint { path: PathBuf, reason: String },
    #[error("{}: truncated or damaged: {reason}", path.display())]
    Truncated { path: PathBuf, reason: String },
    #[error(
        "{}: the pickle calls `{global}`, which a state dict never needs: refused (nothing was executed)",
        path.display()
    )]
    ForbiddenGlobal { path: PathBuf, global: String },
    #[error("{}: unsupported pickle: {reason}", path.display())]
    BadPickle { path: PathBuf, reason: String },
    #[error("{}: {} tensor(s) needed by {model} missing: {}", path.display(), keys.len(), preview(keys))]
    MissingTensors { path: PathBuf, model: String, keys: Vec<String> },
    #[error("{}: tensor `{key}` has shape {found:?}, expected {expected:?}{}", path.display(), more_text(*more))]
    WrongShape { path: PathBuf, key: String, expected: Vec<usize>, found: Vec<usize>, more: usize },
    #[error("{}: tensor `{key}` has dtype {dtype}, expected a float tensor", path.display())]
    WrongDtype { path: PathBuf, key: String, dtype: String },
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    #[error(
        "{}: the source lies inside {}, which the import replaces; move it elsewhere first",
        source_path.display(),
        target.display()
    )]
    SourceInsideTarget { source_path: PathBuf, target: PathBuf },
    #[error("{}: no tensor `{key}`", path.display())]
    NoTensor { path: PathBuf, key: String },
    #[error(
        "{}: SD1.5 needs the CLIP tokenizer files (vocab.json, merges.txt), which a single-file checkpoint does not \
         carry: pass the `tokenizer/` folder of an SD1.5 diffusers folder (Sd15Configs::with_tokenizer)",
        path.display()
    )]
    NoTokenizer { path: PathBuf },
    #[error("{}: tensor `{key}`: {read} bytes read from the source, {expected} expected", path.display())]
    ShortRead { path: PathBuf, key: String, read: usize, expected: usize },
    #[error("{}: read back wrong: {message}", path.display())]
    ReadBack { path: PathBuf, message: String },
    /// A model or LoRA that does not load (merge-lora).
    #[error(transparent)]
    Load(#[from] crate::error::Error),
}

impl ImportError {
    pub(crate) fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        ImportError::Io { path: path.into(), cause }
    }
}

fn more_text(more: usize) -> String {
    if more == 0 {
        String::new()
    } else {
        format!(" (and {more} more tensor(s) of the wrong shape)")
    }
}

// ---------------------------------------------------------------------------
// the shared engine: match tables, plan files, skip or write

/// Which names of a [`Row`] a checkpoint uses.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Layout {
    /// Original LDM single-file names.
    Ldm,
    /// Upstream names (diffusers/transformers/official), or their aliases.
    Upstream,
}

/// A tensor to write: which checkpoint, which key in it.
pub(crate) type Src = (usize, String);

/// Finds every row of `rows` in `checkpoint`; all must be there with the
/// right shape (errors list every missing one). Marks used keys in `used`.
pub(crate) fn match_rows(
    rows: &[Row],
    checkpoint: &Checkpoint,
    index: usize,
    layout: Layout,
    model: &str,
    used: &mut BTreeSet<String>,
) -> Result<Vec<OutTensor<Src>>, ImportError> {
    let mut out = Vec::with_capacity(rows.len());
    let mut missing = Vec::new();
    let mut wrong: Vec<(String, Vec<usize>, Vec<usize>)> = Vec::new();
    for row in rows {
        let candidates: Vec<&String> = match layout {
            Layout::Ldm => row.ldm.iter().collect(),
            Layout::Upstream => std::iter::once(&row.expected.key).chain(&row.aliases).collect(),
        };
        let Some(found) = candidates.iter().find(|k| checkpoint.tensors().contains_key(k.as_str())) else {
            if row.required {
                missing.push(candidates.first().map_or(row.expected.key.clone(), |k| k.to_string()));
            }
            continue;
        };
        let meta = &checkpoint.tensors()[found.as_str()];
        if !meta.dtype.is_float() {
            return Err(ImportError::WrongDtype {
                path: checkpoint.path().into(),
                key: found.to_string(),
                dtype: meta.dtype.name().into(),
            });
        }
        let squeezed = row.squeezable && {
            let want = &row.expected.shape;
            meta.shape.len() > want.len()
                && meta.shape[..want.len()] == want[..]
                && meta.shape[want.len()..].iter().all(|&d| d == 1)
        };
        if !row.accepts(&meta.shape) && !squeezed {
            wrong.push((found.to_string(), row.expected.shape.clone(), meta.shape.clone()));
            continue;
        }
        let shape = if squeezed { row.expected.shape.clone() } else { meta.shape.clone() };
        used.insert(found.to_string());
        out.push(OutTensor { key: row.expected.key.clone(), shape, source: (index, found.to_string()) });
    }
    if !missing.is_empty() {
        return Err(ImportError::MissingTensors { path: checkpoint.path().into(), model: model.into(), keys: missing });
    }
    if let Some((key, expected, found)) = wrong.first().cloned() {
        return Err(ImportError::WrongShape {
            path: checkpoint.path().into(),
            key,
            expected,
            found,
            more: wrong.len() - 1,
        });
    }
    Ok(out)
}

/// The sha256 of a table (and whatever else decides the output), to tell
/// whether an earlier import was made to the same specification.
pub(crate) fn spec_digest(rows: &[&[Row]], extra: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for table in rows {
        // Sorted: the tables follow the modules' field order, which is no part of the specification.
        let mut lines: Vec<String> = table
            .iter()
            .map(|row| format!("{} {:?} {:?}\n", row.expected.key, row.expected.shape, row.free_axis))
            .collect();
        lines.sort();
        for line in lines {
            hasher.update(line);
        }
    }
    for text in extra {
        hasher.update(text.as_bytes());
        hasher.update(b"\n");
    }
    write::hex(&hasher.finalize())
}

/// One output file.
pub(crate) enum Planned {
    Tensors { rel: String, tensors: Vec<OutTensor<Src>> },
    Json { rel: String, value: Value },
    Bytes { rel: String, data: Vec<u8> },
}

/// A verified import, ready to be written.
pub(crate) struct Plan {
    pub model: &'static str,
    pub converted_from: &'static str,
    pub spec: String,
    pub checkpoints: Vec<Checkpoint>,
    pub sources: Vec<SourceRecord>,
    pub files: Vec<Planned>,
    pub leftover: Vec<String>,
    pub unchecked: Vec<String>,
}

/// The sources of an import, identified before anything is opened.
pub(crate) struct Sources {
    pub records: Vec<SourceRecord>,
}

impl Sources {
    /// Records `paths` (checkpoint or plain files), reusing the previous
    /// manifest's sha256 for files whose size and mtime are unchanged.
    pub fn record(
        paths: &[(PathBuf, &str)],
        previous: Option<&Manifest>,
        origin: Option<&str>,
    ) -> Result<Self, ImportError> {
        let mut records = Vec::with_capacity(paths.len());
        for (path, format) in paths {
            let text = path.display().to_string();
            let known = previous.and_then(|m| m.sources.iter().find(|s| s.path == text));
            records.push(source_record(path, format, origin, known)?);
        }
        Ok(Self { records })
    }
}

/// The target folder `out_root/model`, refusing sources inside it.
pub(crate) fn target_dir(out_root: &Path, model: &str, sources: &[PathBuf]) -> Result<PathBuf, ImportError> {
    let target = out_root.join(model);
    if let Ok(target_abs) = target.canonicalize() {
        for source in sources {
            if source.canonicalize().is_ok_and(|s| s.starts_with(&target_abs)) {
                return Err(ImportError::SourceInsideTarget { source_path: source.clone(), target });
            }
        }
    }
    Ok(target)
}

/// The previous import's manifest, if it reads.
pub(crate) fn previous_manifest(target: &Path) -> Option<Manifest> {
    Manifest::read(target).ok()
}

/// Whether `target` already holds this very import, complete and verified.
pub(crate) fn already_done(
    target: &Path,
    previous: Option<&Manifest>,
    model: &str,
    converted_from: &str,
    spec: &str,
    sources: &Sources,
    options: &ImportOptions,
) -> bool {
    let Some(previous) = previous else { return false };
    if options.force
        || previous.model != model
        || previous.converted_from != converted_from
        || previous.dtype != options.dtype.name()
        || previous.spec != spec
    {
        return false;
    }
    let same = |a: &SourceRecord, b: &SourceRecord| a.path == b.path && a.bytes == b.bytes && a.sha256 == b.sha256;
    if previous.sources.len() != sources.records.len()
        || !previous.sources.iter().zip(&sources.records).all(|(a, b)| same(a, b))
    {
        return false;
    }
    previous.verify(target).is_ok()
}

/// Writes a plan into `out_root/model` (staged, checked, renamed) and
/// returns its report.
pub(crate) fn execute(plan: Plan, out_root: &Path, options: &ImportOptions) -> Result<ImportReport, ImportError> {
    let Plan { model, converted_from, spec, checkpoints, sources, files, leftover, unchecked } = plan;
    let dtype = options.dtype;
    let mut staging = Staging::new(out_root, model)?;
    let mut expected_files = Vec::new();
    for file in files {
        match file {
            Planned::Tensors { rel, mut tensors } => {
                staging.write_safetensors(&rel, &mut tensors, dtype, |t| {
                    let (index, key) = &t.source;
                    checkpoints[*index].read(key, dtype)
                })?;
                expected_files.push((rel, tensors.into_iter().map(|t| (t.key, t.shape)).collect::<Vec<_>>()));
            }
            Planned::Json { rel, value } => staging.write_json(&rel, &value)?,
            Planned::Bytes { rel, data } => staging.write_bytes(&rel, &data)?,
        }
    }
    // What was written must read back as planned.
    for (rel, tensors) in &expected_files {
        check_written(&staging.dir().join(rel), tensors, dtype)?;
    }
    let mut manifest = Manifest::new(model, dtype.name(), converted_from, spec);
    manifest.sources = sources;
    manifest.files = staging.files().to_vec();
    manifest.leftover = leftover;
    manifest.unchecked = unchecked;
    let value = serde_json::to_value(&manifest).expect("the manifest serialises");
    staging.write_json(MANIFEST, &value)?;
    let dir = staging.commit()?;
    Ok(ImportReport { dir, skipped: false, manifest })
}

/// Re-reads a written safetensors file's header: names, shapes, dtype.
fn check_written(path: &Path, tensors: &[(String, Vec<usize>)], dtype: WeightDtype) -> Result<(), ImportError> {
    let written = Checkpoint::open(path, &[])?;
    let want = match dtype {
        WeightDtype::F16 => SrcDtype::F16,
        WeightDtype::F32 => SrcDtype::F32,
    };
    let bad = |message: String| ImportError::ReadBack { path: path.to_path_buf(), message };
    if written.tensors().len() != tensors.len() {
        return Err(bad(format!("{} tensors, planned {}", written.tensors().len(), tensors.len())));
    }
    for (key, shape) in tensors {
        match written.tensors().get(key) {
            Some(meta) if &meta.shape == shape && meta.dtype == want => {}
            other => return Err(bad(format!("`{key}` is {other:?}, planned {shape:?} {}", dtype.name()))),
        }
    }
    Ok(())
}

/// A report for a skipped import.
pub(crate) fn skipped(target: PathBuf, manifest: Manifest) -> ImportReport {
    ImportReport { dir: target, skipped: true, manifest }
}

/// Source keys not in `used`, and non-tensor entries, sorted.
pub(crate) fn leftovers(checkpoint: &Checkpoint, used: &BTreeSet<String>) -> Vec<String> {
    let mut left: Vec<String> = checkpoint.tensors().keys().filter(|k| !used.contains(*k)).cloned().collect();
    left.extend(checkpoint.non_tensors().iter().map(|k| format!("{k} (not a tensor)")));
    left.sort();
    left
}

pub(crate) fn read_json(path: &Path) -> Result<(String, Value), ImportError> {
    let text = std::fs::read_to_string(path).map_err(|e| ImportError::io(path, e))?;
    let value = serde_json::from_str(&text)
        .map_err(|e| ImportError::Config { path: path.to_path_buf(), message: format!("invalid JSON: {e}") })?;
    Ok((text, value))
}

pub(crate) fn config_error(path: &Path, error: impl std::fmt::Display) -> ImportError {
    ImportError::Config { path: path.to_path_buf(), message: error.to_string() }
}
