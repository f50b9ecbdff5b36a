//! Whole training runs on the tiny models (CPU): the model learns two
//! styles well enough that their codes steer generation apart, a cached and
//! an uncached run give the same weights, and the export is a working
//! weights folder with its own code version.

use burn::backend::Autodiff;
use burn::tensor::DType;
use burn_stylecode::sd::pipeline::StableDiffusion;
use burn_stylecode::train::checkpoint::{export, find, list};
use burn_stylecode::train::{train, Event, Init, TrainConfig};
use burn_stylecode::{Error, GenerateRequest, GenerateSettings, ImageSpec, Style, StyleCodes, WeightsDir};
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
    RgbImage::from_fn(24, 24, |x, _| if (x + k) / 2 % 2 == 0 { Rgb([20, 60, 200]) } else { Rgb([190, 225, 250]) })
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
        weights: weights().root().to_path_buf(),
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

fn run(config: &TrainConfig, run_dir: &Path) -> Vec<f64> {
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
    for part in ["siglip", "sd15"] {
        copy_dir(&weights().root().join(part), &out.join(part));
    }
    export(&find(run_dir, None).unwrap(), version, out).unwrap();
    WeightsDir::new(out)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        match entry.file_type().unwrap().is_dir() {
            true => copy_dir(&entry.path(), &target),
            false => drop(std::fs::copy(entry.path(), target).unwrap()),
        }
    }
}

fn mean_colour(image: &RgbImage) -> [f64; 3] {
    let mut sum = [0.0; 3];
    for pixel in image.pixels() {
        for c in 0..3 {
            sum[c] += f64::from(pixel.0[c]);
        }
    }
    sum.map(|s| s / f64::from(image.width() * image.height()))
}

fn distance(a: [f64; 3], b: [f64; 3]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt()
}

/// What the tiny VAE can reach of a target: its round trip, as RGB.
fn round_trip(sd: &StableDiffusion<TestBackend>, image: &RgbImage) -> RgbImage {
    let values = burn_stylecode::train::data::preprocess_target(image, RESOLUTION).unwrap();
    let r = RESOLUTION as usize;
    let pixels = burn::tensor::Tensor::<TestBackend, 4>::from_data(burn::tensor::TensorData::new(values, [1, 3, r, r]), &device());
    let (mean, _) = sd.vae.encode(pixels);
    sd.decode(sd.vae.to_diffusion(mean)).unwrap().remove(0)
}

/// The mean colour of images generated with the code of each style image.
fn generated_colours(weights: WeightsDir, styles: &[RgbImage]) -> Vec<[f64; 3]> {
    let handle = StyleCodes::<TestBackend>::new(weights, DType::F32, device());
    let codes = handle.encode(styles).unwrap();
    let settings = GenerateSettings { steps: 10, width: RESOLUTION as usize, height: RESOLUTION as usize, ..Default::default() };
    codes
        .iter()
        .map(|style| {
            let spec = ImageSpec { prompt: PROMPT.into(), negative: String::new(), seed: 5, style: Style::Codes(vec![style.code.into()]) };
            let images = handle.generate(&GenerateRequest::repeated(spec, 4, settings.clone()), |_| ControlFlow::Continue(())).unwrap();
            let colours: Vec<[f64; 3]> = images.iter().map(|made| mean_colour(&made.image)).collect();
            [0, 1, 2].map(|c| colours.iter().map(|m| m[c]).sum::<f64>() / colours.len() as f64)
        })
        .collect()
}

/// Whether each style's images are closer to its own targets' round trips
/// than to the other style's: [A is nearer A, B is nearer B].
fn steers_apart(weights: WeightsDir) -> ([bool; 2], String) {
    let sd = StableDiffusion::<TestBackend>::load(&weights.sd15_dir(), DType::F32, &device()).unwrap();
    let target = |images: Vec<RgbImage>| {
        let colours: Vec<[f64; 3]> = images.iter().map(|i| mean_colour(&round_trip(&sd, i))).collect();
        [0, 1, 2].map(|c| colours.iter().map(|m| m[c]).sum::<f64>() / colours.len() as f64)
    };
    let (target_a, target_b) = (target((0..4).map(warm).collect()), target((0..4).map(cool).collect()));
    let generated = generated_colours(weights, &[warm(0), cool(0)]);
    let (a, b) = (generated[0], generated[1]);
    let report = format!(
        "targets A {target_a:.1?} B {target_b:.1?}; generated with A's code {a:.1?}, with B's code {b:.1?}; \
         d(A→A) {:.2} d(A→B) {:.2} d(B→B) {:.2} d(B→A) {:.2}",
        distance(a, target_a),
        distance(a, target_b),
        distance(b, target_b),
        distance(b, target_a)
    );
    ([distance(a, target_a) < distance(a, target_b), distance(b, target_b) < distance(b, target_a)], report)
}

#[test]
fn it_learns_style_and_an_untrained_model_does_not() {
    let data = tempfile::tempdir().unwrap();
    dataset(data.path());
    let runs = tempfile::tempdir().unwrap();

    // Untrained: the paper's initialisation with its zero mixers (1 step at lr ≈ 0).
    let untrained_dir = runs.path().join("untrained");
    run(&TrainConfig { lr: 1e-30, ..config(data.path(), 1) }, &untrained_dir);
    let (untrained, report) = steers_apart(exported(&untrained_dir, &runs.path().join("w0"), 'u'));
    println!("untrained: {report}");
    assert!(!(untrained[0] && untrained[1]), "an untrained model must not steer the two styles apart: {report}");

    let trained_dir = runs.path().join("trained");
    let losses = run(&config(data.path(), 150), &trained_dir);
    let mean = |part: &[f64]| part.iter().sum::<f64>() / part.len() as f64;
    let (first, last) = (mean(&losses[..20]), mean(&losses[losses.len() - 20..]));
    println!("loss: first 20 steps {first:.4}, last 20 steps {last:.4}");
    assert!(last < 0.9 * first, "the loss must fall: {first} → {last}");
    let (trained, report) = steers_apart(exported(&trained_dir, &runs.path().join("w1"), 't'));
    println!("trained: {report}");
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
    let refused = train::<Ad>(&TrainConfig { resolution: 20, ..config(data.path(), 1) }, &run_dir, false, &device(), |_| {});
    assert!(matches!(&refused, Err(e) if e.to_string().contains("20")), "{refused:?}");
    assert!(!run_dir.exists(), "nothing is written for settings that cannot work");
    run(&config(data.path(), 1), &run_dir);
    let again = train::<Ad>(&config(data.path(), 1), &run_dir, false, &device(), |_| {});
    assert!(matches!(&again, Err(e) if e.to_string().contains("--resume")), "{again:?}");
    let changed = train::<Ad>(&TrainConfig { lr: 1.0, ..config(data.path(), 2) }, &run_dir, true, &device(), |_| {});
    assert!(matches!(&changed, Err(e) if e.to_string().contains("lr")), "{changed:?}");
}
