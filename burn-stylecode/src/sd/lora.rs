//! LoRAs for the SD1.5 UNet and CLIP text encoder, merged into the weights
//! as they are loaded: W′ = W + Σ mᵢ·(αᵢ/rᵢ)·ΔWᵢ in f32, then cast to the
//! run's dtype (a [`TensorPatch`] on the weights file).
//!
//! Formats, all `.safetensors`:
//! - kohya / sd-scripts: `lora_unet_*`, `lora_te_*` with `.lora_down.weight`,
//!   `.lora_up.weight`, `.alpha` (linear and conv, LoCon), the UNet under its
//!   LDM names (`input_blocks_1_1_proj_in`) or its diffusers names
//!   (`down_blocks_0_attentions_0_proj_in`);
//! - PEFT / diffusers: `unet.*`, `text_encoder.*` with `.lora_A.weight` /
//!   `.lora_B.weight`, α from the `lora_adapter_metadata` header entry
//!   (`unet.lora_alpha`, `unet.alpha_pattern`), else α = r;
//! - diffusers' old attention processors: `…attn1.processor.to_q_lora.down.weight`,
//!   `text_encoder.…q_proj.lora_linear_layer.down.weight`;
//! - LyCORIS LoHa (`hada_w1_a`, `hada_w1_b`, `hada_w2_a`, `hada_w2_b`) and
//!   LoKr (`lokr_w1` or `lokr_w1_a`·`lokr_w1_b`, `lokr_w2` or
//!   `lokr_w2_a`·`lokr_w2_b`), scaled as ComfyUI and LyCORIS do.
//!
//! Every accepted module name comes from one [`LoraKeyTable`], built from
//! the models' own key maps and the LDM ↔ diffusers table
//! ([`super::ldm_names`]); names are looked up, never rewritten.

use super::clip::ClipTextConfig;
use super::ldm_names::unet_ldm_name;
use super::unet_2d::UNetConfig;
use crate::error::{Error, LoraShapeError, Result};
use crate::weights::{TensorFile, TensorPatch};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

/// One LoRA to apply: `FILE[:WEIGHT[:TEXT_ENCODER_WEIGHT]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub path: PathBuf,
    /// Multiplier of the UNet's changes.
    pub unet_weight: f32,
    /// Multiplier of the text encoder's changes (the UNet's unless given).
    pub text_encoder_weight: f32,
}

impl LoraSpec {
    pub fn new(path: impl Into<PathBuf>, weight: f32) -> Self {
        Self { path: path.into(), unet_weight: weight, text_encoder_weight: weight }
    }

    /// The multiplier of `component`'s changes.
    pub fn weight(&self, component: Component) -> f32 {
        match component {
            Component::Unet => self.unet_weight,
            Component::TextEncoder => self.text_encoder_weight,
        }
    }
}

impl FromStr for LoraSpec {
    type Err = String;

    /// Weights are read from the right, so a path may hold `:` (`C:\…`).
    fn from_str(text: &str) -> Result<Self, String> {
        let number = |s: &str| s.parse::<f32>().ok().filter(|w| w.is_finite());
        let mut path = text;
        let mut weights = Vec::new();
        while weights.len() < 2 {
            match path.rsplit_once(':') {
                Some((head, tail)) if !head.is_empty() => match number(tail) {
                    Some(w) => {
                        weights.insert(0, w);
                        path = head;
                    }
                    None if tail.is_empty() => return Err(format!("`{text}`: no weight after `:`")),
                    None => break,
                },
                _ => break,
            }
        }
        if path.is_empty() {
            return Err(format!("`{text}`: no LoRA file"));
        }
        let unet_weight = weights.first().copied().unwrap_or(1.0);
        let text_encoder_weight = weights.get(1).copied().unwrap_or(unet_weight);
        Ok(Self { path: path.into(), unet_weight, text_encoder_weight })
    }
}

