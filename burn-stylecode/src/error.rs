use std::path::{Path, PathBuf};

/// Everything that can go wrong, each naming the file, key or value at fault.
///
/// One convention for causes: an error's message is whole, so it includes
/// its cause's text and does not also hand the cause out as `source()`
/// (printers that walk the chain, as anyhow's `{:#}`, would repeat it).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {}", path.display(), os_message(cause))]
    Io { path: PathBuf, cause: std::io::Error },
    #[error("{}: invalid JSON: {cause}", path.display())]
    Json { path: PathBuf, cause: serde_json::Error },
    /// A model (or one of its files) absent from the weights folder.
    /// `missing` is the folder itself, the model's folder or a file in it;
    /// `why` says how the folder was chosen, `fix` the command that helps.
    #[error("{}", missing_weights(root, why, model, missing, fix))]
    MissingWeights { root: PathBuf, why: &'static str, model: &'static str, missing: PathBuf, fix: String },
    #[error("{}: not a valid safetensors file: {message}", path.display())]
    Safetensors { path: PathBuf, message: String },
    #[error("{}: missing tensor `{key}` (needed by {module})", path.display())]
    MissingTensor { path: PathBuf, key: String, module: String },
    #[error("{}: tensor `{key}` has shape {found:?}, expected {expected:?}", path.display())]
    ShapeMismatch { path: PathBuf, key: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("{}: tensor `{key}` has unsupported dtype {dtype} (expected F32, F16 or BF16)", path.display())]
    UnsupportedDtype { path: PathBuf, key: String, dtype: String },
    #[error("{}: {} unexpected tensor(s) under `{prefix}`: {}", path.display(), keys.len(), preview(keys))]
    UnexpectedTensors { path: PathBuf, prefix: String, keys: Vec<String> },
    /// NaN or infinite values in a weights tensor, found as it is read.
    #[error(
        "{}: tensor `{key}` has {count} NaN or infinite value(s){}",
        path.display(),
        if *overflow { " once cast to f16 (its values exceed f16's range: load it in f32, e.g. --dtype f32)" } else { "" }
    )]
    NonFiniteTensor { path: PathBuf, key: String, count: usize, overflow: bool },
    #[error("{}: tensor `{key}` does not match the value it must have: {message}", path.display())]
    BadBuffer { path: PathBuf, key: String, message: String },
    #[error("{}: no tensors for {module} found under any of the prefixes {prefixes:?}", path.display())]
    NoModule { path: PathBuf, module: String, prefixes: Vec<String> },
    #[error("{}: {message}", path.display())]
    Image { path: PathBuf, message: String },
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    #[error("{}: cannot load {module}: {message}", path.display())]
    Load { path: PathBuf, module: String, message: String },
    #[error(transparent)]
    Code(#[from] CodeError),
    #[error(transparent)]
    Blend(#[from] BlendError),
    /// Models that do not fit together (a width one makes and another reads).
    #[error("{0}")]
    Incompatible(String),
    /// A code made by other StyleCodes weights than the loaded ones.
    #[error(
        "the style code is for version {code} of the StyleCodes weights, but {} holds version {weights}",
        path.display()
    )]
    VersionMismatch { code: char, weights: char, path: PathBuf },
    /// A generation or encoding request that cannot be run as given.
    #[error("{0}")]
    InvalidRequest(String),
    #[error("the CLIP tokenizer: {0}")]
    Tokenizer(String),
    /// The backend failed to hand a tensor back to the host.
    #[error("reading {what} back from the device: {message}")]
    ReadBack { what: &'static str, message: String },
    /// A generation estimated to need more memory than it may use.
    #[error("{request} needs an estimated {estimate}, over the limit of {limit}; lower the size or the batch")]
    OutOfMemory { request: String, estimate: String, limit: String },
    /// NaN or infinite values out of a network during generation.
    #[error("{stage} has {count} NaN or infinite value(s) at {at}: f16 overflow (try --dtype f32) or broken weights")]
    NonFinite { stage: &'static str, at: String, count: u64 },
    /// A LoRA file that cannot be merged.
    #[error("LoRA {}: {message}", path.display())]
    Lora { path: PathBuf, message: String },
    /// A LoRA for another base model (SDXL, SD2).
    #[error(transparent)]
    LoraShape(Box<LoraShapeError>),
    /// The progress callback asked to stop.
    #[error("cancelled")]
    Cancelled,
}

/// The first few keys, quoted, and how many more there are.
pub(crate) fn preview(keys: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut text = keys.iter().take(SHOWN).map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
    if keys.len() > SHOWN {
        text.push_str(&format!(", and {} more", keys.len() - SHOWN));
    }
    text
}

/// A LoRA module whose change does not fit the weight it names.
#[derive(Debug, thiserror::Error)]
#[error(
    "LoRA {}: `{module}` changes `{param}` by a {found:?} matrix, but the model's weight is {expected:?}: \
     the LoRA is for another base model than this SD1.5{}",
    path.display(),
    base.as_ref().map(|b| format!(" (its ss_base_model_version is {b})")).unwrap_or_default()
)]
pub struct LoraShapeError {
    pub path: PathBuf,
    pub module: String,
    pub param: String,
    pub expected: Vec<usize>,
    pub found: Vec<usize>,
    pub base: Option<String>,
}

