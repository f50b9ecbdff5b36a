use anyhow::Result;
use burn_stylecode::StyleCode;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A stylecode, paper (21 characters) or official (27) form.
    code: String,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// What `--json` prints (and `stylecode serve`'s `/api/inspect` answers).
pub fn json(text: &str) -> Result<serde_json::Value, burn_stylecode::style::code::CodeError> {
    let (code, format) = StyleCode::parse(text)?;
    Ok(serde_json::json!({
        "format": format.name(),
        "version": code.version().to_string(),
        "values": code.values(),
        "latent": code.latent(),
    }))
}

pub fn run(args: Args) -> Result<ExitCode> {
    if args.json {
        println!("{}", json(&args.code)?);
        return Ok(ExitCode::SUCCESS);
    }
    let (code, format) = StyleCode::parse(&args.code)?;
    let values = code.values();
    let latent = code.latent();
    {
        println!("format:  {}", format.name());
        println!("version: {}", code.version());
        println!("values:  {}", values.map(|v| v.to_string()).join(" "));
        println!("latent:  {}", latent.map(|x| format!("{x:.4}")).join(" "));
    }
    Ok(ExitCode::SUCCESS)
}
