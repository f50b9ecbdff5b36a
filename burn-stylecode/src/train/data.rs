//! The dataset layer of training (`stylecode train --data DIR`): the manifest,
//! the images' preprocessing, a resumable data order and dropout masks.
//!
//! `DIR/manifest.jsonl` holds one JSON object per line, paths relative to `DIR`:
//!
//! ```text
//! {"style": "styles/0001.png", "target": "targets/0001.png", "prompt": "a lighthouse at dusk"}
//! {"image": "photos/0002.png", "prompt": "a cat"}        <- style = target (self-reconstruction)
//! ```
//!
//! Opening a dataset parses every line and reads every image's header, so a
//! bad entry is found before the first step, not hours into a run. Without
//! `skip_bad` the first bad entry (in line order) is the error; with it, bad
//! entries are left out and returned as [`Skipped`] records for
//! [`write_skipped`] (`RUN_DIR/skipped.jsonl`).
//!
//! Errors about an entry are `Error::Config` whose `path` is the location
//! `DIR/manifest.jsonl:N`, so they print as a compiler does,
//! `DIR/manifest.jsonl:3: DIR/a.png: cannot decode image: …`.
//!
//! Targets are preprocessed as diffusers' training scripts do ([`preprocess_target`]);
//! styles are handed over decoded, for `siglip::preprocess::pixel_values`.

use crate::error::{Error, Result};
use crate::siglip::preprocess::{load_rgb, resize_bilinear};
use crate::weights::safetensors::write_atomic;
use burn::prelude::*;
use image::RgbImage;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The manifest's file name inside the dataset folder.
pub const MANIFEST: &str = "manifest.jsonl";

/// The keys a manifest line may have.
const KEYS: [&str; 4] = ["style", "target", "image", "prompt"];

/// One training example: the style image that is encoded, the target the
/// model learns to generate, and its prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The manifest line it comes from (1-based), for messages.
    pub line: usize,
    /// `DIR` joined with the manifest's path.
    pub style: PathBuf,
    pub target: PathBuf,
    pub prompt: String,
}

impl Entry {
    /// Whether the entry was an `{"image": …}` line (style = target).
    pub fn is_reconstruction(&self) -> bool {
        self.style == self.target
    }
}

/// A bad entry left out under `skip_bad`: one line of `skipped.jsonl`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// The manifest line (1-based).
    pub line: usize,
    /// The image at fault (`DIR` joined), when an image is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Why, without the location.
    pub error: String,
}

/// How to open a dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DatasetOptions {
    /// The side of the square targets, a positive multiple of 8 (the VAE's factor).
    pub resolution: u32,
    /// Leave bad entries out (and report them) instead of failing (`--skip-bad`).
    pub skip_bad: bool,
}

/// An opened dataset: the entries whose images all have readable headers.
#[derive(Clone, Debug)]
pub struct Dataset {
    dir: PathBuf,
    entries: Vec<Entry>,
    resolution: u32,
}

/// A batch on the host, decoded and preprocessed (the training step uploads it).
#[derive(Clone, Debug)]
pub struct Batch {
    /// The dataset indices, in batch order.
    pub indices: Vec<usize>,
    pub prompts: Vec<String>,
    /// Decoded RGB style images, for `siglip::preprocess::pixel_values`.
    pub styles: Vec<RgbImage>,
    /// The targets, [B, 3, R, R] row-major, in [-1, 1].
    pub targets: Vec<f32>,
    pub resolution: u32,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// The targets as a [B, 3, R, R] tensor on `device`.
    pub fn targets_tensor<B: Backend>(&self, device: &B::Device) -> Tensor<B, 4> {
        let r = self.resolution as usize;
        Tensor::from_data(TensorData::new(self.targets.clone(), [self.len(), 3, r, r]), device)
    }
}

/// What is wrong with one entry, before it is located.
struct Bad {
    path: Option<PathBuf>,
    message: String,
}

impl Bad {
    fn line(message: impl Into<String>) -> Self {
        Bad { path: None, message: message.into() }
    }
}

/// `manifest.jsonl:N` as a path, so that `Error::Config` prints `file:line: message`.
fn location(manifest: &Path, line: usize) -> PathBuf {
    let mut text = OsString::from(manifest.as_os_str());
    text.push(format!(":{line}"));
    PathBuf::from(text)
}

