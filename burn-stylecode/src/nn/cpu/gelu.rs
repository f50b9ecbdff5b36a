//! GELU's tanh approximation (SigLIP's MLP) in one parallel SIMD pass. burn
//! 0.21 composes it from about eight elementwise ops, with a scalar `powf`
//! and `tanh`, each a pass over the tensor on one thread.

use super::simd::gelu_tanh_in_place;
use rayon::prelude::*;

/// Values per task.
const CHUNK: usize = 1 << 14;

/// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))` of every value.
pub fn gelu_tanh(x: &[f32]) -> Vec<f32> {
    let mut out = x.to_vec();
    out.par_chunks_mut(CHUNK).for_each(gelu_tanh_in_place);
    out
}
