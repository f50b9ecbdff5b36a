//! The tables an import verifies a checkpoint against before it writes
//! anything: every tensor a model loads, in the upstream layout (diffusers,
//! transformers, the official StyleCodes release) with its shape, and the
//! names it may have in a foreign checkpoint.
//!
//! The upstream names and shapes are the loaders' own: each network's
//! `expected_tensors()` reads them off the real module through its real key
//! map (`sd/unet_keys.rs`, `sd/vae_keys.rs`, `sd/clip_keys.rs`,
//! `siglip/keys.rs`, `style/checkpoint.rs`). Only what the loaders do not
//! know is written here: the older names the import also accepts. Where
//! each tensor sits in the original LDM single files ([`unet_ldm_name`],
//! [`vae_ldm_name`]) is in `sd/ldm_names.rs`, shared with the LoRA key table. tests/tests/import.rs checks the tables against
//! digests taken from the Python classes, and against the tiny fixtures.

use crate::sd::clip::ClipTextConfig;
use crate::sd::ldm_names::VAE_ATTENTION_NAMES;
pub use crate::sd::ldm_names::{unet_ldm_name, vae_ldm_name};
use crate::sd::unet_2d::UNetConfig;
use crate::sd::vae::VaeConfig;
use crate::siglip::SiglipVisionConfig;
use crate::style::autoencoder::AutoencoderConfig;
use crate::style::control::StyleControlConfig;

pub use crate::weights::ExpectedTensor;

/// One row of a conversion table: an expected tensor and the names it may
/// have in a foreign checkpoint.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    /// Name in the upstream layout, e.g. `down_blocks.0.resnets.0.conv1.weight`, and shape.
    pub expected: ExpectedTensor,
    /// Axis whose length is free (the positional table's row count).
    pub free_axis: Option<usize>,
    /// Whether the checkpoint must hold it (buffers the loader recomputes need not).
    pub required: bool,
    /// Names in the original LDM single-file layout, tried in order.
    pub ldm: Vec<String>,
    /// Older names in the same (diffusers/transformers) layout, tried after `key`.
    pub aliases: Vec<String>,
    /// The source may hold it as a 1x1 convolution (`[o, i, 1, 1]` or
    /// `[o, i, 1]`) where the model has a linear `[o, i]`: same bytes.
    pub squeezable: bool,
}

impl Row {
    fn new(expected: ExpectedTensor) -> Self {
        Self { expected, free_axis: None, required: true, ldm: Vec::new(), aliases: Vec::new(), squeezable: false }
    }

    /// Whether a found shape is acceptable.
    pub fn accepts(&self, shape: &[usize]) -> bool {
        let want = &self.expected.shape;
        shape.len() == want.len()
            && shape
                .iter()
                .zip(want)
                .enumerate()
                .all(|(axis, (found, want))| found == want || self.free_axis == Some(axis))
    }
}

fn rows(tensors: Vec<ExpectedTensor>) -> Vec<Row> {
    tensors.into_iter().map(Row::new).collect()
}

