//! Stable Diffusion 1.5: single files with the original LDM names, or
//! diffusers folders, written as a canonical diffusers folder.

use super::expected::{clip_text_rows, unet_rows, vae_rows, Row};
use super::source::Checkpoint;
use super::{
    already_done, config_error, execute, leftovers, match_rows, previous_manifest, skipped, spec_digest, target_dir,
    ImportError, ImportOptions, ImportReport, Layout, Plan, Planned, Sources, WeightDtype,
};
use crate::weights::JsonConfig;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const MODEL: &str = "sd15";

/// The configs written beside converted SD1.5 weights, and the tokenizer
/// files to copy (a single-file checkpoint carries neither).
#[derive(Debug, Clone)]
pub struct Sd15Configs {
    /// unet/config.json (diffusers `UNet2DConditionModel`).
    pub unet: String,
    /// vae/config.json (diffusers `AutoencoderKL`).
    pub vae: String,
    /// text_encoder/config.json (transformers `CLIPTextModel`).
    pub text_encoder: String,
    /// scheduler/scheduler_config.json.
    pub scheduler: String,
    pub model_index: String,
    /// A folder with the CLIP tokenizer files (vocab.json, merges.txt, …).
    pub tokenizer: Option<PathBuf>,
    /// The folder the configs were read from; `None` for the built-in ones.
    pub from: Option<PathBuf>,
}

impl Sd15Configs {
    /// The configs of `stable-diffusion-v1-5/stable-diffusion-v1-5`. The
    /// tokenizer files are not built in: set them with [`Self::with_tokenizer`].
    pub fn standard() -> Self {
        Self {
            unet: include_str!("sd15_standard/unet_config.json").into(),
            vae: include_str!("sd15_standard/vae_config.json").into(),
            text_encoder: include_str!("sd15_standard/text_encoder_config.json").into(),
            scheduler: include_str!("sd15_standard/scheduler_config.json").into(),
            model_index: include_str!("sd15_standard/model_index.json").into(),
            tokenizer: None,
            from: None,
        }
    }

    /// The configs (and tokenizer) of a diffusers folder.
    pub fn from_diffusers_dir(dir: &Path) -> Result<Self, ImportError> {
        let read = |rel: &str| std::fs::read_to_string(dir.join(rel)).map_err(|e| ImportError::io(dir.join(rel), e));
        let model_index = match read("model_index.json") {
            Ok(text) => text,
            Err(_) => include_str!("sd15_standard/model_index.json").into(),
        };
        Ok(Self {
            unet: read("unet/config.json")?,
            vae: read("vae/config.json")?,
            text_encoder: read("text_encoder/config.json")?,
            scheduler: read("scheduler/scheduler_config.json")?,
            model_index,
            tokenizer: Some(dir.join("tokenizer")),
            from: Some(dir.to_path_buf()),
        })
    }

    pub fn with_tokenizer(mut self, dir: impl Into<PathBuf>) -> Self {
        self.tokenizer = Some(dir.into());
        self
    }

    fn source_name(&self, rel: &str) -> PathBuf {
        match &self.from {
            Some(dir) => dir.join(rel),
            None => PathBuf::from(format!("<built-in SD1.5 {rel}>")),
        }
    }

    /// The three tables, from the configs (read and validated as the loaders do).
    fn tables(&self) -> Result<Tables, ImportError> {
        fn table<C: JsonConfig>(
            configs: &Sd15Configs,
            rel: &str,
            text: &str,
            rows: impl FnOnce(&C) -> Result<Vec<Row>, String>,
        ) -> Result<Vec<Row>, ImportError> {
            C::from_json(text).and_then(|config| rows(&config)).map_err(|e| config_error(&configs.source_name(rel), e))
        }
        let unet = table(self, "unet/config.json", &self.unet, unet_rows)?;
        let vae = table(self, "vae/config.json", &self.vae, vae_rows)?;
        let clip = table(self, "text_encoder/config.json", &self.text_encoder, clip_text_rows)?;
        for (rel, text) in
            [("scheduler/scheduler_config.json", &self.scheduler), ("model_index.json", &self.model_index)]
        {
            serde_json::from_str::<serde_json::Value>(text)
                .map_err(|e| config_error(&self.source_name(rel), format!("invalid JSON: {e}")))?;
        }
        Ok(Tables { unet, vae, clip })
    }

    /// The tokenizer files to copy; `checkpoint` is named if there are none.
    fn tokenizer_files(&self, checkpoint: &Path) -> Result<Vec<PathBuf>, ImportError> {
        let dir = self.tokenizer.as_ref().ok_or_else(|| ImportError::NoTokenizer { path: checkpoint.to_path_buf() })?;
        tokenizer_files(dir)
    }
}

