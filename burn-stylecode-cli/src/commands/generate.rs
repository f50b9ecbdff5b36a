use crate::backend::{dispatch, Job};
use crate::ModelArgs;
use anyhow::{bail, Context, Result};
use burn::prelude::{Backend, Tensor};
use burn::tensor::DType;
use burn_stylecode::png_text::write_png;
use burn_stylecode::code::blend;
use burn_stylecode::preprocess::load_rgb;
use burn_stylecode::sd::pipeline::{Settings, StableDiffusion, StyleCondition};
use burn_stylecode::style_control::StyleCodes;
use burn_stylecode::{StyleCode, StyleEncoder, WeightedCode};
use burn_stylecode::sd::schedulers::SchedulerKind;
use burn_stylecode::WeightsDir;
use indicatif::{ProgressBar, ProgressStyle};
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
    /// With --style-image: use the latent as is, not its 6-bit code.
    #[arg(long, requires = "style_image")]
    exact_style: bool,
    /// Conditioning scale of the style, 0..=1.
    #[arg(long, default_value_t = 0.9, value_parser = parse_scale)]
    style_scale: f64,
    /// Seed of image 1; image k uses seed + k - 1. Random if not given.
    #[arg(long)]
    seed: Option<u64>,
    /// Pixels, a multiple of 8 (of the VAE's scale factor).
    #[arg(long, default_value_t = 512)]
    width: usize,
    /// Pixels, a multiple of 8 (of the VAE's scale factor).
    #[arg(long, default_value_t = 512)]
    height: usize,
    /// Number of images.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
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
        let styled = !args.style.is_empty() || args.style_image.is_some();
        let settings = Settings {
            steps: args.steps,
            guidance_scale: args.cfg.unwrap_or(if styled { 3.0 } else { 7.5 }),
            scheduler: args.scheduler,
            karras: args.karras.then_some(true),
            width: args.width,
            height: args.height,
        };
        if args.karras && !args.scheduler.supports_karras() {
            bail!("--karras does not apply to the {} scheduler", args.scheduler);
        }
        // Check every target before any work, so nothing is lost or half done.
        let outputs = output_paths(&args.out, args.num);
        if !args.overwrite {
            if let Some(existing) = outputs.iter().find(|p| p.exists()) {
                bail!("{} exists (pass --overwrite to replace it)", existing.display());
            }
        }
        let dtype = match args.dtype.as_deref() {
            Some("f16") => DType::F16,
            Some(_) => DType::F32,
            None if args.model.backend == crate::backend::BackendKind::Cpu => DType::F32,
            None => DType::F16,
        };
        let weights = WeightsDir::resolve(args.model.weights.clone());
        let base = args.base.clone().unwrap_or_else(|| weights.sd15_dir());
        let sd = StableDiffusion::<B>::load(&base, dtype, &device).with_context(|| format!("loading SD1.5 from {}", base.display()))?;
        let style = match styled {
            true => Some(load_style::<B>(&args, &weights, &base, dtype, &device)?),
            false => None,
        };

        let first_seed = args.seed.unwrap_or_else(rand::random);
        let progress = progress_bar(args.quiet, u64::from(args.num) * args.steps as u64);
        let mut index = 0usize;
        for batch in outputs.chunks(args.batch_size as usize) {
            let seeds: Vec<u64> = (0..batch.len()).map(|k| first_seed.wrapping_add((index + k) as u64)).collect();
            let prompts = vec![args.prompt.clone(); batch.len()];
            let negatives = vec![args.negative.clone(); batch.len()];
            let condition = style.as_ref().map(|(codes, latent, _)| StyleCondition {
                codes,
                latents: Tensor::<B, 1>::from_floats(latent.as_slice(), &device).unsqueeze::<2>().repeat_dim(0, batch.len()),
                scale: args.style_scale,
            });
            let step = |_, _| progress.inc(batch.len() as u64);
            let images = sd.generate(&prompts, &negatives, &seeds, &settings, condition.as_ref(), step)?;
            for ((path, image), seed) in batch.iter().zip(&images).zip(&seeds) {
                let mut text = metadata(&args, &settings, *seed);
                if let Some((_, _, code)) = &style {
                    text.push(("stylecode".to_string(), code.clone()));
                    text.push(("style_scale".to_string(), args.style_scale.to_string()));
                }
                write_png(path, image, &text, args.overwrite)?;
                progress.suspend(|| println!("{}", path.display()));
            }
            index += batch.len();
        }
        progress.finish_and_clear();
        Ok(ExitCode::SUCCESS)
    }
}

/// The style to generate in: the control weights, the latent the decoder
/// gets, and the code to record (for a blend, the blend's nearest code).
fn load_style<B: Backend>(
    args: &Args,
    weights: &WeightsDir,
    base: &Path,
    dtype: DType,
    device: &B::Device,
) -> Result<(StyleCodes<B>, [f32; 20], String)> {
    let unet_config = burn_stylecode::weights::loader::read_unet_config(&base.join("unet"))?;
    let codes = StyleCodes::<B>::load(weights, &unet_config, dtype, device).context("loading the StyleCodes weights")?;
    let (latent, code) = if let Some(image) = &args.style_image {
        let encoder = StyleEncoder::<B>::load(weights, dtype, device)?;
        let style = encoder.encode(&[load_rgb(image)?])?.remove(0);
        let latent = if args.exact_style { style.latent } else { style.code.latent() };
        println!("style code: {}", style.code);
        (latent, style.code.to_paper())
    } else {
        let (latent, version) = blend(&args.style)?;
        if version != codes.version {
            bail!(
                "the style code is for version {version} of the StyleCodes weights, but {} holds version {}",
                weights.stylecodes_dir().display(),
                codes.version
            );
        }
        let code = match args.style.as_slice() {
            [single] => single.code.to_paper(),
            _ => StyleCode::from_latent(&latent, version)?.to_paper(),
        };
        (latent, code)
    };
    Ok((codes, latent, code))
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

fn metadata(args: &Args, settings: &Settings, seed: u64) -> Vec<(String, String)> {
    let mut text = vec![
        ("prompt".to_string(), args.prompt.clone()),
        ("negative_prompt".to_string(), args.negative.clone()),
        ("seed".to_string(), seed.to_string()),
        ("steps".to_string(), settings.steps.to_string()),
        ("scheduler".to_string(), settings.scheduler.to_string()),
        ("guidance_scale".to_string(), settings.guidance_scale.to_string()),
        ("width".to_string(), settings.width.to_string()),
        ("height".to_string(), settings.height.to_string()),
    ];
    if args.karras {
        text.push(("karras".to_string(), "true".to_string()));
    }
    text
}

fn progress_bar(quiet: bool, total: u64) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    // Hidden automatically when stderr is not a terminal.
    let bar = ProgressBar::new(total);
    bar.set_style(ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps ({eta})").expect("valid template"));
    bar
}
