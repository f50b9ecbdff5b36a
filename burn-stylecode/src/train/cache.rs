//! The feature cache (`RUN_DIR/cache`): the frozen encoders' outputs of
//! every dataset entry, computed once and read back by every step, resume
//! and later run over the same data and weights.
//!
//! Per entry it holds SigLIP's penultimate features of the style image, the
//! CLIP context of the prompt and the VAE posterior (mean, log-variance) of
//! the target; beside them the empty prompt's context (prompt dropout). All
//! are f32, in safetensors shards of [`SHARD_ENTRIES`] entries, each written
//! atomically, so a build that is killed resumes at its first missing shard.
//!
//! The cache lives in `cache/<fingerprint>/`. The fingerprint covers the
//! manifest's entries, the bytes of every image, the resolution, the frozen
//! dtype and the identity (path, size, modification time) of the SigLIP and
//! SD1.5 files the features come from: any change rebuilds it, and stale
//! folders are removed.

use super::data::Dataset;
use super::step::Frozen;
use crate::error::{Error, Result};
use crate::siglip::preprocess::pixel_values;
use crate::weights::safetensors::{write_atomic, write_f32, F32Tensor, TensorFile};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Entries per shard file.
pub const SHARD_ENTRIES: usize = 64;
/// Entries per pass through the frozen encoders while building.
const ENCODE_CHUNK: usize = 8;
/// Bumped when the cache's contents change meaning.
const FORMAT: u32 = 1;
const INDEX: &str = "cache.json";

/// The frozen encoders' outputs of a list of entries, on the host, f32,
/// entry-major.
#[derive(Clone, Debug, PartialEq)]
pub struct HostFeatures {
    /// Each entry's shapes.
    pub shapes: FeatureShapes,
    /// [N, T, D]
    pub style: Vec<f32>,
    /// [N, L, C]
    pub context: Vec<f32>,
    /// [N, 4, h, w] each.
    pub mean: Vec<f32>,
    pub logvar: Vec<f32>,
}

/// The per-entry shapes of [`HostFeatures`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureShapes {
    pub style: [usize; 2],
    pub context: [usize; 2],
    pub latent: [usize; 3],
}

/// Runs the frozen encoders over entries `indices`, one entry at a time:
/// a feature must not depend on what it was batched with (kernels may sum
/// in another order for another batch size), so that a cached run and a
/// live one are bit-identical.
pub fn encode_entries<B: AutodiffBackend>(
    frozen: &Frozen<B>,
    dataset: &Dataset,
    indices: &[usize],
) -> Result<HostFeatures> {
    let mut out: Option<HostFeatures> = None;
    for &index in indices {
        let one = encode_entry(frozen, dataset, index)?;
        match &mut out {
            None => out = Some(one),
            Some(all) => {
                all.style.extend(one.style);
                all.context.extend(one.context);
                all.mean.extend(one.mean);
                all.logvar.extend(one.logvar);
            }
        }
    }
    out.ok_or_else(|| Error::InvalidRequest("no entries to encode".into()))
}

fn encode_entry<B: AutodiffBackend>(frozen: &Frozen<B>, dataset: &Dataset, index: usize) -> Result<HostFeatures> {
    let batch = dataset.batch(&[index])?;
    let device = frozen.sd.device();
    let dtype = frozen.dtype();
    let pixels = pixel_values::<B::InnerBackend>(&batch.styles, frozen.image_size(), device).cast(dtype);
    let style = frozen.style_features(pixels);
    let context = frozen.prompt_context(&batch.prompts)?;
    let (mean, logvar) = frozen.posterior(batch.targets_tensor::<B::InnerBackend>(device).cast(dtype));
    let [_, t, d] = style.dims();
    let [_, l, c] = context.dims();
    let [_, lc, h, w] = mean.dims();
    Ok(HostFeatures {
        shapes: FeatureShapes { style: [t, d], context: [l, c], latent: [lc, h, w] },
        style: host(style)?,
        context: host(context)?,
        mean: host(mean)?,
        logvar: host(logvar)?,
    })
}

/// The empty prompt's context [1, L, C], for dropped prompts.
pub fn empty_context<B: AutodiffBackend>(frozen: &Frozen<B>) -> Result<Vec<f32>> {
    host(frozen.prompt_context(&[String::new()])?)
}

fn host<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Result<Vec<f32>> {
    tensor
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| Error::ReadBack { what: "frozen features", message: format!("{e:?}") })
}

/// `cache.json`: what a complete cache holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct CacheIndex {
    format: u32,
    fingerprint: String,
    entries: usize,
    shard_entries: usize,
    shapes: FeatureShapes,
}

/// A complete cache, read through memory maps.
pub struct FeatureCache {
    dir: PathBuf,
    shards: Vec<TensorFile>,
    shapes: FeatureShapes,
    empty_context: Vec<f32>,
}

/// Progress of a cache build: entries done of total.
pub type CacheProgress<'a> = &'a mut dyn FnMut(usize, usize);

