//! `cargo xtask bench`: burn-stylecode beside PyTorch on this machine, in
//! one run, with equal thread counts, and a table of medians and ratios.
//!
//! The rows:
//! - `unet-plain`, `unet-styled`, `vae-decode`, `unet-plain-8`: one network
//!   call on random full-size weights, in its own process per side
//!   (`burn-stylecode-cli/benches/unet_step.{rs,py}`), timed inside it after a
//!   warm-up;
//! - `encode`, `generate`: the whole `stylecode encode` of one image and the
//!   whole 20-step 512² `stylecode generate`, against their PyTorch twins
//!   (`benches/encode.py`, the release's pipeline; `benches/generate.py`,
//!   diffusers), each a fresh process timed from outside after a warm-up run,
//!   over one random full-size weights folder that both sides read
//!   (`benches/make_weights.py`).
//!
//! Every side uses the same number of threads (`--threads`, default: the
//! machine's cores) through `RAYON_NUM_THREADS` and `OMP_NUM_THREADS`.
//! Benchmark only on a quiet machine: a build beside it skews it 2–5×.

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Rows to run, comma-separated (default: all).
    #[arg(long, value_delimiter = ',', value_enum)]
    pub rows: Vec<Row>,
    /// Timed repeats of each row, after one warm-up (≥ 5 for figures worth
    /// quoting; the 8² step takes 8× as many).
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Threads on both sides (default: this machine's cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Python with torch, diffusers and transformers for the PyTorch twins
    /// (default: $PYTHON, else python3).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// burn backends of the network rows, comma-separated: cpu, wgpu, cuda
    /// (wgpu and cuda are built with their cargo features).
    #[arg(long, value_delimiter = ',', default_value = "cpu")]
    pub backends: Vec<String>,
    /// A weights folder made by `benches/make_weights.py` (or kept by
    /// `--keep`) for the encode and generate rows; made afresh otherwise.
    #[arg(long, value_name = "DIR")]
    pub weights: Option<PathBuf>,
    /// Where to make the temporary weights folder (≈ 4.8 GB; default: the system's).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Keep the weights folder it made (its path is printed).
    #[arg(long)]
    pub keep: bool,
    /// Denoising steps of the generate row.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Row {
    /// One UNet step, batch 2 (classifier-free guidance), 4×64×64, 77×768 context.
    UnetPlain,
    /// The same step with the style control module.
    UnetStyled,
    /// One VAE decode, 4×64×64 → 3×512×512.
    VaeDecode,
    /// One UNet step at 8×8: how the step's cost follows its FLOPs.
    #[value(name = "unet-plain-8")]
    UnetPlain8,
    /// The whole `stylecode encode` of one JPEG photo (process start to exit).
    Encode,
    /// The whole 20-step 512² `stylecode generate` (process start to exit).
    Generate,
}

impl Row {
    const ALL: [Row; 6] =
        [Row::UnetPlain, Row::UnetStyled, Row::VaeDecode, Row::UnetPlain8, Row::Encode, Row::Generate];

    fn name(self) -> &'static str {
        match self {
            Row::UnetPlain => "UNet step 64²",
            Row::UnetStyled => "styled step 64²",
            Row::VaeDecode => "VAE decode 512²",
            Row::UnetPlain8 => "UNet step 8²",
            Row::Encode => "encode (process)",
            Row::Generate => "generate (process)",
        }
    }

    /// `unet_step`'s mode and latent side, for the network rows.
    fn network(self) -> Option<(&'static str, usize)> {
        match self {
            Row::UnetPlain => Some(("plain", 64)),
            Row::UnetStyled => Some(("styled", 64)),
            Row::VaeDecode => Some(("vae", 64)),
            Row::UnetPlain8 => Some(("plain", 8)),
            Row::Encode | Row::Generate => None,
        }
    }

    /// Timed repeats for this row given `--repeats`: the 8² step (0.13 s
    /// here, 1 s in PyTorch) runs 8× as many on both sides, so that its
    /// median is not one of five samples on a host whose noise moves a
    /// short run by 15%.
    fn repeats(self, repeats: usize) -> usize {
        match self {
            Row::UnetPlain8 => repeats * 8,
            _ => repeats,
        }
    }
}

/// One side's figures for one row.
struct Measurement {
    row: Row,
    side: String,
    /// Sorted seconds of the timed repeats.
    seconds: Vec<f64>,
    peak_mib: Option<f64>,
}

