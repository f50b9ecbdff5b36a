//! One full-size training step (random weights): the StyleCodes autoencoder
//! and control branch on the tape, the frozen SD1.5 UNet, AdamW, as
//! `stylecode train` runs it from its feature cache (SigLIP, CLIP and the VAE
//! encoder are not part of the step).
//!
//! `cargo bench -p burn-stylecode-cli --bench train_step -- [cpu|wgpu|cuda] [RESOLUTION] [BATCH] [REPEATS] [f32|bf16|f16]`
//! prints one JSON line: seconds per optimizer step (median of the repeats,
//! after one warm-up), the loss, and the process's peak resident memory.
//! `benches/train_step.sh` runs it beside its PyTorch twin (`train_step.py`).

use burn::module::{ModuleMapper, Param};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Distribution};
use burn_stylecode::sd::schedulers::SchedulerConfig;
use burn_stylecode::sd::unet_2d::{UNet2DConditionModel, UNetConfig};
use burn_stylecode::style::StylecodesConfig;
use burn_stylecode::train::run::paper_model;
use burn_stylecode::train::step::{loss, Batch, TrainBase};
use burn_stylecode::train::{clip_grad_norm, AdamW, AdamWConfig, Grads};

mod common;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.to_string());
    let backend = arg(0, "cpu");
    let resolution: usize = arg(1, "256").parse().expect("RESOLUTION");
    let batch: usize = arg(2, "1").parse().expect("BATCH");
    let repeats: usize = arg(3, "5").parse().expect("REPEATS");
    let dtype = match arg(4, "f32").as_str() {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        other => panic!("dtype `{other}`: f32, bf16 or f16"),
    };
    let bench = Bench { backend: &backend, resolution, batch, repeats, dtype };
    match backend.as_str() {
        "cpu" => bench.run::<burn::backend::Autodiff<burn::backend::Flex>>(Default::default()),
        #[cfg(feature = "wgpu")]
        "wgpu" => bench.run::<burn::backend::Autodiff<burn::backend::Wgpu>>(Default::default()),
        #[cfg(feature = "cuda")]
        "cuda" => bench.run::<burn::backend::Autodiff<burn::backend::Cuda>>(Default::default()),
        other => panic!("backend `{other}` is not built in (cargo features `wgpu`, `cuda`)"),
    }
}

struct Bench<'a> {
    backend: &'a str,
    resolution: usize,
    batch: usize,
    repeats: usize,
    /// The frozen base's dtype (mixed precision when not f32).
    dtype: DType,
}

/// Casts every parameter of a randomly initialised module to one dtype.
struct CastTo(DType);

impl<B: Backend> ModuleMapper<B> for CastTo {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        Param::from_mapped_value(id, tensor.cast(self.0), mapper)
    }
}

impl Bench<'_> {
    fn run<B: AutodiffBackend>(&self, device: B::Device) {
        let base_config = UNetConfig::sd15();
        let unet: UNet2DConditionModel<B::InnerBackend> = base_config.init(&device).map(&mut CastTo(self.dtype));
        let base = TrainBase::<B>::new(unet, self.dtype, &SchedulerConfig::stable_diffusion_v1_5(), 0.18215, 0.0)
            .expect("the SD1.5 schedule");
        let config = StylecodesConfig::default();
        let ae_input = config.autoencoder.input_dim;
        let mut model = paper_model::<B>(&config, &base_config, 0, &device);
        let mut optim = AdamW::<B>::new(AdamWConfig::new().with_lr(1e-6).with_weight_decay(1e-2));

        let (n, side) = (self.batch, self.resolution / 8);
        let normal3 = |shape: [usize; 3]| Tensor::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let normal4 = || Tensor::random([n, 4, side, side], Distribution::Normal(0.0, 1.0), &device);
        // SigLIP base-patch16-224's penultimate features (196 tokens) and CLIP's context.
        let batch = Batch::<B::InnerBackend> {
            style_features: normal3([n, 196, ae_input]),
            context: normal3([n, 77, 768]),
            latent_mean: normal4(),
            latent_logvar: normal4() * 0.1 - 2.0,
            posterior_noise: normal4(),
            keep_style: Tensor::ones([n, 1], &device),
            timesteps: (0..n).map(|k| 100 + 700 * k / n.max(2)).collect(),
            noise: normal4(),
        };

        let step = || {
            let value = loss(&model, &base, &batch, 1.0);
            let reported = value.clone().inner().into_data().convert::<f32>().into_vec::<f32>().unwrap()[0];
            let mut grads = Grads::from_backward(value.backward(), &model);
            clip_grad_norm(&mut grads, 1.0).expect("finite gradients");
            model = optim.step(1e-6, model.clone(), grads);
            // Reading one parameter back waits for the device to finish.
            model.autoencoder.tgt_init.val().slice([0..1, 0..1]).into_data();
            reported
        };
        let (losses, seconds) = common::time_repeats(self.repeats, step);
        common::report(
            serde_json::json!({
                "impl": "burn",
                "backend": self.backend,
                "resolution": self.resolution,
                "batch": self.batch,
                "dtype": format!("{:?}", self.dtype).to_lowercase(),
                "losses": losses,
            }),
            &seconds,
        );
    }
}
