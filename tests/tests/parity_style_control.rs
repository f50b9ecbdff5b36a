//! The style control module against the official release's
//! `StyleCodesModel` wiring, rebuilt in PyTorch on diffusers' blocks by
//! `fixtures/make_pipeline_fixtures.py` (tiny base UNet, random control
//! branch and random mixing layers).

use burn::prelude::*;
use burn::tensor::DType;
use burn_stylecode::sd::pipeline::{Settings, StableDiffusion};
use burn_stylecode::sd::schedulers::SchedulerKind;
use burn_stylecode::sd::text_context::TextContext;
use burn_stylecode::sd::unet_2d::{count_params, UNet2DConditionModel, UNetConfig};
use burn_stylecode::style::control::{MixInit, StyleControlConfig};
use burn_stylecode::style::{StyleCodesModel, StyleCondition};
use burn_stylecode::weights::safetensors::TensorFile;
use burn_stylecode::weights::JsonConfig;
use burn_stylecode::{Error, WeightsDir};
use burn_stylecode_tests::*;
use std::ops::ControlFlow;

type B = TestBackend;

fn unet_config() -> UNetConfig {
    UNetConfig::from_file(&weights().sd15_dir().join("unet").join("config.json")).unwrap()
}

fn tiny_unet() -> UNet2DConditionModel<B> {
    UNet2DConditionModel::from_diffusers_dir(&weights().sd15_dir().join("unet"), DType::F32, &device()).unwrap()
}

fn load_codes(weights: &WeightsDir) -> Result<StyleCodesModel<B>, Error> {
    StyleCodesModel::from_dir(&weights.stylecodes_dir(), &unet_config(), DType::F32, &device())
}

/// The fixed inputs of the one-step reference.
struct Step {
    sample: Tensor<B, 4>,
    timesteps: Tensor<B, 1>,
    context: TextContext<B>,
    code_latents: Tensor<B, 2>,
}

fn step_inputs(reference: &TensorFile) -> Step {
    Step {
        sample: tensor(reference, "sample"),
        timesteps: tensor(reference, "timesteps"),
        context: TextContext::new(tensor(reference, "context")),
        code_latents: tensor(reference, "code_latents"),
    }
}

/// One styled denoising step, the style decoded at the mid-block grid.
fn styled_step(codes: &StyleCodesModel<B>, unet: &UNet2DConditionModel<B>, step: &Step, scale: f64) -> Tensor<B, 4> {
    let [_, _, height, width] = step.sample.dims();
    let condition = condition(codes, step.code_latents.clone(), scale);
    let features = condition.features(unet, [height, width]);
    codes.control.forward(unet, step.sample.clone(), step.timesteps.clone(), &step.context, features, scale)
}

fn condition(codes: &StyleCodesModel<B>, latents: Tensor<B, 2>, scale: f64) -> StyleCondition<'_, B> {
    StyleCondition { autoencoder: &codes.autoencoder, control: &codes.control, latents, scale }
}

fn plain_step(unet: &UNet2DConditionModel<B>, step: &Step) -> Tensor<B, 4> {
    unet.forward(step.sample.clone(), step.timesteps.clone(), &step.context)
}

#[test]
fn one_step_matches_the_official_wiring() {
    let reference = reference("style_control.safetensors");
    let step = step_inputs(&reference);
    let (codes, unet) = (load_codes(&weights()).unwrap(), tiny_unet());
    let scale = reference_json("style_control.json")["step_scale"].as_f64().unwrap();
    let styled = styled_step(&codes, &unet, &step, scale);
    let error = assert_close("scale 0.9", styled.clone(), tensor(&reference, "noise_scale_0.9"));
    println!("scale {scale}: max relative error {error:e}");
    // The style does change the prediction (so the comparison can fail).
    assert!(relative_error("styled vs plain", styled, tensor(&reference, "noise_plain")) > 0.05);

    // Scale 0: the release's wiring gives the plain UNet's prediction exactly.
    let unstyled = styled_step(&codes, &unet, &step, 0.0);
    let error = assert_close("scale 0", unstyled, tensor(&reference, "noise_plain"));
    println!("scale 0: max relative error {error:e}");
}

