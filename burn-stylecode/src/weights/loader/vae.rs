use super::unet::{read_diffusers_config, unet_key};
use super::{load_module, KeyMap, Source};
use crate::error::{Error, Result};
use crate::sd::vae::{AutoencoderKL, VaeConfig};
use crate::weights::safetensors::TensorFile;
use burn::prelude::*;
use burn::tensor::DType;
use std::path::Path;

/// The VAE's `config.json` in a diffusers `vae/` folder.
pub fn read_vae_config(folder: &Path) -> Result<VaeConfig> {
    read_diffusers_config(folder, VaeConfig::from_json)
}

/// The mid-block attentions' names before diffusers 0.14, which files still
/// use: (current, old).
const OLD_ATTENTION_NAMES: [(&str, &str); 4] =
    [(".to_q.", ".query."), (".to_k.", ".key."), (".to_v.", ".value."), (".to_out.0.", ".proj_attn.")];

/// A diffusers `AutoencoderKL` file. The mid-block attentions load from
/// either spelling, `to_q/to_k/to_v/to_out.0` or the old
/// `query/key/value/proj_attn`, whichever the file has. Strict otherwise.
pub fn load_vae<B: Backend>(
    config: &VaeConfig,
    file: &TensorFile,
    dtype: DType,
    device: &B::Device,
) -> Result<AutoencoderKL<B>> {
    config.validate().map_err(|message| Error::Config { path: file.path().to_path_buf(), message })?;
    let source = |path: &str| {
        let key = unet_key(path);
        if !file.contains(&key) && key.contains(".mid_block.attentions.") {
            for (current, old) in OLD_ATTENTION_NAMES {
                let legacy = key.replacen(current, old, 1);
                if legacy != key && file.contains(&legacy) {
                    return Source::Tensor(legacy);
                }
            }
        }
        Source::Tensor(key)
    };
    let map =
        KeyMap { module: "the VAE", prefix: String::new(), source: &source, in_scope: &|_| true, ignored: &|_| false };
    load_module(config.init(device), file, &map, dtype)
}
