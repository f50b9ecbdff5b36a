//! 2-D convolution on the CPU in the NCHW layout, as im2col + one gemm per
//! block of output rows, with the weight used as stored.
//!
//! burn-flex 0.21 re-lays out the whole weight on every call (one thread,
//! 541 M elements per SD1.5 UNet step), converts the input to NHWC, and
//! scatters the result back. Here the PyTorch weight [C_out, C_in·kh·kw]
//! is already the gemm's left matrix: the columns are gathered in the
//! same (c_in, dy, dx) order, the output lands in NCHW, and the bias is the
//! gemm's initial value. 1×1 convolutions read the input in place. 3×3
//! stride-1 convolutions over large images go to [`super::winograd`], and
//! outputs of a few pixels per image to [`super::skinny`] (one pass over
//! the weight for the whole batch). Where a kernel overhangs a tiny image
//! on every side (3×3 over 1×1), [`inner_taps`] finds the taps that meet it
//! and [`window_weights`] keeps their weights: the rest multiply padding.

use super::matmul::{self, Strided};
use super::SharedMut;
use burn_flex::FlexTensor;
use gemm::Parallelism;
use rayon::prelude::*;
use std::sync::Arc;

/// Column-matrix elements per block (16 MiB in f32): bounds the extra
/// memory while keeping each gemm large.
const MAX_COLUMN_ELEMENTS: usize = 1 << 22;

/// Output pixels per image up to which the convolution is a few patch rows
/// times the weight ([`super::skinny`]). The choice depends on the image,
/// not the batch, so each image's result is the same in any batch.
const MAX_SKINNY_PIXELS: usize = 16;

/// Shapes of one convolution (groups 1, dilation 1).
#[derive(Debug, Clone, Copy)]
pub struct ConvShape {
    pub batch: usize,
    pub in_channels: usize,
    pub height: usize,
    pub width: usize,
    pub out_channels: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    /// Zero padding: top, left, bottom, right.
    pub padding: [usize; 4],
}

impl ConvShape {
    /// The output's [height, width].
    pub fn output_size(&self) -> [usize; 2] {
        let [top, left, bottom, right] = self.padding;
        let out = |size: usize, before: usize, after: usize, kernel: usize, stride: usize| {
            (size + before + after).checked_sub(kernel).map_or(0, |span| span / stride + 1)
        };
        [
            out(self.height, top, bottom, self.kernel[0], self.stride[0]),
            out(self.width, left, right, self.kernel[1], self.stride[1]),
        ]
    }
}

/// The taps of a kernel that meet the image at some output pixel: kernel
/// rows `rows[0]..rows[1]` and columns `columns[0]..columns[1]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TapWindow {
    pub rows: [usize; 2],
    pub columns: [usize; 2],
}

/// For an output of a few pixels ([`MAX_SKINNY_PIXELS`]) whose kernel meets
/// the image only in part, the window of taps that do, and the same
/// convolution with that window as its kernel (the padding shrinks by the
/// taps cut off). The other taps multiply only padding, so the output is
/// the same from the window's weights alone: a 3×3 convolution over a 1×1
/// image (the UNet's 1280-wide level at an 8² latent) reads its centre tap,
/// 1/9 of the weight, and its stride-2 downsampler over 2×2 reads 4 taps.
/// `None` where every tap meets the image, or the output is large.
pub fn inner_taps(shape: &ConvShape) -> Option<(TapWindow, ConvShape)> {
    let [out_h, out_w] = shape.output_size();
    if out_h * out_w == 0 || out_h * out_w > MAX_SKINNY_PIXELS {
        return None;
    }
    let [top, left, bottom, right] = shape.padding;
    // The taps t of one axis for which some output o reads the input o·stride + t − before.
    let span = |kernel: usize, outputs: usize, stride: usize, before: usize, size: usize| {
        let meets = |t: usize| (0..outputs).any(|o| (o * stride + t).checked_sub(before).is_some_and(|i| i < size));
        let first = (0..kernel).find(|&t| meets(t))?;
        let last = (0..kernel).rfind(|&t| meets(t))?;
        Some([first, last + 1])
    };
    let rows = span(shape.kernel[0], out_h, shape.stride[0], top, shape.height)?;
    let columns = span(shape.kernel[1], out_w, shape.stride[1], left, shape.width)?;
    if rows == [0, shape.kernel[0]] && columns == [0, shape.kernel[1]] {
        return None;
    }
    let windowed = ConvShape {
        kernel: [rows[1] - rows[0], columns[1] - columns[0]],
        padding: [
            top.checked_sub(rows[0])?,
            left.checked_sub(columns[0])?,
            bottom.checked_sub(shape.kernel[0] - rows[1])?,
            right.checked_sub(shape.kernel[1] - columns[1])?,
        ],
        ..*shape
    };
    (windowed.output_size() == [out_h, out_w]).then_some((TapWindow { rows, columns }, windowed))
}

