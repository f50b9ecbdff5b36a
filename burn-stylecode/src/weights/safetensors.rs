//! A memory-mapped safetensors file: the header is parsed once, tensor
//! bytes are read only when a module asks for them.
//!
//! A tensor stored in the dtype it is asked for is handed out without a
//! copy: its [`TensorData`] borrows the mapping (burn copies it only if
//! something writes to it, or to move it to a GPU). Any other dtype is
//! converted in one pass, in parallel chunks, straight from the mapping.

use crate::error::{Error, Result};
use burn::tensor::{AllocationProperty, Bytes, DType, TensorData};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::tensor::{Dtype, TensorInfo};
use safetensors::SafeTensors;
use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

// safetensors stores little-endian values, which we reinterpret in place.
#[cfg(target_endian = "big")]
compile_error!("burn-stylecode reads safetensors in place and needs a little-endian target");

/// Elements converted per parallel task.
const CHUNK: usize = 1 << 16;

/// One `.safetensors` file.
#[derive(Clone)]
pub struct TensorFile {
    path: PathBuf,
    /// The whole mapped file; slices of it share the mapping.
    map: bytes::Bytes,
    data_start: usize,
    tensors: Arc<BTreeMap<String, TensorInfo>>,
    metadata: Arc<BTreeMap<String, String>>,
    patch: Option<Arc<dyn TensorPatch>>,
}

/// Changes to some tensors of a file, made in f32 as they are read, before
/// the cast to the dtype asked for (LoRAs merged at load time).
pub trait TensorPatch: Send + Sync {
    /// Whether the tensor `key` (its full name in the file) is changed.
    fn touches(&self, key: &str) -> bool;
    /// Changes `values`, the tensor `key` of `shape` as f32, in place.
    fn apply(&self, key: &str, shape: &[usize], values: &mut [f32]) -> Result<()>;
}

