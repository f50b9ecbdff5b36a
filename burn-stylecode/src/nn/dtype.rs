//! Moving tensors between float dtypes at the borders of mixed precision.

use burn::prelude::*;
use burn::tensor::DType;

/// `tensor` in `dtype`; unchanged (and no autodiff node) when it already is.
pub fn in_dtype<B: Backend, const D: usize>(tensor: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if tensor.dtype() == dtype {
        tensor
    } else {
        tensor.cast(dtype)
    }
}
