//! The HuggingFace hub: what is cached, whether it can be reached, and
//! downloads (hf-hub: progress bar, resumable `.incomplete` files).

use anyhow::{Context, Result};
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Where hub files are cached and whether the hub may be used.
#[derive(Clone)]
pub struct HubEnv {
    pub cache: Cache,
    pub endpoint: String,
    /// `--offline` or `HF_HUB_OFFLINE=1`: never contact the hub.
    pub offline: bool,
}

impl HubEnv {
    pub fn from_env(offline_flag: bool) -> Self {
        let offline_env = std::env::var("HF_HUB_OFFLINE")
            .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"));
        let endpoint =
            std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()).unwrap_or_else(|| DEFAULT_ENDPOINT.into());
        Self { cache: Cache::from_env(), endpoint, offline: offline_flag || offline_env }
    }

    /// The cached copy of a repo's file, if any.
    pub fn cached(&self, repo: &str, file: &str) -> Option<PathBuf> {
        self.cache.repo(Repo::model(repo.to_string())).get(file)
    }

    pub fn url(&self, repo: &str, file: &str) -> String {
        format!("{}/{repo}/resolve/main/{file}", self.endpoint.trim_end_matches('/'))
    }

    /// Why the hub cannot be used now, if it cannot: checked before any
    /// download so that an offline run fails at once.
    pub fn unreachable(&self) -> Option<String> {
        if self.offline {
            return Some("offline mode (--offline or HF_HUB_OFFLINE)".into());
        }
        let rest = self.endpoint.split("://").nth(1).unwrap_or(&self.endpoint);
        let authority = rest.split('/').next().unwrap_or(rest);
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => (h.to_string(), p.parse().unwrap_or(443)),
            _ => (authority.to_string(), if self.endpoint.starts_with("http://") { 80 } else { 443 }),
        };
        let addrs = match (host.as_str(), port).to_socket_addrs() {
            Ok(addrs) => addrs.collect::<Vec<_>>(),
            Err(e) => return Some(format!("cannot resolve {host}: {e}")),
        };
        let Some(addr) = addrs.first() else { return Some(format!("{host} has no address")) };
        match TcpStream::connect_timeout(addr, Duration::from_secs(5)) {
            Ok(_) => None,
            Err(e) => Some(format!("cannot connect to {host}:{port}: {e}")),
        }
    }

    /// Fetches a file into the cache (or finds it there), with a progress bar.
    pub fn fetch(&self, repo: &str, file: &str) -> Result<PathBuf> {
        if let Some(path) = self.cached(repo, file) {
            return Ok(path);
        }
        let api = ApiBuilder::from_cache(self.cache.clone())
            .with_endpoint(self.endpoint.clone())
            .with_progress(true)
            .with_retries(3)
            .build()
            .context("setting up the HuggingFace hub client")?;
        api.model(repo.to_string()).get(file).with_context(|| format!("downloading {}", self.url(repo, file)))
    }
}
