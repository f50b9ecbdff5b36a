//! The tensors each model loads, derived from its config: names in the
//! upstream layout (diffusers, transformers, the official StyleCodes release)
//! with their shapes, and where each sits in the original LDM single files.
//!
//! These tables are what the import verifies a checkpoint against before it
//! writes anything. They are built by walking a model's structure the way
//! diffusers/transformers build it, so they can be cross-checked against the
//! real modules (tests/tests/import.rs compares them with digests taken from
//! the Python classes, and with the tiny diffusers fixtures).

use crate::autoencoder::AutoencoderConfig;
use crate::siglip::SiglipVisionConfig;
use serde::Deserialize;

/// One tensor a model loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedTensor {
    /// Name in the upstream layout, e.g. `down_blocks.0.resnets.0.conv1.weight`.
    pub key: String,
    pub shape: Vec<usize>,
    /// Axis whose length is free (the positional table's row count).
    pub free_axis: Option<usize>,
    /// Whether the checkpoint must hold it (buffers the loader recomputes need not).
    pub required: bool,
}

impl ExpectedTensor {
    fn new(key: String, shape: Vec<usize>) -> Self {
        Self { key, shape, free_axis: None, required: true }
    }

    /// Whether a found shape is acceptable.
    pub fn accepts(&self, shape: &[usize]) -> bool {
        shape.len() == self.shape.len()
            && shape.iter().zip(&self.shape).enumerate().all(|(axis, (found, want))| found == want || self.free_axis == Some(axis))
    }
}

/// One row of a conversion table: an expected tensor and the names it may
/// have in a foreign checkpoint.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub expected: ExpectedTensor,
    /// Names in the original LDM single-file layout, tried in order.
    pub ldm: Vec<String>,
    /// Older names in the same (diffusers/transformers) layout, tried after `key`.
    pub aliases: Vec<String>,
    /// The source may hold it as a 1x1 convolution (`[o, i, 1, 1]` or
    /// `[o, i, 1]`) where the model has a linear `[o, i]`: same bytes.
    pub squeezable: bool,
}

/// A table being built: diffusers and LDM names side by side.
#[derive(Default)]
struct Table {
    rows: Vec<Row>,
}

/// A module's name in both layouts.
#[derive(Clone)]
struct At {
    key: String,
    ldm: String,
}

impl At {
    fn new(key: impl Into<String>, ldm: impl Into<String>) -> Self {
        Self { key: key.into(), ldm: ldm.into() }
    }

    fn join(&self, key: &str, ldm: &str) -> Self {
        Self { key: join(&self.key, key), ldm: join(&self.ldm, ldm) }
    }

