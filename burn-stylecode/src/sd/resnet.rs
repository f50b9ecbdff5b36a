//! diffusers' `ResnetBlock2D`, `Downsample2D` and `Upsample2D`.

use crate::nn::{
    conv2d, in_dtype, leading_inputs, with_zero_channels, GroupNorm, GroupNormConfig, Linear, LinearConfig,
};
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Dropout, DropoutConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::silu;

/// A 3x3 convolution keeping the spatial size.
pub(crate) fn conv3x3<B: Backend>(in_channels: usize, out_channels: usize, device: &B::Device) -> Conv2d<B> {
    Conv2dConfig::new([in_channels, out_channels], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(device)
}

/// A 1x1 convolution (a per-pixel linear map).
pub(crate) fn conv1x1<B: Backend>(in_channels: usize, out_channels: usize, device: &B::Device) -> Conv2d<B> {
    Conv2dConfig::new([in_channels, out_channels], [1, 1]).init(device)
}

/// A convolution of odd kernel size `kernel`, keeping the spatial size.
pub(crate) fn conv_same<B: Backend>(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    device: &B::Device,
) -> Conv2d<B> {
    let pad = (kernel - 1) / 2;
    Conv2dConfig::new([in_channels, out_channels], [kernel, kernel])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .init(device)
}

/// Shape of a [`ResnetBlock2D`].
#[derive(Config, Debug)]
pub struct ResnetBlock2DConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Width of the time embedding; `None` (the VAE) has no `time_emb_proj`.
    pub temb_channels: Option<usize>,
    /// Groups of both group norms.
    pub groups: usize,
    /// Epsilon of both group norms (1e-5 in the SD1.5 UNet, 1e-6 in the VAE).
    #[config(default = 1e-6)]
    pub eps: f64,
    #[config(default = 0.0)]
    pub dropout: f64,
    /// The output is divided by this.
    #[config(default = 1.0)]
    pub output_scale_factor: f64,
}

impl ResnetBlock2DConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> ResnetBlock2D<B> {
        let norm = |channels| GroupNormConfig::new(self.groups, channels).with_epsilon(self.eps).init(device);
        ResnetBlock2D {
            norm1: norm(self.in_channels),
            conv1: conv3x3(self.in_channels, self.out_channels, device),
            time_emb_proj: self.temb_channels.map(|t| LinearConfig::new(t, self.out_channels).init(device)),
            norm2: norm(self.out_channels),
            dropout: DropoutConfig::new(self.dropout).init(),
            conv2: conv3x3(self.out_channels, self.out_channels, device),
            conv_shortcut: (self.in_channels != self.out_channels)
                .then(|| conv1x1(self.in_channels, self.out_channels, device)),
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            output_scale_factor: self.output_scale_factor,
        }
    }
}

/// `shortcut(x) + conv2(dropout(silu(norm2(conv1(silu(norm1(x))) + proj(silu(temb))))))`,
/// the shortcut being a 1x1 convolution when the width changes.
#[derive(Module, Debug)]
pub struct ResnetBlock2D<B: Backend> {
    pub norm1: GroupNorm<B>,
    pub conv1: Conv2d<B>,
    pub time_emb_proj: Option<Linear<B>>,
    pub norm2: GroupNorm<B>,
    pub dropout: Dropout,
    pub conv2: Conv2d<B>,
    pub conv_shortcut: Option<Conv2d<B>>,
    pub in_channels: usize,
    pub out_channels: usize,
    pub output_scale_factor: f64,
}

