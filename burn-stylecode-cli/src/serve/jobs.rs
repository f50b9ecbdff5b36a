//! Generation jobs: their state as the API reports it, and the bounded queue.

use burn_stylecode::GenerateRequest;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn name(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

/// What a job has done so far.
#[derive(Debug, Clone)]
pub struct JobStatus {
    pub state: JobState,
    /// Index of the image being made.
    pub image: usize,
    /// Denoising steps done of that image.
    pub step: usize,
    pub steps: usize,
    /// File names under the outputs folder, in order.
    pub images: Vec<String>,
    /// Each image's recipe as its PNG text chunks.
    pub recipes: Vec<serde_json::Value>,
    pub error: Option<String>,
    /// The latest preview of the image being made.
    pub preview: Option<Preview>,
}

/// A small look at an image mid-run (a cheap latent → RGB map).
#[derive(Debug, Clone, PartialEq)]
pub struct Preview {
    /// Index of the image, and the step it is from.
    pub image: usize,
    pub step: usize,
    /// A PNG data URL.
    pub url: String,
}

impl JobStatus {
    pub fn image_urls(&self) -> Vec<String> {
        self.images.iter().map(|name| format!("/api/images/{name}")).collect()
    }
}

pub struct Job {
    pub id: u64,
    pub request: GenerateRequest,
    cancel: AtomicBool,
    status: watch::Sender<JobStatus>,
}

impl Job {
    pub fn status(&self) -> JobStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every change from now on (and the current value).
    pub fn subscribe(&self) -> watch::Receiver<JobStatus> {
        self.status.subscribe()
    }

    pub fn update(&self, change: impl FnOnce(&mut JobStatus)) {
        self.status.send_modify(change);
    }

    /// Asks the worker to stop the job before its next step (or before it starts).
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    pub fn cancel_requested(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }
}

/// Every job of this session, and how many wait to run.
pub struct JobTable {
    jobs: Mutex<Tables>,
    next_id: AtomicU64,
    limit: usize,
}

struct Tables {
    by_id: HashMap<u64, Arc<Job>>,
    waiting: usize,
}

/// The queue holds `limit` jobs already.
pub struct QueueFull;

impl JobTable {
    pub fn new(limit: usize) -> Self {
        Self { jobs: Mutex::new(Tables { by_id: HashMap::new(), waiting: 0 }), next_id: AtomicU64::new(1), limit }
    }

    /// A new queued job, unless `limit` jobs wait already.
    pub fn submit(&self, request: GenerateRequest) -> Result<Arc<Job>, QueueFull> {
        let mut tables = self.jobs.lock().expect("job table lock");
        if tables.waiting >= self.limit {
            return Err(QueueFull);
        }
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let status = JobStatus {
            state: JobState::Queued,
            image: 0,
            step: 0,
            steps: request.settings.steps,
            images: Vec::new(),
            recipes: Vec::new(),
            error: None,
            preview: None,
        };
        let job = Arc::new(Job { id, request, cancel: AtomicBool::new(false), status: watch::Sender::new(status) });
        tables.by_id.insert(id, job.clone());
        tables.waiting += 1;
        Ok(job)
    }

    /// The worker took a job off the queue.
    pub fn taken(&self) {
        let mut tables = self.jobs.lock().expect("job table lock");
        tables.waiting = tables.waiting.saturating_sub(1);
    }

    pub fn get(&self, id: u64) -> Option<Arc<Job>> {
        self.jobs.lock().expect("job table lock").by_id.get(&id).cloned()
    }
}
