//! Training checkpoints: `RUN_DIR/checkpoints/step-NNNNNN/`, and the export
//! of one into a weights folder's `stylecodes/`.
//!
//! A checkpoint holds the trainable weights in the official key layout
//! (`stylecodes.safetensors`, F32) with their `config.json`, the AdamW state
//! by parameter path in f32 (`optimizer.safetensors`), and `state.json`: the
//! step, the data-order position and what the schedule needs. It is written
//! into `.tmp-step-NNNNNN/`, synced, and renamed, so a checkpoint either
//! exists whole or not at all; a kill or a full disk mid-write leaves the
//! previous one as it was. Everything else random in a run is keyed by
//! (seed, step), so the state needs no RNG state.

use super::data::OrderPosition;
use super::optim::OptimizerState;
use crate::error::{Error, Result};
use crate::style::code::OFFICIAL_VERSION;
use crate::style::{StyleCodesModel, StylecodesConfig};
use crate::weights::safetensors::write_atomic;
use crate::weights::JsonConfig;
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const CHECKPOINTS: &str = "checkpoints";
const WEIGHTS: &str = "stylecodes.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";
const STATE: &str = "state.json";
const CONFIG: &str = "config.json";
const TMP_PREFIX: &str = ".tmp-";

/// `state.json`: where the run stands after the checkpoint's step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Optimizer steps done.
    pub step: u64,
    /// The next batch's place in the data order.
    pub order: OrderPosition,
    /// Wall seconds the run had spent, for metrics across resumes.
    pub seconds: f64,
}

/// A complete checkpoint on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub step: u64,
    pub dir: PathBuf,
}

impl Checkpoint {
    pub fn weights(&self) -> PathBuf {
        self.dir.join(WEIGHTS)
    }

    pub fn optimizer(&self) -> PathBuf {
        self.dir.join(OPTIMIZER)
    }

    pub fn config(&self) -> Result<StylecodesConfig> {
        StylecodesConfig::from_file(&self.dir.join(CONFIG))
    }

    pub fn state(&self) -> Result<RunState> {
        let path = self.dir.join(STATE);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::Json { path, cause: e })
    }
}

fn step_name(step: u64) -> String {
    format!("step-{step:06}")
}

/// Writes a checkpoint of `step` under `run_dir`, then removes all but the
/// newest `keep` (at least this one).
pub fn save<B: Backend>(
    run_dir: &Path,
    model: &StyleCodesModel<B>,
    config: &StylecodesConfig,
    optimizer: &OptimizerState,
    state: &RunState,
    keep: usize,
) -> Result<Checkpoint> {
    let root = run_dir.join(CHECKPOINTS);
    std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
    let name = step_name(state.step);
    let temp = root.join(format!("{TMP_PREFIX}{name}"));
    if temp.exists() {
        std::fs::remove_dir_all(&temp).map_err(|e| Error::io(&temp, e))?;
    }
    std::fs::create_dir(&temp).map_err(|e| Error::io(&temp, e))?;
    let written = (|| {
        model.save(&temp.join(WEIGHTS))?;
        write_atomic(&temp.join(CONFIG), &json(config))?;
        fault_point("checkpoint", state.step);
        optimizer.save(&temp.join(OPTIMIZER))?;
        write_atomic(&temp.join(STATE), &json(state))
    })();
    if let Err(error) = written {
        // A failed write (a full disk) leaves no partial checkpoint behind.
        let _ = std::fs::remove_dir_all(&temp);
        return Err(error);
    }
    let dir = root.join(&name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    std::fs::rename(&temp, &dir).map_err(|e| Error::io(&dir, e))?;
    sync_dir(&root);
    let checkpoint = Checkpoint { step: state.step, dir };
    for old in list(run_dir)?.into_iter().rev().skip(keep.max(1)) {
        std::fs::remove_dir_all(&old.dir).map_err(|e| Error::io(&old.dir, e))?;
    }
    Ok(checkpoint)
}

/// The run's complete checkpoints, oldest first. Half-written ones
/// (`.tmp-…`, from a killed write) are removed.
pub fn list(run_dir: &Path) -> Result<Vec<Checkpoint>> {
    let root = run_dir.join(CHECKPOINTS);
    let Ok(entries) = std::fs::read_dir(&root) else { return Ok(Vec::new()) };
    let mut checkpoints = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(TMP_PREFIX) {
            std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        } else if let Some(step) = name.strip_prefix("step-").and_then(|n| n.parse::<u64>().ok()) {
            if path.join(STATE).is_file() {
                checkpoints.push(Checkpoint { step, dir: path });
            }
        }
    }
    checkpoints.sort_by_key(|c| c.step);
    Ok(checkpoints)
}

