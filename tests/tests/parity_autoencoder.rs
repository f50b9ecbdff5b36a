//! The attention autoencoder against its PyTorch wiring.

use burn::backend::Autodiff;
use burn::module::Module;
use burn::prelude::*;
use burn::tensor::DType;
use burn_stylecode::style::autoencoder::{
    quantize_dequantize, straight_through, AttentionAutoencoder, AutoencoderConfig,
};
use burn_stylecode::weights::safetensors::TensorFile;
use burn_stylecode::StyleCode;
use burn_stylecode_tests::*;

fn tiny_autoencoder() -> AttentionAutoencoder<TestBackend> {
    let weights = weights();
    let config = weights.stylecodes_config().unwrap();
    let file = TensorFile::open(weights.stylecodes_weights().unwrap()).unwrap();
    AttentionAutoencoder::load(&config.autoencoder, &file, DType::F32, &device()).unwrap()
}

#[test]
fn encode_quantise_decode_match_pytorch() {
    let reference = reference("autoencoder.safetensors");
    let model = tiny_autoencoder();
    let latent = model.encode(tensor(&reference, "src"));
    assert_close("latent", latent.clone(), tensor(&reference, "latent"));

    let dequant = quantize_dequantize(latent.clone());
    assert_close("latent_dequant", dequant.clone(), tensor(&reference, "latent_dequant"));
    assert_close("decoded", model.decode(dequant, 3, 2), tensor(&reference, "decoded"));
    assert_close("decoded_raw", model.decode(latent.clone(), 3, 2), tensor(&reference, "decoded_raw"));

    // The codes the release prints for these latents.
    let codes = reference_json("codes.json");
    let values = latent.into_data().into_vec::<f32>().unwrap();
    for (sample, latent) in codes["samples"].as_array().unwrap().iter().zip(values.chunks(20)) {
        let code = StyleCode::from_latent(latent.try_into().unwrap(), '1').unwrap();
        let expected: Vec<u8> = serde_json::from_value(sample["values"].clone()).unwrap();
        assert_eq!(code.values().to_vec(), expected);
        assert_eq!(code.to_paper(), sample["paper"].as_str().unwrap());
        assert_eq!(code.to_official(), sample["official"].as_str().unwrap());
    }
}

#[test]
fn full_size_config_has_the_official_parameter_count() {
    let model = AutoencoderConfig::default().init::<TestBackend>(&device());
    // The release's AttentionAutoencoder without its `pe` buffer.
    assert_eq!(model.num_params(), 12_632_380);
    let src = Tensor::zeros([2, 196, 768], &device());
    let latent = model.encode(src);
    assert_eq!(latent.dims(), [2, 20]);
    assert_eq!(model.decode(latent, 8, 8).dims(), [2, 1280, 8, 8]);
}

#[test]
fn straight_through_forwards_the_code_and_passes_gradients_to_the_encoder() {
    type Ad = Autodiff<TestBackend>;
    let weights = weights();
    let config = weights.stylecodes_config().unwrap();
    let file = TensorFile::open(weights.stylecodes_weights().unwrap()).unwrap();
    let model: AttentionAutoencoder<Ad> =
        AttentionAutoencoder::load(&config.autoencoder, &file, DType::F32, &device()).unwrap();
    let reference = reference("autoencoder.safetensors");
    let src = Tensor::<Ad, 3>::from_inner(tensor(&reference, "src"));

    let latent = model.encode(src);
    let coded = straight_through(latent.clone());
    // Forward value: the dequantised code.
    assert_close("straight-through value", coded.clone().inner(), tensor(&reference, "latent_dequant"));

    let loss = model.decode(coded, 3, 2).powf_scalar(2.0).mean();
    let grads = loss.backward();
    let input_grad = model.input_proj.weight.grad(&grads).expect("gradient reaches the encoder's input projection");
    let latent_init_grad = model.latent_init.grad(&grads).expect("gradient reaches the learned query");
    for (name, grad) in
        [("input_proj", input_grad.abs().sum()), ("latent_init", latent_init_grad.reshape([-1]).abs().sum())]
    {
        let total = grad.into_scalar();
        assert!(total > 0.0 && total.is_finite(), "{name} gradient is {total}");
    }
}
