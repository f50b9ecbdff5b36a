//! GEGLU's `value · gelu(gate)` over the two halves of each row, in one
//! parallel pass. On burn-flex 0.21 the halves are strided views, which
//! its elementwise ops walk with a scalar iterator on one thread.

use rayon::prelude::*;

/// Rows per task.
const ROWS: usize = 16;

/// `x` [rows, 2F] → [rows, F]: `x[.., ..F] · gelu(x[.., F..])`, with
/// burn-flex's exact GELU arithmetic (`0.5·g·(1 + erf(g/√2))`, libm's erf).
pub fn geglu(x: &[f32], features: usize) -> Vec<f32> {
    assert!(features > 0 && x.len().is_multiple_of(2 * features), "rows of 2 × {features}");
    let mut out = vec![0f32; x.len() / 2];
    let sqrt2 = std::f32::consts::SQRT_2;
    out.par_chunks_mut(ROWS * features).zip(x.par_chunks(2 * ROWS * features)).for_each(|(out, x)| {
        for (out, row) in out.chunks_exact_mut(features).zip(x.chunks_exact(2 * features)) {
            let (value, gate) = row.split_at(features);
            for ((o, v), g) in out.iter_mut().zip(value).zip(gate) {
                *o = v * (0.5 * g * (1.0 + libm::erff(g / sqrt2)));
            }
        }
    });
    out
}
