//! The training step against its PyTorch twin
//! (`fixtures/make_train_step_fixtures.py`): the release's StyleCodesModel
//! wiring on the tiny models, the autoencoder trained through the
//! straight-through quantiser, torch.optim.AdamW, 3 optimizer steps of 2
//! accumulated micro-batches with global-norm clipping active in one.
//! Every loss, the step-1 gradients and every trainable tensor after step 3
//! must match at 1e-4 of their scale.

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::DType;
use burn_stylecode::sd::unet_2d::UNetConfig;
use burn_stylecode::style::{official_source, StyleCodesModel};
use burn_stylecode::train::step::{loss, Batch, Frozen};
use burn_stylecode::train::{clip_grad_norm, AdamW, AdamWConfig, GradAccumulator, Grads};
use burn_stylecode::weights::safetensors::TensorFile;
use burn_stylecode::weights::{param_values, JsonConfig, Source};
use burn_stylecode_tests::*;

type Ad = burn::backend::Autodiff<TestBackend>;

fn json() -> serde_json::Value {
    reference_json("train_step.json")
}

fn model_and_frozen() -> (StyleCodesModel<Ad>, Frozen<Ad>) {
    model_and_frozen_in(DType::F32)
}

/// The trainable model in f32 and the frozen networks in `frozen_dtype`.
fn model_and_frozen_in(frozen_dtype: DType) -> (StyleCodesModel<Ad>, Frozen<Ad>) {
    let weights = weights();
    let sd15 = weights.sd15_dir();
    let base_config = UNetConfig::from_file(&sd15.join("unet").join("config.json")).unwrap();
    let mut config = weights.stylecodes_config().unwrap();
    // The twin runs the autoencoder without dropout: its masks cannot be shared.
    config.autoencoder.dropout = 0.0;
    let file = TensorFile::open(weights.stylecodes_weights().unwrap()).unwrap();
    let model = StyleCodesModel::<Ad>::load(&config, &base_config, &file, DType::F32, &device()).unwrap();
    let frozen = Frozen::load(&weights, frozen_dtype, &device()).unwrap();
    (model, frozen)
}

fn micro_batch(file: &TensorFile, frozen: &Frozen<Ad>, k: usize) -> Batch<TestBackend> {
    let key = |name: &str| format!("micro.{k}.{name}");
    let timesteps = file.read_f32(&key("timesteps")).unwrap().into_iter().map(|t| t as usize).collect();
    Batch {
        style_features: frozen.style_features(tensor::<4>(file, &key("style_pixels")).cast(frozen.dtype())),
        context: frozen.sd.text_encoder.forward(tensor::<2>(file, &key("prompt_ids")).int()).last_hidden_state,
        latent_mean: tensor(file, &key("latent_mean")),
        latent_logvar: tensor(file, &key("latent_logvar")),
        posterior_noise: tensor(file, &key("posterior_noise")),
        keep_style: tensor(file, &key("keep_style")),
        timesteps,
        noise: tensor(file, &key("noise")),
    }
}

/// The reference tensor for a burn parameter: the official key, or its row
/// block of a packed q/k/v tensor.
fn official_values(file: &TensorFile, prefix: &str, path: &str) -> Vec<f32> {
    match official_source(path).unwrap_or_else(|| panic!("no official name for `{path}`")) {
        Source::Tensor(key) => file.read_f32(&format!("{prefix}{key}")).unwrap(),
        Source::Rows { key, index, parts } => {
            let values = file.read_f32(&format!("{prefix}{key}")).unwrap();
            let block = values.len() / parts;
            values[index * block..(index + 1) * block].to_vec()
        }
    }
}

fn values<const D: usize>(tensor: Tensor<TestBackend, D>) -> Vec<f32> {
    tensor.into_data().convert::<f32>().into_vec().unwrap()
}

/// Every float parameter of `module` with its burn path.
fn parameters(model: &StyleCodesModel<Ad>) -> Vec<(String, Vec<f32>)> {
    param_values(model).into_iter().map(|(path, _, data)| (path, data.convert::<f32>().into_vec().unwrap())).collect()
}

