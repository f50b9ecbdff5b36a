use std::path::PathBuf;

/// Everything that can go wrong, each naming the file, key or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: invalid JSON: {source}", path.display())]
    Json { path: PathBuf, source: serde_json::Error },
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
    #[error("{}: tensor `{key}` does not match the value it must have: {message}", path.display())]
    BadBuffer { path: PathBuf, key: String, message: String },
    #[error("{}: no tensors for {module} found under any of the prefixes {prefixes:?}", path.display())]
    NoModule { path: PathBuf, module: String, prefixes: Vec<String> },
    #[error("{}: {message}", path.display())]
    Image { path: PathBuf, message: String },
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    #[error(transparent)]
    Code(#[from] crate::code::CodeError),
    #[error(transparent)]
    Blend(#[from] crate::code::BlendError),
    #[error("{0}")]
    Other(String),
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

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
