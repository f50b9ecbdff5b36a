//! A per-pixel `Linear(2C, 2C)` over the channel concatenation `[a, b]` of
//! two NCHW images, giving the output's two channel halves, without making
//! the concatenation.
//!
//! The generic form (the style control's mixers) concatenates, swaps to
//! tokens, multiplies, adds the bias and the residual, swaps back and
//! splits: five copies of the activations. Here each output half of each
//! sample is its bias (and residual) plus two gemms straight on the NCHW
//! inputs, `W[half, a's columns] · a + W[half, b's columns] · b`, written in
//! place.

use super::matmul::{multiply, Strided};
use gemm::Parallelism;
use rayon::prelude::*;

/// The sizes of a [`mix_halves`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HalvesShape {
    pub batch: usize,
    /// Channels of each input (and of each output half), C.
    pub channels: usize,
    /// Pixels per channel, H·W.
    pub pixels: usize,
}

/// `a`, `b` [batch, C, pixels] → the two halves [batch, C, pixels] of
/// `W · [a, b] + bias (+ [a, b] when residual)` per pixel, with `weight`
/// [2C, 2C] in PyTorch's `[out, in]` layout and `bias` [2C].
pub fn mix_halves(
    a: &[f32],
    b: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    residual: bool,
    shape: HalvesShape,
) -> [Vec<f32>; 2] {
    let HalvesShape { batch, channels, pixels } = shape;
    let (plane, width) = (channels * pixels, 2 * channels);
    assert!(a.len() == batch * plane && b.len() == batch * plane, "the inputs are not [{batch}, {channels}, {pixels}]");
    assert_eq!(weight.len(), width * width, "the weight is not [{width}, {width}]");
    assert!(bias.is_none_or(|bias| bias.len() == width), "the bias is not [{width}]");
    let inputs = [a, b];
    [0, 1].map(|half| {
        let mut out = vec![0f32; batch * plane];
        if pixels == 0 || channels == 0 {
            return out;
        }
        // The bias and the residual first; the gemms then accumulate on them.
        out.par_chunks_mut(pixels).enumerate().for_each(|(row, values)| {
            let channel = row % channels;
            let offset = bias.map_or(0.0, |bias| bias[half * channels + channel]);
            if residual {
                let input = &inputs[half][row * pixels..(row + 1) * pixels];
                values.iter_mut().zip(input).for_each(|(v, x)| *v = x + offset);
            } else {
                values.fill(offset);
            }
        });
        for sample in 0..batch {
            let dst = &mut out[sample * plane..(sample + 1) * plane];
            for (source, input) in inputs.iter().enumerate() {
                let rhs = &input[sample * plane..(sample + 1) * plane];
                // This half's rows of W, the source's columns: [C, C] with rows 2C apart.
                let lhs = &weight[half * channels * width + source * channels..];
                // SAFETY: dst is [C, pixels] and rhs [C, pixels], both
                // contiguous; lhs spans (C − 1)·2C + C ≤ its length values.
                unsafe {
                    multiply(
                        [channels, pixels, channels],
                        Strided::rows(dst.as_mut_ptr(), pixels),
                        Strided::rows(lhs.as_ptr(), width),
                        Strided::rows(rhs.as_ptr(), pixels),
                        true,
                        1.0,
                        Parallelism::Rayon(0),
                    );
                }
            }
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::cpu::test_values;

    /// The concatenation through the linear in f64, split in halves.
    fn naive(
        a: &[f32],
        b: &[f32],
        weight: &[f32],
        bias: Option<&[f32]>,
        residual: bool,
        shape: HalvesShape,
    ) -> Vec<f64> {
        let HalvesShape { batch, channels, pixels } = shape;
        let width = 2 * channels;
        let input = |s: usize, c: usize, p: usize| {
            let (source, c) = if c < channels { (a, c) } else { (b, c - channels) };
            f64::from(source[(s * channels + c) * pixels + p])
        };
        let mut out = Vec::new();
        for half in 0..2 {
            for s in 0..batch {
                for o in half * channels..(half + 1) * channels {
                    for p in 0..pixels {
                        let mut sum = bias.map_or(0.0, |bias| f64::from(bias[o]));
                        for i in 0..width {
                            sum += f64::from(weight[o * width + i]) * input(s, i, p);
                        }
                        out.push(if residual { sum + input(s, o, p) } else { sum });
                    }
                }
            }
        }
        out
    }

    #[test]
    fn gives_the_linear_over_the_concatenation() {
        for (batch, channels, pixels, residual, with_bias) in
            [(1, 3, 5, false, true), (2, 17, 33, true, true), (3, 8, 1, true, false), (2, 40, 130, false, false)]
        {
            let shape = HalvesShape { batch, channels, pixels };
            let (a, b) =
                (test_values(batch * channels * pixels, 1, 1.0), test_values(batch * channels * pixels, 2, 1.0));
            let weight = test_values(4 * channels * channels, 3, 0.5);
            let bias = with_bias.then(|| test_values(2 * channels, 4, 1.0));
            let [first, second] = mix_halves(&a, &b, &weight, bias.as_deref(), residual, shape);
            let want = naive(&a, &b, &weight, bias.as_deref(), residual, shape);
            let got: Vec<f32> = first.into_iter().chain(second).collect();
            let worst = got.iter().zip(&want).map(|(g, w)| (f64::from(*g) - w).abs()).fold(0f64, f64::max);
            assert!(worst < 1e-5 * (channels as f64).sqrt(), "{shape:?}: max error {worst}");
        }
    }

    /// Sample 1 of a batch of 3 has the same bits as alone.
    #[test]
    fn a_sample_is_the_same_in_any_batch() {
        let (channels, pixels) = (24, 70);
        let plane = channels * pixels;
        let (a, b) = (test_values(3 * plane, 5, 1.0), test_values(3 * plane, 6, 1.0));
        let (weight, bias) = (test_values(4 * channels * channels, 7, 0.5), test_values(2 * channels, 8, 1.0));
        let batched = mix_halves(&a, &b, &weight, Some(&bias), true, HalvesShape { batch: 3, channels, pixels });
        let alone = mix_halves(
            &a[plane..2 * plane],
            &b[plane..2 * plane],
            &weight,
            Some(&bias),
            true,
            HalvesShape { batch: 1, channels, pixels },
        );
        for half in 0..2 {
            assert!(batched[half][plane..2 * plane] == alone[half][..], "half {half} differs");
        }
    }
}
