//! `cargo xtask import-weights`: every checkpoint into the weights folder.
//!
//! Each model comes from a local path or a hub id. Hub files are looked up
//! in the HuggingFace cache first; anything still missing is downloaded,
//! after checking once that the hub can be reached: offline, the command
//! fails at once saying what to download and where to put it. Conversion,
//! verification and writing are the library's (`burn_stylecode::import`).

use crate::hub::HubEnv;
use anyhow::{bail, Context, Result};
use burn_stylecode::import::{
    sd15_from_diffusers_dir, sd15_from_single_file, siglip_from_dir, stylecodes_from_bin, ImportOptions, ImportReport,
    Manifest, Sd15Configs, StylecodesSpec, WeightDtype,
};
use burn_stylecode::style::StylecodesConfig;
use burn_stylecode::weights::JsonConfig;
use burn_stylecode::WeightsDir;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub const DEFAULT_SD15: &str = "stable-diffusion-v1-5/stable-diffusion-v1-5";
pub const DEFAULT_SIGLIP: &str = "google/siglip-base-patch16-224";
pub const DEFAULT_STYLECODES: &str = "CiaraRowles/stylecodes";
/// The official checkpoint's file in its hub repo.
pub const STYLECODES_FILE: &str = "stylecodes_sd15_v1.bin";
const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
];

#[derive(clap::Args, Debug, Clone)]
pub struct ImportArgs {
    /// SD1.5: a diffusers folder, a single .safetensors/.ckpt with the original LDM names, or a hub id.
    #[arg(long, value_name = "DIR|FILE|HUB_ID", default_value = DEFAULT_SD15)]
    pub sd15: String,
    /// For a single-file --sd15: a diffusers folder to take the configs and tokenizer from
    /// (default: the standard SD1.5 configs, the tokenizer from the hub).
    #[arg(long, value_name = "DIR")]
    pub sd15_configs: Option<PathBuf>,
    /// SigLIP: a HuggingFace folder or a hub id.
    #[arg(long, value_name = "DIR|HUB_ID", default_value = DEFAULT_SIGLIP)]
    pub siglip: String,
    /// StyleCodes: the official .bin (or a .safetensors of its keys), or a hub id.
    #[arg(long, value_name = "FILE|HUB_ID", default_value = DEFAULT_STYLECODES)]
    pub stylecodes: String,
    /// Check a non-official StyleCodes checkpoint against this config.json
    /// (version, autoencoder) instead of the official model's shapes.
    #[arg(long, value_name = "FILE")]
    pub stylecodes_config: Option<PathBuf>,
    /// The weights folder (default: $STYLECODE_WEIGHTS, else the platform data folder).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Storage type of the written weights.
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    pub dtype: WeightDtype,
    /// Import only these (default: all three).
    #[arg(long, value_delimiter = ',', value_name = "sd15,siglip,stylecodes")]
    pub only: Option<Vec<Model>>,
    /// Import again even where the folder is complete and verified.
    #[arg(long)]
    pub force: bool,
    /// Never contact the hub (also: HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
}

fn parse_dtype(s: &str) -> Result<WeightDtype, String> {
    s.parse()
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Model {
    Stylecodes,
    Siglip,
    Sd15,
}

impl Model {
    fn name(self) -> &'static str {
        match self {
            Model::Stylecodes => "stylecodes",
            Model::Siglip => "siglip",
            Model::Sd15 => "sd15",
        }
    }
}

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Local(PathBuf),
    Hub(String),
}

/// A local path if it exists, else a hub id `owner/name`.
pub fn classify(arg: &str) -> Result<Source> {
    let path = Path::new(arg);
    if path.exists() {
        return Ok(Source::Local(path.to_path_buf()));
    }
    let is_id = |part: &str| {
        !part.is_empty()
            && part.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && !part.starts_with('.')
    };
    match arg.split_once('/') {
        Some((owner, name)) if is_id(owner) && is_id(name) => Ok(Source::Hub(arg.to_string())),
        _ => bail!("`{arg}` is neither an existing file or folder nor a HuggingFace hub id (owner/name)"),
    }
}

/// One model's import, resolved.
struct Job {
    model: Model,
    source: Source,
    /// Hub files it needs: (repo, file), with fallbacks for optional variants.
    hub_files: Vec<HubFile>,
}

#[derive(Clone)]
struct HubFile {
    repo: String,
    file: String,
    /// Tried if `file` cannot be had (the full-precision file of an `.fp16` variant).
    fallback: Option<String>,
}

