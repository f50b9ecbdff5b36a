//! Training of the StyleCodes model (the style autoencoder and the control
//! branch) on a frozen SD1.5, with PyTorch parity: [`train`] runs it
//! (`stylecode train`), [`checkpoint::export`] writes the result into a
//! weights folder (`stylecode export`).
//!
//! [`data`] reads a `manifest.jsonl` dataset, crops targets as diffusers'
//! scripts do, and orders and drops out samples reproducibly.
//! [`optim`] is the optimizer layer: AdamW, global-norm clipping, gradient
//! accumulation and learning-rate schedules exactly as PyTorch and diffusers
//! compute them, with a state keyed by parameter path so that a checkpoint
//! resumes into freshly loaded weights. [`step`] is the loss of one step:
//! frozen networks off the tape, the autoencoder and control branch on it.
//! [`cache`] computes the frozen encoders' outputs once; [`memory`] refuses
//! a run too large for the machine before anything loads; [`run`] is the loop
//! with checkpoints ([`checkpoint`]) and validation ([`validate`]).

pub mod cache;
pub mod checkpoint;
pub mod data;
pub mod memory;
pub mod optim;
pub mod run;
pub mod step;
pub mod validate;

pub use optim::{clip_grad_norm, AdamW, AdamWConfig, GradAccumulator, Grads, LrSchedule, OptimizerState, ParamState};
pub use run::{train, Event, Init, MixedPrecision, StepRecord, Summary, TrainConfig};
