//! The one thread that owns the loaded models and runs the work in order.

use super::jobs::{Job, JobState, JobTable, Preview};
use crate::backend::{dispatch, Job as BackendJob};
use crate::ModelArgs;
use burn::prelude::Backend;
use burn::tensor::DType;
use burn_stylecode::pipeline::memory::MemoryCheck;
use burn_stylecode::{write_png, EncodedStyle, Error, GeneratedImage, Progress, StyleCodes};
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
    /// The generator's memory check, for requests before they are queued.
    pub memory: MemoryCheck,
}

/// A test-only fault point: a job whose first prompt is this variable's
/// value (read once, when the worker starts) panics, as a bug would.
pub const PANIC_PROMPT_ENV: &str = "STYLECODE_SERVE_PANIC_PROMPT";

/// Previews: after every `PREVIEW_EVERY` steps and the last, at most `PREVIEW_SIDE` pixels a side.
const PREVIEW_EVERY: usize = 2;
const PREVIEW_SIDE: u32 = 64;

/// Starts the worker; returns once the weights' config is read (or failed to be).
pub fn start(
    model: ModelArgs,
    dtype: Option<String>,
    max_memory: Option<u64>,
    outputs: PathBuf,
    table: Arc<JobTable>,
) -> anyhow::Result<(mpsc::Sender<Work>, WorkerInfo)> {
    let (work_tx, work_rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    let kind = model.backend;
    let worker = Worker { model, dtype, max_memory, outputs, table, work: work_rx, ready: ready_tx.clone() };
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
    max_memory: Option<u64>,
    outputs: PathBuf,
    table: Arc<JobTable>,
    work: mpsc::Receiver<Work>,
    ready: mpsc::Sender<Result<WorkerInfo, String>>,
}

impl BackendJob for Worker {
    type Output = ();

    fn run<B: Backend>(self, device: B::Device) {
        let generator =
            self.model.style_codes::<B>(self.dtype.as_deref(), device.clone()).with_max_memory(self.max_memory);
        let panic_prompt = std::env::var(PANIC_PROMPT_ENV).ok();
        // Codes in f32 on every backend, as `stylecode encode` makes them.
        let encoder = (self.model.dtype(self.dtype.as_deref()) != DType::F32)
            .then(|| self.model.style_codes::<B>(Some("f32"), device));
        let encoder = encoder.as_ref().unwrap_or(&generator);
        let info = generator
            .version()
            .map(|version| WorkerInfo {
                version,
                stylecodes_dir: generator.weights().stylecodes_dir(),
                memory: generator.memory_check(),
            })
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
                        if panic_prompt.is_some()
                            && job.request.images.first().map(|i| &i.prompt) == panic_prompt.as_ref()
                        {
                            panic!("{PANIC_PROMPT_ENV} fault point");
                        }
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
            let preview = wants_preview(&progress).then(|| preview_url(&progress)).flatten();
            job.update(|status| {
                status.image = index;
                status.step = progress.step;
                status.steps = progress.steps;
                if let Some(url) = preview {
                    status.preview = Some(Preview { image: index, step: progress.step, url });
                }
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

fn wants_preview(progress: &Progress) -> bool {
    progress.step.is_multiple_of(PREVIEW_EVERY) || progress.step == progress.steps
}

/// The first image of the batch as it stands, as a PNG data URL; none if
/// it cannot be made (a preview is not worth failing the job for).
fn preview_url(progress: &Progress) -> Option<String> {
    use base64::Engine;
    let image = progress.preview(PREVIEW_SIDE).ok()?.into_iter().next()?;
    let mut png = std::io::Cursor::new(Vec::new());
    image.write_to(&mut png, image::ImageFormat::Png).ok()?;
    Some(format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(png.into_inner())))
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
