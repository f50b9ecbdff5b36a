//! Building blocks shared by several networks.

pub mod activation;
pub mod attention;
pub mod conv;
pub mod cpu;
pub mod dtype;
pub mod layout;
pub mod linear;
pub mod norm;

pub use activation::{geglu, gelu, gelu_tanh};
pub use conv::{conv2d, leading_inputs};
pub use cpu::on_workers;
pub use dtype::in_dtype;
pub use layout::{image_to_tokens, swap_dims_1_2, tokens_to_image, with_zero_channels};
pub use linear::{Linear, LinearConfig};
pub use norm::{GroupNorm, GroupNormConfig, LayerNorm, LayerNormConfig};

/// Helpers of the unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use burn::prelude::*;
    use burn::tensor::DType;

    /// max |a - b| over every value, in f32. Panics on a NaN or infinity,
    /// naming the first: burn-flex's `max` skips NaN, so a reduction on the
    /// device would let a NaN output pass.
    pub(crate) fn max_abs_difference<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f32 {
        let difference = (a.cast(DType::F32) - b.cast(DType::F32)).abs();
        let values = difference.into_data().convert::<f32>().into_vec::<f32>().unwrap();
        if let Some((index, value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            panic!("difference {index} is {value}: a compared value is not finite");
        }
        values.into_iter().fold(0.0, f32::max)
    }

    #[test]
    #[should_panic(expected = "difference 1 is NaN")]
    fn a_nan_fails_the_comparison() {
        let device = Default::default();
        let a = Tensor::<burn::backend::Flex, 1>::from_floats([1.0, f32::NAN, 2.0], &device);
        max_abs_difference(a.clone(), a.ones_like());
    }

    #[test]
    #[should_panic(expected = "difference 0 is inf")]
    fn an_infinity_fails_the_comparison() {
        let device = Default::default();
        let a = Tensor::<burn::backend::Flex, 1>::from_floats([f32::INFINITY, 1.0], &device);
        max_abs_difference(a.clone().ones_like(), a);
    }
}