impl<B: Backend> ResnetBlock2D<B> {
    /// `x` [B, in, H, W], `temb` [B, temb_channels] → [B, out, H, W].
    /// `temb` is ignored by a block without a time projection.
    pub fn forward(&self, x: Tensor<B, 4>, temb: Option<&Tensor<B, 2>>) -> Tensor<B, 4> {
        let h = conv2d(&self.conv1, self.norm1.forward_silu(x.clone()));
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv2d(conv, x),
            None => x,
        };
        self.after_conv1(h, shortcut, temb)
    }

    /// [`Self::forward`] of `cat([head, 0^zeros], 1)`, given `head` [B, c_h, H, W]
    /// with `c_h + zeros = in_channels`, without convolving the zeros: the
    /// style control branch's up sub-blocks see zeros where the base sees
    /// its skips, about an eighth of the branch's work.
    ///
    /// After norm1 and SiLU each zero channel is a constant field (see
    /// [`GroupNorm::forward_silu_zero_tail`]); conv1 of it is a small
    /// product spread over the image by [`conv_of_constant_channels`], and
    /// the shortcut's 1x1 conv of zeros is nothing. Only the summation order
    /// differs from `forward`.
    pub(crate) fn forward_zero_tail(
        &self,
        head: Tensor<B, 4>,
        zeros: usize,
        temb: Option<&Tensor<B, 2>>,
    ) -> Tensor<B, 4> {
        let [_, head_channels, height, width] = head.dims();
        assert_eq!(
            head_channels + zeros,
            self.in_channels,
            "{head_channels} + {zeros} channels into a resnet of other width"
        );
        if zeros == 0 || head_channels == 0 {
            return self.forward(with_zero_channels(head, zeros), temb);
        }
        let (normed, constants) = self.norm1.forward_silu_zero_tail(head.clone(), zeros);
        let h = conv2d(&leading_inputs(&self.conv1, head_channels), normed)
            + conv_of_constant_channels(&self.conv1, constants, head_channels, [height, width]);
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv2d(&leading_inputs(conv, head_channels), head),
            None => with_zero_channels(head, zeros),
        };
        self.after_conv1(h, shortcut, temb)
    }

    /// The block from conv1's output `h` on, `shortcut` the shortcut's output.
    fn after_conv1(&self, h: Tensor<B, 4>, shortcut: Tensor<B, 4>, temb: Option<&Tensor<B, 2>>) -> Tensor<B, 4> {
        let mut h = h;
        if let (Some(proj), Some(temb)) = (&self.time_emb_proj, temb) {
            h = h + proj.forward(silu(temb.clone())).unsqueeze_dims::<4>(&[2, 3]);
        }
        let h = conv2d(&self.conv2, self.dropout.forward(self.norm2.forward_silu(h)));
        let out = shortcut + h;
        if self.output_scale_factor == 1.0 {
            out
        } else {
            out / self.output_scale_factor
        }
    }
}

