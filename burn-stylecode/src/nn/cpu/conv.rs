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
//! the weight for the whole batch).

use super::matmul::{self, Strided};
use super::SharedMut;
use gemm::Parallelism;
use rayon::prelude::*;

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
