//! 3×3 stride-1 convolution by Winograd's F(2×2, 3×3): each 2×2 output
//! tile costs 16 products per channel pair instead of 36, so the gemms do
//! 2.25× fewer multiply-adds than im2col's. The 3×3 convs are about half of
//! an SD1.5 UNet step's FLOPs and nearly all of the VAE decoder's.
//!
//! With V = Bᵀ·d·B (the 4×4 input patch d) and U = G·g·Gᵀ (the 3×3 weight g),
//! the output tile is Aᵀ·(U ⊙ V)·A. Over channels, U ⊙ V summed is one gemm
//! per position ξ of the 4×4 tile: M[ξ] = U[ξ] [C_out, C_in] · V[ξ] [C_in, P].
//! The transforms use only 0, ±1 and ±½ (exact in f32), so the result is
//! as accurate as the direct sum (tested against it in f64).

use super::conv::{multiply, ConvShape};
use super::SharedMut;
use rayon::prelude::*;
use std::sync::Mutex;

/// Transformed input and product elements per block (both buffers
/// together, 8 MiB in f32): the block stays in the L3 cache between its
/// transforms and its gemms.
const MAX_BLOCK_ELEMENTS: usize = 1 << 21;

/// Tiles per image from which Winograd beats im2col: the weight transform
/// (16·C_out·C_in values per call) must be small next to the gemms. Below
/// it (the 16² and smaller levels of a 64² UNet step) im2col is as fast.
pub const MIN_TILES: usize = 256;

/// Whether [`conv3x3`] computes this convolution.
pub fn applies(shape: &ConvShape) -> bool {
    let [out_h, out_w] = shape.output_size();
    shape.kernel == [3, 3]
        && shape.stride == [1, 1]
        && shape.in_channels >= 8
        && shape.out_channels >= 8
        && out_h.div_ceil(2) * out_w.div_ceil(2) >= MIN_TILES
}

/// `x` [B, C_in, H, W] ⊛ `weight` [C_out, C_in, 3, 3] (+ `bias`) → [B, C_out,
/// OH, OW], for a shape that [`applies`].
pub fn conv3x3(x: &[f32], weight: &[f32], bias: Option<&[f32]>, shape: ConvShape) -> Vec<f32> {
    conv3x3_in_blocks(x, weight, bias, shape, MAX_BLOCK_ELEMENTS)
}

/// [`conv3x3`] with blocks of at most `max_block_elements` (tests use small ones).
fn conv3x3_in_blocks(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    shape: ConvShape,
    max_block_elements: usize,
) -> Vec<f32> {
    let ConvShape { batch, in_channels, height, width, out_channels, .. } = shape;
    assert!(shape.kernel == [3, 3] && shape.stride == [1, 1], "not a 3×3 stride-1 conv: {shape:?}");
    assert_eq!(x.len(), batch * in_channels * height * width, "x is not {shape:?}");
    assert_eq!(weight.len(), out_channels * in_channels * 9, "the weight is not {shape:?}");
    let [out_h, out_w] = shape.output_size();
    let (tiles_h, tiles_w) = (out_h.div_ceil(2), out_w.div_ceil(2));
    let mut out = vec![0f32; batch * out_channels * out_h * out_w];
    if out.is_empty() || in_channels == 0 {
        if let Some(bias) = bias {
            out.par_chunks_mut((out_h * out_w).max(1)).enumerate().for_each(|(i, p)| p.fill(bias[i % out_channels]));
        }
        return out;
    }
    let mut u = TRANSFORMED_WEIGHT.take(16 * out_channels * in_channels);
    transform_weight(&mut u[..16 * out_channels * in_channels], weight, out_channels, in_channels);
    // Tile rows per block: the transformed input and the products fit the bound.
    let per_tile_row = 16 * (in_channels + out_channels) * tiles_w;
    let rows_per_block = (max_block_elements / per_tile_row).clamp(1, tiles_h);
    let capacity = rows_per_block * tiles_w;
    let mut v = TRANSFORMED_INPUT.take(16 * in_channels * capacity);
    let mut m = PRODUCTS.take(16 * out_channels * capacity);
    for b in 0..batch {
        let image = &x[b * in_channels * height * width..][..in_channels * height * width];
        let out_image = &mut out[b * out_channels * out_h * out_w..][..out_channels * out_h * out_w];
        for row0 in (0..tiles_h).step_by(rows_per_block) {
            let rows = rows_per_block.min(tiles_h - row0);
            let tiles = rows * tiles_w;
            transform_input(&mut v, capacity, image, shape, row0, rows, tiles_w);
            // One gemm per tile position, the positions in parallel.
            let slabs = m[..16 * out_channels * capacity].par_chunks_mut(out_channels * capacity);
            let lhs = u.par_chunks(out_channels * in_channels);
            let rhs = v.par_chunks(in_channels * capacity);
            slabs.zip(lhs).zip(rhs).for_each(|((products, lhs), rhs)| {
                multiply(products, capacity, lhs, rhs, capacity, out_channels, in_channels, tiles, false);
            });
            transform_output(out_image, &m, capacity, bias, shape, row0, rows, tiles_w);
        }
    }
    TRANSFORMED_WEIGHT.put(u);
    TRANSFORMED_INPUT.put(v);
    PRODUCTS.put(m);
    out
}

