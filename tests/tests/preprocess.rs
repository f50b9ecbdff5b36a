//! Image loading and resizing against PIL, the reference of transformers' processor.

use burn_stylecode::siglip::preprocess::{load_rgb, pixel_values, resize_bicubic};
use burn_stylecode_tests::*;

/// Decoding (libjpeg-turbo for JPEGs, as PIL) and the resize are Pillow's,
/// bit for bit.
fn compare_to_pil(image: &str, reference: &str, max_levels: i32) {
    let source = load_rgb(fixtures().join("images").join(image)).unwrap();
    let expected = load_rgb(fixtures().join("reference").join(reference)).unwrap();
    let actual = resize_bicubic(&source, 224, 224);
    assert_eq!(actual.dimensions(), expected.dimensions());
    let diffs: Vec<i32> =
        actual.as_raw().iter().zip(expected.as_raw()).map(|(&a, &b)| (i32::from(a) - i32::from(b)).abs()).collect();
    let worst = *diffs.iter().max().unwrap();
    let mean = diffs.iter().sum::<i32>() as f64 / diffs.len() as f64;
    assert!(worst <= max_levels, "{image}: worst pixel differs by {worst}/255 from PIL (mean {mean:.4})");
}

#[test]
fn downscaled_jpeg_matches_pil_exactly() {
    compare_to_pil("photo.jpg", "photo_224.png", 0);
}

#[test]
fn upscaled_rgba_png_matches_pil_exactly() {
    compare_to_pil("drawing.png", "drawing_224.png", 0);
}

#[test]
fn pixel_values_are_normalised_to_minus_one_one() {
    let image = load_rgb(fixtures().join("images/photo.jpg")).unwrap();
    let pixels = pixel_values::<TestBackend>(&[image.clone(), image], 32, &device());
    assert_eq!(pixels.dims(), [2, 3, 32, 32]);
    let values = pixels.into_data().into_vec::<f32>().unwrap();
    assert!(values.iter().all(|v| (-1.0..=1.0).contains(v)));
    assert!(values.iter().any(|v| *v < -0.2) && values.iter().any(|v| *v > 0.2));
}

#[test]
fn unreadable_files_name_the_file() {
    let path = fixtures().join("images/not_an_image.jpg");
    let error = load_rgb(&path).unwrap_err().to_string();
    assert!(error.contains("not_an_image.jpg") && error.contains("cannot decode"), "{error}");
    let error = load_rgb(fixtures().join("images/missing.png")).unwrap_err().to_string();
    assert!(error.contains("missing.png"), "{error}");
}