struct Tables {
    unet: Vec<Row>,
    vae: Vec<Row>,
    clip: Vec<Row>,
}

/// The regular files of a tokenizer folder; vocab.json and merges.txt must be there.
fn tokenizer_files(dir: &Path) -> Result<Vec<PathBuf>, ImportError> {
    for needed in ["vocab.json", "merges.txt"] {
        if !dir.join(needed).is_file() {
            return Err(config_error(dir, format!("the tokenizer folder has no {needed}")));
        }
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| ImportError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default()
}

/// The planned files common to both forms: configs, tokenizer, scheduler.
fn config_files(configs: &Sd15Configs, tokenizer: &[PathBuf]) -> Result<Vec<Planned>, ImportError> {
    let mut files = vec![
        Planned::Bytes { rel: "unet/config.json".into(), data: configs.unet.clone().into_bytes() },
        Planned::Bytes { rel: "vae/config.json".into(), data: configs.vae.clone().into_bytes() },
        Planned::Bytes { rel: "text_encoder/config.json".into(), data: configs.text_encoder.clone().into_bytes() },
        Planned::Bytes { rel: "scheduler/scheduler_config.json".into(), data: configs.scheduler.clone().into_bytes() },
        Planned::Bytes { rel: "model_index.json".into(), data: configs.model_index.clone().into_bytes() },
    ];
    for path in tokenizer {
        let data = std::fs::read(path).map_err(|e| ImportError::io(path, e))?;
        files.push(Planned::Bytes { rel: format!("tokenizer/{}", file_name(path)), data });
    }
    Ok(files)
}

/// Converts an SD1.5 checkpoint with the original LDM names
/// (`model.diffusion_model.*`, `first_stage_model.*`,
/// `cond_stage_model.transformer.*`; a `.safetensors`, or a `.ckpt` pickle
/// with a `state_dict`) into `out_root/sd15/` in the diffusers layout, with
/// the given configs. EMA copies (`model_ema.*`) and other tensors no model
/// uses are listed as leftovers.
pub fn sd15_from_single_file(
    path: &Path,
    out_root: &Path,
    configs: &Sd15Configs,
    options: &ImportOptions,
) -> Result<ImportReport, ImportError> {
    let tables = configs.tables()?;
    let tokenizer = configs.tokenizer_files(path)?;
    let mut paths: Vec<(PathBuf, &str)> = vec![(path.to_path_buf(), "checkpoint")];
    if let Some(dir) = &configs.from {
        for rel in
            ["unet/config.json", "vae/config.json", "text_encoder/config.json", "scheduler/scheduler_config.json"]
        {
            paths.push((dir.join(rel), "file"));
        }
    }
    paths.extend(tokenizer.iter().map(|p| (p.clone(), "file")));
    let target = target_dir(out_root, MODEL, &paths.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>())?;
    let previous = previous_manifest(&target);
    let sources = Sources::record(&paths, previous.as_ref(), options.origin.as_deref())?;
    let extra = [
        configs.unet.as_str(),
        configs.vae.as_str(),
        configs.text_encoder.as_str(),
        configs.scheduler.as_str(),
        configs.model_index.as_str(),
    ];
    let spec = spec_digest(&[&tables.unet, &tables.vae, &tables.clip], &extra);
    const FROM: &str = "ldm-single-file";
    if already_done(&target, previous.as_ref(), MODEL, FROM, &spec, &sources, options) {
        return Ok(skipped(target, previous.expect("checked")));
    }

    let checkpoint = Checkpoint::open(path, &["state_dict"])?;
    let mut used = BTreeSet::new();
    let unet = match_rows(&tables.unet, &checkpoint, 0, Layout::Ldm, "the UNet", &mut used)?;
    let vae = match_rows(&tables.vae, &checkpoint, 0, Layout::Ldm, "the VAE", &mut used)?;
    let clip = match_rows(&tables.clip, &checkpoint, 0, Layout::Ldm, "the CLIP text encoder", &mut used)?;
    let leftover = leftovers(&checkpoint, &used);
    let mut records = sources.records;
    records[0].format = checkpoint.format().into();

    let mut files = config_files(configs, &tokenizer)?;
    files.push(Planned::Tensors { rel: "unet/diffusion_pytorch_model.safetensors".into(), tensors: unet });
    files.push(Planned::Tensors { rel: "vae/diffusion_pytorch_model.safetensors".into(), tensors: vae });
    files.push(Planned::Tensors { rel: "text_encoder/model.safetensors".into(), tensors: clip });
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

/// The weights file of a diffusers component: the first of the usual names
/// present (the `.fp16` variant first when importing as f16).
fn weights_file(
    dir: &Path,
    component: &str,
    stem: &str,
    bin_stem: &str,
    dtype: WeightDtype,
) -> Result<PathBuf, ImportError> {
    let full = [format!("{stem}.safetensors"), format!("{bin_stem}.bin")];
    let half = [format!("{stem}.fp16.safetensors"), format!("{bin_stem}.fp16.bin")];
    let order: Vec<&String> = match dtype {
        WeightDtype::F16 => half.iter().chain(&full).collect(),
        WeightDtype::F32 => full.iter().chain(&half).collect(),
    };
    let folder = dir.join(component);
    order.iter().map(|name| folder.join(name)).find(|p| p.is_file()).ok_or_else(|| {
        config_error(
            &folder,
            format!("no weights: expected one of {}", order.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")),
        )
    })
}

/// Imports a diffusers SD1.5 folder (unet/, vae/, text_encoder/, tokenizer/,
/// scheduler/) into `out_root/sd15/`: weights verified against its own
/// configs and rewritten (as `dtype`, canonical names: `text_model.*`, the
/// VAE's `to_q/to_k/to_v/to_out.0`), configs and tokenizer copied.
pub fn sd15_from_diffusers_dir(
    dir: &Path,
    out_root: &Path,
    options: &ImportOptions,
) -> Result<ImportReport, ImportError> {
    for rel in ["unet/config.json", "vae/config.json", "text_encoder/config.json", "scheduler/scheduler_config.json"] {
        if !dir.join(rel).is_file() {
            return Err(config_error(dir, format!("not a diffusers SD1.5 folder: no {rel}")));
        }
    }
    let configs = Sd15Configs::from_diffusers_dir(dir)?;
    let tables = configs.tables()?;
    let tokenizer = configs.tokenizer_files(dir)?;
    let weights = [
        weights_file(dir, "unet", "diffusion_pytorch_model", "diffusion_pytorch_model", options.dtype)?,
        weights_file(dir, "vae", "diffusion_pytorch_model", "diffusion_pytorch_model", options.dtype)?,
        weights_file(dir, "text_encoder", "model", "pytorch_model", options.dtype)?,
    ];
    let mut paths: Vec<(PathBuf, &str)> = weights.iter().map(|p| (p.clone(), "checkpoint")).collect();
    for rel in [
        "unet/config.json",
        "vae/config.json",
        "text_encoder/config.json",
        "scheduler/scheduler_config.json",
        "model_index.json",
    ] {
        if dir.join(rel).is_file() {
            paths.push((dir.join(rel), "file"));
        }
    }
    paths.extend(tokenizer.iter().map(|p| (p.clone(), "file")));
    let target = target_dir(out_root, MODEL, &paths.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>())?;
    let previous = previous_manifest(&target);
    let sources = Sources::record(&paths, previous.as_ref(), options.origin.as_deref())?;
    let extra = [
        configs.unet.as_str(),
        configs.vae.as_str(),
        configs.text_encoder.as_str(),
        configs.scheduler.as_str(),
        configs.model_index.as_str(),
    ];
    let spec = spec_digest(&[&tables.unet, &tables.vae, &tables.clip], &extra);
    const FROM: &str = "diffusers";
    if already_done(&target, previous.as_ref(), MODEL, FROM, &spec, &sources, options) {
        return Ok(skipped(target, previous.expect("checked")));
    }

    let mut checkpoints = Vec::with_capacity(3);
    let mut planned = Vec::with_capacity(3);
    let mut leftover = Vec::new();
    let parts = [
        (&tables.unet, "the UNet", "unet/diffusion_pytorch_model.safetensors"),
        (&tables.vae, "the VAE", "vae/diffusion_pytorch_model.safetensors"),
        (&tables.clip, "the CLIP text encoder", "text_encoder/model.safetensors"),
    ];
    let mut records = sources.records;
    for (index, ((rows, model, rel), path)) in parts.into_iter().zip(&weights).enumerate() {
        let checkpoint = Checkpoint::open(path, &[])?;
        let mut used = BTreeSet::new();
        let tensors = match_rows(rows, &checkpoint, index, Layout::Upstream, model, &mut used)?;
        let component = rel.split('/').next().unwrap_or_default();
        leftover.extend(leftovers(&checkpoint, &used).into_iter().map(|k| format!("{component}: {k}")));
        records[index].format = checkpoint.format().into();
        planned.push(Planned::Tensors { rel: rel.into(), tensors });
        checkpoints.push(checkpoint);
    }
    let mut files = config_files(&configs, &tokenizer)?;
    files.extend(planned);
    let plan = Plan {
        model: MODEL,
        converted_from: FROM,
        spec,
        checkpoints,
        sources: records,
        files,
        leftover,
        unchecked: Vec::new(),
    };
    execute(plan, out_root, options)
}
