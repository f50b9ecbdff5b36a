//! The parity fixtures on a GPU backend: every tiny network, the style
//! control module and the whole pipeline against their PyTorch references,
//! in f32 and in f16 (the default on GPUs). The other tests run on the CPU;
//! GPU backends have their own kernels, fusion and autotuning, and their own
//! bugs (a burn-fusion one once made the UNet's 1×1 mid block read zeros).
//!
//! Built only with a GPU feature of this crate:
//! `cargo test -p burn-stylecode-tests --features wgpu --test gpu_backends`
//! (CI runs it on Mesa's lavapipe, a software Vulkan) or `--features cuda`.
//!
//! Tolerances, of the reference's scale: f32 [`REL_TOL`] (1e-4), as on the
//! CPU. f16 [`GPU_F16_TOL`] (2e-2), twice the CPU's f16 bound: on lavapipe
//! the f16 errors are about twice burn-flex's (UNet 9.4e-3 against 4.4e-3,
//! VAE decode 4.0e-3 against 1.1e-3), as some of its kernels keep f16
//! partial sums. The whole pipeline in f16: [`PIPELINE_F16_TOL`] (5e-2), as
//! classifier-free guidance multiplies the difference of two f16
//! predictions by 7.5 each step (measured 2.2e-2 on lavapipe, with f32 at
//! 3e-6). A real mistake lands far outside these: the single-row time
//! embedding bug gave 0.26.

#![cfg(any(feature = "wgpu", feature = "cuda"))]

use burn::prelude::*;
use burn::tensor::DType;
use burn_stylecode::sd::clip::ClipTextTransformer;
use burn_stylecode::sd::pipeline::StableDiffusion;
use burn_stylecode::sd::text_context::TextContext;
use burn_stylecode::sd::unet_2d::{UNet2DConditionModel, UNetConfig};
use burn_stylecode::sd::vae::AutoencoderKL;
use burn_stylecode::siglip::SiglipVisionTransformer;
use burn_stylecode::style::autoencoder::AttentionAutoencoder;
use burn_stylecode::style::{StyleCodesModel, StyleCondition};
use burn_stylecode::weights::safetensors::TensorFile;
use burn_stylecode::weights::JsonConfig;
use burn_stylecode_tests::{
    pipeline_reference_settings, reference, reference_json, relative_error_values, weights, REL_TOL,
};
use std::ops::ControlFlow;

#[cfg(feature = "wgpu")]
type Gpu = burn::backend::Wgpu;
#[cfg(all(feature = "cuda", not(feature = "wgpu")))]
type Gpu = burn::backend::Cuda;

const GPU_F16_TOL: f32 = 2e-2;
const PIPELINE_F16_TOL: f32 = 5e-2;
const DTYPES: [DType; 2] = [DType::F32, DType::F16];

fn device() -> burn::tensor::Device<Gpu> {
    Default::default()
}

/// A reference tensor on the GPU in `dtype`.
fn tensor<const D: usize>(file: &TensorFile, key: &str, dtype: DType) -> Tensor<Gpu, D> {
    Tensor::from_data(file.read(key, DType::F32).unwrap(), (&device(), dtype))
}

/// Asserts that `actual` (in `dtype`) follows the f32 reference `key`.
fn assert_close<const D: usize>(what: &str, dtype: DType, actual: Tensor<Gpu, D>, file: &TensorFile, key: &str) {
    assert_within(what, dtype, actual, file, key, GPU_F16_TOL);
}

/// [`assert_close`] with `f16_tolerance` in f16.
fn assert_within<const D: usize>(
    what: &str,
    dtype: DType,
    actual: Tensor<Gpu, D>,
    file: &TensorFile,
    key: &str,
    f16_tolerance: f32,
) {
    assert_eq!(actual.dtype(), dtype, "{what}: the network left {dtype:?}");
    assert_eq!(actual.dims().as_slice(), file.shape(key).unwrap(), "{what}: shape");
    let actual = actual.into_data().convert::<f32>().into_vec::<f32>().unwrap();
    let expected = file.read_f32(key).unwrap();
    let tolerance = if dtype == DType::F32 { REL_TOL } else { f16_tolerance };
    let relative = relative_error_values(&format!("{dtype:?} {what}"), &actual, &expected);
    eprintln!("{dtype:?} {what}: max relative error {relative:.2e}");
    assert!(
        relative <= tolerance,
        "{dtype:?} {what}: max error is {relative:e} of the reference's scale (> {tolerance:e})"
    );
}

#[test]
fn unet() {
    let dir = weights().sd15_dir().join("unet");
    let r = reference("sd15_unet.safetensors");
    for dtype in DTYPES {
        let unet = UNet2DConditionModel::<Gpu>::from_diffusers_dir(&dir, dtype, &device()).unwrap();
        let (timesteps, context) = (tensor(&r, "timesteps", dtype), tensor(&r, "context", dtype));
        let context = TextContext::new(context);
        let noise = unet.forward(tensor(&r, "sample", dtype), timesteps.clone(), &context);
        assert_close("unet", dtype, noise, &r, "noise");
        let noise = unet.forward(tensor(&r, "sample_odd", dtype), timesteps, &context);
        assert_close("unet, odd latents", dtype, noise, &r, "noise_odd");
    }
}

