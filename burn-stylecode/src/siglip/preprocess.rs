//! Image loading and SigLIP preprocessing, as transformers'
//! `SiglipImageProcessor`: RGB, bicubic resize to the model size (no crop),
//! rescale by 1/255, normalise with mean 0.5 and std 0.5. Also the bilinear
//! resize of training targets: one Pillow resampler, two kernels.

use crate::decode;
use crate::error::{Error, Result};
use burn::prelude::*;
use image::RgbImage;
use std::path::Path;

/// Decodes an image file into 8-bit RGB as PIL's `convert("RGB")`, strictly:
/// a truncated file is an error ([`decode::decode_file`] for the options).
pub fn load_rgb(path: impl AsRef<Path>) -> Result<RgbImage> {
    Ok(decode::decode_file(path, &decode::DecodeOptions::default())?.image)
}

/// An image file's bytes (an upload, say) as RGB, strictly; errors name `path`.
pub fn decode_rgb(bytes: &[u8], path: &Path) -> Result<RgbImage> {
    let decoded = decode::decode_bytes(bytes, &decode::DecodeOptions::default())
        .map_err(|message| Error::Image { path: path.to_path_buf(), message })?;
    Ok(decoded.image)
}

/// A Pillow resampling filter: its support at scale 1 and its kernel.
struct Filter {
    support: f64,
    kernel: fn(f64) -> f64,
}

/// Pillow's `bilinear_filter`: a triangle of half-width 1.
fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

const BILINEAR: Filter = Filter { support: 1.0, kernel: triangle };

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

const BICUBIC: Filter = Filter { support: 2.0, kernel: bicubic };

/// Pillow's `lanczos_filter`: sinc(x)·sinc(x/3) on [-3, 3).
fn lanczos(x: f64) -> f64 {
    let sinc = |x: f64| {
        if x == 0.0 {
            1.0
        } else {
            let x = x * std::f64::consts::PI;
            x.sin() / x
        }
    };
    if (-3.0..3.0).contains(&x) {
        sinc(x) * sinc(x / 3.0)
    } else {
        0.0
    }
}

const LANCZOS: Filter = Filter { support: 3.0, kernel: lanczos };

/// Fixed-point precision of Pillow's 8-bit resampling coefficients.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`: for each output
/// index, the first input index and the 22-bit weights. Shrinking widens the
/// kernel by the scale (antialiasing).
fn coefficients(in_size: u32, out_size: u32, filter: &Filter) -> Vec<(usize, Vec<i32>)> {
    let scale = f64::from(in_size) / f64::from(out_size);
    let filter_scale = scale.max(1.0);
    let support = filter.support * filter_scale;
    let ss = 1.0 / filter_scale;
    let one = f64::from(1u32 << PRECISION_BITS);
    (0..out_size)
        .map(|i| {
            let center = (f64::from(i) + 0.5) * scale;
            // C's `(int)` truncates toward zero, then the clamps.
            let min = ((center - support + 0.5) as i64).max(0) as usize;
            let max = ((center + support + 0.5) as i64).min(i64::from(in_size)) as usize;
            let weights: Vec<f64> = (min..max).map(|j| (filter.kernel)((j as f64 - center + 0.5) * ss)).collect();
            let total: f64 = weights.iter().sum();
            let fixed = weights
                .iter()
                .map(|&w| {
                    let w = if total != 0.0 { w / total } else { w };
                    // Half away from zero, then truncation.
                    (if w < 0.0 { -0.5 + w * one } else { 0.5 + w * one }) as i32
                })
                .collect();
            (min, fixed)
        })
        .collect()
}

/// One separable pass along x (`horizontal`) or y, rounding to 8 bits as Pillow does.
fn resample_pass(image: &RgbImage, out_size: u32, horizontal: bool, filter: &Filter) -> RgbImage {
    let (w, h) = image.dimensions();
    let (out_w, out_h) = if horizontal { (out_size, h) } else { (w, out_size) };
    let coeffs = coefficients(if horizontal { w } else { h }, out_size, filter);
    let src = image.as_raw();
    let row = w as usize * 3;
    let half = 1i64 << (PRECISION_BITS - 1);
    let mut out = RgbImage::new(out_w, out_h);
    for (index, pixel) in out.pixels_mut().enumerate() {
        let (x, y) = (index % out_w as usize, index / out_w as usize);
        let ((start, weights), base, step) = match horizontal {
            true => (&coeffs[x], y * row, 3),
            false => (&coeffs[y], x * 3, row),
        };
        for c in 0..3 {
            let sum: i64 = weights
                .iter()
                .enumerate()
                .map(|(k, &wgt)| i64::from(wgt) * i64::from(src[base + (start + k) * step + c]))
                .sum();
            pixel.0[c] = ((sum + half) >> PRECISION_BITS).clamp(0, 255) as u8;
        }
    }
    out
}

/// Pillow's `Image.resize((width, height), filter)` on RGB, bit for bit,
/// each pass only where the size changes. The order of the passes matters
/// (each rounds to 8 bits): Pillow ≥ 13 (python-pillow/Pillow#9549) runs the
/// vertical pass first when the height shrinks by more than twice as many
/// pixels as the width, `in_h >= h && in_h - h > (in_w - w) * 2`, and the
/// horizontal pass first otherwise (older Pillow always horizontal first, so
/// tall images shrunk more in height differ from it by ±1 in some values).
fn resize(image: &RgbImage, width: u32, height: u32, filter: &Filter) -> RgbImage {
    let (in_w, in_h) = image.dimensions();
    let (dw, dh) = (i64::from(in_w) - i64::from(width), i64::from(in_h) - i64::from(height));
    let vertical_first = dh >= 0 && dh > dw * 2;
    let mut out = image.clone();
    for horizontal in if vertical_first { [false, true] } else { [true, false] } {
        out = match horizontal {
            true if width != in_w => resample_pass(&out, width, true, filter),
            false if height != in_h => resample_pass(&out, height, false, filter),
            _ => out,
        };
    }
    out
}

/// Pillow's `Image.resize(size, BICUBIC)`: SigLIP's preprocessing.
pub fn resize_bicubic(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    resize(image, width, height, &BICUBIC)
}

/// Pillow's `Image.resize(size, BILINEAR)`: torchvision's `Resize` on PIL
/// images, as diffusers' training scripts crop their targets.
pub fn resize_bilinear(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    resize(image, width, height, &BILINEAR)
}

/// Pillow's `Image.resize(size, LANCZOS)`: diffusers' `VaeImageProcessor`
/// (img2img's init image).
pub fn resize_lanczos(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    resize(image, width, height, &LANCZOS)
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
            for (start, weights) in coefficients(in_size, out_size, &BICUBIC) {
                let total: i32 = weights.iter().sum();
                assert!((total - (1 << PRECISION_BITS)).abs() <= weights.len() as i32, "{total}");
                assert!(start + weights.len() <= in_size as usize);
            }
        }
    }

    #[test]
    fn bilinear_weights_sum_to_one_and_stay_inside() {
        for (in_size, out_size) in [(200, 21), (9, 16), (7, 3), (5, 5)] {
            for (start, weights) in coefficients(in_size, out_size, &BILINEAR) {
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