impl TensorFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: the map is read-only; the file is not expected to change
        // while a model uses it (as with every mmap-based weight loader).
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        let invalid = |message: String| Error::Safetensors { path: path.clone(), message };
        let (header_len, metadata) = SafeTensors::read_metadata(&mmap).map_err(|e| invalid(describe(&e, &mmap)))?;
        // safetensors keeps the last of two tensors of one name; refuse such a header.
        serde_json::from_slice::<UniqueNames>(&mmap[8..8 + header_len]).map_err(|e| invalid(e.to_string()))?;
        let tensors = metadata.tensors().into_iter().map(|(k, v)| (k, v.clone())).collect();
        let text = metadata.metadata().clone().unwrap_or_default().into_iter().collect();
        Ok(Self {
            path,
            map: bytes::Bytes::from_owner(mmap),
            data_start: 8 + header_len,
            tensors: Arc::new(tensors),
            metadata: Arc::new(text),
            patch: None,
        })
    }

    /// The same file, with `patch` applied to the tensors it touches
    /// whenever they are read.
    pub fn with_patch(mut self, patch: Arc<dyn TensorPatch>) -> Self {
        self.patch = Some(patch);
        self
    }

    /// The header's `__metadata__` strings.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
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

    /// The tensor as `dtype` (from F32, F16 or BF16 storage), in its stored layout.
    pub fn read(&self, key: &str, dtype: DType) -> Result<TensorData> {
        self.read_rows(key, 0, 1, dtype)
    }

    /// Row block `index` of `parts` equal blocks along the first axis (one
    /// of PyTorch's packed q/k/v projections), as `dtype`.
    pub fn read_rows(&self, key: &str, index: usize, parts: usize, dtype: DType) -> Result<TensorData> {
        let info = self.info(key)?;
        let stored = self.stored_dtype(key, info)?;
        let mut shape = info.shape.clone();
        let rows = shape.first().copied().unwrap_or(1);
        if parts == 0 || index >= parts || rows % parts != 0 {
            return Err(Error::BadBuffer {
                path: self.path.clone(),
                key: key.to_string(),
                message: format!("shape {shape:?} cannot be split into {parts} row blocks"),
            });
        }
        let mut range = self.byte_range(info);
        let block = range.len() / parts;
        range = range.start + index * block..range.start + (index + 1) * block;
        if let Some(first) = shape.first_mut() {
            *first /= parts;
        }
        let bytes = self.map.slice(range);
        if let Some(patch) = self.patch.as_ref().filter(|p| p.touches(key)) {
            if parts != 1 {
                return Err(Error::BadBuffer {
                    path: self.path.clone(),
                    key: key.to_string(),
                    message: "a patched tensor cannot be read as row blocks".into(),
                });
            }
            let mut values = convert(&bytes, stored, DType::F32, shape.clone())
                .and_then(|data| data.into_vec::<f32>().ok())
                .expect("F32, F16 and BF16 decode to f32");
            patch.apply(key, &shape, &mut values)?;
            let data = convert(bytemuck::cast_slice(&values), DType::F32, dtype, shape).ok_or_else(|| {
                Error::UnsupportedDtype {
                    path: self.path.clone(),
                    key: key.to_string(),
                    dtype: format!("{dtype:?} (as a target)"),
                }
            })?;
            return self.finite(key, data, bytemuck::cast_slice(&values), DType::F32);
        }
        if stored == dtype && (bytes.as_ptr() as usize).is_multiple_of(dtype.size()) {
            let data =
                TensorData::from_bytes(Bytes::from_shared(bytes.clone(), AllocationProperty::File), shape, dtype);
            return self.finite(key, data, &bytes, stored);
        }
        let data = convert(&bytes, stored, dtype, shape).ok_or_else(|| Error::UnsupportedDtype {
            path: self.path.clone(),
            key: key.to_string(),
            dtype: format!("{dtype:?} (as a target)"),
        })?;
        self.finite(key, data, &bytes, stored)
    }

    /// `data` (the tensor `key` as read from `source`, `source_dtype` values)
    /// if every value is finite. NaN or infinite weights would only surface
    /// as a black image or a meaningless code; one pass over values already
    /// being read names the tensor instead.
    fn finite(&self, key: &str, data: TensorData, source: &[u8], source_dtype: DType) -> Result<TensorData> {
        let count = non_finite(data.as_bytes(), data.dtype);
        if count == 0 {
            return Ok(data);
        }
        // Finite values that the cast to a narrower dtype turned infinite.
        let overflow = data.dtype != source_dtype && non_finite(source, source_dtype) == 0;
        Err(Error::NonFiniteTensor { path: self.path.clone(), key: key.to_string(), count, overflow })
    }

    /// The tensor's values as f32 (from F32, F16 or BF16 storage).
    pub fn read_f32(&self, key: &str) -> Result<Vec<f32>> {
        let data = self.read(key, DType::F32)?;
        data.into_vec::<f32>().map_err(|e| Error::BadBuffer {
            path: self.path.clone(),
            key: key.to_string(),
            message: format!("{e:?}"),
        })
    }

    fn info(&self, key: &str) -> Result<&TensorInfo> {
        self.tensors.get(key).ok_or_else(|| Error::MissingTensor {
            path: self.path.clone(),
            key: key.to_string(),
            module: "the caller".into(),
        })
    }

    fn stored_dtype(&self, key: &str, info: &TensorInfo) -> Result<DType> {
        match info.dtype {
            Dtype::F32 => Ok(DType::F32),
            Dtype::F16 => Ok(DType::F16),
            Dtype::BF16 => Ok(DType::BF16),
            other => Err(Error::UnsupportedDtype {
                path: self.path.clone(),
                key: key.to_string(),
                dtype: format!("{other:?}"),
            }),
        }
    }

    fn byte_range(&self, info: &TensorInfo) -> Range<usize> {
        let (start, end) = info.data_offsets;
        self.data_start + start..self.data_start + end
    }
}

/// What is wrong with a file the safetensors reader refused, in words.
fn describe(error: &safetensors::SafeTensorError, file: &[u8]) -> String {
    use safetensors::SafeTensorError as E;
    let header_len = file.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    match error {
        E::HeaderTooSmall => format!("{} bytes: too short for the 8-byte header length", file.len()),
        E::HeaderTooLarge | E::InvalidHeaderLength => format!(
            "the header length (its first 8 bytes) is {}, beyond the file's {} bytes or the 100 MB limit",
            header_len.unwrap_or_default(),
            file.len()
        ),
        E::InvalidHeader(_) | E::InvalidHeaderStart => "the header is not a UTF-8 JSON object".into(),
        E::InvalidHeaderDeserialization(e) => format!("the header is not valid: {e}"),
        E::MetadataIncompleteBuffer => "truncated or padded: the tensors do not cover the data after the header".into(),
        E::InvalidOffset(name) => format!("tensor `{name}`: its data offsets overlap another tensor or leave a gap"),
        E::ValidationOverflow => "a tensor's shape or offsets overflow".into(),
        other => format!("{other:?}"),
    }
}

/// A safetensors header read only to check that no tensor name repeats.
struct UniqueNames;

