//! JPEG decoding against PIL (libjpeg-turbo), pixel for pixel, on the corpus
//! of `make_jpeg_fixtures.py`: baseline and progressive, 4:2:0, 4:2:2 and
//! 4:4:4, odd sizes, restart markers, grey, CMYK with and without the Adobe
//! marker, EXIF-rotated (left unrotated, as PIL's `open`), and truncated.

use burn_stylecode::decode::{decode_file, DecodeOptions};
use burn_stylecode::siglip::preprocess::load_rgb;
use burn_stylecode_tests::*;

fn corpus() -> Vec<serde_json::Value> {
    reference_json("jpeg/corpus.json")["files"].as_array().unwrap().clone()
}

fn text<'a>(entry: &'a serde_json::Value, key: &str) -> &'a str {
    entry[key].as_str().unwrap()
}

/// The number of pixels where the two images differ, and the first.
fn differences(file: &str, actual: &image::RgbImage, expected: &image::RgbImage) -> String {
    assert_eq!(actual.dimensions(), expected.dimensions(), "{file}");
    let differing: Vec<_> = actual
        .enumerate_pixels()
        .filter(|(x, y, p)| expected.get_pixel(*x, *y) != *p)
        .map(|(x, y, _)| (x, y))
        .collect();
    match differing.first() {
        None => String::new(),
        Some(&(x, y)) => format!(
            "{file}: {} of {} pixels differ from PIL's, first at ({x}, {y}): {:?} vs {:?}",
            differing.len(),
            actual.width() * actual.height(),
            actual.get_pixel(x, y),
            expected.get_pixel(x, y)
        ),
    }
}

#[test]
fn every_corpus_jpeg_decodes_to_pils_pixels() {
    let entries: Vec<_> = corpus().into_iter().filter(|e| e.get("pixels").is_some()).collect();
    assert!(entries.len() >= 20, "the corpus has {} decodable JPEGs", entries.len());
    for mode in ["RGB", "L", "CMYK"] {
        assert!(entries.iter().any(|e| e["mode"] == mode), "no {mode} JPEG in the corpus");
    }
    assert!(entries.iter().any(|e| e["progressive"] == true) && entries.iter().any(|e| e["progressive"] == false));
    let failures: Vec<String> = entries
        .iter()
        .map(|entry| {
            let file = text(entry, "file");
            let actual = load_rgb(fixtures().join(file)).unwrap();
            let expected = load_rgb(fixtures().join(text(entry, "pixels"))).unwrap();
            differences(file, &actual, &expected)
        })
        .filter(|failure| !failure.is_empty())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn truncated_jpegs_are_refused_unless_allowed_then_decode_as_pil() {
    let entries: Vec<_> = corpus().into_iter().filter(|e| e.get("pil_error").is_some()).collect();
    assert_eq!(entries.len(), 2, "a truncated baseline and a truncated progressive JPEG");
    for entry in &entries {
        let file = text(entry, "file");
        let error = load_rgb(fixtures().join(file)).unwrap_err().to_string();
        assert!(error.contains(file) && error.contains("truncated"), "{error}");
        assert!(error.contains("--allow-truncated"), "{error}");

        let options = DecodeOptions { allow_truncated: true, ..DecodeOptions::default() };
        let decoded = decode_file(fixtures().join(file), &options).unwrap();
        let warning = decoded.warning.expect("a warning for a truncated file");
        assert!(warning.contains("Premature end"), "{file}: {warning}");
        let expected = load_rgb(fixtures().join(text(entry, "truncated_pixels"))).unwrap();
        let failure = differences(file, &decoded.image, &expected);
        assert!(failure.is_empty(), "{failure}");
    }
}
