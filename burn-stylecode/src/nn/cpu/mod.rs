//! Kernels of this crate for burn-flex, the CPU backend.
//!
//! They are used only when the backend is burn-flex itself and the tensors
//! are f32: `Autodiff<Flex>` (training), wgpu, CUDA and half-precision
//! tensors keep burn's generic ops. A kernel reads its inputs back from
//! burn (a copy, cheap next to the work) and runs on rayon's pool, the one
//! burn-flex uses.

pub mod attention;
pub mod layout;
mod simd;

use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::DType;
use std::any::TypeId;

/// Whether `B` is burn-flex (and not a wrapper of it, such as autodiff).
pub fn is_flex<B: Backend>() -> bool {
    TypeId::of::<B>() == TypeId::of::<Flex>()
}

/// Whether a kernel here should run for this tensor of backend `B`.
pub(crate) fn runs_here<B: Backend, const D: usize>(tensor: &Tensor<B, D>) -> bool {
    is_flex::<B>() && tensor.dtype() == DType::F32
}

/// The f32 values of a tensor, in row-major order.
pub(crate) fn host_values<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Vec<f32> {
    tensor.into_data().into_vec::<f32>().expect("an f32 tensor (checked by runs_here)")
}

/// A raw pointer that tasks writing disjoint parts of one buffer share.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut(*mut f32);

impl SharedMut {
    pub(crate) fn new(buffer: &mut [f32]) -> Self {
        Self(buffer.as_mut_ptr())
    }

    /// The pointer (a method, so that closures capture the whole `Sync` value).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

// SAFETY: every task writes only its own elements (see each use).
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}
