//! SD1.5 UNet against diffusers' `UNet2DConditionModel` (tiny, randomised,
//! the SD1.5 block types; made by `fixtures/make_sd_fixtures.py`).

use burn::prelude::*;
use burn::tensor::DType;
use burn_stylecode::sd::diffusers_weights;
use burn_stylecode::sd::text_context::TextContext;
use burn_stylecode::sd::unet_2d::{UNet2DConditionModel, UNetConfig};
use burn_stylecode::sd::unet_2d_blocks::UpSubBlocks;
use burn_stylecode::sd::unet_hook::Residuals;
use burn_stylecode::weights::safetensors::TensorFile;
use burn_stylecode::weights::JsonConfig;
use burn_stylecode::Error;
use burn_stylecode_tests::*;
use std::path::{Path, PathBuf};

type Unet = UNet2DConditionModel<TestBackend>;

fn unet_dir() -> PathBuf {
    weights().sd15_dir().join("unet")
}

fn load(config: &UNetConfig, path: &Path) -> Result<Unet, Error> {
    UNet2DConditionModel::load(config, &TensorFile::open(path)?, DType::F32, &device())
}

fn tiny_unet() -> Unet {
    let dir = unet_dir();
    load(&UNetConfig::from_file(&dir.join("config.json")).unwrap(), &diffusers_weights(&dir).unwrap()).unwrap()
}

struct Inputs {
    sample: Tensor<TestBackend, 4>,
    sample_odd: Tensor<TestBackend, 4>,
    timesteps: Tensor<TestBackend, 1>,
    context: TextContext<TestBackend>,
}

fn inputs(reference: &TensorFile) -> Inputs {
    Inputs {
        sample: tensor(reference, "sample"),
        sample_odd: tensor(reference, "sample_odd"),
        timesteps: tensor(reference, "timesteps"),
        context: TextContext::new(tensor(reference, "context")),
    }
}

fn report(what: &str, relative: f32) {
    println!("{what}: max relative error {relative:.2e}");
}

#[test]
fn noise_prediction_matches_diffusers() {
    let reference = reference("sd15_unet.safetensors");
    let x = inputs(&reference);
    let unet = tiny_unet();
    let noise = unet.forward(x.sample, x.timesteps, &x.context);
    report("noise", assert_close("noise", noise, tensor(&reference, "noise")));
}

#[test]
fn odd_non_square_latents_match_diffusers() {
    let reference = reference("sd15_unet.safetensors");
    let x = inputs(&reference);
    let noise = tiny_unet().forward(x.sample_odd, x.timesteps, &x.context);
    assert_eq!(noise.dims(), [2, 4, 9, 7]);
    report("noise_odd", assert_close("noise_odd", noise, tensor(&reference, "noise_odd")));
}

#[test]
fn controlnet_residuals_match_diffusers() {
    let reference = reference("sd15_unet.safetensors");
    let x = inputs(&reference);
    let unet = tiny_unet();
    let down: Vec<Tensor<TestBackend, 4>> =
        (0..12).map(|i| tensor(&reference, &format!("down_residual_{i}"))).collect();
    let mut residuals = Residuals { down: &down, mid: tensor(&reference, "mid_residual") };
    let noise = unet.forward_with_hook(x.sample, x.timesteps, &x.context, &mut residuals);
    report(
        "noise_with_residuals",
        assert_close("noise_with_residuals", noise, tensor(&reference, "noise_with_residuals")),
    );
}

