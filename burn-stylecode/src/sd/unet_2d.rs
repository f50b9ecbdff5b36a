//! diffusers' `UNet2DConditionModel` for the SD1.5 block types, drivable
//! one sub-block at a time.
//!
//! The style control module runs a second UNet's mid block and up blocks in
//! lock-step with this one and mixes the hidden states after the mid block
//! and after every up sub-block, so the forward pass is exposed in pieces:
//! [`time_embedding`](method@UNet2DConditionModel::time_embedding),
//! [`conv_in`](method@UNet2DConditionModel::conv_in),
//! [`down_sub_block`](UNet2DConditionModel::down_sub_block) (each output is a
//! skip), [`mid_block`](method@UNet2DConditionModel::mid_block),
//! [`up_sub_block`](UNet2DConditionModel::up_sub_block) (the caller
//! concatenates the skip) and [`head`](UNet2DConditionModel::head).
//! [`forward`](UNet2DConditionModel::forward) is built from exactly these.

use super::embeddings::{TimestepEmbedding, TimestepEmbeddingConfig, Timesteps, TimestepsConfig};
use super::resnet::conv_same;
use super::text_context::TextContext;
use super::unet_2d_blocks::{
    CrossAttentionConfig, DownBlock2D, DownBlock2DConfig, DownSubBlocks, MidBlock2DCrossAttn,
    MidBlock2DCrossAttnConfig, ResnetSettings, UpBlock2D, UpBlock2DConfig, UpSubBlocks,
};
use super::unet_hook::{HookInputs, NoHook, UNetHook, UpStep};
use crate::nn::{conv2d, on_workers, GroupNorm, GroupNormConfig};
use crate::weights::JsonConfig;
use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::conv::Conv2d;
use burn::prelude::*;
use serde::Deserialize;

/// One value for every block, or one per block (diffusers accepts both).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PerBlock<T> {
    One(T),
    Each(Vec<T>),
}

impl<T: Copy> PerBlock<T> {
    /// The value for block `i` (down-block order).
    pub fn get(&self, i: usize) -> T {
        match self {
            PerBlock::One(value) => *value,
            PerBlock::Each(values) => values[i],
        }
    }

    fn len_ok(&self, blocks: usize) -> bool {
        match self {
            PerBlock::One(_) => true,
            PerBlock::Each(values) => values.len() == blocks,
        }
    }
}

/// The down block types this crate builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum DownBlockType {
    CrossAttnDownBlock2D,
    DownBlock2D,
}

/// The up block types this crate builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum UpBlockType {
    CrossAttnUpBlock2D,
    UpBlock2D,
}

/// The mid block types this crate builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum MidBlockType {
    UNetMidBlock2DCrossAttn,
}

/// Activation functions: diffusers' `silu` and its alias `swish`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ActFn {
    #[serde(rename = "silu", alias = "swish")]
    Silu,
}

/// A diffusers `UNet2DConditionModel` `config.json`. Defaults are
/// diffusers'; [`UNetConfig::sd15`] is `runwayml/stable-diffusion-v1-5`'s.
/// Unknown block types and activations fail to parse, naming the value;
/// other features of diffusers' UNet that SD1.5 does not use are rejected
/// by [`validate`](Self::validate), naming the field.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct UNetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub center_input_sample: bool,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub down_block_types: Vec<DownBlockType>,
    pub mid_block_type: Option<MidBlockType>,
    pub up_block_types: Vec<UpBlockType>,
    pub only_cross_attention: PerBlock<bool>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: PerBlock<usize>,
    pub downsample_padding: usize,
    pub mid_block_scale_factor: f64,
    pub dropout: f64,
    pub act_fn: ActFn,
    pub norm_num_groups: Option<usize>,
    pub norm_eps: f64,
    pub cross_attention_dim: PerBlock<usize>,
    pub transformer_layers_per_block: PerBlock<usize>,
    pub reverse_transformer_layers_per_block: Option<serde_json::Value>,
    pub encoder_hid_dim: Option<serde_json::Value>,
    pub encoder_hid_dim_type: Option<serde_json::Value>,
    /// In SD1.5 configs this is the NUMBER of heads, as diffusers reads it.
    pub attention_head_dim: PerBlock<usize>,
    /// diffusers refuses this (it uses `attention_head_dim`); so do we.
    pub num_attention_heads: Option<serde_json::Value>,
    pub dual_cross_attention: bool,
    pub use_linear_projection: bool,
    pub class_embed_type: Option<serde_json::Value>,
    pub addition_embed_type: Option<serde_json::Value>,
    pub num_class_embeds: Option<serde_json::Value>,
    /// Only changes f16 precision; f32 ignores it.
    pub upcast_attention: bool,
    pub resnet_time_scale_shift: String,
    pub resnet_skip_time_act: bool,
    pub time_embedding_type: String,
    pub time_embedding_dim: Option<usize>,
    pub time_embedding_act_fn: Option<serde_json::Value>,
    pub timestep_post_act: Option<serde_json::Value>,
    pub time_cond_proj_dim: Option<serde_json::Value>,
    pub conv_in_kernel: usize,
    pub conv_out_kernel: usize,
    pub attention_type: String,
    pub class_embeddings_concat: bool,
    pub mid_block_only_cross_attention: Option<bool>,
    pub cross_attention_norm: Option<serde_json::Value>,
}

