//! Loads upstream checkpoints into our modules through burn-store.
//!
//! Every model's key remapping lives here. For each parameter of a module
//! we work out where its values sit in the file (a tensor of another name,
//! or one third of a packed q/k/v tensor), check that it is there with the
//! right shape, and hand burn-store a lazy snapshot that reads it only when
//! applied: borrowed from the memory map when the file already holds the
//! dtype asked for, converted in one pass otherwise. Loading is strict within the module's own
//! prefix: a missing tensor, a wrong shape or a leftover tensor is an error
//! that names the key; tensors of other models in the same file are ignored.

use super::safetensors::TensorFile;
use crate::error::{Error, Result};
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::prelude::*;
use burn::tensor::DType;
use burn_store::{ModuleSnapshot, TensorSnapshot, TensorSnapshotError};
use std::collections::BTreeSet;
use std::rc::Rc;

/// Where one burn parameter's values are in the file (keys relative to the prefix).
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A whole tensor.
    Tensor(String),
    /// Block `index` of `parts` equal row blocks: PyTorch's packed `in_proj_*`.
    Rows { key: String, index: usize, parts: usize },
}

/// How a module's parameters are named in a file.
pub struct KeyMap<'a> {
    /// The module's name in error messages.
    pub module: &'a str,
    /// Prefix of the module's tensors in the file, e.g. `vision_model.`.
    pub prefix: String,
    /// Burn parameter path → source tensor (relative to `prefix`).
    pub source: &'a dyn Fn(&str) -> Source,
    /// Relative keys under `prefix` that belong to this module; those not
    /// consumed are reported as unexpected.
    pub in_scope: &'a dyn Fn(&str) -> bool,
    /// Relative keys that are known and deliberately not loaded.
    pub ignored: &'a dyn Fn(&str) -> bool,
}

/// `q_proj.weight` of an MHA stored packed → the first third of `in_proj_weight`.
pub fn packed_projection(module: &str, rest: &str) -> Source {
    let part = |name: &str| rest.strip_prefix(name).and_then(|p| p.strip_prefix('.'));
    for (index, name) in ["q_proj", "k_proj", "v_proj"].into_iter().enumerate() {
        if let Some(param) = part(name) {
            return Source::Rows { key: format!("{module}.in_proj_{param}"), index, parts: 3 };
        }
    }
    Source::Tensor(format!("{module}.{}", norm_names(rest)))
}

/// burn's norms call their affine parameters `gamma`/`beta`; PyTorch `weight`/`bias`.
pub fn norm_names(path: &str) -> String {
    if let Some(stem) = path.strip_suffix(".gamma") {
        format!("{stem}.weight")
    } else if let Some(stem) = path.strip_suffix(".beta") {
        format!("{stem}.bias")
    } else {
        path.to_string()
    }
}

/// One float parameter of a module, found without initialising it.
struct Slot {
    path: Vec<String>,
    containers: Vec<String>,
    shape: Vec<usize>,
}

#[derive(Default)]
struct SlotCollector {
    path: Vec<String>,
    containers: Vec<String>,
    slots: Vec<Slot>,
}

impl<B: Backend> ModuleVisitor<B> for SlotCollector {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.push(name.to_string());
        self.containers.push(container_type.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
        self.containers.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.slots.push(Slot {
            path: self.path.clone(),
            containers: self.containers.clone(),
            shape: param.lazy_shape().to_vec(),
        });
    }
}

