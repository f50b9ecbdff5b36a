use super::{load_module, norm_names, KeyMap, Source};
use crate::error::{Error, Result};
use crate::sd::clip::{ClipTextConfig, ClipTextTransformer};
use crate::weights::safetensors::TensorFile;
use burn::prelude::*;
use burn::tensor::DType;

/// `CLIPTextModel` weights: `text_model.*` (transformers 4, SD1.5's
/// `text_encoder/model.safetensors`) or unprefixed (transformers 5). The
/// `embeddings.position_ids` buffer older files carry is ignored; the rest of
/// a full `CLIPModel` file (`vision_model.*`, projections) is out of scope.
pub fn load_clip_text<B: Backend>(
    config: &ClipTextConfig,
    file: &TensorFile,
    dtype: DType,
    device: &B::Device,
) -> Result<ClipTextTransformer<B>> {
    let probe = "embeddings.token_embedding.weight";
    let prefix = ["text_model.", ""]
        .into_iter()
        .find(|p| file.contains(&format!("{p}{probe}")))
        .ok_or_else(|| Error::NoModule {
            path: file.path().to_path_buf(),
            module: "the CLIP text encoder".into(),
            prefixes: vec!["text_model.".into(), "".into()],
        })?;
    let source = |path: &str| {
        let path = path.strip_prefix("layers.").map_or(path.to_string(), |rest| format!("encoder.layers.{rest}"));
        Source::Tensor(norm_names(&path))
    };
    let text_roots = ["embeddings.", "encoder.", "final_layer_norm."];
    let in_scope = |key: &str| !prefix.is_empty() || text_roots.iter().any(|r| key.starts_with(r));
    let ignored = |key: &str| key == "embeddings.position_ids";
    let map = KeyMap { module: "CLIP text encoder", prefix: prefix.into(), source: &source, in_scope: &in_scope, ignored: &ignored };
    load_module(config.init(device), file, &map, dtype)
}
