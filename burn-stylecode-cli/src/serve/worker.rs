//! The one thread that owns the loaded models and runs the work in order.

use super::jobs::{Job, JobState, JobTable};
use crate::backend::{dispatch, Job as BackendJob};
use crate::ModelArgs;
use burn::prelude::Backend;
use burn::tensor::DType;
use burn_stylecode::{write_png, EncodedStyle, Error, GeneratedImage, StyleCodes};
use image::RgbImage;
use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use tokio::sync::oneshot;

/// Work for the models, in the order it arrives.
pub enum Work {
    Encode { images: Vec<RgbImage>, reply: oneshot::Sender<Result<Vec<EncodedStyle>, String>> },
    Generate(Arc<Job>),
}

/// What the worker learnt on starting.
pub struct WorkerInfo {
    /// The version character of the StyleCodes weights.
    pub version: char,
    pub stylecodes_dir: PathBuf,
}

/// Starts the worker; returns once the weights' config is read (or failed to be).
pub fn start(
    model: ModelArgs,
    dtype: Option<String>,
    outputs: PathBuf,
    table: Arc<JobTable>,
) -> anyhow::Result<(mpsc::Sender<Work>, WorkerInfo)> {
    let (work_tx, work_rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    let kind = model.backend;
    let worker = Worker { model, dtype, outputs, table, work: work_rx, ready: ready_tx.clone() };
    std::thread::Builder::new().name("stylecode-worker".into()).spawn(move || {
        if let Err(error) = dispatch(kind, worker) {
            let _ = ready_tx.send(Err(format!("{error:#}")));
        }
    })?;
    match ready_rx.recv() {
        Ok(Ok(info)) => Ok((work_tx, info)),
        Ok(Err(message)) => anyhow::bail!(message),
        Err(_) => anyhow::bail!("the model worker stopped while starting"),
    }
}

struct Worker {
    model: ModelArgs,
    dtype: Option<String>,
    outputs: PathBuf,
    table: Arc<JobTable>,
    work: mpsc::Receiver<Work>,
    ready: mpsc::Sender<Result<WorkerInfo, String>>,
}

impl BackendJob for Worker {
    type Output = ();

    fn run<B: Backend>(self, device: B::Device) {
        let generator = self.model.style_codes::<B>(self.dtype.as_deref(), device.clone());
        // Codes in f32 on every backend, as `stylecode encode` makes them.
        let encoder = (self.model.dtype(self.dtype.as_deref()) != DType::F32)
            .then(|| self.model.style_codes::<B>(Some("f32"), device));
        let encoder = encoder.as_ref().unwrap_or(&generator);
        let info = generator
            .version()
            .map(|version| WorkerInfo { version, stylecodes_dir: generator.weights().stylecodes_dir() })
            .map_err(|error| error.to_string());
        let started = info.is_ok();
        let _ = self.ready.send(info);
        if !started {
            return;
        }
        let session =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
        // Ends when the server drops its sender.
        for work in self.work.iter() {
            match work {
                Work::Encode { images, reply } => {
                    let result = catch_unwind(AssertUnwindSafe(|| encoder.encode(&images)))
                        .map_err(panic_message)
                        .and_then(|encoded| encoded.map_err(|e| e.to_string()));
                    let _ = reply.send(result);
                }
                Work::Generate(job) => {
                    self.table.taken();
                    let outcome = catch_unwind(AssertUnwindSafe(|| {
                        run_job(&generator, &job, &self.outputs, &format!("{session}-{}", job.id))
                    }));
                    job.update(|status| match outcome {
                        Ok(Ok(())) => status.state = JobState::Done,
                        Ok(Err(Error::Cancelled)) => status.state = JobState::Cancelled,
                        Ok(Err(error)) => {
                            status.state = JobState::Failed;
                            status.error = Some(error.to_string());
                        }
                        Err(panic) => {
                            status.state = JobState::Failed;
                            status.error = Some(panic_message(panic));
                        }
                    });
                }
            }
        }
    }
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    format!("the job panicked: {text}")
}

/// Makes the job's images one at a time, writing each as it is done.
fn run_job<B: Backend>(styles: &StyleCodes<B>, job: &Job, outputs: &Path, stem: &str) -> burn_stylecode::Result<()> {
    if job.cancel_requested() {
        return Err(Error::Cancelled);
    }
    job.update(|status| status.state = JobState::Running);
    for (index, one) in job.request.batches(1).enumerate() {
        let made = styles.generate(&one, |progress| {
            job.update(|status| {
                status.image = index;
                status.step = progress.step;
                status.steps = progress.steps;
            });
            if job.cancel_requested() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        for image in made {
            let name = write_output(outputs, &format!("stylecode-{stem}-{}", index + 1), &image)?;
            let recipe: serde_json::Map<String, serde_json::Value> =
                image.recipe.text_chunks().into_iter().map(|(key, value)| (key, value.into())).collect();
            job.update(|status| {
                status.images.push(name);
                status.recipes.push(recipe.into());
            });
        }
    }
    Ok(())
}

/// Writes `stem.png`, or `stem-2.png`… if taken: never over another file.
fn write_output(outputs: &Path, stem: &str, image: &GeneratedImage) -> burn_stylecode::Result<String> {
    let name = (1..)
        .map(|n| if n == 1 { format!("{stem}.png") } else { format!("{stem}-{n}.png") })
        .find(|name| !outputs.join(name).exists())
        .expect("an unbounded range");
    write_png(&outputs.join(&name), &image.image, &image.recipe.text_chunks(), false)?;
    Ok(name)
}
