//! Elementwise maths in SIMD: softmax numerators (`exp(x − max)` of each
//! row, and the row's sum), SiLU and the tanh GELU.
//!
//! Written as plain arithmetic over fixed-width lanes, which the compiler
//! vectorises; compiled three times (SSE2, AVX2 + FMA, AVX-512) by
//! `dispatched!` and chosen at run time by the CPU's features.

/// Lanes the loops keep in flight (one AVX-512 register, two AVX2 ones).
const LANES: usize = 16;

/// Defines `pub(super) fn $name($args)`, which runs `$portable($args, fma)`
/// compiled for AVX-512, for AVX2 + FMA or for the baseline (no FMA),
/// whichever the CPU has.
macro_rules! dispatched {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) => $portable:ident) => {
        $(#[$doc])*
        pub(super) fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) {
                    $portable($($arg,)* true)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    $portable($($arg,)* true)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the features the function is compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $portable($($arg,)* false)
        }
    };
}

dispatched! {
    /// For each row of `scores` (`row_len` values each): replaces the values
    /// by `exp(x − max(row))` and writes the row's sum to `sums`.
    fn exp_rows(scores: &mut [f32], row_len: usize, sums: &mut [f32]) => exp_rows_portable
}

dispatched! {
    /// `x · sigmoid(x)` in place, with sigmoid from `exp(−|x|)` (no overflow).
    fn silu_in_place(values: &mut [f32]) => silu_portable
}

dispatched! {
    /// GELU's tanh approximation in place, `0.5·x·(1 + tanh(u))` with
    /// u = √(2/π)·(x + 0.044715·x³), written as `x·sigmoid(2u)` (the same
    /// function) so that the negative tail keeps its relative precision.
    fn gelu_tanh_in_place(values: &mut [f32]) => gelu_tanh_portable
}

#[inline(always)]
fn silu_portable(values: &mut [f32], fma: bool) {
    for x in values.iter_mut() {
        let e = exp_non_positive(-x.abs(), fma);
        let sigmoid = if *x >= 0.0 { 1.0 / (1.0 + e) } else { e / (1.0 + e) };
        *x *= sigmoid;
    }
}

#[inline(always)]
fn gelu_tanh_portable(values: &mut [f32], fma: bool) {
    // 2·√(2/π), and the cubic's coefficient.
    const TWO_K: f32 = 1.595_769;
    const CUBIC: f32 = 0.044_715;
    for x in values.iter_mut() {
        let two_u = TWO_K * (*x + CUBIC * *x * *x * *x);
        let e = exp_non_positive(-two_u.abs(), fma);
        let sigmoid = if two_u >= 0.0 { 1.0 / (1.0 + e) } else { e / (1.0 + e) };
        *x *= sigmoid;
    }
}

#[inline(always)]
fn exp_rows_portable(scores: &mut [f32], row_len: usize, sums: &mut [f32], fma: bool) {
    for (row, sum) in scores.chunks_exact_mut(row_len).zip(sums.iter_mut()) {
        let max = row_max(row);
        *sum = exp_minus(row, max, fma);
    }
}

/// The row's maximum; NaN if the row holds one.
#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut nan = false;
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane = if x > *lane { x } else { *lane };
            nan |= x.is_nan();
        }
    }
    let mut max = f32::NEG_INFINITY;
    for &x in lanes.iter().chain(chunks.remainder()) {
        max = if x > max { x } else { max };
        nan |= x.is_nan();
    }
    if nan {
        f32::NAN
    } else {
        max
    }
}

/// Replaces `x` by `exp(x − max)` in place and returns the sum.
#[inline(always)]
fn exp_minus(row: &mut [f32], max: f32, fma: bool) -> f32 {
    let mut lanes = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (lane, x) in lanes.iter_mut().zip(chunk.iter_mut()) {
            *x = exp_non_positive(*x - max, fma);
            *lane += *x;
        }
    }
    let mut sum = 0f32;
    for x in chunks.into_remainder() {
        *x = exp_non_positive(*x - max, fma);
        sum += *x;
    }
    lanes.iter().sum::<f32>() + sum
}

