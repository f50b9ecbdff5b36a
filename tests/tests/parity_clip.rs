//! CLIP text encoder against transformers' `CLIPTextModel`.

use burn::prelude::*;
use burn::tensor::DType;
use burn_stylecode::sd::clip::{ClipActivation, ClipTextConfig, ClipTextTransformer, EosPooling};
use burn_stylecode::sd::tokenizer::ClipTokenizer;
use burn_stylecode::weights::safetensors::TensorFile;
use burn_stylecode::weights::JsonConfig;
use burn_stylecode::Error;
use burn_stylecode_tests::*;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};

/// f16-rounded weights against the f32 reference, of its scale: f16 keeps
/// 11 bits (4.9e-4 relative per weight); measured 5.4e-4 here.
const F16_WEIGHTS_TOL: f32 = 2e-3;

fn text_encoder_dir() -> PathBuf {
    weights().sd15_dir().join("text_encoder")
}

fn tiny_config() -> ClipTextConfig {
    ClipTextConfig::from_file(&text_encoder_dir().join("config.json")).unwrap()
}

fn load(path: &Path) -> burn_stylecode::Result<ClipTextTransformer<TestBackend>> {
    ClipTextTransformer::load(&tiny_config(), &TensorFile::open(path)?, DType::F32, &device())
}

fn tiny_clip() -> ClipTextTransformer<TestBackend> {
    load(&text_encoder_dir().join("model.safetensors")).unwrap()
}

fn input_ids(reference: &TensorFile) -> Tensor<TestBackend, 2, Int> {
    tensor::<2>(reference, "input_ids").int()
}

#[test]
fn outputs_match_transformers() {
    let reference = reference("clip_text.safetensors");
    let out = tiny_clip().forward(input_ids(&reference));
    let errors = [
        assert_close("last_hidden_state", out.last_hidden_state, tensor(&reference, "last_hidden_state")),
        assert_close("pooled_output", out.pooled_output, tensor(&reference, "pooled_output")),
    ];
    println!("max relative errors: last_hidden_state {:e}, pooled_output {:e}", errors[0], errors[1]);
}

#[test]
fn first_eos_pooling_matches_newer_configs() {
    // Row 1 has no EOS: the newer rule pools position 0, the old one the
    // first of its two largest ids (position 30).
    let reference = reference("clip_text.safetensors");
    let mut model = tiny_clip();
    assert_eq!(model.pooling, EosPooling::HighestId, "SD1.5-style config, eos_token_id 2");
    let ids = tensor::<2>(&reference, "input_ids").into_data().iter::<f32>().map(|x| x as i64).collect::<Vec<_>>();
    let rows: Vec<Vec<i64>> = ids.chunks(77).map(<[i64]>::to_vec).collect();
    let eos = *rows[0].iter().max().unwrap();
    assert_eq!(EosPooling::HighestId.positions(&rows)[1], 30);
    assert_eq!(EosPooling::FirstId(eos).positions(&rows)[1], 0);

    model.pooling = EosPooling::FirstId(eos);
    let out = model.forward(input_ids(&reference));
    let error =
        assert_close("pooled_output_first_eos", out.pooled_output, tensor(&reference, "pooled_output_first_eos"));
    println!("max relative error: {error:e}");
}

#[test]
fn hidden_states_and_clip_skip_match() {
    let reference = reference("clip_text.safetensors");
    let model = tiny_clip();
    let ids = input_ids(&reference);
    for k in 1..=3 {
        let name = format!("hidden_states_minus_{k}");
        let error = assert_close(&name, model.hidden_state(ids.clone(), k), tensor(&reference, &name));
        println!("{name}: max relative error {error:e}");
    }
    let error = assert_close("clip_skip_1", model.forward_clip_skip(ids.clone(), 1), tensor(&reference, "clip_skip_1"));
    println!("clip_skip_1: max relative error {error:e}");
    let last = model.forward(ids.clone()).last_hidden_state;
    assert_close("clip_skip_0", model.forward_clip_skip(ids, 0), last);
}

#[test]
fn tiny_tokenizer_feeds_the_tiny_encoder() {
    let reference = reference("clip_text.safetensors");
    let tokenizer = ClipTokenizer::from_dir(weights().sd15_dir().join("tokenizer")).unwrap();
    assert_eq!(tokenizer.vocab_size(), tiny_config().vocab_size);
    let ids = tokenizer.encode("a photograph of an astronaut riding a horse").unwrap();
    let expected: Vec<u32> =
        tensor::<2>(&reference, "input_ids").into_data().iter::<f32>().take(77).map(|x| x as u32).collect();
    assert_eq!(ids, expected);
}

/// Rewrites the fixture's tensors with their keys passed through `rename`,
/// plus the int64 `position_ids` buffer if `position_ids` names its key.
fn rewritten(dst: &Path, rename: impl Fn(&str) -> Option<String>, position_ids: Option<&str>) {
    let bytes = std::fs::read(text_encoder_dir().join("model.safetensors")).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let positions: Vec<u8> = (0..77i64).flat_map(i64::to_le_bytes).collect();
    let mut views: Vec<(String, TensorView)> =
        file.tensors().into_iter().filter_map(|(name, view)| rename(&name).map(|n| (n, view))).collect();
    if let Some(key) = position_ids {
        views.push((key.to_string(), TensorView::new(Dtype::I64, vec![1, 77], &positions).unwrap()));
    }
    safetensors::serialize_to_file(views, None, dst).unwrap();
}

fn same_outputs(model: ClipTextTransformer<TestBackend>) {
    let reference = reference("clip_text.safetensors");
    let out = model.forward(input_ids(&reference));
    assert_close("last_hidden_state", out.last_hidden_state, tensor(&reference, "last_hidden_state"));
}