/// Drives the sub-block API by hand, checking the time embedding, every
/// skip and the mid block against diffusers, and the result against `forward`.
#[test]
fn sub_block_api_matches_diffusers_and_forward() {
    let reference = reference("sd15_unet.safetensors");
    let x = inputs(&reference);
    let unet = tiny_unet();
    assert_eq!((unet.down_sub_block_count(), unet.up_sub_block_count()), (11, 12));

    let temb = unet.time_embedding(x.timesteps.clone());
    report("temb", assert_close("temb", temb.clone(), tensor(&reference, "temb")));
    let context = x.context.clone();
    let mut h = unet.conv_in(x.sample.clone());
    let mut skips = vec![h.clone()];
    for i in 0..unet.down_sub_block_count() {
        h = unet.down_sub_block(i, h, &temb, &context);
        skips.push(h.clone());
    }
    let mut worst = 0f32;
    for (i, skip) in skips.iter().enumerate() {
        worst = worst.max(assert_close(&format!("skip {i}"), skip.clone(), tensor(&reference, &format!("skip_{i}"))));
    }
    report("skips", worst);
    let skip_channels: Vec<usize> = skips.iter().map(|s| s.dims()[1]).collect();
    assert_eq!(unet.skip_channels(), skip_channels);
    let mut expected_up: Vec<usize> = skip_channels.clone();
    expected_up.reverse();
    assert_eq!(unet.up_skip_channels(), expected_up);

    h = unet.mid_block(h, &temb, &context);
    report("mid", assert_close("mid", h.clone(), tensor(&reference, "mid")));
    for i in 0..unet.up_sub_block_count() {
        let skip = skips.pop().unwrap();
        let size = skips.last().map(|s| [s.dims()[2], s.dims()[3]]);
        h = unet.up_sub_block(i, Tensor::cat(vec![h, skip], 1), &temb, &context, size);
    }
    let by_hand = unet.head(h);
    let forward = unet.forward(x.sample, x.timesteps, &x.context);
    let same = by_hand.clone().equal(forward).all().into_scalar();
    assert!(same, "sub-block driving differs from forward");
    assert_close("noise by sub-blocks", by_hand, tensor(&reference, "noise"));
}

/// The up sub-blocks also run on a plain `Vec` of up blocks, as the style
/// control module holds them, and an upsampler without a size doubles.
#[test]
fn up_blocks_run_on_their_own() {
    let reference = reference("sd15_unet.safetensors");
    let x = inputs(&reference);
    let unet = tiny_unet();
    let up_blocks = unet.up_blocks.clone();
    let temb = unet.time_embedding(x.timesteps);
    let c = unet.up_skip_channels();
    assert_eq!(up_blocks.skip_channels(), c);
    // Sub-block 2 ends block 0 with its upsampler: 1x1 → 2x2.
    let h = Tensor::<TestBackend, 4>::random([2, 16 + c[2], 1, 1], burn::tensor::Distribution::Default, &device());
    let standalone = up_blocks.sub_block(2, h.clone(), &temb, &x.context, None);
    let in_unet = unet.up_sub_block(2, h, &temb, &x.context, Some([2, 2]));
    assert_eq!(standalone.dims(), [2, 16, 2, 2]);
    assert!(standalone.equal(in_unet).all().into_scalar());

    let config = UNetConfig::from_file(&unet_dir().join("config.json")).unwrap();
    let fresh_up = config.init_up_blocks::<TestBackend>(&device());
    let fresh_mid = config.init_mid_block::<TestBackend>(&device());
    assert_eq!(fresh_up.skip_channels(), c);
    use burn_stylecode::sd::unet_2d::count_params;
    assert_eq!(count_params::<TestBackend, _>(&fresh_up), count_params::<TestBackend, _>(&unet.up_blocks));
    assert_eq!(count_params::<TestBackend, _>(&fresh_mid), count_params::<TestBackend, _>(&unet.mid_block));
}

/// The same weights with `use_linear_projection = true` (proj_in/proj_out
/// as Linear, as the style control module's UNet has them).
#[test]
fn linear_projection_matches_diffusers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("diffusion_pytorch_model.safetensors");
    let src = diffusers_weights(&unet_dir()).unwrap();
    let squeeze = |(name, shape, values): Entry| {
        let is_projection = name.contains(".proj_in.weight") || name.contains(".proj_out.weight");
        let shape = if is_projection { shape[..2].to_vec() } else { shape };
        Some((name, shape, values))
    };
    rewrite_safetensors(&src, &path, squeeze, vec![], safetensors::Dtype::F32);
    let mut config = UNetConfig::from_file(&unet_dir().join("config.json")).unwrap();
    config.use_linear_projection = true;
    let unet = load(&config, &path).unwrap();

    let reference_in = reference("sd15_unet.safetensors");
    let reference_out = reference("sd15_unet_linear_proj.safetensors");
    let x = inputs(&reference_in);
    let noise = unet.forward(x.sample, x.timesteps.clone(), &x.context);
    report("linear noise", assert_close("linear noise", noise, tensor(&reference_out, "noise")));
    let noise_odd = unet.forward(x.sample_odd, x.timesteps, &x.context);
    report("linear noise_odd", assert_close("linear noise_odd", noise_odd, tensor(&reference_out, "noise_odd")));

    // The conv-shaped file does not load as linear projections.
    let error = load(&config, &src).unwrap_err().to_string();
    assert!(error.contains("proj_in.weight") && error.contains("[8, 8, 1, 1]"), "{error}");
}

