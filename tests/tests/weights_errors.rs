//! The loader is strict, accepts the upstream variants, and says what is wrong.

use burn::module::Module;
use burn::tensor::DType;
use burn_stylecode::siglip::SiglipVisionTransformer;
use burn_stylecode::style::autoencoder::AttentionAutoencoder;
use burn_stylecode::weights::safetensors::TensorFile;
use burn_stylecode::{Error, StyleCodes};
use burn_stylecode_tests::*;
use safetensors::Dtype;
use std::path::PathBuf;

fn stylecodes_file() -> PathBuf {
    weights().stylecodes_weights().unwrap()
}

fn load_ae(path: &std::path::Path) -> Result<(), Error> {
    let config = weights().stylecodes_config().unwrap().autoencoder;
    AttentionAutoencoder::<TestBackend>::load(&config, &TensorFile::open(path)?, DType::F32, &device()).map(|_| ())
}

fn rewritten(edit: impl FnMut(Entry) -> Option<Entry>, extra: Vec<Entry>) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stylecodes.safetensors");
    rewrite_safetensors(&stylecodes_file(), &path, edit, extra, Dtype::F32);
    (dir, path)
}

#[test]
fn missing_tensor_is_named() {
    let (_dir, path) = rewritten(|e| (e.0 != "sref_autoencoder.latent_proj.bias").then_some(e), vec![]);
    let error = load_ae(&path).unwrap_err();
    assert!(
        matches!(&error, Error::MissingTensor { key, .. } if key == "sref_autoencoder.latent_proj.bias"),
        "{error}"
    );
    assert!(error.to_string().contains("stylecodes.safetensors"), "{error}");
}

#[test]
fn wrong_shape_names_key_and_both_shapes() {
    let (_dir, path) = rewritten(
        |(name, shape, values)| {
            if name == "sref_autoencoder.input_proj.weight" {
                Some((name, vec![32, 31], values[..32 * 31].to_vec()))
            } else {
                Some((name, shape, values))
            }
        },
        vec![],
    );
    let error = load_ae(&path).unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("sref_autoencoder.input_proj.weight") && text.contains("[32, 31]") && text.contains("[32, 32]"),
        "{text}"
    );
}

#[test]
fn packed_attention_with_wrong_shape_is_named() {
    let (_dir, path) = rewritten(
        |(name, shape, values)| {
            if name == "sref_autoencoder.attention_layers.1.in_proj_weight" {
                Some((name, vec![64, 32], values[..64 * 32].to_vec()))
            } else {
                Some((name, shape, values))
            }
        },
        vec![],
    );
    let text = load_ae(&path).unwrap_err().to_string();
    assert!(
        text.contains("attention_layers.1.in_proj_weight") && text.contains("[64, 32]") && text.contains("[96, 32]"),
        "{text}"
    );
}

#[test]
fn unexpected_tensor_under_the_prefix_is_an_error() {
    let extra = vec![("sref_autoencoder.extra_layer.weight".to_string(), vec![2], vec![0.0, 1.0])];
    let (_dir, path) = rewritten(Some, extra);
    let error = load_ae(&path).unwrap_err();
    assert!(
        matches!(&error, Error::UnexpectedTensors { keys, .. } if keys == &["sref_autoencoder.extra_layer.weight"]),
        "{error}"
    );
}

#[test]
fn tensors_of_other_modules_are_ignored() {
    // The fixture already holds `control_model.*` and `middle_block_out.*`.
    assert!(TensorFile::open(stylecodes_file()).unwrap().keys().any(|k| k.starts_with("control_model.")));
    load_ae(&stylecodes_file()).unwrap();
    // And the SigLIP file holds the text tower and logit scale/bias.
    let siglip = TensorFile::open(weights().siglip_weights().unwrap()).unwrap();
    assert!(siglip.contains("logit_scale") && siglip.keys().any(|k| k.starts_with("text_model.")));
}

