//! Every network in f16, the default on GPU backends: the f32 fixtures are
//! converted at load, the network runs in f16 on the CPU, and its output
//! must follow the PyTorch f32 reference to f16 precision.
//!
//! Tolerance: 1e-2 of the reference's scale. f16 keeps 11 significant bits
//! (4.9e-4 relative per rounding); the tiny networks' few dozen layers of
//! rounding stay well inside it, while a real mistake (an op in the wrong
//! dtype, an overflow, a lost mask) lands far outside.

use burn::prelude::*;
use burn::tensor::DType;
use burn_stylecode::sd::clip::ClipTextTransformer;
use burn_stylecode::sd::text_context::TextContext;
use burn_stylecode::sd::unet_2d::{UNet2DConditionModel, UNetConfig};
use burn_stylecode::sd::vae::AutoencoderKL;
use burn_stylecode::siglip::SiglipVisionTransformer;
use burn_stylecode::style::autoencoder::quantize_dequantize;
use burn_stylecode::style::autoencoder::AttentionAutoencoder;
use burn_stylecode::style::{StyleCodesModel, StyleCondition};
use burn_stylecode::weights::safetensors::TensorFile;
use burn_stylecode::weights::JsonConfig;
use burn_stylecode_tests::*;

const F16_TOL: f32 = 1e-2;

fn half<const D: usize>(file: &TensorFile, key: &str) -> Tensor<TestBackend, D> {
    tensor::<D>(file, key).cast(DType::F16)
}

/// Asserts that an f16 output follows the f32 reference; returns the relative error.
fn assert_f16_close<const D: usize>(
    what: &str,
    actual: Tensor<TestBackend, D>,
    expected: Tensor<TestBackend, D>,
) -> f32 {
    assert_eq!(actual.dtype(), DType::F16, "{what}: the network left f16");
    assert_within(&format!("f16 {what}"), actual.cast(DType::F32), expected, F16_TOL)
}

#[test]
fn unet() {
    let dir = weights().sd15_dir().join("unet");
    let unet = UNet2DConditionModel::<TestBackend>::from_diffusers_dir(&dir, DType::F16, &device()).unwrap();
    let reference = reference("sd15_unet.safetensors");
    let context = TextContext::new(half(&reference, "context"));
    let noise = unet.forward(half(&reference, "sample"), half(&reference, "timesteps"), &context);
    assert_f16_close("unet", noise, tensor(&reference, "noise"));
}

#[test]
fn vae() {
    let dir = weights().sd15_dir().join("vae");
    let vae = AutoencoderKL::<TestBackend>::from_diffusers_dir(&dir, DType::F16, &device()).unwrap();
    let reference = reference("sd15_vae.safetensors");
    let (mean, logvar) = vae.encode(half(&reference, "image"));
    assert_f16_close("vae mean", mean, tensor(&reference, "mean"));
    assert_f16_close("vae logvar", logvar, tensor(&reference, "logvar"));
    assert_f16_close("vae decoded", vae.decode(half(&reference, "latents")), tensor(&reference, "decoded"));
}

#[test]
fn clip_text() {
    let dir = weights().sd15_dir().join("text_encoder");
    let clip = ClipTextTransformer::<TestBackend>::from_dir(&dir, DType::F16, &device()).unwrap();
    let reference = reference("clip_text.safetensors");
    let out = clip.forward(tensor::<2>(&reference, "input_ids").int());
    assert_f16_close("clip last_hidden_state", out.last_hidden_state, tensor(&reference, "last_hidden_state"));
    assert_f16_close("clip pooled_output", out.pooled_output, tensor(&reference, "pooled_output"));
}

#[test]
fn siglip() {
    let siglip =
        SiglipVisionTransformer::<TestBackend>::from_hf_dir(&weights().siglip_dir(), DType::F16, &device()).unwrap();
    let reference = reference("siglip.safetensors");
    let out = siglip.forward(half(&reference, "pixel_values"));
    assert_f16_close("siglip penultimate", out.penultimate, tensor(&reference, "penultimate"));
    assert_f16_close("siglip pooled_output", out.pooled_output.expect("head"), tensor(&reference, "pooled_output"));
}

#[test]
fn autoencoder() {
    let weights = weights();
    let config = weights.stylecodes_config().unwrap();
    let file = TensorFile::open(weights.stylecodes_weights().unwrap()).unwrap();
    let model = AttentionAutoencoder::<TestBackend>::load(&config.autoencoder, &file, DType::F16, &device()).unwrap();
    let reference = reference("autoencoder.safetensors");
    let latent = model.encode(half(&reference, "src"));
    assert_f16_close("autoencoder latent", latent, tensor(&reference, "latent"));
    let dequant = quantize_dequantize(half::<2>(&reference, "latent"));
    assert_f16_close("autoencoder decoded", model.decode(dequant, 3, 2), tensor(&reference, "decoded"));
}

#[test]
fn style_control() {
    let weights = weights();
    let dir = weights.sd15_dir().join("unet");
    let unet_config = UNetConfig::from_file(&dir.join("config.json")).unwrap();
    let unet = UNet2DConditionModel::<TestBackend>::from_diffusers_dir(&dir, DType::F16, &device()).unwrap();
    let codes =
        StyleCodesModel::<TestBackend>::from_dir(&weights.stylecodes_dir(), &unet_config, DType::F16, &device())
            .unwrap();
    let reference = reference("style_control.safetensors");
    let sample: Tensor<TestBackend, 4> = half(&reference, "sample");
    let [_, _, height, width] = sample.dims();
    let scale = reference_json("style_control.json")["step_scale"].as_f64().unwrap();
    let condition = StyleCondition {
        autoencoder: &codes.autoencoder,
        control: &codes.control,
        latents: half(&reference, "code_latents"),
        scale,
    };
    let features = condition.features(&unet, [height, width]);
    let noise = codes.control.forward(
        &unet,
        sample,
        half(&reference, "timesteps"),
        &TextContext::new(half(&reference, "context")),
        features,
        scale,
    );
    assert_f16_close("style control", noise, tensor(&reference, "noise_scale_0.9"));
}
