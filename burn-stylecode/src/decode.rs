//! Image files to 8-bit RGB, decoded as the release's `PIL.Image.open(path)
//! .convert("RGB")` decodes them, so that a photo gets the official code.
//!
//! JPEGs go through libjpeg-turbo, PIL's decoder (feature `turbojpeg`, on
//! by default): ISLOW IDCT, fancy upsampling, its YCbCr tables; CMYK as
//! PIL's `CMYK;I` raw mode (always inverted, Adobe's convention) and its
//! `cmyk2rgb`. EXIF
//! orientation is not applied, as PIL's `open` does not. Without the
//! feature the pure-Rust `image` decoder is used, up to 2 levels off.
//! PNGs go through the `png` crate, which is exact.
//!
//! Every file is checked against a pixel limit from its header, before its
//! pixels are allocated. A truncated or corrupt file is an error, unless
//! [`DecodeOptions::allow_truncated`], which keeps what decoded (JPEG: grey
//! past the cut, as libjpeg fills it; PNG: black, as PIL leaves it) and
//! returns a warning instead.

use crate::error::{Error, Result};
use image::RgbImage;
use std::path::Path;

/// PIL's `DecompressionBombError` threshold: twice `Image.MAX_IMAGE_PIXELS`.
pub const MAX_PIXELS: u64 = 2 * 89_478_485;

/// How strict decoding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Accept a truncated or corrupt file with a warning (PIL's
    /// `ImageFile.LOAD_TRUNCATED_IMAGES`).
    pub allow_truncated: bool,
    /// The most pixels (width × height) an image may have.
    pub max_pixels: u64,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self { allow_truncated: false, max_pixels: MAX_PIXELS }
    }
}

/// A decoded image, and why it may be incomplete.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub image: RgbImage,
    /// Set only under `allow_truncated`, for a file that did not decode whole.
    pub warning: Option<String>,
}

/// Reads and decodes an image file (PNG or JPEG).
pub fn decode_file(path: impl AsRef<Path>, options: &DecodeOptions) -> Result<Decoded> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_bytes(&bytes, options).map_err(|message| Error::Image { path: path.to_path_buf(), message })
}

/// Decodes an image held in memory; the error is a message for the caller
/// to put beside the file's name.
pub fn decode_bytes(bytes: &[u8], options: &DecodeOptions) -> std::result::Result<Decoded, String> {
    let decoded = if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        jpeg::decode(bytes, options)?
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        png_rgb(bytes, options)?
    } else {
        return Err("cannot decode image: not a PNG or JPEG file".into());
    };
    match decoded.warning {
        Some(warning) if !options.allow_truncated => {
            Err(format!("truncated or corrupt image ({warning}); --allow-truncated decodes what is there"))
        }
        _ => Ok(decoded),
    }
}

/// Fails when `width × height` is over the limit (or empty), naming both.
pub(crate) fn check_size(width: u32, height: u32, options: &DecodeOptions) -> std::result::Result<(), String> {
    let pixels = u64::from(width) * u64::from(height);
    if pixels == 0 {
        return Err(format!("the image is {width}x{height}: it has no pixels"));
    }
    if pixels > options.max_pixels {
        return Err(format!(
            "the image is {width}x{height} = {pixels} pixels, over the limit of {} pixels",
            options.max_pixels
        ));
    }
    Ok(())
}

/// A PNG's pixels as RGB (alpha dropped, grey replicated, palettes and
/// 16-bit samples reduced as PIL's `convert("RGB")`). A decoding error
/// after the header keeps the rows decoded so far, with a warning.
fn png_rgb(bytes: &[u8], options: &DecodeOptions) -> std::result::Result<Decoded, String> {
    // The pixel limit below bounds the allocation, not png's own 64 MiB cap.
    let limits = png::Limits { bytes: usize::MAX };
    let mut decoder = png::Decoder::new_with_limits(std::io::Cursor::new(bytes), limits);
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(|e| format!("cannot decode PNG: {e}"))?;
    let (width, height) = (reader.info().width, reader.info().height);
    check_size(width, height, options)?;
    let size = reader.output_buffer_size().ok_or_else(|| format!("the {width}x{height} PNG is too large"))?;
    let mut buffer = vec![0u8; size];
    let warning = reader.next_frame(&mut buffer).err().map(|e| format!("PNG: {e}"));
    let (color, _) = reader.output_color_type();
    let channels = color.samples();
    let pixels = (width as usize) * (height as usize);
    let mut rgb = Vec::with_capacity(pixels * 3);
    for pixel in buffer.chunks_exact(channels).take(pixels) {
        match channels {
            1 | 2 => rgb.extend_from_slice(&[pixel[0]; 3]),
            _ => rgb.extend_from_slice(&pixel[..3]),
        }
    }
    let image = RgbImage::from_raw(width, height, rgb).ok_or("the PNG's pixel buffer is short")?;
    Ok(Decoded { image, warning })
}

