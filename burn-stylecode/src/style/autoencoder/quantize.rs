//! The 6-bit quantisation of the latent, as tensors.

use crate::style::code::{MAX_VALUE, SNAP};
use burn::prelude::*;

/// `floor(clip((x+1)*63/2, 0, 63)) * 2/63 - 1`: the latent a code decodes
/// to; the same arithmetic as [`crate::style::code::quantize`].
pub fn quantize_dequantize<B: Backend, const D: usize>(latent: Tensor<B, D>) -> Tensor<B, D> {
    let max = f32::from(MAX_VALUE);
    ((latent + 1.0) * (max / 2.0) + SNAP).clamp(0.0, max).floor() * (2.0 / max) - 1.0
}

/// Straight-through estimator: the forward value is the quantised latent,
/// the gradient is the identity. Training uses it in place of the paper's
/// skipped quantisation, so that training sees what inference decodes.
pub fn straight_through<B: Backend, const D: usize>(latent: Tensor<B, D>) -> Tensor<B, D> {
    let offset = (quantize_dequantize(latent.clone()) - latent.clone()).detach();
    latent + offset
}