/// The newest checkpoint, or the one of `step`.
pub fn find(run_dir: &Path, step: Option<u64>) -> Result<Checkpoint> {
    let all = list(run_dir)?;
    let found = match step {
        None => all.last().cloned(),
        Some(step) => all.iter().find(|c| c.step == step).cloned(),
    };
    found.ok_or_else(|| {
        let have: Vec<String> = all.iter().map(|c| c.step.to_string()).collect();
        let root = run_dir.join(CHECKPOINTS);
        Error::InvalidRequest(match (step, have.is_empty()) {
            (_, true) => format!("{} holds no complete checkpoint", root.display()),
            (Some(step), false) => {
                format!("{} has no checkpoint of step {step} (it has steps {})", root.display(), have.join(", "))
            }
            (None, false) => unreachable!("a non-empty list has a last"),
        })
    })
}

/// Writes checkpoint `checkpoint`'s weights as `out/stylecodes/` (official
/// layout plus `config.json` of `version`), staged and renamed; refuses the
/// official version and an existing `out/stylecodes/`. Returns that folder.
pub fn export(checkpoint: &Checkpoint, version: char, out: &Path) -> Result<PathBuf> {
    if version == OFFICIAL_VERSION {
        return Err(Error::InvalidRequest(format!(
            "version `{OFFICIAL_VERSION}` is the official model's; trained weights need another (A-Z a-z 0-9 + /), \
             so that their codes are never mistaken for official ones"
        )));
    }
    let mut config = checkpoint.config()?;
    config.version = version;
    config.validate().map_err(|message| Error::InvalidRequest(format!("--version: {message}")))?;
    let target = out.join("stylecodes");
    if target.exists() {
        return Err(Error::InvalidRequest(format!(
            "{} exists already; remove it or choose another --out (nothing was written)",
            target.display()
        )));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let staged = out.join(".stylecodes.tmp");
    if staged.exists() {
        std::fs::remove_dir_all(&staged).map_err(|e| Error::io(&staged, e))?;
    }
    std::fs::create_dir(&staged).map_err(|e| Error::io(&staged, e))?;
    let written = (|| {
        let source = checkpoint.weights();
        let bytes = std::fs::read(&source).map_err(|e| Error::io(&source, e))?;
        write_atomic(&staged.join(WEIGHTS), &bytes)?;
        write_atomic(&staged.join(CONFIG), &json(&config))
    })();
    if let Err(error) = written {
        let _ = std::fs::remove_dir_all(&staged);
        return Err(error);
    }
    std::fs::rename(&staged, &target).map_err(|e| Error::io(&target, e))?;
    sync_dir(out);
    Ok(target)
}

/// Pretty JSON with a final newline, as the run's records are written.
pub(crate) fn json(value: &impl Serialize) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("checkpoint records serialise");
    bytes.push(b'\n');
    bytes
}

/// Makes a rename durable (best effort: not every platform syncs folders).
fn sync_dir(dir: &Path) {
    if let Ok(file) = std::fs::File::open(dir) {
        let _ = file.sync_all();
    }
}

/// Fault injection for the kill-and-resume tests: with
/// `STYLECODE_TRAIN_ABORT_AT=<point>:<step>` the process aborts there, as a
/// SIGKILL would stop it (`checkpoint`: halfway through writing the
/// checkpoint of that step; `step`: right after the step's metrics).
pub(crate) fn fault_point(point: &str, step: u64) {
    if std::env::var("STYLECODE_TRAIN_ABORT_AT").is_ok_and(|p| p == format!("{point}:{step}")) {
        std::process::abort();
    }
}