#[test]
fn scale_zero_is_the_plain_unet() {
    let reference = reference("style_control.safetensors");
    let step = step_inputs(&reference);
    let (codes, unet) = (load_codes(&weights()).unwrap(), tiny_unet());
    let unstyled = styled_step(&codes, &unet, &step, 0.0);
    let plain = plain_step(&unet, &step);
    let error = relative_error("scale 0 vs plain", unstyled, plain);
    println!("scale 0 vs plain UNet: relative difference {error:e}");
    assert!(error <= 1e-6, "scale 0 differs from the plain UNet by {error:e}");
}

#[test]
fn styled_ddim_loop_matches() {
    let json = reference_json("style_control.json");
    let reference = reference("style_control.safetensors");
    let sd = StableDiffusion::<B>::load(&weights().sd15_dir(), DType::F32, &device()).unwrap();
    let codes = load_codes(&weights()).unwrap();
    let noise: Tensor<B, 4> = tensor(&reference, "loop_noise");
    let [_, _, height, width] = noise.dims();
    let factor = sd.vae_scale_factor();
    let settings = Settings {
        steps: json["steps"].as_u64().unwrap() as usize,
        guidance_scale: json["guidance_scale"].as_f64().unwrap(),
        scheduler: SchedulerKind::Ddim,
        karras: None,
        width: width * factor,
        height: height * factor,
    };
    let text = |key: &str| vec![json[key].as_str().unwrap().to_string()];
    let context = sd.text_context(&text("prompt"), &text("negative_prompt"), &settings).unwrap();
    let style = condition(&codes, tensor(&reference, "loop_code_latents"), json["scale"].as_f64().unwrap());
    let predict = style.predictor(&sd.unet, [height, width], settings.guided());
    let latents =
        sd.denoise(noise.clone(), &context, &settings, &mut [], predict, |_, _| ControlFlow::Continue(())).unwrap();
    let expected: Tensor<B, 4> = tensor(&reference, "loop_latents");
    let error = assert_close("styled loop latents", latents, expected.clone());
    println!("styled 3-step DDIM loop: max relative error {error:e}");
    // Without the style the loop ends elsewhere.
    let predict = |x, t, ctx| sd.unet.forward(x, t, &ctx);
    let plain = sd.denoise(noise, &context, &settings, &mut [], predict, |_, _| ControlFlow::Continue(())).unwrap();
    assert!(relative_error("plain loop vs styled", plain, expected) > 0.05);
}

#[test]
fn full_size_control_has_the_official_parameter_counts() {
    let control = StyleControlConfig::from_base(&UNetConfig::sd15(), 8, MixInit::Identity).init::<B>(&device());
    // Computed with diffusers 0.42.1 (make_pipeline_fixtures.py,
    // `full_size_control_params`): UNet2DConditionModel(cross_attention_dim=768,
    // attention_head_dim=8, use_linear_projection=True) on the meta device,
    // the parameters of its mid_block (97,038,080) and up_blocks
    // (510,795,840): what is left once the release deletes down_blocks,
    // conv_in, conv_out, conv_norm_out and time_embedding.
    let blocks = count_params::<B, _>(&control.mid_block) + count_params::<B, _>(&control.up_blocks);
    assert_eq!(blocks, 607_833_920);
    // Mixing layers: Linear(n, n) has n·n + n parameters; 7 of n = 2560
    // (mid block and the 6 sub-blocks at 1280 channels), 3 of 1280, 3 of 640.
    let widths: Vec<usize> = std::iter::once(&control.middle_block_out)
        .chain(&control.up_zero_convs_out)
        .map(|mixer| mixer.linear.weight.dims()[0])
        .collect();
    assert_eq!(widths, [2560, 2560, 2560, 2560, 2560, 2560, 2560, 1280, 1280, 1280, 640, 640, 640]);
    let linear = |n: usize| n * n + n;
    let expected = 7 * linear(2560) + 3 * linear(1280) + 3 * linear(640);
    assert_eq!(expected, 52_042_880);
    let mixers = count_params::<B, _>(&control.middle_block_out) + count_params::<B, _>(&control.up_zero_convs_out);
    assert_eq!(mixers, expected);
}