impl fmt::Display for LoraSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.path.display(), self.unet_weight)?;
        if self.text_encoder_weight != self.unet_weight {
            write!(f, ":{}", self.text_encoder_weight)?;
        }
        Ok(())
    }
}

/// The model a LoRA module changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    Unet,
    TextEncoder,
}

impl Component {
    /// The prefix of its modules in PEFT/diffusers LoRAs.
    fn peft_prefix(self) -> &'static str {
        match self {
            Component::Unet => "unet",
            Component::TextEncoder => "text_encoder",
        }
    }
}

/// One weight a LoRA may change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoraTarget {
    pub component: Component,
    /// Its key in the component's weights file: diffusers' name for the
    /// UNet, transformers' (without `text_model.`) for the text encoder.
    pub key: String,
    pub shape: Vec<usize>,
}

/// Every module name a LoRA may use → the weight it changes.
#[derive(Debug, Clone)]
pub struct LoraKeyTable {
    targets: Vec<LoraTarget>,
    names: HashMap<String, usize>,
}

/// kohya's spelling of a module path: dots become underscores.
fn kohya(prefix: &str, module: &str) -> String {
    format!("{prefix}{}", module.replace('.', "_"))
}

impl LoraKeyTable {
    /// The linear and convolution weights of the UNet and the text encoder
    /// (norms, biases and embeddings take no LoRA), under each spelling.
    pub fn new(unet: &UNetConfig, clip: &ClipTextConfig) -> Result<Self, String> {
        let mut table = Self { targets: Vec::new(), names: HashMap::new() };
        for tensor in unet.expected_tensors()? {
            let Some(module) = tensor.key.strip_suffix(".weight") else { continue };
            if !matches!(tensor.shape.len(), 2 | 4) {
                continue;
            }
            let ldm =
                unet_ldm_name(unet, &tensor.key).ok_or_else(|| format!("no LDM name is known for `{}`", tensor.key))?;
            let ldm = ldm.strip_suffix(".weight").unwrap_or(&ldm).to_string();
            let mut names = vec![kohya("lora_unet_", module), kohya("lora_unet_", &ldm), format!("unet.{module}")];
            // diffusers' old attention processors: `attn1.processor.to_q_lora`.
            for (projection, processor) in
                [(".to_q", "to_q_lora"), (".to_k", "to_k_lora"), (".to_v", "to_v_lora"), (".to_out.0", "to_out_lora")]
            {
                if let Some(attention) = module.strip_suffix(projection) {
                    let old = format!("{attention}.processor.{processor}");
                    names.push(format!("unet.{old}"));
                    names.push(old);
                }
            }
            let target = LoraTarget { component: Component::Unet, key: tensor.key.clone(), shape: tensor.shape };
            table.add(target, names)?;
        }
        for tensor in clip.expected_tensors()? {
            let Some(module) = tensor.key.strip_suffix(".weight") else { continue };
            if tensor.shape.len() != 2 || module.starts_with("text_model.embeddings.") {
                continue;
            }
            let key = tensor.key.strip_prefix("text_model.").unwrap_or(&tensor.key).to_string();
            let names = vec![kohya("lora_te_", module), format!("text_encoder.{module}")];
            table.add(LoraTarget { component: Component::TextEncoder, key, shape: tensor.shape }, names)?;
        }
        Ok(table)
    }

    fn add(&mut self, target: LoraTarget, names: Vec<String>) -> Result<(), String> {
        let index = self.targets.len();
        for name in names {
            if let Some(&other) = self.names.get(&name) {
                if other != index {
                    return Err(format!(
                        "the LoRA name `{name}` would mean both `{}` and `{}`",
                        self.targets[other].key, target.key
                    ));
                }
            }
            self.names.insert(name, index);
        }
        self.targets.push(target);
        Ok(())
    }

    /// The weight a LoRA module name changes.
    pub fn target(&self, module: &str) -> Option<&LoraTarget> {
        self.names.get(module).map(|&i| &self.targets[i])
    }

