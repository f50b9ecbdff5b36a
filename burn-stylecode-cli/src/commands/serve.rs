use crate::serve::{ServeConfig, DEFAULT_UPLOAD_LIMIT};
use crate::ModelArgs;
use anyhow::{bail, Result};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address to listen on; anything but loopback needs --token (or --insecure).
    #[arg(long, default_value = "127.0.0.1:7860")]
    bind: SocketAddr,
    #[command(flatten)]
    model: ModelArgs,
    /// Weight precision of generation (default: f16 on GPU backends, f32 on the CPU); codes are always made in f32.
    #[arg(long, value_parser = ["f16", "f32"])]
    dtype: Option<String>,
    /// Folder for generated PNGs (default: the platform data folder's burn-stylecode/outputs).
    #[arg(long, value_name = "DIR")]
    outputs: Option<PathBuf>,
    /// Generation jobs that may wait behind the running one; more get 429.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    queue: u32,
    /// Every API call must carry `Authorization: Bearer TOKEN`.
    #[arg(long)]
    token: Option<String>,
    /// Allow a non-loopback --bind without --token (anyone who can reach it can use it).
    #[arg(long)]
    insecure: bool,
    /// Folder of LoRA `.safetensors` files that requests may name (default: none).
    #[arg(long, value_name = "DIR")]
    loras: Option<PathBuf>,
    /// Refuse (400) a generation estimated to need more memory than this (e.g. 8G, 512M;
    /// one over the machine's available memory is always refused).
    #[arg(long, value_name = "BYTES", value_parser = crate::commands::generate::parse_bytes)]
    max_memory: Option<u64>,
    /// Largest request body (uploads), in MiB.
    #[arg(long, default_value_t = DEFAULT_UPLOAD_LIMIT >> 20, value_name = "MIB")]
    upload_limit: usize,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let loopback = args.bind.ip().is_loopback();
    if args.token.as_deref() == Some("") {
        bail!("--token is empty");
    }
    if !loopback && args.token.is_none() {
        if !args.insecure {
            bail!(
                "--bind {} is not a loopback address: pass --token TOKEN so only callers with it get in \
                 (or --insecure to let anyone who can reach it in)",
                args.bind
            );
        }
        eprintln!("warning: --insecure: anyone who can reach {} can use this server", args.bind);
    }
    // The models load on the first request; a missing one is reported now,
    // before the server answers anyone.
    let weights = args.model.weights_dir();
    weights.siglip_config()?;
    weights.stylecodes_weights()?;
    weights.sd15()?;
    if let Some(dir) = &args.loras {
        if !dir.is_dir() {
            bail!("--loras {}: not a folder", dir.display());
        }
    }
    let outputs = args.outputs.unwrap_or_else(|| {
        dirs::data_dir().unwrap_or_else(|| PathBuf::from(".")).join("burn-stylecode").join("outputs")
    });
    crate::serve::run(ServeConfig {
        bind: args.bind,
        model: args.model,
        dtype: args.dtype,
        outputs,
        queue: args.queue as usize,
        token: args.token,
        upload_limit: args.upload_limit << 20,
        loras: args.loras,
        max_memory: args.max_memory,
    })?;
    Ok(ExitCode::SUCCESS)
}
