//! Training of the StyleCodes model (the style autoencoder and the control
//! branch), with PyTorch parity (issue 11; the run loop and the commands
//! are still to come).
//!
//! [`data`] reads a `manifest.jsonl` dataset, crops targets as diffusers'
//! scripts do, and orders and drops out samples reproducibly.
//! [`optim`] is the optimizer layer: AdamW, global-norm clipping, gradient
//! accumulation and learning-rate schedules exactly as PyTorch and diffusers
//! compute them, with a state keyed by parameter path so that a checkpoint
//! resumes into freshly loaded weights. [`step`] is the loss of one step:
//! frozen networks off the tape, the autoencoder and control branch on it.

pub mod cache;
pub mod checkpoint;
pub mod data;
pub mod optim;
pub mod run;
pub mod step;
pub mod validate;

pub use optim::{clip_grad_norm, AdamW, AdamWConfig, GradAccumulator, Grads, LrSchedule, OptimizerState, ParamState};
pub use run::{train, Event, Init, MixedPrecision, StepRecord, Summary, TrainConfig};