/// PIL's `cmyk2rgb` (Convert.c): each ink darkens by `k`, rounding as its `MULDIV255`.
#[cfg_attr(not(feature = "turbojpeg"), allow(dead_code))]
fn cmyk_to_rgb(cmyk: &[u8]) -> Vec<u8> {
    let muldiv255 = |a: u32, b: u32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    let mut rgb = Vec::with_capacity(cmyk.len() / 4 * 3);
    for pixel in cmyk.chunks_exact(4) {
        let nk = 255 - u32::from(pixel[3]);
        for &ink in &pixel[..3] {
            rgb.push((nk - muldiv255(u32::from(ink), nk)) as u8);
        }
    }
    rgb
}

#[cfg(feature = "turbojpeg")]
mod jpeg {
    //! libjpeg-turbo through its TurboJPEG 3 API.
    use super::{check_size, cmyk_to_rgb, DecodeOptions, Decoded};
    use image::RgbImage;
    use std::ffi::CStr;
    use turbojpeg_sys as tj;

    /// A TurboJPEG decompressor, destroyed on drop.
    struct Handle(tj::tjhandle);

    impl Handle {
        fn new() -> Result<Self, String> {
            // SAFETY: tj3Init has no preconditions; a null handle is checked.
            let handle = unsafe { tj::tj3Init(tj::TJINIT_TJINIT_DECOMPRESS as i32) };
            if handle.is_null() {
                return Err("cannot start the JPEG decoder".into());
            }
            Ok(Self(handle))
        }

        fn get(&self, param: tj::TJPARAM) -> i32 {
            // SAFETY: a live handle; tj3Get only reads.
            unsafe { tj::tj3Get(self.0, param as i32) }
        }

        /// The last call's message.
        fn message(&self) -> String {
            // SAFETY: tj3GetErrorStr returns a NUL-terminated string owned by the handle.
            unsafe { CStr::from_ptr(tj::tj3GetErrorStr(self.0)) }.to_string_lossy().into_owned()
        }

        /// Whether the last call's failure was only a libjpeg warning.
        fn warned(&self) -> bool {
            // SAFETY: a live handle.
            unsafe { tj::tj3GetErrorCode(self.0) == tj::TJERR_TJERR_WARNING as i32 }
        }
    }

    impl Drop for Handle {
        fn drop(&mut self) {
            // SAFETY: the handle came from tj3Init and is destroyed once.
            unsafe { tj::tj3Destroy(self.0) }
        }
    }

    pub(super) fn decode(bytes: &[u8], options: &DecodeOptions) -> Result<Decoded, String> {
        let handle = Handle::new()?;
        // SAFETY: the pointer and length describe `bytes`, which outlives the call.
        if unsafe { tj::tj3DecompressHeader(handle.0, bytes.as_ptr(), bytes.len() as tj::size_t) } != 0 {
            return Err(format!("cannot decode JPEG: {}", handle.message()));
        }
        let (width, height) = (handle.get(tj::TJPARAM_TJPARAM_JPEGWIDTH), handle.get(tj::TJPARAM_TJPARAM_JPEGHEIGHT));
        let (width, height) = (u32::try_from(width).unwrap_or(0), u32::try_from(height).unwrap_or(0));
        if width == 0 || height == 0 {
            // The file ends (or breaks) before its frame header.
            return Err(format!("truncated or corrupt JPEG: no frame header ({})", handle.message()));
        }
        check_size(width, height, options)?;
        let colorspace = handle.get(tj::TJPARAM_TJPARAM_COLORSPACE);
        let cmyk = colorspace == tj::TJCS_TJCS_CMYK as i32 || colorspace == tj::TJCS_TJCS_YCCK as i32;
        let (format, channels) = if cmyk { (tj::TJPF_TJPF_CMYK, 4) } else { (tj::TJPF_TJPF_RGB, 3) };
        let mut pixels = vec![0u8; width as usize * height as usize * channels];
        // SAFETY: `pixels` holds height rows of width × channels bytes, the
        // pitch given; the input is `bytes`.
        let status = unsafe {
            tj::tj3Decompress8(
                handle.0,
                bytes.as_ptr(),
                bytes.len() as tj::size_t,
                pixels.as_mut_ptr(),
                (width as usize * channels) as i32,
                format,
            )
        };
        let warning = match status {
            0 => None,
            _ if handle.warned() => Some(format!("JPEG: {}", handle.message())),
            _ => return Err(format!("cannot decode JPEG: {}", handle.message())),
        };
        if cmyk {
            // PIL always reads CMYK as `CMYK;I` ("assume adobe conventions").
            pixels.iter_mut().for_each(|v| *v = 255 - *v);
            pixels = cmyk_to_rgb(&pixels);
        }
        let image = RgbImage::from_raw(width, height, pixels).ok_or("the JPEG's pixel buffer is short")?;
        Ok(Decoded { image, warning })
    }
}