impl Default for UNetConfig {
    fn default() -> Self {
        Self {
            in_channels: 4,
            out_channels: 4,
            center_input_sample: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: vec![
                DownBlockType::CrossAttnDownBlock2D,
                DownBlockType::CrossAttnDownBlock2D,
                DownBlockType::CrossAttnDownBlock2D,
                DownBlockType::DownBlock2D,
            ],
            mid_block_type: Some(MidBlockType::UNetMidBlock2DCrossAttn),
            up_block_types: vec![
                UpBlockType::UpBlock2D,
                UpBlockType::CrossAttnUpBlock2D,
                UpBlockType::CrossAttnUpBlock2D,
                UpBlockType::CrossAttnUpBlock2D,
            ],
            only_cross_attention: PerBlock::One(false),
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: PerBlock::One(2),
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            dropout: 0.0,
            act_fn: ActFn::Silu,
            norm_num_groups: Some(32),
            norm_eps: 1e-5,
            cross_attention_dim: PerBlock::One(1280),
            transformer_layers_per_block: PerBlock::One(1),
            reverse_transformer_layers_per_block: None,
            encoder_hid_dim: None,
            encoder_hid_dim_type: None,
            attention_head_dim: PerBlock::One(8),
            num_attention_heads: None,
            dual_cross_attention: false,
            use_linear_projection: false,
            class_embed_type: None,
            addition_embed_type: None,
            num_class_embeds: None,
            upcast_attention: false,
            resnet_time_scale_shift: "default".into(),
            resnet_skip_time_act: false,
            time_embedding_type: "positional".into(),
            time_embedding_dim: None,
            time_embedding_act_fn: None,
            timestep_post_act: None,
            time_cond_proj_dim: None,
            conv_in_kernel: 3,
            conv_out_kernel: 3,
            attention_type: "default".into(),
            class_embeddings_concat: false,
            mid_block_only_cross_attention: None,
            cross_attention_norm: None,
        }
    }
}

impl UNetConfig {
    /// `runwayml/stable-diffusion-v1-5`'s UNet (859,520,964 parameters).
    pub fn sd15() -> Self {
        Self { cross_attention_dim: PerBlock::One(768), ..Self::default() }
    }

    fn groups(&self) -> usize {
        self.norm_num_groups.unwrap_or(32)
    }