/// The taps `window` of `weight` [C_out, C_in, kh, kw] (any strided view,
/// such as a narrowed weight), row-major: gathered in parallel on the first
/// call for this view of the weight's storage and kept while it lives
/// ([`super::derived`]).
pub(crate) fn window_weights(weight: &FlexTensor, window: TapWindow) -> Arc<[f32]> {
    let TapWindow { rows: [dy0, dy1], columns: [dx0, dx1] } = window;
    super::derived::derived(weight, [dy0, dy1, dx0, dx1], |weight| {
        let layout = weight.layout();
        let [out_channels, in_channels, ..] = layout.shape().dims::<4>();
        let strides: [isize; 4] = layout.strides().try_into().expect("a 4-D weight");
        let (storage, start) = (weight.storage::<f32>(), layout.start_offset() as isize);
        let taps = (dy1 - dy0) * (dx1 - dx0);
        let mut values = vec![0f32; out_channels * in_channels * taps];
        values.par_chunks_mut(in_channels * taps).enumerate().for_each(|(o, row)| {
            let mut out = row.iter_mut();
            for c in 0..in_channels {
                for dy in dy0..dy1 {
                    for dx in dx0..dx1 {
                        let at = [o, c, dy, dx].iter().zip(strides).map(|(&i, s)| i as isize * s).sum::<isize>();
                        *out.next().expect("sized above") = storage[(start + at) as usize];
                    }
                }
            }
        });
        values
    })
}

/// `x` [B, C_in, H, W] ⊛ `weight` [C_out, C_in, kh, kw] (+ `bias` [C_out])
/// → [B, C_out, OH, OW], all row-major f32.
pub fn conv2d(x: &[f32], weight: &[f32], bias: Option<&[f32]>, shape: ConvShape) -> Vec<f32> {
    let ConvShape { batch, in_channels, height, width, out_channels, kernel: [kh, kw], stride, padding } = shape;
    let [out_h, out_w] = shape.output_size();
    let depth = in_channels * kh * kw;
    assert_eq!(x.len(), batch * in_channels * height * width, "x is not {shape:?}");
    assert_eq!(weight.len(), out_channels * depth, "the weight is not {shape:?}");
    assert!(stride[0] > 0 && stride[1] > 0, "stride {stride:?}");
    if super::winograd::applies(&shape) {
        return super::winograd::conv3x3(x, weight, bias, shape);
    }
    let pixels = out_h * out_w;
    if pixels <= MAX_SKINNY_PIXELS && depth > 0 && super::skinny::pays() {
        return few_pixels(x, weight, bias, shape);
    }
    let mut out = vec![0f32; batch * out_channels * pixels];
    if out.is_empty() {
        return out;
    }
    if let Some(bias) = bias {
        assert_eq!(bias.len(), out_channels, "the bias is not [{out_channels}]");
        out.par_chunks_mut(pixels).enumerate().for_each(|(row, values)| values.fill(bias[row % out_channels]));
    }
    let pointwise = kh == 1 && kw == 1 && stride == [1, 1] && padding == [0; 4];
    // Output rows per block: the column block [depth, rows·OW] stays under the bound.
    let rows_per_block = (MAX_COLUMN_ELEMENTS / (depth * out_w).max(1)).clamp(1, out_h);
    let mut columns = if pointwise { Vec::new() } else { vec![0f32; depth * rows_per_block * out_w] };
    for b in 0..batch {
        let image = &x[b * in_channels * height * width..][..in_channels * height * width];
        let out_image = &mut out[b * out_channels * pixels..][..out_channels * pixels];
        if pointwise {
            multiply(out_image, pixels, weight, image, pixels, out_channels, depth, pixels, bias.is_some());
            continue;
        }
        for row0 in (0..out_h).step_by(rows_per_block) {
            let rows = rows_per_block.min(out_h - row0);
            let block = rows * out_w;
            gather_columns(&mut columns[..depth * block], image, shape, row0, rows, out_w);
            multiply(
                &mut out_image[row0 * out_w..],
                pixels,
                weight,
                &columns[..depth * block],
                block,
                out_channels,
                depth,
                block,
                bias.is_some(),
            );
        }
    }
    out
}

