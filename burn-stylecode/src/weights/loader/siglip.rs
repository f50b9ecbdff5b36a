use super::{load_module, norm_names, packed_projection, KeyMap, Source};
use crate::error::{Error, Result};
use crate::siglip::{SiglipVisionConfig, SiglipVisionTransformer};
use crate::weights::safetensors::TensorFile;
use burn::prelude::*;
use burn::tensor::DType;

/// `SiglipVisionModel` weights: `vision_model.*` (transformers 4) or
/// unprefixed (transformers 5). The rest of a full `SiglipModel` file
/// (`text_model.*`, `logit_scale`, …) is ignored.
pub fn load_siglip<B: Backend>(
    config: &SiglipVisionConfig,
    file: &TensorFile,
    dtype: DType,
    device: &B::Device,
) -> Result<SiglipVisionTransformer<B>> {
    let probe = "embeddings.patch_embedding.weight";
    let prefix = ["vision_model.", ""]
        .into_iter()
        .find(|p| file.contains(&format!("{p}{probe}")))
        .ok_or_else(|| Error::NoModule {
            path: file.path().to_path_buf(),
            module: "the SigLIP vision tower".into(),
            prefixes: vec!["vision_model.".into(), "".into()],
        })?;
    let source = |path: &str| {
        let path = path.strip_prefix("layers.").map_or(path.to_string(), |rest| format!("encoder.layers.{rest}"));
        match path.strip_prefix("head.attention.") {
            Some(rest) => packed_projection("head.attention", rest),
            None => Source::Tensor(norm_names(&path)),
        }
    };
    let vision_roots = ["embeddings.", "encoder.", "post_layernorm.", "head."];
    let in_scope = |key: &str| !prefix.is_empty() || vision_roots.iter().any(|r| key.starts_with(r));
    let ignored = |key: &str| key == "embeddings.position_ids";
    let map = KeyMap { module: "SigLIP", prefix: prefix.into(), source: &source, in_scope: &in_scope, ignored: &ignored };
    load_module(config.init(device), file, &map, dtype)
}