impl Measurement {
    fn median(&self) -> f64 {
        self.seconds[self.seconds.len() / 2]
    }
}

/// A finished child process: its output, wall time and peak memory.
struct Finished {
    stdout: String,
    seconds: f64,
    peak_mib: Option<f64>,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    ensure!(args.repeats >= 1, "--repeats must be at least 1");
    let rows = if args.rows.is_empty() { Row::ALL.to_vec() } else { args.rows.clone() };
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("xtask sits in the workspace")?;
    let binaries = build(repo, &args.backends)?;
    eprintln!(
        "{threads} threads a side, {} repeats after a warm-up (the 8² step: {})",
        args.repeats,
        Row::UnetPlain8.repeats(args.repeats)
    );

    let needs_weights: Vec<&str> = [(Row::Encode, "encode"), (Row::Generate, "generate")]
        .into_iter()
        .filter(|(row, _)| rows.contains(row))
        .map(|(_, part)| part)
        .collect();
    let made = match (&args.weights, needs_weights.is_empty()) {
        (_, true) | (Some(_), false) => None,
        (None, false) => Some(make_weights(repo, args, threads, &needs_weights)?),
    };
    let weights = args.weights.clone().or_else(|| made.as_ref().map(|dir| dir.path().join("weights")));

    let mut results = Vec::new();
    for &row in &rows {
        let measured = match row.network() {
            Some((mode, latent)) => network_row(repo, args, &binaries, threads, row, mode, latent),
            None => process_row(repo, args, &binaries, threads, row, weights.as_deref().expect("made above")),
        };
        match measured {
            Ok(mut measurements) => results.append(&mut measurements),
            Err(error) => eprintln!("{}: failed: {error:#}", row.name()),
        }
    }
    print_table(&results, threads);

    if let Some(dir) = made.filter(|_| args.keep) {
        println!("kept the weights folder: {}", dir.keep().join("weights").display());
    }
    Ok(())
}

/// The built executables: `stylecode` and the `unet_step` bench.
struct Binaries {
    stylecode: PathBuf,
    unet_step: PathBuf,
}

/// Builds the release CLI and the network bench, with the GPU backends asked for.
fn build(repo: &Path, backends: &[String]) -> Result<Binaries> {
    let mut features = Vec::new();
    for backend in backends {
        match backend.as_str() {
            "cpu" => {}
            "wgpu" | "cuda" => features.push(format!("burn-stylecode-cli/{backend}")),
            other => bail!("unknown backend `{other}` (cpu, wgpu, cuda)"),
        }
    }
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo.current_dir(repo).args([
        "build",
        "--release",
        "--locked",
        "-p",
        "burn-stylecode-cli",
        "--bin",
        "stylecode",
        "--bench",
        "unet_step",
        "--message-format=json-render-diagnostics",
    ]);
    if !features.is_empty() {
        cargo.args(["--features", &features.join(",")]);
    }
    eprintln!("building the release CLI and bench…");
    let output = cargo.stderr(Stdio::inherit()).output().context("running cargo build")?;
    ensure!(output.status.success(), "cargo build failed ({})", output.status);
    let (mut stylecode, mut unet_step) = (None, None);
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<Value>(line) else { continue };
        let (Some(name), Some(exe)) = (message["target"]["name"].as_str(), message["executable"].as_str()) else {
            continue;
        };
        match name {
            "stylecode" => stylecode = Some(PathBuf::from(exe)),
            "unet_step" => unet_step = Some(PathBuf::from(exe)),
            _ => {}
        }
    }
    Ok(Binaries {
        stylecode: stylecode.context("cargo reported no `stylecode` executable")?,
        unet_step: unet_step.context("cargo reported no `unet_step` executable")?,
    })
}

/// `command` with the thread count of both sides set.
fn with_threads(mut command: Command, threads: usize) -> Command {
    command.env("RAYON_NUM_THREADS", threads.to_string()).env("OMP_NUM_THREADS", threads.to_string());
    command
}

fn python(args: &BenchArgs, repo: &Path, script: &str, threads: usize) -> Command {
    let interpreter = args.python.clone().or_else(|| std::env::var_os("PYTHON").map(PathBuf::from));
    let mut command = with_threads(Command::new(interpreter.unwrap_or_else(|| "python3".into())), threads);
    command.arg(repo.join("burn-stylecode-cli/benches").join(script));
    command
}

