//! Activations whose gradient burn 0.21 gets wrong on some backends.

use burn::prelude::*;
use burn::tensor::activation;

/// GELU, exact (erf), as PyTorch's `F.gelu`. Under autodiff it is composed
/// from `erf`, so its gradient is exact on every backend: burn 0.21's
/// default `gelu_backward` is the derivative of the tanh approximation
/// (only burn-flex overrides it), which would skew training on wgpu and CUDA.
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    if B::ad_enabled(&x.device()) {
        (x.clone() * ((x / std::f64::consts::SQRT_2).erf() + 1.0)) * 0.5
    } else {
        activation::gelu(x)
    }
}

/// GELU's tanh approximation (`gelu_pytorch_tanh`), on this crate's kernel
/// for burn-flex in f32 ([`super::cpu::gelu`]), burn's composition elsewhere.
pub fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    if super::cpu::runs_here(&x) {
        let dims = x.dims();
        let x = super::cpu::to_flex(x);
        return super::cpu::from_values(super::cpu::gelu::gelu_tanh(super::cpu::values(&x)), dims);
    }
    activation::gelu_approximate(x)
}

/// GEGLU's activation: `value · gelu(gate)` of the two halves of the last
/// dimension, on this crate's kernel for burn-flex in f32
/// ([`super::cpu::geglu`], the same arithmetic in one pass).
pub fn geglu<B: Backend>(x: Tensor<B, 3>) -> Tensor<B, 3> {
    let [batch, len, width] = x.dims();
    if super::cpu::runs_here(&x) && width.is_multiple_of(2) {
        let x = super::cpu::to_flex(x);
        return super::cpu::from_values(
            super::cpu::geglu::geglu(super::cpu::values(&x), width / 2),
            [batch, len, width / 2],
        );
    }
    let mut halves = x.chunk(2, 2);
    let gate = halves.pop().expect("two halves");
    let value = halves.pop().expect("two halves");
    value * gelu(gate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};

    #[test]
    fn gradient_is_the_exact_derivative() {
        let points = [-3.0f32, -1.0, -0.3, 0.0, 0.5, 2.0];
        let x = Tensor::<Autodiff<Flex>, 1>::from_floats(points, &Default::default()).require_grad();
        let y = gelu(x.clone());
        let grads = y.clone().sum().backward();
        let grad = x.grad(&grads).unwrap().into_data().into_vec::<f32>().unwrap();
        let forward = y.inner().into_data().into_vec::<f32>().unwrap();
        for ((&p, &g), &f) in points.iter().zip(&grad).zip(&forward) {
            let (p, pi) = (f64::from(p), std::f64::consts::PI);
            let cdf = 0.5 * (1.0 + erf(p / std::f64::consts::SQRT_2));
            let exact = cdf + p * (-p * p / 2.0).exp() / (2.0 * pi).sqrt();
            assert!((f64::from(g) - exact).abs() < 1e-5, "gelu'({p}) = {g}, exact {exact}");
            assert!((f64::from(f) - p * cdf).abs() < 1e-5, "gelu({p}) = {f}");
        }
    }

    /// The kernel gives burn's composition bit for bit.
    #[test]
    fn geglu_kernel_is_the_generic_composition() {
        let x =
            Tensor::<Flex, 3>::random([2, 5, 14], burn::tensor::Distribution::Normal(0.0, 2.0), &Default::default());
        let mut halves = x.clone().chunk(2, 2);
        let gate = halves.pop().unwrap();
        let expected = halves.pop().unwrap() * gelu(gate);
        geglu(x).into_data().assert_eq(&expected.into_data(), true);
    }

    /// The kernel gives burn's composition, over a strided view and an odd length.
    #[test]
    fn gelu_tanh_kernel_is_burns_composition() {
        let x =
            Tensor::<Flex, 3>::random([3, 7, 11], burn::tensor::Distribution::Normal(0.0, 3.0), &Default::default());
        let x = x.swap_dims(1, 2);
        let expected = activation::gelu_approximate(x.clone());
        let got = gelu_tanh(x);
        assert_eq!(got.dims(), [3, 11, 7]);
        let worst = crate::nn::testing::max_abs_difference(got, expected);
        assert!(worst < 2e-6, "max difference {worst}");
    }

    /// Abramowitz–Stegun 7.1.26 is not exact enough; this series is (|x| ≤ 3).
    fn erf(x: f64) -> f64 {
        let mut term = x;
        let mut sum = x;
        for n in 1..80 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }
}
