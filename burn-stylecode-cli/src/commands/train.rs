//! `stylecode train`: trains the style autoencoder and the control branch on
//! a frozen SD1.5 (burn_stylecode::train), resumably.

use crate::backend::{dispatch, BackendKind, Job};
use anyhow::{Context, Result};
use burn::backend::Autodiff;
use burn::prelude::Backend;
use burn_stylecode::train::{train, Event, Init, MixedPrecision, TrainConfig};
use burn_stylecode::WeightsDir;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::process::ExitCode;

/// Settings left out keep the paper's defaults, or with --resume the run's own.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Dataset folder holding manifest.jsonl.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Run folder: config, metrics, cache, checkpoints, validation grids.
    #[arg(long, value_name = "RUN_DIR")]
    out: PathBuf,
    /// Weights folder (default: $STYLECODE_WEIGHTS, else the platform data folder).
    #[arg(long, value_name = "DIR")]
    weights: Option<PathBuf>,
    /// Start from the weights folder's StyleCodes weights, or the paper's initialisation.
    #[arg(long, value_enum)]
    init: Option<InitArg>,
    /// Optimizer steps in all [default: 100000].
    #[arg(long)]
    steps: Option<u64>,
    /// Samples per micro-batch [default: 5].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Micro-batches accumulated per optimizer step [default: 5].
    #[arg(long)]
    grad_accum: Option<usize>,
    /// Learning rate [default: 1e-6].
    #[arg(long)]
    lr: Option<f64>,
    /// Learning-rate schedule after the warmup [default: constant].
    #[arg(long, value_parser = ["constant", "cosine"])]
    lr_schedule: Option<String>,
    /// Linear warmup steps [default: 0].
    #[arg(long)]
    warmup: Option<u64>,
    /// AdamW weight decay [default: 1e-2].
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Global gradient-norm clipping, 0 for none [default: 1.0].
    #[arg(long)]
    max_grad_norm: Option<f64>,
    /// Side of the square training images, a multiple of 8 [default: 512].
    #[arg(long)]
    resolution: Option<u32>,
    /// Probability of training a sample with the empty prompt [default: 0.05].
    #[arg(long)]
    text_dropout: Option<f64>,
    /// Probability of training a sample without its style [default: 0.05].
    #[arg(long)]
    style_dropout: Option<f64>,
    /// Precision of the frozen networks [default: no].
    #[arg(long, value_enum)]
    mixed_precision: Option<PrecisionArg>,
    /// Write a checkpoint every N steps (and at the end) [default: 500].
    #[arg(long, value_name = "N")]
    checkpoint_every: Option<u64>,
    /// Checkpoints to keep [default: 3].
    #[arg(long, value_name = "N")]
    keep: Option<usize>,
    /// Continue the run in RUN_DIR from its newest checkpoint.
    #[arg(long)]
    resume: bool,
    /// Validate every N steps (needs --validation).
    #[arg(long, value_name = "N")]
    validate_every: Option<u64>,
    /// JSON Lines of {"style", "prompt", "seed"} for validation grids and scores.
    #[arg(long, value_name = "FILE")]
    validation: Option<PathBuf>,
    /// Seed of the data order, dropout, noise and initialisation [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// Leave out bad manifest entries (listed in RUN_DIR/skipped.jsonl).
    #[arg(long)]
    skip_bad: bool,
    /// Compute the frozen features per batch instead of caching them in RUN_DIR/cache.
    #[arg(long)]
    no_cache: bool,
    /// Refuse a run estimated to need more memory than this (e.g. 16G; one
    /// over the machine's available memory is always refused).
    #[arg(long, value_name = "BYTES", value_parser = super::generate::parse_bytes)]
    max_memory: Option<u64>,
    /// Compute backend.
    #[arg(long, value_enum, default_value = "cpu")]
    backend: BackendKind,
    /// No progress bar; print only the summary.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum InitArg {
    Official,
    Paper,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum PrecisionArg {
    No,
    Bf16,
    F16,
}

