//! 2-D convolution: every `Conv2d` of the crate runs through [`conv2d`].

use burn::module::{Param, ParamId};
use burn::nn::conv::Conv2d;
use burn::nn::PaddingConfig2d;
use burn::prelude::*;

/// `conv.forward(x)`, on this crate's kernel ([`super::cpu::conv`]) for
/// burn-flex in f32 with explicit or no padding, groups 1 and dilation 1;
/// on burn's op otherwise (training, GPU backends, half precision).
pub fn conv2d<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let padding = match conv.padding {
        PaddingConfig2d::Explicit(top, left, bottom, right) => Some([top, left, bottom, right]),
        PaddingConfig2d::Valid => Some([0; 4]),
        PaddingConfig2d::Same => None,
    };
    let weight = conv.weight.val();
    let (Some(padding), true) = (padding, conv.groups == 1 && conv.dilation == [1, 1]) else {
        return conv.forward(x);
    };
    if !super::cpu::runs_here(&x) || weight.dtype() != x.dtype() {
        return conv.forward(x);
    }
    use super::cpu::{conv as kernel, flex_view, from_values, to_flex, values};
    let [batch, in_channels, height, width] = x.dims();
    let [out_channels, weight_in, kh, kw] = weight.dims();
    assert_eq!(weight_in, in_channels, "a conv over {weight_in} channels given {in_channels}");
    let shape = kernel::ConvShape {
        batch,
        in_channels,
        height,
        width,
        out_channels,
        kernel: [kh, kw],
        stride: conv.stride,
        padding,
    };
    let [out_h, out_w] = shape.output_size();
    let bias = conv.bias.as_ref().map(|bias| to_flex(bias.val()));
    let x = to_flex(x);
    let bias = bias.as_ref().map(values);
    let out = match kernel::inner_taps(&shape) {
        // Only the taps that meet the image (a few-pixel output): read from
        // the weight as it is, no contiguous copy of the whole.
        Some((window, windowed)) => {
            kernel::conv2d(values(&x), &kernel::window_weights(&flex_view(weight), window), bias, windowed)
        }
        None => kernel::conv2d(values(&x), values(&to_flex(weight)), bias, shape),
    };
    from_values(out, [batch, out_channels, out_h, out_w])
}

/// `conv` restricted to its first `channels` input channels (and its bias).
/// The weight is a view of `conv`'s: [`conv2d`] reads it in place on the
/// few-pixel path and copies the slice, O·channels·k² values, elsewhere,
/// against the convolution of the other channels it saves.
pub fn leading_inputs<B: Backend>(conv: &Conv2d<B>, channels: usize) -> Conv2d<B> {
    Conv2d {
        weight: Param::initialized(ParamId::new(), conv.weight.val().narrow(1, 0, channels)),
        bias: conv.bias.clone(),
        stride: conv.stride,
        kernel_size: conv.kernel_size,
        dilation: conv.dilation,
        groups: conv.groups,
        padding: conv.padding.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::testing::max_abs_difference;
    use burn::backend::Flex;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::Distribution;

    /// The kernel gives burn's convolution for the crate's configurations.
    #[test]
    fn gives_burns_convolution() {
        let device = Default::default();
        for (kernel, stride, padding, bias) in [
            (3, 1, PaddingConfig2d::Explicit(1, 1, 1, 1), true),
            (3, 2, PaddingConfig2d::Explicit(1, 1, 1, 1), true),
            (3, 2, PaddingConfig2d::Explicit(0, 0, 1, 1), false),
            (1, 1, PaddingConfig2d::Valid, true),
        ] {
            let conv: Conv2d<Flex> = Conv2dConfig::new([5, 7], [kernel, kernel])
                .with_stride([stride, stride])
                .with_padding(padding.clone())
                .with_bias(bias)
                .init(&device);
            let x = Tensor::<Flex, 4>::random([2, 5, 9, 6], Distribution::Normal(0.0, 1.0), &device);
            let difference = max_abs_difference(conv.forward(x.clone()), conv2d(&conv, x));
            assert!(difference < 1e-5, "{kernel}x{kernel} stride {stride} {padding:?}: {difference}");
        }
    }

    /// Over 1×1 and 2×2 images only some taps meet the image: the kernel
    /// reads those from the weight (here a narrowed view, as the style
    /// branch passes), and still gives burn's.
    #[test]
    fn gives_burns_convolution_from_the_taps_that_meet_the_image() {
        let device = Default::default();
        for (stride, side, batch) in [(1, 1, 1), (1, 1, 2), (2, 2, 2), (1, 2, 3)] {
            let conv: Conv2d<Flex> = Conv2dConfig::new([9, 7], [3, 3])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(&device);
            let narrowed = leading_inputs(&conv, 5);
            let x = Tensor::<Flex, 4>::random([batch, 5, side, side], Distribution::Normal(0.0, 1.0), &device);
            let difference = max_abs_difference(narrowed.forward(x.clone()), conv2d(&narrowed, x));
            assert!(difference < 1e-5, "stride {stride} over {side}²: {difference}");
        }
    }

    /// A 3×3 conv over a large image takes the Winograd path, and still gives burn's.
    #[test]
    fn gives_burns_convolution_on_the_winograd_path() {
        let device = Default::default();
        let conv: Conv2d<Flex> =
            Conv2dConfig::new([16, 8], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init(&device);
        let x = Tensor::<Flex, 4>::random([2, 16, 33, 34], Distribution::Normal(0.0, 1.0), &device);
        let shape = crate::nn::cpu::conv::ConvShape {
            batch: 2,
            in_channels: 16,
            height: 33,
            width: 34,
            out_channels: 8,
            kernel: [3, 3],
            stride: [1, 1],
            padding: [1; 4],
        };
        assert!(crate::nn::cpu::winograd::applies(&shape));
        let difference = max_abs_difference(conv.forward(x.clone()), conv2d(&conv, x));
        assert!(difference < 1e-5, "{difference}");
    }
}
