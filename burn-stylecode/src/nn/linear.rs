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
        } else if crate::nn::cpu::is_flex::<B>() && rows < MIN_GEMM_ROWS {
            // gemm takes other paths (gemv; another k-blocking) for ≤ 64
            // rows: padded, every row sums in the same order in any batch.
            let padding = Tensor::zeros([MIN_GEMM_ROWS - rows, d_input], (&x.device(), x.dtype()));
            Tensor::cat(vec![x, padding], 0).matmul(weight.transpose()).narrow(0, 0, rows)
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

    /// Both kernels (few rows per sample, and gemm) give the plain matmul.
    #[test]
    fn gives_the_matmul_on_every_path() {
        let device = Default::default();
        for (batch, rows, d_in, d_out) in
            [(1, 1, 33, 70), (2, 4, 1280, 96), (3, 16, 47, 5), (2, 17, 40, 24), (1, 130, 16, 8)]
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
