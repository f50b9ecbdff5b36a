use crate::backend::{dispatch, Job};
use crate::{load_image, ModelArgs};
use anyhow::Result;
use burn::prelude::Backend;
use burn_stylecode::{read_png_text, CodeFormat, EncodedStyle, Recipe};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Images to encode (PNG or JPEG).
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    /// Code format to print.
    #[arg(long, default_value = "paper")]
    format: CodeFormat,
    /// One JSON object per line: {"path", "code", "latent"}.
    #[arg(long)]
    json: bool,
    /// Images per batch through the networks.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: u32,
    /// Encode truncated or corrupt images as far as they decode (with a warning).
    #[arg(long)]
    allow_truncated: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let backend = args.model.backend;
    dispatch(backend, EncodeJob(args))?
}

struct EncodeJob(Args);

impl Job for EncodeJob {
    type Output = Result<ExitCode>;

    fn run<B: Backend>(self, device: B::Device) -> Result<ExitCode> {
        let args = self.0;
        // f32 on every backend: codes are 6-bit roundings of the latent, and
        // must be the same wherever they are made.
        let styles = args.model.style_codes::<B>(Some("f32"), device);

        // Unreadable files are reported and skipped; the rest still get codes.
        let mut failed = false;
        let mut readable = Vec::new();
        for path in &args.images {
            match load_image(path, args.allow_truncated) {
                Ok(image) => readable.push((path, image)),
                Err(error) => {
                    eprintln!("error: {error}");
                    failed = true;
                }
            }
        }
        for batch in readable.chunks(args.batch_size as usize) {
            let images: Vec<_> = batch.iter().map(|(_, image)| image.clone()).collect();
            for ((path, _), style) in batch.iter().zip(styles.encode(&images)?) {
                println!("{}", line(path, &style, stored_code(path).as_deref(), args.format, args.json));
            }
        }
        Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
    }
}

/// The code a PNG made by `stylecode generate` carries, if any.
fn stored_code(path: &std::path::Path) -> Option<String> {
    Recipe::stored_code(&read_png_text(path).ok()?).map(str::to_string)
}

fn line(path: &std::path::Path, style: &EncodedStyle, stored: Option<&str>, format: CodeFormat, json: bool) -> String {
    let code = style.code.format(format);
    if json {
        let mut object =
            serde_json::json!({ "path": path.display().to_string(), "code": code, "latent": style.latent });
        if let Some(stored) = stored {
            object["stored_code"] = stored.into();
        }
        object.to_string()
    } else if let Some(stored) = stored {
        format!("{code} (generated with {stored})")
    } else {
        code
    }
}
