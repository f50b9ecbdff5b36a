//! PNG files that carry their generation settings as text chunks.
//!
//! Writes are atomic and never clobber: the image goes to a temporary file
//! beside the target, which is then moved into place only if the target
//! does not exist (unless overwriting was asked for). An interrupted run
//! leaves no partial file.

use crate::error::{Error, Result};
use image::RgbImage;
use std::io::{BufWriter, Write};
use std::path::Path;

/// Writes `image` to `path` as an 8-bit RGB PNG with one UTF-8 (iTXt)
/// chunk per `(keyword, text)`.
pub fn write_png(path: &Path, image: &RgbImage, text: &[(String, String)], overwrite: bool) -> Result<()> {
    if !overwrite && path.exists() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::AlreadyExists, "exists (pass --overwrite to replace it)"),
        ));
    }
    let mut temp = crate::weights::safetensors::temp_file_beside(path, ".png.part")?;
    {
        let mut encoder = png::Encoder::new(BufWriter::new(temp.as_file_mut()), image.width(), image.height());
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        for (keyword, value) in text {
            encoder.add_itxt_chunk(keyword.clone(), value.clone()).map_err(|e| png_error(path, e))?;
        }
        let mut writer = encoder.write_header().map_err(|e| png_error(path, e))?;
        writer.write_image_data(image.as_raw()).map_err(|e| png_error(path, e))?;
        writer.finish().map_err(|e| png_error(path, e))?;
    }
    temp.as_file_mut().flush().map_err(|e| Error::io(path, e))?;
    temp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    let persisted = if overwrite { temp.persist(path).map(|_| ()) } else { temp.persist_noclobber(path).map(|_| ()) };
    persisted.map_err(|e| Error::io(path, e.error))
}

/// The text chunks (tEXt, zTXt and iTXt) of a PNG file, in file order per kind.
pub fn read_png_text(path: &Path) -> Result<Vec<(String, String)>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    png_text(std::io::BufReader::new(file), path)
}

/// The text chunks of a PNG held in memory (an upload); errors name `path`.
pub fn read_png_text_bytes(bytes: &[u8], path: &Path) -> Result<Vec<(String, String)>> {
    png_text(std::io::Cursor::new(bytes), path)
}

fn png_text(reader: impl std::io::BufRead + std::io::Seek, path: &Path) -> Result<Vec<(String, String)>> {
    let decoder = png::Decoder::new(reader);
    let reader = decoder.read_info().map_err(|e| Error::Image { path: path.to_path_buf(), message: e.to_string() })?;
    let info = reader.info();
    let mut text: Vec<(String, String)> =
        info.uncompressed_latin1_text.iter().map(|c| (c.keyword.clone(), c.text.clone())).collect();
    for chunk in &info.compressed_latin1_text {
        if let Ok(value) = chunk.get_text() {
            text.push((chunk.keyword.clone(), value));
        }
    }
    for chunk in &info.utf8_text {
        if let Ok(value) = chunk.get_text() {
            text.push((chunk.keyword.clone(), value));
        }
    }
    Ok(text)
}

fn png_error(path: &Path, error: impl std::fmt::Display) -> Error {
    Error::Image { path: path.to_path_buf(), message: format!("writing PNG: {error}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_and_files_are_never_clobbered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.png");
        let image = RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8 * 40, y as u8 * 80, 7]));
        let text = vec![("prompt".to_string(), "a café, 🌸".to_string()), ("seed".to_string(), "42".to_string())];
        write_png(&path, &image, &text, false).unwrap();
        assert_eq!(read_png_text(&path).unwrap(), text);
        assert_eq!(image::open(&path).unwrap().to_rgb8(), image);

        let error = write_png(&path, &RgbImage::new(1, 1), &[], false).unwrap_err().to_string();
        assert!(error.contains("out.png") && error.contains("--overwrite"), "{error}");
        assert_eq!(image::open(&path).unwrap().to_rgb8(), image, "the existing file is untouched");
        write_png(&path, &RgbImage::new(1, 1), &[], true).unwrap();
        assert_eq!(image::open(&path).unwrap().to_rgb8().dimensions(), (1, 1));
        // No temporary files are left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// An image gets the mode of any new file (umask applied), not a
    /// temporary file's owner-only 0o600.
    #[cfg(unix)]
    #[test]
    fn images_get_a_new_files_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::File::create(&plain).unwrap();
        let path = dir.path().join("out.png");
        write_png(&path, &RgbImage::new(2, 2), &[], false).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), mode(&plain), "out.png's mode");
    }
}
