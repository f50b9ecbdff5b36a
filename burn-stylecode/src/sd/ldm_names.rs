//! Where each diffusers tensor sits in the original LDM single files
//! (`model.diffusion_model.*`, `first_stage_model.*`): the one LDM ↔
//! diffusers name table, used by the single-file import and by the LoRA key
//! table (kohya LoRAs name UNet modules either way).

use super::unet_2d::{UNetConfig, UpBlockType};
use super::vae::VaeConfig;

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
pub(crate) const VAE_ATTENTION_NAMES: [(&str, &str, &str); 5] = [
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
