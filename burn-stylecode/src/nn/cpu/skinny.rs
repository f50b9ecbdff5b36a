//! A few rows times a large transposed weight, `y = x Wᵀ`, reading the
//! weight once.
//!
//! A UNet step on a small latent multiplies a handful of rows (the tokens
//! or pixels of the 1280-wide levels: 1–16 per sample) by weights of up to
//! 1280 × 11520. gemm packs the whole weight for them (read, write, read
//! again) and the linear's padding to 128 rows multiplies zeros: the step
//! then costs the weights' memory traffic several times over. Here each
//! output is a dot product of two contiguous rows, so the weight streams
//! through once, in parallel over blocks of its rows.
//!
//! Every output sums in one fixed order (16 lanes over k, a fixed lane
//! reduction, then the k remainder) whatever the number of rows and their
//! place in the blocks, so a row's result does not depend on its batch.

use super::SharedMut;
use rayon::prelude::*;

/// Lanes of the k-loop (one AVX-512 register, two AVX2 ones).
const LANES: usize = 16;
/// Rows of `W` and of `x` per register block: 8 × 2 accumulators of 16
/// lanes. Eight weight rows a block ran the few-row products nearest to
/// memory speed (rows of x ≤ 2: 41–43 → 46–50 GB/s over 4 × 4 blocks).
const O_BLOCK: usize = 8;
const J_BLOCK: usize = 2;
/// Values of k per pass (2 KiB of each row): a task's weight rows and x
/// stay in L2 across the pass.
const DEPTH_BLOCK: usize = 512;
/// Bytes of x up to which a pass takes the whole of k: x stays in L2 by
/// itself, and each weight row streams from memory in one run rather than
/// in 2 KiB pieces.
const MAX_WHOLE_DEPTH_X_BYTES: usize = 512 << 10;
/// Weight rows per task.
const TASK_ROWS: usize = 32;

/// `x` [rows, k] · `weight` [n, k]ᵀ → [rows, n], row-major f32.
pub fn rows_times_transposed(x: &[f32], rows: usize, weight: &[f32], n: usize, k: usize) -> Vec<f32> {
    assert_eq!(x.len(), rows * k, "x is not [{rows}, {k}]");
    assert_eq!(weight.len(), n * k, "the weight is not [{n}, {k}]");
    let mut out = vec![0f32; rows * n];
    if rows == 0 || n == 0 {
        return out;
    }
    // Each task owns whole weight rows, so whole columns of `out`, and
    // writes them in place (a transpose afterwards was a serial pass).
    let shared = SharedMut::new(&mut out);
    (0..n.div_ceil(TASK_ROWS)).into_par_iter().for_each(|task| {
        let first = task * TASK_ROWS;
        let count = TASK_ROWS.min(n - first);
        // SAFETY: this task alone writes columns first..first + count of
        // out's `rows` rows of n values.
        unsafe { dots(&weight[first * k..(first + count) * k], x, k, rows, shared.get().add(first), n) };
    });
    out
}

