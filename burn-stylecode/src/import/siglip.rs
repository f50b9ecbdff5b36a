//! SigLIP: a HuggingFace folder (`google/siglip-base-patch16-224`); the
//! vision tower is verified and kept, the text tower listed as leftover.

use super::expected::siglip_vision_rows;
use super::source::Checkpoint;
use super::{
    already_done, config_error, execute, leftovers, match_rows, previous_manifest, read_json, skipped, spec_digest,
    target_dir, ImportError, ImportOptions, ImportReport, Layout, Plan, Planned, Sources,
};
use crate::siglip::SiglipVisionConfig;
use crate::weights::JsonConfig;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const MODEL: &str = "siglip";

/// Imports a SigLIP folder (config.json, model.safetensors or
/// pytorch_model.bin, preprocessor_config.json) into `out_root/siglip/`:
/// `model.safetensors` with the vision tower under `vision_model.`, the
/// configs copied.
pub fn siglip_from_dir(dir: &Path, out_root: &Path, options: &ImportOptions) -> Result<ImportReport, ImportError> {
    let config_path = dir.join("config.json");
    let (config_text, _) = read_json(&config_path)?;
    let rows = SiglipVisionConfig::from_json(&config_text)
        .and_then(|config| siglip_vision_rows(&config))
        .map_err(|e| config_error(&config_path, e))?;
    let weights = ["model.safetensors", "pytorch_model.bin"]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| config_error(dir, "no weights: expected model.safetensors or pytorch_model.bin"))?;
    let preprocessor = Some(dir.join("preprocessor_config.json")).filter(|p| p.is_file());
    let mut paths: Vec<(PathBuf, &str)> = vec![(weights.clone(), "checkpoint"), (config_path.clone(), "file")];
    if let Some(p) = &preprocessor {
        paths.push((p.clone(), "file"));
    }
    let target = target_dir(out_root, MODEL, &paths.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>())?;
    let previous = previous_manifest(&target);
    let sources = Sources::record(&paths, previous.as_ref(), options.origin.as_deref())?;
    let spec = spec_digest(&[&rows], &[&config_text]);
    const FROM: &str = "transformers";
    if already_done(&target, previous.as_ref(), MODEL, FROM, &spec, &sources, options) {
        return Ok(skipped(target, previous.expect("checked")));
    }

    let checkpoint = Checkpoint::open(&weights, &[])?;
    let mut used = BTreeSet::new();
    let tensors = match_rows(&rows, &checkpoint, 0, Layout::Upstream, "the SigLIP vision tower", &mut used)?;
    let leftover = leftovers(&checkpoint, &used);
    let mut records = sources.records;
    records[0].format = checkpoint.format().into();
    let mut files = vec![
        Planned::Tensors { rel: "model.safetensors".into(), tensors },
        Planned::Bytes { rel: "config.json".into(), data: config_text.into_bytes() },
    ];
    if let Some(p) = &preprocessor {
        let data = std::fs::read(p).map_err(|e| ImportError::io(p, e))?;
        files.push(Planned::Bytes { rel: "preprocessor_config.json".into(), data });
    }
    let plan = Plan {
        model: MODEL,
        converted_from: FROM,
        spec,
        checkpoints: vec![checkpoint],
        sources: records,
        files,
        leftover,
        unchecked: Vec::new(),
    };
    execute(plan, out_root, options)
}