    /// A child with the same name in both layouts.
    fn child(&self, name: &str) -> Self {
        self.join(name, name)
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

impl Table {
    fn tensor(&mut self, at: &At, leaf: &str, shape: Vec<usize>) {
        self.rows.push(Row {
            expected: ExpectedTensor::new(join(&at.key, leaf), shape),
            ldm: vec![join(&at.ldm, leaf)],
            aliases: Vec::new(),
            squeezable: false,
        });
    }

    fn linear(&mut self, at: &At, out: usize, inp: usize, bias: bool) {
        self.tensor(at, "weight", vec![out, inp]);
        if bias {
            self.tensor(at, "bias", vec![out]);
        }
    }

    fn conv(&mut self, at: &At, out: usize, inp: usize, kernel: usize) {
        self.tensor(at, "weight", vec![out, inp, kernel, kernel]);
        self.tensor(at, "bias", vec![out]);
    }

    /// LayerNorm / GroupNorm affine parameters.
    fn norm(&mut self, at: &At, channels: usize) {
        self.tensor(at, "weight", vec![channels]);
        self.tensor(at, "bias", vec![channels]);
    }

    /// PyTorch `nn.MultiheadAttention` (packed q/k/v).
    fn packed_attention(&mut self, at: &At, dim: usize) {
        self.tensor(at, "in_proj_weight", vec![3 * dim, dim]);
        self.tensor(at, "in_proj_bias", vec![3 * dim]);
        self.linear(&at.child("out_proj"), dim, dim, true);
    }
}

// ---------------------------------------------------------------------------
// configs

/// An integer, or one per block (diffusers accepts both for several fields).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    All(usize),
    Each(Vec<usize>),
}

impl PerBlock {
    fn get(&self, block: usize) -> Option<usize> {
        match self {
            PerBlock::All(n) => Some(*n),
            PerBlock::Each(values) => values.get(block).copied(),
        }
    }
}

/// The fields of diffusers' `UNet2DConditionModel` config (unet/config.json)
/// that decide which tensors exist and their shapes.
#[derive(Debug, Clone, Deserialize)]
pub struct UnetConfig {
    #[serde(default = "four")]
    pub in_channels: usize,
    #[serde(default = "four")]
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: PerBlock,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    #[serde(default)]
    pub mid_block_type: Option<String>,
    pub cross_attention_dim: PerBlock,
    #[serde(default = "one_per_block")]
    pub transformer_layers_per_block: PerBlock,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    #[serde(default = "three")]
    pub conv_in_kernel: usize,
    #[serde(default = "three")]
    pub conv_out_kernel: usize,
    /// Features SD1.5 does not use; any of them set is refused.
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    #[serde(default)]
    pub encoder_hid_dim: Option<usize>,
    #[serde(default)]
    pub only_cross_attention: serde_json::Value,
    #[serde(default)]
    pub dual_cross_attention: bool,
    #[serde(default)]
    pub resnet_time_scale_shift: Option<String>,
    #[serde(default)]
    pub attention_type: Option<String>,
}

fn four() -> usize {
    4
}
fn three() -> usize {
    3
}
fn one_per_block() -> PerBlock {
    PerBlock::All(1)
}

/// diffusers' `AutoencoderKL` config (vae/config.json).
#[derive(Debug, Clone, Deserialize)]
pub struct VaeConfig {
    #[serde(default = "three")]
    pub in_channels: usize,
    #[serde(default = "three")]
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    #[serde(default = "four")]
    pub latent_channels: usize,
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
}

fn yes() -> bool {
    true
}

/// transformers' `CLIPTextConfig` (text_encoder/config.json).
#[derive(Debug, Clone, Deserialize)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub max_position_embeddings: usize,
}

/// Why a config cannot be turned into a table.
#[derive(Debug, Clone, PartialEq)]
pub struct Unsupported(pub String);

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn unsupported<T>(message: impl Into<String>) -> Result<T, Unsupported> {
    Err(Unsupported(message.into()))
}

// ---------------------------------------------------------------------------
// UNet2DConditionModel

/// `ResnetBlock2D` with a time embedding, as in UNet blocks.
fn unet_resnet(t: &mut Table, at: &At, cin: usize, cout: usize, temb: usize) {
    t.norm(&at.join("norm1", "in_layers.0"), cin);
    t.conv(&at.join("conv1", "in_layers.2"), cout, cin, 3);
    t.linear(&at.join("time_emb_proj", "emb_layers.1"), cout, temb, true);
    t.norm(&at.join("norm2", "out_layers.0"), cout);
    t.conv(&at.join("conv2", "out_layers.3"), cout, cout, 3);
    if cin != cout {
        t.conv(&at.join("conv_shortcut", "skip_connection"), cout, cin, 1);
    }
}

/// `Transformer2DModel` (same inner names in both layouts).
fn transformer_2d(t: &mut Table, at: &At, dim: usize, cross: usize, layers: usize, linear_projection: bool) {
    t.norm(&at.child("norm"), dim);
    let projection = |t: &mut Table, name: &str| {
        if linear_projection {
            t.linear(&at.child(name), dim, dim, true);
        } else {
            t.conv(&at.child(name), dim, dim, 1);
        }
    };
    projection(t, "proj_in");
    for layer in 0..layers {
        let block = at.child(&format!("transformer_blocks.{layer}"));
        for (index, (attention, context)) in [("attn1", dim), ("attn2", cross)].into_iter().enumerate() {
            t.norm(&block.child(&format!("norm{}", index + 1)), dim);
            let attn = block.child(attention);
            t.linear(&attn.child("to_q"), dim, dim, false);
            t.linear(&attn.child("to_k"), dim, context, false);
            t.linear(&attn.child("to_v"), dim, context, false);
            t.linear(&attn.child("to_out.0"), dim, dim, true);
        }
        t.norm(&block.child("norm3"), dim);
        // GEGLU: one projection to twice the 4x inner width, then back.
        t.linear(&block.child("ff.net.0.proj"), 8 * dim, dim, true);
        t.linear(&block.child("ff.net.2"), dim, 4 * dim, true);
    }
    projection(t, "proj_out");
}

