//! `stylecode reproduce`: an image made again from the recipe in its PNG.

use super::generate::{progress_bar, warn_unmatched};
use crate::backend::{dispatch, BackendKind, Job};
use crate::{load_image, ModelArgs};
use anyhow::{bail, Context, Result};
use burn::prelude::Backend;
use burn_stylecode::{read_png_text, write_png, Recipe};
use clap::ValueEnum;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A PNG made by `stylecode generate` or `stylecode serve`.
    #[arg(value_name = "IMAGE.png")]
    image: PathBuf,
    /// Output PNG (default: IMAGE-reproduced.png beside it, or -2, -3… if taken); never replaced.
    #[arg(long, short)]
    out: Option<PathBuf>,
    /// Go on, with a warning, when the weights, a LoRA or the init image differ from those recorded.
    #[arg(long)]
    allow_different_weights: bool,
    /// A LoRA file the recipe names (matched by file name); repeat for each.
    #[arg(long, value_name = "FILE")]
    lora: Vec<PathBuf>,
    /// The init image an img2img recipe started from.
    #[arg(long, value_name = "FILE")]
    init_image: Option<PathBuf>,
    /// Another SD1.5 fine-tune in the diffusers layout (default: WEIGHTS/sd15).
    #[arg(long, value_name = "DIR")]
    base: Option<PathBuf>,
    /// Weights folder (default: $STYLECODE_WEIGHTS, else the platform data folder).
    #[arg(long, value_name = "DIR")]
    weights: Option<PathBuf>,
    /// Compute backend (default: the one recorded).
    #[arg(long, value_enum)]
    backend: Option<BackendKind>,
    /// Weight precision (default: the one recorded).
    #[arg(long, value_parser = ["f16", "f32"])]
    dtype: Option<String>,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let text = read_png_text(&args.image)?;
    let recipe = Recipe::from_text_chunks(&text)
        .with_context(|| format!("{} was not made by stylecode (no recipe in it)", args.image.display()))?;
    let recorded_backend = recipe.backend.as_deref().and_then(|name| BackendKind::from_str(name, true).ok());
    let backend = args.backend.or(recorded_backend).unwrap_or(BackendKind::Cpu);
    let recorded_dtype = recipe.dtype.as_deref().filter(|d| matches!(*d, "f16" | "f32"));
    let dtype = args.dtype.clone().or(recorded_dtype.map(str::to_string));
    let model = ModelArgs { weights: args.weights.clone(), backend };
    let name = |kind: BackendKind| format!("{kind:?}").to_lowercase();
    let run_as = (name(backend), format!("{:?}", model.dtype(dtype.as_deref())).to_lowercase());
    let recorded = (recipe.backend.clone().unwrap_or_default(), recipe.dtype.clone().unwrap_or_default());
    if run_as != recorded {
        eprintln!(
            "warning: {} was made on {}/{}, this run is on {}/{}: the pixels may differ",
            args.image.display(),
            if recorded.0.is_empty() { "an unrecorded backend" } else { &recorded.0 },
            if recorded.1.is_empty() { "an unrecorded dtype" } else { &recorded.1 },
            run_as.0,
            run_as.1
        );
    }
    let out = match &args.out {
        Some(out) if out.exists() => {
            bail!("{} exists; reproduce never replaces a file (choose another --out)", out.display())
        }
        Some(out) => out.clone(),
        None => free_path(&args.image),
    };
    dispatch(backend, ReproduceJob { args, recipe, model, dtype, out })?
}

/// `IMAGE-reproduced.png` beside the image, or `…-reproduced-N.png` if taken.
fn free_path(image: &Path) -> PathBuf {
    let stem = image.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
    (1..)
        .map(|n| match n {
            1 => image.with_file_name(format!("{stem}-reproduced.png")),
            n => image.with_file_name(format!("{stem}-reproduced-{n}.png")),
        })
        .find(|path| !path.exists())
        .expect("an unbounded range")
}

struct ReproduceJob {
    args: Args,
    recipe: Recipe,
    model: ModelArgs,
    dtype: Option<String>,
    out: PathBuf,
}

impl Job for ReproduceJob {
    type Output = Result<ExitCode>;

    fn run<B: Backend>(self, device: B::Device) -> Result<ExitCode> {
        let ReproduceJob { args, recipe, model, dtype, out } = self;
        let mut styles = model.style_codes::<B>(dtype.as_deref(), device);
        if let Some(base) = &args.base {
            styles = styles.with_sd15_dir(base.clone());
        }
        let init = match &args.init_image {
            Some(path) => Some((path.as_path(), load_image(path, false)?)),
            None => None,
        };
        let replay = styles.replay(&recipe, &args.lora, init).map_err(|e| match e {
            burn_stylecode::Error::InvalidRequest(message) if message.contains("was not given") => {
                let flag = if message.contains("LoRA") { "--lora FILE" } else { "--init-image FILE" };
                anyhow::anyhow!("{message}: pass it with {flag}")
            }
            other => other.into(),
        })?;
        for note in &replay.unchecked {
            eprintln!("warning: {note}");
        }
        if !replay.differences.is_empty() {
            if !args.allow_different_weights {
                bail!(
                    "{} cannot be made again as recorded: {} (pass --allow-different-weights to go on anyway)",
                    args.image.display(),
                    replay.differences.join("; ")
                );
            }
            for difference in &replay.differences {
                eprintln!("warning: {difference}; the image will differ");
            }
        }
        if !replay.request.settings.loras.is_empty() {
            warn_unmatched(&styles.stable_diffusion_with(&replay.request.settings.loras)?.loras);
        }
        let progress = progress_bar(args.quiet, recipe.steps as u64);
        let made = styles
            .generate(&replay.request, |_| {
                progress.inc(1);
                ControlFlow::Continue(())
            })?
            .remove(0);
        progress.finish_and_clear();
        write_png(&out, &made.image, &made.recipe.text_chunks(), false)?;
        println!("{}", out.display());
        let original = load_image(&args.image, false)?;
        if original == made.image {
            eprintln!("the pixels are identical to {}", args.image.display());
        } else {
            let differing = original.as_raw().iter().zip(made.image.as_raw()).filter(|(a, b)| a != b).count();
            eprintln!(
                "warning: the pixels differ from {} ({differing} of {} values)",
                args.image.display(),
                original.as_raw().len()
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}
