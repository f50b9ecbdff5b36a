//! The official release's checkpoint layout: the `StyleCodesModel` state
//! dict (`sref_autoencoder.*`, `control_model.*`, `middle_block_out.*`,
//! optionally all under `controlnet.`), and the one trainable module made
//! of the autoencoder and the control branch.

use super::autoencoder::{sinusoidal_values, AttentionAutoencoder, AutoencoderConfig};
use super::config::StylecodesConfig;
use super::control::{StyleControl, StyleControlConfig};
use crate::error::{Error, Result};
use crate::sd::unet_2d::UNetConfig;
use crate::sd::unet_key;
use crate::weights::safetensors::{write_f32, F32Tensor};
use crate::weights::JsonConfig;
use crate::weights::{
    expected_tensors, find_prefix, load_module, norm_names, packed_projection, param_values, ExpectedTensor, KeyMap,
    Source, TensorFile,
};
use burn::module::Module;
use burn::prelude::*;
use burn::tensor::DType;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where the state dict may sit in a file.
const PREFIXES: [&str; 2] = ["", "controlnet."];

/// The autoencoder and the control branch: what a StyleCodes checkpoint
/// holds and what training updates (the base UNet, VAE, CLIP and SigLIP
/// are borrowed and frozen).
#[derive(Module, Debug)]
pub struct StyleCodesModel<B: Backend> {
    pub autoencoder: AttentionAutoencoder<B>,
    pub control: StyleControl<B>,
}

impl<B: Backend> StyleCodesModel<B> {
    /// The model of a `stylecodes/` folder, its control branch shaped after
    /// the base UNet's config.
    pub fn from_dir(dir: &Path, base: &UNetConfig, dtype: DType, device: &B::Device) -> Result<Self> {
        let config = StylecodesConfig::from_dir(dir)?;
        let file = TensorFile::open(stylecodes_weights(dir)?)?;
        Self::load(&config, base, &file, dtype, device)
    }

    /// Both parts from one official-layout file.
    pub fn load(
        config: &StylecodesConfig,
        base: &UNetConfig,
        file: &TensorFile,
        dtype: DType,
        device: &B::Device,
    ) -> Result<Self> {
        check_fits_base(&config.autoencoder, base)?;
        let autoencoder = AttentionAutoencoder::load(&config.autoencoder, file, dtype, device)?;
        let control = StyleControl::load(&config.control(base), file, dtype, device)?;
        Ok(Self { autoencoder, control })
    }
}

/// Where the [`StyleCodesModel`] parameter at `path` (`autoencoder.…` or
/// `control.…`, as burn names it) sits in the official state dict: the same
/// maps the loader reads through, for gradients and export.
pub fn official_source(path: &str) -> Option<Source> {
    let prefixed = |source: Source, prefix: &str| match source {
        Source::Tensor(key) => Source::Tensor(format!("{prefix}{key}")),
        Source::Rows { key, index, parts } => Source::Rows { key: format!("{prefix}{key}"), index, parts },
    };
    if let Some(rest) = path.strip_prefix("autoencoder.") {
        Some(prefixed(autoencoder_source(rest), "sref_autoencoder."))
    } else {
        path.strip_prefix("control.").map(control_source)
    }
}

impl<B: Backend> StyleCodesModel<B> {
    /// Every parameter in the official key names, as f32 (packed q/k/v
    /// projections packed again), in the order of the module.
    pub fn official_tensors(&self) -> Result<Vec<F32Tensor>> {
        let mut tensors: Vec<F32Tensor> = Vec::new();
        // Packed tensors: key → index in `tensors`.
        let mut packed: BTreeMap<String, usize> = BTreeMap::new();
        for (path, shape, data) in param_values(self) {
            let values = data
                .convert::<f32>()
                .into_vec::<f32>()
                .map_err(|e| Error::ReadBack { what: "a StyleCodes parameter", message: format!("`{path}`: {e:?}") })?;
            match official_source(&path) {
                Some(Source::Tensor(key)) => tensors.push((key, shape, values)),
                Some(Source::Rows { key, index, parts }) => {
                    let at = *packed.entry(key.clone()).or_insert_with(|| {
                        let mut full = shape.clone();
                        full[0] *= parts;
                        tensors.push((key, full, vec![0.0; values.len() * parts]));
                        tensors.len() - 1
                    });
                    tensors[at].2[index * values.len()..(index + 1) * values.len()].copy_from_slice(&values);
                }
                None => unreachable!("every StyleCodesModel parameter is under `autoencoder.` or `control.`"),
            }
        }
        Ok(tensors)
    }