#[test]
fn three_steps_match_the_pytorch_twin() {
    let json = json();
    let file = reference("train_step.safetensors");
    let (mut model, frozen) = model_and_frozen();
    let accumulation = json["accumulation"].as_u64().unwrap() as usize;
    let max_norm = json["max_norm"].as_f64().unwrap();
    let scale = json["scale"].as_f64().unwrap();
    let betas = json["betas"].as_array().unwrap();
    let config = AdamWConfig::new()
        .with_lr(json["lr"].as_f64().unwrap())
        .with_beta_1(betas[0].as_f64().unwrap())
        .with_beta_2(betas[1].as_f64().unwrap())
        .with_epsilon(json["eps"].as_f64().unwrap())
        .with_weight_decay(json["weight_decay"].as_f64().unwrap());
    let mut optim = AdamW::<Ad>::new(config);

    let (mut losses, mut norms) = (Vec::new(), Vec::new());
    let mut vanishing = Vec::new();
    for step in 0..json["steps"].as_u64().unwrap() as usize {
        let mut accumulator = GradAccumulator::new();
        for micro in 0..accumulation {
            let value = loss(&model, frozen.base(), &micro_batch(&file, &frozen, step * accumulation + micro), scale);
            losses.push(values(value.clone().inner())[0]);
            accumulator.accumulate(Grads::from_backward((value / accumulation as f32).backward(), &model));
        }
        let mut grads = accumulator.take();
        if step == 0 {
            let trainable = parameters(&model).len();
            let with: Vec<&str> = grads.paths().collect();
            let missing: Vec<String> =
                parameters(&model).into_iter().map(|(p, _)| p).filter(|p| !with.contains(&p.as_str())).collect();
            assert!(missing.is_empty(), "no gradient for {missing:?}");
            assert_eq!(grads.len(), trainable, "every trainable tensor gets a gradient, and only those");
            let expected: Vec<(&str, Vec<f32>)> =
                grads.paths().map(|path| (path, official_values(&file, "grad.", path))).collect();
            let global = expected.iter().flat_map(|(_, e)| e.iter()).fold(0f32, |m, x| m.max(x.abs()));
            let mut worst = 0f32;
            for (path, expected) in &expected {
                let actual = values(grads.flat(path).unwrap());
                let scale = expected.iter().fold(0f32, |m, x| m.max(x.abs()));
                if scale < 1e-6 * global {
                    // Mathematically zero (an attention key's bias cancels in
                    // the softmax): both sides are rounding noise.
                    let noise = actual.iter().fold(0f32, |m, x| m.max(x.abs()));
                    assert!(noise < 1e-5 * global, "{path}: gradient {noise} should vanish");
                    vanishing.push(path.to_string());
                    continue;
                }
                worst = worst.max(assert_close_values(path, &actual, expected));
            }
            println!("step-1 gradients of {trainable} tensors: max relative error {worst:e}");
        }
        norms.push(clip_grad_norm(&mut grads, max_norm).unwrap());
        model = optim.step(optim.config().lr, model, grads);
    }
    assert_close_values("losses", &losses, &file.read_f32("losses").unwrap());
    assert_close_values("total norms", &norms, &file.read_f32("norms").unwrap());
    let clipped: Vec<bool> = norms.iter().map(|&n| f64::from(n) > max_norm).collect();
    assert_eq!(clipped.iter().filter(|&&c| c).count(), 1, "clipping is active in exactly one step");

    // Only two kinds of tensor have a vanishing gradient: attention key biases
    // (they shift every score alike) and the decoder's cross-attention q/k
    // (one memory token: the softmax is 1 whatever they are). AdamW turns
    // their rounding noise into full-size steps of either sign, so they
    // cannot be compared after training (in PyTorch too they move at random).
    let explained = |p: &String| {
        p.ends_with("k_proj.bias")
            || (p.contains(".multihead_attn.") && (p.contains(".q_proj.") || p.contains(".k_proj.")))
    };
    assert!(vanishing.iter().all(explained), "{vanishing:?}");
    // The same holds for single elements: a weight whose step-1 gradient is
    // under 1e-5 of its tensor's largest (in the control convs whose input has
    // the zero skip's channels, say) takes an AdamW step whose
    // size and sign rounding decides. They are left out, and must stay under
    // 1% (measured: 436 of 195,812).
    let (mut worst, mut left_out, mut total) = (0f32, 0usize, 0usize);
    for (path, actual) in parameters(&model).into_iter().filter(|(p, _)| !vanishing.contains(p)) {
        let expected = official_values(&file, "final.", &path);
        let gradient = official_values(&file, "grad.", &path);
        let floor = 1e-5 * gradient.iter().fold(0f32, |m, g| m.max(g.abs()));
        // (An exactly zero gradient, as for the zero skip's inputs, takes no step on either side.)
        let kept: Vec<usize> =
            (0..expected.len()).filter(|&i| gradient[i] == 0.0 || gradient[i].abs() >= floor).collect();
        left_out += expected.len() - kept.len();
        total += expected.len();
        let pick = |values: &[f32]| kept.iter().map(|&i| values[i]).collect::<Vec<f32>>();
        worst = worst.max(assert_close_values(&path, &pick(&actual), &pick(&expected)));
    }
    assert!(left_out * 100 < total, "{left_out} of {total} weights have a vanishing gradient");
    println!("parameters after 3 steps: max relative error {worst:e} ({left_out} of {total} weights left out)");
    let (initial, _) = model_and_frozen();
    let moved =
        parameters(&initial).iter().zip(parameters(&model)).filter(|((_, before), (_, after))| before != after).count();
    assert_eq!(moved, parameters(&model).len(), "training moves every trainable tensor");
}