/// Why a string is not a stylecode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    #[error(
        "a stylecode has 21 characters (paper form) or 27 (official form, \
         `=` padding optional); `{code}` has {len}"
    )]
    Length { code: String, len: usize },
    #[error("character {character:?} at position {position} of `{code}` is not a base64 symbol (A-Z a-z 0-9 + /)")]
    Character { code: String, character: char, position: usize },
    #[error(
        "version character {character:?} at position {position} of `{code}` is not a known encoder version \
         (expected a base64 symbol)"
    )]
    Version { code: String, character: char, position: usize },
    #[error("code version {character:?} is not a base64 symbol (A-Z a-z 0-9 + /)")]
    VersionSymbol { character: char },
    #[error("byte {index} of official code `{code}` is {value}, over the 6-bit maximum 63")]
    ValueRange { code: String, index: usize, value: u8 },
    #[error("official code `{code}` has non-zero bits after the 20th byte (at position {position})")]
    TrailingBits { code: String, position: usize },
    #[error("value {value} at index {index} is over the 6-bit maximum 63")]
    Value { index: usize, value: u8 },
    /// A latent value with no code (NaN, ±inf: a broken network or input).
    #[error(
        "latent value {index} is {value}, which has no code: NaN or infinite latents come from broken \
         weights or an f16 overflow"
    )]
    NonFinite { index: usize, value: String },
}

/// Why codes cannot be blended.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BlendError {
    #[error(transparent)]
    Code(#[from] CodeError),
    #[error("`{text}`: the weight after `:` must be a non-negative number")]
    Weight { text: String },
    #[error("no codes to blend")]
    Empty,
    #[error("the weights add up to zero")]
    ZeroWeight,
    #[error(
        "codes of different versions cannot be blended: `{first}` is version {first_version}, \
         `{other}` is version {other_version}"
    )]
    Versions { first: String, first_version: char, other: String, other_version: char },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        Error::Io { path: path.into(), cause }
    }
}

/// The OS's own words for an io error: the innermost cause, without the
/// ` at path "…"` that `tempfile` appends (its temporary name means nothing
/// to the user; the error names the user's path instead).
pub(crate) fn os_message(error: &std::io::Error) -> String {
    let mut inner: &dyn std::error::Error = error;
    while let Some(next) = inner.source() {
        inner = next;
    }
    let text = inner.to_string();
    match text.rfind(" at path \"") {
        Some(at) if text.ends_with('"') => text[..at].to_string(),
        _ => text,
    }
}

/// The weights folder or one model in it is missing: which, where, why there, and the fix.
fn missing_weights(root: &Path, why: &str, model: &str, missing: &Path, fix: &str) -> String {
    if missing == root {
        format!("the weights folder {} ({why}) does not exist, so there are no {model} weights; {fix}", root.display())
    } else {
        format!(
            "no {model} weights: {} does not exist (weights folder {}, {why}); {fix}",
            missing.display(),
            root.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_io_error_says_its_os_message_once_and_names_the_users_path() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("absent/out.png");
        let cause = tempfile::Builder::new().tempfile_in(dir.path().join("absent")).unwrap_err();
        let text = Error::io(&target, cause).to_string();
        let os = std::io::Error::from_raw_os_error(2).to_string();
        assert_eq!(text, format!("{}: {os}", target.display()));
        assert!(std::error::Error::source(&Error::io(&target, std::io::Error::from_raw_os_error(2))).is_none());
    }
}