impl<'de> serde::Deserialize<'de> for UniqueNames {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct Names;
        impl<'de> serde::de::Visitor<'de> for Names {
            type Value = UniqueNames;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<UniqueNames, A::Error> {
                let mut seen = std::collections::HashSet::new();
                while let Some(name) = map.next_key::<String>()? {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    if !seen.insert(name.clone()) {
                        return Err(serde::de::Error::custom(format!("the header names tensor `{name}` twice")));
                    }
                }
                Ok(UniqueNames)
            }
        }
        deserializer.deserialize_map(Names)
    }
}

/// How many of `bytes` (little-endian `dtype` values) are NaN or infinite:
/// those whose exponent bits are all set. Other dtypes count none.
fn non_finite(bytes: &[u8], dtype: DType) -> usize {
    fn count(bytes: &[u8], size: usize, exponent: u32) -> usize {
        let bits = |v: &[u8]| match v {
            [a, b, c, d] => u32::from_le_bytes([*a, *b, *c, *d]),
            [a, b] => u32::from(u16::from_le_bytes([*a, *b])),
            _ => 0,
        };
        // Whole words when aligned (every buffer but an odd memory map's):
        // a u32 count per lane vectorises 4-wide, a byte-wise one 2-wide.
        fn in_words<W: bytemuck::Pod + Into<u32>>(chunk: &[u8], exponent: u32) -> Option<usize> {
            let words: &[W] = bytemuck::try_cast_slice(chunk).ok()?;
            let hits: u32 = words.iter().map(|&w| u32::from(w.into() & exponent == exponent)).sum();
            Some(hits as usize)
        }
        bytes
            .par_chunks(CHUNK * size)
            .map(|chunk| {
                let words = match size {
                    4 if cfg!(target_endian = "little") => in_words::<u32>(chunk, exponent),
                    2 if cfg!(target_endian = "little") => in_words::<u16>(chunk, exponent),
                    _ => None,
                };
                words.unwrap_or_else(|| chunk.chunks_exact(size).filter(|v| bits(v) & exponent == exponent).count())
            })
            .sum()
    }
    match dtype {
        DType::F32 => count(bytes, 4, 0x7f80_0000),
        DType::F16 => count(bytes, 2, 0x7c00),
        DType::BF16 => count(bytes, 2, 0x7f80),
        _ => 0,
    }
}

/// `bytes` (little-endian `from` values) as a `to` tensor; `None` for a
/// target dtype other than F32, F16 or BF16.
fn convert(bytes: &[u8], from: DType, to: DType, shape: Vec<usize>) -> Option<TensorData> {
    let data = match to {
        DType::F32 => TensorData::new(fill(bytes, from, |src, dst| decode_f32(src, from, dst)), shape),
        DType::F16 => TensorData::new(fill(bytes, from, |src, dst: &mut [f16]| encode(src, from, to, dst)), shape),
        DType::BF16 => TensorData::new(fill(bytes, from, |src, dst: &mut [bf16]| encode(src, from, to, dst)), shape),
        _ => return None,
    };
    Some(data)
}

/// A new vector of `bytes.len() / from.size()` values, decoded chunk by
/// chunk on all cores. The zeroed allocation is first touched by the
/// workers, so its page faults are spread over the cores too.
fn fill<T, F>(bytes: &[u8], from: DType, decode: F) -> Vec<T>
where
    T: bytemuck::Pod + Send,
    F: Fn(&[u8], &mut [T]) + Sync,
{
    let mut out = vec![T::zeroed(); bytes.len() / from.size()];
    out.par_chunks_mut(CHUNK).zip(bytes.par_chunks(CHUNK * from.size())).for_each(|(dst, src)| decode(src, dst));
    out
}

/// Little-endian `from` values (F32, F16 or BF16) → f32.
fn decode_f32(src: &[u8], from: DType, dst: &mut [f32]) {
    match from {
        DType::F16 => aligned(src, |values: &[f16]| values.convert_to_f32_slice(dst)),
        DType::BF16 => aligned(src, |values: &[bf16]| values.convert_to_f32_slice(dst)),
        _ => bytemuck::cast_slice_mut(dst).copy_from_slice(src),
    }
}

/// Little-endian `from` values (F32, F16 or BF16) → the half type `H`, whose dtype is `to`.
fn encode<H>(src: &[u8], from: DType, to: DType, dst: &mut [H])
where
    H: bytemuck::Pod,
    [H]: HalfFloatSliceExt,
{
    if from == to {
        bytemuck::cast_slice_mut(dst).copy_from_slice(src);
    } else if from == DType::F32 {
        aligned(src, |values: &[f32]| dst.convert_from_f32_slice(values));
    } else {
        let mut wide = vec![0f32; dst.len()];
        decode_f32(src, from, &mut wide);
        dst.convert_from_f32_slice(&wide);
    }
}

