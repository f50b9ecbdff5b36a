//! The VAE's key map: diffusers' `AutoencoderKL` names, including the
//! mid-block attention names before diffusers 0.14.

use super::unet_keys::{diffusers_weights, unet_key};
use super::vae::{AutoencoderKL, VaeConfig};
use crate::error::{Error, Result};
use crate::weights::{expected_tensors, load_module, ExpectedTensor, JsonConfig, KeyMap, Source, TensorFile};
use burn::prelude::*;
use burn::tensor::DType;
use std::path::Path;

/// The mid-block attentions' names before diffusers 0.14, which files still
/// use: (current, old).
const OLD_ATTENTION_NAMES: [(&str, &str); 4] =
    [(".to_q.", ".query."), (".to_k.", ".key."), (".to_v.", ".value."), (".to_out.0.", ".proj_attn.")];

fn key_map(source: &dyn Fn(&str) -> Source) -> KeyMap<'_> {
    KeyMap { module: "the VAE", prefix: String::new(), source, in_scope: &|_| true, ignored: &|_| false }
}

impl<B: Backend> AutoencoderKL<B> {
    /// A diffusers `vae/` folder: `config.json` and `diffusion_pytorch_model.safetensors`.
    pub fn from_diffusers_dir(dir: &Path, dtype: DType, device: &B::Device) -> Result<Self> {
        let config = VaeConfig::from_file(&dir.join("config.json"))?;
        Self::load(&config, &TensorFile::open(diffusers_weights(dir)?)?, dtype, device)
    }

    /// A diffusers `AutoencoderKL` file. The mid-block attentions load from
    /// either spelling, `to_q/to_k/to_v/to_out.0` or the old
    /// `query/key/value/proj_attn`, whichever the file has. Strict otherwise.
    pub fn load(config: &VaeConfig, file: &TensorFile, dtype: DType, device: &B::Device) -> Result<Self> {
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
        load_module(config.init(device), file, &key_map(&source), dtype)
    }
}

impl VaeConfig {
    /// The tensors [`AutoencoderKL::load`] reads, in today's diffusers names.
    pub fn expected_tensors(&self) -> Result<Vec<ExpectedTensor>, String> {
        self.validate()?;
        let source = |path: &str| Source::Tensor(unet_key(path));
        Ok(expected_tensors(&self.init::<burn::backend::Flex>(&Default::default()), &key_map(&source)))
    }
}