/// The convolution as each output pixel's patch [B·OH·OW, depth] times the
/// weight [C_out, depth]ᵀ.
fn few_pixels(x: &[f32], weight: &[f32], bias: Option<&[f32]>, shape: ConvShape) -> Vec<f32> {
    let ConvShape { batch, in_channels, height, width, out_channels, kernel: [kh, kw], stride: [sy, sx], .. } = shape;
    let [top, left, ..] = shape.padding;
    let [out_h, out_w] = shape.output_size();
    let (pixels, depth) = (out_h * out_w, in_channels * kh * kw);
    if let Some(bias) = bias {
        assert_eq!(bias.len(), out_channels, "the bias is not [{out_channels}]");
    }
    let mut patches = vec![0f32; batch * pixels * depth];
    patches.par_chunks_mut(depth).enumerate().for_each(|(row, patch)| {
        let (b, oy, ox) = (row / pixels, row % pixels / out_w, row % out_w);
        let image = &x[b * in_channels * height * width..][..in_channels * height * width];
        if height * width == 0 {
            return;
        }
        // The patch in (channel, dy, dx) order; taps outside the image stay zero.
        for (plane, taps) in image.chunks_exact(height * width).zip(patch.chunks_exact_mut(kh * kw)) {
            for (dy, taps) in taps.chunks_exact_mut(kw).enumerate() {
                let iy = (oy * sy + dy).wrapping_sub(top);
                if iy >= height {
                    continue;
                }
                for (dx, value) in taps.iter_mut().enumerate() {
                    let ix = (ox * sx + dx).wrapping_sub(left);
                    if ix < width {
                        *value = plane[iy * width + ix];
                    }
                }
            }
        }
    });
    let products = super::skinny::rows_times_transposed(&patches, batch * pixels, weight, out_channels, depth);
    let mut out = vec![0f32; batch * out_channels * pixels];
    for (b, image) in out.chunks_exact_mut(out_channels * pixels).enumerate() {
        for (o, plane) in image.chunks_exact_mut(pixels).enumerate() {
            let start = bias.map_or(0.0, |bias| bias[o]);
            for (p, value) in plane.iter_mut().enumerate() {
                *value = start + products[(b * pixels + p) * out_channels + o];
            }
        }
    }
    out
}

/// The im2col block of output rows `row0..row0+rows`: row (c, dy, dx) of
/// `columns` holds, for each output pixel, the input it meets at that tap.
fn gather_columns(columns: &mut [f32], image: &[f32], shape: ConvShape, row0: usize, rows: usize, out_w: usize) {
    let ConvShape { height, width, kernel: [kh, kw], stride: [sy, sx], padding: [top, left, ..], .. } = shape;
    columns.par_chunks_mut(rows * out_w).enumerate().for_each(|(tap, column)| {
        let (channel, dy, dx) = (tap / (kh * kw), tap / kw % kh, tap % kw);
        let plane = &image[channel * height * width..][..height * width];
        for (r, line) in column.chunks_exact_mut(out_w).enumerate() {
            let iy = ((row0 + r) * sy + dy).wrapping_sub(top);
            if iy >= height {
                line.fill(0.0);
                continue;
            }
            let input = &plane[iy * width..][..width];
            // Output columns whose input column ox·sx + dx − left is inside the row.
            let first = left.saturating_sub(dx).div_ceil(sx).min(out_w);
            let last = (width + left).saturating_sub(dx).div_ceil(sx).clamp(first, out_w);
            line[..first].fill(0.0);
            line[last..].fill(0.0);
            let start = first * sx + dx - left;
            if sx == 1 {
                line[first..last].copy_from_slice(&input[start..start + (last - first)]);
            } else {
                for (k, value) in line[first..last].iter_mut().enumerate() {
                    *value = input[start + k * sx];
                }
            }
        }
    });
}