/// `conv`'s input channels from `first` on, each the constant `values[b, c]`
/// over an image of `[height, width]`, convolved without `conv`'s bias.
///
/// Every output pixel sums the taps that fall inside the image (the padding
/// is zeros): with `A[b, o, t] = Σ_c values[b, c] · W[o, first + c, t]`, the
/// output at pixel `p` is `Σ_t A[b, o, t] · inside[t, p]`. Two products: one
/// over the channels, one over the k² taps.
fn conv_of_constant_channels<B: Backend>(
    conv: &Conv2d<B>,
    values: Tensor<B, 2>,
    first: usize,
    [height, width]: [usize; 2],
) -> Tensor<B, 4> {
    let [top, left, bottom, right] = match conv.padding {
        PaddingConfig2d::Explicit(top, left, bottom, right) => [top, left, bottom, right],
        PaddingConfig2d::Valid => [0; 4],
        PaddingConfig2d::Same => panic!("the resnet's convolutions have explicit padding"),
    };
    assert_eq!(conv.groups, 1, "the resnet's convolutions are not grouped");
    let [batch, channels] = values.dims();
    let [out_channels, in_channels, kh, kw] = conv.weight.dims();
    let taps = kh * kw;
    let dtype = values.dtype();
    // [O, C, k²] is a free reshape; its slice [O, channels, k²] a view.
    let weight =
        in_dtype(conv.weight.val(), dtype).reshape([out_channels, in_channels, taps]).narrow(1, first, channels);
    // Per sample and output channel, [1, channels] · [channels, k²]: each
    // product has the same shape at any batch size, so a sample's values do
    // not depend on its batch (a product over the batch's rows would).
    let per_tap = values.reshape([batch, 1, 1, channels]).matmul(weight.unsqueeze::<4>());
    let per_tap = per_tap.reshape([batch, out_channels, taps]);
    let out_size = |size: usize, before: usize, after: usize, k: usize, stride: usize, dilation: usize| {
        (size + before + after - dilation * (k - 1) - 1) / stride + 1
    };
    let [stride_y, stride_x] = conv.stride;
    let [dilation_y, dilation_x] = conv.dilation;
    let out_h = out_size(height, top, bottom, kh, stride_y, dilation_y);
    let out_w = out_size(width, left, right, kw, stride_x, dilation_x);
    // Whether tap `i` of output row `y` reads a row inside the image.
    let inside = |y: usize, i: usize, stride: usize, dilation: usize, before: usize, size: usize| {
        (y * stride + i * dilation).checked_sub(before).is_some_and(|row| row < size)
    };
    let mut mask = Vec::with_capacity(taps * out_h * out_w);
    for i in 0..kh {
        for j in 0..kw {
            for y in 0..out_h {
                let row = inside(y, i, stride_y, dilation_y, top, height);
                mask.extend(
                    (0..out_w).map(|x| f32::from(u8::from(row && inside(x, j, stride_x, dilation_x, left, width)))),
                );
            }
        }
    }
    let mask = Tensor::<B, 2>::from_data(TensorData::new(mask, [taps, out_h * out_w]), (&per_tap.device(), dtype));
    per_tap.matmul(mask.unsqueeze::<3>()).reshape([batch, out_channels, out_h, out_w])
}

/// Shape of a [`Downsample2D`].
#[derive(Config, Debug)]
pub struct Downsample2DConfig {
    pub channels: usize,
    /// 1: symmetric padding (UNet). 0: pad one row and column at the
    /// bottom/right only, as diffusers does for the VAE.
    #[config(default = 1)]
    pub padding: usize,
}

impl Downsample2DConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> Downsample2D<B> {
        let p = self.padding;
        let conv = Conv2dConfig::new([self.channels, self.channels], [3, 3])
            .with_stride([2, 2])
            .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
            .init(device);
        Downsample2D { conv, pad_bottom_right: p == 0 }
    }
}

/// A stride-2 3x3 convolution: H → ceil(H/2) with padding 1, floor(H/2) with the VAE's.
#[derive(Module, Debug)]
pub struct Downsample2D<B: Backend> {
    pub conv: Conv2d<B>,
    /// The VAE's padding: one zero row and column at the bottom and right.
    pub pad_bottom_right: bool,
}

impl<B: Backend> Downsample2D<B> {
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        if !self.pad_bottom_right {
            return conv2d(&self.conv, x);
        }
        // Padded here rather than by burn's asymmetric conv padding, whose
        // zeros are made in the default float type (f32) whatever `x` is.
        let [batch, channels, height, width] = x.dims();
        let options = (&x.device(), x.dtype());
        let x = Tensor::cat(vec![x, Tensor::zeros([batch, channels, height, 1], options)], 3);
        let x = Tensor::cat(vec![x, Tensor::zeros([batch, channels, 1, width + 1], options)], 2);
        conv2d(&self.conv, x)
    }
}

/// Shape of an [`Upsample2D`].
#[derive(Config, Debug)]
pub struct Upsample2DConfig {
    pub channels: usize,
}

impl Upsample2DConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> Upsample2D<B> {
        Upsample2D { conv: conv3x3(self.channels, self.channels, device) }
    }
}

/// Nearest-neighbour upsampling, then a 3x3 convolution.
#[derive(Module, Debug)]
pub struct Upsample2D<B: Backend> {
    pub conv: Conv2d<B>,
}

