//! `stylecode`: image style as a short code, and SD1.5 generation from it.

mod backend;
mod commands;
mod serve;

use backend::BackendKind;
use burn::tensor::DType;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "stylecode", version, about = "Encode an image's style as a short code", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options shared by the commands that run networks.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Weights folder (default: $STYLECODE_WEIGHTS, else the platform data folder).
    #[arg(long, value_name = "DIR")]
    weights: Option<PathBuf>,
    /// Compute backend.
    #[arg(long, value_enum, default_value = "cpu")]
    backend: BackendKind,
}

impl ModelArgs {
    /// The handle over the weights folder: `--dtype` if given, else f16 on
    /// GPU backends and f32 on the CPU.
    pub fn style_codes<B: burn::prelude::Backend>(
        &self,
        dtype: Option<&str>,
        device: B::Device,
    ) -> burn_stylecode::StyleCodes<B> {
        burn_stylecode::StyleCodes::new(self.weights_dir(), self.dtype(dtype), device)
            .with_backend_name(format!("{:?}", self.backend).to_lowercase())
    }

    pub fn weights_dir(&self) -> burn_stylecode::WeightsDir {
        burn_stylecode::WeightsDir::resolve(self.weights.clone())
    }

    /// `--dtype` if given, else f16 on GPU backends and f32 on the CPU.
    pub fn dtype(&self, dtype: Option<&str>) -> DType {
        match dtype {
            Some("f16") => DType::F16,
            Some(_) => DType::F32,
            None if self.backend == BackendKind::Cpu => DType::F32,
            None => DType::F16,
        }
    }
}

/// Decodes an image as PIL does; with `allow_truncated` (`--allow-truncated`)
/// a truncated or corrupt file is kept as far as it decodes, with a warning.
pub fn load_image(path: &std::path::Path, allow_truncated: bool) -> burn_stylecode::Result<image::RgbImage> {
    use burn_stylecode::decode::{decode_file, DecodeOptions};
    let decoded = decode_file(path, &DecodeOptions { allow_truncated, ..DecodeOptions::default() })?;
    if let Some(warning) = decoded.warning {
        eprintln!("warning: {}: {warning}; using what decoded", path.display());
    }
    Ok(decoded.image)
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the stylecode of each image.
    Encode(commands::encode::Args),
    /// Show what a stylecode holds: format, version, values, latent.
    Inspect(commands::inspect::Args),
    /// Rewrite a stylecode in the other format.
    Convert(commands::convert::Args),
    /// Generate SD1.5 images from a prompt, optionally in a style.
    Generate(Box<commands::generate::Args>),
    /// Write an SD1.5 diffusers folder with LoRAs baked in.
    MergeLora(commands::merge_lora::Args),
    /// Blend codes: a weighted mean of their latents.
    Mix(commands::mix::Args),
    /// Print a random stylecode.
    Random(commands::random::Args),
    /// Generate an image again from the recipe in its PNG, checking the weights first.
    Reproduce(Box<commands::reproduce::Args>),
    /// Train StyleCodes weights on a dataset of (style, target, prompt).
    Train(Box<commands::train::Args>),
    /// Write a training checkpoint into a weights folder with a new version.
    Export(commands::export::Args),
    /// A web page and HTTP API for encoding and generation.
    Serve(Box<commands::serve::Args>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Encode(args) => commands::encode::run(args),
        Command::Inspect(args) => commands::inspect::run(args),
        Command::Convert(args) => commands::convert::run(args),
        Command::Generate(args) => commands::generate::run(*args),
        Command::MergeLora(args) => commands::merge_lora::run(args),
        Command::Mix(args) => commands::mix::run(args),
        Command::Random(args) => commands::random::run(args),
        Command::Reproduce(args) => commands::reproduce::run(*args),
        Command::Train(args) => commands::train::run(*args),
        Command::Export(args) => commands::export::run(args),
        Command::Serve(args) => commands::serve::run(*args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
