//! Building blocks shared by several networks.

pub mod attention;
pub mod linear;
pub mod norm;

pub use linear::linear_config;
pub use norm::{GroupNorm, GroupNormConfig, LayerNorm, LayerNormConfig};
