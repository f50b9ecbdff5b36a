//! The image ↔ token swap ([B, C, H·W] ↔ [B, H·W, C]) as a parallel,
//! tiled transpose. burn-flex 0.21 makes a swapped view contiguous with a
//! scalar strided iterator, one element at a time on one thread.

use super::SharedMut;
use rayon::prelude::*;

/// Side of the square tiles: 32 × 32 f32 reads and writes stay in L1.
const TILE: usize = 32;

/// `x` [B, R, C] (row-major) → [B, C, R].
pub fn transpose_last_two(x: &[f32], batch: usize, rows: usize, cols: usize) -> Vec<f32> {
    assert_eq!(x.len(), batch * rows * cols, "not [{batch}, {rows}, {cols}]");
    let mut out = vec![0f32; x.len()];
    let row_tiles = rows.div_ceil(TILE);
    let out_ptr = SharedMut::new(&mut out);
    (0..batch * row_tiles).into_par_iter().for_each(|task| {
        let (b, tile) = (task / row_tiles, task % row_tiles);
        let (r0, r1) = (tile * TILE, (tile * TILE + TILE).min(rows));
        let input = &x[b * rows * cols..(b + 1) * rows * cols];
        let base = b * rows * cols;
        for c0 in (0..cols).step_by(TILE) {
            let c1 = (c0 + TILE).min(cols);
            for c in c0..c1 {
                for r in r0..r1 {
                    // SAFETY: out[b, c, r] for r in this task's rows only.
                    unsafe { *out_ptr.get().add(base + c * rows + r) = input[r * cols + c] };
                }
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposes_every_batch_element_over_odd_tiles() {
        for (batch, rows, cols) in [(1, 1, 1), (2, 33, 70), (3, 64, 5), (1, 7, 96)] {
            let x: Vec<f32> = (0..batch * rows * cols).map(|i| i as f32).collect();
            let out = transpose_last_two(&x, batch, rows, cols);
            for b in 0..batch {
                for r in 0..rows {
                    for c in 0..cols {
                        assert_eq!(out[(b * cols + c) * rows + r], x[(b * rows + r) * cols + c]);
                    }
                }
            }
        }
    }
}