/// Every LDM name of a table under each of `prefixes` (candidates, in order).
fn with_ldm(mut rows: Vec<Row>, prefixes: &[&str], name: impl Fn(&str) -> Option<String>) -> Result<Vec<Row>, String> {
    for row in &mut rows {
        let key = &row.expected.key;
        let ldm = name(key).ok_or_else(|| format!("no LDM single-file name is known for `{key}`"))?;
        row.ldm = prefixes.iter().map(|p| format!("{p}{ldm}")).collect();
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------
// the tables

/// Every tensor of a diffusers `UNet2DConditionModel` (SD1.5 block types).
pub(crate) fn unet_rows(config: &UNetConfig) -> Result<Vec<Row>, String> {
    with_ldm(rows(config.expected_tensors()?), &["model.diffusion_model."], |key| unet_ldm_name(config, key))
}

/// Every tensor of a diffusers `AutoencoderKL`. The mid-block attention's
/// projections are also accepted under the names of diffusers < 0.14
/// (`query/key/value/proj_attn`), and as LDM's 1x1 convolutions.
pub(crate) fn vae_rows(config: &VaeConfig) -> Result<Vec<Row>, String> {
    let mut rows =
        with_ldm(rows(config.expected_tensors()?), &["first_stage_model.", "vae."], |key| vae_ldm_name(config, key))?;
    for row in &mut rows {
        let key = &row.expected.key;
        let Some((stem, path)) = key.split_once(".mid_block.attentions.0.") else { continue };
        let Some((from, _, legacy)) =
            VAE_ATTENTION_NAMES.iter().find(|(from, _, legacy)| !legacy.is_empty() && path.starts_with(from))
        else {
            continue;
        };
        let leaf = &path[from.len()..];
        row.aliases.push(format!("{stem}.mid_block.attentions.0.{legacy}{leaf}"));
        row.squeezable = leaf == "weight";
    }
    Ok(rows)
}

/// Every tensor of transformers' `CLIPTextModel`, under `text_model.` as the
/// hub's SD1.5 folders (transformers 4) have it; transformers 5 saves it
/// unprefixed, accepted as an alias. LDM files hold it under
/// `cond_stage_model.transformer.text_model.`, or, made with transformers
/// < 4.17, without the `text_model.` level.
pub(crate) fn clip_text_rows(config: &ClipTextConfig) -> Result<Vec<Row>, String> {
    let mut rows = rows(config.expected_tensors()?);
    for row in &mut rows {
        let bare = row.expected.key.trim_start_matches("text_model.").to_string();
        row.ldm = vec![
            format!("cond_stage_model.transformer.{}", row.expected.key),
            format!("cond_stage_model.transformer.{bare}"),
        ];
        row.aliases = vec![bare];
    }
    Ok(rows)
}

/// The tensors the SigLIP loader reads, under `vision_model.` (a
/// transformers 5 `SiglipVisionModel` saves them unprefixed: accepted as aliases).
pub(crate) fn siglip_vision_rows(config: &SiglipVisionConfig) -> Result<Vec<Row>, String> {
    let mut rows = rows(config.expected_tensors()?);
    for row in &mut rows {
        row.aliases = vec![row.expected.key.trim_start_matches("vision_model.").to_string()];
    }
    Ok(rows)
}

/// The key of the autoencoder's positional table, a buffer the loader
/// recomputes (and checks when present).
const POSITIONAL_TABLE: &str = "sref_autoencoder.pos_encoder.pe";

/// The attention autoencoder under `sref_autoencoder.`, and its positional
/// table `pos_encoder.pe` [1, rows, d_model]: taken if present, any row count.
pub(crate) fn autoencoder_rows(config: &AutoencoderConfig) -> Vec<Row> {
    let mut rows = rows(config.expected_tensors());
    let pe = ExpectedTensor { key: POSITIONAL_TABLE.into(), shape: vec![1, 5000, config.d_model] };
    rows.push(Row { free_axis: Some(1), required: false, ..Row::new(pe) });
    rows
}

/// The style control module: the control UNet's mid and up blocks under
/// `control_model.`, one mixing Linear(2C, 2C) per up resnet
/// (`control_model.up_zero_convs_out.N`) and one after the mid block
/// (`middle_block_out`).
pub(crate) fn control_rows(config: &StyleControlConfig) -> Result<Vec<Row>, String> {
    Ok(rows(config.expected_tensors()?))
}

// ---------------------------------------------------------------------------
// public views

fn expected(rows: Vec<Row>) -> Vec<ExpectedTensor> {
    rows.into_iter().map(|row| row.expected).collect()
}

/// The official `StyleCodesModel` state dict the import checks: the
/// autoencoder (with its optional positional table) and, if given, the
/// control module.
pub fn stylecodes(
    autoencoder: &AutoencoderConfig,
    control: Option<&StyleControlConfig>,
) -> Result<Vec<ExpectedTensor>, String> {
    let mut rows = autoencoder_rows(autoencoder);
    if let Some(control) = control {
        rows.extend(control_rows(control)?);
    }
    Ok(expected(rows))
}

/// A table as sorted "key [shape]" lines, the form of the fixtures' digests.
pub fn lines(tensors: &[ExpectedTensor]) -> Vec<String> {
    let mut lines: Vec<String> = tensors.iter().map(|t| format!("{} {:?}", t.key, t.shape)).collect();
    lines.sort();
    lines
}

/// One tensor of an LDM single file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdmTensor {
    /// Its (first) name in the LDM file.
    pub ldm: String,
    /// Its name in the diffusers/transformers layout.
    pub key: String,
    /// Its shape as LDM stores it (the VAE attention's linears as 1x1 convolutions).
    pub shape: Vec<usize>,
}

/// Every tensor of an SD1.5 single file with the original LDM names, in table order.
pub fn ldm_single_file(unet: &UNetConfig, vae: &VaeConfig, clip: &ClipTextConfig) -> Result<Vec<LdmTensor>, String> {
    let mut rows = unet_rows(unet)?;
    rows.extend(vae_rows(vae)?);
    rows.extend(clip_text_rows(clip)?);
    Ok(rows
        .into_iter()
        .map(|row| {
            let mut shape = row.expected.shape;
            if row.squeezable {
                shape.extend([1, 1]);
            }
            LdmTensor { ldm: row.ldm[0].clone(), key: row.expected.key, shape }
        })
        .collect())
}

/// Sorted "ldm_key diffusers_key [ldm shape]" lines of a whole SD1.5 single
/// file (the first LDM name of each row).
pub fn ldm_mapping_lines(unet: &UNetConfig, vae: &VaeConfig, clip: &ClipTextConfig) -> Result<Vec<String>, String> {
    let mut lines: Vec<String> =
        ldm_single_file(unet, vae, clip)?.into_iter().map(|t| format!("{} {} {:?}", t.ldm, t.key, t.shape)).collect();
    lines.sort();
    Ok(lines)
}
