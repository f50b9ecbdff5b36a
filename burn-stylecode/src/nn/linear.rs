//! The one way this crate builds a `Linear`.
//!
//! Every checkpoint we load is PyTorch's, which stores a linear weight as
//! `[out, in]`. burn's [`LinearLayout::Col`] keeps that layout and presents
//! the parameter as its `[in, out]` transpose (a strided view, which the
//! matmuls of every backend read without copying). So weights load as they
//! are stored, with no transpose at load time, and a weight already in the
//! dtype asked for can stay in the memory-mapped file.

use burn::nn::{LinearConfig, LinearLayout};

/// `LinearConfig::new(d_input, d_output)` with PyTorch's `[out, in]` weight layout.
pub fn linear_config(d_input: usize, d_output: usize) -> LinearConfig {
    LinearConfig::new(d_input, d_output).with_layout(LinearLayout::Col)
}
