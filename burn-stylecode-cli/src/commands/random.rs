use anyhow::Result;
use burn_stylecode::style::code::{random_code, OFFICIAL_VERSION};
use burn_stylecode::CodeFormat;
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
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed.unwrap_or_else(rand::random));
    let code = random_code(&mut || rng.random(), args.version)?;
    println!("{}", code.format(args.format));
    Ok(ExitCode::SUCCESS)
}
