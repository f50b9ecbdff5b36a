//! GroupNorm, optionally followed by SiLU, in two passes over each group
//! (statistics, then normalise-scale-shift-activate), groups in parallel.
//! burn's composition makes about nine passes, some on one thread.

use super::simd::silu_in_place;
use rayon::prelude::*;

/// Shape of one GroupNorm call over [B, C, spatial…] (spatial flattened).
#[derive(Debug, Clone, Copy)]
pub struct GroupNormShape {
    pub batch: usize,
    pub channels: usize,
    pub groups: usize,
    pub spatial: usize,
}

/// `(x − mean) / √(var + ε) · γ + β` per group of channels (the biased
/// variance, statistics in f64), then `silu` if asked.
pub fn group_norm(x: &[f32], gamma: &[f32], beta: &[f32], epsilon: f64, silu: bool, shape: GroupNormShape) -> Vec<f32> {
    let GroupNormShape { batch, channels, groups, spatial } = shape;
    assert!(groups > 0 && channels.is_multiple_of(groups), "{channels} channels in {groups} groups");
    assert_eq!(x.len(), batch * channels * spatial, "x is not {shape:?}");
    assert!(gamma.len() == channels && beta.len() == channels, "γ and β are not [{channels}]");
    let per_group = channels / groups;
    let group_len = per_group * spatial;
    let mut out = vec![0f32; x.len()];
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(group_len).zip(x.par_chunks(group_len)).enumerate().for_each(|(task, (out, x))| {
        let first_channel = task % groups * per_group;
        let mean = sum_f64(x.iter().map(|&v| f64::from(v))) / group_len as f64;
        let variance = sum_f64(x.iter().map(|&v| (f64::from(v) - mean).powi(2))) / group_len as f64;
        let inverse_std = 1.0 / (variance + epsilon).sqrt();
        let mean = mean as f32;
        for (c, (out, x)) in out.chunks_exact_mut(spatial).zip(x.chunks_exact(spatial)).enumerate() {
            let scale = (inverse_std * f64::from(gamma[first_channel + c])) as f32;
            let shift = beta[first_channel + c];
            for (o, &v) in out.iter_mut().zip(x) {
                *o = (v - mean) * scale + shift;
            }
            if silu {
                silu_in_place(out);
            }
        }
    });
    out
}

/// A sum in 8 independent lanes (so that it vectorises).
fn sum_f64(values: impl Iterator<Item = f64>) -> f64 {
    let mut lanes = [0f64; 8];
    for (i, v) in values.enumerate() {
        lanes[i % 8] += v;
    }
    lanes.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_each_group_and_applies_silu() {
        let shape = GroupNormShape { batch: 2, channels: 6, groups: 3, spatial: 5 };
        let x: Vec<f32> = (0..60).map(|i| ((i * 37) % 23) as f32 * 0.7 + 40.0).collect();
        let gamma: Vec<f32> = (0..6).map(|c| 0.5 + c as f32).collect();
        let beta: Vec<f32> = (0..6).map(|c| c as f32 - 2.0).collect();
        for silu in [false, true] {
            let out = group_norm(&x, &gamma, &beta, 1e-5, silu, shape);
            for task in 0..6 {
                let group = &x[task * 10..(task + 1) * 10];
                let mean = group.iter().map(|&v| f64::from(v)).sum::<f64>() / 10.0;
                let var = group.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / 10.0;
                for k in 0..10 {
                    let c = task % 3 * 2 + k / 5;
                    let y =
                        (f64::from(group[k]) - mean) / (var + 1e-5).sqrt() * f64::from(gamma[c]) + f64::from(beta[c]);
                    let y = if silu { y / (1.0 + (-y).exp()) } else { y };
                    let got = f64::from(out[task * 10 + k]);
                    assert!(
                        (got - y).abs() < 1e-5 * y.abs().max(1.0),
                        "silu {silu}, group {task}, {k}: {got} against {y}"
                    );
                }
            }
        }
    }
}