fn check_unet(config: &UnetConfig) -> Result<(), Unsupported> {
    let blocks = config.block_out_channels.len();
    if blocks == 0 || config.down_block_types.len() != blocks || config.up_block_types.len() != blocks {
        return unsupported("down_block_types, up_block_types and block_out_channels must have one entry per block");
    }
    let refused = [
        ("class_embed_type", config.class_embed_type.is_some()),
        ("addition_embed_type", config.addition_embed_type.is_some()),
        ("num_class_embeds", config.num_class_embeds.is_some()),
        ("time_cond_proj_dim", config.time_cond_proj_dim.is_some()),
        ("encoder_hid_dim", config.encoder_hid_dim.is_some()),
        ("dual_cross_attention", config.dual_cross_attention),
        ("only_cross_attention", !matches!(config.only_cross_attention, serde_json::Value::Null | serde_json::Value::Bool(false))),
        ("resnet_time_scale_shift", config.resnet_time_scale_shift.as_deref().is_some_and(|s| s != "default")),
        ("attention_type", config.attention_type.as_deref().is_some_and(|s| s != "default")),
    ];
    if let Some((name, _)) = refused.iter().find(|(_, set)| *set) {
        return unsupported(format!("`{name}` is set: not an SD1.5-style UNet"));
    }
    if let Some(mid) = config.mid_block_type.as_deref().filter(|m| *m != "UNetMidBlock2DCrossAttn") {
        return unsupported(format!("mid_block_type `{mid}` (SD1.5 has UNetMidBlock2DCrossAttn)"));
    }
    for (block, kind) in config.down_block_types.iter().enumerate() {
        if !matches!(kind.as_str(), "CrossAttnDownBlock2D" | "DownBlock2D") {
            return unsupported(format!("down block {block} is `{kind}` (SD1.5 uses CrossAttnDownBlock2D / DownBlock2D)"));
        }
    }
    for (block, kind) in config.up_block_types.iter().enumerate() {
        if !matches!(kind.as_str(), "CrossAttnUpBlock2D" | "UpBlock2D") {
            return unsupported(format!("up block {block} is `{kind}` (SD1.5 uses CrossAttnUpBlock2D / UpBlock2D)"));
        }
    }
    for field in [&config.layers_per_block, &config.cross_attention_dim, &config.transformer_layers_per_block] {
        if (0..blocks).any(|b| field.get(b).is_none()) {
            return unsupported("a per-block list is shorter than block_out_channels");
        }
    }
    Ok(())
}