    /// Width of the time embedding (`temb`): 4 × `block_out_channels[0]` in SD1.5.
    pub fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim.unwrap_or(4 * self.block_out_channels[0])
    }

    fn resnet_settings(&self, output_scale_factor: f64) -> ResnetSettings {
        ResnetSettings::new(self.groups(), self.norm_eps)
            .with_temb_channels(Some(self.time_embed_dim()))
            .with_dropout(self.dropout)
            .with_output_scale_factor(output_scale_factor)
    }

    /// Cross-attention of block `i` (down-block order).
    fn attention(&self, i: usize) -> CrossAttentionConfig {
        CrossAttentionConfig::new(self.attention_head_dim.get(i), self.cross_attention_dim.get(i))
            .with_transformer_layers(self.transformer_layers_per_block.get(i))
            .with_use_linear_projection(self.use_linear_projection)
    }

    pub fn init_down_blocks<B: Backend>(&self, device: &B::Device) -> Vec<DownBlock2D<B>> {
        let channels = &self.block_out_channels;
        let n = channels.len();
        self.down_block_types
            .iter()
            .enumerate()
            .map(|(i, kind)| {
                DownBlock2DConfig::new(
                    channels[i.saturating_sub(1)],
                    channels[i],
                    self.layers_per_block.get(i),
                    self.resnet_settings(1.0),
                    i + 1 < n,
                )
                .with_attention((*kind == DownBlockType::CrossAttnDownBlock2D).then(|| self.attention(i)))
                .with_downsample_padding(self.downsample_padding)
                .init(device)
            })
            .collect()
    }

    /// The mid block alone (the style control module builds its own).
    pub fn init_mid_block<B: Backend>(&self, device: &B::Device) -> MidBlock2DCrossAttn<B> {
        let last = self.block_out_channels.len() - 1;
        MidBlock2DCrossAttnConfig::new(
            self.block_out_channels[last],
            self.resnet_settings(self.mid_block_scale_factor),
            self.attention(last),
        )
        .init(device)
    }

    /// The up blocks alone (the style control module builds its own).
    pub fn init_up_blocks<B: Backend>(&self, device: &B::Device) -> Vec<UpBlock2D<B>> {
        let n = self.block_out_channels.len();
        let reversed = |i: usize| n - 1 - i;
        let channels = |i: usize| self.block_out_channels[reversed(i)];
        self.up_block_types
            .iter()
            .enumerate()
            .map(|(i, kind)| {
                UpBlock2DConfig::new(
                    channels(i.saturating_sub(1)),
                    channels(i),
                    self.layers_per_block.get(reversed(i)) + 1,
                    self.resnet_settings(1.0),
                    i + 1 < n,
                )
                .with_last_skip_channels(Some(channels((i + 1).min(n - 1))))
                .with_attention((*kind == UpBlockType::CrossAttnUpBlock2D).then(|| self.attention(reversed(i))))
                .init(device)
            })
            .collect()
    }

    /// The whole UNet. The config must be [valid](Self::validate).
    pub fn init<B: Backend>(&self, device: &B::Device) -> UNet2DConditionModel<B> {
        if let Err(problem) = self.validate() {
            panic!("{problem}");
        }
        let c0 = self.block_out_channels[0];
        UNet2DConditionModel {
            time_proj: TimestepsConfig::new(c0)
                .with_flip_sin_to_cos(self.flip_sin_to_cos)
                .with_downscale_freq_shift(self.freq_shift)
                .init(),
            time_embedding: TimestepEmbeddingConfig::new(c0, self.time_embed_dim()).init(device),
            conv_in: conv_same(self.in_channels, c0, self.conv_in_kernel, device),
            down_blocks: self.init_down_blocks(device),
            mid_block: self.init_mid_block(device),
            up_blocks: self.init_up_blocks(device),
            conv_norm_out: GroupNormConfig::new(self.groups(), c0).with_epsilon(self.norm_eps).init(device),
            conv_out: conv_same(c0, self.out_channels, self.conv_out_kernel, device),
            center_input_sample: self.center_input_sample,
        }
    }
}

