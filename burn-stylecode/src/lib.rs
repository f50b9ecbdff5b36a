//! StyleCodes on burn: an image's style as a 21-character code, and Stable
//! Diffusion 1.5 generation conditioned on such a code.
//!
//! Every network is generic over a burn [`Backend`](burn::prelude::Backend):
//! the same code trains with `Autodiff<Cuda>`, runs inference on CUDA or
//! wgpu, and tests on the CPU (burn-flex).

pub mod autoencoder;
pub mod code;
pub mod error;
pub mod import;
pub mod nn;
pub mod png_text;
pub mod preprocess;
pub mod sd;
pub mod siglip;
pub mod style_control;
pub mod style_encoder;
pub mod weights;

pub use code::{CodeFormat, StyleCode, WeightedCode};
pub use error::{Error, Result};
pub use style_encoder::{EncodedStyle, StyleEncoder};
pub use weights::WeightsDir;