fn located(manifest: &Path, line: usize, bad: Bad) -> Error {
    let message = match &bad.path {
        Some(path) => format!("{}: {}", path.display(), bad.message),
        None => bad.message,
    };
    Error::Config { path: location(manifest, line), message }
}

/// A JSON value's kind, for messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A parsed line: (style, target, prompt), paths joined with the dataset folder.
type Parsed = std::result::Result<(PathBuf, PathBuf, String), Bad>;

/// Parses one non-blank manifest line.
fn parse_line(dir: &Path, text: &str) -> Parsed {
    let value: Value = serde_json::from_str(text).map_err(|e| Bad::line(format!("not JSON: {e}")))?;
    let Value::Object(object) = value else {
        return Err(Bad::line(format!("expected a JSON object, found {}", kind(&value))));
    };
    let unknown: Vec<String> =
        object.keys().filter(|k| !KEYS.contains(&k.as_str())).map(|k| format!("`{k}`")).collect();
    if !unknown.is_empty() {
        return Err(Bad::line(format!(
            "unknown key(s) {} (a line has `style`, `target` and `prompt`, or `image` and `prompt`)",
            unknown.join(", ")
        )));
    }
    let string = |key: &str| match object.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(other) => Err(Bad::line(format!("`{key}` must be a string, found {}", kind(other)))),
    };
    let (image, style, target, prompt) = (string("image")?, string("style")?, string("target")?, string("prompt")?);
    let (style, target) = match (image, style, target) {
        (Some(image), None, None) => (image, image),
        (Some(_), _, _) => {
            return Err(Bad::line(
                "`image` (style = target) cannot be combined with `style` or `target`: use one form per line",
            ))
        }
        (None, Some(style), Some(target)) => (style, target),
        (None, Some(_), None) => return Err(Bad::line("missing key `target` (next to `style`)")),
        (None, None, Some(_)) => return Err(Bad::line("missing key `style` (next to `target`)")),
        (None, None, None) => return Err(Bad::line("missing key `image` (or `style` and `target`)")),
    };
    let prompt = prompt.ok_or_else(|| Bad::line("missing key `prompt` (it may be \"\")"))?;
    for (key, path) in [("style", style), ("target", target)] {
        if path.is_empty() {
            return Err(Bad::line(format!("`{}` is an empty path", if image.is_some() { "image" } else { key })));
        }
    }
    Ok((dir.join(style), dir.join(target), prompt.to_string()))
}

/// Reads only the image's header: it exists, its format is known, it has pixels.
fn check_image(path: &Path) -> std::result::Result<(), String> {
    let reader = image::ImageReader::open(path).map_err(|e| format!("cannot open image: {e}"))?;
    let reader = reader.with_guessed_format().map_err(|e| format!("cannot read image: {e}"))?;
    let (width, height) = reader.into_dimensions().map_err(|e| format!("cannot decode image: {e}"))?;
    // The decoder's own limit, so that a huge image is refused before the first step.
    crate::decode::check_size(width, height, &crate::decode::DecodeOptions::default())
}

/// Fails unless `resolution` is a positive multiple of 8: the VAE turns the
/// targets into latents 8 times smaller.
pub fn check_resolution(resolution: u32) -> Result<()> {
    if resolution == 0 || !resolution.is_multiple_of(8) {
        return Err(Error::InvalidRequest(format!(
            "the resolution must be a positive multiple of 8 (the VAE's downsampling factor), got {resolution}"
        )));
    }
    Ok(())
}

