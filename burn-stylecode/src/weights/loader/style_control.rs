use super::unet::unet_key;
use super::{load_module, norm_names, KeyMap, Source};
use crate::error::{Error, Result};
use crate::style_control::{StyleControl, StyleControlConfig};
use crate::weights::safetensors::TensorFile;
use burn::prelude::*;
use burn::tensor::DType;

/// The official `StyleCodesModel`'s control branch and mixing layers:
/// `control_model.mid_block.*`, `control_model.up_blocks.*`,
/// `control_model.up_zero_convs_out.N.*` and `middle_block_out.*`,
/// optionally all under `controlnet.`. Strict over `control_model.*` and
/// `middle_block_out.*`; the autoencoder's tensors are ignored here.
pub fn load_style_control<B: Backend>(
    config: &StyleControlConfig,
    file: &TensorFile,
    dtype: DType,
    device: &B::Device,
) -> Result<StyleControl<B>> {
    let prefix = ["", "controlnet."]
        .into_iter()
        .find(|p| file.contains(&format!("{p}middle_block_out.weight")))
        .ok_or_else(|| Error::NoModule {
            path: file.path().to_path_buf(),
            module: "the style control module (`middle_block_out.weight`)".into(),
            prefixes: vec!["".into(), "controlnet.".into()],
        })?;
    let source = |path: &str| {
        // The mixers wrap their Linear: `….linear.weight` is `….weight`.
        let path = path.replace(".linear.", ".");
        if path.starts_with("middle_block_out.") {
            Source::Tensor(norm_names(&path))
        } else if path.starts_with("up_zero_convs_out.") {
            Source::Tensor(format!("control_model.{}", norm_names(&path)))
        } else {
            Source::Tensor(format!("control_model.{}", unet_key(&path)))
        }
    };
    let in_scope = |key: &str| key.starts_with("control_model.") || key.starts_with("middle_block_out.");
    let map = KeyMap {
        module: "the style control module",
        prefix: prefix.into(),
        source: &source,
        in_scope: &in_scope,
        ignored: &|_| false,
    };
    load_module(config.init(device), file, &map, dtype)
}