fn hub_files_for(model: Model, repo: &str, dtype: WeightDtype) -> Vec<HubFile> {
    let plain = |file: &str| HubFile { repo: repo.into(), file: file.into(), fallback: None };
    let weights = |stem: &str| match dtype {
        WeightDtype::F16 => HubFile {
            repo: repo.into(),
            file: format!("{stem}.fp16.safetensors"),
            fallback: Some(format!("{stem}.safetensors")),
        },
        WeightDtype::F32 => plain(&format!("{stem}.safetensors")),
    };
    match model {
        Model::Stylecodes => vec![plain(STYLECODES_FILE)],
        Model::Siglip => ["config.json", "model.safetensors", "preprocessor_config.json"].map(plain).to_vec(),
        Model::Sd15 => {
            let mut files: Vec<HubFile> = [
                "model_index.json",
                "unet/config.json",
                "vae/config.json",
                "text_encoder/config.json",
                "scheduler/scheduler_config.json",
            ]
            .map(plain)
            .to_vec();
            files.extend(TOKENIZER_FILES.map(plain));
            files.push(weights("unet/diffusion_pytorch_model"));
            files.push(weights("vae/diffusion_pytorch_model"));
            files.push(weights("text_encoder/model"));
            files
        }
    }
}

/// Whether `out/model` already holds an import from `origin` in `dtype`, verified.
fn imported_from(out: &Path, model: Model, origin: &str, dtype: WeightDtype) -> bool {
    let dir = out.join(model.name());
    Manifest::read(&dir).is_ok_and(|m| {
        m.dtype == dtype.name()
            && m.sources.first().and_then(|s| s.origin.as_deref()) == Some(origin)
            && m.verify(&dir).is_ok()
    })
}

fn origin(repo: &str) -> String {
    format!("hf://{repo}")
}

pub fn run(args: &ImportArgs, hub: &HubEnv) -> Result<()> {
    let out = WeightsDir::resolve(args.out.clone()).root().to_path_buf();
    let mut models = args.only.clone().unwrap_or_else(|| vec![Model::Stylecodes, Model::Siglip, Model::Sd15]);
    models.sort();
    models.dedup();

    // 1. Resolve every source and the hub files each needs.
    let mut jobs = Vec::new();
    for &model in &models {
        let arg = match model {
            Model::Stylecodes => &args.stylecodes,
            Model::Siglip => &args.siglip,
            Model::Sd15 => &args.sd15,
        };
        let source = classify(arg).with_context(|| format!("--{}", model.name()))?;
        let mut hub_files = Vec::new();
        match &source {
            Source::Hub(repo) if !args.force && imported_from(&out, model, &origin(repo), args.dtype) => {
                println!(
                    "{}: already imported from {} ({}), verified: skipped",
                    model.name(),
                    origin(repo),
                    args.dtype.name()
                );
                continue;
            }
            Source::Hub(repo) => hub_files = hub_files_for(model, repo, args.dtype),
            Source::Local(path) if model == Model::Sd15 && path.is_file() && args.sd15_configs.is_none() => {
                // A single file carries no tokenizer: take SD1.5's from the hub.
                hub_files = TOKENIZER_FILES
                    .map(|f| HubFile { repo: DEFAULT_SD15.into(), file: f.into(), fallback: None })
                    .to_vec();
            }
            Source::Local(_) => {}
        }
        jobs.push(Job { model, source, hub_files });
    }

    // 2. Offline with files missing from the cache: fail now, saying what to fetch.
    let missing: Vec<(Model, HubFile)> = jobs
        .iter()
        .flat_map(|job| job.hub_files.iter().map(move |f| (job.model, f.clone())))
        .filter(|(_, f)| {
            hub.cached(&f.repo, &f.file).is_none()
                && f.fallback.as_ref().is_none_or(|fb| hub.cached(&f.repo, fb).is_none())
        })
        .collect();
    if !missing.is_empty() {
        if let Some(reason) = hub.unreachable() {
            bail!(offline_message(&reason, &missing, &out, hub));
        }
    }

    // 3. Fetch (cache hits cost nothing), then import.
    for job in jobs {
        let mut fetched = BTreeMap::new();
        for file in &job.hub_files {
            let path = match hub.fetch(&file.repo, &file.file) {
                Ok(path) => path,
                Err(error) => match &file.fallback {
                    Some(fallback) => {
                        println!("{}: {} not available ({error:#}); using {fallback}", job.model.name(), file.file);
                        hub.fetch(&file.repo, fallback)?
                    }
                    None => return Err(error),
                },
            };
            fetched.insert(file.file.clone(), path);
        }
        let report =
            import_one(&job, &fetched, args, &out).with_context(|| format!("importing {}", job.model.name()))?;
        print_report(job.model, &report);
    }
    Ok(())
}

/// The folder a set of fetched files sits in (the hub snapshot).
fn snapshot_dir(fetched: &BTreeMap<String, PathBuf>, file: &str) -> Result<PathBuf> {
    let path = fetched.get(file).with_context(|| format!("{file} was not fetched"))?;
    let depth = file.matches('/').count() + 1;
    Ok(path.ancestors().nth(depth).context("hub file outside a snapshot")?.to_path_buf())
}

