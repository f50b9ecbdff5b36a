//! Kernels of this crate for burn-flex, the CPU backend.
//!
//! They are used only when the backend is burn-flex itself and the tensors
//! are f32: `Autodiff<Flex>` (training), wgpu, CUDA and half-precision
//! tensors keep burn's generic ops. A kernel reads its inputs back from
//! burn (a copy, cheap next to the work) and runs on rayon's pool, the one
//! burn-flex uses.

pub mod attention;
pub mod conv;
mod derived;
pub mod geglu;
pub mod gelu;
pub mod group_norm;
pub mod layout;
mod matmul;
pub mod mix_halves;
mod simd;
pub mod skinny;
pub mod split_gemm;
pub mod winograd;

use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::{DType, TensorPrimitive};
use burn_flex::FlexTensor;
use std::any::{Any, TypeId};

/// Runs `work` on a worker of rayon's pool when `B` is burn-flex (else
/// where it is called): the kernels' parallel loops inside it then start on
/// a worker, instead of each waking the pool from outside and sleeping
/// until it is done (≈ 1,000 such hand-offs in an 8×8-latent UNet step:
/// 0.143 → 0.133 s).
pub fn on_workers<B: Backend, R: Send>(work: impl FnOnce() -> R + Send) -> R {
    if !is_flex::<B>() || rayon::current_thread_index().is_some() {
        return work();
    }
    rayon::scope(|_| work())
}

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
    let flex = flex_view(tensor);
    if flex.as_slice::<f32>().is_some() {
        flex
    } else {
        flex.to_contiguous()
    }
}

/// The burn-flex tensor of a tensor of backend `B` (checked by [`runs_here`]),
/// as it is (possibly a strided view).
pub(crate) fn flex_view<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> FlexTensor {
    let primitive: Box<dyn Any> = match tensor.into_primitive() {
        TensorPrimitive::Float(primitive) => Box::new(primitive),
        TensorPrimitive::QFloat(_) => panic!("a quantised tensor (checked by runs_here)"),
    };
    *primitive.downcast::<FlexTensor>().expect("a burn-flex tensor (checked by runs_here)")
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

/// Reproducible test inputs: `len` values spread over ±`amplitude`.
#[cfg(test)]
pub(crate) fn test_values(len: usize, seed: u32, amplitude: f32) -> Vec<f32> {
    (0..len as u32)
        .map(|i| (((i.wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 2001) as f32 / 1000.0 - 1.0) * amplitude)
        .collect()
}

#[cfg(test)]
mod tests {
    //! A sample's result must not depend on what else is in its batch
    //! (`generate --batch-size` promises the same image as alone): each
    //! kernel, given a batch of 3, gives sample 1 bit for bit as alone.
    use super::*;

    fn values(len: usize, seed: u32) -> Vec<f32> {
        test_values(len, seed, 1.4)
    }

    /// Sample 1 of a 3-sample batch, each sample `len` values.
    fn second(batch: &[f32], len: usize) -> &[f32] {
        &batch[len..2 * len]
    }

    #[test]
    fn attention_is_batch_invariant() {
        let (len_q, len_k, d_model, heads) = (150, 77, 40, 8);
        let shape = |batch| attention::AttentionShape { batch, len_q, len_k, d_model, heads };
        let (q, k, v) =
            (values(3 * len_q * d_model, 1), values(3 * len_k * d_model, 2), values(3 * len_k * d_model, 3));
        let batched = attention::attention(&q, &k, &v, shape(3));
        let alone = attention::attention(
            second(&q, len_q * d_model),
            second(&k, len_k * d_model),
            second(&v, len_k * d_model),
            shape(1),
        );
        assert!(second(&batched, len_q * d_model) == alone.as_slice());
    }

    #[test]
    fn conv_is_batch_invariant() {
        // im2col (3×3 on a small image), Winograd (3×3 on a large one), in
        // place (1×1), few pixels (3×3 and 1×1 on 4×3: `skinny`).
        let cases =
            [(3, [1; 4], 12, 10), (3, [1; 4], 33, 32), (1, [0; 4], 12, 10), (3, [1; 4], 4, 3), (1, [0; 4], 4, 3)];
        for (k, padding, height, width) in cases {
            let shape = |batch| conv::ConvShape {
                batch,
                in_channels: 64,
                height,
                width,
                out_channels: 48,
                kernel: [k, k],
                stride: [1, 1],
                padding,
            };
            assert_eq!(winograd::applies(&shape(1)), height == 33, "the case list covers each path");
            let pixels = height * width;
            let x = values(3 * 64 * pixels, 4);
            let weight = values(48 * 64 * k * k, 5);
            let bias = values(48, 6);
            let batched = conv::conv2d(&x, &weight, Some(&bias), shape(3));
            let alone = conv::conv2d(second(&x, 64 * pixels), &weight, Some(&bias), shape(1));
            assert!(second(&batched, 48 * pixels) == alone.as_slice(), "{k}x{k} over {height}x{width}");
        }
    }

    #[test]
    fn a_window_of_taps_is_batch_invariant() {
        // A 3×3 conv over a 1×1 image reads its centre tap.
        let shape = |batch| conv::ConvShape {
            batch,
            in_channels: 64,
            height: 1,
            width: 1,
            out_channels: 48,
            kernel: [3, 3],
            stride: [1, 1],
            padding: [1; 4],
        };
        let weight = burn_flex::FlexTensor::from_data(TensorData::new(values(48 * 64 * 9, 5), [48, 64, 3, 3]));
        let (x, bias) = (values(3 * 64, 4), values(48, 6));
        let run = |x: &[f32], batch| {
            let (window, windowed) = conv::inner_taps(&shape(batch)).expect("a window");
            conv::conv2d(x, &conv::window_weights(&weight, window), Some(&bias), windowed)
        };
        assert!(second(&run(&x, 3), 48) == run(second(&x, 64), 1).as_slice());
    }

    #[test]
    fn group_norm_is_batch_invariant() {
        let shape = |batch| group_norm::GroupNormShape { batch, channels: 64, groups: 32, spatial: 99 };
        let x = values(3 * 64 * 99, 7);
        let (gamma, beta) = (values(64, 8), values(64, 9));
        let batched = group_norm::group_norm(&x, &gamma, &beta, 1e-5, true, shape(3));
        let alone = group_norm::group_norm(second(&x, 64 * 99), &gamma, &beta, 1e-5, true, shape(1));
        assert!(second(&batched, 64 * 99) == alone.as_slice());
    }

    #[test]
    fn flex_work_runs_on_a_pool_worker_and_other_backends_stay_put() {
        // The test's own thread is not one of rayon's workers.
        assert_eq!(rayon::current_thread_index(), None);
        assert!(on_workers::<Flex, _>(rayon::current_thread_index).is_some());
        assert_eq!(on_workers::<burn::backend::Autodiff<Flex>, _>(rayon::current_thread_index), None);
        // Nested: already on a worker, the work runs where it is.
        let (outer, inner) = on_workers::<Flex, _>(|| {
            (rayon::current_thread_index(), on_workers::<Flex, _>(rayon::current_thread_index))
        });
        assert_eq!(outer, inner);
    }
}
