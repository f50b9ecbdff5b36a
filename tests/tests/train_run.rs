//! Whole training runs on the tiny models (CPU): the model learns two
//! styles well enough that their codes steer generation apart, a cached and
//! an uncached run give the same weights, and the export is a working
//! weights folder with its own code version.

use burn::backend::Autodiff;
use burn::tensor::DType;
use burn::tensor::{Tensor, TensorData};
use burn_stylecode::sd::pipeline::{Settings, StableDiffusion};
use burn_stylecode::style::StyleCondition;
use burn_stylecode::train::checkpoint::{export, find, list};
use burn_stylecode::train::data::preprocess_target;
use burn_stylecode::train::{train, Event, Init, MixedPrecision, TrainConfig};
use burn_stylecode::{Error, StyleCodes, WeightsDir};
use burn_stylecode_tests::*;
use image::{Rgb, RgbImage};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

type Ad = Autodiff<TestBackend>;

const RESOLUTION: u32 = 16;
const PROMPT: &str = "a picture";

/// Style A: warm flat colours, a little different per image.
fn warm(k: u32) -> RgbImage {
    RgbImage::from_pixel(24, 24, Rgb([230, 110 + 8 * k as u8, 40]))
}

/// Style B: cool vertical stripes.
fn cool(k: u32) -> RgbImage {
    RgbImage::from_fn(
        24,
        24,
        |x, _| if ((x + k) / 2).is_multiple_of(2) { Rgb([20, 60, 200]) } else { Rgb([190, 225, 250]) },
    )
}

/// A self-reconstruction dataset of both styles, one prompt for all.
fn dataset(dir: &Path) {
    let mut manifest = String::new();
    for k in 0..4 {
        for (name, image) in [(format!("warm{k}.png"), warm(k)), (format!("cool{k}.png"), cool(k))] {
            image.save(dir.join(&name)).unwrap();
            manifest.push_str(&format!("{{\"image\": \"{name}\", \"prompt\": \"{PROMPT}\"}}\n"));
        }
    }
    std::fs::write(dir.join("manifest.jsonl"), manifest).unwrap();
}

fn config(data: &Path, steps: u64) -> TrainConfig {
    TrainConfig {
        data: data.to_path_buf(),
        weights: unit_scaled_weights(),
        init: Init::Paper,
        steps,
        batch_size: 4,
        grad_accum: 1,
        lr: 2e-3,
        resolution: RESOLUTION,
        text_dropout: 0.0,
        style_dropout: 0.1,
        checkpoint_every: steps,
        ..TrainConfig::default()
    }
}

/// The tiny weights with the VAE's `scaling_factor` set for its own latents.
/// SD's 0.18215 is 1/std of SD's VAE latents; the tiny random VAE's latents
/// already have a std near 1 (posterior std 0.7–1.8, means ±0.8), so at
/// 0.18215 its targets sit ~0.1 under unit noise and no style can be told
/// apart in the loss. 1.0 is the factor diffusers' definition gives it.
fn unit_scaled_weights() -> PathBuf {
    tiny_weights("epsilon")
}

/// [`unit_scaled_weights`] with the scheduler's `prediction_type` set to
/// `prediction` (`epsilon` as in SD1.5, or `v_prediction` as in SD 2.x).
fn tiny_weights(prediction: &'static str) -> PathBuf {
    static DIRS: std::sync::Mutex<Vec<(&str, tempfile::TempDir)>> = std::sync::Mutex::new(Vec::new());
    let mut dirs = DIRS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, dir)) = dirs.iter().find(|(p, _)| *p == prediction) {
        return dir.path().to_path_buf();
    }
    let (dir, _) = weights_copy();
    let edit = |file: &str, key: &str, value: serde_json::Value| {
        let path = dir.path().join(file);
        let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        config[key] = value;
        std::fs::write(&path, config.to_string()).unwrap();
    };
    edit("sd15/vae/config.json", "scaling_factor", 1.0.into());
    edit("sd15/scheduler/scheduler_config.json", "prediction_type", prediction.into());
    let path = dir.path().to_path_buf();
    dirs.push((prediction, dir));
    path
}

/// The backend's RNG (the autoencoder's dropout, seeded per micro-batch) is
/// process-wide: runs in parallel test threads would draw from each other's.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    backend_rng()
}

fn run(config: &TrainConfig, run_dir: &Path) -> Vec<f64> {
    let _serial = serial();
    let mut losses = Vec::new();
    train::<Ad>(config, run_dir, false, &device(), |event| {
        if let Event::Step(record) = event {
            losses.push(record.loss);
        }
    })
    .unwrap();
    losses
}

