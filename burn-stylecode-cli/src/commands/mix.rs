use anyhow::Result;
use burn_stylecode::style::code::{blend, WeightedCode};
use burn_stylecode::{CodeFormat, StyleCode};
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Codes to blend, each `CODE` or `CODE:WEIGHT` (weight 1 by default).
    #[arg(required = true, value_name = "CODE[:WEIGHT]")]
    codes: Vec<WeightedCode>,
    /// Format of the printed code (the official form has no version).
    #[arg(long, default_value = "paper")]
    format: CodeFormat,
}

pub fn run(args: Args) -> Result<ExitCode> {
    println!("{}", mix(&args.codes)?.format(args.format));
    Ok(ExitCode::SUCCESS)
}

/// The code nearest the weighted mean of the codes' latents.
pub fn mix(codes: &[WeightedCode]) -> Result<StyleCode> {
    let (latent, version) = blend(codes)?;
    Ok(StyleCode::from_latent(&latent, version)?)
}
