//! The crate's linear layer, in PyTorch's layout.
//!
//! Every checkpoint we load is PyTorch's, which stores a linear weight as
//! `[out, in]`. This layer keeps it so: weights load as they are stored,
//! with no transpose, and a weight already in the dtype asked for is used in
//! place from the memory-mapped file. The forward multiplies by the
//! weight's transposed view as one 2-D matmul, which every backend reads
//! without copying. (burn's `Linear` in `LinearLayout::Col` does the same
//! maths but reshapes the transposed weight to 3-D on each call, which
//! copies it: 10 s more per full-size UNet step on burn-flex.)

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::prelude::*;

/// Shape of a [`Linear`].
#[derive(Config, Debug)]
pub struct LinearConfig {
    pub d_input: usize,
    pub d_output: usize,
    #[config(default = true)]
    pub bias: bool,
    /// PyTorch's default: uniform in ±1/sqrt(d_input).
    #[config(default = "Initializer::KaimingUniform { gain: 1.0 / 3f64.sqrt(), fan_out_only: false }")]
    pub initializer: Initializer,
}

impl LinearConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> Linear<B> {
        let fans = (Some(self.d_input), Some(self.d_output));
        Linear {
            weight: self.initializer.init_with([self.d_output, self.d_input], fans.0, fans.1, device),
            bias: self.bias.then(|| self.initializer.init_with([self.d_output], fans.0, fans.1, device)),
        }
    }
}

/// Rows below which burn-flex's matmul is padded (gemm's general path
/// starts above 64 rows).
const MIN_GEMM_ROWS: usize = 128;

/// Rows per sample up to which burn-flex in f32 multiplies on
/// [`crate::nn::cpu::skinny`] (one pass over the weight) instead of gemm:
/// the tokens and pixels of a UNet's deep levels on small latents, the
/// time embedding.
const MAX_SKINNY_ROWS_PER_SAMPLE: usize = 16;
/// Rows up to which burn-flex in f32 multiplies on
/// [`crate::nn::cpu::split_gemm`] (one gemm per thread over its share of the
/// weight) instead of burn-flex's matmul, which packs a weight of ≤ 1280
/// output features on one thread first: SigLIP's 196 tokens, the text
/// context's keys and values, a UNet's small latents. Above it the two run
/// alike.
const MAX_SPLIT_ROWS: usize = 1024;

/// `x` [rows, in] with zero rows appended up to [`MIN_GEMM_ROWS`]: gemm
/// takes other paths (gemv; another k-blocking) for ≤ 64 rows, so padded,
/// every row sums in the same order in any batch.
fn padded_to_gemm_rows<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let [rows, d_input] = x.dims();
    match MIN_GEMM_ROWS.saturating_sub(rows) {
        0 => x,
        padding => {
            let zeros = Tensor::zeros([padding, d_input], (&x.device(), x.dtype()));
            Tensor::cat(vec![x, zeros], 0)
        }
    }
}