    /// Writes the model as a `stylecodes.safetensors` in the official key
    /// layout (F32), atomically. The positional table is left out: the
    /// loader computes it.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_f32(path, &self.official_tensors()?, None)
    }
}

/// The autoencoder's output feeds the control branch's mid block.
pub(crate) fn check_fits_base(autoencoder: &AutoencoderConfig, base: &UNetConfig) -> Result<()> {
    let mid_channels = base.block_out_channels.last().copied().unwrap_or(0);
    if autoencoder.output_dim != mid_channels {
        return Err(Error::Incompatible(format!(
            "the style autoencoder makes {}-channel features but the base UNet's mid block has {mid_channels} channels",
            autoencoder.output_dim
        )));
    }
    Ok(())
}

/// The one `.safetensors` file in a `stylecodes/` folder.
pub fn stylecodes_weights(dir: &Path) -> Result<PathBuf> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    match files.len() {
        1 => Ok(files.remove(0)),
        0 => Err(Error::Config {
            path: dir.to_path_buf(),
            message: "no .safetensors file: run `cargo xtask import-weights` to import the StyleCodes checkpoint"
                .into(),
        }),
        _ => Err(Error::Config {
            path: dir.to_path_buf(),
            message: format!("several .safetensors files, expected one: {files:?}"),
        }),
    }
}

// ---------------------------------------------------------------------------
// the autoencoder: `sref_autoencoder.*`

fn autoencoder_source(path: &str) -> Source {
    let path = path
        .strip_prefix("decoder_layers.")
        .map_or(path.to_string(), |rest| format!("transformer_decoder.layers.{rest}"));
    for attention in [".self_attn.", ".multihead_attn."] {
        if let Some((module, rest)) = path.split_once(attention) {
            return packed_projection(&format!("{module}{}", attention.trim_end_matches('.')), rest);
        }
    }
    if let Some(rest) = path.strip_prefix("attention_layers.") {
        if let Some((index, rest)) = rest.split_once('.') {
            return packed_projection(&format!("attention_layers.{index}"), rest);
        }
    }
    Source::Tensor(norm_names(&path))
}

/// The positional table is a buffer we compute; a stored one is checked.
const POSITIONAL_TABLE: &str = "pos_encoder.pe";

fn autoencoder_map(prefix: &str) -> KeyMap<'static> {
    KeyMap {
        module: "the style autoencoder",
        prefix: format!("{prefix}sref_autoencoder."),
        source: &autoencoder_source,
        in_scope: &|_| true,
        ignored: &|key| key == POSITIONAL_TABLE,
    }
}

impl<B: Backend> AttentionAutoencoder<B> {
    /// The official release's `sref_autoencoder.*` tensors, optionally under
    /// `controlnet.` (the key of the state dict in the `.bin`). The control
    /// module's tensors in the same file are ignored here.
    pub fn load(config: &AutoencoderConfig, file: &TensorFile, dtype: DType, device: &B::Device) -> Result<Self> {
        let prefix = PREFIXES
            .into_iter()
            .find(|p| file.keys().any(|k| k.starts_with(&format!("{p}sref_autoencoder."))))
            .ok_or_else(|| Error::NoModule {
                path: file.path().to_path_buf(),
                module: "the style autoencoder".into(),
                prefixes: PREFIXES.map(|p| format!("{p}sref_autoencoder.")).to_vec(),
            })?;
        let map = autoencoder_map(prefix);
        let model = load_module(config.init(device), file, &map, dtype)?;
        let pe_key = format!("{}{POSITIONAL_TABLE}", map.prefix);
        if file.contains(&pe_key) {
            check_positional_table(file, &pe_key, config.d_model)?;
        }
        Ok(model)
    }
}

