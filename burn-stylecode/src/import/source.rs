//! Checkpoints to import from: safetensors files (memory-mapped) and
//! PyTorch zip pickles (through the restricted reader in `pickle.rs`),
//! behind one interface: names, dtypes and shapes first, bytes on demand.

use super::pickle::TorchCheckpoint;
use super::{ImportError, WeightDtype};
use memmap2::Mmap;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Element types a checkpoint may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SrcDtype {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl SrcDtype {
    pub fn size(self) -> usize {
        match self {
            SrcDtype::F64 | SrcDtype::I64 => 8,
            SrcDtype::F32 | SrcDtype::I32 => 4,
            SrcDtype::F16 | SrcDtype::BF16 | SrcDtype::I16 => 2,
            SrcDtype::I8 | SrcDtype::U8 | SrcDtype::Bool => 1,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, SrcDtype::F64 | SrcDtype::F32 | SrcDtype::F16 | SrcDtype::BF16)
    }

    /// `torch.FloatStorage` etc.
    pub(crate) fn from_storage(name: &str) -> Option<Self> {
        Some(match name {
            "DoubleStorage" => SrcDtype::F64,
            "FloatStorage" => SrcDtype::F32,
            "HalfStorage" => SrcDtype::F16,
            "BFloat16Storage" => SrcDtype::BF16,
            "LongStorage" => SrcDtype::I64,
            "IntStorage" => SrcDtype::I32,
            "ShortStorage" => SrcDtype::I16,
            "CharStorage" => SrcDtype::I8,
            "ByteStorage" => SrcDtype::U8,
            "BoolStorage" => SrcDtype::Bool,
            _ => return None,
        })
    }

    fn from_safetensors(dtype: safetensors::Dtype) -> Option<Self> {
        use safetensors::Dtype as D;
        Some(match dtype {
            D::F64 => SrcDtype::F64,
            D::F32 => SrcDtype::F32,
            D::F16 => SrcDtype::F16,
            D::BF16 => SrcDtype::BF16,
            D::I64 => SrcDtype::I64,
            D::I32 => SrcDtype::I32,
            D::I16 => SrcDtype::I16,
            D::I8 => SrcDtype::I8,
            D::U8 => SrcDtype::U8,
            D::BOOL => SrcDtype::Bool,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            SrcDtype::F64 => "f64",
            SrcDtype::F32 => "f32",
            SrcDtype::F16 => "f16",
            SrcDtype::BF16 => "bf16",
            SrcDtype::I64 => "i64",
            SrcDtype::I32 => "i32",
            SrcDtype::I16 => "i16",
            SrcDtype::I8 => "i8",
            SrcDtype::U8 => "u8",
            SrcDtype::Bool => "bool",
        }
    }
}

/// A tensor's dtype and shape in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TensorMeta {
    pub dtype: SrcDtype,
    pub shape: Vec<usize>,
}

/// Converts little-endian float elements to `to`. Equal types are copied.
pub(crate) fn convert(bytes: Vec<u8>, from: SrcDtype, to: WeightDtype) -> Vec<u8> {
    use half::{bf16, f16};
    match (from, to) {
        (SrcDtype::F32, WeightDtype::F32) | (SrcDtype::F16, WeightDtype::F16) => bytes,
        (SrcDtype::F16, WeightDtype::F32) => {
            bytes.chunks_exact(2).flat_map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32().to_le_bytes()).collect()
        }
        (SrcDtype::BF16, WeightDtype::F32) => {
            bytes.chunks_exact(2).flat_map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32().to_le_bytes()).collect()
        }
        (SrcDtype::F32, WeightDtype::F16) => bytes
            .chunks_exact(4)
            .flat_map(|b| f16::from_f32(f32::from_le_bytes([b[0], b[1], b[2], b[3]])).to_le_bytes())
            .collect(),
        (SrcDtype::BF16, WeightDtype::F16) => bytes
            .chunks_exact(2)
            .flat_map(|b| f16::from_f32(bf16::from_le_bytes([b[0], b[1]]).to_f32()).to_le_bytes())
            .collect(),
        (SrcDtype::F64, _) => {
            let values = bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32);
            match to {
                WeightDtype::F32 => values.flat_map(f32::to_le_bytes).collect(),
                WeightDtype::F16 => values.flat_map(|v| f16::from_f32(v).to_le_bytes()).collect(),
            }
        }
        (other, _) => unreachable!("only float tensors are converted, not {}", other.name()),
    }
}

/// A memory-mapped safetensors file.
pub(crate) struct SafetensorsSource {
    mmap: Mmap,
    data_start: usize,
    offsets: BTreeMap<String, (usize, usize)>,
    tensors: BTreeMap<String, TensorMeta>,
}

/// An opened checkpoint.
pub(crate) struct Checkpoint {
    path: PathBuf,
    kind: Kind,
    tensors: BTreeMap<String, TensorMeta>,
}

enum Kind {
    Safetensors(SafetensorsSource),
    Torch(TorchCheckpoint),
}

/// What the first bytes of a file say it is.
enum Format {
    Safetensors,
    Zip,
    LegacyTorch,
}