#[test]
fn checkpoint_with_position_ids_buffer_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    rewritten(&path, |k| Some(k.to_string()), Some("text_model.embeddings.position_ids"));
    same_outputs(load(&path).unwrap());
}

#[test]
fn unprefixed_checkpoint_loads() {
    // transformers 5 saves a CLIPTextModel without `text_model.`.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    rewritten(&path, |k| k.strip_prefix("text_model.").map(str::to_string), Some("embeddings.position_ids"));
    same_outputs(load(&path).unwrap());
}

/// f16 storage reads as exactly its values: the model equals one loaded
/// from f32 storage of the same f16-rounded values, bit for bit. Against the
/// f32 reference only the rounding of the weights is left.
#[test]
fn f16_checkpoint_loads_exactly_its_values() {
    let dir = tempfile::tempdir().unwrap();
    let src = text_encoder_dir().join("model.safetensors");
    let (f16, rounded) = (dir.path().join("f16.safetensors"), dir.path().join("rounded.safetensors"));
    rewrite_safetensors(&src, &f16, Some, vec![], safetensors::Dtype::F16);
    rewrite_safetensors(&src, &rounded, round_through_f16, vec![], safetensors::Dtype::F32);
    let reference = reference("clip_text.safetensors");
    let out = load(&f16).unwrap().forward(input_ids(&reference)).last_hidden_state;
    let same = load(&rounded).unwrap().forward(input_ids(&reference)).last_hidden_state;
    assert_within("f16 file vs f32 file of its values", out.clone(), same, 0.0);
    assert_within("f16 weights vs f32 reference", out, tensor(&reference, "last_hidden_state"), F16_WEIGHTS_TOL);
}

#[test]
fn loading_is_strict() {
    let dir = tempfile::tempdir().unwrap();
    let src = text_encoder_dir().join("model.safetensors");

    let path = dir.path().join("extra.safetensors");
    rewritten(&path, |k| Some(k.to_string()), Some("text_model.embeddings.stray"));
    let error = load(&path).unwrap_err();
    assert!(
        matches!(&error, Error::UnexpectedTensors { keys, .. } if keys == &["text_model.embeddings.stray"]),
        "{error}"
    );

    // Other models' tensors in the same file are not ours to judge.
    let path = dir.path().join("clip_model.safetensors");
    rewritten(&path, |k| Some(k.to_string()), Some("vision_model.embeddings.position_ids"));
    load(&path).unwrap();

    let path = dir.path().join("missing.safetensors");
    rewritten(&path, |k| (k != "text_model.encoder.layers.1.mlp.fc2.bias").then(|| k.to_string()), None);
    let error = load(&path).unwrap_err();
    assert!(
        matches!(&error, Error::MissingTensor { key, .. } if key == "text_model.encoder.layers.1.mlp.fc2.bias"),
        "{error}"
    );

    let path = dir.path().join("shape.safetensors");
    let edit = |(name, shape, values): Entry| {
        if name == "text_model.final_layer_norm.weight" {
            Some((name, vec![16], values[..16].to_vec()))
        } else {
            Some((name, shape, values))
        }
    };
    rewrite_safetensors(&src, &path, edit, vec![], safetensors::Dtype::F32);
    let error = load(&path).unwrap_err();
    assert!(
        matches!(&error, Error::ShapeMismatch { key, expected, found, .. }
            if key == "text_model.final_layer_norm.weight" && expected == &[32] && found == &[16]),
        "{error}"
    );

    let path = dir.path().join("none.safetensors");
    rewritten(&path, |k| Some(format!("other.{k}")), None);
    assert!(matches!(load(&path).unwrap_err(), Error::NoModule { .. }));
}

#[test]
fn config_reads_sd15_and_defaults() {
    // SD1.5's text_encoder/config.json as published.
    let sd15 = r#"{"_name_or_path": "openai/clip-vit-large-patch14", "architectures": ["CLIPTextModel"],
        "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0, "eos_token_id": 2, "hidden_act": "quick_gelu",
        "hidden_size": 768, "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 3072,
        "layer_norm_eps": 1e-05, "max_position_embeddings": 77, "model_type": "clip_text_model",
        "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 1, "projection_dim": 768,
        "torch_dtype": "float32", "transformers_version": "4.22.0.dev0", "vocab_size": 49408}"#;
    let config = ClipTextConfig::from_json(sd15).unwrap();
    assert_eq!(config, ClipTextConfig::sd15());
    assert_eq!(config.eos_pooling(), EosPooling::HighestId);

    // transformers' defaults, and a whole CLIPConfig's text_config.
    let defaults = ClipTextConfig::from_json("{}").unwrap();
    assert_eq!(defaults, ClipTextConfig::default());
    assert_eq!((defaults.hidden_size, defaults.eos_pooling()), (512, EosPooling::FirstId(49407)));
    let nested = ClipTextConfig::from_json(r#"{"text_config": {"hidden_act": "gelu", "eos_token_id": [7]}}"#).unwrap();
    assert_eq!((nested.hidden_act, nested.eos_token_id), (ClipActivation::Gelu, 7));
    assert!(ClipTextConfig::from_json(r#"{"hidden_act": "relu"}"#).is_err());

    let tiny = tiny_config();
    assert_eq!((tiny.hidden_size, tiny.num_hidden_layers, tiny.intermediate_size, tiny.vocab_size), (32, 2, 37, 770));
}

#[test]
fn full_size_sd15_text_encoder_has_the_real_parameter_count() {
    use burn::module::Module;
    let model = ClipTextConfig::sd15().init::<TestBackend>(&device());
    assert_eq!(model.num_params(), 123_060_480);
}