/// A weights folder with the tiny SigLIP and SD1.5 and `run_dir`'s export.
fn exported(run_dir: &Path, out: &Path, version: char) -> WeightsDir {
    let trained_on: TrainConfig =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("config.json")).unwrap()).unwrap();
    for part in ["siglip", "sd15"] {
        copy_dir(&trained_on.weights.join(part), &out.join(part));
    }
    export(&find(run_dir, None).unwrap(), version, out).unwrap();
    WeightsDir::new(out)
}

/// Per-channel means of latents [N, 4, h, w], averaged over the batch.
fn channel_means(latents: Tensor<TestBackend, 4>) -> Vec<f64> {
    let [n, c, h, w] = latents.dims();
    let values = latents.into_data().convert::<f32>().into_vec::<f32>().unwrap();
    (0..c)
        .map(|ch| {
            let sum: f64 = (0..n)
                .flat_map(|b| values[(b * c + ch) * h * w..(b * c + ch + 1) * h * w].iter())
                .map(|&v| f64::from(v))
                .sum();
            sum / (n * h * w) as f64
        })
        .collect()
}

fn distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt()
}

/// The diffusion latents the model can reach for targets: their VAE
/// posterior means, scaled.
fn target_latents(sd: &StableDiffusion<TestBackend>, images: &[RgbImage]) -> Vec<f64> {
    let r = RESOLUTION as usize;
    let values: Vec<f32> = images.iter().flat_map(|i| preprocess_target(i, RESOLUTION).unwrap()).collect();
    let pixels = Tensor::<TestBackend, 4>::from_data(TensorData::new(values, [images.len(), 3, r, r]), &device());
    channel_means(sd.vae.to_diffusion(sd.vae.encode(pixels).0))
}

/// The final latents generated with the code of `style` (4 seeds).
fn generated_latents(weights: &WeightsDir, sd: &StableDiffusion<TestBackend>, style: &RgbImage) -> Vec<f64> {
    let handle = StyleCodes::<TestBackend>::new(weights.clone(), DType::F32, device());
    let code = handle.encode(std::slice::from_ref(style)).unwrap()[0].code;
    let (latent, _) = handle.resolve_style(&[code.into()]).unwrap();
    let latents =
        Tensor::<TestBackend, 1>::from_floats(latent.repeat(4).as_slice(), &device()).reshape([4, latent.len()]);
    let condition = StyleCondition {
        autoencoder: handle.autoencoder().unwrap(),
        control: handle.control().unwrap(),
        latents,
        scale: 1.0,
    };
    let side = RESOLUTION as usize;
    let settings = Settings { steps: 10, guidance_scale: 1.0, width: side, height: side, ..Settings::default() };
    let predict = condition.predictor(&sd.unet, sd.latent_size(&settings), settings.guided());
    let prompts = vec![PROMPT.to_string(); 4];
    let negatives = vec![String::new(); 4];
    let final_latents = sd
        .generate_latents(&prompts, &negatives, &[1, 2, 3, 4], &settings, predict, |_, _| ControlFlow::Continue(()))
        .unwrap();
    channel_means(final_latents)
}

/// Whether each style's generations are nearer its own targets (in the
/// latents) than the other style's: [A is nearer A, B is nearer B].
fn steers_apart(weights: WeightsDir) -> ([bool; 2], String) {
    let sd = StableDiffusion::<TestBackend>::load(&weights.sd15_dir(), DType::F32, &device()).unwrap();
    let target_a = target_latents(&sd, &(0..4).map(warm).collect::<Vec<_>>());
    let target_b = target_latents(&sd, &(0..4).map(cool).collect::<Vec<_>>());
    let a = generated_latents(&weights, &sd, &warm(0));
    let b = generated_latents(&weights, &sd, &cool(0));
    let report = format!(
        "targets A {target_a:.3?} B {target_b:.3?}; generated with A's code {a:.3?}, with B's code {b:.3?}; \
         d(A→A) {:.3} d(A→B) {:.3} d(B→B) {:.3} d(B→A) {:.3}",
        distance(&a, &target_a),
        distance(&a, &target_b),
        distance(&b, &target_b),
        distance(&b, &target_a)
    );
    ([distance(&a, &target_a) < distance(&a, &target_b), distance(&b, &target_b) < distance(&b, &target_a)], report)
}

