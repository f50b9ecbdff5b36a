//! `y = x Wᵀ` for a few hundred rows, through gemm with the weight split
//! across threads.
//!
//! With a row-major output, gemm multiplies `W · xᵀ`, so the weight is its
//! left operand. When that operand has at most a couple of cache blocks of
//! rows (768 or 1280 output features), gemm packs all of it on the calling
//! thread before its threads start: with SigLIP's 196 tokens that is a
//! third of each call, on one core. Here each thread runs its own
//! single-threaded gemm over its own block of weight rows (output
//! columns), so the packing is spread over the threads too. Every output
//! sums as gemm sums it alone (the blocks are whole 16-column panels), and
//! the result is the same whatever the row count, as gemm's is.

use super::matmul::{multiply, Strided};
use super::SharedMut;
use gemm::Parallelism;
use rayon::prelude::*;

/// Output columns per block are a multiple of this (gemm's register panel).
const PANEL: usize = 16;

/// `x` [rows, k] · `weight` [n, k]ᵀ → [rows, n], row-major f32.
pub fn rows_times_transposed(x: &[f32], rows: usize, weight: &[f32], n: usize, k: usize) -> Vec<f32> {
    assert_eq!(x.len(), rows * k, "x is not [{rows}, {k}]");
    assert_eq!(weight.len(), n * k, "the weight is not [{n}, {k}]");
    let mut out = vec![0f32; rows * n];
    if rows == 0 || n == 0 || k == 0 {
        return out;
    }
    let block = n.div_ceil(rayon::current_num_threads()).div_ceil(PANEL) * PANEL;
    let shared = SharedMut::new(&mut out);
    (0..n.div_ceil(block)).into_par_iter().for_each(|b| {
        let first = b * block;
        let columns = block.min(n - first);
        // SAFETY: block b writes only columns first..first + columns of
        // every row of `out` ([rows, n]); the weight rows it reads are in
        // bounds (first + columns ≤ n, checked above).
        unsafe {
            multiply(
                [rows, columns, k],
                Strided::rows(shared.get().add(first), n),
                Strided::rows(x.as_ptr(), k),
                Strided::columns(weight.as_ptr().add(first * k), k),
                false,
                1.0,
                Parallelism::None,
            );
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::cpu::test_values;

    /// The product in f64, as the reference.
    fn naive(x: &[f32], rows: usize, weight: &[f32], n: usize, k: usize) -> Vec<f64> {
        (0..rows)
            .flat_map(|r| {
                (0..n).map(move |o| (0..k).map(|i| f64::from(x[r * k + i]) * f64::from(weight[o * k + i])).sum())
            })
            .collect()
    }

    /// Odd shapes (a last block narrower than a panel, more blocks than
    /// columns would need, one row) against the f64 product.
    #[test]
    fn gives_the_product_over_odd_shapes() {
        for (rows, k, n) in [(1, 7, 3), (130, 33, 70), (196, 64, 17), (5, 300, 129), (128, 16, 8)] {
            let (x, weight) = (test_values(rows * k, 1, 1.0), test_values(n * k, 2, 1.0));
            let got = rows_times_transposed(&x, rows, &weight, n, k);
            let want = naive(&x, rows, &weight, n, k);
            let worst = got.iter().zip(&want).map(|(g, w)| (f64::from(*g) - w).abs()).fold(0f64, f64::max);
            assert!(worst < 1e-4 * (k as f64).sqrt(), "{rows}×{k}×{n}: max error {worst}");
        }
    }

    /// Each row's bits do not depend on the other rows in the call.
    #[test]
    fn a_row_is_the_same_in_any_batch() {
        let (k, n) = (200, 90);
        let x = test_values(300 * k, 3, 1.0);
        let weight = test_values(n * k, 4, 1.0);
        let all = rows_times_transposed(&x, 300, &weight, n, k);
        let part = rows_times_transposed(&x[..150 * k], 150, &weight, n, k);
        assert!(all[..150 * n] == part[..], "the first 150 rows differ when 150 more share the call");
    }
}
