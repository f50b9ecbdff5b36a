//! Stable Diffusion 1.5: CLIP text encoder and tokenizer, UNet, VAE,
//! schedulers, and the text-to-image pipeline. One file per concern.

pub mod attention;
pub mod clip;
pub mod embeddings;
pub mod pipeline;
pub mod resnet;
pub mod schedulers;
pub mod tokenizer;
pub mod unet_2d;
pub mod unet_2d_blocks;
pub mod vae;
