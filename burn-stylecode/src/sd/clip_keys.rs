//! The CLIP text encoder's key map: transformers' `CLIPTextModel` names.

use super::clip::{ClipTextConfig, ClipTextTransformer};
use crate::error::Result;
use crate::weights::{
    expected_tensors, find_prefix, load_module, norm_names, ExpectedTensor, JsonConfig, KeyMap, Source, TensorFile,
};
use burn::prelude::*;
use burn::tensor::DType;
use std::path::Path;

const PROBE: &str = "embeddings.token_embedding.weight";
const TEXT_ROOTS: [&str; 3] = ["embeddings.", "encoder.", "final_layer_norm."];

fn clip_source(path: &str) -> Source {
    let path = path.strip_prefix("layers.").map_or(path.to_string(), |rest| format!("encoder.layers.{rest}"));
    Source::Tensor(norm_names(&path))
}

fn in_text_roots(key: &str) -> bool {
    TEXT_ROOTS.iter().any(|r| key.starts_with(r))
}

/// Where the text tower's tensors sit in `file`: `text_model.` or unprefixed.
pub(crate) fn text_prefix(file: &TensorFile) -> Result<&'static str> {
    find_prefix(file, &["text_model.", ""], PROBE, "the CLIP text encoder")
}

/// Under `text_model.` everything belongs to the text tower; unprefixed, only its roots.
fn key_map(prefix: &str) -> KeyMap<'static> {
    KeyMap {
        module: "CLIP text encoder",
        prefix: prefix.into(),
        source: &clip_source,
        in_scope: if prefix.is_empty() { &in_text_roots } else { &|_| true },
        ignored: &|key| key == "embeddings.position_ids",
    }
}

impl<B: Backend> ClipTextTransformer<B> {
    /// A transformers `text_encoder/` folder: `config.json` and `model.safetensors`.
    pub fn from_dir(dir: &Path, dtype: DType, device: &B::Device) -> Result<Self> {
        let config = ClipTextConfig::from_file(&dir.join("config.json"))?;
        Self::load(&config, &TensorFile::open(dir.join("model.safetensors"))?, dtype, device)
    }

    /// `CLIPTextModel` weights: `text_model.*` (transformers 4, SD1.5's
    /// `text_encoder/model.safetensors`) or unprefixed (transformers 5). The
    /// `embeddings.position_ids` buffer older files carry is ignored; the rest of
    /// a full `CLIPModel` file (`vision_model.*`, projections) is out of scope.
    pub fn load(config: &ClipTextConfig, file: &TensorFile, dtype: DType, device: &B::Device) -> Result<Self> {
        let prefix = text_prefix(file)?;
        load_module(config.init(device), file, &key_map(prefix), dtype)
    }
}

impl ClipTextConfig {
    /// The tensors [`ClipTextTransformer::load`] reads, under `text_model.`.
    pub fn expected_tensors(&self) -> Result<Vec<ExpectedTensor>, String> {
        self.validate()?;
        Ok(expected_tensors(&self.init::<burn::backend::Flex>(&Default::default()), &key_map("text_model.")))
    }
}
