//! Points in the UNet's forward pass where another network may read and
//! replace the hidden state: the one lock-step loop that the plain UNet,
//! ControlNet-style residuals and the StyleCodes control branch share.

use super::text_context::TextContext;
use burn::prelude::*;

/// What a hook sees besides the hidden state.
pub struct HookInputs<'a, B: Backend> {
    /// The time embedding, [B, time_embed_dim].
    pub temb: &'a Tensor<B, 2>,
    /// The text context, [B, L, D].
    pub context: &'a TextContext<B>,
}

/// Where an up sub-block sits: what it consumed and how it scaled.
#[derive(Debug, Clone, Copy)]
pub struct UpStep {
    /// Index of the up sub-block (0..12 in SD1.5).
    pub index: usize,
    /// Shape of the skip the sub-block concatenated with the hidden state.
    pub skip_dims: [usize; 4],
    /// Where the sub-block ends with an upsampler: the next skip's [H, W].
    pub upsample_to: Option<[usize; 2]>,
}

/// Called by [`UNet2DConditionModel::forward_with_hook`](super::unet_2d::UNet2DConditionModel::forward_with_hook);
/// every method defaults to leaving the state as it is.
pub trait UNetHook<B: Backend> {
    /// Skip `index` (in the order made: `conv_in`'s output, then each down
    /// sub-block's) before the up path consumes it.
    fn skip(&mut self, _index: usize, skip: Tensor<B, 4>) -> Tensor<B, 4> {
        skip
    }

    /// The mid block's output.
    fn after_mid(&mut self, h: Tensor<B, 4>, _inputs: &HookInputs<'_, B>) -> Tensor<B, 4> {
        h
    }

    /// An up sub-block's output.
    fn after_up(&mut self, _step: UpStep, h: Tensor<B, 4>, _inputs: &HookInputs<'_, B>) -> Tensor<B, 4> {
        h
    }
}

/// The plain forward pass.
pub struct NoHook;

impl<B: Backend> UNetHook<B> for NoHook {}

/// ControlNet-style residuals: one per skip, shaped like it, added to the
/// skips, and one added to the mid block's output.
pub struct Residuals<'a, B: Backend> {
    pub down: &'a [Tensor<B, 4>],
    pub mid: Tensor<B, 4>,
}

impl<B: Backend> UNetHook<B> for Residuals<'_, B> {
    fn skip(&mut self, index: usize, skip: Tensor<B, 4>) -> Tensor<B, 4> {
        skip + self.down[index].clone()
    }

    fn after_mid(&mut self, h: Tensor<B, 4>, _inputs: &HookInputs<'_, B>) -> Tensor<B, 4> {
        h + self.mid.clone()
    }
}