/// Every tensor of a `UNet2DConditionModel` with SD1.5's block types.
pub(crate) fn unet_rows(config: &UnetConfig) -> Result<Vec<Row>, Unsupported> {
    check_unet(config)?;
    let channels = &config.block_out_channels;
    let blocks = channels.len();
    let per = |field: &PerBlock, b: usize| field.get(b).unwrap_or(1);
    let c0 = channels[0];
    let temb = config.time_embedding_dim.unwrap_or(4 * c0);
    let linear_projection = config.use_linear_projection;
    let mut t = Table::default();

    t.conv(&At::new("conv_in", "input_blocks.0.0"), c0, config.in_channels, config.conv_in_kernel);
    t.linear(&At::new("time_embedding.linear_1", "time_embed.0"), temb, c0, true);
    t.linear(&At::new("time_embedding.linear_2", "time_embed.2"), temb, temb, true);

    // Down blocks: LDM numbers their sub-blocks `input_blocks.N` from 1,
    // resnet in `.0`, attention in `.1`, the downsampler alone in `.0.op`.
    let mut input_block = 1;
    let mut cin = c0;
    for (b, &cout) in channels.iter().enumerate() {
        let layers = per(&config.layers_per_block, b);
        let attention = config.down_block_types[b].starts_with("CrossAttn");
        let block = At::new(format!("down_blocks.{b}"), "");
        for j in 0..layers {
            let ldm = format!("input_blocks.{input_block}");
            let resnet_in = if j == 0 { cin } else { cout };
            unet_resnet(&mut t, &At::new(format!("{}.resnets.{j}", block.key), format!("{ldm}.0")), resnet_in, cout, temb);
            if attention {
                let at = At::new(format!("{}.attentions.{j}", block.key), format!("{ldm}.1"));
                let cross = per(&config.cross_attention_dim, b);
                transformer_2d(&mut t, &at, cout, cross, per(&config.transformer_layers_per_block, b), linear_projection);
            }
            input_block += 1;
        }
        if b + 1 < blocks {
            let at = At::new(format!("{}.downsamplers.0.conv", block.key), format!("input_blocks.{input_block}.0.op"));
            t.conv(&at, cout, cout, 3);
            input_block += 1;
        }
        cin = cout;
    }

    // Mid block: resnet, attention, resnet as `middle_block.0..2`.
    let mid = channels[blocks - 1];
    let cross_mid = per(&config.cross_attention_dim, blocks - 1);
    let layers_mid = per(&config.transformer_layers_per_block, blocks - 1);
    unet_resnet(&mut t, &At::new("mid_block.resnets.0", "middle_block.0"), mid, mid, temb);
    transformer_2d(&mut t, &At::new("mid_block.attentions.0", "middle_block.1"), mid, cross_mid, layers_mid, linear_projection);
    unet_resnet(&mut t, &At::new("mid_block.resnets.1", "middle_block.2"), mid, mid, temb);

    // Up blocks, over the reversed channel list: each resnet takes the
    // previous output concatenated with a skip; the upsampler sits after
    // the attention (`.2.conv`) or, without attention, at `.1.conv`.
    let reversed: Vec<usize> = channels.iter().rev().copied().collect();
    let mut output_block = 0;
    let mut prev_out = reversed[0];
    for (i, &cout) in reversed.iter().enumerate() {
        let source_block = blocks - 1 - i;
        let layers = per(&config.layers_per_block, source_block) + 1;
        let cross = per(&config.cross_attention_dim, source_block);
        let tlayers = per(&config.transformer_layers_per_block, source_block);
        let skip_last = reversed[(i + 1).min(blocks - 1)];
        let attention = config.up_block_types[i].starts_with("CrossAttn");
        for j in 0..layers {
            let ldm = format!("output_blocks.{output_block}");
            let skip = if j == layers - 1 { skip_last } else { cout };
            let resnet_in = if j == 0 { prev_out } else { cout };
            unet_resnet(&mut t, &At::new(format!("up_blocks.{i}.resnets.{j}"), format!("{ldm}.0")), resnet_in + skip, cout, temb);
            if attention {
                let at = At::new(format!("up_blocks.{i}.attentions.{j}"), format!("{ldm}.1"));
                transformer_2d(&mut t, &at, cout, cross, tlayers, linear_projection);
            }
            if j == layers - 1 && i + 1 < blocks {
                let slot = if attention { 2 } else { 1 };
                t.conv(&At::new(format!("up_blocks.{i}.upsamplers.0.conv"), format!("{ldm}.{slot}.conv")), cout, cout, 3);
            }
            output_block += 1;
        }
        prev_out = cout;
    }

    t.norm(&At::new("conv_norm_out", "out.0"), c0);
    t.conv(&At::new("conv_out", "out.2"), config.out_channels, c0, config.conv_out_kernel);
    Ok(t.with_ldm_prefixes(&["model.diffusion_model."]))
}

