//! `stylecode`: image style as a short code, and SD1.5 generation from it.

mod backend;
mod commands;

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
        let dtype = match dtype {
            Some("f16") => DType::F16,
            Some(_) => DType::F32,
            None if self.backend == BackendKind::Cpu => DType::F32,
            None => DType::F16,
        };
        burn_stylecode::StyleCodes::new(burn_stylecode::WeightsDir::resolve(self.weights.clone()), dtype, device)
            .with_backend_name(format!("{:?}", self.backend).to_lowercase())
    }
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
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