    /// Every accepted spelling, sorted (for tests and listings).
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.names.keys().map(String::as_str).collect();
        names.sort();
        names
    }
}

/// What one tensor of a LoRA file is to its module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Part {
    Down,
    Up,
    Alpha,
    HadaW1A,
    HadaW1B,
    HadaW2A,
    HadaW2B,
    LokrW1,
    LokrW1A,
    LokrW1B,
    LokrW2,
    LokrW2A,
    LokrW2B,
    /// Known, but not merged: named in the error.
    Unsupported(&'static str),
}

impl Part {
    /// How the error messages call it.
    fn name(self) -> &'static str {
        match self {
            Part::Down => "down (`.lora_down.weight`, `.lora_A.weight`)",
            Part::Up => "up (`.lora_up.weight`, `.lora_B.weight`)",
            Part::Alpha => "`.alpha`",
            Part::HadaW1A => "`.hada_w1_a`",
            Part::HadaW1B => "`.hada_w1_b`",
            Part::HadaW2A => "`.hada_w2_a`",
            Part::HadaW2B => "`.hada_w2_b`",
            Part::LokrW1 => "`.lokr_w1`",
            Part::LokrW1A => "`.lokr_w1_a`",
            Part::LokrW1B => "`.lokr_w1_b`",
            Part::LokrW2 => "`.lokr_w2`",
            Part::LokrW2A => "`.lokr_w2_a`",
            Part::LokrW2B => "`.lokr_w2_b`",
            Part::Unsupported(what) => what,
        }
    }
}

/// Tensor-name endings, longest first where one ends another.
const PARTS: [(&str, Part); 23] = [
    (".lora_down.weight", Part::Down),
    (".lora_up.weight", Part::Up),
    (".lora_A.weight", Part::Down),
    (".lora_B.weight", Part::Up),
    (".lora_linear_layer.down.weight", Part::Down),
    (".lora_linear_layer.up.weight", Part::Up),
    (".down.weight", Part::Down),
    (".up.weight", Part::Up),
    (".alpha", Part::Alpha),
    (".hada_w1_a", Part::HadaW1A),
    (".hada_w1_b", Part::HadaW1B),
    (".hada_w2_a", Part::HadaW2A),
    (".hada_w2_b", Part::HadaW2B),
    (".lokr_w1", Part::LokrW1),
    (".lokr_w1_a", Part::LokrW1A),
    (".lokr_w1_b", Part::LokrW1B),
    (".lokr_w2", Part::LokrW2),
    (".lokr_w2_a", Part::LokrW2A),
    (".lokr_w2_b", Part::LokrW2B),
    (".lora_mid.weight", Part::Unsupported("a Tucker-decomposed LoCon (`lora_mid`)")),
    (".hada_t1", Part::Unsupported("a Tucker-decomposed LoHa (`hada_t1`)")),
    (".lokr_t2", Part::Unsupported("a Tucker-decomposed LoKr (`lokr_t2`)")),
    (".dora_scale", Part::Unsupported("DoRA (`dora_scale`)")),
];

/// `key` as (module, part), if it ends like a LoRA tensor.
fn split_key(key: &str) -> Option<(&str, Part)> {
    PARTS.iter().find_map(|(ending, part)| key.strip_suffix(ending).map(|module| (module, *part)))
}

/// A factor of a LoKr product: stored whole, or as a low-rank product.
#[derive(Debug, Clone)]
enum Factor {
    Whole(String),
    Product(String, String),
}

/// How a module's ΔW is made from its tensors (keys in the LoRA file).
#[derive(Debug, Clone)]
enum Delta {
    /// up · down, each flattened to a matrix.
    LowRank { down: String, up: String },
    /// (w1a · w1b) ⊙ (w2a · w2b).
    Hadamard { w1a: String, w1b: String, w2a: String, w2b: String },
    /// w1 ⊗ w2 (Kronecker).
    Kronecker { w1: Factor, w2: Factor },
}

