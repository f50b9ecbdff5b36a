//! The crate's one call into the `gemm` crate: `dst ← [dst +] scale · lhs · rhs`
//! over f32 matrices laid out by strides, so that each kernel reads its
//! operands where they lie (a head's columns, a transposed weight, a window
//! of an image).

use gemm::{gemm, Parallelism};

/// An f32 matrix in memory: element (i, j) at `ptr + i·row_stride + j·column_stride`.
#[derive(Clone, Copy)]
pub(crate) struct Strided<P> {
    pub ptr: P,
    pub row_stride: usize,
    pub column_stride: usize,
}

impl<P> Strided<P> {
    /// Rows `row_stride` apart, each row contiguous.
    pub(crate) fn rows(ptr: P, row_stride: usize) -> Self {
        Self { ptr, row_stride, column_stride: 1 }
    }

    /// Columns `column_stride` apart, each column contiguous: the transpose
    /// of a row-major matrix with rows `column_stride` apart.
    pub(crate) fn columns(ptr: P, column_stride: usize) -> Self {
        Self { ptr, row_stride: 1, column_stride }
    }
}

/// `dst` [m, n] ← (`dst` if `accumulate`) + `scale` · `lhs` [m, k] · `rhs` [k, n],
/// for `[m, n, k]` = `dims`.
///
/// # Safety
/// Each matrix's elements over its shape lie inside one allocation, and no
/// other thread reads or writes `dst`'s elements during the call.
pub(crate) unsafe fn multiply(
    [m, n, k]: [usize; 3],
    dst: Strided<*mut f32>,
    lhs: Strided<*const f32>,
    rhs: Strided<*const f32>,
    accumulate: bool,
    scale: f32,
    parallelism: Parallelism,
) {
    let stride = |s: usize| s as isize;
    // SAFETY: the caller's contract; gemm reads dst only when `accumulate`.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.ptr,
            stride(dst.column_stride),
            stride(dst.row_stride),
            accumulate,
            lhs.ptr,
            stride(lhs.column_stride),
            stride(lhs.row_stride),
            rhs.ptr,
            stride(rhs.column_stride),
            stride(rhs.row_stride),
            if accumulate { 1.0 } else { 0.0 },
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}