/// Runs `command` to the end; its stdout, wall time and peak resident memory.
fn finish(mut command: Command, what: &str) -> Result<Finished> {
    let start = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what} ({command:?})"))?;
    let mut stderr = child.stderr.take().expect("piped");
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut stdout = String::new();
    child.stdout.take().expect("piped").read_to_string(&mut stdout)?;
    let (status, peak_mib) = wait_with_peak(child)?;
    let seconds = start.elapsed().as_secs_f64();
    let stderr = stderr.join().unwrap_or_default();
    if !status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("{what} failed ({status}):\n{}", tail.join("\n"));
    }
    Ok(Finished { stdout, seconds, peak_mib })
}

/// Waits for `child`, with the peak resident memory the kernel kept for it.
#[cfg(unix)]
fn wait_with_peak(child: std::process::Child) -> Result<(std::process::ExitStatus, Option<f64>)> {
    use std::os::unix::process::ExitStatusExt;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data, zeroed is a valid value; wait4 fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own unwaited child; both pointers are valid.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    ensure!(waited == pid, "waiting for process {pid}: {}", std::io::Error::last_os_error());
    // ru_maxrss is in KiB on Linux, in bytes on macOS.
    let kib = if cfg!(target_os = "macos") { usage.ru_maxrss as f64 / 1024.0 } else { usage.ru_maxrss as f64 };
    Ok((std::process::ExitStatus::from_raw(status), Some(kib / 1024.0)))
}

#[cfg(not(unix))]
fn wait_with_peak(mut child: std::process::Child) -> Result<(std::process::ExitStatus, Option<f64>)> {
    Ok((child.wait()?, None))
}

/// A network row: the PyTorch twin, then burn on each backend, each in its
/// own process reporting one JSON line.
fn network_row(
    repo: &Path,
    args: &BenchArgs,
    binaries: &Binaries,
    threads: usize,
    row: Row,
    mode: &str,
    latent: usize,
) -> Result<Vec<Measurement>> {
    let counts = [row.repeats(args.repeats).to_string(), latent.to_string()];
    let mut sides = vec![("pytorch".to_string(), {
        let mut command = python(args, repo, "unet_step.py", threads);
        command.arg(mode).args(&counts);
        command
    })];
    for backend in &args.backends {
        let mut command = with_threads(Command::new(&binaries.unet_step), threads);
        command.args([backend.as_str(), mode]).args(&counts);
        sides.push((format!("burn-{backend}"), command));
    }
    let mut measurements = Vec::new();
    for (side, command) in sides {
        eprintln!("{}: {side}…", row.name());
        let finished = finish(command, &format!("{} on {side}", row.name()))?;
        let line = finished.stdout.lines().rev().find(|l| l.starts_with('{')).context("no JSON line in the output")?;
        let report: Value = serde_json::from_str(line).with_context(|| format!("parsing {line}"))?;
        let mut seconds: Vec<f64> = report["all_seconds"]
            .as_array()
            .context("no all_seconds in the report")?
            .iter()
            .filter_map(Value::as_f64)
            .collect();
        seconds.sort_by(f64::total_cmp);
        ensure!(!seconds.is_empty(), "no timings in {line}");
        measurements.push(Measurement { row, side, seconds, peak_mib: report["peak_rss_mib"].as_f64() });
    }
    Ok(measurements)
}