/// One module of a LoRA: the weight it changes, how, and its α/r.
#[derive(Debug, Clone)]
struct Change {
    module: String,
    target: LoraTarget,
    delta: Delta,
    scale: f32,
}

/// A LoRA file, checked against the model and ready to merge.
#[derive(Clone)]
pub struct Lora {
    pub spec: LoraSpec,
    /// Tensor names that match no module of this model (one warning lists them).
    pub unmatched: Vec<String>,
    file: TensorFile,
    changes: Vec<Change>,
}

impl fmt::Debug for Lora {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lora")
            .field("spec", &self.spec)
            .field("modules", &self.changes.len())
            .field("unmatched", &self.unmatched)
            .finish()
    }
}

/// [rows, columns] of a shape flattened to a matrix.
fn matrix(shape: &[usize]) -> [usize; 2] {
    [shape.first().copied().unwrap_or(1), shape.iter().skip(1).product()]
}

impl Lora {
    /// Reads and checks a LoRA: every module it names must fit the weight
    /// it changes. A module for a weight of another shape (a LoRA for SDXL
    /// or SD2) is refused, naming it and both shapes.
    pub fn open(spec: &LoraSpec, table: &LoraKeyTable) -> Result<Self> {
        let path = &spec.path;
        let file = TensorFile::open(path)?;
        let error = |message: String| Error::Lora { path: path.clone(), message };
        let base = file.metadata().get("ss_base_model_version").cloned();

        let mut modules: BTreeMap<&str, BTreeMap<Part, String>> = BTreeMap::new();
        let mut unmatched = Vec::new();
        let mut lora_like = 0;
        for key in file.keys() {
            match split_key(key) {
                Some((module, part)) => {
                    lora_like += 1;
                    if table.target(module).is_some() {
                        modules.entry(module).or_default().insert(part, key.to_string());
                    } else {
                        unmatched.push(key.to_string());
                    }
                }
                None => unmatched.push(key.to_string()),
            }
        }
        if lora_like == 0 {
            let first: Vec<String> = file.keys().take(3).map(|k| format!("`{k}`")).collect();
            return Err(error(format!(
                "not a LoRA: no tensor name ends in .lora_down.weight, .lora_A.weight, .hada_w1_a, .lokr_w1 or \
                 another LoRA part (first names: {})",
                if first.is_empty() { "none, the file is empty".to_string() } else { first.join(", ") }
            )));
        }
        if modules.is_empty() {
            let made_for = base.as_ref().map(|b| format!(" (made for {b})")).unwrap_or_default();
            return Err(error(format!(
                "none of its {} modules is a module of this SD1.5{made_for}; first: `{}`",
                lora_like, unmatched[0]
            )));
        }
        let alphas = PeftAlphas::read(&file, path)?;

        let mut changes = Vec::with_capacity(modules.len());
        for (module, parts) in modules {
            let target = table.target(module).expect("matched above").clone();
            let need = |part: Part| {
                parts.get(&part).cloned().ok_or_else(|| {
                    let has: Vec<&String> = parts.values().collect();
                    error(format!("module `{module}` has {has:?} but no {} tensor", part.name()))
                })
            };
            if let Some(Part::Unsupported(what)) = parts.keys().find(|p| matches!(p, Part::Unsupported(_))) {
                return Err(error(format!("module `{module}` is {what}, which is not supported")));
            }
            let shape = |key: &String| file.shape(key).expect("listed").to_vec();
            let (delta, natural, rank) = if parts.contains_key(&Part::Down) || parts.contains_key(&Part::Up) {
                let (down, up) = (need(Part::Down)?, need(Part::Up)?);
                let (down_shape, up_shape) = (shape(&down), shape(&up));
                let [rank, columns] = matrix(&down_shape);
                let [rows, inner] = matrix(&up_shape);
                if inner != rank {
                    return Err(error(format!(
                        "module `{module}`: up {up_shape:?} does not fit down {down_shape:?} (rank {rank})"
                    )));
                }
                let mut natural = vec![rows];
                natural.extend(&down_shape[1..]);
                debug_assert_eq!(matrix(&natural), [rows, columns]);
                (Delta::LowRank { down, up }, natural, Some(rank))
            } else if parts.contains_key(&Part::HadaW1A) {
                let keys = [Part::HadaW1A, Part::HadaW1B, Part::HadaW2A, Part::HadaW2B].map(need);
                let [w1a, w1b, w2a, w2b] = keys;
                let [w1a, w1b, w2a, w2b] = [w1a?, w1b?, w2a?, w2b?];
                let [rows, r1] = matrix(&shape(&w1a));
                let [r1b, columns] = matrix(&shape(&w1b));
                let [rows2, r2] = matrix(&shape(&w2a));
                let [r2b, columns2] = matrix(&shape(&w2b));
                if r1 != r1b || r2 != r2b || rows != rows2 || columns != columns2 {
                    return Err(error(format!("module `{module}`: its LoHa factors do not fit each other")));
                }
                (Delta::Hadamard { w1a, w1b, w2a, w2b }, vec![rows, columns], Some(r1b))
            } else {
                let factor = |whole: Part, a: Part, b: Part| -> Result<(Factor, [usize; 2], Option<usize>)> {
                    if let Some(key) = parts.get(&whole) {
                        return Ok((Factor::Whole(key.clone()), matrix(&shape(key)), None));
                    }
                    let (a, b) = (need(a)?, need(b)?);
                    let ([rows, r], [rb, columns]) = (matrix(&shape(&a)), matrix(&shape(&b)));
                    if r != rb {
                        return Err(error(format!("module `{module}`: `{a}` does not fit `{b}`")));
                    }
                    Ok((Factor::Product(a, b), [rows, columns], Some(rb)))
                };
                let (w1, [a, b], rank1) = factor(Part::LokrW1, Part::LokrW1A, Part::LokrW1B)?;
                let (w2, [c, d], rank2) = factor(Part::LokrW2, Part::LokrW2A, Part::LokrW2B)?;
                (Delta::Kronecker { w1, w2 }, vec![a * c, b * d], rank2.or(rank1))
            };
            if matrix(&natural) != matrix(&target.shape) || (natural.len() == 4 && natural != target.shape) {
                return Err(Error::LoraShape(Box::new(LoraShapeError {
                    path: path.clone(),
                    module: module.to_string(),
                    param: target.key.clone(),
                    expected: target.shape.clone(),
                    found: natural,
                    base,
                })));
            }
            let alpha = match parts.get(&Part::Alpha) {
                Some(key) => Some(
                    file.read_f32(key)?
                        .first()
                        .copied()
                        .ok_or_else(|| error(format!("`{key}` is empty: an alpha is one number")))?,
                ),
                None => alphas.alpha(target.component, module),
            };
            // α/r; without α the scale is 1 (α = r). A LoKr with both factors
            // whole has no rank: its scale is 1 whatever α says.
            let scale = match (alpha, rank) {
                (Some(alpha), Some(rank)) => alpha / rank as f32,
                _ => 1.0,
            };
            changes.push(Change { module: module.to_string(), target, delta, scale });
        }
        // Shapes first (they name the module at fault); then the metadata.
        if let Some(version) = base.as_ref().filter(|b| b.contains("sdxl") || b.starts_with("sd_v2")) {
            return Err(error(format!(
                "its ss_base_model_version is {version}: it is for another base model than SD1.5"
            )));
        }
        Ok(Self { spec: spec.clone(), unmatched, file, changes })
    }