fn sniff(path: &Path) -> Result<Format, ImportError> {
    let mut file = File::open(path).map_err(|e| ImportError::io(path, e))?;
    let len = file.metadata().map_err(|e| ImportError::io(path, e))?.len();
    let mut head = [0u8; 16];
    let n = read_up_to(&mut file, &mut head).map_err(|e| ImportError::io(path, e))?;
    let head = &head[..n];
    let not = |reason: &str| ImportError::NotACheckpoint { path: path.to_path_buf(), reason: reason.into() };
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return Ok(Format::Zip);
    }
    if head.starts_with(&[0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19]) {
        return Ok(Format::LegacyTorch);
    }
    if n >= 9 && head[8] == b'{' {
        let header = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
        if header < 100_000_000 {
            if header + 8 > len {
                return Err(ImportError::Truncated {
                    path: path.to_path_buf(),
                    reason: format!("the safetensors header says {header} bytes but the file has {len}"),
                });
            }
            return Ok(Format::Safetensors);
        }
    }
    if n == 0 {
        return Err(not("the file is empty"));
    }
    Err(not("neither a safetensors file nor a PyTorch zip checkpoint (.bin/.ckpt/.pt)"))
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

impl Checkpoint {
    /// Opens a safetensors file or a PyTorch zip pickle. For a pickle, the
    /// state dict is the top-level dict under the first of `unwrap` present,
    /// else the top-level dict.
    pub fn open(path: &Path, unwrap: &[&str]) -> Result<Self, ImportError> {
        let kind =
            match sniff(path)? {
                Format::Safetensors => Kind::Safetensors(open_safetensors(path)?),
                Format::Zip => Kind::Torch(TorchCheckpoint::open(path, unwrap)?),
                Format::LegacyTorch => return Err(ImportError::NotACheckpoint {
                    path: path.to_path_buf(),
                    reason:
                        "a PyTorch checkpoint in the pre-1.6 format, which is not supported: re-save it with a recent \
                             torch.save, or convert it to safetensors"
                            .into(),
                }),
            };
        let tensors = match &kind {
            Kind::Safetensors(s) => s.tensors.clone(),
            Kind::Torch(t) => t
                .tensors
                .iter()
                .map(|(k, v)| (k.clone(), TensorMeta { dtype: v.dtype, shape: v.shape.clone() }))
                .collect(),
        };
        Ok(Self { path: path.to_path_buf(), kind, tensors })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// "safetensors" or "pytorch-zip".
    pub fn format(&self) -> &'static str {
        match self.kind {
            Kind::Safetensors(_) => "safetensors",
            Kind::Torch(_) => "pytorch-zip",
        }
    }

    pub fn tensors(&self) -> &BTreeMap<String, TensorMeta> {
        &self.tensors
    }

    /// Entries of a pickled state dict that are not tensors.
    pub fn non_tensors(&self) -> &[String] {
        match &self.kind {
            Kind::Torch(t) => &t.others,
            Kind::Safetensors(_) => &[],
        }
    }

    /// A float tensor's elements, row-major, as little-endian `to`.
    pub fn read(&self, key: &str, to: WeightDtype) -> Result<Vec<u8>, ImportError> {
        let meta =
            self.tensors.get(key).ok_or_else(|| ImportError::NoTensor { path: self.path.clone(), key: key.into() })?;
        if !meta.dtype.is_float() {
            return Err(ImportError::WrongDtype {
                path: self.path.clone(),
                key: key.into(),
                dtype: meta.dtype.name().into(),
            });
        }
        let raw = match &self.kind {
            Kind::Safetensors(s) => {
                let (start, end) = s.offsets[key];
                s.mmap[s.data_start + start..s.data_start + end].to_vec()
            }
            Kind::Torch(t) => t.raw(key)?,
        };
        Ok(convert(raw, meta.dtype, to))
    }
}

fn open_safetensors(path: &Path) -> Result<SafetensorsSource, ImportError> {
    let file = File::open(path).map_err(|e| ImportError::io(path, e))?;
    // SAFETY: read-only map; the file is not expected to change during the import.
    let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ImportError::io(path, e))?;
    let (header, metadata) = safetensors::SafeTensors::read_metadata(&mmap).map_err(|e| {
        use safetensors::SafeTensorError as E;
        match e {
            E::MetadataIncompleteBuffer | E::InvalidHeaderLength => ImportError::Truncated {
                path: path.to_path_buf(),
                reason: "the safetensors header describes more data than the file holds".into(),
            },
            other => ImportError::NotACheckpoint {
                path: path.to_path_buf(),
                reason: format!("invalid safetensors header: {other}"),
            },
        }
    })?;
    let mut offsets = BTreeMap::new();
    let mut tensors = BTreeMap::new();
    for (name, info) in metadata.tensors() {
        let dtype = SrcDtype::from_safetensors(info.dtype).ok_or_else(|| ImportError::WrongDtype {
            path: path.to_path_buf(),
            key: name.clone(),
            dtype: format!("{:?}", info.dtype),
        })?;
        offsets.insert(name.clone(), info.data_offsets);
        tensors.insert(name, TensorMeta { dtype, shape: info.shape.clone() });
    }
    Ok(SafetensorsSource { mmap, data_start: 8 + header, offsets, tensors })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_trip_representable_values() {
        let values = [0.5f32, -1.25, 3.0];
        let f32_bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let f16_bytes = convert(f32_bytes.clone(), SrcDtype::F32, WeightDtype::F16);
        assert_eq!(f16_bytes.len(), 6);
        assert_eq!(convert(f16_bytes, SrcDtype::F16, WeightDtype::F32), f32_bytes);
        let bf16_bytes: Vec<u8> = values.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect();
        assert_eq!(convert(bf16_bytes, SrcDtype::BF16, WeightDtype::F32), f32_bytes);
    }
}
