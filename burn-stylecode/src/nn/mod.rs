//! Building blocks shared by several networks.

pub mod attention;
pub mod linear;

pub use linear::linear_config;
