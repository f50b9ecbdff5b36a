//! NaN and infinities out of the UNet or the VAE stop a generation with an
//! error naming the stage and the step, instead of a black or noise image.
//! NaN or infinite weights are refused as they load, naming the tensor, so
//! the run's check is reached here by finite weights whose activations overflow.

use burn::tensor::DType;
use burn_stylecode::style::code::CodeError;
use burn_stylecode::{Error, GenerateRequest, GenerateSettings, ImageSpec, Style, StyleCodes, WeightsDir};
use burn_stylecode_tests::*;

/// A weights copy whose `model` file (under sd15/) has each of `keys` set to `value` everywhere.
fn poisoned(model: &str, keys: &[&str], value: f32) -> (tempfile::TempDir, WeightsDir) {
    let (dir, weights) = weights_copy();
    let path = weights.sd15_dir().join(model);
    let original = fixtures().join("weights/sd15").join(model);
    let mut found = 0;
    let edit = |(name, shape, values): Entry| {
        if keys.contains(&name.as_str()) {
            found += 1;
            let poisoned = vec![value; values.len()];
            return Some((name, shape, poisoned));
        }
        Some((name, shape, values))
    };
    rewrite_safetensors(&original, &path, edit, vec![], safetensors::Dtype::F32);
    assert_eq!(found, keys.len(), "{keys:?} are in {model}");
    (dir, weights)
}

/// A final group norm scaled and shifted by f32::MAX: finite weights whose
/// output overflows to infinity (and NaN after the next convolution).
fn overflowing(model: &str, norm: &str) -> (tempfile::TempDir, WeightsDir) {
    poisoned(model, &[&format!("{norm}.weight"), &format!("{norm}.bias")], f32::MAX)
}

fn generate_as(weights: WeightsDir, dtype: DType) -> Result<usize, Error> {
    let styles = StyleCodes::<TestBackend>::new(weights, dtype, device());
    let settings = GenerateSettings { steps: 2, width: 64, height: 64, ..GenerateSettings::default() };
    let spec = ImageSpec { prompt: "a cat".into(), negative: String::new(), seed: 1, style: Style::None };
    styles
        .generate(&GenerateRequest::repeated(spec, 1, settings), |_| std::ops::ControlFlow::Continue(()))
        .map(|i| i.len())
}

#[test]
fn nan_weights_are_refused_at_load_naming_the_file_and_tensor() {
    let (_dir, weights) = poisoned("unet/diffusion_pytorch_model.safetensors", &["conv_out.bias"], f32::NAN);
    match generate(weights) {
        Err(error @ Error::NonFiniteTensor { overflow: false, .. }) => {
            let text = error.to_string();
            assert!(text.contains("unet/diffusion_pytorch_model.safetensors: tensor `conv_out.bias` has"), "{text}");
        }
        other => panic!("expected NonFiniteTensor, got {other:?}"),
    }
}

#[test]
fn weights_over_f16_range_are_refused_when_loaded_in_f16() {
    let (_dir, weights) = poisoned("vae/diffusion_pytorch_model.safetensors", &["decoder.conv_out.bias"], 1e6);
    match generate_as(weights, DType::F16) {
        Err(error @ Error::NonFiniteTensor { overflow: true, count: 3, .. }) => {
            assert!(error.to_string().contains("--dtype f32"), "{error}");
        }
        other => panic!("expected NonFiniteTensor (overflow), got {other:?}"),
    }
}

fn generate(weights: WeightsDir) -> Result<usize, Error> {
    generate_as(weights, DType::F32)
}

#[test]
fn nan_out_of_the_unet_names_the_unet_and_the_first_step() {
    let (_dir, weights) = overflowing("unet/diffusion_pytorch_model.safetensors", "conv_norm_out");
    match generate(weights) {
        Err(error @ Error::NonFinite { .. }) => {
            let text = error.to_string();
            assert!(text.starts_with("the UNet's noise prediction has") && text.contains("at step 1 of 2"), "{text}");
        }
        other => panic!("expected NonFinite, got {other:?}"),
    }
}

#[test]
fn infinity_out_of_the_vae_names_the_vae() {
    let (_dir, weights) = overflowing("vae/diffusion_pytorch_model.safetensors", "decoder.conv_norm_out");
    match generate(weights) {
        Err(error @ Error::NonFinite { count, .. }) => {
            let text = error.to_string();
            assert!(text.starts_with("the VAE decoder's image has") && text.contains("the end of denoising"), "{text}");
            assert_eq!(count, 3 * 64 * 64, "every pixel of the image");
        }
        other => panic!("expected NonFinite, got {other:?}"),
    }
}

#[test]
fn intact_weights_generate() {
    assert_eq!(generate(weights()).unwrap(), 1);
}

/// A non-finite value out of the style encoder is an error naming the latent
/// value, not a valid-looking code (clamping used to make it value 0). The
/// weights stay finite (NaN weights are refused at load): latent value 7's
/// projection bias dominates its LayerNorm input, so its normalised value
/// is about +4.4, and a scale of f32::MAX overflows it to +inf.
#[test]
fn a_non_finite_latent_out_of_the_style_encoder_is_an_error_not_a_code() {
    let (_dir, weights) = weights_copy();
    let path = weights.stylecodes_weights().unwrap();
    let original = fixtures().join("weights/stylecodes/stylecodes.safetensors");
    let edit = |(name, shape, mut values): Entry| {
        match name.as_str() {
            "sref_autoencoder.latent_proj.bias" => values[7] = 1e15,
            "sref_autoencoder.latent_norm.weight" => values[7] = f32::MAX,
            "sref_autoencoder.latent_norm.bias" => values[7] = 0.0,
            _ => {}
        }
        Some((name, shape, values))
    };
    rewrite_safetensors(&original, &path, edit, vec![], safetensors::Dtype::F32);
    let image = burn_stylecode::siglip::preprocess::load_rgb(fixtures().join("images/drawing.png")).unwrap();
    let styles = StyleCodes::<TestBackend>::new(weights, DType::F32, device());
    match styles.encode(&[image]) {
        Err(error @ Error::Code(CodeError::NonFinite { index: 7, .. })) => {
            assert!(error.to_string().contains("latent value 7 is inf"), "{error}");
        }
        other => panic!("expected a NonFinite code error for value 7, got {other:?}"),
    }
}