impl Table {
    /// Puts every LDM name under each of `prefixes` (candidates, in order).
    fn with_ldm_prefixes(self, prefixes: &[&str]) -> Vec<Row> {
        self.rows
            .into_iter()
            .map(|mut row| {
                let names = std::mem::take(&mut row.ldm);
                row.ldm = names.iter().flat_map(|n| prefixes.iter().map(move |p| format!("{p}{n}"))).collect();
                row
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------
// AutoencoderKL

/// `ResnetBlock2D` without a time embedding (VAE); LDM calls the shortcut `nin_shortcut`.
fn vae_resnet(t: &mut Table, at: &At, cin: usize, cout: usize) {
    t.norm(&at.child("norm1"), cin);
    t.conv(&at.child("conv1"), cout, cin, 3);
    t.norm(&at.child("norm2"), cout);
    t.conv(&at.child("conv2"), cout, cout, 3);
    if cin != cout {
        t.conv(&at.join("conv_shortcut", "nin_shortcut"), cout, cin, 1);
    }
}

/// The VAE mid block: resnet, single-head self-attention, resnet. LDM's
/// attention uses 1x1 convolutions (q, k, v, proj_out); diffusers before
/// 0.14 called them query/key/value/proj_attn.
fn vae_mid_block(t: &mut Table, at: &At, channels: usize, attention: bool) {
    vae_resnet(t, &at.join("resnets.0", "block_1"), channels, channels);
    if attention {
        let attn = at.join("attentions.0", "attn_1");
        t.norm(&attn.join("group_norm", "norm"), channels);
        for (name, ldm, legacy) in [("to_q", "q", "query"), ("to_k", "k", "key"), ("to_v", "v", "value"), ("to_out.0", "proj_out", "proj_attn")] {
            let first = t.rows.len();
            t.linear(&attn.join(name, ldm), channels, channels, true);
            for row in &mut t.rows[first..] {
                let leaf = row.expected.key.rsplit('.').next().unwrap_or_default().to_string();
                row.aliases.push(format!("{}.{legacy}.{leaf}", attn.key));
                row.squeezable = leaf == "weight";
            }
        }
    }
    vae_resnet(t, &at.join("resnets.1", "block_2"), channels, channels);
}

/// Every tensor of an `AutoencoderKL` with SD's block types.
pub(crate) fn vae_rows(config: &VaeConfig) -> Result<Vec<Row>, Unsupported> {
    let channels = &config.block_out_channels;
    let blocks = channels.len();
    if blocks == 0 || config.down_block_types.len() != blocks || config.up_block_types.len() != blocks {
        return unsupported("down_block_types, up_block_types and block_out_channels must have one entry per block");
    }
    if let Some(kind) = config.down_block_types.iter().find(|k| *k != "DownEncoderBlock2D") {
        return unsupported(format!("down block type `{kind}` (SD's VAE uses DownEncoderBlock2D)"));
    }
    if let Some(kind) = config.up_block_types.iter().find(|k| *k != "UpDecoderBlock2D") {
        return unsupported(format!("up block type `{kind}` (SD's VAE uses UpDecoderBlock2D)"));
    }
    let latent = config.latent_channels;
    let last = channels[blocks - 1];
    let mut t = Table::default();

    let encoder = At::new("encoder", "encoder");
    t.conv(&encoder.child("conv_in"), channels[0], config.in_channels, 3);
    let mut cin = channels[0];
    for (b, &cout) in channels.iter().enumerate() {
        let block = encoder.join(&format!("down_blocks.{b}"), &format!("down.{b}"));
        for j in 0..config.layers_per_block {
            vae_resnet(&mut t, &block.join(&format!("resnets.{j}"), &format!("block.{j}")), if j == 0 { cin } else { cout }, cout);
        }
        if b + 1 < blocks {
            t.conv(&block.join("downsamplers.0.conv", "downsample.conv"), cout, cout, 3);
        }
        cin = cout;
    }
    vae_mid_block(&mut t, &encoder.join("mid_block", "mid"), last, config.mid_block_add_attention);
    t.norm(&encoder.join("conv_norm_out", "norm_out"), last);
    t.conv(&encoder.child("conv_out"), 2 * latent, last, 3);

    if config.use_quant_conv {
        t.conv(&At::new("quant_conv", "quant_conv"), 2 * latent, 2 * latent, 1);
    }
    if config.use_post_quant_conv {
        t.conv(&At::new("post_quant_conv", "post_quant_conv"), latent, latent, 1);
    }

    // The decoder runs the blocks in reverse; LDM keeps them numbered by
    // resolution, so diffusers' up block i is LDM's `up.{n-1-i}`.
    let decoder = At::new("decoder", "decoder");
    t.conv(&decoder.child("conv_in"), last, latent, 3);
    vae_mid_block(&mut t, &decoder.join("mid_block", "mid"), last, config.mid_block_add_attention);
    let mut prev = last;
    for (i, &cout) in channels.iter().rev().enumerate() {
        let block = decoder.join(&format!("up_blocks.{i}"), &format!("up.{}", blocks - 1 - i));
        for j in 0..=config.layers_per_block {
            vae_resnet(&mut t, &block.join(&format!("resnets.{j}"), &format!("block.{j}")), if j == 0 { prev } else { cout }, cout);
        }
        if i + 1 < blocks {
            t.conv(&block.join("upsamplers.0.conv", "upsample.conv"), cout, cout, 3);
        }
        prev = cout;
    }
    t.norm(&decoder.join("conv_norm_out", "norm_out"), channels[0]);
    t.conv(&decoder.child("conv_out"), config.out_channels, channels[0], 3);
    Ok(t.with_ldm_prefixes(&["first_stage_model.", "vae."]))
}

// ---------------------------------------------------------------------------
// CLIPTextModel

/// Every tensor of transformers' `CLIPTextModel`, under `text_model.` as the
/// hub's SD1.5 folders (transformers 4) have it; transformers 5 saves it
/// unprefixed, accepted as an alias.
pub(crate) fn clip_text_rows(config: &ClipTextConfig) -> Vec<Row> {
    let hidden = config.hidden_size;
    let mut t = Table::default();
    let model = At::new("text_model", "text_model");
    let embeddings = model.child("embeddings");
    t.tensor(&embeddings.child("token_embedding"), "weight", vec![config.vocab_size, hidden]);
    t.tensor(&embeddings.child("position_embedding"), "weight", vec![config.max_position_embeddings, hidden]);
    for layer in 0..config.num_hidden_layers {
        let at = model.child(&format!("encoder.layers.{layer}"));
        for name in ["k_proj", "v_proj", "q_proj", "out_proj"] {
            t.linear(&at.child(&format!("self_attn.{name}")), hidden, hidden, true);
        }
        t.norm(&at.child("layer_norm1"), hidden);
        t.linear(&at.child("mlp.fc1"), config.intermediate_size, hidden, true);
        t.linear(&at.child("mlp.fc2"), hidden, config.intermediate_size, true);
        t.norm(&at.child("layer_norm2"), hidden);
    }
    t.norm(&model.child("final_layer_norm"), hidden);
    // LDM: `cond_stage_model.transformer.text_model.*`, or, in checkpoints
    // made with transformers < 4.17, without the `text_model.` level.
    for row in &mut t.rows {
        let bare = row.expected.key.trim_start_matches("text_model.").to_string();
        row.ldm = vec![format!("cond_stage_model.transformer.{}", row.expected.key), format!("cond_stage_model.transformer.{bare}")];
        row.aliases = vec![bare];
    }
    t.rows
}

// ---------------------------------------------------------------------------
// SigLIP vision tower

/// The tensors `load_siglip` reads, under `vision_model.` (a transformers 5
/// `SiglipVisionModel` saves them unprefixed: accepted as aliases).
pub(crate) fn siglip_vision_rows(config: &SiglipVisionConfig) -> Vec<Row> {
    let hidden = config.hidden_size;
    let inner = config.intermediate_size;
    let mut t = Table::default();
    let model = At::new("vision_model", "vision_model");
    let embeddings = model.child("embeddings");
    let patch = config.patch_size;
    t.conv(&embeddings.child("patch_embedding"), hidden, config.num_channels, patch);
    t.tensor(&embeddings.child("position_embedding"), "weight", vec![config.num_patches(), hidden]);
    for layer in 0..config.num_hidden_layers {
        let at = model.child(&format!("encoder.layers.{layer}"));
        for name in ["k_proj", "v_proj", "q_proj", "out_proj"] {
            t.linear(&at.child(&format!("self_attn.{name}")), hidden, hidden, true);
        }
        t.norm(&at.child("layer_norm1"), hidden);
        t.linear(&at.child("mlp.fc1"), inner, hidden, true);
        t.linear(&at.child("mlp.fc2"), hidden, inner, true);
        t.norm(&at.child("layer_norm2"), hidden);
    }
    t.norm(&model.child("post_layernorm"), hidden);
    if config.vision_use_head {
        let head = model.child("head");
        t.tensor(&head, "probe", vec![1, 1, hidden]);
        t.packed_attention(&head.child("attention"), hidden);
        t.norm(&head.child("layernorm"), hidden);
        t.linear(&head.child("mlp.fc1"), inner, hidden, true);
        t.linear(&head.child("mlp.fc2"), hidden, inner, true);
    }
    for row in &mut t.rows {
        row.aliases = vec![row.expected.key.trim_start_matches("vision_model.").to_string()];
        row.ldm.clear();
    }
    t.rows
}

// ---------------------------------------------------------------------------
// StyleCodes (the official `StyleCodesModel` state dict)

/// The attention autoencoder under `sref_autoencoder.`. Its positional table
/// `pos_encoder.pe` [1, rows, d_model] is a buffer the loader recomputes:
/// taken if present, any row count.
pub(crate) fn autoencoder_rows(config: &AutoencoderConfig) -> Vec<Row> {
    let d = config.d_model;
    let mut t = Table::default();
    let root = At::new("sref_autoencoder", "");
    t.linear(&root.child("input_proj"), d, config.input_dim, true);
    t.tensor(&root, "latent_init", vec![1, d]);
    for layer in 0..config.num_encoder_layers {
        t.packed_attention(&root.child(&format!("attention_layers.{layer}")), d);
    }
    t.linear(&root.child("latent_proj"), config.latent_dim, d, true);
    t.norm(&root.child("latent_norm"), config.latent_dim);
    t.linear(&root.child("latent_to_d_model"), d, config.latent_dim, true);
    for layer in 0..config.num_decoder_layers {
        let at = root.child(&format!("transformer_decoder.layers.{layer}"));
        t.packed_attention(&at.child("self_attn"), d);
        t.packed_attention(&at.child("multihead_attn"), d);
        t.linear(&at.child("linear1"), config.dim_feedforward, d, true);
        t.linear(&at.child("linear2"), d, config.dim_feedforward, true);
        for norm in ["norm1", "norm2", "norm3"] {
            t.norm(&at.child(norm), d);
        }
    }
    t.linear(&root.child("output_proj"), config.output_dim, d, true);
    t.tensor(&root, "tgt_init", vec![1, d]);
    t.tensor(&root.child("pos_encoder"), "pe", vec![1, 5000, d]);
    let pe = t.rows.last_mut().expect("just pushed");
    pe.expected.free_axis = Some(1);
    pe.expected.required = false;
    for row in &mut t.rows {
        row.ldm.clear();
    }
    t.rows
}

/// The style control module: the control UNet's mid and up blocks under
/// `control_model.`, one identity-initialised mixing Linear(2C, 2C) per up
/// resnet (`control_model.up_zero_convs_out.N`) and one after the mid block
/// (`middle_block_out`).
pub(crate) fn control_rows(config: &UnetConfig) -> Result<Vec<Row>, Unsupported> {
    let mut rows: Vec<Row> = unet_rows(config)?
        .into_iter()
        .filter(|row| row.expected.key.starts_with("mid_block.") || row.expected.key.starts_with("up_blocks."))
        .map(|mut row| {
            row.expected.key = format!("control_model.{}", row.expected.key);
            row.ldm.clear();
            row
        })
        .collect();
    let mut t = Table::default();
    let up_resnet_channels = config.block_out_channels.iter().rev().enumerate().flat_map(|(i, &c)| {
        let block = config.block_out_channels.len() - 1 - i;
        std::iter::repeat_n(c, config.layers_per_block.get(block).unwrap_or(1) + 1)
    });
    for (i, c) in up_resnet_channels.enumerate() {
        t.linear(&At::new(format!("control_model.up_zero_convs_out.{i}"), ""), 2 * c, 2 * c, true);
    }
    let mid = *config.block_out_channels.last().unwrap_or(&0);
    t.linear(&At::new("middle_block_out", ""), 2 * mid, 2 * mid, true);
    for mut row in t.rows {
        row.ldm.clear();
        rows.push(row);
    }
    Ok(rows)
}

/// The official control UNet: SD1.5's blocks, linear projections in the
/// transformers, cross-attention width 768 (reference §4).
pub fn official_control_config() -> UnetConfig {
    serde_json::from_value(serde_json::json!({
        "block_out_channels": [320, 640, 1280, 1280],
        "layers_per_block": 2,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "cross_attention_dim": 768,
        "use_linear_projection": true,
    }))
    .expect("a valid UNet config")
}

// ---------------------------------------------------------------------------
// public views

fn expected(rows: Vec<Row>) -> Vec<ExpectedTensor> {
    rows.into_iter().map(|row| row.expected).collect()
}

/// The tensors of a diffusers `UNet2DConditionModel` (SD1.5 block types).
pub fn unet(config: &UnetConfig) -> Result<Vec<ExpectedTensor>, Unsupported> {
    unet_rows(config).map(expected)
}

/// The tensors of a diffusers `AutoencoderKL`.
pub fn vae(config: &VaeConfig) -> Result<Vec<ExpectedTensor>, Unsupported> {
    vae_rows(config).map(expected)
}

/// The tensors of a transformers `CLIPTextModel`, under `text_model.`.
pub fn clip_text(config: &ClipTextConfig) -> Vec<ExpectedTensor> {
    expected(clip_text_rows(config))
}

/// The SigLIP vision tower's tensors, under `vision_model.`.
pub fn siglip_vision(config: &SiglipVisionConfig) -> Vec<ExpectedTensor> {
    expected(siglip_vision_rows(config))
}

/// The official `StyleCodesModel` state dict: autoencoder and, if given, the
/// control module.
pub fn stylecodes(autoencoder: &AutoencoderConfig, control: Option<&UnetConfig>) -> Result<Vec<ExpectedTensor>, Unsupported> {
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

/// Every tensor of an SD1.5 single file with the original LDM names:
/// (LDM key, diffusers key, shape as LDM stores it), in table order.
pub fn ldm_single_file(unet: &UnetConfig, vae: &VaeConfig, clip: &ClipTextConfig) -> Result<Vec<(String, String, Vec<usize>)>, Unsupported> {
    let mut rows = unet_rows(unet)?;
    rows.extend(vae_rows(vae)?);
    rows.extend(clip_text_rows(clip));
    Ok(rows
        .into_iter()
        .map(|row| {
            let mut shape = row.expected.shape.clone();
            if row.squeezable {
                shape.extend([1, 1]);
            }
            (row.ldm[0].clone(), row.expected.key, shape)
        })
        .collect())
}

/// Sorted "ldm_key diffusers_key [ldm shape]" lines of a whole SD1.5 single
/// file (the first LDM name of each row).
pub fn ldm_mapping_lines(unet: &UnetConfig, vae: &VaeConfig, clip: &ClipTextConfig) -> Result<Vec<String>, Unsupported> {
    let mut lines: Vec<String> =
        ldm_single_file(unet, vae, clip)?.into_iter().map(|(ldm, key, shape)| format!("{ldm} {key} {shape:?}")).collect();
    lines.sort();
    Ok(lines)
}