/// The style pathway learns the two styles: trained from `--init paper`,
/// the loss falls and each style's code steers generation towards its own
/// targets; the untrained model (zero mixers) gives both codes the same
/// image.
///
/// The tiny base is a v-prediction model (SD 2.x's `prediction_type`).
/// With ε-prediction the step only pays for a style through the frozen
/// random UNet's ability to pass the noisy latent through to its output
/// (ε = (x_t − √ᾱ·x₀)/√(1−ᾱ) needs x_t; knowing x₀ alone predicts nothing
/// of ε), which a random tiny UNet cannot do: measured, the ε loss stays
/// near 1, and training makes the decoded features of the two codes alike
/// (their distance fell from 0.32 to 0.03) instead of using them. The
/// v target, √ᾱ·ε − √(1−ᾱ)·x₀, is mostly x₀ at high noise, which the
/// style tells.
#[test]
fn it_learns_style_and_an_untrained_model_does_not() {
    let data = tempfile::tempdir().unwrap();
    dataset(data.path());
    let runs = tempfile::tempdir().unwrap();
    let settings = |steps| TrainConfig { weights: tiny_weights("v_prediction"), ..config(data.path(), steps) };

    // Untrained: the paper's initialisation with its zero mixers (1 step at lr ≈ 0).
    let untrained_dir = runs.path().join("untrained");
    run(&TrainConfig { lr: 1e-30, ..settings(1) }, &untrained_dir);
    let (untrained, report) = steers_apart(exported(&untrained_dir, &runs.path().join("w0"), 'u'));
    println!("untrained: {report}");
    assert!(!(untrained[0] && untrained[1]), "an untrained model must not steer the two styles apart: {report}");

    let trained_dir = runs.path().join("trained");
    run(&TrainConfig { batch_size: 8, lr: 1e-2, ..settings(300) }, &trained_dir);
    let trained_weights = exported(&trained_dir, &runs.path().join("w1"), 't');
    let (trained, report) = steers_apart(trained_weights.clone());
    println!("trained: {report}");

    // The loss falls: the trained and the untrained model, each run 20 steps
    // at lr ≈ 0 on the same held batches (seed 7: the same entries,
    // timesteps, noises and dropout for both), so that the per-sample
    // timestep noise cancels out of the comparison.
    let held = |weights: &WeightsDir, init: Init, name: &str| {
        let config = TrainConfig { weights: weights.root().to_path_buf(), init, lr: 1e-30, seed: 7, ..settings(20) };
        let losses = run(&config, &runs.path().join(name));
        losses.iter().sum::<f64>() / losses.len() as f64
    };
    let before = held(&WeightsDir::new(tiny_weights("v_prediction")), Init::Paper, "held-untrained");
    let after = held(&trained_weights, Init::Official, "held-trained");
    println!("loss on the held batches: untrained {before:.4}, trained {after:.4}");
    assert!(after < 0.95 * before, "the loss must fall: {before} → {after}");
    assert!(trained[0] && trained[1], "each style's code must steer towards its own targets: {report}");
}

#[test]
fn a_cached_and_an_uncached_run_give_the_same_weights() {
    let data = tempfile::tempdir().unwrap();
    dataset(data.path());
    let runs = tempfile::tempdir().unwrap();
    let settings = TrainConfig { grad_accum: 2, text_dropout: 0.3, ..config(data.path(), 3) };
    run(&settings, &runs.path().join("cached"));
    run(&TrainConfig { cache: false, ..settings.clone() }, &runs.path().join("live"));
    assert!(runs.path().join("cached/cache").is_dir() && !runs.path().join("live/cache").exists());
    let weights = |run: &str| std::fs::read(find(&runs.path().join(run), None).unwrap().weights()).unwrap();
    assert!(weights("cached") == weights("live"), "the cache changes the trained weights");
    let initial = runs.path().join("initial");
    run(&TrainConfig { steps: 1, lr: 1e-30, ..settings.clone() }, &initial);
    assert!(weights("cached") != weights("initial"), "training moves the weights");
}

