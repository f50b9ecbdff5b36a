//! `cargo xtask bench-import`: how long importing a full-size SD1.5 single
//! file takes, and how long the imported weights take to open.
//!
//! It writes a random checkpoint with every tensor of SD1.5 under its
//! original LDM name and shape (f16: ~2.1 GB) into a temporary folder,
//! imports it, reruns the import (which only verifies), opens the imported
//! files as the loaders do (mmap + header), reads every tensor, loads the
//! whole pipeline on burn-flex in f32 and f16 as `stylecode generate` does,
//! then deletes everything. Warm page cache: the numbers are for a warm disk.

use anyhow::{Context, Result};
use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::DType;
use burn_stylecode::import::{expected, sd15_from_single_file, ImportOptions, Sd15Configs, WeightDtype};
use burn_stylecode::sd::pipeline::StableDiffusion;
use burn_stylecode::sd::text_context::TextContext;
use burn_stylecode::sd::{clip::ClipTextConfig, unet_2d::UNetConfig, vae::VaeConfig};
use burn_stylecode::weights::safetensors::TensorFile;
use burn_stylecode::weights::JsonConfig;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct BenchImportArgs {
    /// Where to make the temporary folder (default: the system's).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Storage type of the imported weights.
    #[arg(long, default_value = "f16", value_parser = |s: &str| s.parse::<WeightDtype>())]
    pub dtype: WeightDtype,
    /// Start-up loads timed per dtype.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Keep the temporary folder.
    #[arg(long)]
    pub keep: bool,
}

/// xorshift64*: cheap, reproducible bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// A safetensors file of random f16 values, written as a stream.
fn write_random_checkpoint(path: &Path, tensors: &[(String, Vec<usize>)]) -> Result<u64> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in tensors {
        let len = shape.iter().product::<usize>() * 2;
        header.insert(
            name.clone(),
            serde_json::json!({ "dtype": "F16", "shape": shape, "data_offsets": [offset, offset + len] }),
        );
        offset += len;
    }
    let mut text = serde_json::Value::Object(header).to_string();
    while !(8 + text.len()).is_multiple_of(8) {
        text.push(' ');
    }
    let mut out = BufWriter::with_capacity(8 << 20, std::fs::File::create(path)?);
    out.write_all(&(text.len() as u64).to_le_bytes())?;
    out.write_all(text.as_bytes())?;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = offset;
    while left > 0 {
        let n = left.min(chunk.len());
        for pair in chunk[..n].chunks_exact_mut(8) {
            // Four f16 values in ±[0.25, 0.5): sign, a fixed exponent, random mantissa.
            let r = rng.next();
            for (i, b) in pair.chunks_exact_mut(2).enumerate() {
                let bits = (((r >> (16 * i)) as u16) & 0x83ff) | 0x3400;
                b.copy_from_slice(&bits.to_le_bytes());
            }
        }
        out.write_all(&chunk[..n])?;
        left -= n;
    }
    out.flush()?;
    Ok(8 + text.len() as u64 + offset as u64)
}

fn seconds(start: Instant) -> f64 {
    start.elapsed().as_secs_f64()
}

