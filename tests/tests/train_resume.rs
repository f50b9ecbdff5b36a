//! The resume guarantee (CPU): a run killed at any moment and resumed ends
//! with weights and optimizer state bit-identical to an uninterrupted run,
//! and loses at most the work since its last checkpoint; a kill while a
//! checkpoint is written leaves the previous one usable.
//!
//! Each run is a child process (this test binary, re-run on `child_run`),
//! so that it can be killed with SIGKILL, or aborted by the fault points
//! (`STYLECODE_TRAIN_ABORT_AT`) inside a checkpoint write.

use burn::backend::Autodiff;
use burn_stylecode::train::checkpoint::list;
use burn_stylecode::train::{train, Init, OptimizerState, TrainConfig};
use burn_stylecode_tests::*;
use image::{Rgb, RgbImage};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const STEPS: u64 = 8;

fn dataset(dir: &Path) {
    let mut manifest = String::new();
    for k in 0..5u8 {
        let image = RgbImage::from_fn(20, 28, |x, y| Rgb([40 * k, (x * 9) as u8, (y * 7) as u8]));
        image.save(dir.join(format!("{k}.png"))).unwrap();
        manifest.push_str(&format!("{{\"image\": \"{k}.png\", \"prompt\": \"picture {k}\"}}\n"));
    }
    std::fs::write(dir.join("manifest.jsonl"), manifest).unwrap();
}

fn config(data: &Path, checkpoint_every: u64) -> TrainConfig {
    TrainConfig {
        data: data.to_path_buf(),
        weights: weights().root().to_path_buf(),
        init: Init::Paper,
        steps: STEPS,
        batch_size: 2,
        grad_accum: 2,
        lr: 1e-3,
        lr_schedule: "cosine".into(),
        warmup: 2,
        resolution: 16,
        text_dropout: 0.3,
        style_dropout: 0.3,
        checkpoint_every,
        keep: 2,
        ..TrainConfig::default()
    }
}

/// The child: one `train` call as `STYLECODE_TEST_CHILD` says.
#[test]
#[ignore = "run by the resume tests in a child process"]
fn child_run() {
    let spec: serde_json::Value = serde_json::from_str(&std::env::var("STYLECODE_TEST_CHILD").unwrap()).unwrap();
    let config: TrainConfig = serde_json::from_value(spec["config"].clone()).unwrap();
    let run_dir = PathBuf::from(spec["run_dir"].as_str().unwrap());
    train::<Autodiff<TestBackend>>(&config, &run_dir, spec["resume"].as_bool().unwrap(), &device(), |_| {}).unwrap();
}

fn spawn(config: &TrainConfig, run_dir: &Path, resume: bool, abort_at: Option<&str>) -> Child {
    let spec = serde_json::json!({ "config": config, "run_dir": run_dir, "resume": resume });
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.args(["child_run", "--exact", "--ignored", "--nocapture", "--test-threads", "1"]);
    command.env("STYLECODE_TEST_CHILD", spec.to_string()).env_remove("STYLECODE_TRAIN_ABORT_AT");
    if let Some(point) = abort_at {
        command.env("STYLECODE_TRAIN_ABORT_AT", point);
    }
    command.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    command.spawn().unwrap()
}

fn run_to_end(config: &TrainConfig, run_dir: &Path, resume: bool) {
    let status = spawn(config, run_dir, resume, None).wait().unwrap();
    assert!(status.success(), "training run in {} failed", run_dir.display());
}

fn metrics_steps(run_dir: &Path) -> u64 {
    std::fs::read_to_string(run_dir.join("metrics.jsonl")).map_or(0, |text| text.lines().count() as u64)
}

/// The final checkpoint's weights (the file's bytes) and optimizer state
/// (every value, bit for bit; the file's header order may vary).
fn final_state(run_dir: &Path) -> (Vec<u8>, OptimizerState) {
    let last = list(run_dir).unwrap().pop().expect("a checkpoint");
    assert_eq!(last.step, STEPS);
    (std::fs::read(last.weights()).unwrap(), OptimizerState::load(&last.optimizer()).unwrap())
}

#[test]
fn killed_runs_resume_bit_identically() {
    let data = tempfile::tempdir().unwrap();
    dataset(data.path());
    let runs = tempfile::tempdir().unwrap();
    for every in [1, 3] {
        let settings = config(data.path(), every);
        let reference = runs.path().join(format!("reference-{every}"));
        run_to_end(&settings, &reference, false);
        let expected = final_state(&reference);
        let metrics = std::fs::read_to_string(reference.join("metrics.jsonl")).unwrap();
        assert_eq!(metrics.lines().count() as u64, STEPS);

        // SIGKILL at several moments: as soon as step k's metrics appear.
        let run_dir = runs.path().join(format!("killed-{every}"));
        let mut resume = false;
        for kill_after in [1, 3, 6] {
            let mut child = spawn(&settings, &run_dir, resume, None);
            let start = Instant::now();
            while metrics_steps(&run_dir) < kill_after && start.elapsed() < Duration::from_secs(120) {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            let done = metrics_steps(&run_dir);
            let checkpointed = list(&run_dir).unwrap().last().map_or(0, |c| c.step);
            assert!(
                done < every + checkpointed + 1,
                "killed after {done} steps with the last checkpoint at {checkpointed}: lost more than the work since it"
            );
            resume = true;
        }
        run_to_end(&settings, &run_dir, true);
        assert!(final_state(&run_dir) == expected, "a killed and resumed run (checkpoints every {every}) differs");
        let resumed_metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
        let losses = |text: &str| -> Vec<f64> {
            text.lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap())
                .collect()
        };
        assert_eq!(losses(&resumed_metrics), losses(&metrics), "metrics.jsonl holds each step once, as uninterrupted");
    }
}

#[test]
fn a_kill_inside_a_checkpoint_write_keeps_the_previous_checkpoint() {
    let data = tempfile::tempdir().unwrap();
    dataset(data.path());
    let runs = tempfile::tempdir().unwrap();
    let settings = config(data.path(), 2);
    let reference = runs.path().join("reference");
    run_to_end(&settings, &reference, false);

    let run_dir = runs.path().join("aborted");
    let status = spawn(&settings, &run_dir, false, Some("checkpoint:4")).wait().unwrap();
    assert!(!status.success(), "the fault point aborts the run");
    let leftovers: Vec<String> = std::fs::read_dir(run_dir.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(leftovers.iter().any(|n| n.starts_with(".tmp-step-000004")), "the write was cut: {leftovers:?}");
    let complete: Vec<u64> = list(&run_dir).unwrap().iter().map(|c| c.step).collect();
    assert_eq!(complete, [2], "only the previous checkpoint counts");
    run_to_end(&settings, &run_dir, true);
    assert!(final_state(&run_dir) == final_state(&reference), "resumed past a cut checkpoint, the run differs");
}
