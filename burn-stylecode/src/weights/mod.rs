//! The loading engine, and nothing model-specific: memory-mapped
//! safetensors files ([`TensorFile`]), the key-map machinery that loads a
//! burn module strictly from upstream names ([`KeyMap`], [`load_module`]),
//! the same maps read as tables of expected tensors ([`expected_tensors`]),
//! and the one way JSON configs are read ([`JsonConfig`]).
//!
//! Each network's own key map lives beside it (`sd/unet_keys.rs`,
//! `siglip/keys.rs`, `style/checkpoint.rs`, …).

mod config;
mod load;
pub mod safetensors;

pub use config::JsonConfig;
pub use load::{
    expected_tensors, find_prefix, load_module, norm_names, packed_projection, param_values, ExpectedTensor, KeyMap,
    Source,
};
pub use safetensors::{TensorFile, TensorPatch};
