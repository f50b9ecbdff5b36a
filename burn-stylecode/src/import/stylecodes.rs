//! The official StyleCodes checkpoint: `stylecodes_sd15_v1.bin`, a PyTorch
//! zip pickle `{"controlnet": StyleCodesModel.state_dict()}`, written as
//! `stylecodes/stylecodes.safetensors` with the official key names.

use super::expected::{autoencoder_rows, control_rows};
use super::source::Checkpoint;
use super::{
    already_done, config_error, execute, leftovers, match_rows, previous_manifest, skipped, spec_digest, target_dir,
    ImportError, ImportOptions, ImportReport, Layout, Plan, Planned, Sources,
};
use crate::sd::unet_2d::UNetConfig;
use crate::style::autoencoder::AutoencoderConfig;
use crate::style::control::StyleControlConfig;
use crate::style::StylecodesConfig;
use std::collections::BTreeSet;
use std::path::Path;

const MODEL: &str = "stylecodes";
/// Top-level prefixes of the `StyleCodesModel` state dict.
const ROOTS: [&str; 3] = ["sref_autoencoder.", "control_model.", "middle_block_out."];

/// What a StyleCodes checkpoint must hold.
#[derive(Debug, Clone)]
pub struct StylecodesSpec {
    /// The version character of codes made with these weights.
    pub version: char,
    pub autoencoder: AutoencoderConfig,
    /// The control module's config. `None` checks the autoencoder only and
    /// carries the `control_model.*` / `middle_block_out.*` tensors over
    /// unchecked (listed in the manifest).
    pub control: Option<StyleControlConfig>,
}

impl StylecodesSpec {
    /// The official `stylecodes_sd15_v1` model: version `1`, the default
    /// autoencoder, the control module of SD1.5's UNet.
    pub fn official() -> Self {
        Self::with_control(&StylecodesConfig::default(), &UNetConfig::sd15())
    }

    /// A `stylecodes/config.json`'s model with its control module shaped
    /// after the base UNet `base`.
    pub fn with_control(config: &StylecodesConfig, base: &UNetConfig) -> Self {
        Self { version: config.version, autoencoder: config.autoencoder.clone(), control: Some(config.control(base)) }
    }

    /// An autoencoder-only check (e.g. a weights folder's `config.json`).
    pub fn autoencoder_only(version: char, autoencoder: AutoencoderConfig) -> Self {
        Self { version, autoencoder, control: None }
    }
}

/// Imports a StyleCodes checkpoint into `out_root/stylecodes/`: the
/// official `.bin` (state dict under `"controlnet"`, or at the top level),
/// or a `.safetensors` with the same keys (optionally under `controlnet.`).
/// The pickle is read without running any of its code.
pub fn stylecodes_from_bin(
    path: &Path,
    out_root: &Path,
    spec: &StylecodesSpec,
    options: &ImportOptions,
) -> Result<ImportReport, ImportError> {
    let mut rows = autoencoder_rows(&spec.autoencoder);
    if let Some(control) = &spec.control {
        let control = control_rows(control).map_err(|e| config_error(Path::new("<StyleCodes control config>"), e))?;
        rows.extend(control);
    }
    // A safetensors export may keep the `.bin`'s top-level key as a prefix.
    for row in &mut rows {
        row.aliases.push(format!("controlnet.{}", row.expected.key));
    }
    let config = serde_json::json!({ "version": spec.version.to_string(), "autoencoder": spec.autoencoder });
    let spec_text = format!("{config} control={}", spec.control.is_some());
    let spec_hash = spec_digest(&[&rows], &[&spec_text]);

    let paths = [(path.to_path_buf(), "checkpoint")];
    let target = target_dir(out_root, MODEL, &[path.to_path_buf()])?;
    let previous = previous_manifest(&target);
    let sources = Sources::record(&paths, previous.as_ref(), options.origin.as_deref())?;
    let from = if is_safetensors(path) { "stylecodes-safetensors" } else { "stylecodes-pickle" };
    if already_done(&target, previous.as_ref(), MODEL, from, &spec_hash, &sources, options) {
        return Ok(skipped(target, previous.expect("checked")));
    }

    let checkpoint = Checkpoint::open(path, &["controlnet"])?;
    let mut used = BTreeSet::new();
    let mut tensors = match_rows(&rows, &checkpoint, 0, Layout::Upstream, "the StyleCodes model", &mut used)?;
    let mut unchecked = Vec::new();
    if spec.control.is_none() {
        // The rest of the official state dict, copied as it is.
        for (key, meta) in checkpoint.tensors() {
            let name = key.strip_prefix("controlnet.").unwrap_or(key);
            if used.contains(key) || !meta.dtype.is_float() || !ROOTS[1..].iter().any(|r| name.starts_with(r)) {
                continue;
            }
            used.insert(key.clone());
            unchecked.push(name.to_string());
            tensors.push(super::write::OutTensor {
                key: name.to_string(),
                shape: meta.shape.clone(),
                source: (0, key.clone()),
            });
        }
    }
    let leftover = leftovers(&checkpoint, &used);
    let mut records = sources.records;
    records[0].format = checkpoint.format().into();
    let files = vec![
        Planned::Tensors { rel: "stylecodes.safetensors".into(), tensors },
        Planned::Json { rel: "config.json".into(), value: config },
    ];
    let plan = Plan {
        model: MODEL,
        converted_from: from,
        spec: spec_hash,
        checkpoints: vec![checkpoint],
        sources: records,
        files,
        leftover,
        unchecked,
    };
    execute(plan, out_root, options)
}

fn is_safetensors(path: &Path) -> bool {
    let mut head = [0u8; 9];
    std::fs::File::open(path).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head)).is_ok() && head[8] == b'{'
}
