use super::{load_module, norm_names, packed_projection, KeyMap, Source};
use crate::autoencoder::{sinusoidal_values, AttentionAutoencoder, AutoencoderConfig};
use crate::error::{Error, Result};
use crate::weights::safetensors::TensorFile;
use burn::prelude::*;
use burn::tensor::DType;

/// The official release's `sref_autoencoder.*` tensors, optionally under
/// `controlnet.` (the key of the state dict in the `.bin`). The control
/// module's tensors in the same file are ignored here.
pub fn load_autoencoder<B: Backend>(
    config: &AutoencoderConfig,
    file: &TensorFile,
    dtype: DType,
    device: &B::Device,
) -> Result<AttentionAutoencoder<B>> {
    let prefixes = ["sref_autoencoder.", "controlnet.sref_autoencoder."];
    let prefix = prefixes
        .into_iter()
        .find(|p| file.keys().any(|k| k.starts_with(p)))
        .ok_or_else(|| Error::NoModule {
            path: file.path().to_path_buf(),
            module: "the style autoencoder".into(),
            prefixes: prefixes.map(String::from).to_vec(),
        })?;
    let source = |path: &str| {
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
    };
    let pe_key = format!("{prefix}pos_encoder.pe");
    let ignored = |key: &str| key == "pos_encoder.pe";
    let map = KeyMap { module: "the style autoencoder", prefix: prefix.into(), source: &source, in_scope: &|_| true, ignored: &ignored };
    let model = load_module(config.init(device), file, &map, dtype)?;
    if file.contains(&pe_key) {
        check_positional_table(file, &pe_key, config.d_model)?;
    }
    Ok(model)
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
    let computed = sinusoidal_values(rows, d_model);
    // sin/cos of large angles differ by a few ulps between libms.
    let worst = stored.iter().zip(&computed).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    if worst > 1e-3 {
        return Err(bad(format!("differs from the sinusoidal table by up to {worst}")));
    }
    Ok(())
}
