//! diffusers' `ResnetBlock2D`, `Downsample2D` and `Upsample2D`.

use crate::nn::{conv2d, GroupNorm, GroupNormConfig, Linear, LinearConfig};
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
        let mut h = conv2d(&self.conv1, self.norm1.forward_silu(x.clone()));
        if let (Some(proj), Some(temb)) = (&self.time_emb_proj, temb) {
            h = h + proj.forward(silu(temb.clone())).unsqueeze_dims::<4>(&[2, 3]);
        }
        let h = conv2d(&self.conv2, self.dropout.forward(self.norm2.forward_silu(h)));
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv2d(conv, x),
            None => x,
        };
        let out = shortcut + h;
        if self.output_scale_factor == 1.0 {
            out
        } else {
            out / self.output_scale_factor
        }
    }
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