#[test]
fn style_control() {
    let dir = weights().sd15_dir().join("unet");
    let config = UNetConfig::from_file(&dir.join("config.json")).unwrap();
    let r = reference("style_control.safetensors");
    let scale = reference_json("style_control.json")["step_scale"].as_f64().unwrap();
    for dtype in DTYPES {
        let unet = UNet2DConditionModel::<Gpu>::from_diffusers_dir(&dir, dtype, &device()).unwrap();
        let codes = StyleCodesModel::<Gpu>::from_dir(&weights().stylecodes_dir(), &config, dtype, &device()).unwrap();
        let sample = tensor::<4>(&r, "sample", dtype);
        let [_, _, height, width] = sample.dims();
        let latents = tensor(&r, "code_latents", dtype);
        let condition = StyleCondition { autoencoder: &codes.autoencoder, control: &codes.control, latents, scale };
        let features = condition.features(&unet, [height, width]);
        let (timesteps, context) = (tensor(&r, "timesteps", dtype), tensor(&r, "context", dtype));
        let noise = codes.control.forward(&unet, sample, timesteps, &TextContext::new(context), features, scale);
        assert_close("style control", dtype, noise, &r, "noise_scale_0.9");
    }
}

#[test]
fn vae() {
    let dir = weights().sd15_dir().join("vae");
    let r = reference("sd15_vae.safetensors");
    for dtype in DTYPES {
        let vae = AutoencoderKL::<Gpu>::from_diffusers_dir(&dir, dtype, &device()).unwrap();
        let (mean, logvar) = vae.encode(tensor(&r, "image", dtype));
        assert_close("vae mean", dtype, mean, &r, "mean");
        assert_close("vae logvar", dtype, logvar, &r, "logvar");
        assert_close("vae decoded", dtype, vae.decode(tensor(&r, "latents", dtype)), &r, "decoded");
    }
}

#[test]
fn clip_text() {
    let dir = weights().sd15_dir().join("text_encoder");
    let r = reference("clip_text.safetensors");
    for dtype in DTYPES {
        let clip = ClipTextTransformer::<Gpu>::from_dir(&dir, dtype, &device()).unwrap();
        let out = clip.forward(tensor::<2>(&r, "input_ids", DType::F32).int());
        assert_close("clip last_hidden_state", dtype, out.last_hidden_state, &r, "last_hidden_state");
        assert_close("clip pooled_output", dtype, out.pooled_output, &r, "pooled_output");
    }
}

#[test]
fn siglip() {
    let r = reference("siglip.safetensors");
    for dtype in DTYPES {
        let siglip = SiglipVisionTransformer::<Gpu>::from_hf_dir(&weights().siglip_dir(), dtype, &device()).unwrap();
        let out = siglip.forward(tensor(&r, "pixel_values", dtype));
        assert_close("siglip penultimate", dtype, out.penultimate, &r, "penultimate");
        assert_close("siglip pooled_output", dtype, out.pooled_output.expect("head"), &r, "pooled_output");
    }
}

#[test]
fn autoencoder() {
    let weights = weights();
    let config = weights.stylecodes_config().unwrap();
    let file = TensorFile::open(weights.stylecodes_weights().unwrap()).unwrap();
    let r = reference("autoencoder.safetensors");
    for dtype in DTYPES {
        let autoencoder = AttentionAutoencoder::<Gpu>::load(&config.autoencoder, &file, dtype, &device()).unwrap();
        assert_close("autoencoder latent", dtype, autoencoder.encode(tensor(&r, "src", dtype)), &r, "latent");
    }
}

/// Three DDIM steps with CFG from the saved noise, then the VAE decode:
/// the schedulers' and the pipeline's tensor work on the device.
#[test]
fn whole_pipeline() {
    let json = reference_json("pipeline.json");
    let r = reference("pipeline.safetensors");
    let settings = pipeline_reference_settings(&json);
    let text = |key: &str| vec![json[key].as_str().unwrap().to_string()];
    for dtype in DTYPES {
        let sd = StableDiffusion::<Gpu>::load(&weights().sd15_dir(), dtype, &device()).unwrap();
        let context = sd.text_context(&text("prompt"), &text("negative_prompt"), &settings).unwrap();
        let predict = |x, t, ctx| sd.unet.forward(x, t, &ctx);
        let noise = tensor(&r, "noise", dtype);
        let latents =
            sd.denoise(noise, &context, &settings, &mut [], predict, |_, _| ControlFlow::Continue(())).unwrap();
        assert_within("pipeline latents", dtype, latents.clone(), &r, "latents", PIPELINE_F16_TOL);
        let image = (sd.vae.decode(sd.vae.from_diffusion(latents)) / 2.0 + 0.5).clamp(0.0, 1.0);
        assert_within("pipeline image", dtype, image, &r, "image", PIPELINE_F16_TOL);
    }
}