/// `y = x Wᵀ + b` over the last axis, with `W` stored `[out, in]`.
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> Linear<B> {
    /// `x` `[..., in]` → `[..., out]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let mut dims = x.dims();
        let d_input = dims[D - 1];
        let rows = x.shape().num_elements() / d_input.max(1);
        // Rows per sample (the first axis is the batch): the kernel is chosen
        // by them, not by the batch, so a sample's result is the same in any batch.
        let rows_per_sample = dims.get(1..D.saturating_sub(1)).map_or(1, |axes| axes.iter().product::<usize>());
        let x = x.reshape([rows, d_input]);
        let weight = self.weight.val();
        let y = if crate::nn::cpu::runs_here(&x)
            && crate::nn::cpu::runs_here(&weight)
            && rows_per_sample <= MAX_SKINNY_ROWS_PER_SAMPLE
            && crate::nn::cpu::skinny::pays()
        {
            let [d_output, _] = weight.dims();
            let (x, weight) = (crate::nn::cpu::to_flex(x), crate::nn::cpu::to_flex(weight));
            let values = crate::nn::cpu::skinny::rows_times_transposed(
                crate::nn::cpu::values(&x),
                rows,
                crate::nn::cpu::values(&weight),
                d_output,
                d_input,
            );
            crate::nn::cpu::from_values(values, [rows, d_output])
        } else if crate::nn::cpu::runs_here(&x) && crate::nn::cpu::runs_here(&weight) && rows <= MAX_SPLIT_ROWS {
            let [d_output, _] = weight.dims();
            let x = padded_to_gemm_rows(x);
            let padded = x.dims()[0];
            let (x, weight) = (crate::nn::cpu::to_flex(x), crate::nn::cpu::to_flex(weight));
            let mut values = crate::nn::cpu::split_gemm::rows_times_transposed(
                crate::nn::cpu::values(&x),
                padded,
                crate::nn::cpu::values(&weight),
                d_output,
                d_input,
            );
            values.truncate(rows * d_output);
            crate::nn::cpu::from_values(values, [rows, d_output])
        } else if crate::nn::cpu::is_flex::<B>() && rows < MIN_GEMM_ROWS {
            padded_to_gemm_rows(x).matmul(weight.transpose()).narrow(0, 0, rows)
        } else {
            x.matmul(weight.transpose())
        };
        let y = match &self.bias {
            Some(bias) => y + bias.val().unsqueeze::<2>(),
            None => y,
        };
        dims[D - 1] = self.weight.dims()[0];
        y.reshape(dims)
    }

    /// Per pixel, over the channels of `[a, b]` (two NCHW images of C
    /// channels, C·2 = the layer's width): the output's two channel halves,
    /// plus `[a, b]` itself when `residual`. burn-flex in f32 computes them
    /// straight from `a` and `b` ([`crate::nn::cpu::mix_halves`]) once there
    /// are more pixels than [`MAX_SKINNY_ROWS_PER_SAMPLE`]; below that, and
    /// elsewhere, the concatenation goes through [`Linear::forward`] as tokens.
    pub fn forward_channel_pair(&self, a: Tensor<B, 4>, b: Tensor<B, 4>, residual: bool) -> [Tensor<B, 4>; 2] {
        let [batch, channels, height, width] = a.dims();
        let pixels = height * width;
        if crate::nn::cpu::runs_here(&a)
            && crate::nn::cpu::runs_here(&b)
            && crate::nn::cpu::runs_here(&self.weight.val())
            && pixels > MAX_SKINNY_ROWS_PER_SAMPLE
            && b.dims() == a.dims()
            && self.weight.dims() == [2 * channels, 2 * channels]
        {
            let (a, b) = (crate::nn::cpu::to_flex(a), crate::nn::cpu::to_flex(b));
            let weight = crate::nn::cpu::to_flex(self.weight.val());
            let bias = self.bias.as_ref().map(|bias| crate::nn::cpu::to_flex(bias.val()));
            let shape = crate::nn::cpu::mix_halves::HalvesShape { batch, channels, pixels };
            let halves = crate::nn::cpu::mix_halves::mix_halves(
                crate::nn::cpu::values(&a),
                crate::nn::cpu::values(&b),
                crate::nn::cpu::values(&weight),
                bias.as_ref().map(crate::nn::cpu::values),
                residual,
                shape,
            );
            return halves.map(|half| crate::nn::cpu::from_values(half, [batch, channels, height, width]));
        }
        let both = crate::nn::image_to_tokens(Tensor::cat(vec![a, b], 1));
        let mut mixed = self.forward(both.clone());
        if residual {
            mixed = mixed + both;
        }
        let mut halves = crate::nn::tokens_to_image(mixed, height, width).chunk(2, 1).into_iter();
        [halves.next().expect("two halves"), halves.next().expect("two halves")]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    /// A row's result does not depend on how many rows share the call
    /// (`generate --batch-size` gives each image as alone; the time
    /// embedding has one row per sample).
    #[test]
    fn rows_give_the_same_values_in_any_batch() {
        let device = Default::default();
        for (rows, d_in, d_out) in
            [(1, 32, 128), (1, 320, 1280), (4, 1280, 1280), (16, 640, 96), (24, 32, 32), (70, 600, 64)]
        {
            let linear = LinearConfig::new(d_in, d_out).init::<Flex>(&device);
            let x = Tensor::<Flex, 3>::random([4, rows, d_in], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
            let alone = linear.forward(x.clone().narrow(0, 1, 1)).into_data();
            for batch in [2, 4] {
                let within = linear.forward(x.clone().narrow(0, 0, batch)).narrow(0, 1, 1).into_data();
                within.assert_eq(&alone, true);
            }
        }
    }

    /// Every kernel (few rows per sample; gemm split by weight rows, padded
    /// or not; burn-flex's gemm above MAX_SPLIT_ROWS) gives the plain matmul.
    #[test]
    fn gives_the_matmul_on_every_path() {
        let device = Default::default();
        for (batch, rows, d_in, d_out) in
            [(1, 1, 33, 70), (2, 4, 1280, 96), (3, 16, 47, 5), (2, 17, 40, 24), (1, 130, 16, 8), (2, 600, 24, 40)]
        {
            let linear = LinearConfig::new(d_in, d_out).init::<Flex>(&device);
            let x =
                Tensor::<Flex, 3>::random([batch, rows, d_in], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
            let expected = x.clone().matmul(linear.weight.val().transpose().unsqueeze::<3>())
                + linear.bias.as_ref().unwrap().val().unsqueeze::<3>();
            let worst = crate::nn::testing::max_abs_difference(linear.forward(x), expected);
            assert!(worst < 1e-5, "{batch}×{rows}×{d_in} → {d_out}: max error {worst}");
        }
        let linear = LinearConfig::new(9, 4).init::<Flex>(&device);
        let x = Tensor::<Flex, 2>::random([5, 9], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let expected =
            x.clone().matmul(linear.weight.val().transpose()) + linear.bias.as_ref().unwrap().val().unsqueeze();
        assert!(crate::nn::testing::max_abs_difference(linear.forward(x), expected) < 1e-5, "2-D input");
    }

    /// The channel-pair form equals the linear over the concatenation, with
    /// and without the residual, on both sides of the pixel bound, batch 1 too.
    #[test]
    fn channel_pair_is_the_linear_over_the_concatenation() {
        let device = Default::default();
        let normal = burn::tensor::Distribution::Normal(0.0, 1.0);
        for (batch, channels, height, width, residual) in
            [(1, 5, 7, 3, true), (2, 16, 5, 5, false), (2, 8, 2, 2, true), (1, 3, 4, 4, false)]
        {
            let linear = LinearConfig::new(2 * channels, 2 * channels).init::<Flex>(&device);
            let a = Tensor::<Flex, 4>::random([batch, channels, height, width], normal, &device);
            let b = Tensor::<Flex, 4>::random([batch, channels, height, width], normal, &device);
            let both = crate::nn::image_to_tokens(Tensor::cat(vec![a.clone(), b.clone()], 1));
            let mut expected = both.clone().matmul(linear.weight.val().transpose().unsqueeze::<3>())
                + linear.bias.as_ref().unwrap().val().unsqueeze::<3>();
            if residual {
                expected = expected + both;
            }
            let expected = crate::nn::tokens_to_image(expected, height, width).chunk(2, 1);
            for (got, want) in linear.forward_channel_pair(a, b, residual).into_iter().zip(expected) {
                let worst = crate::nn::testing::max_abs_difference(got, want);
                assert!(worst < 1e-5, "{batch}×{channels}×{height}×{width}: max error {worst}");
            }
        }
    }

    #[test]
    fn multiplies_by_the_transposed_pytorch_weight() {
        let device = Default::default();
        let mut linear = LinearConfig::new(3, 2).init::<Flex>(&device);
        // PyTorch layout [out = 2, in = 3].
        linear.weight = Param::from_tensor(Tensor::from_floats([[1.0, 2.0, 3.0], [-1.0, 0.0, 1.0]], &device));
        linear.bias = Some(Param::from_tensor(Tensor::from_floats([0.5, -0.5], &device)));
        let x = Tensor::<Flex, 3>::from_floats([[[1.0, 1.0, 1.0], [2.0, 0.0, -1.0]]], &device);
        let y = linear.forward(x).into_data().to_vec::<f32>().unwrap();
        assert_eq!(y, vec![6.5, -0.5, -0.5, -3.5]);
    }
}
