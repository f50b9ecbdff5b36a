//! Multi-head attention on the CPU: all heads, batch elements and blocks of
//! query rows in parallel, q/k/v read in place by strides.
//!
//! burn-flex 0.21's fused attention runs one head after another on one
//! thread, with a scalar `exp` per score. Here each task takes a block of
//! query rows of one head: S = q·kᵀ·scale (one gemm), the softmax
//! numerators in SIMD, then P·v (one gemm) written straight into the
//! [B, L, D] output, each row divided by its sum. No head split or merge is
//! copied: the heads are column ranges of the projected tokens.

use super::matmul::{multiply, Strided};
use super::{simd::exp_rows, SharedMut};
use gemm::Parallelism;
use rayon::prelude::*;

/// Query rows per task: its score block (rows × Lk) stays in cache-sized
/// pieces and there are enough tasks to balance the threads.
const ROWS: usize = 64;

/// Shapes of one attention call: q [B, Lq, D], k and v [B, Lk, D].
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub batch: usize,
    pub len_q: usize,
    pub len_k: usize,
    pub d_model: usize,
    pub heads: usize,
}

/// softmax(q·kᵀ / √(D/heads))·v per head, on row-major f32 buffers; the
/// output is [B, Lq, D] with the heads side by side, as the projections
/// that follow expect.
pub fn attention(q: &[f32], k: &[f32], v: &[f32], shape: AttentionShape) -> Vec<f32> {
    let AttentionShape { batch, len_q, len_k, d_model, heads } = shape;
    assert!(heads > 0 && d_model.is_multiple_of(heads), "{d_model} channels in {heads} heads");
    assert_eq!(q.len(), batch * len_q * d_model, "q is not [{batch}, {len_q}, {d_model}]");
    assert_eq!(k.len(), batch * len_k * d_model, "k is not [{batch}, {len_k}, {d_model}]");
    assert_eq!(v.len(), k.len(), "k and v differ in shape");
    let head_dim = d_model / heads;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let mut out = vec![0f32; q.len()];
    if out.is_empty() || len_k == 0 {
        return out;
    }
    let blocks = len_q.div_ceil(ROWS);
    let out_ptr = SharedMut::new(&mut out);
    (0..batch * heads * blocks).into_par_iter().for_each_init(
        || (Vec::new(), Vec::new()),
        |(scores, sums): &mut (Vec<f32>, Vec<f32>), task| {
            let (b, rest) = (task / (heads * blocks), task % (heads * blocks));
            let (h, block) = (rest / blocks, rest % blocks);
            let start = block * ROWS;
            let rows = ROWS.min(len_q - start);
            scores.resize(rows * len_k, 0.0);
            sums.resize(rows, 0.0);
            let q_at = (b * len_q + start) * d_model + h * head_dim;
            let kv_at = b * len_k * d_model + h * head_dim;
            let out_at = q_at;
            // SAFETY: the pointers and strides stay inside q, k, v and out
            // (rows < Lq − start, columns within head h's range), and this
            // task alone writes out's rows start..start+rows, columns of head h.
            unsafe {
                // scores[i, j] = scale · Σ_c q[b, start+i, h·dh+c] · k[b, j, h·dh+c]
                multiply(
                    [rows, len_k, head_dim],
                    Strided::rows(scores.as_mut_ptr(), len_k),
                    Strided::rows(q.as_ptr().add(q_at), d_model),
                    Strided::columns(k.as_ptr().add(kv_at), d_model),
                    false,
                    scale,
                    Parallelism::None,
                );
                exp_rows(scores, len_k, sums);
                let out_block = out_ptr.get().add(out_at);
                multiply(
                    [rows, head_dim, len_k],
                    Strided::rows(out_block, d_model),
                    Strided::rows(scores.as_ptr(), len_k),
                    Strided::rows(v.as_ptr().add(kv_at), d_model),
                    false,
                    1.0,
                    Parallelism::None,
                );
                for (i, sum) in sums.iter().enumerate() {
                    let row = std::slice::from_raw_parts_mut(out_block.add(i * d_model), head_dim);
                    let inverse = 1.0 / sum;
                    row.iter_mut().for_each(|x| *x *= inverse);
                }
            }
        },
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// softmax(q·kᵀ/√dh)·v in f64, one head and row at a time.
    fn naive(q: &[f32], k: &[f32], v: &[f32], shape: AttentionShape) -> Vec<f32> {
        let AttentionShape { batch, len_q, len_k, d_model, heads } = shape;
        let dh = d_model / heads;
        let mut out = vec![0f32; q.len()];
        for b in 0..batch {
            for h in 0..heads {
                for i in 0..len_q {
                    let qi = &q[(b * len_q + i) * d_model + h * dh..][..dh];
                    let scores: Vec<f64> = (0..len_k)
                        .map(|j| {
                            let kj = &k[(b * len_k + j) * d_model + h * dh..][..dh];
                            qi.iter().zip(kj).map(|(a, c)| f64::from(*a) * f64::from(*c)).sum::<f64>()
                                / (dh as f64).sqrt()
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let total: f64 = weights.iter().sum();
                    for c in 0..dh {
                        let value: f64 =
                            (0..len_k).map(|j| weights[j] * f64::from(v[(b * len_k + j) * d_model + h * dh + c])).sum();
                        out[(b * len_q + i) * d_model + h * dh + c] = (value / total) as f32;
                    }
                }
            }
        }
        out
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        crate::nn::cpu::test_values(len, seed, 2.0)
    }

    #[test]
    fn matches_naive_attention_over_odd_shapes() {
        // Batch 1 and 2; one and several query blocks with a short last one;
        // cross-attention (Lk ≠ Lq, 77 as CLIP's context); one head, and an
        // odd head width.
        for shape in [
            AttentionShape { batch: 1, len_q: 5, len_k: 5, d_model: 8, heads: 1 },
            AttentionShape { batch: 2, len_q: 131, len_k: 77, d_model: 12, heads: 4 },
            AttentionShape { batch: 2, len_q: 64, len_k: 130, d_model: 40, heads: 8 },
            AttentionShape { batch: 1, len_q: 3, len_k: 1, d_model: 6, heads: 2 },
        ] {
            let q = values(shape.batch * shape.len_q * shape.d_model, 1);
            let k = values(shape.batch * shape.len_k * shape.d_model, 2);
            let v = values(shape.batch * shape.len_k * shape.d_model, 3);
            let ours = attention(&q, &k, &v, shape);
            let expected = naive(&q, &k, &v, shape);
            let scale = expected.iter().fold(0f32, |m, x| m.max(x.abs()));
            let worst = ours.iter().zip(&expected).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(worst <= 1e-5 * scale, "{shape:?}: max error {worst} at scale {scale}");
        }
    }

    #[test]
    fn a_nan_input_gives_nan_rows_not_a_finite_guess() {
        let shape = AttentionShape { batch: 1, len_q: 2, len_k: 3, d_model: 2, heads: 1 };
        let mut k = values(6, 2);
        k[2] = f32::NAN;
        let out = attention(&values(4, 1), &k, &values(6, 3), shape);
        assert!(out.iter().all(|x| x.is_nan()), "{out:?}");
    }
}
