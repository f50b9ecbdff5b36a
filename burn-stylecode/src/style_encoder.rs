//! Image → stylecode: SigLIP features, then the autoencoder's encoder.

use crate::autoencoder::AttentionAutoencoder;
use crate::code::{StyleCode, CODE_LEN};
use crate::error::{Error, Result};
use crate::preprocess::pixel_values;
use crate::siglip::SiglipVisionTransformer;
use crate::weights::loader::{load_autoencoder, load_siglip};
use crate::weights::safetensors::TensorFile;
use crate::weights::WeightsDir;
use burn::prelude::*;
use burn::tensor::DType;
use image::RgbImage;

/// One image's style.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedStyle {
    /// The latent before quantisation.
    pub latent: [f32; CODE_LEN],
    pub code: StyleCode,
}

/// The networks that turn an image into a stylecode.
#[derive(Debug)]
pub struct StyleEncoder<B: Backend> {
    pub siglip: SiglipVisionTransformer<B>,
    pub autoencoder: AttentionAutoencoder<B>,
    /// Side of the square the images are resized to.
    pub image_size: u32,
    /// Version character of the loaded weights.
    pub version: char,
}

impl<B: Backend> StyleEncoder<B> {
    /// Loads SigLIP and the autoencoder from a weights folder. Reads only
    /// their tensors, so a stylecodes file without the control module works.
    pub fn load(weights: &WeightsDir, dtype: DType, device: &B::Device) -> Result<Self> {
        let siglip_config = weights.siglip_config()?;
        let siglip = load_siglip(&siglip_config, &TensorFile::open(weights.siglip_weights()?)?, dtype, device)?;
        let config = weights.stylecodes_config()?;
        let file = TensorFile::open(weights.stylecodes_weights()?)?;
        let autoencoder = load_autoencoder(&config.autoencoder, &file, dtype, device)?;
        if config.autoencoder.input_dim != siglip_config.hidden_size {
            return Err(Error::Other(format!(
                "the autoencoder reads {}-dim features but SigLIP makes {}-dim ones",
                config.autoencoder.input_dim, siglip_config.hidden_size
            )));
        }
        Ok(Self { siglip, autoencoder, image_size: siglip_config.image_size as u32, version: config.version })
    }

    /// Normalised pixels [B, 3, S, S] (any float dtype) → latent [B, 20] in the model's dtype.
    pub fn latent(&self, pixel_values: Tensor<B, 4>) -> Tensor<B, 2> {
        let pixel_values = pixel_values.cast(self.autoencoder.tgt_init.val().dtype());
        self.autoencoder.encode(self.siglip.penultimate(pixel_values))
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
            .map_err(|e| Error::Other(format!("reading the latent back: {e:?}")))?;
        values
            .chunks_exact(CODE_LEN)
            .map(|chunk| {
                let latent: [f32; CODE_LEN] = chunk.try_into().expect("chunks of CODE_LEN");
                Ok(EncodedStyle { latent, code: StyleCode::from_latent(&latent, self.version)? })
            })
            .collect()
    }
}
