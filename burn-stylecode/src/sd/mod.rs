//! Stable Diffusion 1.5: CLIP text encoder and tokenizer, UNet, VAE,
//! schedulers, and the text-to-image pipeline. One file per concern; each
//! network's key map (`*_keys.rs`) sits beside it. Nothing here knows about
//! styles: the UNet exposes [`unet_hook::UNetHook`] for that.

pub mod attention;
pub mod clip;
pub(crate) mod clip_keys;
pub mod embeddings;
pub mod ldm_names;
pub mod lora;
pub mod pipeline;
pub mod preview;
pub mod resnet;
pub mod schedulers;
pub mod text_context;
pub mod tokenizer;
pub mod unet_2d;
pub mod unet_2d_blocks;
pub mod unet_hook;
pub(crate) mod unet_keys;
pub mod vae;
mod vae_keys;

pub(crate) use unet_keys::unet_key;
pub use unet_keys::{diffusers_weights, DIFFUSERS_WEIGHTS};
