//! Writing an imported model: every file goes into a hidden staging folder
//! beside the target, is hashed while written, checked, and only then is the
//! folder renamed into place. An interrupted or failed import leaves no half
//! file where the models look (a stale staging folder is removed by the next
//! run), and a failed one removes what it wrote.

use super::manifest::FileRecord;
use super::{ImportError, WeightDtype};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A finished sha256, as lowercase hex.
pub fn hex_digest(digest: Sha256) -> String {
    hex(&digest.finalize())
}

/// The sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf)? {
            0 => break,
            n => hasher.update(&buf[..n]),
        }
    }
    Ok(hex(&hasher.finalize()))
}

/// A writer that hashes everything written through it.
struct Hashing<W: Write> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// One tensor to write: its name, shape and where its bytes come from.
pub(crate) struct OutTensor<S> {
    pub key: String,
    pub shape: Vec<usize>,
    pub source: S,
}

/// A model folder being written.
pub(crate) struct Staging {
    root: PathBuf,
    model: String,
    dir: PathBuf,
    created_root: bool,
    files: Vec<FileRecord>,
    committed: bool,
}

impl Staging {
    /// A fresh staging folder for `root/model`; stale ones of earlier,
    /// interrupted runs are removed first.
    pub fn new(root: &Path, model: &str) -> Result<Self, ImportError> {
        let created_root = !root.exists();
        fs::create_dir_all(root).map_err(|e| ImportError::io(root, e))?;
        remove_stale(root, model);
        let stamp =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let dir = root.join(format!(".{model}.partial-{}-{stamp}", std::process::id()));
        fs::create_dir(&dir).map_err(|e| ImportError::io(&dir, e))?;
        Ok(Self {
            root: root.to_path_buf(),
            model: model.into(),
            dir,
            created_root,
            files: Vec::new(),
            committed: false,
        })
    }

    fn create(&self, rel: &str) -> Result<(PathBuf, Hashing<BufWriter<File>>), ImportError> {
        let path = self.dir.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| ImportError::io(parent, e))?;
        }
        let file = File::create(&path).map_err(|e| ImportError::io(&path, e))?;
        Ok((path, Hashing { inner: BufWriter::with_capacity(8 << 20, file), hasher: Sha256::new(), bytes: 0 }))
    }

    fn finish(
        &mut self,
        rel: &str,
        path: &Path,
        writer: Hashing<BufWriter<File>>,
        tensors: Option<usize>,
    ) -> Result<(), ImportError> {
        let Hashing { inner, hasher, bytes } = writer;
        let file = inner.into_inner().map_err(|e| ImportError::io(path, e.into_error()))?;
        file.sync_all().map_err(|e| ImportError::io(path, e))?;
        self.files.push(FileRecord { path: rel.to_string(), bytes, sha256: hex(&hasher.finalize()), tensors });
        Ok(())
    }

    /// A small file written whole (configs, tokenizer files).
    pub fn write_bytes(&mut self, rel: &str, data: &[u8]) -> Result<(), ImportError> {
        let (path, mut writer) = self.create(rel)?;
        writer.write_all(data).map_err(|e| ImportError::io(&path, e))?;
        self.finish(rel, &path, writer, None)
    }

    pub fn write_json(&mut self, rel: &str, value: &Value) -> Result<(), ImportError> {
        let mut text = serde_json::to_string_pretty(value).expect("JSON values serialise");
        text.push('\n');
        self.write_bytes(rel, text.as_bytes())
    }

    /// A safetensors file, tensors sorted by name, streamed: `read` is
    /// called once per tensor, in order, and must return its bytes in `dtype`.
    pub fn write_safetensors<S>(
        &mut self,
        rel: &str,
        tensors: &mut [OutTensor<S>],
        dtype: WeightDtype,
        mut read: impl FnMut(&OutTensor<S>) -> Result<Vec<u8>, ImportError>,
    ) -> Result<(), ImportError> {
        tensors.sort_by(|a, b| a.key.cmp(&b.key));
        let mut header = Map::new();
        header.insert("__metadata__".into(), serde_json::json!({ "format": "pt" }));
        let mut offset = 0usize;
        for t in tensors.iter() {
            let len = t.shape.iter().product::<usize>() * dtype.size();
            let (name, offsets) = (dtype.safetensors_name(), [offset, offset + len]);
            let entry = serde_json::json!({ "dtype": name, "shape": t.shape, "data_offsets": offsets });
            header.insert(t.key.clone(), entry);
            offset += len;
        }
        let mut text = serde_json::to_string(&Value::Object(header)).expect("JSON values serialise");
        // The data must start 8-byte aligned; the format pads with spaces.
        while !(8 + text.len()).is_multiple_of(8) {
            text.push(' ');
        }
        let (path, mut writer) = self.create(rel)?;
        let io = |e| ImportError::io(&path, e);
        writer.write_all(&(text.len() as u64).to_le_bytes()).map_err(io)?;
        writer.write_all(text.as_bytes()).map_err(io)?;
        for t in tensors.iter() {
            let bytes = read(t)?;
            let want = t.shape.iter().product::<usize>() * dtype.size();
            if bytes.len() != want {
                let (key, read) = (t.key.clone(), bytes.len());
                return Err(ImportError::ShortRead { path: path.clone(), key, read, expected: want });
            }
            writer.write_all(&bytes).map_err(io)?;
        }
        self.finish(rel, &path, writer, Some(tensors.len()))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn files(&self) -> &[FileRecord] {
        &self.files
    }

    /// Renames the staging folder to `root/model`, replacing what was there.
    pub fn commit(mut self) -> Result<PathBuf, ImportError> {
        let target = self.root.join(&self.model);
        let old = self.root.join(format!(".{}.old-{}", self.model, std::process::id()));
        if target.exists() {
            fs::rename(&target, &old).map_err(|e| ImportError::io(&target, e))?;
        }
        if let Err(e) = fs::rename(&self.dir, &target) {
            // Put the previous folder back.
            let _ = fs::rename(&old, &target);
            return Err(ImportError::io(&target, e));
        }
        self.committed = true;
        if old.exists() {
            fs::remove_dir_all(&old).map_err(|e| ImportError::io(&old, e))?;
        }
        Ok(target)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.dir);
            if self.created_root {
                // Only if empty: never removes anything else.
                let _ = fs::remove_dir(&self.root);
            }
        }
    }
}

/// Removes `.model.partial-*` / `.model.old-*` left by interrupted runs.
fn remove_stale(root: &Path, model: &str) {
    let Ok(entries) = fs::read_dir(root) else { return };
    let partial = format!(".{model}.partial-");
    let old = format!(".{model}.old-");
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with(&partial) || name.starts_with(&old) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}
