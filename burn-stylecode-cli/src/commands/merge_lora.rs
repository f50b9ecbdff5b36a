use anyhow::Result;
use burn_stylecode::import::{sd15_with_loras, WeightDtype};
use burn_stylecode::LoraSpec;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The diffusers SD1.5 folder to start from.
    #[arg(long, value_name = "DIR")]
    base: PathBuf,
    /// LoRA to bake in, `FILE`, `FILE:WEIGHT` or `FILE:UNET_WEIGHT:TEXT_ENCODER_WEIGHT`; repeatable.
    #[arg(long, value_name = "FILE[:WEIGHT]", required = true)]
    lora: Vec<LoraSpec>,
    /// The folder to write (replaced as a whole once complete).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Storage type of the written weights (the merge itself is in f32).
    #[arg(long, default_value = "f32")]
    dtype: WeightDtype,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let (report, loras) = sd15_with_loras(&args.base, &args.lora, &args.out, args.dtype)?;
    super::generate::warn_unmatched(&loras);
    for lora in &loras {
        println!("{}: {} modules", lora.spec, lora.modules());
    }
    println!("{}", report.dir.display());
    Ok(ExitCode::SUCCESS)
}