    /// Number of modules it changes.
    pub fn modules(&self) -> usize {
        self.changes.len()
    }

    /// ΔW of one change, as the target's values (row-major).
    fn delta(&self, change: &Change) -> Result<Vec<f32>> {
        let read = |key: &String| -> Result<(Vec<f32>, [usize; 2])> {
            Ok((self.file.read_f32(key)?, matrix(self.file.shape(key).expect("checked at open"))))
        };
        let product = |a: &String, b: &String| -> Result<(Vec<f32>, [usize; 2])> {
            let ((a, [m, k]), (b, [_, n])) = (read(a)?, read(b)?);
            Ok((matmul(&a, &b, m, k, n), [m, n]))
        };
        Ok(match &change.delta {
            Delta::LowRank { down, up } => product(up, down)?.0,
            Delta::Hadamard { w1a, w1b, w2a, w2b } => {
                let (mut first, _) = product(w1a, w1b)?;
                let (second, _) = product(w2a, w2b)?;
                first.iter_mut().zip(&second).for_each(|(x, y)| *x *= y);
                first
            }
            Delta::Kronecker { w1, w2 } => {
                let factor = |f: &Factor| match f {
                    Factor::Whole(key) => read(key),
                    Factor::Product(a, b) => product(a, b),
                };
                let ((w1, [a, b]), (w2, [c, d])) = (factor(w1)?, factor(w2)?);
                let columns = b * d;
                let mut out = vec![0f32; a * c * columns];
                out.par_chunks_mut(columns).enumerate().for_each(|(row, out)| {
                    let (i, p) = (row / c, row % c);
                    for j in 0..b {
                        let x = w1[i * b + j];
                        for (o, y) in out[j * d..(j + 1) * d].iter_mut().zip(&w2[p * d..(p + 1) * d]) {
                            *o = x * y;
                        }
                    }
                });
                out
            }
        })
    }
}

