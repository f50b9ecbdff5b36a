//! Moving between image [B, C, H, W] and token [B, H·W, C] layouts.
//!
//! Every swap of dims 1 and 2 in the crate goes through [`swap_dims_1_2`].
//! burn-fusion 0.21 (wgpu, cuda) miscomputes a fused elementwise op
//! followed by a swap of a size-1 dimension and a reshape: on wgpu the
//! UNet's mid block at 1×1 pixels read zeros for all but one channel. Where
//! dim 1 or 2 has size 1 the swap does not change the element order, so a
//! reshape does the same job without the bug.

use burn::prelude::*;

/// `x.swap_dims(1, 2)`, done as a reshape when dim 1 or 2 has size 1.
pub fn swap_dims_1_2<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let mut dims = x.dims();
    if dims[1] == 1 || dims[2] == 1 {
        dims.swap(1, 2);
        x.reshape(dims)
    } else {
        x.swap_dims(1, 2)
    }
}

/// `x` [B, C, H, W] with `zeros` zero channels appended: [B, C + zeros, H, W].
pub fn with_zero_channels<B: Backend>(x: Tensor<B, 4>, zeros: usize) -> Tensor<B, 4> {
    if zeros == 0 {
        return x;
    }
    let [batch, _, height, width] = x.dims();
    let options = (&x.device(), x.dtype());
    Tensor::cat(vec![x, Tensor::zeros([batch, zeros, height, width], options)], 1)
}

/// [B, C, H, W] → [B, H·W, C]: every pixel a token.
pub fn image_to_tokens<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 3> {
    let [batch, channels, height, width] = x.dims();
    swap_on_cpu(x.reshape([batch, channels, height * width]))
}

/// [`swap_dims_1_2`] of [B, R, C], made contiguous by this crate's kernel on
/// burn-flex in f32 ([`super::cpu::layout`]).
fn swap_on_cpu<B: Backend>(x: Tensor<B, 3>) -> Tensor<B, 3> {
    let [batch, rows, cols] = x.dims();
    if !super::cpu::runs_here(&x) || rows == 1 || cols == 1 {
        return swap_dims_1_2(x);
    }
    let x = super::cpu::to_flex(x);
    let out = super::cpu::layout::transpose_last_two(super::cpu::values(&x), batch, rows, cols);
    super::cpu::from_values(out, [batch, cols, rows])
}

/// [B, H·W, C] → [B, C, H, W], the inverse of [`image_to_tokens`].
pub fn tokens_to_image<B: Backend>(tokens: Tensor<B, 3>, height: usize, width: usize) -> Tensor<B, 4> {
    let [batch, len, channels] = tokens.dims();
    assert_eq!(len, height * width, "{len} tokens for a {height}x{width} image");
    swap_on_cpu(tokens).reshape([batch, channels, height, width])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::Distribution;

    fn random<const D: usize>(shape: [usize; D]) -> Tensor<Flex, D> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
    }

    /// The reshape shortcut gives what `swap_dims` gives, for contiguous
    /// and already swapped inputs, with and without a size-1 dimension.
    #[test]
    fn swap_matches_swap_dims() {
        for shape in [[2, 1, 5, 3], [2, 5, 1, 3], [2, 1, 1, 3], [2, 4, 5, 3]] {
            let x = random(shape);
            let expected = x.clone().swap_dims(1, 2).into_data();
            swap_dims_1_2(x.clone()).into_data().assert_eq(&expected, true);
            let strided = x.clone().swap_dims(0, 3).swap_dims(0, 3) + 1.0;
            swap_dims_1_2(strided.clone()).into_data().assert_eq(&strided.swap_dims(1, 2).into_data(), true);
        }
    }

    #[test]
    fn tokens_round_trip_to_the_same_image() {
        for [h, w] in [[1, 1], [1, 4], [3, 1], [3, 4]] {
            let image = random([2, 6, h, w]);
            let tokens = image_to_tokens(image.clone());
            assert_eq!(tokens.dims(), [2, h * w, 6]);
            // Token p of image b is the channel vector at pixel p.
            let pixel = image.clone().slice([0..1, 0..6, h - 1..h, w - 1..w]).reshape([6]);
            let token = tokens.clone().slice([0..1, h * w - 1..h * w, 0..6]).reshape([6]);
            token.into_data().assert_eq(&pixel.into_data(), true);
            tokens_to_image(tokens, h, w).into_data().assert_eq(&image.into_data(), true);
        }
    }
}