/// The stored sinusoidal buffer must be the table we compute.
fn check_positional_table(file: &TensorFile, key: &str, d_model: usize) -> Result<()> {
    let shape = file.shape(key).unwrap_or_default().to_vec();
    let bad = |message: String| Error::BadBuffer { path: file.path().to_path_buf(), key: key.into(), message };
    let rows = match shape.as_slice() {
        [1, rows, d] | [rows, d] if *d == d_model => *rows,
        _ => return Err(bad(format!("shape {shape:?}, expected [1, positions, {d_model}]"))),
    };
    let stored = file.read_f32(key)?;
    // `f32::max` below skips NaN, which would pass as a match.
    if let Some(index) = stored.iter().position(|v| !v.is_finite()) {
        return Err(bad(format!("value {index} is {}, not the sinusoidal table's", stored[index])));
    }
    let computed = sinusoidal_values(rows, d_model);
    // sin/cos of large angles differ by a few ulps between libms.
    let worst = stored.iter().zip(&computed).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    if worst > 1e-3 {
        return Err(bad(format!("differs from the sinusoidal table by up to {worst}")));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// the control branch: `control_model.*` and `middle_block_out.*`

fn control_source(path: &str) -> Source {
    // The mixers wrap their Linear: `….linear.weight` is `….weight`.
    let path = path.replace(".linear.", ".");
    if path.starts_with("middle_block_out.") {
        Source::Tensor(norm_names(&path))
    } else if path.starts_with("up_zero_convs_out.") {
        Source::Tensor(format!("control_model.{}", norm_names(&path)))
    } else {
        Source::Tensor(format!("control_model.{}", unet_key(&path)))
    }
}

fn control_map(prefix: &str) -> KeyMap<'static> {
    KeyMap {
        module: "the style control module",
        prefix: prefix.into(),
        source: &control_source,
        in_scope: &|key| key.starts_with("control_model.") || key.starts_with("middle_block_out."),
        ignored: &|_| false,
    }
}

impl<B: Backend> StyleControl<B> {
    /// The official `StyleCodesModel`'s control branch and mixing layers:
    /// `control_model.mid_block.*`, `control_model.up_blocks.*`,
    /// `control_model.up_zero_convs_out.N.*` and `middle_block_out.*`,
    /// optionally all under `controlnet.`. Strict over `control_model.*` and
    /// `middle_block_out.*`; the autoencoder's tensors are ignored here.
    pub fn load(config: &StyleControlConfig, file: &TensorFile, dtype: DType, device: &B::Device) -> Result<Self> {
        let module = "the style control module (`middle_block_out.weight`)";
        let prefix = find_prefix(file, &PREFIXES, "middle_block_out.weight", module)?;
        load_module(config.init(device), file, &control_map(prefix), dtype)
    }
}

// ---------------------------------------------------------------------------
// expected tensors, for the import

impl AutoencoderConfig {
    /// The tensors [`AttentionAutoencoder::load`] reads (without the
    /// positional table, which it recomputes), under `sref_autoencoder.`.
    pub fn expected_tensors(&self) -> Vec<ExpectedTensor> {
        expected_tensors(&self.init::<burn::backend::Flex>(&Default::default()), &autoencoder_map(""))
    }
}

impl StyleControlConfig {
    /// The tensors [`StyleControl::load`] reads, in the official names.
    pub fn expected_tensors(&self) -> Result<Vec<ExpectedTensor>, String> {
        self.unet.validate()?;
        Ok(expected_tensors(&self.init::<burn::backend::Flex>(&Default::default()), &control_map("")))
    }
}
