//! How an image was made, as the PNG text chunks `generate` writes.

use crate::error::{Error, Result};
use crate::sd::schedulers::SchedulerKind;
use crate::style::code::CODE_LEN;

/// Everything needed to make an image again.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipe {
    pub prompt: String,
    pub negative_prompt: String,
    pub seed: u64,
    pub steps: usize,
    pub scheduler: SchedulerKind,
    pub karras: bool,
    pub guidance_scale: f64,
    pub width: usize,
    pub height: usize,
    /// The code of the style (a blend's nearest code), if any.
    pub stylecode: Option<String>,
    pub style_scale: Option<f64>,
    /// The style's latent when it is not the code's own (a blend, an exact
    /// latent): the code alone would not make the same image again.
    pub style_latent: Option<[f32; CODE_LEN]>,
    /// sha256 of the SD1.5 weights (see [`super::StyleCodes::sd15_sha256`]).
    pub model_sha256: Option<String>,
    /// With a style: sha256 of the StyleCodes weights (see [`super::StyleCodes::stylecodes_sha256`]).
    pub style_model_sha256: Option<String>,
    /// The LoRAs merged, in order.
    pub loras: Vec<RecipeLora>,
    /// img2img: sha256 of the init image's RGB pixels, and the strength.
    pub init_image: Option<(String, f64)>,
    /// The backend (`cpu`, `wgpu`, `cuda`) and the weights' dtype (`f32`, `f16`).
    pub backend: Option<String>,
    pub dtype: Option<String>,
}

/// One LoRA of a recipe: its file name, weights and sha256.
#[derive(Debug, Clone, PartialEq)]
pub struct RecipeLora {
    pub name: String,
    pub unet_weight: f32,
    pub text_encoder_weight: f32,
    pub sha256: String,
}

impl RecipeLora {
    /// `name:unet_weight:text_encoder_weight:sha256`, one line of the `loras` chunk.
    fn line(&self) -> String {
        format!("{}:{}:{}:{}", self.name, self.unet_weight, self.text_encoder_weight, self.sha256)
    }

    fn parse(line: &str) -> Result<Self> {
        let bad = || Error::InvalidRequest(format!("text chunk `loras`: line {line:?} is not NAME:W:TE_W:SHA256"));
        let mut parts = line.rsplitn(4, ':');
        let (sha256, te, unet, name) = (parts.next(), parts.next(), parts.next(), parts.next());
        let (Some(sha256), Some(te), Some(unet), Some(name)) = (sha256, te, unet, name) else { return Err(bad()) };
        Ok(Self {
            name: name.to_string(),
            unet_weight: unet.parse().map_err(|_| bad())?,
            text_encoder_weight: te.parse().map_err(|_| bad())?,
            sha256: sha256.to_string(),
        })
    }
}

impl Recipe {
    /// The PNG text chunks: `prompt`, `negative_prompt`, `seed`, `steps`,
    /// `scheduler`, `guidance_scale`, `width`, `height`, then `karras` (when
    /// on), `stylecode`, `style_scale`, `style_latent` (20 comma-separated
    /// values, when not the code's) and `style_model_sha256` (when styled), `model_sha256`,
    /// `loras` (one `NAME:W:TE_W:SHA256` line each), `init_image_sha256` and
    /// `strength` (img2img), `backend`, `dtype`, and last the A1111-style
    /// `parameters`.
    pub fn text_chunks(&self) -> Vec<(String, String)> {
        let mut text = vec![
            ("prompt", self.prompt.clone()),
            ("negative_prompt", self.negative_prompt.clone()),
            ("seed", self.seed.to_string()),
            ("steps", self.steps.to_string()),
            ("scheduler", self.scheduler.to_string()),
            ("guidance_scale", self.guidance_scale.to_string()),
            ("width", self.width.to_string()),
            ("height", self.height.to_string()),
        ];
        if self.karras {
            text.push(("karras", "true".into()));
        }
        if let Some(code) = &self.stylecode {
            text.push(("stylecode", code.clone()));
        }
        if let Some(scale) = self.style_scale {
            text.push(("style_scale", scale.to_string()));
        }
        if let Some(latent) = &self.style_latent {
            text.push(("style_latent", latent.map(|x| x.to_string()).join(",")));
        }
        if let Some(sha256) = &self.style_model_sha256 {
            text.push(("style_model_sha256", sha256.clone()));
        }
        if let Some(sha256) = &self.model_sha256 {
            text.push(("model_sha256", sha256.clone()));
        }
        if !self.loras.is_empty() {
            text.push(("loras", self.loras.iter().map(RecipeLora::line).collect::<Vec<_>>().join("\n")));
        }
        if let Some((sha256, strength)) = &self.init_image {
            text.push(("init_image_sha256", sha256.clone()));
            text.push(("strength", strength.to_string()));
        }
        if let Some(backend) = &self.backend {
            text.push(("backend", backend.clone()));
        }
        if let Some(dtype) = &self.dtype {
            text.push(("dtype", dtype.clone()));
        }
        text.push(("parameters", self.a1111_parameters()));
        text.into_iter().map(|(key, value)| (key.to_string(), value)).collect()
    }