/// A buffer kept from call to call: a fresh one of over 32 MiB (U of a
/// 1280-channel conv is 105 MB) is mapped and page-faulted anew each time.
struct Scratch(Mutex<Vec<f32>>);

static TRANSFORMED_WEIGHT: Scratch = Scratch(Mutex::new(Vec::new()));
static TRANSFORMED_INPUT: Scratch = Scratch(Mutex::new(Vec::new()));
static PRODUCTS: Scratch = Scratch(Mutex::new(Vec::new()));

impl Scratch {
    /// The kept buffer (a new one if another call holds it), at least `len`
    /// long; its values are stale, so every user writes before it reads.
    fn take(&self, len: usize) -> Vec<f32> {
        let mut buffer = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        if buffer.len() < len {
            buffer = vec![0.0; len];
        }
        buffer
    }

    /// Keeps `buffer` for the next call.
    fn put(&self, buffer: Vec<f32>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = buffer;
    }
}

/// U[ξ][o][c] = (G·g·Gᵀ)[ξ] for each weight g = weight[o][c], with
/// G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]].
fn transform_weight(u: &mut [f32], weight: &[f32], out_channels: usize, in_channels: usize) {
    let pairs = out_channels * in_channels;
    assert_eq!(u.len(), 16 * pairs);
    let shared = SharedMut::new(u);
    weight.par_chunks(9 * in_channels).enumerate().for_each(|(o, filters)| {
        for (c, g) in filters.chunks_exact(9).enumerate() {
            // G·g: 4 rows of 3.
            let mut t = [[0f32; 3]; 4];
            for j in 0..3 {
                let (g0, g1, g2) = (g[j], g[3 + j], g[6 + j]);
                t[0][j] = g0;
                t[1][j] = 0.5 * (g0 + g1 + g2);
                t[2][j] = 0.5 * (g0 - g1 + g2);
                t[3][j] = g2;
            }
            for (i, row) in t.iter().enumerate() {
                let [g0, g1, g2] = *row;
                let values = [g0, 0.5 * (g0 + g1 + g2), 0.5 * (g0 - g1 + g2), g2];
                for (j, value) in values.into_iter().enumerate() {
                    // SAFETY: (ξ, o, c) is written by output channel o's task only.
                    unsafe { *shared.get().add((i * 4 + j) * pairs + o * in_channels + c) = value };
                }
            }
        }
    });
}

