//! Parity of the optimizer layer (`burn_stylecode::train::optim`) with
//! PyTorch: three AdamW steps of a tiny model with gradient accumulation 2,
//! global-norm clipping (active in step 1 only) and a cosine schedule, against
//! `fixtures/make_train_fixtures.py`; plus frozen parameters and a resume into
//! freshly loaded weights.

use burn::backend::{Autodiff, Flex};
use burn::module::{list_param_ids, Module, Param};
use burn::prelude::*;
use burn::tensor::DType;
use burn_stylecode::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn_stylecode::train::optim::{
    clip_grad_norm, AdamW, AdamWConfig, GradAccumulator, Grads, LrSchedule, OptimizerState,
};
use burn_stylecode::weights::{load_module, norm_names, param_values, KeyMap, Source, TensorFile};
use burn_stylecode_tests::{assert_close_values, reference, reference_json};
use std::ops::Range;
use std::path::Path;

type B = Autodiff<Flex>;

/// Linear(6, 5) → LayerNorm(5) → GELU → Linear(5, 3), and `unused`, never in the graph.
#[derive(Module, Debug)]
struct Tiny<B: Backend> {
    fc1: Linear<B>,
    norm: LayerNorm<B>,
    fc2: Linear<B>,
    unused: Param<Tensor<B, 1>>,
}

impl<B: Backend> Tiny<B> {
    fn new(device: &B::Device) -> Self {
        Tiny {
            fc1: LinearConfig::new(6, 5).init(device),
            norm: LayerNormConfig::new(5).init(device),
            fc2: LinearConfig::new(5, 3).init(device),
            unused: Param::from_tensor(Tensor::zeros([4], device)),
        }
    }

    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.fc2.forward(burn::tensor::activation::gelu(self.norm.forward(self.fc1.forward(x))))
    }
}

/// The model with the weights of `file` under `prefix` (PyTorch names),
/// through the crate's loader: every parameter gets a fresh id.
fn load(file: &TensorFile, prefix: &str) -> Tiny<B> {
    let source = |path: &str| Source::Tensor(norm_names(path));
    let map = KeyMap {
        module: "tiny",
        prefix: prefix.to_string(),
        source: &source,
        in_scope: &|_| true,
        ignored: &|_| false,
    };
    load_module(Tiny::new(&Default::default()), file, &map, DType::F32).unwrap()
}

/// Every float parameter: burn path, shape, values.
fn parameters<M: Module<B>>(module: &M) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    param_values(module).into_iter().map(|(path, shape, data)| (path, shape, data.into_vec::<f32>().unwrap())).collect()
}

