//! Kernels of this crate for burn-flex, the CPU backend.
//!
//! They are used only when the backend is burn-flex itself and the tensors
//! are f32: `Autodiff<Flex>` (training), wgpu, CUDA and half-precision
//! tensors keep burn's generic ops. A kernel reads its inputs back from
//! burn (a copy, cheap next to the work) and runs on rayon's pool, the one
//! burn-flex uses.

pub mod attention;
pub mod conv;
pub mod geglu;
pub mod group_norm;
pub mod layout;
mod simd;

use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::{DType, TensorPrimitive};
use burn_flex::FlexTensor;
use std::any::{Any, TypeId};

/// Whether `B` is burn-flex (and not a wrapper of it, such as autodiff).
pub fn is_flex<B: Backend>() -> bool {
    TypeId::of::<B>() == TypeId::of::<Flex>()
}

/// Whether a kernel here should run for this tensor of backend `B`.
pub(crate) fn runs_here<B: Backend, const D: usize>(tensor: &Tensor<B, D>) -> bool {
    is_flex::<B>() && tensor.dtype() == DType::F32
}

/// The burn-flex tensor of a tensor of backend `B` (checked by [`runs_here`]),
/// made contiguous: a kernel reads it in place with [`values`].
pub(crate) fn to_flex<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> FlexTensor {
    let primitive: Box<dyn Any> = match tensor.into_primitive() {
        TensorPrimitive::Float(primitive) => Box::new(primitive),
        TensorPrimitive::QFloat(_) => panic!("a quantised tensor (checked by runs_here)"),
    };
    let flex = *primitive.downcast::<FlexTensor>().expect("a burn-flex tensor (checked by runs_here)");
    if flex.as_slice::<f32>().is_some() {
        flex
    } else {
        flex.to_contiguous()
    }
}

/// The f32 values of a contiguous tensor from [`to_flex`], without a copy.
pub(crate) fn values(tensor: &FlexTensor) -> &[f32] {
    tensor.as_slice::<f32>().expect("a contiguous f32 tensor (made by to_flex)")
}

/// A kernel's output, row-major, as a tensor of backend `B` (burn-flex).
pub(crate) fn from_values<B: Backend, const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Tensor<B, D> {
    let flex: Box<dyn Any> = Box::new(FlexTensor::from_data(TensorData::new(values, shape)));
    let primitive = *flex.downcast::<B::FloatTensorPrimitive>().expect("B is burn-flex (checked by runs_here)");
    Tensor::from_primitive(TensorPrimitive::Float(primitive))
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