/// `a` [m, k] · `b` [k, n], row-major, rows in parallel.
fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    if n == 0 {
        return out;
    }
    out.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
        for p in 0..k {
            let x = a[i * k + p];
            for (o, y) in row.iter_mut().zip(&b[p * n..(p + 1) * n]) {
                *o += x * y;
            }
        }
    });
    out
}

/// PEFT's α for modules without an `.alpha` tensor: `lora_adapter_metadata`
/// (`unet.lora_alpha`, `unet.alpha_pattern`, likewise `text_encoder.`).
struct PeftAlphas {
    metadata: serde_json::Map<String, serde_json::Value>,
}

impl PeftAlphas {
    fn read(file: &TensorFile, path: &Path) -> Result<Self> {
        let metadata = match file.metadata().get("lora_adapter_metadata") {
            None => serde_json::Map::new(),
            Some(text) => serde_json::from_str(text).map_err(|e| Error::Lora {
                path: path.to_path_buf(),
                message: format!("its `lora_adapter_metadata` is not a JSON object: {e}"),
            })?,
        };
        Ok(Self { metadata })
    }

    /// α of a PEFT module (`unet.down_blocks.0…`): its `alpha_pattern`
    /// entry (a name ending the module's path), else `lora_alpha`.
    fn alpha(&self, component: Component, module: &str) -> Option<f32> {
        let prefix = component.peft_prefix();
        let path = module.strip_prefix(prefix)?.strip_prefix('.')?;
        let get = |key: &str| self.metadata.get(&format!("{prefix}.{key}"));
        let pattern = get("alpha_pattern").and_then(|p| p.as_object()).and_then(|patterns| {
            patterns
                .iter()
                .find(|(name, _)| path == name.as_str() || path.ends_with(&format!(".{name}")))
                .and_then(|(_, alpha)| alpha.as_f64())
        });
        pattern.or_else(|| get("lora_alpha").and_then(|a| a.as_f64())).map(|a| a as f32)
    }
}

