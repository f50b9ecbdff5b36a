//! How an image was made, as the PNG text chunks `generate` writes.

use crate::error::{Error, Result};
use crate::sd::schedulers::SchedulerKind;

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
}

impl Recipe {
    /// The PNG text chunks: `prompt`, `negative_prompt`, `seed`, `steps`,
    /// `scheduler`, `guidance_scale`, `width`, `height`, then `karras` (when
    /// on), `stylecode` and `style_scale` (when styled).
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
        text.into_iter().map(|(key, value)| (key.to_string(), value)).collect()
    }

    /// The code a PNG made by `generate` carries in its `stylecode` chunk, if any.
    pub fn stored_code(text: &[(String, String)]) -> Option<&str> {
        text.iter().find(|(key, _)| key == "stylecode").map(|(_, value)| value.as_str())
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
        })
    }
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
        };
        assert_eq!(Recipe::from_text_chunks(&recipe.text_chunks()).unwrap(), recipe);
        let plain = Recipe { karras: false, stylecode: None, style_scale: None, ..recipe };
        assert_eq!(plain.text_chunks().len(), 8);
        assert_eq!(Recipe::from_text_chunks(&plain.text_chunks()).unwrap(), plain);

        let mut broken = plain.text_chunks();
        broken[2].1 = "seven".into();
        let error = Recipe::from_text_chunks(&broken).unwrap_err().to_string();
        assert!(error.contains("`seed`") && error.contains("seven"), "{error}");
    }
}