    /// The code a PNG made by `generate` carries in its `stylecode` chunk, if any.
    pub fn stored_code(text: &[(String, String)]) -> Option<&str> {
        text.iter().find(|(key, _)| key == "stylecode").map(|(_, value)| value.as_str())
    }

    /// The recipe as AUTOMATIC1111 writes its `parameters` chunk, so that
    /// other tools' "PNG info" shows it: the prompt, `Negative prompt: …`,
    /// then `Key: value` pairs.
    pub fn a1111_parameters(&self) -> String {
        let sampler = match (self.scheduler, self.karras) {
            (SchedulerKind::Ddim, _) => "DDIM".to_string(),
            (SchedulerKind::Euler, k) => format!("Euler{}", if k { " Karras" } else { "" }),
            (SchedulerKind::EulerAncestral, k) => format!("Euler a{}", if k { " Karras" } else { "" }),
            (SchedulerKind::DpmPlusPlus2M, k) => format!("DPM++ 2M{}", if k { " Karras" } else { "" }),
        };
        let mut pairs = vec![
            format!("Steps: {}", self.steps),
            format!("Sampler: {sampler}"),
            format!("CFG scale: {}", self.guidance_scale),
            format!("Seed: {}", self.seed),
            format!("Size: {}x{}", self.width, self.height),
        ];
        if let Some(sha256) = &self.model_sha256 {
            pairs.push(format!("Model hash: {}", &sha256[..sha256.len().min(10)]));
        }
        if let Some((_, strength)) = &self.init_image {
            pairs.push(format!("Denoising strength: {strength}"));
        }
        if !self.loras.is_empty() {
            let hashes: Vec<String> =
                self.loras.iter().map(|l| format!("{}: {}", l.name, &l.sha256[..l.sha256.len().min(12)])).collect();
            pairs.push(format!("Lora hashes: \"{}\"", hashes.join(", ")));
        }
        if let Some(code) = &self.stylecode {
            pairs.push(format!("Stylecode: {code}"));
        }
        if let Some(scale) = self.style_scale {
            pairs.push(format!("Style scale: {scale}"));
        }
        let mut text = self.prompt.clone();
        if !self.negative_prompt.is_empty() {
            text.push_str(&format!("\nNegative prompt: {}", self.negative_prompt));
        }
        text.push_str(&format!("\n{}", pairs.join(", ")));
        text
    }

