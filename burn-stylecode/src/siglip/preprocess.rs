//! Image loading and SigLIP preprocessing, as transformers'
//! `SiglipImageProcessor`: RGB, bicubic resize to the model size (no crop),
//! rescale by 1/255, normalise with mean 0.5 and std 0.5.

use crate::error::{Error, Result};
use burn::prelude::*;
use image::RgbImage;
use std::path::Path;

/// Decodes an image file into 8-bit RGB (alpha dropped, as PIL's `convert("RGB")`).
pub fn load_rgb(path: impl AsRef<Path>) -> Result<RgbImage> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let image = image::load_from_memory(&bytes)
        .map_err(|e| Error::Image { path: path.to_path_buf(), message: format!("cannot decode image: {e}") })?;
    Ok(image.to_rgb8())
}

/// Pillow's bicubic resize (`Image.resize(size, BICUBIC)`), bit for bit:
/// separable, with the kernel widened by the scale factor when shrinking
/// (antialiasing), horizontal pass first, and Pillow's 8-bit fixed-point
/// arithmetic (22-bit coefficients, rounding to 8 bits after each pass).
pub fn resize_bicubic(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (in_w, in_h) = image.dimensions();
    let mut out = image.clone();
    if width != in_w {
        out = resample_pass(&out, width, Axis::Horizontal);
    }
    if height != in_h {
        out = resample_pass(&out, height, Axis::Vertical);
    }
    out
}

#[derive(Clone, Copy)]
enum Axis {
    Horizontal,
    Vertical,
}

/// Keys' cubic convolution with a = -0.5, Pillow's `bicubic_filter`.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Fixed-point precision of Pillow's 8-bit resampling coefficients.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// For each output index: the first input index and the fixed-point weights.
fn coefficients(in_size: u32, out_size: u32) -> Vec<(usize, Vec<i32>)> {
    let scale = f64::from(in_size) / f64::from(out_size);
    let filter_scale = scale.max(1.0);
    let support = 2.0 * filter_scale;
    (0..out_size)
        .map(|i| {
            let center = (f64::from(i) + 0.5) * scale;
            let min = ((center - support + 0.5).floor().max(0.0)) as usize;
            let max = ((center + support + 0.5).floor() as usize).min(in_size as usize);
            let weights: Vec<f64> = (min..max).map(|j| bicubic((j as f64 - center + 0.5) / filter_scale)).collect();
            let total: f64 = weights.iter().sum();
            let one = f64::from(1u32 << PRECISION_BITS);
            let fixed = weights
                .iter()
                .map(|w| {
                    let w = if total != 0.0 { w / total } else { *w };
                    // Pillow rounds half away from zero, then truncates.
                    (if w < 0.0 { w * one - 0.5 } else { w * one + 0.5 }).trunc() as i32
                })
                .collect();
            (min, fixed)
        })
        .collect()
}

fn resample_pass(image: &RgbImage, out_size: u32, axis: Axis) -> RgbImage {
    let (w, h) = image.dimensions();
    let (out_w, out_h, in_size) = match axis {
        Axis::Horizontal => (out_size, h, w),
        Axis::Vertical => (w, out_size, h),
    };
    let coeffs = coefficients(in_size, out_size);
    let src = image.as_raw();
    let mut out = RgbImage::new(out_w, out_h);
    let dst: &mut [u8] = &mut out;
    let half = 1i64 << (PRECISION_BITS - 1);
    for y in 0..out_h as usize {
        for x in 0..out_w as usize {
            let (start, weights, step, base) = match axis {
                Axis::Horizontal => {
                    let (start, weights) = &coeffs[x];
                    (*start, weights, 3, y * w as usize * 3)
                }
                Axis::Vertical => {
                    let (start, weights) = &coeffs[y];
                    (*start, weights, w as usize * 3, x * 3)
                }
            };
            for c in 0..3 {
                let sum: i64 = weights
                    .iter()
                    .enumerate()
                    .map(|(k, &wgt)| i64::from(wgt) * i64::from(src[base + (start + k) * step + c]))
                    .sum();
                dst[(y * out_w as usize + x) * 3 + c] = ((sum + half) >> PRECISION_BITS).clamp(0, 255) as u8;
            }
        }
    }
    out
}

/// Resizes each image to `size`×`size` and stacks them as normalised
/// `pixel_values` [B, 3, size, size] in `[-1, 1]`.
pub fn pixel_values<B: Backend>(images: &[RgbImage], size: u32, device: &B::Device) -> Tensor<B, 4> {
    let plane = (size * size) as usize;
    let mut values = Vec::with_capacity(images.len() * 3 * plane);
    for image in images {
        let resized = resize_bicubic(image, size, size);
        for c in 0..3 {
            values.extend(resized.pixels().map(|p| (f32::from(p.0[c]) / 255.0 - 0.5) / 0.5));
        }
    }
    let size = size as usize;
    Tensor::from_data(TensorData::new(values, [images.len(), 3, size, size]), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_and_cover_support() {
        for (in_size, out_size) in [(320, 224), (150, 224), (7, 3)] {
            for (start, weights) in coefficients(in_size, out_size) {
                let total: i32 = weights.iter().sum();
                assert!((total - (1 << PRECISION_BITS)).abs() <= weights.len() as i32, "{total}");
                assert!(start + weights.len() <= in_size as usize);
            }
        }
    }

    #[test]
    fn resizing_a_flat_image_keeps_it_flat() {
        let image = RgbImage::from_pixel(37, 23, image::Rgb([10, 128, 250]));
        let out = resize_bicubic(&image, 16, 40);
        assert_eq!(out.dimensions(), (16, 40));
        assert!(out.pixels().all(|p| p.0 == [10, 128, 250]));
    }
}
