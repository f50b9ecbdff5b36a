//! LoRAs merged at load time against diffusers' `load_lora_weights` +
//! `fuse_lora` (kohya and PEFT files) and the LyCORIS formula (LoHa, LoKr,
//! the old attention processors), on the tiny sd15/ folder (fixtures made by
//! `fixtures/make_lora_fixtures.py`).

use burn::prelude::*;
use burn::tensor::DType;
use burn_stylecode::sd::clip::ClipTextConfig;
use burn_stylecode::sd::lora::LoraSpec;
use burn_stylecode::sd::pipeline::{weights_files, StableDiffusion};
use burn_stylecode::sd::text_context::TextContext;
use burn_stylecode::sd::unet_2d::UNetConfig;
use burn_stylecode::weights::{JsonConfig, TensorFile};
use burn_stylecode::Error;
use burn_stylecode_tests::*;
use std::path::PathBuf;

fn lora(name: &str) -> PathBuf {
    fixtures().join("lora").join(name)
}

fn merged() -> TensorFile {
    TensorFile::open(lora("merged.safetensors")).unwrap()
}

/// The patched UNet and text encoder weights files of the tiny SD1.5.
fn files(specs: &[LoraSpec]) -> Result<(TensorFile, TensorFile), Error> {
    let dir = weights().sd15_dir();
    let unet = UNetConfig::from_file(&dir.join("unet/config.json")).unwrap();
    let text = ClipTextConfig::from_file(&dir.join("text_encoder/config.json")).unwrap();
    weights_files(&dir, &unet, &text, specs).map(|(u, t, _)| (u, t))
}

/// Every reference tensor `PREFIX.key` equals the patched file's `key` to
/// 1e-6 of its scale; returns how many were compared. UNet keys are
/// diffusers' names, text encoder keys `text_model.*`.
fn assert_merged(prefix: &str, specs: &[LoraSpec]) -> usize {
    let (unet, text) = files(specs).unwrap();
    let reference = merged();
    let mut compared = 0;
    for key in reference.keys().filter_map(|k| k.strip_prefix(prefix)).map(str::to_string).collect::<Vec<_>>() {
        let expected = reference.read_f32(&format!("{prefix}{key}")).unwrap();
        let file = if key.starts_with("text_model.") { &text } else { &unet };
        let actual = file.read_f32(&key).unwrap();
        let base = if key.starts_with("text_model.") { files(&[]).unwrap().1 } else { files(&[]).unwrap().0 };
        assert_ne!(base.read_f32(&key).unwrap(), expected, "{key}: the reference changes it");
        assert_values_within(&format!("{prefix}{key}"), &actual, &expected, 1e-6);
        compared += 1;
    }
    compared
}

#[test]
fn kohya_lora_matches_diffusers_fuse_lora() {
    let n = assert_merged("kohya.", &[LoraSpec::new(lora("kohya.safetensors"), 1.0)]);
    assert_eq!(n, 16, "13 UNet modules (attention, conv, LoCon, samplers, time) and 3 text encoder ones");
}

#[test]
fn kohya_lora_with_ldm_names_is_the_same_lora() {
    // output_blocks_2_1_conv is up_blocks.0's upsampler: the tiny UNet's up
    // block 0 has no attention, as SD1.5's.
    let n = assert_merged("kohya.", &[LoraSpec::new(lora("kohya_ldm.safetensors"), 1.0)]);
    assert_eq!(n, 16);
}

#[test]
fn peft_lora_matches_diffusers_fuse_lora() {
    let n = assert_merged("peft.", &[LoraSpec::new(lora("peft/pytorch_lora_weights.safetensors"), 1.0)]);
    assert!(n > 40, "{n}");
}

#[test]
fn loha_lokr_and_old_processors_match_the_formula() {
    let n = assert_merged("lycoris.", &[LoraSpec::new(lora("lycoris.safetensors"), 1.0)]);
    assert_eq!(n, 7);
}

#[test]
fn loras_add_up_with_their_own_unet_and_text_weights() {
    let specs = [
        LoraSpec { path: lora("kohya.safetensors"), unet_weight: 0.5, text_encoder_weight: -1.0 },
        LoraSpec::new(lora("peft/pytorch_lora_weights.safetensors"), 0.25),
    ];
    let (unet, text) = files(&specs).unwrap();
    let (base_unet, base_text) = files(&[]).unwrap();
    let reference = merged();
    let keys: std::collections::BTreeSet<String> = reference
        .keys()
        .filter_map(|k| k.strip_prefix("kohya.").or_else(|| k.strip_prefix("peft.")))
        .filter(|k| !k.contains("_out"))
        .map(str::to_string)
        .collect();
    for key in keys {
        let (file, base, te) =
            if key.starts_with("text_model.") { (&text, &base_text, true) } else { (&unet, &base_unet, false) };
        let w = base.read_f32(&key).unwrap();
        let mut expected = w.clone();
        for (prefix, m) in [("kohya.", if te { -1.0 } else { 0.5 }), ("peft.", 0.25)] {
            if let Ok(full) = reference.read_f32(&format!("{prefix}{key}")) {
                expected.iter_mut().zip(full.iter().zip(&w)).for_each(|(e, (f, w))| *e += m * (f - w));
            }
        }
        let actual = file.read_f32(&key).unwrap();
        assert_values_within(&key, &actual, &expected, 1e-5);
    }
}

