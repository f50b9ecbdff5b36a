//! The generation memory estimate on the tiny fixture weights, and the
//! refusal it gives before anything is loaded.

use burn::tensor::DType;
use burn_stylecode::pipeline::memory::{estimate, GenerationShape};
use burn_stylecode::weights::TensorFile;
use burn_stylecode::{Error, GenerateRequest, GenerateSettings, ImageSpec, Style, StyleCodes};
use burn_stylecode_tests::*;

fn elements(path: &std::path::Path) -> u64 {
    let file = TensorFile::open(path).unwrap();
    let keys: Vec<String> = file.keys().map(String::from).collect();
    keys.iter().map(|k| file.shape(k).unwrap().iter().product::<usize>() as u64).sum()
}

/// Rows of every cross-attention key and value projection in `path`.
fn key_value_rows(path: &std::path::Path) -> u64 {
    let file = TensorFile::open(path).unwrap();
    let keys: Vec<String> = file.keys().map(String::from).collect();
    keys.iter()
        .filter(|k| k.ends_with("attn2.to_k.weight") || k.ends_with("attn2.to_v.weight"))
        .map(|k| file.shape(k).unwrap()[0] as u64)
        .sum()
}

#[test]
fn weights_are_counted_at_the_load_dtype_and_activations_grow_with_the_area() {
    let sd15 = weights().sd15_dir();
    let parameters: u64 = ["unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"]
        .iter()
        .chain(&["text_encoder/model.safetensors"])
        .map(|f| elements(&sd15.join(f)))
        .sum();
    let shape = GenerationShape { width: 64, height: 48, batch: 1, guided: true, styled: false };
    let f32 = estimate(&sd15, None, &shape, DType::F32).unwrap();
    let f16 = estimate(&sd15, None, &shape, DType::F16).unwrap();
    assert_eq!(f32.weights, parameters * 4);
    assert_eq!(f16.weights, parameters * 2);
    assert_eq!(f16.activations * 2, f32.activations);

    let styled = GenerationShape { styled: true, ..shape };
    let style_weights = weights().stylecodes_weights().unwrap();
    let with_style = estimate(&sd15, Some(&style_weights), &styled, DType::F32).unwrap();
    assert_eq!(with_style.weights, (parameters + elements(&style_weights)) * 4);

    // The prompts' keys and values: 77 tokens × 2 copies (guidance), in f32.
    let unet_rows = key_value_rows(&sd15.join("unet/diffusion_pytorch_model.safetensors"));
    assert!(unet_rows > 0);
    assert_eq!(f32.text_keys_values, 2 * 77 * unet_rows * 4);
    assert_eq!(with_style.text_keys_values, 2 * 77 * (unet_rows + key_value_rows(&style_weights)) * 4);

    let double = GenerationShape { width: 128, height: 96, batch: 3, ..shape };
    let bigger = estimate(&sd15, None, &double, DType::F32).unwrap();
    assert_eq!(bigger.activations, f32.activations * 12);
    assert_eq!(bigger.images, f32.images * 12);
    assert_eq!(bigger.text_keys_values, f32.text_keys_values * 3, "with the batch, not the area");
}

#[test]
fn generate_refuses_a_request_over_the_cap_before_loading() {
    let styles = StyleCodes::<TestBackend>::new(weights(), DType::F32, device()).with_max_memory(Some(1 << 20));
    let settings = GenerateSettings { width: 64, height: 64, ..GenerateSettings::default() };
    let spec = ImageSpec { prompt: "a cat".into(), negative: String::new(), seed: 1, style: Style::None };
    let request = GenerateRequest::repeated(spec, 2, settings);
    match styles.generate(&request, |_| std::ops::ControlFlow::Continue(())) {
        Err(error @ Error::OutOfMemory { .. }) => {
            let text = error.to_string();
            assert!(
                text.contains("2 image(s) of 64x64") && text.contains("1.0 MiB (the --max-memory limit)"),
                "{text}"
            );
        }
        other => panic!("expected OutOfMemory, got {:?}", other.map(|images| images.len())),
    }
}
