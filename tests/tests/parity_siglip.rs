//! SigLIP vision tower against transformers' `SiglipVisionModel`.

use burn::tensor::DType;
use burn_stylecode::siglip::SiglipVisionConfig;
use burn_stylecode::siglip::SiglipVisionTransformer;
use burn_stylecode::weights::JsonConfig;
use burn_stylecode_tests::*;

fn tiny_siglip() -> burn_stylecode::siglip::SiglipVisionTransformer<TestBackend> {
    SiglipVisionTransformer::from_hf_dir(&weights().siglip_dir(), DType::F32, &device()).unwrap()
}

#[test]
fn all_outputs_match_transformers() {
    let reference = reference("siglip.safetensors");
    let model = tiny_siglip();
    let out = model.forward(tensor(&reference, "pixel_values"));
    assert_close("penultimate", out.penultimate, tensor(&reference, "penultimate"));
    assert_close("last_hidden_state", out.last_hidden_state, tensor(&reference, "last_hidden_state"));
    assert_close("pooled_output", out.pooled_output.expect("head"), tensor(&reference, "pooled_output"));
}

#[test]
fn penultimate_alone_matches() {
    let reference = reference("siglip.safetensors");
    let out = tiny_siglip().penultimate(tensor(&reference, "pixel_values"));
    assert_close("penultimate", out, tensor(&reference, "penultimate"));
}

#[test]
fn config_reads_nested_and_flat_forms() {
    let nested = weights().siglip_config().unwrap();
    assert_eq!((nested.hidden_size, nested.num_hidden_layers, nested.image_size, nested.patch_size), (32, 3, 32, 8));
    let flat =
        SiglipVisionConfig::from_json(r#"{"hidden_size": 64, "num_attention_heads": 4, "vision_use_head": false}"#)
            .unwrap();
    assert_eq!(flat.hidden_size, 64);
    assert!(!flat.vision_use_head);
    // Unset fields take transformers' defaults, which are SigLIP-B/16's.
    assert_eq!(SiglipVisionConfig::from_json("{}").unwrap(), SiglipVisionConfig::default());
}

#[test]
fn full_size_siglip_b16_has_the_real_shapes() {
    use burn::module::Module;
    let config = SiglipVisionConfig::default();
    let model = config.init::<TestBackend>(&device());
    // google/siglip-base-patch16-224 vision tower: 92,884,224 parameters.
    assert_eq!(model.num_params(), 92_884_224);
    let pixels = burn::tensor::Tensor::zeros([1, 3, 224, 224], &device());
    assert_eq!(model.penultimate(pixels).dims(), [1, 196, 768]);
}