#[test]
fn weight_zero_leaves_the_weights_untouched() {
    let (unet, text) = files(&[LoraSpec::new(lora("kohya.safetensors"), 0.0)]).unwrap();
    let (base_unet, base_text) = files(&[]).unwrap();
    let key = "down_blocks.0.attentions.0.proj_in.weight";
    assert_eq!(unet.read(key, DType::F16).unwrap(), base_unet.read(key, DType::F16).unwrap());
    let key = "text_model.encoder.layers.0.self_attn.q_proj.weight";
    assert_eq!(text.read_f32(key).unwrap(), base_text.read_f32(key).unwrap());
}

#[test]
fn loaded_models_run_with_the_lora_merged() {
    let reference = merged();
    let spec = LoraSpec::new(lora("kohya.safetensors"), 1.0);
    let sd =
        StableDiffusion::<TestBackend>::load_with_loras(&weights().sd15_dir(), &[spec], DType::F32, &device()).unwrap();
    assert_eq!(sd.loras.len(), 1);
    assert!(sd.loras[0].unmatched.is_empty(), "{:?}", sd.loras[0].unmatched);
    let sample: Tensor<TestBackend, 4> = tensor(&reference, "unet_sample");
    let t: Tensor<TestBackend, 1> = tensor(&reference, "unet_timestep");
    let context: Tensor<TestBackend, 3> = tensor(&reference, "unet_context");
    assert_close(
        "fused UNet",
        sd.unet.forward(sample, t, &TextContext::new(context)),
        tensor(&reference, "kohya_unet_out"),
    );
    let ids: Tensor<TestBackend, 2> = tensor(&reference, "text_ids");
    let out = sd.text_encoder.forward(ids.int()).last_hidden_state;
    assert_close("fused text encoder", out, tensor(&reference, "kohya_text_out"));
}

/// A safetensors file with `tensors` (zeros of the given shapes) and `metadata`.
fn write_lora(dir: &std::path::Path, tensors: &[(&str, Vec<usize>)], metadata: &[(&str, &str)]) -> PathBuf {
    let data: Vec<Vec<u8>> = tensors.iter().map(|(_, s)| vec![0u8; 4 * s.iter().product::<usize>()]).collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .zip(&data)
        .map(|((name, shape), bytes)| {
            (
                name.to_string(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes).unwrap(),
            )
        })
        .collect();
    let metadata = metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let path = dir.join("bad.safetensors");
    std::fs::write(&path, safetensors::serialize(views, Some(metadata)).unwrap()).unwrap();
    path
}

fn error_of(path: PathBuf) -> String {
    files(&[LoraSpec::new(path, 1.0)]).map(|_| ()).unwrap_err().to_string()
}

#[test]
fn a_lora_for_another_base_is_refused_naming_the_module_and_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    // SDXL's cross-attention width (2048) on a module SD1.5 also has.
    let module = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k";
    let path = write_lora(
        dir.path(),
        &[(&format!("{module}.lora_down.weight"), vec![4, 2048]), (&format!("{module}.lora_up.weight"), vec![8, 4])],
        &[("ss_base_model_version", "sdxl_base_v1-0")],
    );
    let error = error_of(path);
    assert!(error.contains(module) && error.contains("[8, 2048]") && error.contains("[8, 32]"), "{error}");
    assert!(error.contains("sdxl_base_v1-0"), "{error}");
}

#[test]
fn unmatched_keys_are_listed_and_non_loras_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let module = "lora_unet_down_blocks_0_attentions_0_proj_in";
    let path = write_lora(
        dir.path(),
        &[
            (&format!("{module}.lora_down.weight"), vec![2, 8, 1, 1]),
            (&format!("{module}.lora_up.weight"), vec![8, 2, 1, 1]),
            ("lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight", vec![2, 8]),
            ("something_else", vec![3]),
        ],
        &[],
    );
    let dir_sd = weights().sd15_dir();
    let sd =
        StableDiffusion::<TestBackend>::load_with_loras(&dir_sd, &[LoraSpec::new(&path, 1.0)], DType::F32, &device())
            .unwrap();
    assert_eq!(sd.loras[0].modules(), 1);
    assert_eq!(
        sd.loras[0].unmatched,
        ["lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight", "something_else"]
    );

    // The UNet's own weights are not a LoRA.
    let unet = weights().sd15_dir().join("unet/diffusion_pytorch_model.safetensors");
    let error = error_of(unet);
    assert!(error.contains("not a LoRA") && error.contains("diffusion_pytorch_model"), "{error}");

    // A truncated file.
    let bytes = std::fs::read(lora("kohya.safetensors")).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let error = error_of(cut);
    assert!(error.contains("cut.safetensors") && error.contains("safetensors"), "{error}");

    // Half a module.
    let path = write_lora(dir.path(), &[(&format!("{module}.lora_down.weight"), vec![2, 8, 1, 1])], &[]);
    let error = error_of(path);
    assert!(error.contains(module) && error.contains("no up"), "{error}");
}