impl FeatureCache {
    /// Opens the cache of `dataset` under `root` (`RUN_DIR/cache`), building
    /// what is missing with `frozen`.
    pub fn open_or_build<B: AutodiffBackend>(
        root: &Path,
        dataset: &Dataset,
        frozen: &Frozen<B>,
        progress: CacheProgress<'_>,
    ) -> Result<Self> {
        let fingerprint = fingerprint(dataset, frozen)?;
        let dir = root.join(&fingerprint[..16]);
        remove_stale(root, &dir)?;
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let index_path = dir.join(INDEX);
        let complete = std::fs::read(&index_path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<CacheIndex>(&bytes).ok())
            .filter(|index| index.fingerprint == fingerprint && index.format == FORMAT);
        let shapes = match complete {
            Some(index) => index.shapes,
            None => {
                let shapes = build(&dir, dataset, frozen, progress)?;
                let index = CacheIndex {
                    format: FORMAT,
                    fingerprint,
                    entries: dataset.len(),
                    shard_entries: SHARD_ENTRIES,
                    shapes: shapes.clone(),
                };
                write_atomic(&index_path, &super::checkpoint::json(&index))?;
                shapes
            }
        };
        let shards = (0..dataset.len().div_ceil(SHARD_ENTRIES))
            .map(|s| TensorFile::open(shard_path(&dir, s)))
            .collect::<Result<Vec<_>>>()?;
        let empty = TensorFile::open(dir.join("empty_prompt.safetensors"))?;
        Ok(Self { empty_context: empty.read_f32("context")?, dir, shards, shapes })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn shapes(&self) -> &FeatureShapes {
        &self.shapes
    }

    /// The empty prompt's context [1, L, C].
    pub fn empty_context(&self) -> &[f32] {
        &self.empty_context
    }

    /// The cached features of entries `indices`, in order.
    pub fn read(&self, indices: &[usize]) -> Result<HostFeatures> {
        let mut out =
            HostFeatures { shapes: self.shapes.clone(), style: vec![], context: vec![], mean: vec![], logvar: vec![] };
        for &i in indices {
            let shard = &self.shards[i / SHARD_ENTRIES];
            out.style.extend(shard.read_f32(&format!("{i}.style"))?);
            out.context.extend(shard.read_f32(&format!("{i}.context"))?);
            out.mean.extend(shard.read_f32(&format!("{i}.mean"))?);
            out.logvar.extend(shard.read_f32(&format!("{i}.logvar"))?);
        }
        Ok(out)
    }
}

fn shard_path(dir: &Path, shard: usize) -> PathBuf {
    dir.join(format!("shard-{shard:05}.safetensors"))
}

/// Writes every missing shard (and the empty prompt's context); returns the shapes.
fn build<B: AutodiffBackend>(
    dir: &Path,
    dataset: &Dataset,
    frozen: &Frozen<B>,
    progress: CacheProgress<'_>,
) -> Result<FeatureShapes> {
    let empty = empty_context(frozen)?;
    let context_len = empty.len();
    let mut shapes = None;
    for shard in 0..dataset.len().div_ceil(SHARD_ENTRIES) {
        let first = shard * SHARD_ENTRIES;
        let last = (first + SHARD_ENTRIES).min(dataset.len());
        let path = shard_path(dir, shard);
        if shapes.is_some() && path.exists() {
            progress(last, dataset.len());
            continue;
        }
        let mut tensors: Vec<F32Tensor> = Vec::new();
        for chunk_start in (first..last).step_by(ENCODE_CHUNK) {
            let indices: Vec<usize> = (chunk_start..(chunk_start + ENCODE_CHUNK).min(last)).collect();
            let features = encode_entries(frozen, dataset, &indices)?;
            let s = &features.shapes;
            let sizes = [s.style[0] * s.style[1], s.context[0] * s.context[1], s.latent.iter().product()];
            for (k, &i) in indices.iter().enumerate() {
                let part = |values: &[f32], size: usize| values[k * size..(k + 1) * size].to_vec();
                tensors.push((format!("{i}.style"), s.style.to_vec(), part(&features.style, sizes[0])));
                tensors.push((format!("{i}.context"), s.context.to_vec(), part(&features.context, sizes[1])));
                tensors.push((format!("{i}.mean"), s.latent.to_vec(), part(&features.mean, sizes[2])));
                tensors.push((format!("{i}.logvar"), s.latent.to_vec(), part(&features.logvar, sizes[2])));
            }
            shapes = Some(features.shapes.clone());
            progress(indices.last().map_or(0, |i| i + 1), dataset.len());
        }
        write_f32(&path, &tensors, None)?;
    }
    let shapes = shapes.ok_or_else(|| Error::InvalidRequest("the dataset has no entries".into()))?;
    let [l, c] = shapes.context;
    debug_assert_eq!(context_len, l * c);
    write_f32(&dir.join("empty_prompt.safetensors"), &[("context".into(), vec![1, l, c], empty)], None)?;
    Ok(shapes)
}

/// Removes cache folders of other fingerprints (a changed dataset or weights).
fn remove_stale(root: &Path, keep: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(root) else { return Ok(()) };
    for entry in entries.flatten() {
        let path = entry.path();
        if path != keep && path.is_dir() {
            std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

/// The hex sha256 over everything the cached values depend on.
fn fingerprint<B: AutodiffBackend>(dataset: &Dataset, frozen: &Frozen<B>) -> Result<String> {
    let mut hash = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    };
    field(&FORMAT.to_le_bytes());
    field(&dataset.resolution().to_le_bytes());
    field(&frozen.image_size().to_le_bytes());
    field(format!("{:?}", frozen.dtype()).as_bytes());
    for entry in dataset.entries() {
        field(entry.prompt.as_bytes());
        for path in [&entry.style, &entry.target] {
            field(path.to_string_lossy().as_bytes());
            let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            field(&Sha256::digest(&bytes));
        }
    }
    for file in frozen.source_files() {
        let meta = std::fs::metadata(file).map_err(|e| Error::io(file, e))?;
        let modified = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        field(file.to_string_lossy().as_bytes());
        field(&meta.len().to_le_bytes());
        field(&modified.map_or(0, |d| d.as_nanos()).to_le_bytes());
    }
    Ok(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
