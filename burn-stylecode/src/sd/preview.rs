//! A cheap look at the diffusion latents mid-run, without the VAE: a fixed
//! linear map from SD1.5's 4 latent channels to RGB (the factors of
//! AUTOMATIC1111's "Approx cheap" preview and ComfyUI's SD1.5 previews).

use crate::error::{Error, Result};
use burn::prelude::*;
use image::imageops::{resize, FilterType};
use image::RgbImage;

/// RGB contribution of each latent channel; `(rgb + 1) / 2` is then the colour.
const LATENT_RGB: [[f32; 3]; 4] =
    [[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350], [-0.2829, 0.1762, 0.2721], [-0.2120, -0.2616, -0.7177]];

/// The side lengths of a `width`×`height` latent shrunk to fit `max_side`
/// (never enlarged, at least 1).
pub fn preview_size(width: usize, height: usize, max_side: u32) -> (u32, u32) {
    let scale = (f64::from(max_side) / width.max(height).max(1) as f64).min(1.0);
    let side = |n: usize| ((n as f64 * scale).round() as u32).max(1);
    (side(width), side(height))
}

/// One small RGB image per latent of `latents` [B, C, h, w], at most
/// `max_side` pixels a side. Latents with other than 4 channels use the
/// factors of those they have.
pub fn latent_preview<B: Backend>(latents: &Tensor<B, 4>, max_side: u32) -> Result<Vec<RgbImage>> {
    let [batch, channels, height, width] = latents.dims();
    let values = latents
        .clone()
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| Error::ReadBack { what: "the latents", message: format!("{e:?}") })?;
    let plane = height * width;
    let (out_width, out_height) = preview_size(width, height, max_side);
    Ok((0..batch)
        .map(|b| {
            let latent = &values[b * channels * plane..(b + 1) * channels * plane];
            let mut pixels = Vec::with_capacity(plane * 3);
            for p in 0..plane {
                let mut rgb = [0f32; 3];
                for (c, factors) in LATENT_RGB.iter().enumerate().take(channels) {
                    for (value, factor) in rgb.iter_mut().zip(factors) {
                        *value += latent[c * plane + p] * factor;
                    }
                }
                pixels.extend(rgb.map(|v| (((v + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0).round() as u8));
            }
            let full = RgbImage::from_raw(width as u32, height as u32, pixels).expect("buffer matches size");
            if (out_width, out_height) == full.dimensions() {
                full
            } else {
                resize(&full, out_width, out_height, FilterType::Triangle)
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preview_is_the_linear_map_and_fits_the_side() {
        assert_eq!(preview_size(128, 96, 64), (64, 48));
        assert_eq!(preview_size(24, 16, 64), (24, 16));
        assert_eq!(preview_size(1000, 1, 64), (64, 1));
        let device = Default::default();
        // One latent pixel of channel values (1, 0, 0, 0), one of zeros.
        let data = TensorData::new(vec![1.0f32, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [1, 4, 1, 2]);
        let latents = Tensor::<burn::backend::Flex, 4>::from_data(data, &device);
        let image = latent_preview(&latents, 64).unwrap().remove(0);
        assert_eq!(image.dimensions(), (2, 1));
        let expected = LATENT_RGB[0].map(|f| (((f + 1.0) / 2.0) * 255.0).round() as u8);
        assert_eq!(image.get_pixel(0, 0).0, expected);
        assert_eq!(image.get_pixel(1, 0).0, [128, 128, 128]);
    }
}
