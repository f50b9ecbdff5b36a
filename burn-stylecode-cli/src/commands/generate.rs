use crate::backend::{dispatch, Job};
use crate::{load_image, ModelArgs};
use anyhow::{bail, Result};
use burn::prelude::Backend;
use burn_stylecode::sd::schedulers::SchedulerKind;
use burn_stylecode::{
    write_png, GenerateRequest, GenerateSettings, ImageSpec, InitImage, LoraSpec, Style, WeightedCode,
};
use indicatif::{ProgressBar, ProgressStyle};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// What to draw.
    #[arg(long, short)]
    prompt: String,
    /// What to steer away from.
    #[arg(long, short, default_value = "")]
    negative: String,
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Classifier-free guidance scale (default 7.5; 3 with a style, as the release).
    #[arg(long)]
    cfg: Option<f64>,
    /// Style code, `CODE` or `CODE:WEIGHT`; repeat to blend codes (weighted mean of their latents).
    #[arg(long, value_name = "CODE[:WEIGHT]", conflicts_with = "style_image")]
    style: Vec<WeightedCode>,
    /// Image to take the style from (encoded to a code first).
    #[arg(long, value_name = "IMG")]
    style_image: Option<PathBuf>,
    /// With --style-image: accept a truncated or corrupt image (with a warning).
    #[arg(long, requires = "style_image")]
    allow_truncated: bool,
    /// Refuse a batch estimated to need more memory than this (e.g. 8G, 512M;
    /// one over the machine's available memory is always refused).
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    max_memory: Option<u64>,
    /// With --style-image: use the latent as is, not its 6-bit code.
    #[arg(long, requires = "style_image")]
    exact_style: bool,
    /// Conditioning scale of the style, 0..=1.
    #[arg(long, default_value_t = 0.9, value_parser = parse_scale)]
    style_scale: f64,
    /// LoRA to merge (kohya, PEFT/diffusers, LyCORIS LoHa/LoKr `.safetensors`),
    /// `FILE`, `FILE:WEIGHT` or `FILE:UNET_WEIGHT:TEXT_ENCODER_WEIGHT`; repeat to add several.
    #[arg(long, value_name = "FILE[:WEIGHT]")]
    lora: Vec<LoraSpec>,
    /// Seed of image 1; image k uses seed + k - 1. Random if not given.
    #[arg(long)]
    seed: Option<u64>,
    /// Pixels, a multiple of 8 (default 512, or the init image's width rounded down to a multiple of 8).
    #[arg(long)]
    width: Option<usize>,
    /// Pixels, a multiple of 8 (default 512, or the init image's height rounded down to a multiple of 8).
    #[arg(long)]
    height: Option<usize>,
    /// img2img: start from this picture (resized to the size), as diffusers' img2img pipeline.
    #[arg(long, value_name = "IMG")]
    init_image: Option<PathBuf>,
    /// With --init-image: the share of the steps run again, 0 < S ≤ 1 (1: every step).
    #[arg(long, default_value_t = 0.8, requires = "init_image")]
    strength: f64,
    /// Number of images (at most 10000: each is listed and checked before any work).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    num: u32,
    /// Images per batch through the networks.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: u32,
    #[arg(long, default_value = "ddim", value_parser = parse_scheduler)]
    scheduler: SchedulerKind,
    /// Karras sigmas (euler, euler-a, dpmpp-2m).
    #[arg(long)]
    karras: bool,
    /// Output PNG; with --num N > 1, `stem-1.png` … `stem-N.png`.
    #[arg(long, short, default_value = "stylecode.png")]
    out: PathBuf,
    /// Replace existing files.
    #[arg(long)]
    overwrite: bool,
    /// Another SD1.5 fine-tune in the diffusers layout (default: WEIGHTS/sd15).
    #[arg(long, value_name = "DIR")]
    base: Option<PathBuf>,
    /// Weight precision (default: f16 on GPU backends, f32 on the CPU).
    #[arg(long, value_parser = ["f16", "f32"])]
    dtype: Option<String>,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    model: ModelArgs,
}

fn parse_scale(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if (0.0..=1.0).contains(&s) => Ok(s),
        _ => Err(format!("`{text}` is not a number between 0 and 1")),
    }
}

/// `1234`, `512K`, `512M`, `8G` or `1T` (powers of 1024; a trailing `B` or `iB` is allowed).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let upper = text.trim().to_ascii_uppercase();
    let number = upper.trim_end_matches("IB").trim_end_matches('B');
    let (digits, shift) = match number.chars().last() {
        Some('K') => (&number[..number.len() - 1], 10),
        Some('M') => (&number[..number.len() - 1], 20),
        Some('G') => (&number[..number.len() - 1], 30),
        Some('T') => (&number[..number.len() - 1], 40),
        _ => (number, 0),
    };
    let value: f64 = digits.trim().parse().map_err(|_| format!("`{text}` is not a size (e.g. 8G, 512M, 1000000)"))?;
    let bytes = value * (1u64 << shift) as f64;
    if !(bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("`{text}` is not a positive size under 16 EiB"));
    }
    Ok(bytes as u64)
}

