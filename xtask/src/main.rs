//! `cargo xtask …`: project chores that are not part of the library or CLI.

mod bench;
mod bench_import;
mod hub;
mod import_weights;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Project chores: weight import, benchmarks, fixtures",
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Print how to regenerate the PyTorch parity fixtures.
    Fixtures,
    /// Bring the real checkpoints (StyleCodes, SigLIP, SD1.5) into the weights
    /// folder, verified, from local files or the HuggingFace hub.
    ImportWeights(import_weights::ImportArgs),
    /// burn-stylecode beside PyTorch on this machine: the UNet step (plain,
    /// styled, 8²), the VAE decode, a whole encode and a whole 20-step generate.
    Bench(bench::BenchArgs),
    /// Time importing a random full-size SD1.5 single file (~2 GB, made in a
    /// temporary folder and deleted), and opening the imported weights.
    BenchImport(bench_import::BenchImportArgs),
}

fn main() {
    if let Err(error) = run(Cli::parse().task) {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

fn run(task: Task) -> Result<()> {
    match task {
        Task::Fixtures => {
            println!(
                "The parity fixtures are made with PyTorch, by hand, outside CI:\n\
                 python3 -m venv /somewhere/outside/the/repo && \
                 /somewhere/.../bin/pip install torch transformers diffusers safetensors pillow numpy\n\
                 /somewhere/.../bin/python tests/fixtures/make_fixtures.py\n\
                 /somewhere/.../bin/python tests/fixtures/make_import_fixtures.py"
            );
            Ok(())
        }
        Task::ImportWeights(args) => import_weights::run(&args, &hub::HubEnv::from_env(args.offline)),
        Task::Bench(args) => bench::run(&args),
        Task::BenchImport(args) => bench_import::run(&args),
    }
}