    /// The recipe in a PNG's text chunks; errors name the chunk at fault.
    pub fn from_text_chunks(text: &[(String, String)]) -> Result<Self> {
        let get = |key: &str| text.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        let required =
            |key: &str| get(key).ok_or_else(|| Error::InvalidRequest(format!("the PNG has no `{key}` text chunk")));
        fn parse<T: std::str::FromStr>(key: &str, value: &str) -> Result<T> {
            value.parse().map_err(|_| Error::InvalidRequest(format!("text chunk `{key}` = {value:?} is not valid")))
        }
        Ok(Self {
            prompt: required("prompt")?.to_string(),
            negative_prompt: get("negative_prompt").unwrap_or_default().to_string(),
            seed: parse("seed", required("seed")?)?,
            steps: parse("steps", required("steps")?)?,
            scheduler: parse("scheduler", required("scheduler")?)?,
            karras: get("karras").map(|v| parse("karras", v)).transpose()?.unwrap_or(false),
            guidance_scale: parse("guidance_scale", required("guidance_scale")?)?,
            width: parse("width", required("width")?)?,
            height: parse("height", required("height")?)?,
            stylecode: get("stylecode").map(str::to_string),
            style_scale: get("style_scale").map(|v| parse("style_scale", v)).transpose()?,
            style_latent: get("style_latent").map(parse_latent).transpose()?,
            style_model_sha256: get("style_model_sha256").map(str::to_string),
            model_sha256: get("model_sha256").map(str::to_string),
            loras: get("loras").map(|v| v.lines().map(RecipeLora::parse).collect()).transpose()?.unwrap_or_default(),
            init_image: match (get("init_image_sha256"), get("strength")) {
                (Some(sha256), Some(strength)) => Some((sha256.to_string(), parse("strength", strength)?)),
                _ => None,
            },
            backend: get("backend").map(str::to_string),
            dtype: get("dtype").map(str::to_string),
        })
    }
}

/// The sha256 of an image's RGB bytes, as recipes record an init image.
pub fn pixels_sha256(image: &image::RgbImage) -> String {
    use sha2::{Digest, Sha256};
    crate::import::hex_digest(Sha256::new().chain_update(image.as_raw()))
}

/// 20 comma-separated values, as `text_chunks` writes `style_latent`.
fn parse_latent(text: &str) -> Result<[f32; CODE_LEN]> {
    let bad = || Error::InvalidRequest(format!("text chunk `style_latent` = {text:?} is not {CODE_LEN} numbers"));
    let values: Vec<f32> = text.split(',').map(|v| v.trim().parse().map_err(|_| bad())).collect::<Result<_>>()?;
    values.try_into().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_chunks_round_trip() {
        let recipe = Recipe {
            prompt: "a fox, 🌸".into(),
            negative_prompt: String::new(),
            seed: u64::MAX,
            steps: 7,
            scheduler: SchedulerKind::EulerAncestral,
            karras: true,
            guidance_scale: 3.5,
            width: 64,
            height: 48,
            stylecode: Some("C/d/AAI/rQglIvUb1/fC1".into()),
            style_scale: Some(0.25),
            style_latent: Some(std::array::from_fn(|k| k as f32 / 7.0 - 1.0)),
            style_model_sha256: Some("12".repeat(32)),
            model_sha256: Some("ab".repeat(32)),
            loras: vec![RecipeLora {
                name: "c:/x/a b.safetensors".into(),
                unet_weight: 0.5,
                text_encoder_weight: -1.0,
                sha256: "cd".repeat(32),
            }],
            init_image: Some(("ef".repeat(32), 0.75)),
            backend: Some("cpu".into()),
            dtype: Some("f32".into()),
        };
        assert_eq!(Recipe::from_text_chunks(&recipe.text_chunks()).unwrap(), recipe);
        let parameters = recipe.a1111_parameters();
        assert!(parameters.starts_with("a fox, 🌸\nSteps: 7, Sampler: Euler a Karras, CFG scale: 3.5"), "{parameters}");
        assert!(parameters.contains("Denoising strength: 0.75") && parameters.contains("Model hash: abababab"));
        let plain = Recipe {
            karras: false,
            stylecode: None,
            style_scale: None,
            style_latent: None,
            style_model_sha256: None,
            model_sha256: None,
            loras: Vec::new(),
            init_image: None,
            backend: None,
            dtype: None,
            ..recipe
        };
        assert_eq!(plain.text_chunks().len(), 9, "8 settings and `parameters`");
        assert_eq!(Recipe::from_text_chunks(&plain.text_chunks()).unwrap(), plain);

        let mut broken = plain.text_chunks();
        broken[2].1 = "seven".into();
        let error = Recipe::from_text_chunks(&broken).unwrap_err().to_string();
        assert!(error.contains("`seed`") && error.contains("seven"), "{error}");
    }
}
