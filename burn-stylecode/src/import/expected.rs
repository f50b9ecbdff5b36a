//! The tables an import verifies a checkpoint against before it writes
//! anything: every tensor a model loads, in the upstream layout (diffusers,
//! transformers, the official StyleCodes release) with its shape, and the
//! names it may have in a foreign checkpoint.
//!
//! The upstream names and shapes are the loaders' own: each network's
//! `expected_tensors()` reads them off the real module through its real key
//! map (`sd/unet_keys.rs`, `sd/vae_keys.rs`, `sd/clip_keys.rs`,
//! `siglip/keys.rs`, `style/checkpoint.rs`). Only what the loaders do not
//! know is written here: where each tensor sits in the original LDM single
//! files ([`unet_ldm_name`], [`vae_ldm_name`]), and the older names the
//! import also accepts. tests/tests/import.rs checks the tables against
//! digests taken from the Python classes, and against the tiny fixtures.

use crate::sd::clip::ClipTextConfig;
use crate::sd::unet_2d::{UNetConfig, UpBlockType};
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

// ---------------------------------------------------------------------------
// LDM names

/// `N.rest` → (N, rest).
fn index(path: &str) -> Option<(usize, &str)> {
    let (n, rest) = path.split_once('.')?;
    Some((n.parse().ok()?, rest))
}

/// `path` with its first matching `(from, to)` prefix replaced, if any
/// matches; `path` itself otherwise.
fn renamed(path: &str, names: &[(&str, &str)]) -> String {
    names
        .iter()
        .find_map(|(from, to)| path.strip_prefix(from).map(|rest| format!("{to}{rest}")))
        .unwrap_or_else(|| path.to_string())
}

/// A UNet resnet's parameter (`norm1.weight`, …) in LDM's `ResBlock`.
fn unet_resnet_ldm(path: &str) -> String {
    renamed(
        path,
        &[
            ("norm1.", "in_layers.0."),
            ("conv1.", "in_layers.2."),
            ("time_emb_proj.", "emb_layers.1."),
            ("norm2.", "out_layers.0."),
            ("conv2.", "out_layers.3."),
            ("conv_shortcut.", "skip_connection."),
        ],
    )
}

/// Where a diffusers `UNet2DConditionModel` tensor sits in an LDM single
/// file (without the `model.diffusion_model.` prefix). LDM numbers the
/// down path's sub-blocks `input_blocks.N` from 1 (resnet in `.0`, attention
/// in `.1`, a downsampler alone in `.0.op`) and the up path's
/// `output_blocks.N` from 0 (the upsampler after the attention, `.2.conv`,
/// or after the resnet, `.1.conv`); transformer blocks keep their names.
pub fn unet_ldm_name(config: &UNetConfig, key: &str) -> Option<String> {
    let n = config.block_out_channels.len();
    let fixed = [
        ("conv_in.", "input_blocks.0.0."),
        ("time_embedding.linear_1.", "time_embed.0."),
        ("time_embedding.linear_2.", "time_embed.2."),
        ("conv_norm_out.", "out.0."),
        ("conv_out.", "out.2."),
    ];
    if let Some((from, to)) = fixed.iter().find(|(from, _)| key.starts_with(from)) {
        return Some(format!("{to}{}", &key[from.len()..]));
    }
    let sub_block = |ldm: &str, block: usize, rest: &str| -> Option<String> {
        if let Some((j, path)) = rest.strip_prefix("resnets.").and_then(index) {
            Some(format!("{ldm}.{}.0.{}", block + j, unet_resnet_ldm(path)))
        } else {
            let (j, path) = rest.strip_prefix("attentions.").and_then(index)?;
            Some(format!("{ldm}.{}.1.{path}", block + j))
        }
    };
    if let Some((b, rest)) = key.strip_prefix("down_blocks.").and_then(index) {
        let layers = |b: usize| config.layers_per_block.get(b);
        let first = 1 + (0..b).map(|b| layers(b) + usize::from(b + 1 < n)).sum::<usize>();
        if let Some(path) = rest.strip_prefix("downsamplers.0.conv.") {
            return Some(format!("input_blocks.{}.0.op.{path}", first + layers(b)));
        }
        return sub_block("input_blocks", first, rest);
    }
    if let Some(rest) = key.strip_prefix("mid_block.") {
        let path = renamed(rest, &[("resnets.0.", "0."), ("attentions.0.", "1."), ("resnets.1.", "2.")]);
        let (slot, path) = index(&path).filter(|_| path != rest)?;
        let path = if slot == 1 { path.to_string() } else { unet_resnet_ldm(path) };
        return Some(format!("middle_block.{slot}.{path}"));
    }
    let (i, rest) = key.strip_prefix("up_blocks.").and_then(index)?;
    let layers = |i: usize| config.layers_per_block.get(n - 1 - i) + 1;
    let first = (0..i).map(layers).sum::<usize>();
    if let Some(path) = rest.strip_prefix("upsamplers.0.conv.") {
        let slot = if config.up_block_types[i] == UpBlockType::CrossAttnUpBlock2D { 2 } else { 1 };
        return Some(format!("output_blocks.{}.{slot}.conv.{path}", first + layers(i) - 1));
    }
    sub_block("output_blocks", first, rest)
}