/// Runs `f` on `src` viewed as `T`s, copying first if the bytes are not
/// aligned for `T` (a file may place a tensor at any offset).
fn aligned<T: bytemuck::Pod, R>(src: &[u8], f: impl FnOnce(&[T]) -> R) -> R {
    match bytemuck::try_cast_slice(src) {
        Ok(values) => f(values),
        Err(_) => {
            let mut copy = vec![T::zeroed(); src.len() / std::mem::size_of::<T>()];
            bytemuck::cast_slice_mut(&mut copy).copy_from_slice(src);
            f(&copy)
        }
    }
}

/// One tensor to write: name, shape, f32 values.
pub type F32Tensor = (String, Vec<usize>, Vec<f32>);

/// Writes `tensors` (and the header `metadata`, if any) as an F32
/// safetensors file, atomically: a temporary file beside `path`, synced, then
/// renamed over it, so a crash or a full disk never leaves a partial file
/// (the previous one stays intact).
pub fn write_f32(
    path: &Path,
    tensors: &[F32Tensor],
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<()> {
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|(_, _, v)| bytemuck::cast_slice(v).to_vec()).collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|view| (name.clone(), view))
                .map_err(|e| Error::Safetensors { path: path.to_path_buf(), message: format!("`{name}`: {e}") })
        })
        .collect::<Result<Vec<_>>>()?;
    let data = safetensors::serialize(views, metadata)
        .map_err(|e| Error::Safetensors { path: path.to_path_buf(), message: e.to_string() })?;
    write_atomic(path, &data)
}

/// A temporary file in `path`'s folder, to be renamed onto `path`, with the
/// mode a new file gets (0o666 less the umask, as `File::create`): tempfile's
/// default 0o600 would make every output private to its owner.
pub fn temp_file_beside(path: &Path, suffix: &str) -> Result<tempfile::NamedTempFile> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(".stylecode-").suffix(suffix);
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    builder.tempfile_in(dir).map_err(|e| Error::io(path, e))
}