/// Writes `model`'s parameters under their PyTorch names, as a checkpoint would.
fn save_weights(model: &Tiny<B>, path: &Path) {
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = parameters(model)
        .into_iter()
        .map(|(name, shape, values)| (norm_names(&name), shape, values.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let views = tensors.iter().map(|(name, shape, bytes)| {
        (name.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes).unwrap())
    });
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// The reference run's settings (`reference/train_optim.json`).
struct Settings {
    config: AdamWConfig,
    schedule: LrSchedule,
    accumulation: usize,
    max_norm: f64,
    json: serde_json::Value,
}

fn settings() -> Settings {
    let json = reference_json("train_optim.json");
    let number = |key: &str| json[key].as_f64().unwrap();
    let config = AdamWConfig::new()
        .with_lr(number("lr"))
        .with_weight_decay(number("weight_decay"))
        .with_beta_1(json["betas"][0].as_f64().unwrap())
        .with_beta_2(json["betas"][1].as_f64().unwrap())
        .with_epsilon(number("eps"));
    let schedule =
        LrSchedule::Cosine { warmup_steps: number("warmup") as u64, training_steps: number("training_steps") as u64 };
    Settings { config, schedule, accumulation: number("accumulation") as usize, max_norm: number("max_norm"), json }
}

/// What a run measured, step by step.
#[derive(Default)]
struct Trace {
    losses: Vec<f32>,
    norms: Vec<f32>,
    lrs: Vec<f64>,
    clipped: Vec<bool>,
    /// Optimizer step 1's summed gradients before clipping: burn path, values.
    first_grads: Vec<(String, Vec<f32>)>,
}

/// Optimizer steps `steps` of the reference run (micro-batches `2s`, `2s + 1` of step `s`).
fn train(mut model: Tiny<B>, optim: &mut AdamW<B>, steps: Range<usize>, trace: &mut Trace) -> Tiny<B> {
    let Settings { schedule, accumulation, max_norm, .. } = settings();
    let file = reference("train_optim.safetensors");
    let (inputs, targets) = (file.read_f32("inputs").unwrap(), file.read_f32("targets").unwrap());
    let batch = |values: &[f32], k: usize, width: usize| {
        let rows = file.shape("inputs").unwrap()[1];
        let chunk = values[k * rows * width..(k + 1) * rows * width].to_vec();
        Tensor::<B, 2>::from_data(TensorData::new(chunk, [rows, width]), &Default::default())
    };
    for step in steps {
        let mut accumulator = GradAccumulator::new();
        for micro in 0..accumulation {
            let k = step * accumulation + micro;
            let error = model.forward(batch(&inputs, k, 6)) - batch(&targets, k, 3);
            let loss = error.square().mean();
            trace.losses.push(loss.clone().into_data().into_vec::<f32>().unwrap()[0]);
            // The caller divides each micro-batch's loss by K: the sum is the mean.
            let loss = loss / accumulation as f32;
            accumulator.accumulate(Grads::from_backward(loss.backward(), &model));
        }
        let mut grads = accumulator.take();
        if step == 0 {
            trace.first_grads = grads
                .paths()
                .map(|p| (p.to_string(), grads.flat(p).unwrap().into_data().into_vec::<f32>().unwrap()))
                .collect();
        }
        let norm = clip_grad_norm(&mut grads, max_norm).unwrap();
        trace.norms.push(norm);
        trace.clipped.push((max_norm as f32) / (norm + 1e-6) < 1.0);
        let lr = schedule.lr(optim.config().lr, optim.steps());
        trace.lrs.push(lr);
        model = optim.step(lr, model, grads);
    }
    model
}

fn reference_values(file: &TensorFile, key: &str) -> Vec<f32> {
    file.read_f32(key).unwrap_or_else(|_| panic!("no `{key}` in the reference"))
}

#[test]
fn three_steps_match_pytorch_adamw_with_accumulation_clipping_and_cosine_schedule() {
    let file = reference("train_optim.safetensors");
    let settings = settings();
    let mut optim = AdamW::new(settings.config.clone());
    let mut trace = Trace::default();
    let model = train(load(&file, "init."), &mut optim, 0..3, &mut trace);

    assert_close_values("micro-batch losses", &trace.losses, &reference_values(&file, "losses"));
    let mut grad_paths = Vec::new();
    for (path, values) in &trace.first_grads {
        let key = format!("grads1.{}", norm_names(path));
        assert_close_values(&format!("step-1 gradient {path}"), values, &reference_values(&file, &key));
        grad_paths.push(norm_names(path));
    }
    let expected_paths: Vec<String> = file.keys().filter_map(|k| k.strip_prefix("grads1.")).map(String::from).collect();
    grad_paths.sort();
    assert_eq!(grad_paths, expected_paths, "the parameters with a gradient");
    assert_close_values("total norms", &trace.norms, &reference_values(&file, "total_norms"));
    let expected_clipped: Vec<bool> =
        settings.json["clipped"].as_array().unwrap().iter().map(|c| c.as_bool().unwrap()).collect();
    assert_eq!(trace.clipped, expected_clipped, "steps that clip");
    let lrs: Vec<f32> = trace.lrs.iter().map(|&lr| lr as f32).collect();
    assert_close_values("learning rates", &lrs, &reference_values(&file, "lrs"));
    for (lr, expected) in trace.lrs.iter().zip(settings.json["lrs"].as_array().unwrap()) {
        assert!((lr - expected.as_f64().unwrap()).abs() <= 1e-15, "lr {lr} vs PyTorch's {expected}");
    }
    for (path, _, values) in parameters(&model) {
        let key = format!("final.{}", norm_names(&path));
        assert_close_values(&format!("parameter {path} after step 3"), &values, &reference_values(&file, &key));
    }
    assert_eq!(optim.steps(), 3);
}

#[test]
fn parameters_without_gradients_are_untouched_and_get_no_state() {
    let file = reference("train_optim.safetensors");
    let mut optim = AdamW::new(settings().config);
    let model = train(load(&file, "init."), &mut optim, 0..3, &mut Trace::default());
    // `unused` is not in the graph (PyTorch's grad stays None).
    assert_eq!(model.unused.val().into_data().into_vec::<f32>().unwrap(), reference_values(&file, "init.unused"));
    assert!(!optim.has_state("unused"));
    assert!(optim.export().unwrap().params.iter().all(|p| p.path != "unused"));
    assert_eq!(optim.state_paths().count(), 6);

    // A frozen parameter (no grad required) is in the graph but gets no gradient either.
    let mut model = load(&file, "init.");
    model.fc2.bias = model.fc2.bias.map(|bias| bias.set_require_grad(false));
    let before = model.fc2.bias.as_ref().unwrap().val().into_data().into_vec::<f32>().unwrap();
    let mut optim = AdamW::new(settings().config);
    let model = train(model, &mut optim, 0..2, &mut Trace::default());
    let bias = model.fc2.bias.as_ref().unwrap().val();
    assert!(!bias.is_require_grad());
    assert_eq!(bias.into_data().into_vec::<f32>().unwrap(), before);
    assert!(!optim.has_state("fc2.bias") && optim.has_state("fc2.weight"));
    assert!(model.fc2.weight.val().is_require_grad());
}

#[test]
fn a_run_resumed_into_fresh_parameters_continues_bit_identically() {
    let file = reference("train_optim.safetensors");
    let config = settings().config;
    let mut uninterrupted = AdamW::new(config.clone());
    let straight = train(load(&file, "init."), &mut uninterrupted, 0..3, &mut Trace::default());

    // One step, then a checkpoint: weights and optimizer state on disk.
    let dir = tempfile::tempdir().unwrap();
    let mut first = AdamW::new(config.clone());
    let model = train(load(&file, "init."), &mut first, 0..1, &mut Trace::default());
    let (weights_path, state_path) = (dir.path().join("model.safetensors"), dir.path().join("optim.safetensors"));
    save_weights(&model, &weights_path);
    let exported = first.export().unwrap();
    exported.save(&state_path).unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 2, "no temporary file is left: {leftovers:?}");

    // The state file round-trips bit for bit.
    let loaded = OptimizerState::load(&state_path).unwrap();
    assert_eq!(loaded, exported);
    assert_eq!((loaded.steps, loaded.params.len()), (1, 6));

    // A new process: the model re-created, its weights loaded (fresh ids).
    let resumed = load(&TensorFile::open(&weights_path).unwrap(), "");
    let (old_ids, new_ids) = (list_param_ids(&model), list_param_ids(&resumed));
    assert!(new_ids.iter().all(|id| !old_ids.contains(id)), "the loader gives fresh parameter ids");
    let mut optim = AdamW::new(config);
    optim.import(loaded, &resumed).unwrap();
    assert_eq!(optim.export().unwrap(), exported);
    let resumed = train(resumed, &mut optim, 1..3, &mut Trace::default());

    assert_eq!(parameters(&resumed), parameters(&straight));
    assert_eq!(optim.export().unwrap(), uninterrupted.export().unwrap());
}

#[test]
fn schedules_match_diffusers_tables() {
    let tables = &settings().json["schedule_tables"];
    let (warmup, total) = (tables["warmup"].as_u64().unwrap(), tables["training_steps"].as_u64().unwrap());
    let cosine = LrSchedule::from_name("cosine", warmup, total).unwrap();
    let constant = LrSchedule::from_name("constant_with_warmup", warmup, total).unwrap();
    for (schedule, name) in [(cosine, "cosine"), (constant, "constant")] {
        for (step, expected) in tables[name].as_array().unwrap().iter().enumerate() {
            let (got, expected) = (schedule.factor(step as u64), expected.as_f64().unwrap());
            assert!((got - expected).abs() <= 1e-15, "{name} step {step}: {got} vs diffusers' {expected}");
        }
    }
}
