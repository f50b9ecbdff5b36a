//! The parity fixtures on any backend: every tiny network against its
//! PyTorch reference (`tests/fixtures`), in f32 and f16. CI runs the same
//! comparisons on the CPU; this is for the GPU backends.
//!
//! `cargo run --release -p burn-stylecode-cli --features wgpu --example backend_parity -- wgpu`

use burn::prelude::*;
use burn::tensor::DType;
use burn_stylecode::style_control::{mid_grid, StyleCodes};
use burn_stylecode::weights::loader::*;
use burn_stylecode::weights::safetensors::TensorFile;
use burn_stylecode::WeightsDir;
use std::path::PathBuf;

fn main() {
    let backend = std::env::args().nth(1).unwrap_or_else(|| "cpu".into());
    match backend.as_str() {
        "cpu" => run::<burn::backend::Flex>(Default::default()),
        #[cfg(feature = "wgpu")]
        "wgpu" => run::<burn::backend::Wgpu>(Default::default()),
        #[cfg(feature = "cuda")]
        "cuda" => run::<burn::backend::Cuda>(Default::default()),
        other => panic!("backend `{other}` is not built in (cargo features `wgpu`, `cuda`)"),
    }
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn reference(name: &str) -> TensorFile {
    TensorFile::open(fixtures().join("reference").join(name)).expect("reference file")
}

fn tensor<B: Backend, const D: usize>(file: &TensorFile, key: &str, dtype: DType, device: &B::Device) -> Tensor<B, D> {
    Tensor::from_data(file.read(key, DType::F32).unwrap(), (device, dtype))
}

/// max |actual - expected| / max |expected|.
fn relative<B: Backend, const D: usize>(actual: Tensor<B, D>, file: &TensorFile, key: &str) -> f32 {
    let actual = actual.into_data().convert::<f32>().into_vec::<f32>().unwrap();
    let expected = file.read_f32(key).unwrap();
    let scale = expected.iter().fold(0f32, |m, x| m.max(x.abs()));
    let worst = actual.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0f32, |m, d| if d.is_nan() { f32::NAN } else { m.max(d) });
    worst / scale
}

fn run<B: Backend>(device: B::Device) {
    let weights = WeightsDir::new(fixtures().join("weights"));
    let sd = weights.sd15_dir();
    for dtype in [DType::F32, DType::F16] {
        let t = |file: &TensorFile, key: &str| tensor::<B, 4>(file, key, dtype, &device);
        let unet_dir = sd.join("unet");
        let unet_file = TensorFile::open(diffusers_weights(&unet_dir).unwrap()).unwrap();
        let unet = load_unet::<B>(&read_unet_config(&unet_dir).unwrap(), &unet_file, dtype, &device).unwrap();
        let r = reference("sd15_unet.safetensors");
        let noise = unet.forward(t(&r, "sample"), tensor(&r, "timesteps", dtype, &device), tensor(&r, "context", dtype, &device));
        println!("{dtype:?} unet: {:.2e}", relative(noise, &r, "noise"));

        let codes = StyleCodes::<B>::load(&weights, &read_unet_config(&unet_dir).unwrap(), dtype, &device).unwrap();
        let r = reference("style_control.safetensors");
        let sample = t(&r, "sample");
        let [_, _, height, width] = sample.dims();
        let features = codes.features(tensor(&r, "code_latents", dtype, &device), mid_grid(&unet, [height, width]));
        let styled = codes.control.forward(&unet, sample, tensor(&r, "timesteps", dtype, &device), tensor(&r, "context", dtype, &device), features, 0.9);
        println!("{dtype:?} style control, scale 0.9: {:.2e}", relative(styled, &r, "noise_scale_0.9"));

        let vae_dir = sd.join("vae");
        let vae_file = TensorFile::open(diffusers_weights(&vae_dir).unwrap()).unwrap();
        let vae = load_vae::<B>(&read_vae_config(&vae_dir).unwrap(), &vae_file, dtype, &device).unwrap();
        let r = reference("sd15_vae.safetensors");
        println!("{dtype:?} vae decode: {:.2e}", relative(vae.decode(t(&r, "latents")), &r, "decoded"));
        let (mean, _) = vae.encode(t(&r, "image"));
        println!("{dtype:?} vae encode mean: {:.2e}", relative(mean, &r, "mean"));

        let clip_dir = sd.join("text_encoder");
        let config = burn_stylecode::sd::clip::ClipTextConfig::from_file(clip_dir.join("config.json")).unwrap();
        let clip = load_clip_text::<B>(&config, &TensorFile::open(clip_dir.join("model.safetensors")).unwrap(), dtype, &device).unwrap();
        let r = reference("clip_text.safetensors");
        let ids = tensor::<B, 2>(&r, "input_ids", DType::F32, &device).int();
        println!("{dtype:?} clip last_hidden_state: {:.2e}", relative(clip.forward(ids).last_hidden_state, &r, "last_hidden_state"));

        let siglip_file = TensorFile::open(weights.siglip_weights().unwrap()).unwrap();
        let siglip = load_siglip::<B>(&weights.siglip_config().unwrap(), &siglip_file, dtype, &device).unwrap();
        let r = reference("siglip.safetensors");
        println!("{dtype:?} siglip penultimate: {:.2e}", relative(siglip.penultimate(t(&r, "pixel_values")), &r, "penultimate"));

        let config = weights.stylecodes_config().unwrap();
        let file = TensorFile::open(weights.stylecodes_weights().unwrap()).unwrap();
        let autoencoder = load_autoencoder::<B>(&config.autoencoder, &file, dtype, &device).unwrap();
        let r = reference("autoencoder.safetensors");
        let src = tensor::<B, 3>(&r, "src", dtype, &device);
        println!("{dtype:?} autoencoder latent: {:.2e}", relative(autoencoder.encode(src), &r, "latent"));
    }
}