impl Dataset {
    /// Opens `dir/manifest.jsonl`, checks every line and every image's header,
    /// and returns the dataset with the entries left out under `skip_bad` (in
    /// line order; always empty without it). An empty dataset is an error.
    pub fn open(dir: impl AsRef<Path>, options: &DatasetOptions) -> Result<(Self, Vec<Skipped>)> {
        check_resolution(options.resolution)?;
        let dir = dir.as_ref().to_path_buf();
        let manifest = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&manifest).map_err(|e| Error::io(&manifest, e))?;
        let lines: Vec<(usize, Parsed)> = text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(i, line)| (i + 1, parse_line(&dir, line)))
            .collect();
        // Without skip_bad the first bad line ends the scan: images after it need no check.
        let stop = match options.skip_bad {
            true => usize::MAX,
            false => lines.iter().find(|(_, parsed)| parsed.is_err()).map_or(usize::MAX, |(line, _)| *line),
        };
        let mut images: Vec<PathBuf> = lines
            .iter()
            .filter(|(line, _)| *line < stop)
            .filter_map(|(_, parsed)| parsed.as_ref().ok())
            .flat_map(|(style, target, _)| [style.clone(), target.clone()])
            .collect();
        images.sort();
        images.dedup();
        let checked: HashMap<PathBuf, std::result::Result<(), String>> = images
            .into_par_iter()
            .map(|path| {
                let result = check_image(&path);
                (path, result)
            })
            .collect();

        let mut entries = Vec::new();
        let mut skipped = Vec::new();
        for (line, parsed) in lines {
            let entry = parsed.and_then(|(style, target, prompt)| {
                for path in [&style, &target] {
                    if let Some(Err(message)) = checked.get(path) {
                        return Err(Bad { path: Some(path.clone()), message: message.clone() });
                    }
                }
                Ok(Entry { line, style, target, prompt })
            });
            match entry {
                Ok(entry) => entries.push(entry),
                Err(bad) if options.skip_bad => skipped.push(Skipped { line, path: bad.path, error: bad.message }),
                Err(bad) => return Err(located(&manifest, line, bad)),
            }
        }
        if entries.is_empty() {
            let message = match skipped.len() {
                0 => "the dataset has no entries".to_string(),
                n => format!("the dataset has no usable entries: all {n} were skipped as bad"),
            };
            return Err(Error::Config { path: manifest, message });
        }
        Ok((Dataset { dir, entries, resolution: options.resolution }, skipped))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> PathBuf {
        self.dir.join(MANIFEST)
    }

    pub fn resolution(&self) -> u32 {
        self.resolution
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Always false: an empty dataset does not open.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Locates an error about entry `index` at its manifest line.
    fn at(&self, index: usize, error: Error) -> Error {
        located(&self.manifest(), self.entries[index].line, Bad::line(error.to_string()))
    }

    /// The style image of entry `index`, decoded to RGB (SigLIP resizes it).
    /// Panics if `index` is out of range.
    pub fn style_image(&self, index: usize) -> Result<RgbImage> {
        load_rgb(&self.entries[index].style).map_err(|e| self.at(index, e))
    }

    /// The target of entry `index`, preprocessed: [3, R, R] in [-1, 1].
    /// Panics if `index` is out of range.
    pub fn target(&self, index: usize) -> Result<Vec<f32>> {
        let image = load_rgb(&self.entries[index].target).map_err(|e| self.at(index, e))?;
        preprocess_target(&image, self.resolution)
    }

    /// Decodes and preprocesses the entries `indices` (in parallel), decoding
    /// a self-reconstruction's image once. Panics if an index is out of range.
    pub fn batch(&self, indices: &[usize]) -> Result<Batch> {
        let items: Vec<(RgbImage, Vec<f32>)> = indices
            .par_iter()
            .map(|&i| {
                let style = self.style_image(i)?;
                let target = match self.entries[i].is_reconstruction() {
                    true => preprocess_target(&style, self.resolution)?,
                    false => self.target(i)?,
                };
                Ok((style, target))
            })
            .collect::<Result<_>>()?;
        let mut batch = Batch {
            indices: indices.to_vec(),
            prompts: indices.iter().map(|&i| self.entries[i].prompt.clone()).collect(),
            styles: Vec::with_capacity(items.len()),
            targets: Vec::with_capacity(items.len() * 3 * (self.resolution as usize).pow(2)),
            resolution: self.resolution,
        };
        for (style, target) in items {
            batch.styles.push(style);
            batch.targets.extend(target);
        }
        Ok(batch)
    }
}

/// Writes the skipped entries as JSON Lines, through a temporary file in the
/// same folder and a rename, so a reader never sees half a file.
pub fn write_skipped(path: impl AsRef<Path>, skipped: &[Skipped]) -> Result<()> {
    let path = path.as_ref();
    let mut text = String::new();
    for record in skipped {
        text.push_str(&serde_json::to_string(record).map_err(|e| Error::Json { path: path.to_path_buf(), cause: e })?);
        text.push('\n');
    }
    write_atomic(path, text.as_bytes())
}

// ---------------------------------------------------------------------------
// Target preprocessing