/// A whole-process row: one warm-up run, then the timed repeats, per side.
fn process_row(
    repo: &Path,
    args: &BenchArgs,
    binaries: &Binaries,
    threads: usize,
    row: Row,
    weights: &Path,
) -> Result<Vec<Measurement>> {
    let image = repo.join("tests/fixtures/images/photo.jpg");
    let out = tempfile::Builder::new().prefix("burn-stylecode-bench-out-").tempdir()?;
    let prompt = "a lighthouse on a cliff at dusk, oil painting";
    let steps = args.steps.to_string();
    let command = |side: &str| -> Command {
        match (row, side) {
            (Row::Encode, "pytorch") => {
                let mut command = python(args, repo, "encode.py", threads);
                command.arg(weights).arg(&image);
                command
            }
            (Row::Encode, _) => {
                let mut command = with_threads(Command::new(&binaries.stylecode), threads);
                command.args(["encode", "--format", "official", "--weights"]).arg(weights).arg(&image);
                command
            }
            (_, "pytorch") => {
                let mut command = python(args, repo, "generate.py", threads);
                command.arg(weights).args([prompt, &steps]).arg(out.path().join("pytorch.png"));
                command
            }
            _ => {
                let mut command = with_threads(Command::new(&binaries.stylecode), threads);
                command
                    .args([
                        "generate",
                        "--overwrite",
                        "--prompt",
                        prompt,
                        "--steps",
                        &steps,
                        "--seed",
                        "1",
                        "--weights",
                    ])
                    .arg(weights)
                    .arg("--out")
                    .arg(out.path().join("burn.png"));
                command
            }
        }
    };
    let mut measurements = Vec::new();
    let mut outputs = Vec::new();
    for side in ["pytorch", "burn-cpu"] {
        let what = format!("{} on {side}", row.name());
        eprintln!("{what}…");
        let warm = finish(command(side), &what)?;
        outputs.push(warm.stdout.trim().to_string());
        let mut runs = Vec::new();
        for _ in 0..args.repeats {
            runs.push(finish(command(side), &what)?);
        }
        let mut seconds: Vec<f64> = runs.iter().map(|r| r.seconds).collect();
        seconds.sort_by(f64::total_cmp);
        let peak_mib = runs.iter().filter_map(|r| r.peak_mib).reduce(f64::max);
        measurements.push(Measurement { row, side: side.to_string(), seconds, peak_mib });
    }
    if row == Row::Encode {
        let verdict = if outputs[0] == outputs[1] { "equal" } else { "DIFFERENT" };
        eprintln!("encode: codes {verdict}: PyTorch {}, burn {}", outputs[0], outputs[1]);
    }
    Ok(measurements)
}

/// Random full-size weights for the process rows, by `benches/make_weights.py`.
fn make_weights(repo: &Path, args: &BenchArgs, threads: usize, parts: &[&str]) -> Result<tempfile::TempDir> {
    let dir = match &args.dir {
        Some(dir) => tempfile::Builder::new().prefix("burn-stylecode-bench-").tempdir_in(dir)?,
        None => tempfile::Builder::new().prefix("burn-stylecode-bench-").tempdir()?,
    };
    eprintln!("making random full-size weights for {} in {}…", parts.join(" and "), dir.path().display());
    let mut command = python(args, repo, "make_weights.py", threads);
    command.arg(dir.path().join("weights")).args(parts);
    let made = finish(command, "make_weights.py")?;
    eprintln!("  made in {:.0} s", made.seconds);
    Ok(dir)
}

fn print_table(results: &[Measurement], threads: usize) {
    println!("\n{threads} threads a side; seconds per run: median (min) of the timed repeats; ratio = burn / PyTorch");
    println!(
        "{:<20} {:<10} {:>9} {:>9} {:>7} {:>9} {:>9}",
        "work", "side", "median s", "min s", "ratio", "peak MiB", "mem ratio"
    );
    for m in results {
        let torch = results.iter().find(|t| t.row == m.row && t.side == "pytorch");
        let ratio = torch.map_or(String::from("-"), |t| format!("{:.2}", m.median() / t.median()));
        let mem = |p: Option<f64>| p.map_or(String::from("-"), |p| format!("{p:.0}"));
        let mem_ratio = match (m.peak_mib, torch.and_then(|t| t.peak_mib)) {
            (Some(a), Some(b)) => format!("{:.2}", a / b),
            _ => String::from("-"),
        };
        println!(
            "{:<20} {:<10} {:>9.3} {:>9.3} {:>7} {:>9} {:>9}",
            m.row.name(),
            m.side,
            m.median(),
            m.seconds[0],
            ratio,
            mem(m.peak_mib),
            mem_ratio
        );
    }
    // The 8² step against the 64² one: how the step's cost follows its FLOPs (1/64).
    for side in results.iter().filter(|m| m.row == Row::UnetPlain8).map(|m| &m.side) {
        let of = |row| results.iter().find(|m| m.row == row && &m.side == side).map(Measurement::median);
        if let (Some(small), Some(large)) = (of(Row::UnetPlain8), of(Row::UnetPlain)) {
            println!("{side}: the 8² step is {:.1}% of the 64² step", 100.0 * small / large);
        }
    }
}
