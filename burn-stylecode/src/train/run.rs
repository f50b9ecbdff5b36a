//! A training run (`stylecode train`): the settings, the loop of optimizer
//! steps over the feature cache, checkpoints and resume, metrics and
//! validation, in `RUN_DIR`:
//!
//! ```text
//! RUN_DIR/config.json           every setting of the run (TrainConfig)
//! RUN_DIR/metrics.jsonl         one line per optimizer step (StepRecord), plus validation scores
//! RUN_DIR/skipped.jsonl         entries left out under --skip-bad
//! RUN_DIR/cache/                the frozen encoders' outputs (train::cache)
//! RUN_DIR/checkpoints/step-N/   weights, optimizer state, run state (train::checkpoint)
//! RUN_DIR/validation/step-N.png the validation grid
//! ```
//!
//! Everything random is keyed by (seed, micro-batch): the data order,
//! the dropout masks, the timesteps and noises, the autoencoder's dropout
//! (the backend is seeded per micro-batch). A run resumed from a checkpoint
//! therefore computes exactly what the uninterrupted run computed.

use super::cache::{empty_context, encode_entries, FeatureCache, HostFeatures};
use super::checkpoint::{self, fault_point, Checkpoint, RunState};
use super::data::{keyed_rng, write_skipped, Dataset, DatasetOptions, Dropout, Order};
use super::optim::{clip_grad_norm, AdamW, AdamWConfig, GradAccumulator, Grads, LrSchedule};
use super::step::{loss, Batch, Frozen};
use super::validate::{Validation, ValidationReport};
use crate::error::{Error, Result};
use crate::pipeline::WeightsDir;
use crate::sd::pipeline::NoiseSource;
use crate::sd::unet_2d::UNetConfig;
use crate::style::control::MixInit;
use crate::style::{StyleCodesModel, StylecodesConfig};
use crate::weights::safetensors::{write_atomic, TensorFile};
use crate::weights::JsonConfig;
use burn::module::{AutodiffModule, ModuleMapper, Param};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::DType;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where the trainable weights start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// The weights folder's StyleCodes weights (fine-tuning), with their mixers.
    #[default]
    Official,
    /// The paper's: new layers drawn from N(0, σ = 1e-4), zero-initialised residual mixers.
    Paper,
}

/// The precision of the frozen networks and activations; master weights and
/// AdamW state stay f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MixedPrecision {
    #[default]
    No,
    Bf16,
    F16,
}

/// Every setting of a run (`RUN_DIR/config.json`). The defaults follow the
/// paper: lr 1e-6, an effective batch of 25 (5 × 5 accumulated), 100,000 steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub data: PathBuf,
    pub weights: PathBuf,
    pub init: Init,
    pub steps: u64,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub lr: f64,
    /// `constant` or `cosine` (diffusers' names); a warmup applies to both.
    pub lr_schedule: String,
    pub warmup: u64,
    pub weight_decay: f64,
    /// Global-norm clipping; 0 turns it off.
    pub max_grad_norm: f64,
    pub resolution: u32,
    pub text_dropout: f64,
    pub style_dropout: f64,
    /// The control branch's conditioning scale while training.
    pub style_scale: f64,
    pub mixed_precision: MixedPrecision,
    pub checkpoint_every: u64,
    /// Checkpoints kept (the newest).
    pub keep: usize,
    pub validate_every: u64,
    pub validation: Option<PathBuf>,
    /// Denoising steps of a validation image.
    pub validation_steps: usize,
    pub seed: u64,
    pub skip_bad: bool,
    /// Precompute the frozen features into `RUN_DIR/cache` (else per batch).
    pub cache: bool,
    /// Refuse a run estimated over this many bytes (`--max-memory`; one over
    /// the machine's available memory is always refused). Not a training
    /// setting: not saved, so a resume may change it.
    #[serde(skip)]
    pub max_memory: Option<u64>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            data: PathBuf::new(),
            weights: PathBuf::new(),
            init: Init::Official,
            steps: 100_000,
            batch_size: 5,
            grad_accum: 5,
            lr: 1e-6,
            lr_schedule: "constant".into(),
            warmup: 0,
            weight_decay: 1e-2,
            max_grad_norm: 1.0,
            resolution: 512,
            text_dropout: 0.05,
            style_dropout: 0.05,
            style_scale: 1.0,
            mixed_precision: MixedPrecision::No,
            checkpoint_every: 500,
            keep: 3,
            validate_every: 0,
            validation: None,
            validation_steps: 20,
            seed: 0,
            skip_bad: false,
            cache: true,
            max_memory: None,
        }
    }
}