#[test]
fn positional_buffer_is_checked() {
    let (_dir, path) = rewritten(
        |(name, shape, mut values)| {
            if name == "sref_autoencoder.pos_encoder.pe" {
                values[100] += 0.5;
            }
            Some((name, shape, values))
        },
        vec![],
    );
    let error = load_ae(&path).unwrap_err();
    assert!(matches!(&error, Error::BadBuffer { key, .. } if key == "sref_autoencoder.pos_encoder.pe"), "{error}");
    // A NaN is no match either: the loader refuses non-finite tensors before
    // the buffer is compared (whose own check also names a NaN).
    let (_dir, path) = rewritten(
        |(name, shape, mut values)| {
            if name == "sref_autoencoder.pos_encoder.pe" {
                values[100] = f32::NAN;
            }
            Some((name, shape, values))
        },
        vec![],
    );
    let error = load_ae(&path).unwrap_err();
    assert!(
        matches!(&error, Error::NonFiniteTensor { key, count: 1, .. } if key == "sref_autoencoder.pos_encoder.pe"),
        "{error}"
    );
    // Without the buffer at all, it loads.
    let (_dir, path) = rewritten(|e| (!e.0.ends_with("pos_encoder.pe")).then_some(e), vec![]);
    load_ae(&path).unwrap();
}

/// Under a `controlnet.` prefix and in f16, the autoencoder loads exactly the
/// stored values: it equals the unprefixed f32 file of the same f16-rounded
/// values, bit for bit. Against the f32 reference only the weights' rounding
/// is left: measured 7.8e-4 of the scale (f16 keeps 11 bits, 4.9e-4 per weight).
#[test]
fn controlnet_prefix_and_f16_storage_load() {
    let dir = tempfile::tempdir().unwrap();
    let (f16, rounded) = (dir.path().join("f16.safetensors"), dir.path().join("rounded.safetensors"));
    rewrite_safetensors(
        &stylecodes_file(),
        &f16,
        |(n, s, v)| Some((format!("controlnet.{n}"), s, v)),
        vec![],
        Dtype::F16,
    );
    rewrite_safetensors(&stylecodes_file(), &rounded, round_through_f16, vec![], Dtype::F32);
    let config = weights().stylecodes_config().unwrap().autoencoder;
    let load = |path: &std::path::Path| {
        AttentionAutoencoder::<TestBackend>::load(&config, &TensorFile::open(path).unwrap(), DType::F32, &device())
            .unwrap()
    };
    let reference = reference("autoencoder.safetensors");
    let latent = load(&f16).encode(tensor(&reference, "src"));
    let same = load(&rounded).encode(tensor(&reference, "src"));
    assert_within("f16 file vs f32 file of its values", latent.clone(), same, 0.0);
    assert_within("f16 weights vs f32 reference", latent, tensor(&reference, "latent"), 2e-3);
}

#[test]
fn unprefixed_siglip_file_loads_like_transformers_5_saves_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let src = weights().siglip_weights().unwrap();
    rewrite_safetensors(
        &src,
        &path,
        |(n, s, v)| n.strip_prefix("vision_model.").map(|rest| (rest.to_string(), s, v)),
        vec![],
        Dtype::F32,
    );
    let config = weights().siglip_config().unwrap();
    let model =
        SiglipVisionTransformer::<TestBackend>::load(&config, &TensorFile::open(&path).unwrap(), DType::F32, &device())
            .unwrap();
    let reference = reference("siglip.safetensors");
    assert_close(
        "penultimate",
        model.penultimate(tensor(&reference, "pixel_values")),
        tensor(&reference, "penultimate"),
    );
    assert!(model.num_params() > 0);
}

#[test]
fn truncated_and_foreign_files_are_rejected_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(stylecodes_file()).unwrap();
    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let error = TensorFile::open(&truncated).err().expect("truncated file is rejected");
    assert!(error.to_string().contains("truncated.safetensors"), "{error}");

    let text = dir.path().join("notes.safetensors");
    std::fs::write(&text, "these are not tensors").unwrap();
    let error = TensorFile::open(&text).err().expect("text file is rejected");
    assert!(matches!(error, Error::Safetensors { .. }), "{error}");

    let error = TensorFile::open(dir.path().join("absent.safetensors")).err().expect("missing file");
    assert!(error.to_string().contains("absent.safetensors"), "{error}");
}

#[test]
fn missing_weights_folder_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let weights = burn_stylecode::WeightsDir::new(dir.path());
    let error =
        StyleCodes::<TestBackend>::new(weights.clone(), DType::F32, device()).encoder().err().unwrap().to_string();
    assert!(error.contains("no siglip weights") && error.contains("cargo xtask import-weights"), "{error}");

    let (_copy, weights) = weights_copy();
    std::fs::remove_file(weights.stylecodes_weights().unwrap()).unwrap();
    let error =
        StyleCodes::<TestBackend>::new(weights.clone(), DType::F32, device()).encoder().err().unwrap().to_string();
    assert!(error.contains("import-weights"), "{error}");
}