/// out[m, j] (+)= Σ_k lhs[m, k] · rhs[k, j] for j < n, with out's rows
/// `out_stride` and rhs's `rhs_stride` apart; gemm spreads the work over
/// rayon's threads.
#[allow(clippy::too_many_arguments)]
pub(super) fn multiply(
    out: &mut [f32],
    out_stride: usize,
    lhs: &[f32],
    rhs: &[f32],
    rhs_stride: usize,
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    assert!(lhs.len() >= m * k && rhs.len() >= (k - 1) * rhs_stride + n && out.len() >= (m - 1) * out_stride + n);
    let out = SharedMut::new(out);
    // SAFETY: the extents are checked above; gemm writes only out's m × n window.
    unsafe {
        matmul::multiply(
            [m, n, k],
            Strided::rows(out.get(), out_stride),
            Strided::rows(lhs.as_ptr(), k),
            Strided::rows(rhs.as_ptr(), rhs_stride),
            accumulate,
            1.0,
            Parallelism::Rayon(0),
        );
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Direct convolution in f64 (also the reference of `winograd`'s tests).
    pub(in crate::nn::cpu) fn naive(x: &[f32], weight: &[f32], bias: Option<&[f32]>, shape: ConvShape) -> Vec<f32> {
        let ConvShape { batch, in_channels, height, width, out_channels, kernel: [kh, kw], stride, padding } = shape;
        let [out_h, out_w] = shape.output_size();
        let mut out = vec![0f32; batch * out_channels * out_h * out_w];
        for b in 0..batch {
            for o in 0..out_channels {
                for oy in 0..out_h {
                    for ox in 0..out_w {
                        let mut sum = bias.map_or(0.0, |bias| f64::from(bias[o]));
                        for c in 0..in_channels {
                            for dy in 0..kh {
                                for dx in 0..kw {
                                    let iy = (oy * stride[0] + dy) as isize - padding[0] as isize;
                                    let ix = (ox * stride[1] + dx) as isize - padding[1] as isize;
                                    if iy < 0 || ix < 0 || iy >= height as isize || ix >= width as isize {
                                        continue;
                                    }
                                    let input = x[((b * in_channels + c) * height + iy as usize) * width + ix as usize];
                                    let w = weight[((o * in_channels + c) * kh + dy) * kw + dx];
                                    sum += f64::from(input) * f64::from(w);
                                }
                            }
                        }
                        out[((b * out_channels + o) * out_h + oy) * out_w + ox] = sum as f32;
                    }
                }
            }
        }
        out
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        crate::nn::cpu::test_values(len, seed, 1.0)
    }

    #[test]
    fn matches_direct_convolution_over_odd_shapes() {
        let shape = |batch, in_channels, height, width, out_channels, k: usize, s: usize, padding| ConvShape {
            batch,
            in_channels,
            height,
            width,
            out_channels,
            kernel: [k, k],
            stride: [s, s],
            padding,
        };
        for (shape, with_bias) in [
            (shape(1, 3, 7, 5, 4, 3, 1, [1; 4]), true), // SD's 3×3, odd sides, batch 1
            (shape(2, 5, 9, 8, 3, 3, 2, [0, 0, 1, 1]), true), // the VAE's stride-2 downsampler
            (shape(2, 4, 8, 8, 6, 3, 2, [1; 4]), false), // the UNet's downsampler
            (shape(2, 6, 5, 3, 7, 1, 1, [0; 4]), true), // 1×1 (in place)
            (shape(1, 2, 4, 4, 3, 2, 1, [0; 4]), false), // an even kernel, no padding
            (shape(1, 1, 1, 1, 2, 3, 1, [1; 4]), true), // a 1×1 image (the mid block at 8² px)
            // Over 16 output pixels (the rows above have at most 16: `few_pixels`), im2col + gemm:
            (shape(2, 5, 12, 10, 3, 3, 2, [0, 0, 1, 1]), true), // the VAE's downsampler
            (shape(2, 4, 12, 9, 6, 3, 2, [1; 4]), false),       // the UNet's downsampler
            (shape(2, 6, 6, 5, 7, 1, 1, [0; 4]), true),         // 1×1 (in place)
            (shape(1, 2, 6, 6, 3, 2, 1, [0; 4]), false),        // an even kernel, no padding
        ] {
            let [out_h, out_w] = shape.output_size();
            let x = values(shape.batch * shape.in_channels * shape.height * shape.width, 1);
            let k = shape.kernel[0] * shape.kernel[1];
            let weight = values(shape.out_channels * shape.in_channels * k, 2);
            let bias = with_bias.then(|| values(shape.out_channels, 3));
            let ours = conv2d(&x, &weight, bias.as_deref(), shape);
            let expected = naive(&x, &weight, bias.as_deref(), shape);
            assert_eq!(ours.len(), shape.batch * shape.out_channels * out_h * out_w);
            let worst = ours.iter().zip(&expected).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(worst < 1e-5, "{shape:?}: max error {worst}");
        }
    }

    fn shape(batch: usize, height: usize, width: usize, stride: usize, padding: [usize; 4]) -> ConvShape {
        ConvShape {
            batch,
            in_channels: 5,
            height,
            width,
            out_channels: 6,
            kernel: [3, 3],
            stride: [stride; 2],
            padding,
        }
    }

    #[test]
    fn inner_taps_are_the_taps_that_meet_the_image() {
        let window = |rows, columns| Some(TapWindow { rows, columns });
        for (shape, expected) in [
            (shape(2, 1, 1, 1, [1; 4]), window([1, 2], [1, 2])), // the 1×1 level: the centre tap
            (shape(1, 2, 2, 2, [1; 4]), window([1, 3], [1, 3])), // the UNet's downsampler over 2×2
            (shape(1, 2, 2, 2, [0, 0, 1, 1]), window([0, 2], [0, 2])), // the VAE's
            (shape(1, 1, 5, 1, [1; 4]), window([1, 2], [0, 3])), // one row of pixels
            (shape(1, 3, 1, 1, [1; 4]), window([0, 3], [1, 2])), // one column
            (shape(2, 2, 2, 1, [1; 4]), None),                   // every tap meets some pixel
            (shape(1, 4, 4, 1, [1; 4]), None),
            (shape(1, 5, 5, 1, [1; 4]), None), // 25 output pixels: not a few
        ] {
            let found = inner_taps(&shape);
            assert_eq!(found.map(|(window, _)| window), expected, "{shape:?}");
            if let Some((window, windowed)) = found {
                assert_eq!(windowed.output_size(), shape.output_size());
                assert_eq!(windowed.kernel, [window.rows[1] - window.rows[0], window.columns[1] - window.columns[0]]);
            }
        }
    }

    /// The window's weights, gathered from a strided view of a larger
    /// weight, give the whole kernel's convolution.
    #[test]
    fn a_window_of_taps_gives_the_whole_convolution() {
        use burn::tensor::TensorData;
        for shape in [
            shape(1, 1, 1, 1, [1; 4]),
            shape(2, 1, 1, 1, [1; 4]),
            shape(2, 2, 2, 2, [1; 4]),
            shape(1, 2, 2, 2, [0, 0, 1, 1]),
            shape(2, 1, 5, 1, [1; 4]),
            shape(1, 3, 1, 1, [1; 4]),
        ] {
            let (window, windowed) = inner_taps(&shape).expect("a window");
            let x = values(shape.batch * shape.in_channels * shape.height * shape.width, 6);
            // The weight is input channels 2..7 of a 9-channel one (as the style branch narrows it).
            let whole = FlexTensor::from_data(TensorData::new(values(6 * 9 * 9, 7), [6, 9, 3, 3]));
            let view = whole.narrow(1, 2, 5);
            let weight = view.to_contiguous();
            let bias = values(6, 8);
            let ours = conv2d(&x, &window_weights(&view, window), Some(&bias), windowed);
            let expected = naive(&x, weight.as_slice::<f32>().unwrap(), Some(&bias), shape);
            let worst = ours.iter().zip(&expected).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(ours.len() == expected.len() && worst < 1e-5, "{shape:?}: max error {worst}");
        }
    }

    #[test]
    fn blocks_of_output_rows_give_the_whole_convolution() {
        // Enough taps × width that a block holds a few rows only.
        let shape = ConvShape {
            batch: 1,
            in_channels: 700,
            height: 12,
            width: 700,
            out_channels: 2,
            kernel: [3, 3],
            stride: [1, 1],
            padding: [1; 4],
        };
        let depth = 700 * 9;
        assert!(MAX_COLUMN_ELEMENTS / (depth * 700) < 12, "the test needs several blocks");
        let x = values(700 * 12 * 700, 4);
        let weight = values(2 * depth, 5);
        let ours = conv2d(&x, &weight, None, shape);
        // Spot-check rows of every block against the direct sum.
        for (o, oy, ox) in [(0, 0, 0), (1, 5, 699), (0, 11, 350), (1, 6, 1)] {
            let mut sum = 0f64;
            for c in 0..700 {
                for dy in 0..3 {
                    for dx in 0..3 {
                        let (iy, ix) = (oy as isize + dy as isize - 1, ox as isize + dx as isize - 1);
                        if iy < 0 || ix < 0 || iy >= 12 || ix >= 700 {
                            continue;
                        }
                        sum += f64::from(x[(c * 12 + iy as usize) * 700 + ix as usize])
                            * f64::from(weight[(o * 700 + c) * 9 + dy * 3 + dx]);
                    }
                }
            }
            let got = ours[(o * 12 + oy) * 700 + ox];
            assert!((f64::from(got) - sum).abs() < 1e-3, "({o}, {oy}, {ox}): {got} against {sum}");
        }
    }
}