/// V[ξ][c][p] = (Bᵀ·d·B)[ξ] for the 4×4 input patch d of each tile p of the
/// block's tile rows and each channel c, with
/// Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]].
///
/// A tile row at a time, over runs of tiles (vectorised): the 4 input rows
/// are split into even and odd columns, so that tile t's columns 2t..2t+3
/// are even[t], odd[t], even[t+1], odd[t+1].
fn transform_input(
    v: &mut [f32],
    capacity: usize,
    image: &[f32],
    shape: ConvShape,
    row0: usize,
    rows: usize,
    tiles_w: usize,
) {
    let ConvShape { in_channels, height, width, padding: [top, left, ..], .. } = shape;
    let span = 2 * tiles_w + 2;
    let n = tiles_w;
    let shared = SharedMut::new(v);
    (0..in_channels).into_par_iter().for_each_init(
        || (vec![0f32; span], vec![0f32; 8 * (n + 1)]),
        |(line, split), c| {
            let plane = &image[c * height * width..][..height * width];
            for r in 0..rows {
                let ty = row0 + r;
                // Bᵀ·d over the 4 rows, kept as even and odd columns.
                let (even, odd) = split.split_at_mut(4 * (n + 1));
                for dy in 0..4 {
                    let iy = (2 * ty + dy).wrapping_sub(top);
                    line.fill(0.0);
                    if iy < height {
                        // line[k] is input column k − left.
                        let (first, last) = (left.min(span), (left + width).min(span));
                        line[first..last].copy_from_slice(&plane[iy * width..][..last - first]);
                    }
                    let (e, o) = (&mut even[dy * (n + 1)..][..n + 1], &mut odd[dy * (n + 1)..][..n + 1]);
                    for ((pair, e), o) in line.chunks_exact(2).zip(e.iter_mut()).zip(o.iter_mut()) {
                        (*e, *o) = (pair[0], pair[1]);
                    }
                }
                let rows_of = |values: &mut [f32]| {
                    let (l0, rest) = values.split_at_mut(n + 1);
                    let (l1, rest) = rest.split_at_mut(n + 1);
                    let (l2, l3) = rest.split_at_mut(n + 1);
                    for t in 0..=n {
                        let (a, b, cc, d) = (l0[t], l1[t], l2[t], l3[t]);
                        (l0[t], l1[t], l2[t], l3[t]) = (a - cc, b + cc, cc - b, b - d);
                    }
                };
                rows_of(even);
                rows_of(odd);
                // ·B along the row: 4 outputs per transformed row i.
                for i in 0..4 {
                    let (e, o) = (&even[i * (n + 1)..][..n + 1], &odd[i * (n + 1)..][..n + 1]);
                    // SAFETY: (ξ, c, tile row r) is written by channel c's task only.
                    let run = |j: usize| unsafe {
                        std::slice::from_raw_parts_mut(
                            shared.get().add(((i * 4 + j) * in_channels + c) * capacity + r * n),
                            n,
                        )
                    };
                    let (v0, v1, v2, v3) = (run(0), run(1), run(2), run(3));
                    for t in 0..n {
                        let (e0, o0, e1, o1) = (e[t], o[t], e[t + 1], o[t + 1]);
                        v0[t] = e0 - e1;
                        v1[t] = o0 + e1;
                        v2[t] = e1 - o0;
                        v3[t] = o0 - o1;
                    }
                }
            }
        },
    );
}