/// A base whose scheduler predicts `v` (SD 2.x) or the clean sample trains
/// against that target, as diffusers' training scripts do: the twin's loss
/// for micro-batches 0 and 1 (`DDPMScheduler.get_velocity`, and `z0`).
#[test]
fn the_target_follows_the_schedulers_prediction_type() {
    let file = reference("train_step.safetensors");
    let (model, _) = model_and_frozen();
    for prediction in ["v_prediction", "sample"] {
        let (_dir, weights) = weights_copy();
        let path = weights.sd15_dir().join("scheduler/scheduler_config.json");
        let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        config["prediction_type"] = prediction.into();
        std::fs::write(&path, config.to_string()).unwrap();
        let frozen = Frozen::<Ad>::load(&weights, DType::F32, &device()).unwrap();
        let actual: Vec<f32> = (0..2)
            .map(|k| values(loss(&model, frozen.base(), &micro_batch(&file, &frozen, k), 1.0).inner())[0])
            .collect();
        let expected = file.read_f32(&format!("losses_{prediction}")).unwrap();
        assert_close_values(&format!("{prediction} losses"), &actual, &expected);
        let epsilon = &file.read_f32("losses").unwrap()[..2];
        assert!(actual.iter().zip(epsilon).all(|(a, e)| (a - e).abs() > 1e-2 * e), "{prediction}: not ε's loss");
    }
}

