//! The UNet's key map: diffusers' `UNet2DConditionModel` names.

use super::unet_2d::{UNet2DConditionModel, UNetConfig};
use crate::error::{Error, Result};
use crate::weights::{
    expected_tensors, load_module, norm_names, ExpectedTensor, JsonConfig, KeyMap, Source, TensorFile,
};
use burn::prelude::*;
use burn::tensor::DType;
use std::path::{Path, PathBuf};

/// The weights file of a diffusers model folder (`unet/`, `vae/`, …).
pub const DIFFUSERS_WEIGHTS: &str = "diffusion_pytorch_model.safetensors";

/// `folder/diffusion_pytorch_model.safetensors`, if it exists.
pub fn diffusers_weights(folder: &Path) -> Result<PathBuf> {
    let path = folder.join(DIFFUSERS_WEIGHTS);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "file not found")))
    }
}

/// diffusers' name of one of our UNet (or UNet block) parameters. Our
/// modules use diffusers' field names except where a diffusers list only
/// ever holds one thing (`downsamplers.0`, `upsamplers.0`, `to_out.0`), for
/// the feed-forward's `net.0.proj`/`net.2`, and for the projection enum's
/// variant (`proj_in.Conv.weight` is `proj_in.weight`).
pub(crate) fn unet_key(path: &str) -> String {
    let mut key: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('.').collect();
    for (i, segment) in segments.iter().enumerate() {
        let parent = i.checked_sub(1).map(|p| segments[p]);
        match (parent, *segment) {
            (_, "downsampler") => key.extend(["downsamplers", "0"]),
            (_, "upsampler") => key.extend(["upsamplers", "0"]),
            (_, "to_out") => key.extend(["to_out", "0"]),
            (Some("ff"), "proj") => key.extend(["net", "0", "proj"]),
            (Some("ff"), "out") => key.extend(["net", "2"]),
            (Some("proj_in" | "proj_out"), "Conv" | "Linear") => {}
            (_, other) => key.push(other),
        }
    }
    norm_names(&key.join("."))
}

fn unet_source(path: &str) -> Source {
    Source::Tensor(unet_key(path))
}

/// The UNet's map: diffusers names, unprefixed, every tensor used.
fn key_map() -> KeyMap<'static> {
    KeyMap { module: "the UNet", prefix: String::new(), source: &unet_source, in_scope: &|_| true, ignored: &|_| false }
}

impl<B: Backend> UNet2DConditionModel<B> {
    /// A diffusers `unet/` folder: `config.json` and `diffusion_pytorch_model.safetensors`.
    pub fn from_diffusers_dir(dir: &Path, dtype: DType, device: &B::Device) -> Result<Self> {
        let config = UNetConfig::from_file(&dir.join("config.json"))?;
        Self::load(&config, &TensorFile::open(diffusers_weights(dir)?)?, dtype, device)
    }

    /// A diffusers `UNet2DConditionModel` file (unprefixed keys). Strict:
    /// every tensor must be used.
    pub fn load(config: &UNetConfig, file: &TensorFile, dtype: DType, device: &B::Device) -> Result<Self> {
        config.validate().map_err(|message| Error::Config { path: file.path().to_path_buf(), message })?;
        load_module(config.init(device), file, &key_map(), dtype)
    }
}

impl UNetConfig {
    /// The tensors [`UNet2DConditionModel::load`] reads, with their shapes
    /// (nothing is allocated).
    pub fn expected_tensors(&self) -> Result<Vec<ExpectedTensor>, String> {
        self.validate()?;
        Ok(expected_tensors(&self.init::<burn::backend::Flex>(&Default::default()), &key_map()))
    }
}

#[cfg(test)]
mod tests {
    use super::unet_key;

    #[test]
    fn keys_follow_diffusers() {
        let cases = [
            ("down_blocks.0.downsampler.conv.weight", "down_blocks.0.downsamplers.0.conv.weight"),
            ("up_blocks.2.upsampler.conv.bias", "up_blocks.2.upsamplers.0.conv.bias"),
            (
                "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.weight",
                "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0.weight",
            ),
            (
                "mid_block.attentions.0.transformer_blocks.0.ff.proj.weight",
                "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj.weight",
            ),
            (
                "mid_block.attentions.0.transformer_blocks.0.ff.out.bias",
                "mid_block.attentions.0.transformer_blocks.0.ff.net.2.bias",
            ),
            ("up_blocks.1.attentions.2.proj_in.Conv.weight", "up_blocks.1.attentions.2.proj_in.weight"),
            ("up_blocks.1.attentions.2.proj_out.Linear.bias", "up_blocks.1.attentions.2.proj_out.bias"),
            ("up_blocks.1.attentions.2.norm.gamma", "up_blocks.1.attentions.2.norm.weight"),
            ("down_blocks.0.resnets.1.norm2.beta", "down_blocks.0.resnets.1.norm2.bias"),
            ("time_embedding.linear_1.weight", "time_embedding.linear_1.weight"),
        ];
        for (ours, theirs) in cases {
            assert_eq!(unet_key(ours), theirs);
        }
    }
}