#[test]
fn full_size_sd15_unet_has_the_real_shapes() {
    let unet = UNetConfig::sd15().init::<TestBackend>(&device());
    // runwayml/stable-diffusion-v1-5's UNet, counted without materialising it.
    assert_eq!(unet.param_count(), 859_520_964);
    assert_eq!((unet.down_sub_block_count(), unet.up_sub_block_count()), (11, 12));
    let skips = [320, 320, 320, 320, 640, 640, 640, 1280, 1280, 1280, 1280, 1280];
    assert_eq!(unet.skip_channels(), skips);
    assert_eq!(unet.up_skip_channels(), skips.iter().rev().copied().collect::<Vec<_>>());
}

#[test]
fn sd15_config_json_reads_as_the_defaults() {
    let text = r#"{
      "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.6.0",
      "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
      "center_input_sample": false, "cross_attention_dim": 768,
      "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
      "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4,
      "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
      "out_channels": 4, "sample_size": 64,
      "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
    }"#;
    assert_eq!(UNetConfig::from_json(text).unwrap(), UNetConfig::sd15());
    assert_eq!(UNetConfig::from_json("{}").unwrap(), UNetConfig::default());
    let tiny = UNetConfig::from_file(&unet_dir().join("config.json")).unwrap();
    assert_eq!((tiny.block_out_channels.clone(), tiny.attention_head_dim.get(0)), (vec![8, 16, 16, 16], 2));
}

