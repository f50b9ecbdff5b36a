//! `cargo xtask import-weights`' library half: each foreign form of the tiny
//! models imports to exactly the tensors of the direct fixtures, the folder
//! has the right layout and manifest, reruns skip verified work, and bad
//! inputs fail cleanly, leave nothing behind, and never run pickle code.
//!
//! Fixtures: fixtures/make_import_fixtures.py (see its docstring). Bad
//! inputs that need no pickle are made here from the good fixtures.

use burn::tensor::DType;
use burn_stylecode::import::{
    self, expected, sd15_from_diffusers_dir, sd15_from_single_file, siglip_from_dir, stylecodes_from_bin, ImportError,
    ImportOptions, ImportReport, Manifest, Sd15Configs, StylecodesSpec, WeightDtype,
};
use burn_stylecode::sd::{clip::ClipTextConfig, unet_2d::UNetConfig, vae::VaeConfig};
use burn_stylecode::siglip::preprocess::load_rgb;
use burn_stylecode::weights::JsonConfig;
use burn_stylecode::{StyleCodes, WeightsDir};
use burn_stylecode_tests::*;
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn import_fixtures() -> PathBuf {
    fixtures().join("import")
}

fn reference_dir() -> PathBuf {
    import_fixtures().join("sd15_diffusers")
}

fn tiny_configs() -> Sd15Configs {
    Sd15Configs::from_diffusers_dir(&reference_dir()).unwrap()
}

fn options(dtype: WeightDtype) -> ImportOptions {
    ImportOptions::new(dtype)
}

fn tiny_stylecodes_spec() -> StylecodesSpec {
    let config = weights().stylecodes_config().unwrap();
    StylecodesSpec::autoencoder_only(config.version, config.autoencoder)
}

/// Every tensor of a safetensors file: name → (dtype, shape, f32 values).
type Tensors = BTreeMap<String, (Dtype, Vec<usize>, Vec<f32>)>;

fn read_tensors(path: &Path) -> Tensors {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let file = SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            let data = view.data();
            let values = match view.dtype() {
                Dtype::F32 => data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
                Dtype::F16 => data.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
                other => panic!("{name}: unexpected dtype {other:?}"),
            };
            (name, (view.dtype(), view.shape().to_vec(), values))
        })
        .collect()
}

/// Same names, shapes and values (exactly); and dtype `dtype`.
fn assert_same_tensors(what: &str, actual: &Tensors, expected: &Tensors, dtype: Dtype) {
    let a: Vec<&String> = actual.keys().collect();
    let e: Vec<&String> = expected.keys().collect();
    assert_eq!(a, e, "{what}: tensor names differ");
    for (name, (got_dtype, shape, values)) in actual {
        let (_, want_shape, want_values) = &expected[name];
        assert_eq!(*got_dtype, dtype, "{what}: {name}: dtype");
        assert_eq!(shape, want_shape, "{what}: {name}: shape");
        assert!(
            values.iter().zip(want_values).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{what}: {name}: values differ"
        );
    }
}

/// The imported SD1.5 folder equals the diffusers reference, file by file.
fn assert_matches_reference(dir: &Path, dtype: Dtype) {
    for rel in [
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
    ] {
        assert_same_tensors(rel, &read_tensors(&dir.join(rel)), &read_tensors(&reference_dir().join(rel)), dtype);
    }
    for rel in [
        "unet/config.json",
        "vae/config.json",
        "text_encoder/config.json",
        "scheduler/scheduler_config.json",
        "model_index.json",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "tokenizer/tokenizer_config.json",
        "tokenizer/special_tokens_map.json",
    ] {
        assert_eq!(std::fs::read(dir.join(rel)).unwrap(), std::fs::read(reference_dir().join(rel)).unwrap(), "{rel}");
    }
}

/// Files under `dir`, relative, sorted.
fn listing(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out.sort();
    out
}