pub fn load_module<B: Backend, M: Module<B>>(
    mut module: M,
    file: &TensorFile,
    map: &KeyMap,
    dtype: DType,
) -> Result<M> {
    let mut collector = SlotCollector::default();
    module.visit(&mut collector);

    let mut consumed = BTreeSet::new();
    let mut snapshots = Vec::with_capacity(collector.slots.len());
    // The first read error as our own (it names the file and key); burn's
    // wrapping of it as text would name the module and the file again.
    let first_error: Rc<std::cell::RefCell<Option<Error>>> = Rc::default();
    for slot in collector.slots {
        let burn_path = slot.path.join(".");
        let (key, rows) = match (map.source)(&burn_path) {
            Source::Tensor(key) => (key, None),
            Source::Rows { key, index, parts } => (key, Some((index, parts))),
        };
        let full_key = format!("{}{key}", map.prefix);
        let found = file.shape(&full_key).ok_or_else(|| Error::MissingTensor {
            path: file.path().to_path_buf(),
            key: full_key.clone(),
            module: map.module.to_string(),
        })?;
        // Every Linear keeps PyTorch's [out, in] layout (`nn::linear_config`),
        // so each parameter is stored exactly as the file holds it.
        let mut expected = slot.shape.clone();
        if let (Some((_, parts)), Some(rows)) = (rows, expected.first_mut()) {
            *rows *= parts;
        }
        if found != expected.as_slice() {
            return Err(Error::ShapeMismatch {
                path: file.path().to_path_buf(),
                key: full_key,
                expected,
                found: found.to_vec(),
            });
        }
        consumed.insert(full_key.clone());

        let reader = file.clone();
        let failed = first_error.clone();
        let read = move || -> Result<TensorData, TensorSnapshotError> {
            let (index, parts) = rows.unwrap_or((0, 1));
            reader.read_rows(&full_key, index, parts, dtype).map_err(|e| {
                let text = TensorSnapshotError::IoError(e.to_string());
                failed.borrow_mut().get_or_insert(e);
                text
            })
        };
        snapshots.push(TensorSnapshot::from_closure(
            Rc::new(read),
            dtype,
            slot.shape.into(),
            slot.path,
            slot.containers,
            ParamId::new(),
        ));
    }

    let unexpected: Vec<String> = file
        .keys()
        .filter_map(|k| k.strip_prefix(map.prefix.as_str()).map(|rel| (k, rel)))
        .filter(|(k, rel)| (map.in_scope)(rel) && !(map.ignored)(rel) && !consumed.contains(*k))
        .map(|(k, _)| k.to_string())
        .collect();
    if !unexpected.is_empty() {
        return Err(Error::UnexpectedTensors {
            path: file.path().to_path_buf(),
            prefix: map.prefix.clone(),
            keys: unexpected,
        });
    }

    let result = module.apply(snapshots, None, None, false);
    if let Some(error) = first_error.take() {
        return Err(error);
    }
    if let Some(error) = result.errors.first() {
        return Err(load_error(file, map, error.to_string()));
    }
    if let Some((path, _)) = result.missing.first() {
        return Err(load_error(file, map, format!("parameter `{path}` was not loaded")));
    }
    Ok(module)
}

/// The first of `prefixes` under which `file` holds `probe`: where a
/// model's tensors sit in a file that may nest them (`vision_model.`, `controlnet.`, …).
pub fn find_prefix<'a>(file: &TensorFile, prefixes: &[&'a str], probe: &str, module: &str) -> Result<&'a str> {
    prefixes.iter().copied().find(|p| file.contains(&format!("{p}{probe}"))).ok_or_else(|| Error::NoModule {
        path: file.path().to_path_buf(),
        module: module.to_string(),
        prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
    })
}

/// Every float parameter of `module`: its path (as the key maps name it),
/// shape and values, in the module's order. Reads the values (saving,
/// checks); [`expected_tensors`] gets shapes without touching them.
pub fn param_values<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, Vec<usize>, TensorData)> {
    #[derive(Default)]
    struct Collect {
        path: Vec<String>,
        out: Vec<(String, Vec<usize>, TensorData)>,
    }
    impl<B: Backend> ModuleVisitor<B> for Collect {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let value = param.val();
            self.out.push((self.path.join("."), value.dims().to_vec(), value.into_data()));
        }
    }
    let mut collect = Collect::default();
    module.visit(&mut collect);
    collect.out
}

fn load_error(file: &TensorFile, map: &KeyMap, message: String) -> Error {
    Error::Load { path: file.path().to_path_buf(), module: map.module.to_string(), message }
}

/// One tensor a key map reads: its full name in the file and its shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedTensor {
    pub key: String,
    pub shape: Vec<usize>,
}

/// The tensors [`load_module`] would read for `module` through `map`, in
/// the module's parameter order, each once (a packed q/k/v tensor appears
/// with its whole shape). Reads only the parameters' lazy shapes: nothing
/// is allocated, so a full-size model costs nothing.
pub fn expected_tensors<B: Backend, M: Module<B>>(module: &M, map: &KeyMap) -> Vec<ExpectedTensor> {
    let mut collector = SlotCollector::default();
    module.visit(&mut collector);
    let mut seen = BTreeSet::new();
    let mut tensors = Vec::new();
    for slot in collector.slots {
        let (key, parts) = match (map.source)(&slot.path.join(".")) {
            Source::Tensor(key) => (key, 1),
            Source::Rows { key, parts, .. } => (key, parts),
        };
        let key = format!("{}{key}", map.prefix);
        let mut shape = slot.shape;
        if let Some(rows) = shape.first_mut() {
            *rows *= parts;
        }
        if seen.insert(key.clone()) {
            tensors.push(ExpectedTensor { key, shape });
        }
    }
    tensors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_projections_map_to_row_blocks() {
        assert_eq!(
            packed_projection("attention_layers.1", "k_proj.bias"),
            Source::Rows { key: "attention_layers.1.in_proj_bias".into(), index: 1, parts: 3 }
        );
        assert_eq!(
            packed_projection("head.attention", "out_proj.weight"),
            Source::Tensor("head.attention.out_proj.weight".into())
        );
    }
}