impl Args {
    /// The run's settings: the saved ones when resuming, else the defaults,
    /// overridden by the flags given.
    fn config(&self) -> Result<TrainConfig> {
        let saved = self.out.join("config.json");
        let mut c = match (self.resume, saved.is_file()) {
            (true, true) => {
                let text = std::fs::read_to_string(&saved).with_context(|| format!("{}", saved.display()))?;
                serde_json::from_str(&text).with_context(|| format!("{}: not a training config", saved.display()))?
            }
            _ => TrainConfig { weights: WeightsDir::resolve(None).root().to_path_buf(), ..TrainConfig::default() },
        };
        macro_rules! set {
            ($($field:ident),*) => {$( if let Some(value) = self.$field.clone() { c.$field = value; } )*};
        }
        set!(data, weights, steps, batch_size, grad_accum, lr, lr_schedule, warmup, weight_decay, max_grad_norm);
        set!(resolution, text_dropout, style_dropout, checkpoint_every, keep, validate_every, seed);
        if let Some(init) = self.init {
            c.init = match init {
                InitArg::Official => Init::Official,
                InitArg::Paper => Init::Paper,
            };
        }
        if let Some(precision) = self.mixed_precision {
            c.mixed_precision = match precision {
                PrecisionArg::No => MixedPrecision::No,
                PrecisionArg::Bf16 => MixedPrecision::Bf16,
                PrecisionArg::F16 => MixedPrecision::F16,
            };
        }
        if self.validation.is_some() {
            c.validation = self.validation.clone();
        }
        c.skip_bad |= self.skip_bad;
        c.cache &= !self.no_cache;
        c.max_memory = self.max_memory;
        if c.data.as_os_str().is_empty() {
            anyhow::bail!("--data DIR is required (the folder holding manifest.jsonl)");
        }
        Ok(c)
    }
}

pub fn run(args: Args) -> Result<ExitCode> {
    let config = args.config()?;
    dispatch(args.backend, TrainJob { args, config })?
}

struct TrainJob {
    args: Args,
    config: TrainConfig,
}

impl Job for TrainJob {
    type Output = Result<ExitCode>;

    fn run<B: Backend>(self, device: B::Device) -> Result<ExitCode> {
        let TrainJob { args, config } = self;
        let bar = if args.quiet { ProgressBar::hidden() } else { ProgressBar::new(config.steps) };
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg} ({eta})")
                .expect("valid template"),
        );
        let mut smoothed: Option<f64> = None;
        let summary = train::<Autodiff<B>>(&config, &args.out, args.resume, &device, |event| match event {
            Event::Caching { done, total } => bar.set_message(format!("caching features {done}/{total}")),
            Event::Resumed { step } => {
                bar.set_position(step);
                bar.reset_eta();
                bar.println(format!("resumed at step {step}"));
            }
            Event::Step(record) => {
                // An exponential moving average, as most trainers show.
                let loss = smoothed.map_or(record.loss, |s| 0.9 * s + 0.1 * record.loss);
                smoothed = Some(loss);
                bar.set_position(record.step);
                bar.set_message(format!("loss {loss:.4} lr {:.2e} {:.2} samples/s", record.lr, record.samples_per_s));
            }
            Event::Checkpoint(checkpoint) => {
                bar.println(format!("checkpoint {}", checkpoint.dir.display()));
            }
            Event::Validation(report) => bar.println(format!(
                "validation step {}: style similarity {:.4}, {}",
                report.step,
                report.similarity,
                report.grid.display()
            )),
        });
        bar.finish_and_clear();
        let summary = summary?;
        match &summary.last_checkpoint {
            Some(checkpoint) => {
                println!("trained {} steps; last checkpoint {}", summary.steps, checkpoint.dir.display())
            }
            None => println!("trained {} steps", summary.steps),
        }
        Ok(ExitCode::SUCCESS)
    }
}