/// One tensor for [`write_safetensors`].
struct Raw {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

fn raw_tensors(path: &Path) -> Vec<Raw> {
    let bytes = std::fs::read(path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<Raw> = file
        .tensors()
        .into_iter()
        .map(|(name, v)| Raw { name, dtype: v.dtype(), shape: v.shape().to_vec(), data: v.data().to_vec() })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn write_safetensors(path: &Path, tensors: &[Raw]) {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|t| (t.name.clone(), safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// f16 → f32 for every f16 tensor.
fn widen(tensors: Vec<Raw>) -> Vec<Raw> {
    tensors
        .into_iter()
        .map(|t| match t.dtype {
            Dtype::F16 => Raw {
                dtype: Dtype::F32,
                data: t
                    .data
                    .chunks_exact(2)
                    .flat_map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32().to_le_bytes())
                    .collect(),
                ..t
            },
            _ => t,
        })
        .collect()
}

fn leftover_has(report: &ImportReport, key: &str) -> bool {
    report.manifest.leftover.iter().any(|k| k.starts_with(key))
}

// ---------------------------------------------------------------------------
// the foreign forms import to the direct fixtures

#[test]
fn official_bin_imports_to_the_official_keys_and_the_same_codes() {
    let out = tempfile::tempdir().unwrap();
    let report = stylecodes_from_bin(
        &import_fixtures().join("stylecodes.bin"),
        out.path(),
        &tiny_stylecodes_spec(),
        &options(WeightDtype::F32),
    )
    .unwrap();
    assert!(!report.skipped);
    let imported = out.path().join("stylecodes");
    assert_eq!(listing(&imported), ["config.json", "manifest.json", "stylecodes.safetensors"]);
    let direct = weights().stylecodes_weights().unwrap();
    assert_same_tensors(
        "stylecodes",
        &read_tensors(&imported.join("stylecodes.safetensors")),
        &read_tensors(&direct),
        Dtype::F32,
    );
    // Without a control config the control tensors are carried over unchecked.
    let control: Vec<String> =
        read_tensors(&direct).into_keys().filter(|k| !k.starts_with("sref_autoencoder.")).collect();
    assert!(control.len() > 100, "the fixture holds a whole tiny control module");
    assert_eq!(report.manifest.unchecked, control);

    // The imported folder loads and encodes exactly like the direct one.
    let siglip = siglip_from_dir(&weights().siglip_dir(), out.path(), &options(WeightDtype::F32)).unwrap();
    assert!(leftover_has(&siglip, "text_model."), "{:?}", siglip.manifest.leftover);
    let images = ["images/photo.jpg", "images/drawing.png"].map(|p| load_rgb(fixtures().join(p)).unwrap());
    let codes = |dir: &WeightsDir| {
        let styles = StyleCodes::<TestBackend>::new(dir.clone(), DType::F32, device());
        styles.encode(&images).unwrap().into_iter().map(|s| (s.code.to_paper(), s.latent)).collect::<Vec<_>>()
    };
    assert_eq!(codes(&WeightsDir::new(out.path())), codes(&weights()));
}

#[test]
fn siglip_import_keeps_exactly_the_vision_tower() {
    let out = tempfile::tempdir().unwrap();
    let report = siglip_from_dir(&weights().siglip_dir(), out.path(), &options(WeightDtype::F32)).unwrap();
    let dir = out.path().join("siglip");
    assert_eq!(listing(&dir), ["config.json", "manifest.json", "model.safetensors", "preprocessor_config.json"]);
    let mut direct = read_tensors(&weights().siglip_weights().unwrap());
    direct.retain(|k, _| k.starts_with("vision_model."));
    assert_same_tensors("siglip", &read_tensors(&dir.join("model.safetensors")), &direct, Dtype::F32);
    assert!(report.manifest.leftover.iter().all(|k| !k.starts_with("vision_model.")), "{:?}", report.manifest.leftover);
    assert!(leftover_has(&report, "logit_scale"));
}

#[test]
fn ldm_single_safetensors_converts_to_the_diffusers_reference() {
    let out = tempfile::tempdir().unwrap();
    let report = sd15_from_single_file(
        &import_fixtures().join("sd15_ldm.safetensors"),
        out.path(),
        &tiny_configs(),
        &options(WeightDtype::F16),
    )
    .unwrap();
    assert_matches_reference(&report.dir, Dtype::F16);
    for left in ["alphas_cumprod", "model_ema.decay", "cond_stage_model.transformer.text_model.embeddings.position_ids"]
    {
        assert!(
            report.manifest.leftover.iter().any(|k| k == left),
            "{left} not listed: {:?}",
            report.manifest.leftover
        );
    }
    assert_eq!(report.manifest.leftover.len(), 3, "{:?}", report.manifest.leftover);
}

#[test]
fn ldm_ckpt_pickle_converts_to_the_diffusers_reference() {
    // Its tensors are views into one storage, one of them transposed.
    let out = tempfile::tempdir().unwrap();
    let report = sd15_from_single_file(
        &import_fixtures().join("sd15_ldm.ckpt"),
        out.path(),
        &tiny_configs(),
        &options(WeightDtype::F32),
    )
    .unwrap();
    assert_matches_reference(&report.dir, Dtype::F32);
    assert_eq!(report.manifest.leftover.len(), 3, "{:?}", report.manifest.leftover);
    assert_eq!(report.manifest.sources[0].format, "pytorch-zip");
}

#[test]
fn f32_ldm_file_imports_as_f16_and_f32() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sd15_f32.safetensors");
    write_safetensors(&path, &widen(raw_tensors(&import_fixtures().join("sd15_ldm.safetensors"))));
    for (dtype, st) in [(WeightDtype::F32, Dtype::F32), (WeightDtype::F16, Dtype::F16)] {
        let out = tempfile::tempdir().unwrap();
        let report = sd15_from_single_file(&path, out.path(), &tiny_configs(), &options(dtype)).unwrap();
        assert_matches_reference(&report.dir, st);
        assert_eq!(report.manifest.dtype, dtype.name());
    }
}

#[test]
fn diffusers_folder_with_old_vae_names_and_unprefixed_clip_is_canonicalised() {
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("fine-tune");
    copy_tree(&reference_dir(), &source);
    std::fs::copy(
        import_fixtures().join("vae_old_attention.safetensors"),
        source.join("vae/diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    // transformers 5 saves CLIPTextModel without the `text_model.` level.
    let clip = source.join("text_encoder/model.safetensors");
    let bare: Vec<Raw> = raw_tensors(&clip)
        .into_iter()
        .map(|t| Raw { name: t.name.trim_start_matches("text_model.").to_string(), ..t })
        .collect();
    write_safetensors(&clip, &bare);
    let out = work.path().join("weights");
    let report = sd15_from_diffusers_dir(&source, &out, &options(WeightDtype::F16)).unwrap();
    assert_matches_reference(&report.dir, Dtype::F16);
    assert!(report.manifest.leftover.is_empty(), "{:?}", report.manifest.leftover);
    // The untouched reference imports as itself.
    let out2 = work.path().join("weights2");
    let again = sd15_from_diffusers_dir(&reference_dir(), &out2, &options(WeightDtype::F16)).unwrap();
    assert_matches_reference(&again.dir, Dtype::F16);
}

fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let target = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------
// layout, manifest, reruns

#[test]
fn folder_layout_and_manifest() {
    let out = tempfile::tempdir().unwrap();
    let source = import_fixtures().join("sd15_ldm.safetensors");
    let report = sd15_from_single_file(&source, out.path(), &tiny_configs(), &options(WeightDtype::F16)).unwrap();
    assert_eq!(report.dir, out.path().join("sd15"));
    assert_eq!(
        listing(&report.dir),
        [
            "manifest.json",
            "model_index.json",
            "scheduler/scheduler_config.json",
            "text_encoder/config.json",
            "text_encoder/model.safetensors",
            "tokenizer/merges.txt",
            "tokenizer/special_tokens_map.json",
            "tokenizer/tokenizer_config.json",
            "tokenizer/vocab.json",
            "unet/config.json",
            "unet/diffusion_pytorch_model.safetensors",
            "vae/config.json",
            "vae/diffusion_pytorch_model.safetensors",
        ]
    );
    // Nothing else in the weights root: no staging folder left over.
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 1);

    let manifest = Manifest::read(&report.dir).unwrap();
    assert_eq!(manifest, report.manifest);
    assert_eq!(manifest.model, "sd15");
    assert_eq!(manifest.dtype, "f16");
    assert_eq!(manifest.converted_from, "ldm-single-file");
    let checkpoint = &manifest.sources[0];
    assert_eq!(checkpoint.path, source.display().to_string());
    assert_eq!(checkpoint.format, "safetensors");
    assert_eq!(checkpoint.sha256, import::sha256_file(&source).unwrap());
    assert_eq!(checkpoint.bytes, std::fs::metadata(&source).unwrap().len());
    // Configs and tokenizer files are sources too.
    assert!(manifest.sources.iter().any(|s| s.path.ends_with("vocab.json") && s.format == "file"));
    assert_eq!(manifest.files.len(), 12);
    for file in &manifest.files {
        let path = report.dir.join(&file.path);
        assert_eq!(file.sha256, import::sha256_file(&path).unwrap(), "{}", file.path);
        assert_eq!(file.bytes, std::fs::metadata(&path).unwrap().len());
    }
    let unet = manifest.files.iter().find(|f| f.path == "unet/diffusion_pytorch_model.safetensors").unwrap();
    assert_eq!(unet.tensors, Some(read_tensors(&reference_dir().join(&unet.path)).len()));
    manifest.verify(&report.dir).unwrap();
}

#[test]
fn rerun_skips_what_is_complete_and_verified() {
    let out = tempfile::tempdir().unwrap();
    let source = import_fixtures().join("sd15_ldm.safetensors");
    let run = |dtype| sd15_from_single_file(&source, out.path(), &tiny_configs(), &options(dtype)).unwrap();
    assert!(!run(WeightDtype::F16).skipped);
    let second = run(WeightDtype::F16);
    assert!(second.skipped, "an identical rerun must skip");
    assert_matches_reference(&second.dir, Dtype::F16);

    // A damaged file is noticed and the folder is imported again.
    let unet = second.dir.join("unet/diffusion_pytorch_model.safetensors");
    let mut bytes = std::fs::read(&unet).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&unet, bytes).unwrap();
    assert!(!run(WeightDtype::F16).skipped, "a damaged folder must be re-imported");
    assert_matches_reference(&second.dir, Dtype::F16);
    // So is a missing one.
    std::fs::remove_file(second.dir.join("tokenizer/merges.txt")).unwrap();
    assert!(!run(WeightDtype::F16).skipped);
    assert!(run(WeightDtype::F16).skipped);

    // Other options are another import.
    assert!(!run(WeightDtype::F32).skipped);
    assert_matches_reference(&second.dir, Dtype::F32);
    let mut forced = options(WeightDtype::F32);
    forced.force = true;
    assert!(!sd15_from_single_file(&source, out.path(), &tiny_configs(), &forced).unwrap().skipped);
}

#[test]
fn stale_staging_folders_of_an_interrupted_run_are_removed() {
    let out = tempfile::tempdir().unwrap();
    let stale = out.path().join(".stylecodes.partial-1-2");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("stylecodes.safetensors"), b"half a file").unwrap();
    stylecodes_from_bin(
        &import_fixtures().join("stylecodes.bin"),
        out.path(),
        &tiny_stylecodes_spec(),
        &options(WeightDtype::F16),
    )
    .unwrap();
    let names: Vec<String> =
        std::fs::read_dir(out.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["stylecodes"]);
}

// ---------------------------------------------------------------------------
// bad inputs: clear errors, nothing left behind

/// Runs an import expected to fail into a fresh root; the root must stay
/// absent (or empty) and the error is returned.
fn fails(import: impl FnOnce(&Path) -> Result<ImportReport, ImportError>) -> ImportError {
    let out = tempfile::tempdir().unwrap();
    let root = out.path().join("weights");
    let error = import(&root).expect_err("the import must fail");
    assert!(listing(&root).is_empty(), "{error}: left behind {:?}", listing(&root));
    assert!(!root.exists(), "{error}: the import created {}", root.display());
    error
}

fn sd15_file(path: &Path) -> impl FnOnce(&Path) -> Result<ImportReport, ImportError> + '_ {
    move |root| sd15_from_single_file(path, root, &tiny_configs(), &options(WeightDtype::F16))
}

fn truncated_copy(src: &Path, dir: &Path, keep: f64) -> PathBuf {
    let bytes = std::fs::read(src).unwrap();
    let path = dir.join(src.file_name().unwrap());
    std::fs::write(&path, &bytes[..(bytes.len() as f64 * keep) as usize]).unwrap();
    path
}

#[test]
fn truncated_files_are_reported_as_such() {
    let dir = tempfile::tempdir().unwrap();
    for (name, keep) in [("sd15_ldm.safetensors", 0.6), ("sd15_ldm.ckpt", 0.6), ("sd15_ldm.ckpt", 0.999)] {
        let path = truncated_copy(&import_fixtures().join(name), dir.path(), keep);
        let error = fails(sd15_file(&path));
        assert!(matches!(error, ImportError::Truncated { .. }), "{name} at {keep}: {error}");
        assert!(error.to_string().contains(name), "{error}");
    }
    let path = truncated_copy(&import_fixtures().join("stylecodes.bin"), dir.path(), 0.5);
    let error = fails(|root| stylecodes_from_bin(&path, root, &tiny_stylecodes_spec(), &options(WeightDtype::F32)));
    assert!(matches!(error, ImportError::Truncated { .. }) && error.to_string().contains("stylecodes.bin"), "{error}");
}

#[test]
fn a_storage_shorter_than_its_tensors_is_caught_before_writing() {
    // Cut the ckpt's one big storage short by rewriting the zip with a
    // shorter entry: the pickle still promises every element.
    let dir = tempfile::tempdir().unwrap();
    let src = std::fs::read(import_fixtures().join("sd15_ldm.ckpt")).unwrap();
    let path = dir.path().join("short.ckpt");
    shorten_zip_entry(&src, "sd15_ldm/data/0", 1000, &path);
    let error = fails(sd15_file(&path));
    assert!(matches!(error, ImportError::Truncated { .. }), "{error}");
    assert!(error.to_string().contains("storage"), "{error}");
}

/// Rewrites a stored zip entry with only its first `keep` bytes (a
/// minimal zip writer: local headers, central directory, end record).
fn shorten_zip_entry(src: &[u8], name: &str, keep: usize, dst: &Path) {
    let u16_at = |b: &[u8], i: usize| u16::from_le_bytes([b[i], b[i + 1]]) as usize;
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as usize;
    let eocd = (0..src.len() - 21).rev().find(|&i| src[i..i + 4] == [0x50, 0x4b, 0x05, 0x06]).unwrap();
    let (count, mut cd) = (u16_at(src, eocd + 10), u32_at(src, eocd + 16));
    let mut entries = Vec::new();
    for _ in 0..count {
        let (n, x, c) = (u16_at(src, cd + 28), u16_at(src, cd + 30), u16_at(src, cd + 32));
        let entry_name = String::from_utf8(src[cd + 46..cd + 46 + n].to_vec()).unwrap();
        let local = u32_at(src, cd + 42);
        let (ln, lx) = (u16_at(src, local + 26), u16_at(src, local + 28));
        let size = u32_at(src, cd + 24);
        let data = src[local + 30 + ln + lx..local + 30 + ln + lx + size].to_vec();
        let crc = u32_at(src, cd + 16) as u32;
        entries.push((entry_name, data, crc));
        cd += 46 + n + x + c;
    }
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (entry_name, mut data, mut crc) in entries {
        if entry_name == name {
            data.truncate(keep);
            crc = crc32(&data);
        }
        let offset = out.len() as u32;
        let header = |sig: u32, central: bool| {
            let mut h = Vec::new();
            h.extend(sig.to_le_bytes());
            if central {
                h.extend(20u16.to_le_bytes());
            }
            h.extend([20u16, 0, 0, 0, 0].iter().flat_map(|v| v.to_le_bytes()));
            h.extend(crc.to_le_bytes());
            h.extend((data.len() as u32).to_le_bytes());
            h.extend((data.len() as u32).to_le_bytes());
            h.extend((entry_name.len() as u16).to_le_bytes());
            h.extend(0u16.to_le_bytes());
            if central {
                h.extend([0u16, 0, 0].iter().flat_map(|v| v.to_le_bytes()));
                h.extend(0u32.to_le_bytes());
                h.extend(offset.to_le_bytes());
            }
            h.extend(entry_name.as_bytes());
            h
        };
        out.extend(header(0x04034b50, false));
        out.extend(&data);
        central.extend(header(0x02014b50, true));
    }
    let cd_offset = out.len() as u32;
    out.extend(&central);
    out.extend(0x06054b50u32.to_le_bytes());
    out.extend([0u16, 0, count as u16, count as u16].iter().flat_map(|v| v.to_le_bytes()));
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(cd_offset.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    std::fs::write(dst, out).unwrap();
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[test]
fn malicious_pickles_are_refused_and_their_payload_never_runs() {
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(import_fixtures().join("malicious.json")).unwrap()).unwrap();
    let marker = PathBuf::from(info["marker"].as_str().unwrap());
    let _ = std::fs::remove_file(&marker);
    for name in info["files"].as_array().unwrap() {
        let path = import_fixtures().join(name.as_str().unwrap());
        let error = fails(|root| stylecodes_from_bin(&path, root, &tiny_stylecodes_spec(), &options(WeightDtype::F32)));
        assert!(matches!(&error, ImportError::ForbiddenGlobal { global, .. } if global == "posix.system"), "{error}");
        let text = error.to_string();
        assert!(
            text.contains(name.as_str().unwrap())
                && text.contains("posix.system")
                && text.contains("nothing was executed"),
            "{text}"
        );
        // Also as an SD1.5 checkpoint.
        let error = fails(sd15_file(&path));
        assert!(matches!(error, ImportError::ForbiddenGlobal { .. }), "{error}");
        assert!(!marker.exists(), "the payload of {name} ran");
    }
}

#[test]
fn a_missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.safetensors");
    let gone = "model.diffusion_model.output_blocks.4.1.transformer_blocks.0.attn2.to_k.weight";
    let tensors: Vec<Raw> =
        raw_tensors(&import_fixtures().join("sd15_ldm.safetensors")).into_iter().filter(|t| t.name != gone).collect();
    write_safetensors(&path, &tensors);
    let error = fails(sd15_file(&path));
    assert!(
        matches!(&error, ImportError::MissingTensors { keys, model, .. } if keys == &[gone] && model == "the UNet"),
        "{error}"
    );
    assert!(error.to_string().contains("missing.safetensors") && error.to_string().contains(gone), "{error}");

    // The same for the official form's autoencoder.
    let path = dir.path().join("stylecodes.safetensors");
    let tensors: Vec<Raw> = raw_tensors(&weights().stylecodes_weights().unwrap())
        .into_iter()
        .filter(|t| t.name != "sref_autoencoder.tgt_init")
        .collect();
    write_safetensors(&path, &tensors);
    let error = fails(|root| stylecodes_from_bin(&path, root, &tiny_stylecodes_spec(), &options(WeightDtype::F32)));
    assert!(
        matches!(&error, ImportError::MissingTensors { keys, .. } if keys == &["sref_autoencoder.tgt_init"]),
        "{error}"
    );
}

#[test]
fn a_wrong_shape_names_the_key_and_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wrong.safetensors");
    let key = "first_stage_model.decoder.up.0.block.0.conv1.weight";
    let tensors: Vec<Raw> = raw_tensors(&import_fixtures().join("sd15_ldm.safetensors"))
        .into_iter()
        .map(|t| if t.name == key { Raw { shape: vec![t.shape[0], t.shape[1], 1, 9], ..t } } else { t })
        .collect();
    let expected =
        raw_tensors(&import_fixtures().join("sd15_ldm.safetensors")).into_iter().find(|t| t.name == key).unwrap().shape;
    write_safetensors(&path, &tensors);
    let error = fails(sd15_file(&path));
    match &error {
        ImportError::WrongShape { key: k, expected: e, found, .. } => {
            assert_eq!((k.as_str(), e), (key, &expected));
            assert_eq!(found[2..], [1, 9]);
        }
        other => panic!("{other}"),
    }
    assert!(error.to_string().contains(&format!("{expected:?}")), "{error}");
}