fn import_one(job: &Job, fetched: &BTreeMap<String, PathBuf>, args: &ImportArgs, out: &Path) -> Result<ImportReport> {
    let mut options = ImportOptions::new(args.dtype);
    options.force = args.force;
    if let Source::Hub(repo) = &job.source {
        options.origin = Some(origin(repo));
    }
    Ok(match (job.model, &job.source) {
        (Model::Stylecodes, source) => {
            let path = match source {
                Source::Local(path) => path.clone(),
                Source::Hub(_) => fetched[STYLECODES_FILE].clone(),
            };
            let spec = match &args.stylecodes_config {
                Some(config) => {
                    let config = StylecodesConfig::from_file(config)?;
                    StylecodesSpec::autoencoder_only(config.version, config.autoencoder)
                }
                None => StylecodesSpec::official(),
            };
            stylecodes_from_bin(&path, out, &spec, &options)?
        }
        (Model::Siglip, Source::Local(dir)) => siglip_from_dir(dir, out, &options)?,
        (Model::Siglip, Source::Hub(_)) => siglip_from_dir(&snapshot_dir(fetched, "config.json")?, out, &options)?,
        (Model::Sd15, Source::Local(path)) if path.is_dir() => sd15_from_diffusers_dir(path, out, &options)?,
        (Model::Sd15, Source::Local(path)) => {
            let configs = match &args.sd15_configs {
                Some(dir) => Sd15Configs::from_diffusers_dir(dir)?,
                None => {
                    Sd15Configs::standard().with_tokenizer(snapshot_dir(fetched, TOKENIZER_FILES[0])?.join("tokenizer"))
                }
            };
            sd15_from_single_file(path, out, &configs, &options)?
        }
        (Model::Sd15, Source::Hub(_)) => {
            sd15_from_diffusers_dir(&snapshot_dir(fetched, "model_index.json")?, out, &options)?
        }
    })
}

fn print_report(model: Model, report: &ImportReport) {
    let m = &report.manifest;
    let tensors: usize = m.files.iter().filter_map(|f| f.tensors).sum();
    let bytes: u64 = m.files.iter().map(|f| f.bytes).sum();
    let what = if report.skipped { "complete and verified: skipped" } else { "imported" };
    println!(
        "{}: {what} → {} ({} tensors, {:.1} MB, {}, from {})",
        model.name(),
        report.dir.display(),
        tensors,
        bytes as f64 / 1e6,
        m.dtype,
        m.sources.first().map(|s| s.origin.clone().unwrap_or_else(|| s.path.clone())).unwrap_or_default()
    );
    if !m.unchecked.is_empty() {
        println!("  {} tensor(s) copied without a shape check (no table covers them)", m.unchecked.len());
    }
    if !m.leftover.is_empty() {
        println!(
            "  {} leftover tensor(s) not used by any model (listed in manifest.json): {}",
            m.leftover.len(),
            summarise(&m.leftover)
        );
    }
}

/// Leftover names grouped by their first component, e.g. `model_ema (686), alphas_cumprod`.
fn summarise(keys: &[String]) -> String {
    let mut groups: BTreeMap<&str, Vec<&String>> = BTreeMap::new();
    for key in keys {
        groups.entry(key.split(['.', ' ']).next().unwrap_or(key)).or_default().push(key);
    }
    groups
        .into_iter()
        .map(
            |(group, members)| {
                if members.len() == 1 {
                    members[0].clone()
                } else {
                    format!("{group}.* ({})", members.len())
                }
            },
        )
        .collect::<Vec<_>>()
        .join(", ")
}

