//! Everything StyleCodes-specific: the code format, the attention
//! autoencoder with its quantiser, the image → code encoder, the control
//! branch and its mixers, the stylecodes config and version, the style
//! condition of a generation, and the official checkpoint's key map.

pub mod autoencoder;
mod checkpoint;
pub mod code;
pub mod condition;
mod config;
pub mod control;
pub mod encoder;

pub(crate) use checkpoint::check_fits_base;
pub use checkpoint::{official_source, stylecodes_weights, StyleCodesModel};
pub use code::{CodeFormat, StyleCode, WeightedCode};
pub use condition::StyleCondition;
pub use config::StylecodesConfig;
pub(crate) use encoder::check_fits_siglip;
pub use encoder::{EncodedStyle, StyleEncoder};
