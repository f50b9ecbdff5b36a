//! Building blocks shared by several networks.

pub mod attention;
pub mod linear;
pub mod norm;

pub use linear::{Linear, LinearConfig};
pub use norm::{GroupNorm, GroupNormConfig, LayerNorm, LayerNormConfig};
