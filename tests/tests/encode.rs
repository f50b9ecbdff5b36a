//! Image → stylecode end to end through the tiny weights folder, against
//! the PyTorch pipeline (PIL preprocessing, transformers SigLIP, autoencoder).

use burn::tensor::DType;
use burn_stylecode::siglip::preprocess::load_rgb;
use burn_stylecode::StyleCodes;
use burn_stylecode_tests::*;

#[test]
fn codes_match_the_pytorch_pipeline() {
    let styles = StyleCodes::<TestBackend>::new(weights(), DType::F32, device());
    let encoder = styles.encoder().unwrap();
    let reference = reference_json("encode.json");
    let entries = reference["images"].as_array().unwrap();
    let images: Vec<_> =
        entries.iter().map(|e| load_rgb(fixtures().join(e["path"].as_str().unwrap())).unwrap()).collect();
    let styles = encoder.encode(&images).unwrap();
    for (entry, style) in entries.iter().zip(&styles) {
        let path = entry["path"].as_str().unwrap();
        let code = entry["code"].as_str().unwrap();
        let latent: Vec<f32> = serde_json::from_value(entry["latent"].clone()).unwrap();
        // PNGs and JPEGs alike (JPEGs through libjpeg-turbo, as PIL): the
        // pixels are PIL's and the resize bit-exact, so the networks' parity
        // holds end to end and every code is PyTorch's.
        assert_close_values(path, &style.latent, &latent);
        assert_eq!(style.code.to_paper(), code, "{path}");
        assert_eq!(style.code.to_official(), entry["official"].as_str().unwrap(), "{path}");
    }
}

#[test]
fn batching_does_not_change_codes() {
    let styles = StyleCodes::<TestBackend>::new(weights(), DType::F32, device());
    let encoder = styles.encoder().unwrap();
    let photo = load_rgb(fixtures().join("images/photo.jpg")).unwrap();
    let drawing = load_rgb(fixtures().join("images/drawing.png")).unwrap();
    let together = encoder.encode(&[photo.clone(), drawing]).unwrap();
    let alone = encoder.encode(&[photo]).unwrap();
    assert_eq!(together[0].code, alone[0].code);
    assert_ne!(together[0].code, together[1].code);
}
