//! Image → stylecode: SigLIP's penultimate features, then the autoencoder's
//! encoder.

use super::autoencoder::{AttentionAutoencoder, AutoencoderConfig};
use super::code::{StyleCode, CODE_LEN};
use crate::error::{Error, Result};
use crate::nn::on_workers;
use crate::siglip::preprocess::pixel_values;
use crate::siglip::{SiglipVisionConfig, SiglipVisionTransformer};
use burn::prelude::*;
use image::RgbImage;

/// One image's style.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedStyle {
    /// The latent before quantisation.
    pub latent: [f32; CODE_LEN],
    pub code: StyleCode,
}

/// The networks that turn an image into a stylecode, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct StyleEncoder<'a, B: Backend> {
    pub siglip: &'a SiglipVisionTransformer<B>,
    pub autoencoder: &'a AttentionAutoencoder<B>,
    /// Side of the square the images are resized to.
    pub image_size: u32,
    /// Version character of the loaded weights.
    pub version: char,
}

/// The autoencoder reads SigLIP's features.
pub(crate) fn check_fits_siglip(autoencoder: &AutoencoderConfig, siglip: &SiglipVisionConfig) -> Result<()> {
    if autoencoder.input_dim != siglip.hidden_size {
        return Err(Error::Incompatible(format!(
            "the autoencoder reads {}-dim features but SigLIP makes {}-dim ones",
            autoencoder.input_dim, siglip.hidden_size
        )));
    }
    Ok(())
}

impl<B: Backend> StyleEncoder<'_, B> {
    /// Normalised pixels [B, 3, S, S] (any float dtype) → latent [B, 20] in the model's dtype.
    pub fn latent(&self, pixel_values: Tensor<B, 4>) -> Tensor<B, 2> {
        on_workers::<B, _>(|| {
            let pixel_values = pixel_values.cast(self.autoencoder.tgt_init.val().dtype());
            self.autoencoder.encode(self.siglip.penultimate(pixel_values))
        })
    }

    /// Encodes a batch of images.
    pub fn encode(&self, images: &[RgbImage]) -> Result<Vec<EncodedStyle>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let device = self.autoencoder.tgt_init.device();
        let latent = self.latent(pixel_values::<B>(images, self.image_size, &device));
        let values = latent
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| Error::ReadBack { what: "the style latent", message: format!("{e:?}") })?;
        values
            .chunks_exact(CODE_LEN)
            .map(|chunk| {
                let latent: [f32; CODE_LEN] = chunk.try_into().expect("chunks of CODE_LEN");
                Ok(EncodedStyle { latent, code: StyleCode::from_latent(&latent, self.version)? })
            })
            .collect()
    }
}