/// The VAE mid-block attention's parameters: (diffusers, LDM, diffusers < 0.14).
const VAE_ATTENTION_NAMES: [(&str, &str, &str); 5] = [
    ("group_norm.", "norm.", ""),
    ("to_q.", "q.", "query."),
    ("to_k.", "k.", "key."),
    ("to_v.", "v.", "value."),
    ("to_out.0.", "proj_out.", "proj_attn."),
];

/// Where a diffusers `AutoencoderKL` tensor sits in an LDM single file
/// (without the `first_stage_model.` / `vae.` prefix). The decoder runs the
/// blocks in reverse; LDM keeps them numbered by resolution, so diffusers'
/// up block i is LDM's `up.{n-1-i}`. The mid-block attention uses 1x1
/// convolutions (`q`, `k`, `v`, `proj_out`) where diffusers has linears.
pub fn vae_ldm_name(config: &VaeConfig, key: &str) -> Option<String> {
    let n = config.block_out_channels.len();
    let resnet = |path: &str| renamed(path, &[("conv_shortcut.", "nin_shortcut.")]);
    let (part, rest) = key.split_once('.')?;
    if !matches!(part, "encoder" | "decoder") {
        return matches!(part, "quant_conv" | "post_quant_conv").then(|| key.to_string());
    }
    let path = if let Some(rest) = rest.strip_prefix("mid_block.") {
        if let Some(path) = rest.strip_prefix("attentions.0.") {
            let (from, to, _) = VAE_ATTENTION_NAMES.iter().find(|(from, _, _)| path.starts_with(from))?;
            format!("mid.attn_1.{to}{}", &path[from.len()..])
        } else {
            let path = renamed(rest, &[("resnets.0.", "block_1."), ("resnets.1.", "block_2.")]);
            (path != rest).then_some(())?;
            format!("mid.{}", resnet(&path))
        }
    } else if let Some((b, rest)) = rest.strip_prefix("down_blocks.").and_then(index) {
        let path = match rest.strip_prefix("resnets.").and_then(index) {
            Some((j, path)) => format!("block.{j}.{}", resnet(path)),
            None => format!("downsample.conv.{}", rest.strip_prefix("downsamplers.0.conv.")?),
        };
        format!("down.{b}.{path}")
    } else if let Some((i, rest)) = rest.strip_prefix("up_blocks.").and_then(index) {
        let path = match rest.strip_prefix("resnets.").and_then(index) {
            Some((j, path)) => format!("block.{j}.{}", resnet(path)),
            None => format!("upsample.conv.{}", rest.strip_prefix("upsamplers.0.conv.")?),
        };
        format!("up.{}.{path}", n.checked_sub(i + 1)?)
    } else {
        renamed(rest, &[("conv_norm_out.", "norm_out.")])
    };
    Some(format!("{part}.{path}"))
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
