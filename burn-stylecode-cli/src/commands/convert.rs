use anyhow::Result;
use burn_stylecode::{CodeFormat, StyleCode};
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A stylecode in either form.
    code: String,
    /// Target form: `paper` (21 characters, with version) or `official` (27).
    #[arg(long)]
    to: CodeFormat,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let (code, _) = StyleCode::parse(&args.code)?;
    println!("{}", code.format(args.to));
    Ok(ExitCode::SUCCESS)
}