#[test]
fn unsupported_config_values_are_named() {
    let cases = [
        (
            r#"{"down_block_types": ["SimpleCrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D"]}"#,
            "SimpleCrossAttnDownBlock2D",
        ),
        (r#"{"up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"]}"#, "AttnUpBlock2D"),
        (r#"{"mid_block_type": "UNetMidBlock2DSimpleCrossAttn"}"#, "UNetMidBlock2DSimpleCrossAttn"),
        (r#"{"act_fn": "gelu"}"#, "gelu"),
        (r#"{"class_embed_type": "timestep"}"#, "class_embed_type"),
        (r#"{"addition_embed_type": "text_time"}"#, "addition_embed_type"),
        (r#"{"resnet_time_scale_shift": "scale_shift"}"#, "scale_shift"),
        (r#"{"num_attention_heads": 8}"#, "num_attention_heads"),
        (r#"{"layers_per_block": [2, 2]}"#, "layers_per_block"),
        (r#"{"norm_num_groups": 24}"#, "norm_num_groups 24"),
        (r#"{"attention_head_dim": 3}"#, "attention_head_dim 3"),
    ];
    for (json, named) in cases {
        let error = UNetConfig::from_json(json).unwrap_err();
        assert!(error.contains(named), "{json}: {error}");
    }
    // `swish` is diffusers' other name for SiLU; per-block lists are accepted.
    UNetConfig::from_json(r#"{"act_fn": "swish", "attention_head_dim": [5, 10, 20, 20]}"#).unwrap();

    // Through the folder reader, the error names the file.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), r#"{"act_fn": "mish"}"#).unwrap();
    let error = UNetConfig::from_file(&dir.path().join("config.json")).unwrap_err().to_string();
    assert!(error.contains("config.json") && error.contains("mish"), "{error}");
}

fn rewritten(edit: impl FnMut(Entry) -> Option<Entry>, extra: Vec<Entry>) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("diffusion_pytorch_model.safetensors");
    rewrite_safetensors(&diffusers_weights(&unet_dir()).unwrap(), &path, edit, extra, safetensors::Dtype::F32);
    (dir, path)
}

#[test]
fn missing_wrong_and_extra_tensors_are_named() {
    let config = UNetConfig::from_file(&unet_dir().join("config.json")).unwrap();
    let key = "up_blocks.1.attentions.2.transformer_blocks.0.ff.net.0.proj.weight";
    let (_dir, path) = rewritten(|e| (e.0 != key).then_some(e), vec![]);
    let error = load(&config, &path).unwrap_err();
    assert!(matches!(&error, Error::MissingTensor { key: k, .. } if k == key), "{error}");

    let key = "down_blocks.0.downsamplers.0.conv.weight";
    let (_dir, path) = rewritten(
        |(name, shape, values)| {
            if name == key {
                Some((name, vec![8, 8, 3, 2], values[..8 * 8 * 3 * 2].to_vec()))
            } else {
                Some((name, shape, values))
            }
        },
        vec![],
    );
    let text = load(&config, &path).unwrap_err().to_string();
    assert!(text.contains(key) && text.contains("[8, 8, 3, 2]") && text.contains("[8, 8, 3, 3]"), "{text}");

    let extra = vec![("mid_block.attentions.0.extra.weight".to_string(), vec![2], vec![0.0, 1.0])];
    let (_dir, path) = rewritten(Some, extra);
    let error = load(&config, &path).unwrap_err();
    assert!(
        matches!(&error, Error::UnexpectedTensors { keys, .. } if keys == &["mid_block.attentions.0.extra.weight"]),
        "{error}"
    );
}

/// The UNet trains: gradients reach the parameters of every kind of layer,
/// through the size-matching upsampler of an odd latent too.
#[test]
fn gradients_flow_through_autodiff() {
    type Ad = burn::backend::Autodiff<TestBackend>;
    let dir = unet_dir();
    let unet = UNet2DConditionModel::<Ad>::from_diffusers_dir(&dir, DType::F32, &device()).unwrap();
    let reference = reference("sd15_unet.safetensors");
    let on_ad = |key: &str| tensor::<4>(&reference, key).into_data();
    let sample = Tensor::<Ad, 4>::from_data(on_ad("sample_odd"), &device());
    let timesteps = Tensor::<Ad, 1>::from_data(tensor::<1>(&reference, "timesteps").into_data(), &device());
    let context = Tensor::<Ad, 3>::from_data(tensor::<3>(&reference, "context").into_data(), &device());
    let loss = unet.forward(sample, timesteps, &TextContext::new(context)).powf_scalar(2.0).mean();
    let grads = loss.backward();

    let block = &unet.up_blocks[1].attentions[0].transformer_blocks[0];
    let checks = [
        ("time_embedding.linear_1", unet.time_embedding.linear_1.weight.grad(&grads).map(|g| g.abs().sum())),
        ("conv_in", unet.conv_in.weight.grad(&grads).map(|g| g.abs().sum())),
        (
            "downsampler",
            unet.down_blocks[0].downsampler.as_ref().unwrap().conv.weight.grad(&grads).map(|g| g.abs().sum()),
        ),
        ("mid resnet", unet.mid_block.resnets[1].conv2.weight.grad(&grads).map(|g| g.abs().sum())),
        ("attn2.to_k", block.attn2.to_k.weight.grad(&grads).map(|g| g.abs().sum())),
        ("ff.proj", block.ff.proj.weight.grad(&grads).map(|g| g.abs().sum())),
        ("norm3", block.norm3.gamma.grad(&grads).map(|g| g.abs().sum())),
        ("upsampler", unet.up_blocks[0].upsampler.as_ref().unwrap().conv.weight.grad(&grads).map(|g| g.abs().sum())),
        ("conv_out", unet.conv_out.weight.grad(&grads).map(|g| g.abs().sum())),
    ];
    for (name, grad) in checks {
        let magnitude = grad.unwrap_or_else(|| panic!("no gradient for {name}")).into_scalar();
        assert!(magnitude.is_finite() && magnitude > 0.0, "{name}: gradient magnitude {magnitude}");
    }
}