/// The merge of some LoRAs into one component's weights file, whose keys
/// for that component start with `prefix` (`text_model.` or none).
struct Merge {
    prefix: String,
    /// Target key (without `prefix`) → (LoRA, change) indices.
    changes: BTreeMap<String, Vec<(usize, usize)>>,
    loras: Vec<Lora>,
    component: Component,
}

impl TensorPatch for Merge {
    fn touches(&self, key: &str) -> bool {
        key.strip_prefix(self.prefix.as_str()).is_some_and(|rel| self.changes.contains_key(rel))
    }

    fn apply(&self, key: &str, shape: &[usize], values: &mut [f32]) -> Result<()> {
        let Some(list) = key.strip_prefix(self.prefix.as_str()).and_then(|rel| self.changes.get(rel)) else {
            return Ok(());
        };
        for &(l, c) in list {
            let (lora, change) = (&self.loras[l], &self.loras[l].changes[c]);
            let delta = lora.delta(change)?;
            if delta.len() != values.len() {
                return Err(Error::LoraShape(Box::new(LoraShapeError {
                    path: lora.spec.path.clone(),
                    module: change.module.clone(),
                    param: key.to_string(),
                    expected: shape.to_vec(),
                    found: change.target.shape.clone(),
                    base: None,
                })));
            }
            let factor = lora.spec.weight(self.component) * change.scale;
            values.par_iter_mut().zip(&delta).for_each(|(w, d)| *w += factor * d);
        }
        Ok(())
    }
}

/// The patch that merges `loras` into `component`'s weights file (keys
/// under `prefix`); `None` if none of them changes it (or all with weight 0,
/// so that weight 0 gives the plain model exactly).
pub fn merge_patch(loras: &[Lora], component: Component, prefix: &str) -> Option<Arc<dyn TensorPatch>> {
    let mut changes: BTreeMap<String, Vec<(usize, usize)>> = BTreeMap::new();
    for (l, lora) in loras.iter().enumerate() {
        if lora.spec.weight(component) == 0.0 {
            continue;
        }
        for (c, change) in lora.changes.iter().enumerate() {
            if change.target.component == component {
                changes.entry(change.target.key.clone()).or_default().push((l, c));
            }
        }
    }
    if changes.is_empty() {
        return None;
    }
    Some(Arc::new(Merge { prefix: prefix.to_string(), changes, loras: loras.to_vec(), component }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_read_weights_from_the_right() {
        let spec: LoraSpec = "a/b.safetensors".parse().unwrap();
        assert_eq!(spec, LoraSpec::new("a/b.safetensors", 1.0));
        let spec: LoraSpec = "C:\\x.safetensors:0.5".parse().unwrap();
        assert_eq!(spec, LoraSpec::new("C:\\x.safetensors", 0.5));
        let spec: LoraSpec = "x.safetensors:0.5:-0.25".parse().unwrap();
        assert_eq!((spec.unet_weight, spec.text_encoder_weight), (0.5, -0.25));
        assert_eq!(spec.to_string(), "x.safetensors:0.5:-0.25");
        assert!("x.safetensors:".parse::<LoraSpec>().unwrap_err().contains("no weight"));
        assert!("".parse::<LoraSpec>().unwrap_err().contains("no LoRA file"));
    }

    #[test]
    fn matmul_and_key_parts() {
        // [1 2] ⊗ [[0 1] [1 0]] = [[0 1 0 2] [1 0 2 0]].
        assert_eq!(matmul(&[1.0, 2.0, 3.0, 4.0], &[1.0, 0.0, 0.0, 1.0], 2, 2, 2), vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(split_key("a.b.lora_linear_layer.down.weight"), Some(("a.b", Part::Down)));
        assert_eq!(split_key("x.processor.to_q_lora.down.weight"), Some(("x.processor.to_q_lora", Part::Down)));
        assert_eq!(split_key("m.lokr_w1_a"), Some(("m", Part::LokrW1A)));
        assert_eq!(split_key("m.weight"), None);
    }
}
