//! Making an image again from its recipe: the request the recipe records,
//! with what it names (the models, the LoRAs, the init image) checked
//! against what is at hand.

use super::{pixels_sha256, GenerateRequest, GenerateSettings, ImageSpec, InitImage, Recipe, Style, StyleCodes};
use crate::error::{Error, Result};
use crate::sd::lora::LoraSpec;
use crate::style::StyleCode;
use burn::prelude::Backend;
use image::RgbImage;
use std::path::{Path, PathBuf};

/// A recipe's request, and how the inputs at hand differ from those it
/// recorded (each naming the model folder, the LoRA or the init image).
#[derive(Debug, Clone)]
pub struct Replay {
    pub request: GenerateRequest,
    /// Inputs whose hash is not the one recorded: the image will not be the same.
    pub differences: Vec<String>,
    /// What could not be checked (a recipe from before hashes were recorded).
    pub unchecked: Vec<String>,
}

/// The first 12 hex digits, enough to tell hashes apart in a message.
fn short(sha256: &str) -> &str {
    &sha256[..sha256.len().min(12)]
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

impl<B: Backend> StyleCodes<B> {
    /// The request that makes `recipe`'s image again with these weights.
    /// Recipes name LoRAs by file name: each is found among `loras` by its
    /// name. `init_image` is the picture an img2img recipe started from (its
    /// path for messages). A LoRA or init image the recipe needs and is not
    /// given, or one given that it does not use, is an error naming it; one
    /// whose hash differs is listed in [`Replay::differences`], as are model
    /// folders whose weights differ.
    pub fn replay(&self, recipe: &Recipe, loras: &[PathBuf], init_image: Option<(&Path, RgbImage)>) -> Result<Replay> {
        let mut differences = Vec::new();
        let mut unchecked = Vec::new();
        let mut compare = |what: String, recorded: Option<&String>, found: &str| match recorded {
            Some(recorded) if recorded != found => differences.push(format!(
                "{what} are not those recorded (sha256 {} here, {} recorded)",
                short(found),
                short(recorded)
            )),
            Some(_) => {}
            None => unchecked.push(format!("the recipe records no sha256 for {what}")),
        };
        compare(
            format!("the SD1.5 weights in {}", self.sd15_dir.display()),
            recipe.model_sha256.as_ref(),
            self.sd15_sha256()?,
        );
        if recipe.stylecode.is_some() {
            compare(
                format!("the StyleCodes weights in {}", self.weights.stylecodes_dir().display()),
                recipe.style_model_sha256.as_ref(),
                self.stylecodes_sha256()?,
            );
        }

        if let Some(extra) = loras.iter().find(|path| !recipe.loras.iter().any(|l| l.name == file_name(path))) {
            return Err(Error::InvalidRequest(format!(
                "the recipe uses no LoRA named `{}` (given as {})",
                file_name(extra),
                extra.display()
            )));
        }
        let mut specs = Vec::with_capacity(recipe.loras.len());
        for recorded in &recipe.loras {
            let path = loras.iter().find(|path| file_name(path) == recorded.name).ok_or_else(|| {
                Error::InvalidRequest(format!(
                    "the recipe uses the LoRA `{}` (sha256 {}), which was not given",
                    recorded.name,
                    short(&recorded.sha256)
                ))
            })?;
            let sha256 = crate::import::sha256_file(path).map_err(|e| Error::io(path, e))?;
            if sha256 != recorded.sha256 {
                differences.push(format!(
                    "the LoRA `{}` ({}) is not the one recorded (sha256 {} here, {} recorded)",
                    recorded.name,
                    path.display(),
                    short(&sha256),
                    short(&recorded.sha256)
                ));
            }
            specs.push(LoraSpec {
                path: path.clone(),
                unet_weight: recorded.unet_weight,
                text_encoder_weight: recorded.text_encoder_weight,
            });
        }

        let init_image = match (&recipe.init_image, init_image) {
            (None, None) => None,
            (None, Some((path, _))) => {
                return Err(Error::InvalidRequest(format!(
                    "the recipe starts from no init image, yet {} was given",
                    path.display()
                )))
            }
            (Some((sha256, _)), None) => {
                return Err(Error::InvalidRequest(format!(
                    "the recipe starts from an init image (pixels sha256 {}), which was not given",
                    short(sha256)
                )))
            }
            (Some((recorded, strength)), Some((path, image))) => {
                let found = pixels_sha256(&image);
                if &found != recorded {
                    differences.push(format!(
                        "the init image {} is not the one recorded (pixels sha256 {} here, {} recorded)",
                        path.display(),
                        short(&found),
                        short(recorded)
                    ));
                }
                Some(InitImage { image, strength: *strength })
            }
        };

        let style = match (&recipe.style_latent, &recipe.stylecode) {
            (Some(latent), _) => Style::Latent(*latent),
            (None, Some(code)) => {
                let code: StyleCode = code
                    .parse()
                    .map_err(|e| Error::InvalidRequest(format!("text chunk `stylecode` = {code:?}: {e}")))?;
                Style::Codes(vec![code.into()])
            }
            (None, None) => Style::None,
        };
        let defaults = GenerateSettings::default();
        let settings = GenerateSettings {
            steps: recipe.steps,
            guidance_scale: Some(recipe.guidance_scale),
            scheduler: recipe.scheduler,
            karras: recipe.karras,
            width: recipe.width,
            height: recipe.height,
            style_scale: recipe.style_scale.unwrap_or(defaults.style_scale),
            loras: specs,
            init_image,
        };
        settings.validate()?;
        let image = ImageSpec {
            prompt: recipe.prompt.clone(),
            negative: recipe.negative_prompt.clone(),
            seed: recipe.seed,
            style,
        };
        Ok(Replay { request: GenerateRequest { images: vec![image], settings }, differences, unchecked })
    }
}