/// Mixed precision: the frozen networks and their activations in bf16 or
/// f16, the trainable branch, its gradients and its update in f32. The loss
/// and the gradients follow the f32 step within the half type's rounding.
#[test]
fn mixed_precision_keeps_f32_master_weights_and_tracks_the_f32_step() {
    let file = reference("train_step.safetensors");
    let expected_loss = file.read_f32("losses").unwrap()[0];
    let (model, frozen) = model_and_frozen_in(DType::F32);
    let reference_grads =
        Grads::from_backward(loss(&model, frozen.base(), &micro_batch(&file, &frozen, 0), 1.0).backward(), &model);
    let flat = |grads: &Grads<Ad>| -> Vec<f32> { grads.paths().flat_map(|p| values(grads.flat(p).unwrap())).collect() };
    let reference_flat = flat(&reference_grads);
    for (dtype, tolerance, min_cosine) in [(DType::BF16, 1e-2, 0.98), (DType::F16, 1e-3, 0.995)] {
        let (model, frozen) = model_and_frozen_in(dtype);
        let dtypes = |values: Vec<(String, Vec<usize>, burn::tensor::TensorData)>| -> Vec<String> {
            let set: std::collections::BTreeSet<String> =
                values.into_iter().map(|(_, _, data)| format!("{:?}", data.dtype)).collect();
            set.into_iter().collect()
        };
        assert_eq!(dtypes(param_values(frozen.unet())), [format!("{dtype:?}")], "the frozen base runs in {dtype:?}");
        let batch = micro_batch(&file, &frozen, 0);
        let value = loss(&model, frozen.base(), &batch, 1.0);
        assert_eq!(value.dtype(), DType::F32, "{dtype:?}: the loss is f32");
        let actual = values(value.clone().inner())[0];
        assert!(
            actual.is_finite() && ((actual - expected_loss) / expected_loss).abs() < tolerance,
            "{dtype:?}: loss {actual} against f32's {expected_loss}"
        );
        let grads = Grads::from_backward(value.backward(), &model);
        assert_eq!(grads.len(), reference_grads.len(), "{dtype:?}: every trainable tensor gets a gradient");
        for path in grads.paths() {
            assert_eq!(grads.flat(path).unwrap().dtype(), DType::F32, "{dtype:?}: the gradient of {path} is f32");
        }
        let g = flat(&grads);
        assert!(g.iter().all(|v| v.is_finite()), "{dtype:?}: non-finite gradients");
        let dot: f64 = g.iter().zip(&reference_flat).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
        let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        let cosine = dot / (norm(&g) * norm(&reference_flat));
        assert!(cosine > min_cosine, "{dtype:?}: gradients point away from f32's (cosine {cosine})");
        let mut optim = AdamW::<Ad>::new(AdamWConfig::new().with_lr(1e-3));
        let stepped = optim.step(1e-3, model, grads);
        assert_eq!(dtypes(param_values(&stepped)), ["F32"], "{dtype:?}: master weights stay f32");
        println!("{dtype:?}: loss {actual} (f32 {expected_loss}), gradient cosine {cosine:.6}");
    }
}

#[test]
fn the_frozen_base_gets_no_gradient() {
    let (model, frozen) = model_and_frozen();
    let file = reference("train_step.safetensors");
    let value = loss(&model, frozen.base(), &micro_batch(&file, &frozen, 0), 1.0);
    let gradients = value.backward();
    let base = Grads::<Ad>::from_backward(gradients, frozen.unet());
    assert!(base.is_empty(), "base UNet parameters with gradients: {:?}", base.paths().collect::<Vec<_>>());
    let mut count = 0;
    frozen.unet().visit(&mut CountRequireGrad(&mut count));
    assert_eq!(count, 0, "the base UNet requires no gradient");
}

struct CountRequireGrad<'a>(&'a mut usize);

impl burn::module::ModuleVisitor<Ad> for CountRequireGrad<'_> {
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<Ad, D>>) {
        if param.val().is_require_grad() {
            *self.0 += 1;
        }
    }
}

/// What training writes loads back exactly, in the official layout: every
/// tensor of the fixture's checkpoint (packed q/k/v included) round-trips.
#[test]
fn the_model_saves_in_the_official_layout() {
    let (model, _) = model_and_frozen();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stylecodes.safetensors");
    model.save(&path).unwrap();
    let saved = TensorFile::open(&path).unwrap();
    let original = TensorFile::open(weights().stylecodes_weights().unwrap()).unwrap();
    let mut keys: Vec<&str> = original.keys().filter(|k| !k.ends_with("pos_encoder.pe")).collect();
    keys.sort();
    let mut written: Vec<&str> = saved.keys().collect();
    written.sort();
    assert_eq!(written, keys, "the same tensors, without the computed positional table");
    for key in keys {
        assert_eq!(saved.shape(key), original.shape(key), "{key}");
        assert_eq!(saved.read_f32(key).unwrap(), original.read_f32(key).unwrap(), "{key}");
    }
    // And the loader takes it.
    let config = weights().stylecodes_config().unwrap();
    let base = UNetConfig::from_file(&weights().sd15_dir().join("unet").join("config.json")).unwrap();
    StyleCodesModel::<TestBackend>::load(&config, &base, &saved, DType::F32, &device()).unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file is left");
}