impl JsonConfig for UNetConfig {
    /// Errors naming each setting this implementation does not support.
    fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        let mut reject = |bad: bool, what: String| {
            if bad {
                problems.push(what);
            }
        };
        let n = self.block_out_channels.len();
        reject(n == 0, "block_out_channels is empty".into());
        reject(
            self.down_block_types.len() != n || self.up_block_types.len() != n,
            format!(
                "{} down and {} up block types for {n} block_out_channels",
                self.down_block_types.len(),
                self.up_block_types.len()
            ),
        );
        for (name, ok) in [
            ("only_cross_attention", self.only_cross_attention.len_ok(n)),
            ("layers_per_block", self.layers_per_block.len_ok(n)),
            ("cross_attention_dim", self.cross_attention_dim.len_ok(n)),
            ("transformer_layers_per_block", self.transformer_layers_per_block.len_ok(n)),
            ("attention_head_dim", self.attention_head_dim.len_ok(n)),
        ] {
            reject(!ok, format!("{name} has not one value per block ({n})"));
        }
        reject(self.mid_block_type.is_none(), "mid_block_type null (a UNet without a mid block)".into());
        reject(self.norm_num_groups.is_none(), "norm_num_groups null".into());
        let set = |name: &str, value: &Option<serde_json::Value>| {
            (
                value.as_ref().is_some_and(|v| !v.is_null()),
                format!("{name} = {}", value.as_ref().map_or(String::new(), |v| v.to_string())),
            )
        };
        for (bad, what) in [
            set("reverse_transformer_layers_per_block", &self.reverse_transformer_layers_per_block),
            set("encoder_hid_dim", &self.encoder_hid_dim),
            set("encoder_hid_dim_type", &self.encoder_hid_dim_type),
            set("num_attention_heads", &self.num_attention_heads),
            set("class_embed_type", &self.class_embed_type),
            set("addition_embed_type", &self.addition_embed_type),
            set("num_class_embeds", &self.num_class_embeds),
            set("time_embedding_act_fn", &self.time_embedding_act_fn),
            set("timestep_post_act", &self.timestep_post_act),
            set("time_cond_proj_dim", &self.time_cond_proj_dim),
            set("cross_attention_norm", &self.cross_attention_norm),
        ] {
            reject(bad, what);
        }
        let any_only_cross = (0..n).any(|i| self.only_cross_attention.len_ok(n) && self.only_cross_attention.get(i));
        reject(any_only_cross, "only_cross_attention = true".into());
        reject(self.mid_block_only_cross_attention == Some(true), "mid_block_only_cross_attention = true".into());
        reject(self.dual_cross_attention, "dual_cross_attention = true".into());
        reject(self.class_embeddings_concat, "class_embeddings_concat = true".into());
        reject(self.resnet_skip_time_act, "resnet_skip_time_act = true".into());
        reject(
            self.resnet_time_scale_shift != "default",
            format!("resnet_time_scale_shift = {:?}", self.resnet_time_scale_shift),
        );
        reject(
            self.time_embedding_type != "positional",
            format!("time_embedding_type = {:?}", self.time_embedding_type),
        );
        reject(self.attention_type != "default", format!("attention_type = {:?}", self.attention_type));
        reject(self.conv_in_kernel.is_multiple_of(2), format!("conv_in_kernel = {} (even)", self.conv_in_kernel));
        reject(self.conv_out_kernel.is_multiple_of(2), format!("conv_out_kernel = {} (even)", self.conv_out_kernel));
        let groups = self.norm_num_groups.unwrap_or(1);
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            reject(
                groups == 0 || !c.is_multiple_of(groups),
                format!("block_out_channels[{i}] = {c} is not divisible by norm_num_groups {groups}"),
            );
            if self.attention_head_dim.len_ok(n) {
                let heads = self.attention_head_dim.get(i);
                let what = format!(
                    "block_out_channels[{i}] = {c} is not divisible by attention_head_dim {heads} (the number of heads)"
                );
                reject(heads == 0 || !c.is_multiple_of(heads), what);
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!("unsupported UNet setting(s): {}", problems.join(", ")))
        }
    }
}

/// The denoising UNet of Stable Diffusion: (noisy latents, timesteps, text
/// embeddings) → predicted noise.
#[derive(Module, Debug)]
pub struct UNet2DConditionModel<B: Backend> {
    pub time_proj: Timesteps,
    pub time_embedding: TimestepEmbedding<B>,
    pub conv_in: Conv2d<B>,
    pub down_blocks: Vec<DownBlock2D<B>>,
    pub mid_block: MidBlock2DCrossAttn<B>,
    pub up_blocks: Vec<UpBlock2D<B>>,
    pub conv_norm_out: GroupNorm<B>,
    pub conv_out: Conv2d<B>,
    pub center_input_sample: bool,
}