/// What to download, from where, and the command that imports it after.
fn offline_message(reason: &str, missing: &[(Model, HubFile)], out: &Path, hub: &HubEnv) -> String {
    let mut text = format!("cannot download from the HuggingFace hub: {reason}.\n");
    text.push_str("Download these files where there is network, then import them from local paths:\n");
    let mut by_model: BTreeMap<Model, Vec<&HubFile>> = BTreeMap::new();
    for (model, file) in missing {
        by_model.entry(*model).or_default().push(file);
    }
    for (model, files) in by_model {
        let _ = writeln!(text, "\n  {}:", model.name());
        for f in &files {
            let _ = writeln!(text, "    {}", hub.url(&f.repo, &f.file));
        }
        let repo = &files[0].repo;
        let folder = repo.rsplit('/').next().unwrap_or(repo);
        let hint = match model {
            Model::Stylecodes => {
                format!("cargo xtask import-weights --only stylecodes --stylecodes /path/to/{STYLECODES_FILE}")
            }
            Model::Siglip => format!(
                "cargo xtask import-weights --only siglip --siglip /path/to/{folder}   (the files above in one folder)"
            ),
            Model::Sd15 if files.iter().all(|f| f.file.starts_with("tokenizer/")) => format!(
                "cargo xtask import-weights --only sd15 --sd15 FILE --sd15-configs /path/to/{folder}   \
                 (a diffusers folder with tokenizer/ and the configs)"
            ),
            Model::Sd15 => format!(
                "cargo xtask import-weights --only sd15 --sd15 /path/to/{folder}   \
                 (keep the repo's layout: unet/, vae/, text_encoder/, tokenizer/, scheduler/)"
            ),
        };
        let _ = writeln!(text, "  then: {hint}");
    }
    let _ = write!(
        text,
        "\nThe weights are written to {} (--out, else $STYLECODE_WEIGHTS, else the platform data folder).\n\
         Files already in the HuggingFace cache ({}) are used without the network.",
        out.display(),
        hub.cache.path().display()
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ImportArgs,
    }

    fn parse(args: &[&str]) -> ImportArgs {
        Cli::parse_from(std::iter::once("import-weights").chain(args.iter().copied())).args
    }

    fn fixtures() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
    }

    fn offline_hub(cache: &Path) -> HubEnv {
        HubEnv {
            cache: hf_hub::Cache::new(cache.to_path_buf()),
            endpoint: crate::hub::DEFAULT_ENDPOINT.into(),
            offline: true,
        }
    }

    #[test]
    fn defaults_are_the_three_hub_models() {
        let args = parse(&[]);
        assert_eq!(args.sd15, DEFAULT_SD15);
        assert_eq!(args.siglip, DEFAULT_SIGLIP);
        assert_eq!(args.stylecodes, DEFAULT_STYLECODES);
        assert_eq!(args.dtype, WeightDtype::F32);
        assert_eq!(parse(&["--dtype", "f16", "--only", "sd15,siglip"]).only, Some(vec![Model::Sd15, Model::Siglip]));
    }

    #[test]
    fn sources_are_paths_or_hub_ids() {
        assert_eq!(classify(DEFAULT_SIGLIP).unwrap(), Source::Hub(DEFAULT_SIGLIP.into()));
        let here = env!("CARGO_MANIFEST_DIR");
        assert_eq!(classify(here).unwrap(), Source::Local(here.into()));
        assert!(classify("/no/such/file.ckpt").is_err());
        assert!(classify("not-an-id").is_err());
    }

    #[test]
    fn offline_never_contacts_the_hub_and_says_what_to_download_and_where() {
        let cache = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let args = parse(&["--out", out.path().to_str().unwrap()]);
        // The hub is a local listener: offline, nothing may connect to it.
        let hub = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", hub.local_addr().unwrap());
        let env = HubEnv { endpoint: endpoint.clone(), ..offline_hub(cache.path()) };
        let error = run(&args, &env).unwrap_err().to_string();
        hub.set_nonblocking(true).unwrap();
        let contacted = hub.accept();
        assert!(
            matches!(&contacted, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "offline, the hub was contacted: {contacted:?}"
        );
        for needed in [
            format!("{endpoint}/CiaraRowles/stylecodes/resolve/main/stylecodes_sd15_v1.bin"),
            format!("{endpoint}/google/siglip-base-patch16-224/resolve/main/model.safetensors"),
            format!(
                "{endpoint}/stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/main/\
                 unet/diffusion_pytorch_model.safetensors"
            ),
            "--stylecodes /path/to/stylecodes_sd15_v1.bin".into(),
            "--sd15 /path/to/stable-diffusion-v1-5".into(),
            out.path().to_str().unwrap().into(),
        ] {
            assert!(error.contains(&needed), "`{needed}` not in:\n{error}");
        }
        assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0, "nothing may be written");
    }

    #[test]
    fn local_sources_import_without_the_network() {
        let cache = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let f = fixtures();
        let path = |p: &str| f.join(p).to_str().unwrap().to_string();
        let argv = [
            "--out",
            out.path().to_str().unwrap(),
            "--stylecodes",
            &path("import/stylecodes.bin"),
            "--stylecodes-config",
            &path("weights/stylecodes/config.json"),
            "--siglip",
            &path("weights/siglip"),
            "--sd15",
            &path("import/sd15_ldm.ckpt"),
            "--sd15-configs",
            &path("import/sd15_diffusers"),
            "--dtype",
            "f16",
        ];
        let args = parse(&argv);
        run(&args, &offline_hub(cache.path())).unwrap();
        for model in ["stylecodes", "siglip", "sd15"] {
            let dir = out.path().join(model);
            Manifest::read(&dir).unwrap().verify(&dir).unwrap();
        }
        // A second run finds everything done.
        run(&args, &offline_hub(cache.path())).unwrap();
    }
}
