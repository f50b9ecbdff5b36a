//! The optimizer layer of training, written to match PyTorch step for step:
//! `torch.optim.AdamW`, `torch.nn.utils.clip_grad_norm_`, gradient
//! accumulation as `.grad` sums it, and diffusers' learning-rate schedules.
//!
//! Why not burn-optim: its AdamW defaults differ from PyTorch's (eps 1e-5,
//! weight decay 1e-4), its clipping is per tensor, its cosine schedule
//! restarts, and its state is keyed by `ParamId`, which burn-store's loading
//! renews, so a resumed run would lose its moments. Here every gradient and
//! every moment is keyed by the parameter's path in the module
//! (`control.mid_block.resnets.0.conv1.weight`), kept in f32 whatever the
//! model's dtype, and exported as named f32 tensors for checkpoints.
//!
//! A step of a training loop:
//!
//! ```text
//! for each of K micro-batches:
//!     loss = model(batch) / K                    // the caller divides by K
//!     accumulator.accumulate(Grads::from_backward(loss.backward(), &model))
//! let mut grads = accumulator.take();
//! let norm = clip_grad_norm(&mut grads, max_norm)?;
//! let lr = schedule.lr(config.lr, optimizer.steps());
//! model = optimizer.step(lr, model, grads);
//! ```

use crate::error::{Error, Result};
use crate::weights::safetensors::write_f32;
use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::DType;
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

type Inner<B> = <B as AutodiffBackend>::InnerBackend;

/// What an optimizer state file says it is, checked on load.
const STATE_FORMAT: &str = "burn-stylecode AdamW state 1";

/// One tensor flattened to 1-D, with its shape: parameters of every rank
/// can then live in one map and share the element-wise maths.
#[derive(Clone, Debug)]
struct Flat<B: Backend> {
    shape: Vec<usize>,
    values: Tensor<B, 1>,
}

/// `[..]` → 1-D f32 (the optimizer's dtype, whatever the model's).
fn flatten<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Flat<B> {
    let shape = tensor.dims().to_vec();
    let count: usize = shape.iter().product();
    Flat { shape, values: tensor.cast(DType::F32).reshape([count]) }
}

fn read_back<B: Backend>(what: &'static str, tensor: Tensor<B, 1>) -> Result<Vec<f32>> {
    let data = tensor.try_into_data().map_err(|e| Error::ReadBack { what, message: format!("{e:?}") })?;
    data.convert::<f32>().into_vec::<f32>().map_err(|e| Error::ReadBack { what, message: format!("{e:?}") })
}

/// The gradients of a module's parameters, keyed by parameter path, in f32
/// on the inner (non-autodiff) backend. Parameters without a gradient
/// (frozen, or not in the graph) are absent.
#[derive(Clone, Debug)]
pub struct Grads<B: AutodiffBackend> {
    tensors: BTreeMap<String, Flat<Inner<B>>>,
}

impl<B: AutodiffBackend> Default for Grads<B> {
    fn default() -> Self {
        Self { tensors: BTreeMap::new() }
    }
}

impl<B: AutodiffBackend> Grads<B> {
    /// Takes `module`'s gradients out of a backward pass.
    pub fn from_backward<M: AutodiffModule<B>>(mut grads: B::Gradients, module: &M) -> Self {
        let mut collector = GradCollector::<B> { path: Vec::new(), grads: &mut grads, out: BTreeMap::new() };
        module.visit(&mut collector);
        Self { tensors: collector.out }
    }

    /// The parameter paths that have a gradient, sorted.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The parameter's shape, if it has a gradient.
    pub fn shape(&self, path: &str) -> Option<&[usize]> {
        self.tensors.get(path).map(|flat| flat.shape.as_slice())
    }

    /// The gradient of the parameter at `path`, flattened (row-major, as the parameter).
    pub fn flat(&self, path: &str) -> Option<Tensor<Inner<B>, 1>> {
        self.tensors.get(path).map(|flat| flat.values.clone())
    }