impl TrainConfig {
    /// Settings that cannot work, named by their flag.
    pub fn check(&self) -> Result<()> {
        let bad = |message: String| Err(Error::InvalidRequest(message));
        if self.steps == 0 {
            return bad("--steps must be at least 1".into());
        }
        if self.batch_size == 0 || self.grad_accum == 0 {
            return bad("--batch-size and --grad-accum must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("--lr must be a positive number, got {}", self.lr));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!("--weight-decay must be ≥ 0, got {}", self.weight_decay));
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm >= 0.0) {
            return bad(format!("--max-grad-norm must be ≥ 0 (0: off), got {}", self.max_grad_norm));
        }
        if !(0.0..=1.0).contains(&self.style_scale) {
            return bad(format!("the style scale must be in [0, 1], got {}", self.style_scale));
        }
        if self.checkpoint_every == 0 {
            return bad("--checkpoint-every must be at least 1".into());
        }
        if self.validate_every > 0 && self.validation.is_none() {
            return bad("--validate-every needs --validation FILE".into());
        }
        super::data::check_resolution(self.resolution)?;
        Dropout::new(self.seed, self.text_dropout, self.style_dropout)?;
        self.schedule()?;
        Ok(())
    }

    fn schedule(&self) -> Result<LrSchedule> {
        let name = match (self.lr_schedule.as_str(), self.warmup) {
            ("constant", w) if w > 0 => "constant_with_warmup",
            (name, _) => name,
        };
        LrSchedule::from_name(name, self.warmup, self.steps)
    }

    pub(super) fn frozen_dtype(&self) -> DType {
        match self.mixed_precision {
            MixedPrecision::No => DType::F32,
            MixedPrecision::Bf16 => DType::BF16,
            MixedPrecision::F16 => DType::F16,
        }
    }

    /// The samples one optimizer step sees.
    pub fn effective_batch(&self) -> usize {
        self.batch_size * self.grad_accum
    }
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Optimizer steps done (1-based: the step just taken).
    pub step: u64,
    /// Mean loss over the step's micro-batches.
    pub loss: f64,
    pub lr: f64,
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
    pub samples_per_s: f64,
    /// Wall seconds since the run began, across resumes.
    pub seconds: f64,
}

/// What a run reports as it goes.
#[derive(Debug)]
pub enum Event<'a> {
    /// The feature cache is being built: entries done of total.
    Caching {
        done: usize,
        total: usize,
    },
    /// Continuing from a checkpoint.
    Resumed {
        step: u64,
    },
    Step(&'a StepRecord),
    Checkpoint(&'a Checkpoint),
    Validation(&'a ValidationReport),
}

/// How a run ended.
#[derive(Debug)]
pub struct Summary {
    pub steps: u64,
    pub last_checkpoint: Option<Checkpoint>,
}

const CONFIG: &str = "config.json";
const METRICS: &str = "metrics.jsonl";

/// Trains as `config` says into `run_dir`. With `resume`, continues from the
/// newest complete checkpoint of a run there with the same settings (only
/// `--steps` may grow); without it, `run_dir` must not hold a run yet.
pub fn train<B: AutodiffBackend>(
    config: &TrainConfig,
    run_dir: &Path,
    resume: bool,
    device: &B::Device,
    mut on_event: impl FnMut(Event),
) -> Result<Summary> {
    config.check()?;
    check_run_dir(config, run_dir, resume)?;
    let weights = WeightsDir::new(&config.weights);
    super::memory::check(&weights, config)?;
    let options = DatasetOptions { resolution: config.resolution, skip_bad: config.skip_bad };
    let (dataset, skipped) = Dataset::open(&config.data, &options)?;
    if !skipped.is_empty() {
        std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
        write_skipped(run_dir.join("skipped.jsonl"), &skipped)?;
    }

    let frozen = Frozen::<B>::load(&weights, config.frozen_dtype(), device)?;
    let features = match config.cache {
        true => Features::Cached(FeatureCache::open_or_build(
            &run_dir.join("cache"),
            &dataset,
            &frozen,
            &mut |done, total| on_event(Event::Caching { done, total }),
        )?),
        false => Features::Live { empty_context: empty_context(&frozen)? },
    };
    let validation = config.validation.as_deref().map(|path| Validation::open(path, &frozen)).transpose()?;
    // Written once everything loaded: a run that cannot start leaves no run behind.
    write_config(config, run_dir)?;

    let base = UNetConfig::from_file(&weights.sd15()?.join("unet").join("config.json"))?;
    let model_config = model_config(config, &weights)?;
    let mut optim = AdamW::<B>::new(AdamWConfig::new().with_lr(config.lr).with_weight_decay(config.weight_decay));
    let latest = if resume { checkpoint::list(run_dir)?.pop() } else { None };
    let (mut model, mut order, mut state) = match &latest {
        Some(found) => {
            let state = found.state()?;
            let file = TensorFile::open(found.weights())?;
            let model = StyleCodesModel::<B>::load(&model_config, &base, &file, DType::F32, device)?;
            optim.import(super::optim::OptimizerState::load(&found.optimizer())?, &model)?;
            truncate_metrics(run_dir, state.step)?;
            on_event(Event::Resumed { step: state.step });
            (model, Order::resume(state.order, dataset.len())?, state)
        }
        None => {
            let model = match config.init {
                Init::Official => {
                    let file = TensorFile::open(weights.stylecodes_weights()?)?;
                    StyleCodesModel::<B>::load(&model_config, &base, &file, DType::F32, device)?
                }
                Init::Paper => paper_model::<B>(&model_config, &base, config.seed, device),
            };
            let order = Order::new(config.seed, dataset.len())?;
            let state = RunState { step: 0, order: order.position(), seconds: 0.0 };
            write_atomic(&run_dir.join(METRICS), b"")?;
            (model, order, state)
        }
    };
    let mut last_checkpoint = latest;

    let schedule = config.schedule()?;
    let dropout = Dropout::new(config.seed, config.text_dropout, config.style_dropout)?;
    let mut metrics = std::fs::OpenOptions::new()
        .append(true)
        .open(run_dir.join(METRICS))
        .map_err(|e| Error::io(run_dir.join(METRICS), e))?;
    let max_norm = if config.max_grad_norm > 0.0 { config.max_grad_norm } else { f64::INFINITY };
    let start = Instant::now();
    let seconds_before = state.seconds;

    while state.step < config.steps {
        let step_start = Instant::now();
        let lr = schedule.lr(config.lr, state.step);
        let mut accumulator = GradAccumulator::new();
        let mut total_loss = 0.0;
        for micro in 0..config.grad_accum {
            let micro_step = state.step * config.grad_accum as u64 + micro as u64;
            let indices = order.next_batch(config.batch_size);
            let batch = features.batch(&frozen, &dataset, &indices, &dropout, config.seed, micro_step)?;
            B::seed(device, keyed_rng(b"backend\0", config.seed, micro_step).random());
            let value = loss(&model, frozen.base(), &batch, config.style_scale);
            let host = value
                .clone()
                .inner()
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .map_err(|e| Error::ReadBack { what: "the loss", message: format!("{e:?}") })?[0];
            if !host.is_finite() {
                return Err(diverged(state.step + 1, "loss", host, &last_checkpoint));
            }
            total_loss += f64::from(host);
            let grads = (value / config.grad_accum as f32).backward();
            accumulator.accumulate(Grads::from_backward(grads, &model));
        }
        let mut grads = accumulator.take();
        let grad_norm = clip_grad_norm(&mut grads, max_norm)?;
        if !grad_norm.is_finite() {
            return Err(diverged(state.step + 1, "gradient norm", grad_norm, &last_checkpoint));
        }
        model = optim.step(lr, model, grads);
        state.step += 1;
        state.order = order.position();
        state.seconds = seconds_before + start.elapsed().as_secs_f64();
        let record = StepRecord {
            step: state.step,
            loss: total_loss / config.grad_accum as f64,
            lr,
            grad_norm: f64::from(grad_norm),
            samples_per_s: config.effective_batch() as f64 / step_start.elapsed().as_secs_f64().max(1e-9),
            seconds: state.seconds,
        };
        append_line(&mut metrics, run_dir, &record)?;
        on_event(Event::Step(&record));
        fault_point("step", state.step);

        if state.step % config.checkpoint_every == 0 || state.step == config.steps {
            let saved = checkpoint::save(run_dir, &model, &model_config, &optim.export()?, &state, config.keep)?;
            on_event(Event::Checkpoint(&saved));
            last_checkpoint = Some(saved);
        }
        if let Some(validation) = &validation {
            if config.validate_every > 0 && (state.step % config.validate_every == 0 || state.step == config.steps) {
                let report = validation.run(&model.valid(), &frozen, config, state.step, run_dir)?;
                #[derive(Serialize)]
                struct Line<'a> {
                    step: u64,
                    style_similarity: f64,
                    grid: &'a Path,
                }
                let line = Line { step: state.step, style_similarity: report.similarity, grid: &report.grid };
                append_line(&mut metrics, run_dir, &line)?;
                on_event(Event::Validation(&report));
            }
        }
    }
    Ok(Summary { steps: state.step, last_checkpoint })
}

fn diverged(step: u64, what: &str, value: f32, last: &Option<Checkpoint>) -> Error {
    let kept = match last {
        Some(c) => format!("the last good checkpoint is {}", c.dir.display()),
        None => "no checkpoint was written yet".to_string(),
    };
    Error::InvalidRequest(format!(
        "training diverged at step {step}: the {what} is {value}; the run stopped ({kept}). \
         Try a lower --lr or --max-grad-norm"
    ))
}

fn append_line(file: &mut std::fs::File, run_dir: &Path, value: &impl Serialize) -> Result<()> {
    let mut line = serde_json::to_string(value).expect("metrics serialise");
    line.push('\n');
    file.write_all(line.as_bytes()).map_err(|e| Error::io(run_dir.join(METRICS), e))
}

/// Keeps the metrics of steps up to `step` (a resume redoes the rest).
fn truncate_metrics(run_dir: &Path, step: u64) -> Result<()> {
    let path = run_dir.join(METRICS);
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let kept: String = text
        .lines()
        .filter(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .map(|line| format!("{line}\n"))
        .collect();
    write_atomic(&path, kept.as_bytes())
}

/// Refuses to start over a run without `--resume`, or to resume one with
/// other settings.
fn check_run_dir(config: &TrainConfig, run_dir: &Path, resume: bool) -> Result<()> {
    let path = run_dir.join(CONFIG);
    let saved = std::fs::read_to_string(&path).ok();
    match (saved, resume) {
        (Some(_), false) => {
            return Err(Error::InvalidRequest(format!(
                "{} holds a training run already; pass --resume to continue it, or choose another --out",
                run_dir.display()
            )))
        }
        (Some(text), true) => {
            let saved: TrainConfig =
                serde_json::from_str(&text).map_err(|e| Error::Json { path: path.clone(), cause: e })?;
            let (now, before) = (serde_json::to_value(config).unwrap(), serde_json::to_value(&saved).unwrap());
            let changed: Vec<String> = now
                .as_object()
                .unwrap()
                .iter()
                .filter(|(key, value)| key.as_str() != "steps" && before.get(key.as_str()) != Some(value))
                .map(|(key, value)| format!("{key} (was {}, now {value})", before[key.as_str()]))
                .collect();
            if !changed.is_empty() {
                return Err(Error::InvalidRequest(format!(
                    "--resume continues the run with its own settings ({}), but these differ: {}",
                    path.display(),
                    changed.join(", ")
                )));
            }
        }
        (None, _) => {}
    }
    Ok(())
}

/// `run_dir/config.json`, creating the folder.
fn write_config(config: &TrainConfig, run_dir: &Path) -> Result<()> {
    let path = run_dir.join(CONFIG);
    std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
    write_atomic(&path, &checkpoint::json(config))
}

/// The trainable model's config: the weights folder's (its shapes, and for
/// fine-tuning its mixers), with the paper's mixers for `--init paper` and
/// no autoencoder dropout when the release had none.
fn model_config(config: &TrainConfig, weights: &WeightsDir) -> Result<StylecodesConfig> {
    let mut model = weights.stylecodes_config()?;
    if config.init == Init::Paper {
        model.mix_init = MixInit::ZeroResidual;
    }
    model
        .validate()
        .map_err(|message| Error::Config { path: weights.stylecodes_dir().join("config.json"), message })?;
    Ok(model)
}

/// The paper's initialisation: the control branch's weights (rank ≥ 2)
/// from N(0, σ = 1e-4), its biases zero, its norms as built (scale 1,
/// shift 0), its mixers zero (residual), so the base is untouched at first.
/// The autoencoder keeps burn's standard initialisation: at σ = 1e-4 its
/// post-norm decoder adds the latent's contribution ~1e-8 below the
/// normalised tokens, under f32's resolution, and every code decodes alike
/// (measured: byte-identical images for different codes after training).
/// The draws are keyed by `seed`, in the module's parameter order.
pub fn paper_model<B: Backend>(
    config: &StylecodesConfig,
    base: &UNetConfig,
    seed: u64,
    device: &B::Device,
) -> StyleCodesModel<B> {
    let mut config = config.clone();
    config.mix_init = MixInit::ZeroResidual;
    B::seed(device, keyed_rng(b"init\0\0\0\0", seed, 1).random());
    let autoencoder = config.autoencoder.init(device);
    let mut init =
        PaperInit { path: Vec::new(), source: NoiseSource::new(keyed_rng(b"init\0\0\0\0", seed, 0).random()) };
    StyleCodesModel { autoencoder, control: config.control(base).init(device).map(&mut init) }
}

/// σ of the paper's initial weights.
pub const PAPER_INIT_STD: f32 = 1e-4;

struct PaperInit {
    path: Vec<String>,
    source: NoiseSource,
}

impl<B: Backend> ModuleMapper<B> for PaperInit {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let mixer = self.path.iter().any(|p| p == "middle_block_out" || p == "up_zero_convs_out");
        let bias = self.path.last().is_some_and(|p| p == "bias" || p == "beta");
        let (id, tensor, mapper) = param.consume();
        let (shape, device, dtype) = (tensor.shape(), tensor.device(), tensor.dtype());
        let value = if mixer {
            tensor
        } else if D >= 2 {
            let values: Vec<f32> =
                self.source.normal(shape.num_elements()).iter().map(|v| v * PAPER_INIT_STD).collect();
            Tensor::from_data(TensorData::new(values, shape), (&device, dtype))
        } else if bias {
            Tensor::zeros(shape, (&device, dtype))
        } else {
            tensor
        };
        Param::from_mapped_value(id, value.detach().require_grad(), mapper)
    }
}

/// Where a batch's frozen features come from.
enum Features {
    Cached(FeatureCache),
    /// Computed per batch, with the same encoders and the same code.
    Live {
        empty_context: Vec<f32>,
    },
}

impl Features {
    /// Micro-batch `micro_step` of entries `indices`: its features with the
    /// dropout applied, and its timesteps and noises drawn.
    fn batch<B: AutodiffBackend>(
        &self,
        frozen: &Frozen<B>,
        dataset: &Dataset,
        indices: &[usize],
        dropout: &Dropout,
        seed: u64,
        micro_step: u64,
    ) -> Result<Batch<B::InnerBackend>> {
        let (host, empty) = match self {
            Features::Cached(cache) => (cache.read(indices)?, cache.empty_context()),
            Features::Live { empty_context } => (encode_entries(frozen, dataset, indices)?, empty_context.as_slice()),
        };
        let HostFeatures { shapes, style, mut context, mean, logvar } = host;
        let n = indices.len();
        let masks = dropout.masks(micro_step, n);
        let per_context = shapes.context[0] * shapes.context[1];
        for (k, mask) in masks.iter().enumerate() {
            if mask.text {
                context[k * per_context..(k + 1) * per_context].copy_from_slice(empty);
            }
        }
        let keep: Vec<f32> = masks.iter().map(|m| if m.style { 0.0 } else { 1.0 }).collect();
        let device = frozen.sd.device();
        let [channels, height, width] = shapes.latent;
        let latent_shape = [n, channels, height, width];
        let per_latent = channels * height * width;

        let mut rng = keyed_rng(b"noise\0\0\0", seed, micro_step);
        let timesteps: Vec<usize> = (0..n).map(|_| rng.random_range(0..frozen.num_train_timesteps())).collect();
        let mut noise = NoiseSource::new(rng.random());
        let posterior_noise = noise.normal(n * per_latent);
        let target_noise = noise.normal(n * per_latent);
        let tensor4 = |values: Vec<f32>, shape: [usize; 4]| Tensor::from_data(TensorData::new(values, shape), device);
        Ok(Batch {
            style_features: Tensor::from_data(TensorData::new(style, [n, shapes.style[0], shapes.style[1]]), device),
            context: Tensor::from_data(TensorData::new(context, [n, shapes.context[0], shapes.context[1]]), device),
            latent_mean: tensor4(mean, latent_shape),
            latent_logvar: tensor4(logvar, latent_shape),
            posterior_noise: tensor4(posterior_noise, latent_shape),
            keep_style: Tensor::from_data(TensorData::new(keep, [n, 1]), device),
            timesteps,
            noise: tensor4(target_noise, latent_shape),
        })
    }
}