/// Writes `bytes` to `path` through a synced temporary file beside it and a
/// rename, so a crash or a full disk never leaves a partial file (the
/// previous one stays intact).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut temp = temp_file_beside(path, ".part")?;
    std::io::Write::write_all(temp.as_file_mut(), bytes).map_err(|e| Error::io(path, e))?;
    temp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    temp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn le_bytes_f32(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn converts_between_float_types_at_any_alignment() {
        let values: Vec<f32> = (0..(3 * CHUNK + 17)).map(|i| (i as f32 - 1000.0) * 0.125).collect();
        for offset in [0, 1] {
            // Shift the source by one byte to exercise the unaligned path.
            let mut bytes = vec![0u8; offset];
            bytes.extend(le_bytes_f32(&values));
            let bytes = &bytes[offset..];
            let shape = vec![values.len()];
            let f32s = convert(bytes, DType::F32, DType::F32, shape.clone()).unwrap();
            assert_eq!(f32s.to_vec::<f32>().unwrap(), values);
            let halves = convert(bytes, DType::F32, DType::F16, shape.clone()).unwrap();
            let expected: Vec<f16> = values.iter().map(|&v| f16::from_f32(v)).collect();
            assert_eq!(halves.to_vec::<f16>().unwrap(), expected);
            let half_bytes: Vec<u8> = expected.iter().flat_map(|v| v.to_le_bytes()).collect();
            let mut shifted = vec![0u8; offset];
            shifted.extend(half_bytes);
            let back = convert(&shifted[offset..], DType::F16, DType::F32, shape.clone()).unwrap();
            let expected_back: Vec<f32> = expected.iter().map(|v| v.to_f32()).collect();
            assert_eq!(back.to_vec::<f32>().unwrap(), expected_back);
            let brain = convert(&shifted[offset..], DType::F16, DType::BF16, shape.clone()).unwrap();
            let expected_brain: Vec<bf16> = expected.iter().map(|v| bf16::from_f32(v.to_f32())).collect();
            assert_eq!(brain.to_vec::<bf16>().unwrap(), expected_brain);
        }
        assert!(convert(&[0; 8], DType::F32, DType::I32, vec![2]).is_none());
    }

    /// NaN and ±inf are counted alike on the word path (aligned) and the
    /// byte path (shifted by one byte), in f32, f16 and bf16.
    #[test]
    fn counts_non_finite_values_at_any_alignment() {
        let mut values: Vec<f32> = (0..(2 * CHUNK + 5)).map(|i| (i as f32 - 70.0) * 0.5).collect();
        for (i, bad) in [(3, f32::NAN), (CHUNK + 1, f32::INFINITY), (2 * CHUNK + 4, f32::NEG_INFINITY)] {
            values[i] = bad;
        }
        let halves: Vec<u8> = values.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect();
        let brains: Vec<u8> = values.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect();
        for (bytes, dtype) in [(le_bytes_f32(&values), DType::F32), (halves, DType::F16), (brains, DType::BF16)] {
            for offset in [0, 1] {
                let mut shifted = vec![0u8; offset];
                shifted.extend(&bytes);
                assert_eq!(non_finite(&shifted[offset..], dtype), 3, "{dtype:?} at offset {offset}");
            }
        }
    }

    /// A safetensors file by hand: `tensors` are (name, dtype, shape, bytes),
    /// laid out in order with no padding between them.
    fn write_file(dir: &Path, tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) -> PathBuf {
        let mut header = serde_json::Map::new();
        let mut offset = 0;
        for (name, dtype, shape, bytes) in tensors {
            let entry =
                serde_json::json!({ "dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes.len()] });
            header.insert(name.to_string(), entry);
            offset += bytes.len();
        }
        let mut text = serde_json::Value::Object(header).to_string();
        while !(8 + text.len()).is_multiple_of(8) {
            text.push(' ');
        }
        let mut out = (text.len() as u64).to_le_bytes().to_vec();
        out.extend(text.as_bytes());
        for (_, _, _, bytes) in tensors {
            out.extend(bytes);
        }
        let path = dir.join("t.safetensors");
        std::fs::write(&path, out).unwrap();
        path
    }

    #[test]
    fn a_tensor_in_the_asked_dtype_borrows_the_map_and_others_are_converted() {
        let dir = tempfile::tempdir().unwrap();
        let packed: Vec<f32> = (0..12).map(|i| i as f32 * 0.5).collect();
        // One f16 value first, so that `packed` starts 2 bytes into the data:
        // misaligned for f32, which must then be copied, not borrowed.
        let path = write_file(
            dir.path(),
            &[
                ("a_half", "F16", vec![1], f16::from_f32(3.0).to_le_bytes().to_vec()),
                ("b_packed", "F32", vec![6, 2], le_bytes_f32(&packed)),
                ("c_aligned", "F32", vec![3], le_bytes_f32(&[1.0, 2.0, 3.0])),
            ],
        );
        let file = TensorFile::open(&path).unwrap();
        let map = file.map.as_ptr_range();
        let borrowed = |data: &TensorData| map.contains(&data.as_bytes().as_ptr());

        // c_aligned starts at 2 + 48 = 50 bytes into the data: misaligned too.
        let misaligned = file.read("c_aligned", DType::F32).unwrap();
        assert_eq!(misaligned.to_vec::<f32>().unwrap(), vec![1.0, 2.0, 3.0]);
        let rows = file.read_rows("b_packed", 1, 3, DType::F32).unwrap();
        assert_eq!(rows.shape.to_vec(), vec![2, 2]);
        assert_eq!(rows.to_vec::<f32>().unwrap(), packed[4..8].to_vec());
        let half = file.read("a_half", DType::F16).unwrap();
        assert!(borrowed(&half), "an aligned tensor in the asked dtype is not copied");
        assert_eq!(half.to_vec::<f16>().unwrap(), vec![f16::from_f32(3.0)]);
        assert_eq!(file.read("a_half", DType::F32).unwrap().to_vec::<f32>().unwrap(), vec![3.0]);
        assert!(!borrowed(&misaligned));

        let error = file.read_rows("b_packed", 0, 4, DType::F32).unwrap_err().to_string();
        assert!(error.contains("b_packed") && error.contains("4 row blocks"), "{error}");
        let error = file.read("absent", DType::F32).unwrap_err().to_string();
        assert!(error.contains("absent"), "{error}");
    }

    #[test]
    fn an_aligned_f32_tensor_is_borrowed() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(dir.path(), &[("w", "F32", vec![2, 2], le_bytes_f32(&[1.0, 2.0, 3.0, 4.0]))]);
        let file = TensorFile::open(&path).unwrap();
        let data = file.read("w", DType::F32).unwrap();
        assert!(file.map.as_ptr_range().contains(&data.as_bytes().as_ptr()));
        assert_eq!(data.to_vec::<f32>().unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
        let rows = file.read_rows("w", 1, 2, DType::F32).unwrap();
        assert!(file.map.as_ptr_range().contains(&rows.as_bytes().as_ptr()));
        assert_eq!(rows.to_vec::<f32>().unwrap(), vec![3.0, 4.0]);
    }
}
