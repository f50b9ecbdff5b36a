//! SD1.5 VAE against diffusers' `AutoencoderKL` (tiny, randomised; made by
//! `fixtures/make_sd_fixtures.py`).

use burn::tensor::DType;
use burn_stylecode::sd::diffusers_weights;
use burn_stylecode::sd::unet_2d::count_params;
use burn_stylecode::sd::vae::{AutoencoderKL, VaeConfig};
use burn_stylecode::weights::safetensors::TensorFile;
use burn_stylecode::weights::JsonConfig;
use burn_stylecode::Error;
use burn_stylecode_tests::*;
use std::path::{Path, PathBuf};

type Vae = AutoencoderKL<TestBackend>;

fn vae_dir() -> PathBuf {
    weights().sd15_dir().join("vae")
}

fn load(path: &Path) -> Result<Vae, Error> {
    let config = VaeConfig::from_file(&vae_dir().join("config.json"))?;
    AutoencoderKL::load(&config, &TensorFile::open(path)?, DType::F32, &device())
}

fn tiny_vae() -> Vae {
    load(&diffusers_weights(&vae_dir()).unwrap()).unwrap()
}

fn report(what: &str, relative: f32) {
    println!("{what}: max relative error {relative:.2e}");
}

#[test]
fn encode_matches_diffusers() {
    let reference = reference("sd15_vae.safetensors");
    let vae = tiny_vae();
    let (mean, logvar) = vae.encode(tensor(&reference, "image"));
    report("mean", assert_close("mean", mean.clone(), tensor(&reference, "mean")));
    report("logvar", assert_close("logvar", logvar.clone(), tensor(&reference, "logvar")));
    let sample = Vae::sample(mean, logvar, tensor(&reference, "noise"));
    report("sample", assert_close("sample", sample, tensor(&reference, "sample")));
}

#[test]
fn decode_matches_diffusers() {
    let reference = reference("sd15_vae.safetensors");
    let vae = tiny_vae();
    let decoded = vae.decode(tensor(&reference, "latents"));
    report("decoded", assert_close("decoded", decoded, tensor(&reference, "decoded")));
    let decoded_odd = vae.decode(tensor(&reference, "latents_odd"));
    // One upsampler in the tiny VAE: ×2.
    assert_eq!(decoded_odd.dims(), [1, 3, 10, 6]);
    report("decoded_odd", assert_close("decoded_odd", decoded_odd, tensor(&reference, "decoded_odd")));
}

#[test]
fn old_attention_names_load() {
    let path = fixtures().join("reference").join("sd15_vae_old_names.safetensors");
    let file = TensorFile::open(&path).unwrap();
    assert!(file.contains("decoder.mid_block.attentions.0.proj_attn.weight"));
    assert!(!file.contains("decoder.mid_block.attentions.0.to_out.0.weight"));
    let vae = load(&path).unwrap();
    let reference = reference("sd15_vae.safetensors");
    let decoded = vae.decode(tensor(&reference, "latents"));
    report("decoded (old names)", assert_close("decoded (old names)", decoded, tensor(&reference, "decoded")));
    let (mean, _) = vae.encode(tensor(&reference, "image"));
    assert_close("mean (old names)", mean, tensor(&reference, "mean"));
}

#[test]
fn scaling_factor_comes_from_the_config() {
    let config = VaeConfig::from_file(&vae_dir().join("config.json")).unwrap();
    assert_eq!(config.scaling_factor, 0.18215);
    let vae = tiny_vae();
    assert_eq!(vae.scaling_factor(), 0.18215);
    let mut other = config.clone();
    other.scaling_factor = 0.5;
    assert_eq!(other.init::<TestBackend>(&device()).scaling_factor(), 0.5);
    let reference = reference("sd15_vae.safetensors");
    let latents = tensor::<4>(&reference, "latents");
    let round_trip = vae.from_diffusion(vae.to_diffusion(latents.clone()));
    assert_close("round trip", round_trip, latents);
}

#[test]
fn full_size_sd15_vae_has_the_real_shapes() {
    let vae = VaeConfig::sd15().init::<TestBackend>(&device());
    // runwayml/stable-diffusion-v1-5's VAE.
    assert_eq!(count_params::<TestBackend, _>(&vae), 83_653_863);
}

#[test]
fn config_errors_name_the_value() {
    let json = r#"{"down_block_types": ["AttnDownEncoderBlock2D"], "up_block_types": ["UpDecoderBlock2D"], "block_out_channels": [64]}"#;
    let error = VaeConfig::from_json(json).unwrap_err();
    assert!(error.contains("AttnDownEncoderBlock2D"), "{error}");
    let error = VaeConfig::from_json(r#"{"act_fn": "relu"}"#).unwrap_err();
    assert!(error.contains("relu"), "{error}");
    assert_eq!(VaeConfig::from_json("{}").unwrap(), VaeConfig::default());
}

#[test]
fn missing_and_wrong_tensors_are_named() {
    let src = diffusers_weights(&vae_dir()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("diffusion_pytorch_model.safetensors");
    let key = "encoder.mid_block.attentions.0.to_q.weight";
    rewrite_safetensors(&src, &path, |e| (e.0 != key).then_some(e), vec![], safetensors::Dtype::F32);
    let error = load(&path).unwrap_err();
    assert!(matches!(&error, Error::MissingTensor { key: k, .. } if k == key), "{error}");

    let key = "decoder.up_blocks.0.upsamplers.0.conv.bias";
    rewrite_safetensors(
        &src,
        &path,
        |(name, shape, values)| {
            if name == key {
                Some((name, vec![3], values[..3].to_vec()))
            } else {
                Some((name, shape, values))
            }
        },
        vec![],
        safetensors::Dtype::F32,
    );
    let text = load(&path).unwrap_err().to_string();
    assert!(text.contains(key) && text.contains("[3]") && text.contains("[16]"), "{text}");

    // Both spellings at once: the old one is left over.
    let extra = vec![("decoder.mid_block.attentions.0.query.bias".to_string(), vec![16], vec![0.0; 16])];
    rewrite_safetensors(&src, &path, Some, extra, safetensors::Dtype::F32);
    let error = load(&path).unwrap_err();
    assert!(
        matches!(&error, Error::UnexpectedTensors { keys, .. } if keys == &["decoder.mid_block.attentions.0.query.bias"]),
        "{error}"
    );
}

#[test]
fn f16_weights_load_exactly() {
    // The fixture's values are F16-exact, so F16 storage gives the same model.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("diffusion_pytorch_model.safetensors");
    rewrite_safetensors(&diffusers_weights(&vae_dir()).unwrap(), &path, Some, vec![], safetensors::Dtype::F16);
    let reference = reference("sd15_vae.safetensors");
    let decoded = load(&path).unwrap().decode(tensor(&reference, "latents"));
    assert_close("decoded (f16 file)", decoded, tensor(&reference, "decoded"));
}