/// `--mixed-precision bf16|f16`: the frozen networks in half precision, the
/// trained weights (and what is exported) in f32, and the run lands near
/// the f32 run's weights.
#[test]
fn mixed_precision_runs_train_f32_weights_near_the_f32_run() {
    let data = tempfile::tempdir().unwrap();
    dataset(data.path());
    let runs = tempfile::tempdir().unwrap();
    let settings = config(data.path(), 3);
    run(&settings, &runs.path().join("f32"));
    let weights = |name: &str| {
        let path = find(&runs.path().join(name), None).unwrap().weights();
        let bytes = std::fs::read(&path).unwrap();
        let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
        let dtypes: std::collections::BTreeSet<String> = header
            .as_object()
            .unwrap()
            .iter()
            .filter(|(key, _)| *key != "__metadata__")
            .map(|(_, info)| info["dtype"].as_str().unwrap().to_string())
            .collect();
        let file = burn_stylecode::weights::safetensors::TensorFile::open(&path).unwrap();
        let values: Vec<f32> = file.keys().flat_map(|key| file.read_f32(key).unwrap()).collect();
        (dtypes.into_iter().collect::<Vec<_>>(), values)
    };
    let (_, reference) = weights("f32");
    for (precision, name) in [(MixedPrecision::Bf16, "bf16"), (MixedPrecision::F16, "f16")] {
        let losses = run(&TrainConfig { mixed_precision: precision, ..settings.clone() }, &runs.path().join(name));
        assert!(losses.len() == 3 && losses.iter().all(|l| l.is_finite()), "{name}: losses {losses:?}");
        let (dtypes, values) = weights(name);
        assert_eq!(dtypes, ["F32"], "{name}: the trained weights are stored in f32");
        let (mut diff, mut scale) = (0f64, 0f64);
        for (a, b) in values.iter().zip(&reference) {
            diff += f64::from(a - b).powi(2);
            scale += f64::from(*b).powi(2);
        }
        let relative = (diff / scale).sqrt();
        assert!(relative < 1e-2, "{name}: the weights are {relative:e} from the f32 run's");
        assert!(values != reference, "{name}: a half-precision run is not the f32 run");
    }
}

#[test]
fn the_export_carries_its_version_and_refuses_the_official_one() {
    let data = tempfile::tempdir().unwrap();
    dataset(data.path());
    let runs = tempfile::tempdir().unwrap();
    let run_dir = runs.path().join("run");
    run(&TrainConfig { checkpoint_every: 1, keep: 2, ..config(data.path(), 3) }, &run_dir);
    let steps: Vec<u64> = list(&run_dir).unwrap().iter().map(|c| c.step).collect();
    assert_eq!(steps, [2, 3], "--keep 2 keeps the newest two");

    let refused = export(&find(&run_dir, None).unwrap(), '1', &runs.path().join("official"));
    assert!(matches!(&refused, Err(Error::InvalidRequest(m)) if m.contains("official")), "{refused:?}");
    assert!(!runs.path().join("official/stylecodes").exists());

    let weights = exported(&run_dir, &runs.path().join("w"), 'x');
    let handle = StyleCodes::<TestBackend>::new(weights.clone(), DType::F32, device());
    let code = handle.encode(&[warm(1)]).unwrap()[0].code;
    assert_eq!(code.version(), 'x', "codes of exported weights carry the export's version");
    // The export is refused over an existing one: nothing is lost.
    let again = export(&find(&run_dir, Some(2)).unwrap(), 'y', weights.root());
    assert!(again.is_err());
    assert_eq!(StyleCodes::<TestBackend>::new(weights, DType::F32, device()).version().unwrap(), 'x');
    let missing = find(&run_dir, Some(1));
    assert!(matches!(&missing, Err(Error::InvalidRequest(m)) if m.contains("steps 2, 3")), "{missing:?}");
}

#[test]
fn bad_settings_are_refused_before_anything_is_written() {
    let data = tempfile::tempdir().unwrap();
    dataset(data.path());
    let runs = tempfile::tempdir().unwrap();
    let run_dir: PathBuf = runs.path().join("run");
    let guard = serial();
    let refused =
        train::<Ad>(&TrainConfig { resolution: 20, ..config(data.path(), 1) }, &run_dir, false, &device(), |_| {});
    assert!(matches!(&refused, Err(e) if e.to_string().contains("20")), "{refused:?}");
    assert!(!run_dir.exists(), "nothing is written for settings that cannot work");
    let too_big = TrainConfig { max_memory: Some(1 << 20), ..config(data.path(), 1) };
    let refused = train::<Ad>(&too_big, &run_dir, false, &device(), |_| {});
    assert!(
        matches!(&refused, Err(Error::OutOfMemory { request, limit, .. })
            if request.contains("micro-batches of 4 at 16x16") && limit.contains("--max-memory")),
        "{refused:?}"
    );
    assert!(!run_dir.exists(), "nothing is written for a run over the memory limit");
    let bad_data = tempfile::tempdir().unwrap();
    std::fs::write(bad_data.path().join("manifest.jsonl"), "{\"image\": \"missing.png\", \"prompt\": \"x\"}\n")
        .unwrap();
    let refused = train::<Ad>(&config(bad_data.path(), 1), &run_dir, false, &device(), |_| {});
    assert!(matches!(&refused, Err(e) if e.to_string().contains("manifest.jsonl:1")), "{refused:?}");
    assert!(!run_dir.join("config.json").exists(), "a run that cannot start leaves no run to --resume");
    drop(guard);
    run(&config(data.path(), 1), &run_dir);
    let _serial = serial();
    let again = train::<Ad>(&config(data.path(), 1), &run_dir, false, &device(), |_| {});
    assert!(matches!(&again, Err(e) if e.to_string().contains("--resume")), "{again:?}");
    let changed = train::<Ad>(&TrainConfig { lr: 1.0, ..config(data.path(), 2) }, &run_dir, true, &device(), |_| {});
    assert!(matches!(&changed, Err(e) if e.to_string().contains("lr")), "{changed:?}");
}