fn parse_scheduler(name: &str) -> Result<SchedulerKind, String> {
    name.parse().map_err(|e: burn_stylecode::sd::schedulers::SchedulerError| e.to_string())
}

pub fn run(args: Args) -> Result<ExitCode> {
    let backend = args.model.backend;
    dispatch(backend, GenerateJob(args))?
}

struct GenerateJob(Args);

impl Job for GenerateJob {
    type Output = Result<ExitCode>;

    fn run<B: Backend>(self, device: B::Device) -> Result<ExitCode> {
        let args = self.0;
        let init = args.init_image.as_ref().map(|path| load_image(path, args.allow_truncated)).transpose()?;
        // Without a size, the init image's own, rounded down to a multiple of 8.
        let own = |side: Option<u32>| side.map_or(512, |side| (side as usize / 8 * 8).max(8));
        let width = args.width.unwrap_or_else(|| own(init.as_ref().map(|i| i.width())));
        let height = args.height.unwrap_or_else(|| own(init.as_ref().map(|i| i.height())));
        let settings = GenerateSettings {
            steps: args.steps,
            guidance_scale: args.cfg,
            scheduler: args.scheduler,
            karras: args.karras,
            width,
            height,
            style_scale: args.style_scale,
            loras: args.lora.clone(),
            init_image: init.map(|image| InitImage { image, strength: args.strength }),
        };
        settings.validate()?;
        // Check every target before any work, so nothing is lost or half done.
        let outputs = output_paths(&args.out, args.num);
        if !args.overwrite {
            if let Some(existing) = outputs.iter().find(|p| p.exists()) {
                bail!("{} exists (pass --overwrite to replace it)", existing.display());
            }
        }
        let mut styles = args.model.style_codes::<B>(args.dtype.as_deref(), device).with_max_memory(args.max_memory);
        if let Some(base) = &args.base {
            styles = styles.with_sd15_dir(base.clone());
        }
        if !args.lora.is_empty() {
            warn_unmatched(&styles.stable_diffusion_with(&args.lora)?.loras);
        }
        let style = if let Some(path) = &args.style_image {
            let encoded = styles.encode(&[load_image(path, args.allow_truncated)?])?.remove(0);
            println!("style code: {}", encoded.code);
            if args.exact_style {
                Style::Latent(encoded.latent)
            } else {
                Style::Codes(vec![encoded.code.into()])
            }
        } else if args.style.is_empty() {
            Style::None
        } else {
            Style::Codes(args.style.clone())
        };
        let first = ImageSpec {
            prompt: args.prompt.clone(),
            negative: args.negative.clone(),
            seed: args.seed.unwrap_or_else(rand::random),
            style,
        };
        let request = GenerateRequest::repeated(first, outputs.len(), settings);

        let steps = match &request.settings.init_image {
            Some(init) => args.steps - burn_stylecode::sd::pipeline::img2img_start(args.steps, init.strength)?,
            None => args.steps,
        };
        let progress = progress_bar(args.quiet, (outputs.len() * steps) as u64);
        let mut paths = outputs.iter();
        for batch in request.batches(args.batch_size as usize) {
            let images = styles.generate(&batch, |step| {
                progress.inc(step.batch as u64);
                ControlFlow::Continue(())
            })?;
            for (made, path) in images.iter().zip(&mut paths) {
                write_png(path, &made.image, &made.recipe.text_chunks(), args.overwrite)?;
                progress.suspend(|| println!("{}", path.display()));
            }
        }
        progress.finish_and_clear();
        Ok(ExitCode::SUCCESS)
    }
}

/// One warning per LoRA that has tensors this SD1.5 has no module for.
pub fn warn_unmatched(loras: &[burn_stylecode::sd::lora::Lora]) {
    for lora in loras.iter().filter(|l| !l.unmatched.is_empty()) {
        const SHOWN: usize = 8;
        let mut names: Vec<String> = lora.unmatched.iter().take(SHOWN).map(|k| format!("`{k}`")).collect();
        if lora.unmatched.len() > SHOWN {
            names.push(format!("and {} more", lora.unmatched.len() - SHOWN));
        }
        eprintln!(
            "warning: LoRA {}: {} tensor(s) match no module of this SD1.5 and are ignored: {}",
            lora.spec.path.display(),
            lora.unmatched.len(),
            names.join(", ")
        );
    }
}

/// `out.png` for one image; `out-1.png` … `out-N.png` for several.
fn output_paths(out: &Path, num: u32) -> Vec<PathBuf> {
    if num == 1 {
        return vec![out.to_path_buf()];
    }
    let stem = out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "stylecode".into());
    let ext = out.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_else(|| "png".into());
    (1..=num).map(|k| out.with_file_name(format!("{stem}-{k}.{ext}"))).collect()
}

pub fn progress_bar(quiet: bool, total: u64) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    // Hidden automatically when stderr is not a terminal.
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps ({eta})")
            .expect("valid template"),
    );
    bar
}
