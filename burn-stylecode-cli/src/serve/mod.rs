//! `stylecode serve`: the web page and HTTP API over one model worker.
//!
//! axum on tokio answers requests; one thread ([`worker`]) owns the loaded
//! [`burn_stylecode::StyleCodes`] handles and runs encodings and
//! generation jobs in arrival order. Routes are in [`routes`], the jobs and
//! their bounded queue in [`jobs`].

mod jobs;
mod routes;
mod worker;

use crate::ModelArgs;
use anyhow::{Context, Result};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// The largest request body by default: 20 MiB.
pub const DEFAULT_UPLOAD_LIMIT: usize = 20 << 20;

pub struct ServeConfig {
    pub bind: SocketAddr,
    pub model: ModelArgs,
    pub dtype: Option<String>,
    pub outputs: PathBuf,
    /// Generation jobs that may wait behind the running one.
    pub queue: usize,
    pub token: Option<String>,
    /// Largest request body, bytes.
    pub upload_limit: usize,
    /// The LoRA folder requests may pick from.
    pub loras: Option<PathBuf>,
    /// `--max-memory`, bytes.
    pub max_memory: Option<u64>,
}

/// Serves until Ctrl+C.
pub fn run(config: ServeConfig) -> Result<()> {
    std::fs::create_dir_all(&config.outputs)
        .with_context(|| format!("cannot create the outputs folder {}", config.outputs.display()))?;
    let table = Arc::new(jobs::JobTable::new(config.queue));
    let backend = format!("{:?}", config.model.backend).to_lowercase();
    let (work, info) =
        worker::start(config.model, config.dtype, config.max_memory, config.outputs.clone(), table.clone())?;
    let state = Arc::new(routes::AppState {
        work,
        table,
        info,
        backend,
        outputs: config.outputs,
        loopback_only: config.token.is_none() && config.bind.ip().is_loopback(),
        token: config.token,
        upload_limit: config.upload_limit,
        loras: config.loras,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.bind)
            .await
            .with_context(|| format!("cannot listen on {}", config.bind))?;
        let address = listener.local_addr()?;
        // The first line of stdout: scripts and tests read the address from it.
        let fragment = if state.token.is_some() { "#token=TOKEN" } else { "" };
        println!("stylecode serve: listening on http://{address}/{fragment}");
        std::io::stdout().flush()?;
        axum::serve(listener, routes::router(state))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .context("serving")
    })
}