/// Whether this CPU runs the kernel at memory speed (AVX-512); elsewhere
/// the callers keep gemm, and [`rows_times_transposed`] runs a plain loop
/// with the same summation order (for the tests).
pub fn pays() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out[j·stride + o] = w_o · x_j` for the weight rows `w_o` of `weight`
/// and the `rows` rows `x_j` of `x`.
///
/// # Safety
/// `out` is valid for writes at every such index.
unsafe fn dots(weight: &[f32], x: &[f32], k: usize, rows: usize, out: *mut f32, stride: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F; the caller's contract on out.
            return unsafe { dots_avx512(weight, x, k, rows, out, stride) };
        }
    }
    // SAFETY: the caller's contract.
    unsafe { dots_portable(weight, x, k, rows, out, stride) }
}

/// Blocks of 8 weight rows × 2 x rows × [`DEPTH_BLOCK`] of k (all of k when
/// x is small). A block's last pass sums its 16 accumulators' lanes in
/// registers and writes the outputs; earlier passes keep the lane sums in a
/// buffer (so that the task's slice of the weight and all of x stay in L2):
/// the same order as [`dot_portable`], whatever the depth block.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn dots_avx512(weight: &[f32], x: &[f32], k: usize, rows: usize, out: *mut f32, stride: usize) {
    use std::arch::x86_64::*;
    let weight_rows = weight.len() / k;
    let whole = k / LANES * LANES;
    if whole == 0 {
        // Under 16 values of k: the portable loop's order is the remainder alone.
        return unsafe { dots_portable(weight, x, k, rows, out, stride) };
    }
    let depth_block = if std::mem::size_of_val(x) <= MAX_WHOLE_DEPTH_X_BYTES { whole } else { DEPTH_BLOCK };
    // Lane sums between passes, only when there are several.
    let mut lanes = if depth_block < whole { vec![0f32; weight_rows * rows * LANES] } else { Vec::new() };
    for k0 in (0..whole).step_by(depth_block) {
        let k1 = (k0 + depth_block).min(whole);
        let (first_pass, last_pass) = (k0 == 0, k1 == whole);
        for o0 in (0..weight_rows).step_by(O_BLOCK) {
            // Rows past the end repeat the last one: they compute and store
            // the same values again, so every output takes this path.
            let o: [usize; O_BLOCK] = std::array::from_fn(|i| (o0 + i).min(weight_rows - 1));
            for j0 in (0..rows).step_by(J_BLOCK) {
                let j: [usize; J_BLOCK] = std::array::from_fn(|i| (j0 + i).min(rows - 1));
                let slot = |a: usize, b: usize| (o[a] * rows + j[b]) * LANES;
                // SAFETY (all loads and stores): every slot holds 16 lanes;
                // rows hold k ≥ k1 values.
                let mut acc: [[__m512; J_BLOCK]; O_BLOCK] = std::array::from_fn(|a| {
                    std::array::from_fn(|b| {
                        if first_pass {
                            _mm512_setzero_ps()
                        } else {
                            unsafe { _mm512_loadu_ps(lanes.as_ptr().add(slot(a, b))) }
                        }
                    })
                });
                let w: [*const f32; O_BLOCK] = std::array::from_fn(|a| unsafe { weight.as_ptr().add(o[a] * k + k0) });
                let xs: [*const f32; J_BLOCK] = std::array::from_fn(|b| unsafe { x.as_ptr().add(j[b] * k + k0) });
                unsafe { accumulate(&mut acc, w, xs, k1 - k0) };
                for (a, acc) in acc.iter().enumerate() {
                    for (b, &acc) in acc.iter().enumerate() {
                        if !last_pass {
                            unsafe { _mm512_storeu_ps(lanes.as_mut_ptr().add(slot(a, b)), acc) };
                            continue;
                        }
                        let mut sum = unsafe { reduce_avx512(acc) };
                        for c in whole..k {
                            sum = weight[o[a] * k + c].mul_add(x[j[b] * k + c], sum);
                        }
                        // SAFETY: the caller's contract.
                        unsafe { *out.add(j[b] * stride + o[a]) = sum };
                    }
                }
            }
        }
    }
}

/// `acc[a][b] += w[a][c..c + 16] · x[b][c..c + 16]` lane-wise for c = 0, 16, … < len.
///
/// Its own function: inlined into the block loop, LLVM shuffled the 16
/// accumulators between registers on every iteration.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline(never)]
unsafe fn accumulate(
    acc: &mut [[std::arch::x86_64::__m512; J_BLOCK]; O_BLOCK],
    w: [*const f32; O_BLOCK],
    x: [*const f32; J_BLOCK],
    len: usize,
) {
    use std::arch::x86_64::*;
    let mut sums = *acc;
    let mut c = 0;
    while c < len {
        // SAFETY: the caller's rows hold len values from these pointers.
        let wv: [__m512; O_BLOCK] = std::array::from_fn(|a| unsafe { _mm512_loadu_ps(w[a].add(c)) });
        let xv: [__m512; J_BLOCK] = std::array::from_fn(|b| unsafe { _mm512_loadu_ps(x[b].add(c)) });
        for (sums, &w) in sums.iter_mut().zip(&wv) {
            for (sum, &x) in sums.iter_mut().zip(&xv) {
                *sum = _mm512_fmadd_ps(w, x, *sum);
            }
        }
        c += LANES;
    }
    *acc = sums;
}

/// [`reduce`]'s pairwise tree on one register: lanes l + 8, then + 4, + 2, + 1.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn reduce_avx512(v: std::arch::x86_64::__m512) -> f32 {
    use std::arch::x86_64::*;
    let low = _mm512_castps512_ps256(v);
    let high = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    let eight = _mm256_add_ps(low, high);
    let four = _mm_add_ps(_mm256_castps256_ps128(eight), _mm256_extractf128_ps(eight, 1));
    let two = _mm_add_ps(four, _mm_movehl_ps(four, four));
    _mm_cvtss_f32(_mm_add_ss(two, _mm_shuffle_ps(two, two, 1)))
}

/// The portable kernel: each output's [`dot_portable`].
///
/// # Safety
/// As [`dots`].
unsafe fn dots_portable(weight: &[f32], x: &[f32], k: usize, rows: usize, out: *mut f32, stride: usize) {
    for o in 0..weight.len() / k {
        for j in 0..rows {
            // SAFETY: the caller's contract.
            unsafe { *out.add(j * stride + o) = dot_portable(&weight[o * k..][..k], &x[j * k..][..k]) };
        }
    }
}

/// Lane `l` sums k ≡ l (mod 16) in order with fused multiply-adds, the
/// lanes sum as a fixed tree, then the remainder of k follows in order.
fn dot_portable(w: &[f32], x: &[f32]) -> f32 {
    let whole = w.len() / LANES * LANES;
    let mut lanes = [0f32; LANES];
    for c in (0..whole).step_by(LANES) {
        for (l, lane) in lanes.iter_mut().enumerate() {
            *lane = w[c + l].mul_add(x[c + l], *lane);
        }
    }
    let mut sum = reduce(&lanes);
    for c in whole..w.len() {
        sum = w[c].mul_add(x[c], sum);
    }
    sum
}

/// The lanes' sum as a fixed pairwise tree.
#[inline(always)]
fn reduce(lanes: &[f32; LANES]) -> f32 {
    let mut v = *lanes;
    let mut width = LANES / 2;
    while width > 0 {
        for l in 0..width {
            v[l] += v[l + width];
        }
        width /= 2;
    }
    v[0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::cpu::test_values;

    fn naive(x: &[f32], rows: usize, weight: &[f32], n: usize, k: usize) -> Vec<f64> {
        let mut out = vec![0f64; rows * n];
        for j in 0..rows {
            for o in 0..n {
                out[j * n + o] = (0..k).map(|c| f64::from(x[j * k + c]) * f64::from(weight[o * k + c])).sum();
            }
        }
        out
    }

    #[test]
    fn matches_the_direct_sum_over_odd_shapes() {
        // Rows, weight rows and depths off the blocks, the lanes and the tasks.
        for (rows, n, k) in [(1, 1, 1), (1, 70, 33), (3, 5, 16), (5, 37, 100), (8, 64, 1280), (13, 9, 47)] {
            let x = test_values(rows * k, 3, 1.0);
            let weight = test_values(n * k, 5, 0.5);
            let got = rows_times_transposed(&x, rows, &weight, n, k);
            let expected = naive(&x, rows, &weight, n, k);
            let scale = (k as f64).sqrt() * 0.5;
            for (g, e) in got.iter().zip(&expected) {
                assert!((f64::from(*g) - e).abs() <= 1e-5 * scale, "{rows}×{k} · {n}×{k}: {g} against {e}");
            }
        }
    }

    /// The dispatched kernel sums in the portable loop's order, bit for bit.
    #[test]
    fn every_path_sums_in_one_order() {
        // x small enough for whole-depth passes, and x over the bound (passes of 512).
        for (rows, n, k) in [(6, 7, 16 * 70 + 7), (12, 5, 16 * 700 + 7)] {
            let x = test_values(rows * k, 13, 1.0);
            let weight = test_values(n * k, 17, 1.0);
            let mut out = vec![0f32; rows * n];
            // SAFETY: out holds rows × n values.
            unsafe { dots(&weight, &x, k, rows, out.as_mut_ptr(), n) };
            for (slot, &got) in out.iter().enumerate() {
                let (j, o) = (slot / n, slot % n);
                assert_eq!(got, dot_portable(&weight[o * k..][..k], &x[j * k..][..k]), "{rows}×{k}: output ({j}, {o})");
            }
        }
    }

    #[test]
    fn a_row_gives_the_same_bits_in_any_batch() {
        // At the second depth, 9 rows of x are over the whole-depth bound and 3 are under it.
        for (n, k) in [(45, 301), (45, 16 * 1000 + 5)] {
            let x = test_values(9 * k, 7, 1.0);
            let weight = test_values(n * k, 11, 0.5);
            let alone = rows_times_transposed(&x[2 * k..3 * k], 1, &weight, n, k);
            for rows in [3, 4, 5, 9] {
                let batched = rows_times_transposed(&x[..rows * k], rows, &weight, n, k);
                assert!(batched[2 * n..3 * n] == alone[..], "k {k}: row 2 of {rows}");
            }
        }
    }
}