    /// Adds `other` in, path by path; a path in only one of them is kept as
    /// it is (PyTorch's `None + g = g`).
    pub fn add(&mut self, other: Grads<B>) {
        for (path, flat) in other.tensors {
            match self.tensors.get_mut(&path) {
                Some(sum) => {
                    assert_eq!(sum.shape, flat.shape, "gradient of `{path}` changed shape between micro-batches");
                    sum.values = sum.values.clone() + flat.values;
                }
                None => {
                    self.tensors.insert(path, flat);
                }
            }
        }
    }
}

struct GradCollector<'a, B: AutodiffBackend> {
    path: Vec<String>,
    grads: &'a mut B::Gradients,
    out: BTreeMap<String, Flat<Inner<B>>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GradCollector<'_, B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(grad) = param.val().grad_remove(self.grads) {
            self.out.insert(self.path.join("."), flatten(grad));
        }
    }
}

/// Sums gradients over K micro-batches into one optimizer step, as PyTorch
/// sums into `.grad` across `backward()` calls.
///
/// The sum is the mean over the K micro-batches only if the caller divides
/// each micro-batch's loss by K before `backward()` (diffusers' and
/// accelerate's convention); this type does not divide.
#[derive(Clone, Debug)]
pub struct GradAccumulator<B: AutodiffBackend> {
    sum: Grads<B>,
    micro_batches: usize,
}

impl<B: AutodiffBackend> Default for GradAccumulator<B> {
    fn default() -> Self {
        Self { sum: Grads::default(), micro_batches: 0 }
    }
}

impl<B: AutodiffBackend> GradAccumulator<B> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one micro-batch's gradients (of its loss already divided by K).
    pub fn accumulate(&mut self, grads: Grads<B>) {
        self.sum.add(grads);
        self.micro_batches += 1;
    }

    /// Micro-batches added since the last [`take`](Self::take).
    pub fn micro_batches(&self) -> usize {
        self.micro_batches
    }

    /// The summed gradients; the accumulator starts over empty.
    pub fn take(&mut self) -> Grads<B> {
        self.micro_batches = 0;
        std::mem::take(&mut self.sum)
    }
}

/// Scales all gradients together so that their global L2 norm is at most
/// `max_norm`, exactly as `torch.nn.utils.clip_grad_norm_(params, max_norm)`:
/// the total norm is the norm of the per-tensor norms, the factor
/// `max_norm / (total_norm + 1e-6)` is applied only if it is below 1.
/// Returns the total norm before clipping (what PyTorch returns and logs).
pub fn clip_grad_norm<B: AutodiffBackend>(grads: &mut Grads<B>, max_norm: f64) -> Result<f32> {
    let norms: Vec<Tensor<Inner<B>, 1>> =
        grads.tensors.values().map(|flat| flat.values.clone().square().sum().sqrt()).collect();
    if norms.is_empty() {
        return Ok(0.0);
    }
    let total = read_back("the gradients' total norm", Tensor::cat(norms, 0).square().sum().sqrt())?[0];
    // In f32, as PyTorch computes it from its f32 norm tensor.
    let coef = max_norm as f32 / (total + 1e-6);
    if coef < 1.0 {
        for flat in grads.tensors.values_mut() {
            flat.values = flat.values.clone().mul_scalar(coef);
        }
    }
    Ok(total)
}

/// The learning-rate factor per optimizer step, as diffusers'
/// `get_scheduler`: step `s` (0-based, the number of steps taken before)
/// runs with `lr * factor(s)`, as `LambdaLR` gives it before `scheduler.step()`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LrSchedule {
    /// `get_constant_schedule_with_warmup`: linear from 0 over the warmup
    /// steps, then 1 (with no warmup, `get_constant_schedule`).
    Constant { warmup_steps: u64 },
    /// `get_cosine_schedule_with_warmup` with `num_cycles = 0.5`: the warmup,
    /// then one half cosine from 1 to 0 over the remaining training steps.
    /// Like diffusers' it does not clamp past `training_steps` (nor restart):
    /// a run ends there.
    Cosine { warmup_steps: u64, training_steps: u64 },
}

