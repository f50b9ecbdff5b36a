//! The one place a concrete burn backend is chosen.

use anyhow::{bail, Result};
use burn::prelude::Backend;
use clap::ValueEnum;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// burn-flex on the CPU (always built).
    Cpu,
    /// wgpu: Vulkan, Metal or DX12 (cargo feature `wgpu`).
    Wgpu,
    /// CUDA (cargo feature `cuda`).
    Cuda,
}

/// Work that runs on whichever backend the user picked.
pub trait Job {
    type Output;
    fn run<B: Backend>(self, device: B::Device) -> Self::Output;
}

pub fn dispatch<J: Job>(kind: BackendKind, job: J) -> Result<J::Output> {
    match kind {
        BackendKind::Cpu => Ok(job.run::<burn::backend::Flex>(Default::default())),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => Ok(job.run::<burn::backend::Wgpu>(Default::default())),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => Ok(job.run::<burn::backend::Cuda>(Default::default())),
        #[allow(unreachable_patterns)]
        other => {
            let feature = format!("{other:?}").to_lowercase();
            bail!(
                "this `stylecode` was built without the {feature} backend; rebuild it with \
                 `cargo build --release -p burn-stylecode-cli --features {feature}`"
            )
        }
    }
}
