//! `stylecode merge-lora`: a diffusers SD1.5 folder with LoRAs baked into
//! its UNet and text encoder, written as an import is (staged, checked,
//! renamed into place, with a manifest).

use super::manifest::{Manifest, MANIFEST};
use super::write::{hex, OutTensor, Staging};
use super::{check_written, target_dir, ImportError, ImportReport, Sources, WeightDtype};
use crate::sd::clip::ClipTextConfig;
use crate::sd::lora::{Lora, LoraSpec};
use crate::sd::pipeline::weights_files;
use crate::sd::unet_2d::UNetConfig;
use crate::weights::{JsonConfig, TensorFile};
use burn::tensor::DType;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

const UNET_WEIGHTS: &str = "unet/diffusion_pytorch_model.safetensors";
const TEXT_WEIGHTS: &str = "text_encoder/model.safetensors";

/// Every regular file under `dir`, as paths relative to it, sorted.
fn files_under(dir: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<(), ImportError> {
    let here = dir.join(rel);
    for entry in std::fs::read_dir(&here).map_err(|e| ImportError::io(&here, e))? {
        let entry = entry.map_err(|e| ImportError::io(&here, e))?;
        let rel = rel.join(entry.file_name());
        let kind = entry.file_type().map_err(|e| ImportError::io(dir.join(&rel), e))?;
        if kind.is_dir() {
            files_under(dir, &rel, out)?;
        } else if kind.is_file() {
            out.push(rel);
        }
    }
    out.sort();
    Ok(())
}

/// Writes `base` (a diffusers SD1.5 folder) with `loras` merged into its
/// UNet and text encoder to the folder `out`, tensors as `dtype`. The other
/// files are copied; other weight files of the UNet and text encoder (an
/// `.fp16` variant, `.bin`) are left out, since they would hold the weights
/// without the LoRAs. Returns the report and the LoRAs as checked (with
/// their unmatched tensor names).
pub fn sd15_with_loras(
    base: &Path,
    loras: &[LoraSpec],
    out: &Path,
    dtype: WeightDtype,
) -> Result<(ImportReport, Vec<Lora>), ImportError> {
    let unet_config = UNetConfig::from_file(&base.join("unet/config.json"))?;
    let text_config = ClipTextConfig::from_file(&base.join("text_encoder/config.json"))?;
    let (unet, text, loaded) = weights_files(base, &unet_config, &text_config, loras)?;

    let name = out.file_name().ok_or_else(|| ImportError::Config {
        path: out.to_path_buf(),
        message: "the output must name a folder".into(),
    })?;
    let root = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut copied = Vec::new();
    files_under(base, Path::new(""), &mut copied)?;
    let copied: Vec<PathBuf> = copied
        .into_iter()
        .filter(|rel| {
            let text = rel.to_string_lossy().replace('\\', "/");
            let weights = text.ends_with(".safetensors") || text.ends_with(".bin");
            text != MANIFEST && !(weights && (text.starts_with("unet/") || text.starts_with("text_encoder/")))
        })
        .collect();
    let mut sources: Vec<(PathBuf, &str)> =
        vec![(unet.path().to_path_buf(), "checkpoint"), (text.path().to_path_buf(), "checkpoint")];
    sources.extend(loras.iter().map(|l| (l.path.clone(), "lora")));
    sources.extend(copied.iter().map(|rel| (base.join(rel), "file")));
    let target =
        target_dir(&root, &name.to_string_lossy(), &sources.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>())?;
    let records = Sources::record(&sources, None, None)?.records;

    let mut staging = Staging::new(&root, &name.to_string_lossy())?;
    for rel in &copied {
        let path = base.join(rel);
        let data = std::fs::read(&path).map_err(|e| ImportError::io(&path, e))?;
        staging.write_bytes(&rel.to_string_lossy().replace('\\', "/"), &data)?;
    }
    let burn_dtype = match dtype {
        WeightDtype::F16 => DType::F16,
        WeightDtype::F32 => DType::F32,
    };
    for (rel, file) in [(UNET_WEIGHTS, &unet), (TEXT_WEIGHTS, &text)] {
        let mut tensors: Vec<OutTensor<()>> = file
            .keys()
            .map(|key| OutTensor { key: key.to_string(), shape: file.shape(key).expect("listed").to_vec(), source: () })
            .collect();
        staging.write_safetensors(rel, &mut tensors, dtype, |t| read_bytes(file, &t.key, burn_dtype))?;
        let planned: Vec<(String, Vec<usize>)> = tensors.into_iter().map(|t| (t.key, t.shape)).collect();
        check_written(&staging.dir().join(rel), &planned, dtype)?;
    }

    // The spec: which LoRAs, with which weights, into which base.
    let mut spec = Sha256::new();
    for (record, lora) in records.iter().skip(2).zip(loras) {
        spec.update(format!("{} {} {}\n", record.sha256, lora.unet_weight, lora.text_encoder_weight));
    }
    let mut manifest = Manifest::new("sd15", dtype.name(), "lora-merge", hex(&spec.finalize()));
    manifest.sources = records;
    manifest.files = staging.files().to_vec();
    let value = serde_json::to_value(&manifest).expect("the manifest serialises");
    staging.write_json(MANIFEST, &value)?;
    let dir = staging.commit()?;
    debug_assert_eq!(dir, target);
    Ok((ImportReport { dir, skipped: false, manifest }, loaded))
}

fn read_bytes(file: &TensorFile, key: &str, dtype: DType) -> Result<Vec<u8>, ImportError> {
    let data = file.read(key, dtype)?;
    Ok(data.as_bytes().to_vec())
}