impl LrSchedule {
    /// A schedule by its name in diffusers' `get_scheduler` (and the training
    /// scripts' `--lr_scheduler`): `constant` ignores the warmup there, so it
    /// does here; `constant_with_warmup` and `cosine` use it.
    pub fn from_name(name: &str, warmup_steps: u64, training_steps: u64) -> Result<Self> {
        match name {
            "constant" => Ok(Self::Constant { warmup_steps: 0 }),
            "constant_with_warmup" => Ok(Self::Constant { warmup_steps }),
            "cosine" => Ok(Self::Cosine { warmup_steps, training_steps }),
            other => Err(Error::InvalidRequest(format!(
                "unknown learning-rate schedule `{other}` (expected `constant`, `constant_with_warmup` or `cosine`)"
            ))),
        }
    }

    /// The factor of the base learning rate at optimizer step `step`.
    pub fn factor(&self, step: u64) -> f64 {
        let warmup = match *self {
            Self::Constant { warmup_steps } | Self::Cosine { warmup_steps, .. } => warmup_steps,
        };
        if step < warmup {
            return step as f64 / warmup.max(1) as f64;
        }
        match *self {
            Self::Constant { .. } => 1.0,
            Self::Cosine { training_steps, .. } => {
                let progress = (step - warmup) as f64 / training_steps.saturating_sub(warmup).max(1) as f64;
                (0.5 * (1.0 + (std::f64::consts::PI * 0.5 * 2.0 * progress).cos())).max(0.0)
            }
        }
    }

    /// `base * factor(step)`, the learning rate to pass to [`AdamW::step`].
    pub fn lr(&self, base: f64, step: u64) -> f64 {
        base * self.factor(step)
    }
}

/// `torch.optim.AdamW`'s hyper-parameters, with PyTorch's defaults (not
/// burn's: its AdamW uses eps 1e-5 and weight decay 1e-4).
#[derive(Config, Debug, PartialEq)]
pub struct AdamWConfig {
    /// The base learning rate; the schedule scales it per step.
    #[config(default = 1e-3)]
    pub lr: f64,
    #[config(default = 0.9)]
    pub beta_1: f64,
    #[config(default = 0.999)]
    pub beta_2: f64,
    #[config(default = 1e-8)]
    pub epsilon: f64,
    /// Decoupled: `p -= lr * weight_decay * p` before the Adam update.
    #[config(default = 1e-2)]
    pub weight_decay: f64,
}

/// One parameter's AdamW state, flattened, in f32.
#[derive(Clone, Debug)]
struct Moments<B: Backend> {
    /// Steps this parameter took (PyTorch's per-parameter `state["step"]`).
    step: u64,
    shape: Vec<usize>,
    exp_avg: Tensor<B, 1>,
    exp_avg_sq: Tensor<B, 1>,
}

/// `torch.optim.AdamW` (single-tensor, no amsgrad, no maximize) over any
/// autodiff module, its state keyed by parameter path.
#[derive(Clone, Debug)]
pub struct AdamW<B: AutodiffBackend> {
    config: AdamWConfig,
    steps: u64,
    state: BTreeMap<String, Moments<Inner<B>>>,
}