#[cfg(not(feature = "turbojpeg"))]
mod jpeg {
    //! The pure-Rust fallback: the `image` crate's decoder (zune-jpeg), a
    //! level or two from libjpeg-turbo; it names no truncation.
    use super::{check_size, DecodeOptions, Decoded};

    pub(super) fn decode(bytes: &[u8], options: &DecodeOptions) -> Result<Decoded, String> {
        let reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), image::ImageFormat::Jpeg);
        let (width, height) = reader.into_dimensions().map_err(|e| format!("cannot decode JPEG: {e}"))?;
        check_size(width, height, options)?;
        let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), image::ImageFormat::Jpeg);
        reader.no_limits();
        let image = reader.decode().map_err(|e| format!("cannot decode JPEG: {e}"))?;
        Ok(Decoded { image: image.to_rgb8(), warning: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmyk_matches_pil_rounding() {
        // PIL: CMYK (0, 0, 0, 0) is white, full K black, and (255, 0, 0, 128) is (0, 127, 127).
        assert_eq!(cmyk_to_rgb(&[0, 0, 0, 0, 0, 0, 0, 255, 255, 0, 0, 128]), [255, 255, 255, 0, 0, 0, 0, 127, 127]);
    }

    #[test]
    fn unknown_formats_and_oversized_images_are_refused() {
        let error = decode_bytes(b"GIF89a", &DecodeOptions::default()).unwrap_err();
        assert!(error.contains("not a PNG or JPEG"), "{error}");
        let error = decode_bytes(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 16, b'J'], &DecodeOptions::default()).unwrap_err();
        assert!(error.contains("truncated or corrupt JPEG"), "{error}");
        let mut png = Vec::new();
        RgbImage::new(30, 20).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
        let strict = DecodeOptions { max_pixels: 599, ..DecodeOptions::default() };
        let error = decode_bytes(&png, &strict).unwrap_err();
        assert!(error.contains("30x20 = 600 pixels") && error.contains("limit of 599"), "{error}");
        assert_eq!(decode_bytes(&png, &DecodeOptions::default()).unwrap().image.dimensions(), (30, 20));
    }

    #[test]
    fn truncated_pngs_are_refused_unless_allowed_then_keep_their_first_rows() {
        let image =
            RgbImage::from_fn(64, 64, |x, y| image::Rgb([(x * 37 + y * 11) as u8, (x ^ y) as u8, (y * 7) as u8]));
        let mut png = Vec::new();
        image.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
        let cut = &png[..png.len() / 2];
        let error = decode_bytes(cut, &DecodeOptions::default()).unwrap_err();
        assert!(error.contains("truncated or corrupt") && error.contains("--allow-truncated"), "{error}");
        let options = DecodeOptions { allow_truncated: true, ..DecodeOptions::default() };
        let decoded = decode_bytes(cut, &options).unwrap();
        assert!(decoded.warning.is_some());
        assert_eq!(decoded.image.dimensions(), (64, 64));
        let row = 64 * 3;
        assert_eq!(decoded.image.as_raw()[..4 * row], image.as_raw()[..4 * row], "the first rows are kept");
        assert!(decoded.image.as_raw()[63 * row..].iter().all(|&v| v == 0), "the rest is black");
        assert_eq!(decode_bytes(&png, &DecodeOptions::default()).unwrap(), Decoded { image, warning: None });
    }
}