/// diffusers' target transform: `Resize(resolution, BILINEAR)` on the shorter
/// side, `CenterCrop(resolution)`, `ToTensor()`, `Normalize([0.5], [0.5])`.
/// Returns [3, R, R] (CHW) in [-1, 1], equal to torchvision's on a PIL image.
pub fn preprocess_target(image: &RgbImage, resolution: u32) -> Result<Vec<f32>> {
    check_resolution(resolution)?;
    let cropped = center_crop(&resize_shorter_side(image, resolution), resolution);
    let mut values = Vec::with_capacity(3 * (resolution as usize).pow(2));
    for c in 0..3 {
        values.extend(cropped.pixels().map(|p| (f32::from(p.0[c]) / 255.0 - 0.5) / 0.5));
    }
    Ok(values)
}

/// torchvision's `Resize(size)` with an int: the shorter side becomes `size`,
/// the longer `int(size * long / short)` (truncated), by Pillow's bilinear.
pub fn resize_shorter_side(image: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = image.dimensions();
    let (short, long) = (w.min(h), w.max(h));
    let new_long = ((u64::from(size) * u64::from(long)) as f64 / f64::from(short)) as u32;
    let (new_w, new_h) = if w <= h { (size, new_long) } else { (new_long, size) };
    resize_bilinear(image, new_w, new_h)
}

/// torchvision's `CenterCrop(size)`: offsets `int(round((side - size) / 2))`,
/// Python's round (halves to even), and zero padding where the image is smaller.
pub fn center_crop(image: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = image.dimensions();
    // The input coordinate of output 0 along a side: negative where torchvision pads first,
    // by `(size - side) // 2` on the left/top.
    let offset = |side: u32| -> i64 {
        if size > side {
            -i64::from((size - side) / 2)
        } else {
            (f64::from(side - size) / 2.0).round_ties_even() as i64
        }
    };
    let (left, top) = (offset(w), offset(h));
    RgbImage::from_fn(size, size, |x, y| {
        let (sx, sy) = (i64::from(x) + left, i64::from(y) + top);
        if (0..i64::from(w)).contains(&sx) && (0..i64::from(h)).contains(&sy) {
            *image.get_pixel(sx as u32, sy as u32)
        } else {
            image::Rgb([0, 0, 0])
        }
    })
}

// ---------------------------------------------------------------------------
// Order and dropout

/// An RNG keyed by a purpose, the run seed and a counter, so that the data
/// order (per epoch) and the dropout masks (per step) are independent streams
/// and any one of them can be recreated without replaying the others.
pub(crate) fn keyed_rng(purpose: &[u8; 8], seed: u64, counter: u64) -> StdRng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(purpose);
    key[8..16].copy_from_slice(&seed.to_le_bytes());
    key[16..24].copy_from_slice(&counter.to_le_bytes());
    StdRng::from_seed(key)
}

/// Where an [`Order`] stands, saved in checkpoints. With the seed and the
/// dataset's length it fixes every later batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OrderPosition {
    pub seed: u64,
    /// The dataset's length when it was saved: a resume into a changed dataset is refused.
    pub len: usize,
    pub epoch: u64,
    /// The next sample's place in the epoch's permutation, always `< len`.
    pub index: usize,
}

/// The data order: each epoch a seeded shuffle (Fisher–Yates over
/// [`StdRng`] keyed by seed and epoch), read in batches that run on into the
/// next epoch. Unlike diffusers' resume, which restarts the epoch, a resumed
/// order continues mid-epoch exactly where the saved position was.
///
/// `StdRng` (ChaCha12) is not promised stable across `rand` versions, so the
/// order is reproducible with the same `Cargo.lock`.
#[derive(Clone, Debug)]
pub struct Order {
    position: OrderPosition,
    permutation: Vec<usize>,
}

impl Order {
    /// Epoch 0, first sample.
    pub fn new(seed: u64, len: usize) -> Result<Self> {
        Self::resume(OrderPosition { seed, len, epoch: 0, index: 0 }, len)
    }