impl<B: AutodiffBackend> AdamW<B> {
    pub fn new(config: AdamWConfig) -> Self {
        Self { config, steps: 0, state: BTreeMap::new() }
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Optimizer steps taken: the step the schedule is at.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Whether the parameter at `path` has moments (it has had a gradient).
    pub fn has_state(&self, path: &str) -> bool {
        self.state.contains_key(path)
    }

    /// The paths with state, sorted.
    pub fn state_paths(&self) -> impl Iterator<Item = &str> {
        self.state.keys().map(String::as_str)
    }

    /// One AdamW step at learning rate `lr` over every parameter that has a
    /// gradient in `grads`; the others are returned untouched and get no
    /// state. Updated parameters keep their id and their `require_grad`.
    pub fn step<M: AutodiffModule<B>>(&mut self, lr: f64, module: M, grads: Grads<B>) -> M {
        self.steps += 1;
        let mut update =
            Update::<B> { path: Vec::new(), grads: grads.tensors, state: &mut self.state, config: &self.config, lr };
        module.map(&mut update)
    }

    /// The state as host f32 values, for a checkpoint.
    pub fn export(&self) -> Result<OptimizerState> {
        let params = self
            .state
            .iter()
            .map(|(path, moments)| {
                Ok(ParamState {
                    path: path.clone(),
                    step: moments.step,
                    shape: moments.shape.clone(),
                    exp_avg: read_back("the AdamW state", moments.exp_avg.clone())?,
                    exp_avg_sq: read_back("the AdamW state", moments.exp_avg_sq.clone())?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(OptimizerState { steps: self.steps, params })
    }

    /// Replaces the state with `state`, placing each parameter's moments on
    /// that parameter's device. Fails, changing nothing, if `state` names a
    /// parameter `module` does not have or gives it another shape; the ids
    /// of `module`'s parameters do not matter.
    pub fn import<M: AutodiffModule<B>>(&mut self, state: OptimizerState, module: &M) -> Result<()> {
        let mut slots = SlotCollector::<B> { path: Vec::new(), slots: HashMap::new() };
        module.visit(&mut slots);
        let mut moments = BTreeMap::new();
        for param in state.params {
            let Some((shape, device)) = slots.slots.get(&param.path) else {
                return Err(Error::Incompatible(format!(
                    "the optimizer state has moments for `{}`, a parameter the model does not have",
                    param.path
                )));
            };
            let count: usize = param.shape.iter().product();
            if *shape != param.shape || param.exp_avg.len() != count || param.exp_avg_sq.len() != count {
                return Err(Error::Incompatible(format!(
                    "the optimizer state of `{}` has shape {:?} ({} and {} values), the parameter {shape:?}",
                    param.path,
                    param.shape,
                    param.exp_avg.len(),
                    param.exp_avg_sq.len()
                )));
            }
            let tensor = |values: Vec<f32>| Tensor::from_data(TensorData::new(values, [count]), (device, DType::F32));
            moments.insert(
                param.path,
                Moments {
                    step: param.step,
                    shape: param.shape,
                    exp_avg: tensor(param.exp_avg),
                    exp_avg_sq: tensor(param.exp_avg_sq),
                },
            );
        }
        self.state = moments;
        self.steps = state.steps;
        Ok(())
    }
}

struct Update<'a, B: AutodiffBackend> {
    path: Vec<String>,
    grads: BTreeMap<String, Flat<Inner<B>>>,
    state: &'a mut BTreeMap<String, Moments<Inner<B>>>,
    config: &'a AdamWConfig,
    lr: f64,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Update<'_, B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let path = self.path.join(".");
        let Some(grad) = self.grads.remove(&path) else {
            return param;
        };
        let (id, tensor, mapper) = param.consume();
        let (require_grad, dims, dtype) = (tensor.is_require_grad(), tensor.dims(), tensor.dtype());
        let param = flatten(tensor.inner());
        assert_eq!(param.shape, grad.shape, "gradient of `{path}` has another shape than the parameter");
        let device = param.values.device();
        let moments = self.state.entry(path.clone()).or_insert_with(|| Moments {
            step: 0,
            shape: param.shape.clone(),
            exp_avg: Tensor::zeros([param.values.dims()[0]], (&device, DType::F32)),
            exp_avg_sq: Tensor::zeros([param.values.dims()[0]], (&device, DType::F32)),
        });
        assert_eq!(moments.shape, param.shape, "optimizer state of `{path}` has another shape than the parameter");
        let updated = adamw(self.config, self.lr, moments, param.values, grad.values);
        let updated = Tensor::from_inner(updated.reshape(dims).cast(dtype));
        let updated = if require_grad { updated.require_grad() } else { updated };
        Param::from_mapped_value(id, updated, mapper)
    }
}

/// PyTorch's `_single_tensor_adamw` for one parameter; returns the new value.
fn adamw<B: Backend>(
    config: &AdamWConfig,
    lr: f64,
    moments: &mut Moments<B>,
    param: Tensor<B, 1>,
    grad: Tensor<B, 1>,
) -> Tensor<B, 1> {
    moments.step += 1;
    let step = moments.step as f64;
    let param = param.mul_scalar(1.0 - lr * config.weight_decay);
    // exp_avg.lerp_(grad, 1 - beta1), in lerp's form for weights < 0.5.
    let exp_avg = moments.exp_avg.clone();
    moments.exp_avg = exp_avg.clone() + (grad.clone() - exp_avg).mul_scalar(1.0 - config.beta_1);
    moments.exp_avg_sq =
        moments.exp_avg_sq.clone().mul_scalar(config.beta_2) + grad.square().mul_scalar(1.0 - config.beta_2);
    let bias_correction1 = 1.0 - config.beta_1.powf(step);
    let bias_correction2 = 1.0 - config.beta_2.powf(step);
    let step_size = lr / bias_correction1;
    let denom = moments.exp_avg_sq.clone().sqrt().div_scalar(bias_correction2.sqrt()).add_scalar(config.epsilon);
    param - (moments.exp_avg.clone() / denom).mul_scalar(step_size)
}

struct SlotCollector<B: AutodiffBackend> {
    path: Vec<String>,
    slots: HashMap<String, (Vec<usize>, B::Device)>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SlotCollector<B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.slots.insert(self.path.join("."), (param.lazy_shape().to_vec(), param.lazy_device()));
    }
}

/// One parameter's exported AdamW state.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamState {
    /// The parameter's path in the module.
    pub path: String,
    /// Steps this parameter took (its bias corrections depend on it).
    pub step: u64,
    pub shape: Vec<usize>,
    /// First moment, flattened row-major.
    pub exp_avg: Vec<f32>,
    /// Second moment, flattened row-major.
    pub exp_avg_sq: Vec<f32>,
}

/// [`AdamW`]'s whole state on the host: what a checkpoint stores.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerState {
    /// Optimizer steps taken (where the schedule resumes).
    pub steps: u64,
    /// Sorted by path.
    pub params: Vec<ParamState>,
}

