use anyhow::Result;
use burn_stylecode::style::code::{random_code, CodeError, OFFICIAL_VERSION};
use burn_stylecode::{CodeFormat, StyleCode};
use rand::{Rng, SeedableRng};
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Seed, for a reproducible code.
    #[arg(long)]
    seed: Option<u64>,
    /// Version character of the weights the code is for.
    #[arg(long, default_value_t = OFFICIAL_VERSION)]
    version: char,
    #[arg(long, default_value = "paper")]
    format: CodeFormat,
}

pub fn run(args: Args) -> Result<ExitCode> {
    println!("{}", code(args.seed, args.version)?.format(args.format));
    Ok(ExitCode::SUCCESS)
}

/// The code of `seed` (a random seed if none), for weights of `version`.
pub fn code(seed: Option<u64>, version: char) -> Result<StyleCode, CodeError> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed.unwrap_or_else(rand::random));
    random_code(&mut || rng.random(), version)
}
