//! SigLIP's key map: transformers' `SiglipVisionModel` names.

use super::{SiglipVisionConfig, SiglipVisionTransformer};
use crate::error::Result;
use crate::weights::{
    expected_tensors, find_prefix, load_module, norm_names, packed_projection, ExpectedTensor, JsonConfig, KeyMap,
    Source, TensorFile,
};
use burn::prelude::*;
use burn::tensor::DType;
use std::path::Path;

const PROBE: &str = "embeddings.patch_embedding.weight";
const VISION_ROOTS: [&str; 4] = ["embeddings.", "encoder.", "post_layernorm.", "head."];

fn siglip_source(path: &str) -> Source {
    let path = path.strip_prefix("layers.").map_or(path.to_string(), |rest| format!("encoder.layers.{rest}"));
    match path.strip_prefix("head.attention.") {
        Some(rest) => packed_projection("head.attention", rest),
        None => Source::Tensor(norm_names(&path)),
    }
}

fn in_vision_roots(key: &str) -> bool {
    VISION_ROOTS.iter().any(|r| key.starts_with(r))
}

/// Under `vision_model.` everything belongs to the tower; unprefixed, only its roots.
fn key_map(prefix: &str) -> KeyMap<'static> {
    KeyMap {
        module: "SigLIP",
        prefix: prefix.into(),
        source: &siglip_source,
        in_scope: if prefix.is_empty() { &in_vision_roots } else { &|_| true },
        ignored: &|key| key == "embeddings.position_ids",
    }
}

impl<B: Backend> SiglipVisionTransformer<B> {
    /// A HuggingFace SigLIP folder: `config.json` and `model.safetensors`.
    pub fn from_hf_dir(dir: &Path, dtype: DType, device: &B::Device) -> Result<Self> {
        let config = SiglipVisionConfig::from_file(&dir.join("config.json"))?;
        Self::load(&config, &TensorFile::open(dir.join("model.safetensors"))?, dtype, device)
    }

    /// `SiglipVisionModel` weights: `vision_model.*` (transformers 4) or
    /// unprefixed (transformers 5). The rest of a full `SiglipModel` file
    /// (`text_model.*`, `logit_scale`, …) is ignored.
    pub fn load(config: &SiglipVisionConfig, file: &TensorFile, dtype: DType, device: &B::Device) -> Result<Self> {
        let prefix = find_prefix(file, &["vision_model.", ""], PROBE, "the SigLIP vision tower")?;
        load_module(config.init(device), file, &key_map(prefix), dtype)
    }
}

impl SiglipVisionConfig {
    /// The tensors [`SiglipVisionTransformer::load`] reads, under `vision_model.`.
    pub fn expected_tensors(&self) -> Result<Vec<ExpectedTensor>, String> {
        self.validate()?;
        Ok(expected_tensors(&self.init::<burn::backend::Flex>(&Default::default()), &key_map("vision_model.")))
    }
}