impl<B: Backend> Upsample2D<B> {
    /// To `size` [H, W] if given (the next skip's size, for latents whose
    /// sides are not multiples of 8), else ×2.
    pub fn forward(&self, x: Tensor<B, 4>, size: Option<[usize; 2]>) -> Tensor<B, 4> {
        let [_, _, h, w] = x.dims();
        let size = size.unwrap_or([2 * h, 2 * w]);
        conv2d(&self.conv, upsample_nearest(x, size))
    }
}

/// PyTorch's `interpolate(mode="nearest")` to `[out_h, out_w]`: output
/// index `o` reads input index `min(floor(o · (in/out)), in - 1)`, the scale
/// computed in f32 as PyTorch does.
pub fn upsample_nearest<B: Backend>(x: Tensor<B, 4>, [out_h, out_w]: [usize; 2]) -> Tensor<B, 4> {
    let [_, _, h, w] = x.dims();
    let x = resample_axis(x, 2, h, out_h);
    resample_axis(x, 3, w, out_w)
}

fn resample_axis<B: Backend>(x: Tensor<B, 4>, dim: usize, size_in: usize, size_out: usize) -> Tensor<B, 4> {
    if size_in == size_out {
        return x;
    }
    let scale = size_in as f32 / size_out as f32;
    let indices: Vec<i64> = (0..size_out)
        .map(|o| {
            let i = if size_out == 2 * size_in { o / 2 } else { (o as f32 * scale).floor() as usize };
            i.min(size_in - 1) as i64
        })
        .collect();
    let indices = Tensor::<B, 1, Int>::from_data(TensorData::new(indices, [size_out]), &x.device());
    x.select(dim, indices)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::module::{ModuleVisitor, Param};
    use burn::tensor::backend::AutodiffBackend;
    use burn::tensor::{DType, Distribution};

    /// max |a − b| / max |b|, in f32; fails on a non-finite value.
    pub(crate) fn relative_error<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f32 {
        let scale = b.clone().cast(DType::F32).abs().max().into_scalar().elem::<f32>();
        crate::nn::testing::max_abs_difference(a, b) / scale.max(f32::MIN_POSITIVE)
    }

    fn random<B: Backend, const D: usize>(shape: [usize; D], dtype: DType) -> Tensor<B, D> {
        Tensor::<B, D>::random(shape, Distribution::Normal(0.0, 1.0), &Default::default()).cast(dtype)
    }

    /// Adds noise to a parameter (keeping whether it trains): with the
    /// defaults (γ = 1, β = 0) a zero channel's constant would often be 0.
    fn jitter<B: Backend, const D: usize>(param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        param.map(|t| {
            let trains = t.is_require_grad();
            (t.clone() + t.random_like(Distribution::Normal(0.0, 0.3))).detach().set_require_grad(trains)
        })
    }

    /// A block over `channels` inputs: random weights, noisy norms and biases.
    fn block<B: Backend>(channels: usize, out: usize, groups: usize, temb: bool, dtype: DType) -> ResnetBlock2D<B> {
        let config =
            ResnetBlock2DConfig::new(channels, out, groups).with_eps(1e-5).with_temb_channels(temb.then_some(6));
        let mut block = config.init::<B>(&Default::default());
        for norm in [&mut block.norm1, &mut block.norm2] {
            norm.gamma = jitter(norm.gamma.clone());
            norm.beta = jitter(norm.beta.clone());
        }
        let convs = [Some(&mut block.conv1), Some(&mut block.conv2), block.conv_shortcut.as_mut()];
        for conv in convs.into_iter().flatten() {
            conv.bias = conv.bias.clone().map(jitter);
        }
        block.map(&mut CastTo(dtype))
    }

    /// Casts every parameter to a dtype, keeping whether it trains.
    pub(crate) struct CastTo(pub(crate) DType);

    impl<B: Backend> burn::module::ModuleMapper<B> for CastTo {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let dtype = self.0;
            param.map(|t| {
                let trains = t.is_require_grad();
                t.cast(dtype).detach().set_require_grad(trains)
            })
        }
    }

    /// (head channels, zeros, groups, out channels): groups straddling the
    /// head's end (by 1 and by several channels), groups of zeros only, a
    /// head that ends on a group boundary, and one group for all.
    const SHAPES: [(usize, usize, usize, usize); 5] =
        [(7, 5, 4, 8), (10, 14, 8, 16), (8, 4, 4, 12), (1, 5, 2, 4), (5, 4, 1, 3)];

    /// `[batch, height, width]`: H ≠ W, a single pixel, a single row.
    const GRIDS: [[usize; 3]; 4] = [[1, 5, 3], [2, 4, 7], [2, 1, 1], [1, 1, 6]];

    #[test]
    fn zero_tail_gives_the_block_on_the_zero_padded_input() {
        for (head_channels, zeros, groups, out) in SHAPES {
            for temb in [false, true] {
                let block = block::<Flex>(head_channels + zeros, out, groups, temb, DType::F32);
                for [batch, height, width] in GRIDS {
                    let head = random::<Flex, 4>([batch, head_channels, height, width], DType::F32);
                    let temb = temb.then(|| random::<Flex, 2>([batch, 6], DType::F32));
                    let expected = block.forward(with_zero_channels(head.clone(), zeros), temb.as_ref());
                    let got = block.forward_zero_tail(head, zeros, temb.as_ref());
                    let error = relative_error(got, expected);
                    let case = (head_channels, zeros, groups, batch, height, width);
                    assert!(error <= 1e-5, "{case:?}: relative error {error:e}");
                }
            }
        }
    }

    #[test]
    fn zero_tail_in_half_precision_follows_the_zero_padded_input() {
        for dtype in [DType::F16, DType::BF16] {
            let (head_channels, zeros, groups, out) = SHAPES[1];
            let block = block::<Flex>(head_channels + zeros, out, groups, true, dtype);
            let head = random::<Flex, 4>([2, head_channels, 4, 7], dtype);
            let temb = random::<Flex, 2>([2, 6], dtype);
            let expected = block.forward(with_zero_channels(head.clone(), zeros), Some(&temb));
            let got = block.forward_zero_tail(head, zeros, Some(&temb));
            assert_eq!(got.dtype(), dtype);
            // A few roundings of the dtype (2⁻¹¹ in f16, 2⁻⁸ in bf16) on O(1) values.
            let tolerance = if dtype == DType::F16 { 4e-3 } else { 1.5e-2 };
            let error = relative_error(got, expected);
            assert!(error <= tolerance, "{dtype:?}: relative error {error:e}");
        }
    }

    /// A sample's output does not depend on its batch, bit for bit
    /// (`generate --batch-size` promises each image as made alone).
    #[test]
    fn zero_tail_is_batch_invariant() {
        let (head_channels, zeros) = (64, 32);
        let block = block::<Flex>(head_channels + zeros, 64, 32, true, DType::F32);
        let head = random::<Flex, 4>([3, head_channels, 9, 7], DType::F32);
        let temb = random::<Flex, 2>([3, 6], DType::F32);
        let batched = block.forward_zero_tail(head.clone(), zeros, Some(&temb)).narrow(0, 1, 1);
        let alone = block.forward_zero_tail(head.narrow(0, 1, 1), zeros, Some(&temb.narrow(0, 1, 1)));
        assert!(batched.equal(alone).all().into_scalar());
    }

    /// Every parameter that trains through the zero-padded input gets the
    /// same gradient through the zero tail, and so does the head.
    ///
    /// In f64: this checks the algebra. A gradient such as norm1.gamma's is a
    /// sum of 15–30 products that can cancel, so in f32 the two summation
    /// orders differed by up to 5e-5 of the largest gradient (300 random draws),
    /// and by more on a rare draw. In f64 that rounding is ~1e-13, below the
    /// f32 comparison's own 1e-7.
    #[test]
    fn zero_tail_gives_the_same_gradients() {
        type A = Autodiff<Flex>;
        let dtype = DType::F64;
        for (head_channels, zeros, groups, out) in SHAPES {
            let block = block::<A>(head_channels + zeros, out, groups, true, dtype);
            let [batch, height, width] = [2, 3, 5];
            let head = random::<A, 4>([batch, head_channels, height, width], dtype).require_grad();
            let temb = random::<A, 2>([batch, 6], dtype);
            let weights = random::<A, 4>([batch, out, height, width], dtype);
            let gradients = |zero_tail: bool| {
                let out = match zero_tail {
                    true => block.forward_zero_tail(head.clone(), zeros, Some(&temb)),
                    false => block.forward(with_zero_channels(head.clone(), zeros), Some(&temb)),
                };
                let grads = (out * weights.clone()).sum().backward();
                let mut all = gradients_by_path(&block, &grads);
                all.push(("head".into(), head.grad(&grads).expect("the head trains").reshape([-1])));
                all
            };
            let (got, expected) = (gradients(true), gradients(false));
            let paths: Vec<&str> = expected.iter().map(|(path, _)| path.as_str()).collect();
            let mut wanted = vec!["norm1.gamma", "norm1.beta", "conv1.weight", "conv1.bias", "conv2.weight", "head"];
            if block.conv_shortcut.is_some() {
                wanted.extend(["conv_shortcut.weight", "conv_shortcut.bias"]);
            }
            assert!(wanted.iter().all(|path| paths.contains(path)), "{paths:?}");
            assert_eq!(got.iter().map(|(path, _)| path.as_str()).collect::<Vec<_>>(), paths);
            for ((path, got), (_, expected)) in got.into_iter().zip(expected) {
                assert_eq!(got.dtype(), dtype, "{path}");
                let error = relative_error(got, expected);
                assert!(error <= 1e-6, "{:?}: {path}: relative error {error:e}", (head_channels, zeros, groups));
            }
        }
    }

    /// Each parameter's gradient, flattened, by its path in `module`.
    pub(crate) fn gradients_by_path<B: AutodiffBackend, M: Module<B>>(
        module: &M,
        grads: &B::Gradients,
    ) -> Vec<(String, Tensor<B::InnerBackend, 1>)> {
        let mut visitor = GradientsByPath { path: Vec::new(), grads, out: Vec::new() };
        module.visit(&mut visitor);
        visitor.out
    }

    struct GradientsByPath<'a, B: AutodiffBackend> {
        path: Vec<String>,
        grads: &'a B::Gradients,
        out: Vec<(String, Tensor<B::InnerBackend, 1>)>,
    }

    impl<B: AutodiffBackend> ModuleVisitor<B> for GradientsByPath<'_, B> {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(grad) = param.val().grad(self.grads) {
                self.out.push((self.path.join("."), grad.reshape([-1])));
            }
        }
    }

    /// The constant-channel convolution against burn's convolution of an
    /// image whose channels are those constants behind zeros, for padded,
    /// asymmetrically padded, strided and 1x1 kernels.
    #[test]
    fn constant_channels_convolve_as_their_image() {
        let device = Default::default();
        let configs = [
            Conv2dConfig::new([9, 4], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)),
            Conv2dConfig::new([9, 4], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).with_stride([2, 2]),
            Conv2dConfig::new([9, 4], [3, 2]).with_padding(PaddingConfig2d::Explicit(2, 0, 1, 1)),
            Conv2dConfig::new([9, 4], [1, 1]),
        ];
        for config in configs {
            let conv: Conv2d<Flex> = config.with_bias(false).init(&device);
            for [height, width] in [[5, 3], [1, 1], [2, 7]] {
                let (first, channels, batch) = (3, 6, 2);
                let values = random::<Flex, 2>([batch, channels], DType::F32);
                let image = values.clone().reshape([batch, channels, 1, 1]).expand([batch, channels, height, width]);
                let leading = Tensor::zeros([batch, first, height, width], &device);
                let expected = conv.forward(Tensor::cat(vec![leading, image], 1));
                let got = conv_of_constant_channels(&conv, values, first, [height, width]);
                let error = relative_error(got, expected);
                assert!(error <= 1e-5, "{:?} over {height}x{width}: relative error {error:e}", conv.kernel_size);
            }
        }
    }
}
