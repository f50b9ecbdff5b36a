//! A memory-mapped safetensors file: the header is parsed once, tensor
//! bytes are read only when a module asks for them.

use crate::error::{Error, Result};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, TensorInfo};
use safetensors::SafeTensors;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One `.safetensors` file.
#[derive(Clone)]
pub struct TensorFile {
    path: PathBuf,
    mmap: Arc<Mmap>,
    data_start: usize,
    tensors: Arc<BTreeMap<String, TensorInfo>>,
}

impl TensorFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: the map is read-only; the file is not expected to change
        // while a model loads (as with every mmap-based weight loader).
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        let (header_len, metadata) = SafeTensors::read_metadata(&mmap)
            .map_err(|e| Error::Safetensors { path: path.clone(), message: format!("{e:?}") })?;
        let tensors = metadata.tensors().into_iter().map(|(k, v)| (k, v.clone())).collect();
        Ok(Self { path, mmap: Arc::new(mmap), data_start: 8 + header_len, tensors: Arc::new(tensors) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All tensor names, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    pub fn shape(&self, key: &str) -> Option<&[usize]> {
        self.tensors.get(key).map(|info| info.shape.as_slice())
    }

    /// The tensor's values as f32 (from F32, F16 or BF16 storage).
    pub fn read_f32(&self, key: &str) -> Result<Vec<f32>> {
        let info = self.tensors.get(key).ok_or_else(|| Error::MissingTensor {
            path: self.path.clone(),
            key: key.to_string(),
            module: "the caller".into(),
        })?;
        let (start, end) = info.data_offsets;
        let bytes = &self.mmap[self.data_start + start..self.data_start + end];
        let values = match info.dtype {
            Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => {
                bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
            }
            Dtype::BF16 => {
                bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
            }
            other => {
                return Err(Error::UnsupportedDtype {
                    path: self.path.clone(),
                    key: key.to_string(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        Ok(values)
    }
}