impl<B: Backend> UNet2DConditionModel<B> {
    /// `timesteps` `[N]` → `temb` `[N, time_embed_dim]`.
    pub fn time_embedding(&self, timesteps: Tensor<B, 1>) -> Tensor<B, 2> {
        // The sinusoids are computed in f32, then cast to the model's dtype (as diffusers does).
        let dtype = self.time_embedding.linear_1.weight.val().dtype();
        self.time_embedding.forward(self.time_proj.forward(timesteps).cast(dtype))
    }

    /// The first convolution: latents [B, in, H, W] → [B, C0, H, W]. Its
    /// output is the first skip.
    pub fn conv_in(&self, sample: Tensor<B, 4>) -> Tensor<B, 4> {
        let sample = if self.center_input_sample { sample * 2.0 - 1.0 } else { sample };
        conv2d(&self.conv_in, sample)
    }

    /// Down sub-blocks in all (11 in SD1.5).
    pub fn down_sub_block_count(&self) -> usize {
        self.down_blocks.sub_block_count()
    }

    /// Runs down sub-block `i` (a resnet with its attention, or a
    /// downsampler); its output is a skip.
    pub fn down_sub_block(
        &self,
        i: usize,
        h: Tensor<B, 4>,
        temb: &Tensor<B, 2>,
        context: &TextContext<B>,
    ) -> Tensor<B, 4> {
        self.down_blocks.sub_block(i, h, Some(temb), Some(context))
    }

    /// Channels of every skip, in the order they are made: `conv_in`'s
    /// output, then each down sub-block's (12 in SD1.5).
    pub fn skip_channels(&self) -> Vec<usize> {
        let first = self.down_blocks[0].resnets[0].in_channels;
        let mut channels = vec![first];
        for block in &self.down_blocks {
            channels.extend(block.resnets.iter().map(|r| r.out_channels));
            if block.downsampler.is_some() {
                channels.push(block.resnets.last().map_or(first, |r| r.out_channels));
            }
        }
        channels
    }

    pub fn mid_block(&self, h: Tensor<B, 4>, temb: &Tensor<B, 2>, context: &TextContext<B>) -> Tensor<B, 4> {
        self.mid_block.forward(h, temb, context)
    }

    /// Up sub-blocks in all (12 in SD1.5).
    pub fn up_sub_block_count(&self) -> usize {
        self.up_blocks.sub_block_count()
    }

    /// Channels of the skip each up sub-block expects (the skips in reverse).
    pub fn up_skip_channels(&self) -> Vec<usize> {
        self.up_blocks.skip_channels()
    }

    /// Runs up sub-block `i` on [hidden state, skip] concatenated on
    /// channels. Where it ends with an upsampler, that scales to
    /// `upsample_to` (the next skip's [H, W]) if given, else ×2.
    pub fn up_sub_block(
        &self,
        i: usize,
        h_and_skip: Tensor<B, 4>,
        temb: &Tensor<B, 2>,
        context: &TextContext<B>,
        upsample_to: Option<[usize; 2]>,
    ) -> Tensor<B, 4> {
        self.up_blocks.sub_block(i, h_and_skip, temb, context, upsample_to)
    }

    /// `conv_norm_out`, SiLU, `conv_out`: → predicted noise.
    pub fn head(&self, h: Tensor<B, 4>) -> Tensor<B, 4> {
        conv2d(&self.conv_out, self.conv_norm_out.forward_silu(h))
    }

    /// Predicted noise for `sample` [B, 4, H, W] at `timesteps` (`[B]`, or
    /// `[1]` for the whole batch) given the text `context` [B, L, D].
    /// Any H, W ≥ 1 works: upsamplers scale to the skips' sizes. The
    /// context's cross-attention keys and values are computed on its first
    /// step and kept for the next ones.
    pub fn forward(&self, sample: Tensor<B, 4>, timesteps: Tensor<B, 1>, context: &TextContext<B>) -> Tensor<B, 4> {
        self.forward_with_hook(sample, timesteps, context, &mut NoHook)
    }