impl OptimizerState {
    /// Writes the state as a safetensors file (`exp_avg/<path>`,
    /// `exp_avg_sq/<path>` in f32, step counts in the metadata) through a
    /// temporary file and a rename, so a crash never leaves half a state.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut metadata = HashMap::from([
            ("format".to_string(), STATE_FORMAT.to_string()),
            ("steps".to_string(), self.steps.to_string()),
        ]);
        let mut tensors = Vec::with_capacity(2 * self.params.len());
        for param in &self.params {
            metadata.insert(format!("step/{}", param.path), param.step.to_string());
            for (kind, values) in [("exp_avg", &param.exp_avg), ("exp_avg_sq", &param.exp_avg_sq)] {
                tensors.push((format!("{kind}/{}", param.path), param.shape.clone(), values.clone()));
            }
        }
        write_f32(path, &tensors, Some(metadata))
    }

    /// Reads a state written by [`save`](Self::save), bit for bit.
    pub fn load(path: &Path) -> Result<Self> {
        let bad = |message: String| Error::Load { path: path.to_path_buf(), module: "the AdamW state".into(), message };
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let invalid = |e: safetensors::SafeTensorError| Error::Safetensors {
            path: path.to_path_buf(),
            message: format!("{e:?}"),
        };
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(invalid)?;
        let file = SafeTensors::deserialize(&bytes).map_err(invalid)?;
        let metadata = header.metadata().clone().unwrap_or_default();
        if metadata.get("format").map(String::as_str) != Some(STATE_FORMAT) {
            return Err(bad(format!("not an optimizer state (metadata `format` is not `{STATE_FORMAT}`)")));
        }
        let count = |key: &str| -> Result<u64> {
            let text = metadata.get(key).ok_or_else(|| bad(format!("no `{key}` in the metadata")))?;
            text.parse().map_err(|_| bad(format!("metadata `{key}` is `{text}`, not a step count")))
        };
        let steps = count("steps")?;
        let values = |name: &str| -> Result<(Vec<usize>, Vec<f32>)> {
            let view = file.tensor(name).map_err(|_| bad(format!("missing tensor `{name}`")))?;
            if view.dtype() != Dtype::F32 {
                return Err(bad(format!("tensor `{name}` is {:?}, not F32", view.dtype())));
            }
            let values = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            Ok((view.shape().to_vec(), values))
        };
        let mut params = Vec::new();
        let mut names: Vec<&str> = file.names();
        names.sort_unstable();
        for name in names {
            let Some(param) = name.strip_prefix("exp_avg/") else {
                if !name.starts_with("exp_avg_sq/") {
                    return Err(bad(format!("unexpected tensor `{name}`")));
                }
                continue;
            };
            let (shape, exp_avg) = values(name)?;
            let (sq_shape, exp_avg_sq) = values(&format!("exp_avg_sq/{param}"))?;
            if sq_shape != shape {
                return Err(bad(format!("the moments of `{param}` have shapes {shape:?} and {sq_shape:?}")));
            }
            params.push(ParamState {
                path: param.to_string(),
                step: count(&format!("step/{param}"))?,
                shape,
                exp_avg,
                exp_avg_sq,
            });
        }
        if let Some(orphan) = file
            .names()
            .into_iter()
            .filter_map(|n| n.strip_prefix("exp_avg_sq/"))
            .find(|p| !params.iter().any(|param| param.path == *p))
        {
            return Err(bad(format!("`exp_avg_sq/{orphan}` has no `exp_avg/{orphan}`")));
        }
        Ok(Self { steps, params })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};

    type B = Autodiff<Flex>;

    #[derive(Module, Debug)]
    struct Pair<B: Backend> {
        used: Param<Tensor<B, 1>>,
        frozen: Param<Tensor<B, 2>>,
        idle: Param<Tensor<B, 1>>,
    }

    fn pair() -> Pair<B> {
        let device = Default::default();
        Pair {
            used: Param::from_tensor(Tensor::from_floats([1.0, -2.0], &device)),
            frozen: Param::from_tensor(Tensor::from_floats([[0.5, 0.25]], &device)).set_require_grad(false),
            idle: Param::from_tensor(Tensor::from_floats([3.0], &device)),
        }
    }

    /// loss = sum(used * frozen[0]): `idle` is not in the graph, `frozen` needs no grad.
    fn grads(model: &Pair<B>) -> Grads<B> {
        let loss = (model.used.val() * model.frozen.val().reshape([2])).sum();
        Grads::from_backward(loss.backward(), model)
    }

    fn host<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
        t.into_data().into_vec::<f32>().unwrap()
    }

    #[test]
    fn defaults_are_pytorchs() {
        let c = AdamWConfig::new();
        assert_eq!((c.lr, c.beta_1, c.beta_2, c.epsilon, c.weight_decay), (1e-3, 0.9, 0.999, 1e-8, 1e-2));
    }

    #[test]
    fn one_step_is_pytorchs_adamw_and_skips_parameters_without_gradients() {
        let model = pair();
        let grads = grads(&model);
        assert_eq!(grads.paths().collect::<Vec<_>>(), ["used"]);
        let mut optim = AdamW::<B>::new(AdamWConfig::new().with_lr(0.1));
        let model = optim.step(0.1, model, grads);
        // Step 1: m̂ = g, v̂ = g², so p ← p(1 - lr·wd) - lr·g/(|g| + eps).
        let expected = [1.0 * (1.0 - 0.1 * 1e-2) - 0.1 * 0.5 / (0.5 + 1e-8), -2.0 * (1.0 - 1e-3) - 0.1];
        let got = host(model.used.val());
        assert!(got.iter().zip(expected).all(|(a, b)| (*a as f64 - b).abs() < 1e-6), "{got:?}");
        assert!(model.used.val().is_require_grad() && !model.frozen.val().is_require_grad());
        assert_eq!(host(model.frozen.val()), [0.5, 0.25]);
        assert_eq!(host(model.idle.val()), [3.0]);
        assert_eq!(optim.state_paths().collect::<Vec<_>>(), ["used"]);
    }

    #[test]
    fn clipping_scales_by_the_global_norm_only_when_above_the_limit() {
        let model = pair();
        // The gradient of `used` is frozen[0] = [0.5, 0.25]: norm √0.3125.
        let norm = 0.3125f32.sqrt();
        let mut grads = grads(&model);
        assert!((clip_grad_norm(&mut grads, 10.0).unwrap() - norm).abs() < 1e-7);
        assert_eq!(host(grads.flat("used").unwrap()), [0.5, 0.25]);
        let total = clip_grad_norm(&mut grads, 0.1).unwrap();
        let clipped = host(grads.flat("used").unwrap());
        let coef = 0.1 / (total + 1e-6);
        assert_eq!(clipped, [0.5 * coef, 0.25 * coef]);
        assert_eq!(clip_grad_norm(&mut Grads::<B>::default(), 1.0).unwrap(), 0.0);
    }

    #[test]
    fn accumulation_sums_micro_batches() {
        let model = pair();
        let mut accumulator = GradAccumulator::<B>::new();
        accumulator.accumulate(grads(&model));
        accumulator.accumulate(grads(&model));
        assert_eq!(accumulator.micro_batches(), 2);
        let sum = accumulator.take();
        assert_eq!(host(sum.flat("used").unwrap()), [1.0, 0.5]);
        assert_eq!((accumulator.micro_batches(), accumulator.take().len()), (0, 0));
    }

    #[test]
    fn schedules_follow_diffusers() {
        let cosine = LrSchedule::Cosine { warmup_steps: 2, training_steps: 6 };
        let factors: Vec<f64> = (0..7).map(|s| cosine.factor(s)).collect();
        let expected = [
            0.0,
            0.5,
            1.0,
            0.5 * (1.0 + (std::f64::consts::PI / 4.0).cos()),
            0.5,
            0.5 * (1.0 + (3.0 * std::f64::consts::PI / 4.0).cos()),
            0.0,
        ];
        assert!(factors.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-15), "{factors:?}");
        let constant = LrSchedule::Constant { warmup_steps: 0 };
        assert_eq!((constant.factor(0), constant.lr(0.5, 7)), (1.0, 0.5));
        assert_eq!(LrSchedule::from_name("cosine", 2, 6).unwrap(), cosine);
        assert_eq!(LrSchedule::from_name("constant", 2, 6).unwrap(), constant);
        assert!(LrSchedule::from_name("cosine_with_restarts", 0, 1).is_err());
    }

    #[test]
    fn a_state_file_that_is_not_ours_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.safetensors");
        safetensors::serialize_to_file(Vec::<(&str, safetensors::tensor::TensorView)>::new(), None, &path).unwrap();
        let error = OptimizerState::load(&path).unwrap_err().to_string();
        assert!(error.contains("not an optimizer state"), "{error}");
    }

    #[test]
    fn import_names_a_parameter_the_model_lacks() {
        let state = OptimizerState {
            steps: 1,
            params: vec![ParamState {
                path: "nope".into(),
                step: 1,
                shape: vec![1],
                exp_avg: vec![0.0],
                exp_avg_sq: vec![0.0],
            }],
        };
        let error = AdamW::<B>::new(AdamWConfig::new()).import(state, &pair()).unwrap_err().to_string();
        assert!(error.contains("`nope`"), "{error}");
    }
}
