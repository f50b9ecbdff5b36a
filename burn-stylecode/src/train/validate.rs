//! Validation during training (`--validate-every N --validation FILE`):
//! images generated with the current weights from a fixed list of
//! {style image, prompt, seed}, written as a grid, and scored by how close
//! each image's style is to its style image.
//!
//! `FILE` is JSON Lines, paths relative to its folder:
//! `{"style": "styles/a.png", "prompt": "a lighthouse", "seed": 7}`.
//! The grid `RUN_DIR/validation/step-NNNNNN.png` has one row per line: the
//! style image (resized) and the generated image. The score is the mean
//! cosine similarity of SigLIP's pooled embeddings of the two.

use super::run::TrainConfig;
use super::step::Frozen;
use crate::error::{Error, Result};
use crate::sd::pipeline::Settings;
use crate::siglip::preprocess::{load_rgb, pixel_values, resize_bilinear};
use crate::style::autoencoder::quantize_dequantize;
use crate::style::{StyleCodesModel, StyleCondition};
use crate::weights::safetensors::write_atomic;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use image::RgbImage;
use serde::Deserialize;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

/// One validation line.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    style: PathBuf,
    prompt: String,
    #[serde(default)]
    seed: u64,
}

/// The opened validation list, its images decoded.
pub struct Validation {
    entries: Vec<(RgbImage, String, u64)>,
}

/// What one validation produced.
#[derive(Clone, Debug)]
pub struct ValidationReport {
    pub step: u64,
    pub grid: PathBuf,
    /// Mean SigLIP pooled cosine between each style image and its image.
    pub similarity: f64,
}

impl Validation {
    /// Reads `path`; errors name `path:line`.
    pub fn open<B: AutodiffBackend>(path: &Path, frozen: &Frozen<B>) -> Result<Self> {
        if frozen.siglip.head.is_none() {
            return Err(Error::Incompatible(
                "validation scores need SigLIP's pooling head, which these weights lack".into(),
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut entries = Vec::new();
        for (number, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let at = |message: String| Error::Config {
                path: PathBuf::from(format!("{}:{}", path.display(), number + 1)),
                message,
            };
            let parsed: Line = serde_json::from_str(line).map_err(|e| at(format!("not a validation entry: {e}")))?;
            let image = load_rgb(dir.join(&parsed.style)).map_err(|e| at(e.to_string()))?;
            entries.push((image, parsed.prompt, parsed.seed));
        }
        if entries.is_empty() {
            return Err(Error::Config {
                path: path.to_path_buf(),
                message: "the validation file has no entries".into(),
            });
        }
        Ok(Self { entries })
    }

    /// Generates with `model` (the current weights, off the tape), writes
    /// the grid and scores it.
    pub fn run<B: AutodiffBackend>(
        &self,
        model: &StyleCodesModel<B::InnerBackend>,
        frozen: &Frozen<B>,
        config: &TrainConfig,
        step: u64,
        run_dir: &Path,
    ) -> Result<ValidationReport> {
        let sd = &frozen.sd;
        let device = sd.device();
        let styles: Vec<RgbImage> = self.entries.iter().map(|(image, _, _)| image.clone()).collect();
        let pixels = pixel_values::<B::InnerBackend>(&styles, frozen.image_size(), device).cast(frozen.dtype());
        let latents = quantize_dequantize(model.autoencoder.encode(frozen.style_features(pixels.clone())));
        let side = config.resolution as usize;
        let settings = Settings {
            steps: config.validation_steps,
            guidance_scale: 3.0,
            width: side,
            height: side,
            ..Settings::default()
        };
        let condition = StyleCondition {
            autoencoder: &model.autoencoder,
            control: &model.control,
            latents,
            scale: config.style_scale,
        };
        let prompts: Vec<String> = self.entries.iter().map(|(_, prompt, _)| prompt.clone()).collect();
        let negatives = vec![String::new(); prompts.len()];
        let seeds: Vec<u64> = self.entries.iter().map(|(_, _, seed)| *seed).collect();
        let predict = condition.predictor(&sd.unet, sd.latent_size(&settings), settings.guided());
        let latents =
            sd.generate_latents(&prompts, &negatives, &seeds, &settings, predict, |_, _| ControlFlow::Continue(()))?;
        let images = sd.decode(latents)?;

        let similarity = self.similarity(frozen, pixels, &images)?;
        let grid = grid(&styles, &images, config.resolution);
        let dir = run_dir.join("validation");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let path = dir.join(format!("step-{step:06}.png"));
        let mut bytes = Vec::new();
        image::DynamicImage::ImageRgb8(grid)
            .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
            .map_err(|e| Error::Image { path: path.clone(), message: format!("cannot encode the grid: {e}") })?;
        write_atomic(&path, &bytes)?;
        Ok(ValidationReport { step, grid: path, similarity })
    }

    fn similarity<B: AutodiffBackend>(
        &self,
        frozen: &Frozen<B>,
        style_pixels: Tensor<B::InnerBackend, 4>,
        images: &[RgbImage],
    ) -> Result<f64> {
        let device = frozen.sd.device();
        let generated = pixel_values::<B::InnerBackend>(images, frozen.image_size(), device).cast(frozen.dtype());
        let pooled = |pixels| frozen.siglip.forward(pixels).pooled_output.expect("checked at open");
        let (a, b) = (pooled(style_pixels), pooled(generated));
        let dot = (a.clone() * b.clone()).sum_dim(1);
        let norms = (a.square().sum_dim(1) * b.square().sum_dim(1)).sqrt();
        let cosine = (dot / norms).mean();
        let value = cosine
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| Error::ReadBack { what: "the validation score", message: format!("{e:?}") })?;
        Ok(f64::from(value[0]))
    }
}

/// Rows of [style image, generated image], each `size` square.
fn grid(styles: &[RgbImage], images: &[RgbImage], size: u32) -> RgbImage {
    let mut grid = RgbImage::new(2 * size, size * styles.len() as u32);
    for (row, (style, image)) in styles.iter().zip(images).enumerate() {
        let y = row as u32 * size;
        image::imageops::replace(&mut grid, &resize_bilinear(style, size, size), 0, i64::from(y));
        image::imageops::replace(&mut grid, &resize_bilinear(image, size, size), i64::from(size), i64::from(y));
    }
    grid
}