/// `exp(x)` for x ≤ 0 (a softmax numerator), within 2e-7 relative; NaN
/// stays NaN. exp(x) = 2^n · exp(r), with n = round(x / ln 2) and
/// |r| ≤ ln 2 / 2, where a degree-7 Taylor polynomial is exact to f32.
#[inline(always)]
fn exp_non_positive(x: f32, fma: bool) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 in two parts, so that x − n·ln 2 loses nothing.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 · 2^23: adding it rounds to an integer, kept in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    // Below this, exp underflows f32's normal range: the result is ~0.
    const FLOOR: f32 = -87.0;
    let mul_add = |a: f32, b: f32, c: f32| if fma { a.mul_add(b, c) } else { a * b + c };
    let x = if x < FLOOR { FLOOR } else { x };
    let shifted = x * LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = mul_add(n, -LN2_LO, mul_add(n, -LN2_HI, x));
    let mut p = 1.0 / 5040.0;
    for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = mul_add(p, r, c);
    }
    // 2^n from n's bits: n is in -126..=0 here, so n + 127 is a normal exponent.
    let n_int = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let scale = f32::from_bits((n_int.wrapping_add(127) as u32) << 23);
    p * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_the_standard_library() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -87.0 * i as f32 / 200_000.0;
            for fma in [false, true] {
                let (ours, std) = (exp_non_positive(x, fma) as f64, (x as f64).exp());
                worst = worst.max(((ours - std) / std).abs());
            }
        }
        assert!(worst < 3e-7, "worst relative error {worst:e}");
        assert!(exp_non_positive(f32::NAN, false).is_nan());
        assert!(exp_non_positive(-1e30, true) < 1e-37);
    }

    #[test]
    fn silu_matches_its_definition() {
        let mut values: Vec<f32> = (-400..=400).map(|i| i as f32 / 20.0).collect();
        let expected: Vec<f64> = values.iter().map(|&x| f64::from(x) / (1.0 + (-f64::from(x)).exp())).collect();
        silu_in_place(&mut values);
        for (got, want) in values.iter().zip(&expected) {
            assert!((f64::from(*got) - want).abs() <= 1e-6 * want.abs().max(1e-3), "{got} against {want}");
        }
        let mut nan = [f32::NAN];
        silu_in_place(&mut nan);
        assert!(nan[0].is_nan());
    }

    #[test]
    fn gelu_tanh_matches_its_definition() {
        let mut values: Vec<f32> = (-400..=400).map(|i| i as f32 / 20.0).collect();
        let expected: Vec<f64> = values
            .iter()
            .map(|&x| {
                let x = f64::from(x);
                let u = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
                0.5 * x * (1.0 + u.tanh())
            })
            .collect();
        let mut portable = values.clone();
        gelu_tanh_portable(&mut portable, false);
        gelu_tanh_in_place(&mut values);
        for got in [&portable, &values] {
            for (got, want) in got.iter().zip(&expected) {
                // In the negative tail, u's own f32 rounding moves exp(2u) by ~1e-6.
                let scale = want.abs().max(1e-3);
                assert!((f64::from(*got) - want).abs() <= 3e-6 * scale, "{got} against {want}");
            }
        }
        let mut nan = [f32::NAN];
        gelu_tanh_in_place(&mut nan);
        assert!(nan[0].is_nan());
    }

    #[test]
    fn rows_are_exponentiated_and_summed_on_every_path() {
        // Rows of 37 (lanes plus a remainder) and 5 (a remainder only).
        for row_len in [37, 5] {
            let values: Vec<f32> = (0..3 * row_len).map(|i| ((i * 7919) % 97) as f32 / 9.0 - 5.0).collect();
            let mut expected = values.clone();
            let mut expected_sums = vec![0f32; 3];
            for (row, sum) in expected.chunks_exact_mut(row_len).zip(&mut expected_sums) {
                let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                row.iter_mut().for_each(|x| *x = (*x - max).exp());
                *sum = row.iter().sum();
            }
            let mut portable = values.clone();
            let mut sums = vec![0f32; 3];
            exp_rows_portable(&mut portable, row_len, &mut sums, false);
            let mut dispatched = values.clone();
            let mut dispatched_sums = vec![0f32; 3];
            exp_rows(&mut dispatched, row_len, &mut dispatched_sums);
            for (got, got_sums) in [(&portable, &sums), (&dispatched, &dispatched_sums)] {
                for (a, b) in got.iter().zip(&expected).chain(got_sums.iter().zip(&expected_sums)) {
                    assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{a} against {b}");
                }
            }
        }
        let mut with_nan = vec![0.0, f32::NAN, 1.0];
        let mut sums = [0f32];
        exp_rows(&mut with_nan, 3, &mut sums);
        assert!(sums[0].is_nan(), "a NaN score makes its row NaN");
    }
}