/// A copy of the tiny weights whose stylecodes file is the fixture's, edited.
fn edited_weights(edit: impl FnMut(Entry) -> Option<Entry>) -> (tempfile::TempDir, WeightsDir) {
    let (dir, copy) = weights_copy();
    let src = weights().stylecodes_weights().unwrap();
    rewrite_safetensors(&src, &copy.stylecodes_weights().unwrap(), edit, vec![], safetensors::Dtype::F32);
    (dir, copy)
}

#[test]
fn missing_control_tensor_is_named() {
    let missing = "control_model.up_blocks.1.attentions.0.proj_in.weight";
    let (_dir, copy) = edited_weights(|e| (e.0 != missing).then_some(e));
    let error = load_codes(&copy).unwrap_err();
    assert!(matches!(&error, Error::MissingTensor { key, .. } if key == missing), "{error}");
    assert!(error.to_string().contains("stylecodes.safetensors"), "{error}");
}

#[test]
fn wrong_control_shape_names_key_and_both_shapes() {
    let key = "control_model.up_zero_convs_out.11.weight";
    let (_dir, copy) = edited_weights(|(name, shape, values)| {
        if name == key {
            assert_eq!(shape, [16, 16]);
            Some((name, vec![16, 15], values[..16 * 15].to_vec()))
        } else {
            Some((name, shape, values))
        }
    });
    let text = load_codes(&copy).unwrap_err().to_string();
    assert!(text.contains(key) && text.contains("[16, 15]") && text.contains("[16, 16]"), "{text}");

    let key = "middle_block_out.bias";
    let (_dir, copy) = edited_weights(|(name, shape, values)| {
        if name == key {
            Some((name, vec![31], values[..31].to_vec()))
        } else {
            Some((name, shape, values))
        }
    });
    let text = load_codes(&copy).unwrap_err().to_string();
    assert!(text.contains(key) && text.contains("[31]") && text.contains("[32]"), "{text}");
}

/// The loaded (random) control branch with fresh mixing layers.
fn with_fresh_mixers(mix_init: MixInit) -> StyleCodesModel<B> {
    let mut codes = load_codes(&weights()).unwrap();
    let heads = weights().stylecodes_config().unwrap().control_attention_heads;
    let fresh = StyleControlConfig::from_base(&unet_config(), heads, mix_init).init::<B>(&device());
    codes.control.middle_block_out = fresh.middle_block_out;
    codes.control.up_zero_convs_out = fresh.up_zero_convs_out;
    codes
}

fn assert_untouched_at_any_scale(mix_init: MixInit) {
    let reference = reference("style_control.safetensors");
    let step = step_inputs(&reference);
    let (codes, unet) = (with_fresh_mixers(mix_init), tiny_unet());
    let plain = plain_step(&unet, &step);
    for scale in [0.0, 0.3, 0.9, 1.0] {
        let error = relative_error(
            &format!("{mix_init:?} at {scale}"),
            styled_step(&codes, &unet, &step, scale),
            plain.clone(),
        );
        println!("{mix_init:?} at scale {scale}: relative difference {error:e}");
        // Only the blend h·(1-s) + h·s rounds.
        assert!(error <= 1e-5, "{mix_init:?} mixers change the base at scale {scale}: {error:e}");
    }
}

#[test]
fn identity_mixers_leave_the_base_untouched() {
    assert_untouched_at_any_scale(MixInit::Identity);
}

#[test]
fn zero_residual_mixers_leave_the_base_untouched_at_init() {
    assert_untouched_at_any_scale(MixInit::ZeroResidual);
}
