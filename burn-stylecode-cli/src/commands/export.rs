//! `stylecode export`: a training checkpoint → `OUT/stylecodes/` of a
//! weights folder, with a new code version.

use anyhow::{bail, Result};
use burn_stylecode::train::checkpoint::{export, find};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The training run's folder (`stylecode train --out`).
    #[arg(value_name = "RUN_DIR")]
    run_dir: PathBuf,
    /// `latest` or a step number.
    #[arg(long, default_value = "latest")]
    checkpoint: String,
    /// The version character the weights' codes end with (not `1`, the official model's).
    #[arg(long)]
    version: char,
    /// The weights folder to write `stylecodes/` into.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let step = match args.checkpoint.as_str() {
        "latest" => None,
        text => match text.parse::<u64>() {
            Ok(step) => Some(step),
            Err(_) => bail!("--checkpoint is `{text}`: expected `latest` or a step number"),
        },
    };
    let checkpoint = find(&args.run_dir, step)?;
    let dir = export(&checkpoint, args.version, &args.out)?;
    println!("exported step {} as version {} to {}", checkpoint.step, args.version, dir.display());
    Ok(ExitCode::SUCCESS)
}