pub fn run(args: &BenchImportArgs) -> Result<()> {
    let base = match &args.dir {
        Some(dir) => tempfile::Builder::new().prefix("burn-stylecode-bench-").tempdir_in(dir)?,
        None => tempfile::Builder::new().prefix("burn-stylecode-bench-").tempdir()?,
    };
    let root = base.path().to_path_buf();
    let configs = Sd15Configs::standard();
    let config_error = |what: &str, e: String| anyhow::anyhow!("the built-in SD1.5 {what}: {e}");
    let unet = UNetConfig::from_json(&configs.unet).map_err(|e| config_error("unet/config.json", e))?;
    let vae = VaeConfig::from_json(&configs.vae).map_err(|e| config_error("vae/config.json", e))?;
    let clip =
        ClipTextConfig::from_json(&configs.text_encoder).map_err(|e| config_error("text_encoder/config.json", e))?;
    let tensors: Vec<(String, Vec<usize>)> = expected::ldm_single_file(&unet, &vae, &clip)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .into_iter()
        .map(|t| (t.ldm, t.shape))
        .collect();

    // A stand-in tokenizer: the import copies it; the start-up load builds it.
    let tokenizer = root.join("tokenizer");
    std::fs::create_dir_all(&tokenizer)?;
    std::fs::write(tokenizer.join("vocab.json"), "{\"a</w>\": 0, \"<|startoftext|>\": 1, \"<|endoftext|>\": 2}\n")?;
    std::fs::write(tokenizer.join("merges.txt"), "#version: 0.2\n")?;
    let configs = configs.with_tokenizer(&tokenizer);

    let checkpoint = root.join("sd15-random-ldm.safetensors");
    let start = Instant::now();
    let size = write_random_checkpoint(&checkpoint, &tensors).context("writing the random checkpoint")?;
    let generate = seconds(start);
    println!(
        "random SD1.5 single file: {} tensors, {:.2} GB (f16), written in {generate:.1} s",
        tensors.len(),
        size as f64 / 1e9
    );

    let out = root.join("weights");
    let options = ImportOptions::new(args.dtype);
    let start = Instant::now();
    let report = sd15_from_single_file(&checkpoint, &out, &configs, &options)?;
    let import = seconds(start);
    let written: u64 = report.manifest.files.iter().map(|f| f.bytes).sum();
    println!(
        "import ({} out): {import:.1} s for {:.2} GB in, {:.2} GB out \
         ({:.0} MB/s of input; includes sha256 of the source and of every output)",
        args.dtype.name(),
        size as f64 / 1e9,
        written as f64 / 1e9,
        size as f64 / 1e6 / import
    );

    let start = Instant::now();
    let again = sd15_from_single_file(&checkpoint, &out, &configs, &options)?;
    anyhow::ensure!(again.skipped, "the rerun should have skipped");
    println!("rerun (complete and verified, skipped): {:.1} s", seconds(start));

    let files = [
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
    ];
    let start = Instant::now();
    let mut count = 0;
    let mut opened = Vec::new();
    for rel in files {
        let file = TensorFile::open(report.dir.join(rel))?;
        count += file.keys().filter(|k| file.shape(k).is_some()).count();
        opened.push(file);
    }
    let open = seconds(start);
    println!("start-up: mmap + header of the 3 files, {count} tensor headers: {:.1} ms", open * 1e3);

    let start = Instant::now();
    let mut values = 0usize;
    for file in &opened {
        for key in file.keys() {
            values += file.read_f32(key)?.len();
        }
    }
    let read = seconds(start);
    println!("start-up: every tensor read to f32 through the mmap ({:.2} G values): {read:.2} s", values as f64 / 1e9);

    // Start-up as `stylecode generate` does it, through the real loaders.
    // A weight stored in the dtype asked for is borrowed from the memory map;
    // its pages are then mapped in on first use (warm page cache: minor faults).
    // The first UNet step after the load (a small 8×8 latent) pays for
    // that; the second step shows what the step itself costs.
    let device = Default::default();
    for (name, dtype) in [("f32", DType::F32), ("f16", DType::F16)] {
        let mut times = Vec::new();
        let mut steps = Vec::new();
        for _ in 0..args.repeats {
            let start = Instant::now();
            let model = StableDiffusion::<Flex>::load(&report.dir, dtype, &device)?;
            times.push(seconds(start));
            let step = || {
                let start = Instant::now();
                let sample = Tensor::<Flex, 4>::zeros([1, 4, 8, 8], (&device, dtype));
                let context = TextContext::new(Tensor::<Flex, 3>::zeros([1, 77, 768], (&device, dtype)));
                let timestep = Tensor::<Flex, 1>::from_data(TensorData::new(vec![500f32], [1]), (&device, dtype));
                model.unet.forward(sample, timestep, &context).into_data();
                seconds(start)
            };
            steps.push((step(), step()));
            drop(model);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "start-up: StableDiffusion::load on burn-flex as {name} from {} files (tokenizer, CLIP, UNet, VAE): \
             median {:.3} s, best {:.3} s of {}",
            args.dtype.name(),
            times[times.len() / 2],
            times[0],
            times.len()
        );
        let first: Vec<String> = steps.iter().map(|(first, second)| format!("{first:.2}/{second:.2}")).collect();
        println!("  then a UNet step at 8×8, first/second after each load: {} s", first.join(", "));
    }

    if args.keep {
        println!("kept: {}", base.keep().display());
    }
    Ok(())
}