#[test]
fn validation_writes_a_grid_and_scores_it() {
    let data = tempfile::tempdir().unwrap();
    dataset(data.path());
    let runs = tempfile::tempdir().unwrap();
    std::fs::write(
        data.path().join("validation.jsonl"),
        "{\"style\": \"warm0.png\", \"prompt\": \"a picture\", \"seed\": 1}\n\
         {\"style\": \"cool1.png\", \"prompt\": \"a picture\", \"seed\": 2}\n",
    )
    .unwrap();
    let run_dir = runs.path().join("run");
    let settings = TrainConfig {
        validate_every: 2,
        validation: Some(data.path().join("validation.jsonl")),
        validation_steps: 3,
        ..config(data.path(), 3)
    };
    run(&settings, &run_dir);
    for step in ["step-000002.png", "step-000003.png"] {
        let grid = image::open(run_dir.join("validation").join(step)).unwrap();
        assert_eq!((grid.width(), grid.height()), (2 * RESOLUTION, 2 * RESOLUTION), "{step}: 2 rows of style | image");
    }
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    let scores: Vec<f64> = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["style_similarity"].as_f64())
        .collect();
    assert_eq!(scores.len(), 2, "one score per validation: {metrics}");
    assert!(scores.iter().all(|s| (-1.0..=1.0).contains(s) && *s != 0.0), "cosines: {scores:?}");

    std::fs::write(data.path().join("bad.jsonl"), "{\"style\": \"warm0.png\", \"prompt\": \"x\"}\n{\"style\": 3}\n")
        .unwrap();
    let bad = TrainConfig { validation: Some(data.path().join("bad.jsonl")), ..settings };
    let _serial = serial();
    let error = train::<Ad>(&bad, &runs.path().join("bad"), false, &device(), |_| {}).unwrap_err();
    assert!(error.to_string().contains("bad.jsonl:2"), "{error}");
}

#[test]
fn the_feature_cache_is_reused_and_rebuilt_when_its_inputs_change() {
    use burn_stylecode::train::cache::FeatureCache;
    use burn_stylecode::train::data::{Dataset, DatasetOptions};
    use burn_stylecode::train::step::Frozen;
    let data = tempfile::tempdir().unwrap();
    dataset(data.path());
    let root = tempfile::tempdir().unwrap();
    let frozen = Frozen::<Ad>::load(&WeightsDir::new(unit_scaled_weights()), DType::F32, &device()).unwrap();
    let options = DatasetOptions { resolution: RESOLUTION, skip_bad: false };
    let open = || {
        let (dataset, _) = Dataset::open(data.path(), &options).unwrap();
        let mut built = 0;
        let cache = FeatureCache::open_or_build(root.path(), &dataset, &frozen, &mut |_, _| built += 1).unwrap();
        (cache, dataset, built)
    };
    let (first, dataset_1, built) = open();
    assert!(built > 0, "the first open builds the cache");
    let before = first.read(&[0, 5]).unwrap();
    let (again, _, built) = open();
    assert_eq!(built, 0, "an unchanged dataset and weights reuse the cache");
    assert_eq!(again.dir(), first.dir());
    assert_eq!(again.read(&[0, 5]).unwrap(), before);

    // Entry 5 (`cool2.png`) gets other pixels: the fingerprint changes.
    let changed = &dataset_1.entries()[5].style;
    warm(3).save(changed).unwrap();
    let (rebuilt, _, built) = open();
    assert!(built > 0, "a changed image rebuilds the cache");
    assert_ne!(rebuilt.dir(), first.dir());
    assert!(!first.dir().exists(), "the stale cache is removed");
    let after = rebuilt.read(&[0, 5]).unwrap();
    let per_entry = after.style.len() / 2;
    assert_eq!(after.style[..per_entry], before.style[..per_entry], "entry 0 is unchanged");
    assert_ne!(after.style[per_entry..], before.style[per_entry..], "entry 5 has its new features");
}
