//! StyleCodes on burn: an image's style as a 21-character code, and Stable
//! Diffusion 1.5 generation conditioned on such a code.
//!
//! Every network is generic over a burn [`Backend`](burn::prelude::Backend):
//! the same code trains with `Autodiff<Cuda>`, runs inference on CUDA or
//! wgpu, and tests on the CPU (burn-flex).
//!
//! The layers point one way (ARCHITECTURE.md): [`nn`] ← [`weights`] ← the
//! networks ([`siglip`], [`sd`], [`style`]) ← the handle ([`pipeline`]) and
//! the weight import ([`import`]). [`error`] is shared by all.
//!
//! README.md has a ten-line example of the handle, [`StyleCodes`]; it
//! is compiled as a doc test.

/// README.md's Rust examples, compiled and checked by `cargo test`.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeExamples;

pub mod decode;
pub mod error;
pub mod import;
pub mod nn;
pub mod pipeline;
pub mod sd;
pub mod siglip;
pub mod style;
pub mod train;
pub mod weights;

pub use error::{Error, Result};
pub use pipeline::{
    read_png_text, read_png_text_bytes, write_png, GenerateRequest, GenerateSettings, GeneratedImage, ImageSpec,
    InitImage, Progress, Recipe, Style, StyleCodes, WeightsDir,
};
pub use sd::lora::LoraSpec;
pub use style::{CodeFormat, EncodedStyle, StyleCode, WeightedCode};
