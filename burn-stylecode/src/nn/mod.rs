//! Building blocks shared by several networks.

pub mod activation;
pub mod attention;
pub mod dtype;
pub mod layout;
pub mod linear;
pub mod norm;

pub use activation::gelu;
pub use dtype::in_dtype;
pub use layout::{image_to_tokens, swap_dims_1_2, tokens_to_image};
pub use linear::{Linear, LinearConfig};
pub use norm::{GroupNorm, GroupNormConfig, LayerNorm, LayerNormConfig};