#[test]
fn files_that_are_not_checkpoints_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.ckpt");
    std::fs::write(&text, "this is not a checkpoint at all\n").unwrap();
    let empty = dir.path().join("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    let image = fixtures().join("images/drawing.png");
    let zip = dir.path().join("other.zip");
    shorten_zip_entry(&std::fs::read(import_fixtures().join("malicious_top_level.bin")).unwrap(), "", 0, &zip);
    rename_zip_pickle(&zip);
    for path in [&text, &empty, &image, &zip] {
        let error = fails(sd15_file(path));
        assert!(matches!(error, ImportError::NotACheckpoint { .. }), "{}: {error}", path.display());
        assert!(error.to_string().contains(&path.file_name().unwrap().to_string_lossy().to_string()), "{error}");
    }
    // A folder that is not a diffusers folder.
    let error = fails(|root| sd15_from_diffusers_dir(dir.path(), root, &options(WeightDtype::F16)));
    assert!(error.to_string().contains("not a diffusers SD1.5 folder"), "{error}");
}

/// Renames every `data.pkl` in a zip to `other.txt` (same length), making
/// a zip that is not a PyTorch checkpoint.
fn rename_zip_pickle(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let needle = b"data.pkl";
    let mut i = 0;
    while i + needle.len() <= bytes.len() {
        if &bytes[i..i + needle.len()] == needle {
            bytes[i..i + needle.len()].copy_from_slice(b"note.txt");
        }
        i += 1;
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_failed_import_leaves_a_previous_good_one_alone() {
    let out = tempfile::tempdir().unwrap();
    let good = sd15_from_single_file(
        &import_fixtures().join("sd15_ldm.safetensors"),
        out.path(),
        &tiny_configs(),
        &options(WeightDtype::F16),
    )
    .unwrap();
    let before = listing(&good.dir);
    let dir = tempfile::tempdir().unwrap();
    let bad = truncated_copy(&import_fixtures().join("sd15_ldm.ckpt"), dir.path(), 0.5);
    sd15_from_single_file(&bad, out.path(), &tiny_configs(), &options(WeightDtype::F16)).unwrap_err();
    assert_eq!(listing(&good.dir), before);
    good.manifest.verify(&good.dir).unwrap();
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 1);
}

#[test]
fn a_source_inside_the_folder_it_would_replace_is_refused() {
    let out = tempfile::tempdir().unwrap();
    let inside = out.path().join("stylecodes");
    std::fs::create_dir_all(&inside).unwrap();
    let path = inside.join("stylecodes_sd15_v1.bin");
    std::fs::copy(import_fixtures().join("stylecodes.bin"), &path).unwrap();
    let error =
        stylecodes_from_bin(&path, out.path(), &tiny_stylecodes_spec(), &options(WeightDtype::F32)).unwrap_err();
    assert!(matches!(error, ImportError::SourceInsideTarget { .. }), "{error}");
    assert!(path.exists());
}

#[test]
fn a_config_sd15_does_not_support_is_refused_by_name() {
    let mut configs = tiny_configs();
    configs.unet = configs.unet.replace("\"addition_embed_type\": null", "\"addition_embed_type\": \"text_time\"");
    let error = fails(|root| {
        sd15_from_single_file(
            &import_fixtures().join("sd15_ldm.safetensors"),
            root,
            &configs,
            &options(WeightDtype::F16),
        )
    });
    assert!(
        error.to_string().contains("addition_embed_type") && error.to_string().contains("unet/config.json"),
        "{error}"
    );
}

// ---------------------------------------------------------------------------
// the expected-tensor tables against the real Python classes

fn sha256_lines(lines: &[String]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lines");
    std::fs::write(&path, lines.join("\n")).unwrap();
    import::sha256_file(&path).unwrap()
}

fn assert_digest(what: &str, lines: &[String], structure: &serde_json::Value) {
    let want = &structure[what];
    assert_eq!(lines.len() as u64, want["tensors"].as_u64().unwrap(), "{what}: tensor count");
    assert_eq!(
        sha256_lines(lines),
        want["sha256"].as_str().unwrap(),
        "{what}: table differs from the Python classes:\n{}",
        lines.join("\n")
    );
}

#[test]
fn full_size_tables_match_diffusers_transformers_and_the_release() {
    let structure: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(import_fixtures().join("structure.json")).unwrap()).unwrap();
    let standard = Sd15Configs::standard();
    let unet = UNetConfig::from_json(&standard.unet).unwrap();
    let vae = VaeConfig::from_json(&standard.vae).unwrap();
    let clip = ClipTextConfig::from_json(&standard.text_encoder).unwrap();
    assert_digest("sd15_unet", &expected::lines(&unet.expected_tensors().unwrap()), &structure);
    assert_digest("sd15_vae", &expected::lines(&vae.expected_tensors().unwrap()), &structure);
    assert_digest("sd15_text_encoder", &expected::lines(&clip.expected_tensors().unwrap()), &structure);
    assert_digest("sd15_ldm_mapping", &expected::ldm_mapping_lines(&unet, &vae, &clip).unwrap(), &structure);
    let official = StylecodesSpec::official();
    let stylecodes = expected::stylecodes(&official.autoencoder, official.control.as_ref()).unwrap();
    assert_digest("stylecodes_official", &expected::lines(&stylecodes), &structure);
}

#[test]
fn tiny_tables_match_the_tiny_diffusers_models() {
    let configs = tiny_configs();
    let check = |rel: &str, table: Vec<expected::ExpectedTensor>| {
        let file: BTreeMap<String, Vec<usize>> =
            read_tensors(&reference_dir().join(rel)).into_iter().map(|(k, (_, s, _))| (k, s)).collect();
        let ours: BTreeMap<String, Vec<usize>> = table.into_iter().map(|t| (t.key, t.shape)).collect();
        assert_eq!(ours, file, "{rel}");
    };
    check(
        "unet/diffusion_pytorch_model.safetensors",
        UNetConfig::from_json(&configs.unet).unwrap().expected_tensors().unwrap(),
    );
    check(
        "vae/diffusion_pytorch_model.safetensors",
        VaeConfig::from_json(&configs.vae).unwrap().expected_tensors().unwrap(),
    );
    check(
        "text_encoder/model.safetensors",
        ClipTextConfig::from_json(&configs.text_encoder).unwrap().expected_tensors().unwrap(),
    );
}