    /// [`forward`](Self::forward) with `hook` called at each skip, after the
    /// mid block and after each up sub-block (see [`UNetHook`]).
    pub fn forward_with_hook(
        &self,
        sample: Tensor<B, 4>,
        timesteps: Tensor<B, 1>,
        context: &TextContext<B>,
        hook: &mut (impl UNetHook<B> + Send),
    ) -> Tensor<B, 4> {
        on_workers::<B, _>(|| self.up_path(self.down_path(sample, timesteps, context), context, hook))
    }

    /// The time embedding, `conv_in`, the down blocks and the mid block:
    /// everything before the first hook point. (Training runs it on the
    /// inner backend, without a tape, and lifts the result.)
    pub fn down_path(&self, sample: Tensor<B, 4>, timesteps: Tensor<B, 1>, context: &TextContext<B>) -> DownPath<B> {
        let temb = self.batch_time_embedding(timesteps, sample.dims()[0]);
        let mut h = self.conv_in(sample);
        let mut skips = Vec::with_capacity(self.down_sub_block_count() + 1);
        skips.push(h.clone());
        for i in 0..self.down_sub_block_count() {
            h = self.down_sub_block(i, h, &temb, context);
            skips.push(h.clone());
        }
        let mid = self.mid_block(h, &temb, context);
        DownPath { mid, skips, temb }
    }

    /// The hook points and the up blocks, from a [`down_path`](Self::down_path):
    /// → predicted noise.
    pub fn up_path(&self, down: DownPath<B>, context: &TextContext<B>, hook: &mut impl UNetHook<B>) -> Tensor<B, 4> {
        let DownPath { mid, skips, temb } = down;
        let inputs = HookInputs { temb: &temb, context };
        let mut skips: Vec<_> = skips.into_iter().enumerate().map(|(i, skip)| hook.skip(i, skip)).collect();
        let mut h = hook.after_mid(mid, &inputs);
        for index in 0..self.up_sub_block_count() {
            let skip = skips.pop().expect("one skip per up sub-block");
            let step = UpStep { index, skip_dims: skip.dims(), upsample_to: skips.last().map(spatial) };
            h = self.up_sub_block(index, Tensor::cat(vec![h, skip], 1), &temb, context, step.upsample_to);
            h = hook.after_up(step, h, &inputs);
        }
        self.head(h)
    }

    /// The time embedding for a batch: one timestep per sample, or one for all.
    pub fn batch_time_embedding(&self, timesteps: Tensor<B, 1>, batch: usize) -> Tensor<B, 2> {
        let [n] = timesteps.dims();
        // One timestep is repeated before the embedding, not after: on wgpu,
        // burn-fusion 0.21 miscomputes this MLP on a single row (every value
        // wrong; tests/gpu_backends.rs `whole_pipeline` caught it).
        let timesteps = match n {
            _ if n == batch => timesteps,
            1 => timesteps.repeat_dim(0, batch),
            _ => panic!("{n} timesteps for a batch of {batch}"),
        };
        self.time_embedding(timesteps)
    }

    /// Parameter count without initialising (allocating) any parameter.
    pub fn param_count(&self) -> usize {
        count_params::<B, _>(self)
    }
}

/// The UNet's state at the first hook point: the mid block's output, every
/// skip (in the order made) and the time embedding.
#[derive(Debug, Clone)]
pub struct DownPath<B: Backend> {
    pub mid: Tensor<B, 4>,
    pub skips: Vec<Tensor<B, 4>>,
    pub temb: Tensor<B, 2>,
}

/// [H, W] of an image tensor.
fn spatial<B: Backend>(image: &Tensor<B, 4>) -> [usize; 2] {
    let [_, _, height, width] = image.dims();
    [height, width]
}

/// Number of float parameters of `module`, read from their shapes: lazily
/// initialised parameters stay uninitialised (`Module::num_params` would
/// materialise them all).
pub fn count_params<B: Backend, M: Module<B>>(module: &M) -> usize {
    struct Counter(usize);
    impl<B: Backend> ModuleVisitor<B> for Counter {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0 += param.lazy_shape().num_elements();
        }
    }
    let mut counter = Counter(0);
    module.visit(&mut counter);
    counter.0
}