    /// Continues from a saved position over a dataset of `len` entries.
    pub fn resume(position: OrderPosition, len: usize) -> Result<Self> {
        if len == 0 {
            return Err(Error::InvalidRequest("the data order needs a non-empty dataset".into()));
        }
        if position.len != len {
            return Err(Error::InvalidRequest(format!(
                "the saved data order is for a dataset of {} entries, but the dataset has {len} \
                 (did the manifest, or what --skip-bad left out, change?)",
                position.len
            )));
        }
        if position.index >= len {
            return Err(Error::InvalidRequest(format!(
                "the saved data order's index {} is past the dataset's {len} entries",
                position.index
            )));
        }
        Ok(Order { permutation: Self::permutation(position.seed, position.epoch, len), position })
    }

    /// The order of epoch `epoch`: a permutation of `0..len`.
    pub fn permutation(seed: u64, epoch: u64, len: usize) -> Vec<usize> {
        let mut rng = keyed_rng(b"order\0\0\0", seed, epoch);
        let mut order: Vec<usize> = (0..len).collect();
        for i in (1..len).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        order
    }

    /// Where the next batch starts, to save.
    pub fn position(&self) -> OrderPosition {
        self.position
    }

    /// The next `size` dataset indices, continuing into the next epoch at
    /// the end of one (a batch may then hold an index twice on tiny datasets).
    pub fn next_batch(&mut self, size: usize) -> Vec<usize> {
        let mut batch = Vec::with_capacity(size);
        while batch.len() < size {
            let p = &mut self.position;
            let take = (size - batch.len()).min(p.len - p.index);
            batch.extend_from_slice(&self.permutation[p.index..p.index + take]);
            p.index += take;
            if p.index == p.len {
                p.epoch += 1;
                p.index = 0;
                self.permutation = Self::permutation(p.seed, p.epoch, p.len);
            }
        }
        batch
    }
}

/// Classifier-free-guidance dropout per sample (`--text-dropout P`,
/// `--style-dropout P`): the training step replaces a dropped prompt by "" and
/// a dropped style by the unconditional style, as IP-Adapter does.
///
/// The masks of a batch come from an RNG keyed by (seed, step) alone, so a run
/// resumed at any step draws the masks the uninterrupted run drew, with no RNG
/// state to save. `step` is the global batch counter (count micro-batches
/// under gradient accumulation). Each sample draws text then style, both
/// always, so one probability does not shift the other's draws; the two are
/// independent (both dropped with probability P_text · P_style).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    seed: u64,
    text: f64,
    style: f64,
}

/// What to drop for one sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DropMask {
    pub text: bool,
    pub style: bool,
}

impl Dropout {
    /// Probabilities in [0, 1].
    pub fn new(seed: u64, text: f64, style: f64) -> Result<Self> {
        for (flag, p) in [("--text-dropout", text), ("--style-dropout", style)] {
            if !(0.0..=1.0).contains(&p) {
                return Err(Error::InvalidRequest(format!("{flag} must be a probability in [0, 1], got {p}")));
            }
        }
        Ok(Dropout { seed, text, style })
    }

    /// The masks of the `batch` samples of batch `step`.
    pub fn masks(&self, step: u64, batch: usize) -> Vec<DropMask> {
        let mut rng = keyed_rng(b"dropout\0", self.seed, step);
        (0..batch)
            .map(|_| {
                let (text, style) = (rng.random::<f64>(), rng.random::<f64>());
                DropMask { text: text < self.text, style: style < self.style }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flat_image_stays_flat() {
        let image = RgbImage::from_pixel(37, 23, image::Rgb([10, 128, 250]));
        let out = resize_bilinear(&image, 16, 40);
        assert_eq!(out.dimensions(), (16, 40));
        assert!(out.pixels().all(|p| p.0 == [10, 128, 250]));
    }

    #[test]
    fn center_crop_pads_like_torchvision() {
        // 3 wide → 6: torchvision pads 1 left and 2 right; 8 high → 6: top = round(1.0) = 1.
        let image = RgbImage::from_fn(3, 8, |_, y| image::Rgb([10 + y as u8, 0, 0]));
        let out = center_crop(&image, 6);
        let row: Vec<u8> = (0..6).map(|x| out.get_pixel(x, 0).0[0]).collect();
        assert_eq!(row, [0, 11, 11, 11, 0, 0]);
    }

    #[test]
    fn location_reads_as_file_and_line() {
        let error = located(Path::new("d/manifest.jsonl"), 7, Bad::line("not JSON"));
        assert_eq!(error.to_string(), "d/manifest.jsonl:7: not JSON");
    }
}