/// The output tiles Aᵀ·M·A (+ bias) of the block, clipped to the image, with
/// Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]]; a tile row of one channel at a time,
/// over runs of tiles (vectorised).
#[allow(clippy::too_many_arguments)]
fn transform_output(
    out_image: &mut [f32],
    m: &[f32],
    capacity: usize,
    bias: Option<&[f32]>,
    shape: ConvShape,
    row0: usize,
    rows: usize,
    tiles_w: usize,
) {
    let out_channels = shape.out_channels;
    let [out_h, out_w] = shape.output_size();
    let n = tiles_w;
    out_image.par_chunks_mut(out_h * out_w).enumerate().for_each_init(
        || vec![0f32; 8 * n],
        |t, (o, plane)| {
            let b = bias.map_or(0.0, |bias| bias[o]);
            for r in 0..rows {
                let run = |xi: usize| &m[(xi * out_channels + o) * capacity + r * n..][..n];
                // Aᵀ·M: rows 0 and 1 of 4 columns each.
                let (t0, t1) = t.split_at_mut(4 * n);
                for k in 0..4 {
                    let (m0, m1, m2, m3) = (run(k), run(4 + k), run(8 + k), run(12 + k));
                    let (a, bb) = (&mut t0[k * n..][..n], &mut t1[k * n..][..n]);
                    for p in 0..n {
                        a[p] = m0[p] + m1[p] + m2[p];
                        bb[p] = m1[p] - m2[p] - m3[p];
                    }
                }
                // ·A, then the 2×2 tile into the image: row 2(row0 + r) + i.
                for (i, ti) in [&*t0, &*t1].into_iter().enumerate() {
                    let oy = 2 * (row0 + r) + i;
                    if oy >= out_h {
                        break;
                    }
                    let line = &mut plane[oy * out_w..][..out_w];
                    let (c0, c1, c2, c3) = (&ti[..n], &ti[n..2 * n], &ti[2 * n..3 * n], &ti[3 * n..4 * n]);
                    let mut pairs = line.chunks_exact_mut(2);
                    for (p, pair) in (&mut pairs).enumerate() {
                        pair[0] = c0[p] + c1[p] + c2[p] + b;
                        pair[1] = c1[p] - c2[p] - c3[p] + b;
                    }
                    if let [last] = pairs.into_remainder() {
                        let p = n - 1;
                        *last = c0[p] + c1[p] + c2[p] + b;
                    }
                }
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::super::conv::tests::naive;
    use super::*;

    fn values(len: usize, seed: u32) -> Vec<f32> {
        crate::nn::cpu::test_values(len, seed, 1.0)
    }

    fn shape(
        batch: usize,
        in_channels: usize,
        height: usize,
        width: usize,
        out_channels: usize,
        padding: [usize; 4],
    ) -> ConvShape {
        ConvShape { batch, in_channels, height, width, out_channels, kernel: [3, 3], stride: [1, 1], padding }
    }

    #[test]
    fn matches_direct_convolution_over_odd_shapes() {
        for (shape, with_bias) in [
            (shape(2, 8, 6, 6, 5, [1; 4]), true),       // SD's padded 3×3, even sides
            (shape(1, 9, 7, 5, 3, [1; 4]), true),       // odd sides: clipped last tiles, batch 1
            (shape(1, 10, 5, 8, 4, [0; 4]), false),     // no padding: 3×6 output
            (shape(2, 8, 4, 3, 6, [0, 1, 2, 1]), true), // asymmetric padding
            (shape(1, 8, 1, 1, 2, [1; 4]), true),       // a 1×1 image
            (shape(1, 12, 2, 2, 3, [0; 4]), false),     // an image smaller than a tile's input
        ] {
            let x = values(shape.batch * shape.in_channels * shape.height * shape.width, 1);
            let weight = values(shape.out_channels * shape.in_channels * 9, 2);
            let bias = with_bias.then(|| values(shape.out_channels, 3));
            let ours = conv3x3(&x, &weight, bias.as_deref(), shape);
            let expected = naive(&x, &weight, bias.as_deref(), shape);
            assert_eq!(ours.len(), expected.len(), "{shape:?}");
            let worst = ours.iter().zip(&expected).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(worst < 1e-5, "{shape:?}: max error {worst}");
        }
    }

    #[test]
    fn blocks_of_tile_rows_give_the_whole_convolution() {
        // A bound of 2 tile rows per block over 7 tile rows: 4 blocks, the last short.
        let shape = shape(2, 8, 13, 9, 6, [1; 4]);
        let bound = 2 * 16 * (8 + 6) * 5;
        let x = values(2 * 8 * 13 * 9, 4);
        let weight = values(6 * 8 * 9, 5);
        let bias = values(6, 6);
        let ours = conv3x3_in_blocks(&x, &weight, Some(&bias), shape, bound);
        let expected = naive(&x, &weight, Some(&bias), shape);
        let worst = ours.iter().zip(&expected).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(worst < 1e-5, "max error {worst}");
    }
}
