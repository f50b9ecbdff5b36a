//! PyTorch zip checkpoints (`torch.save`, PyTorch ≥ 1.6) read without
//! running any of their code.
//!
//! A `.bin`/`.ckpt`/`.pt` file is a zip archive: `<name>/data.pkl` is a
//! pickle program describing the object, `<name>/data/<key>` hold the raw
//! storages. A normal unpickler *executes* that program, and a pickle can
//! call any Python function (`os.system`, `builtins.exec`, …) through the
//! GLOBAL + REDUCE opcodes. This one interprets the opcodes itself and only
//! builds plain data: numbers, strings, tuples, lists, dicts, and tensors.
//! The only callables it honours are the handful `torch.save` emits for a
//! state dict (`torch._utils._rebuild_tensor_v2`, `_rebuild_parameter`,
//! `collections.OrderedDict`, …), and those it evaluates itself. Calling
//! anything else is an error naming the global; nothing is ever executed.
//!
//! Objects live in an arena (`Vec<Node>`), referenced by index, so shared
//! references behave as in Python and a hostile, deeply nested pickle
//! cannot overflow the stack when dropped.

use super::source::SrcDtype;
use super::ImportError;
use memmap2::Mmap;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

/// A tensor as the pickle describes it: a view into a storage.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PickledTensor {
    pub dtype: SrcDtype,
    /// The storage's key: its data is `<archive>/data/<key>`.
    pub storage: String,
    /// Elements in the storage, as the pickle declares.
    pub storage_len: usize,
    /// Offset of the first element, in elements.
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

impl PickledTensor {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// One past the largest element index the view touches.
    fn extent(&self) -> Option<usize> {
        if self.len() == 0 {
            return Some(self.offset);
        }
        self.shape
            .iter()
            .zip(&self.stride)
            .try_fold(self.offset, |acc, (&n, &s)| (n - 1).checked_mul(s).and_then(|x| acc.checked_add(x)))
            .and_then(|last| last.checked_add(1))
    }

    fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for (&n, &s) in self.shape.iter().zip(&self.stride).rev() {
            if n != 1 && s != expected {
                return false;
            }
            expected *= n;
        }
        true
    }
}

/// An opened PyTorch zip checkpoint and the state dict chosen in it.
pub(crate) struct TorchCheckpoint {
    path: PathBuf,
    mmap: Mmap,
    /// Entry name → (offset of its data in the file, size in bytes).
    entries: HashMap<String, (usize, usize)>,
    /// The archive's folder, e.g. `archive/`.
    prefix: String,
    pub tensors: BTreeMap<String, PickledTensor>,
    /// Entries of the state dict that are not tensors.
    pub others: Vec<String>,
}

/// Largest `data.pkl` accepted (the official 2.7 GB checkpoint's is < 1 MB).
const MAX_PICKLE: usize = 256 << 20;

impl TorchCheckpoint {
    /// Opens `path` and takes its state dict: the dict under the first of
    /// `unwrap` found at the top level, else the top-level dict itself.
    pub fn open(path: &Path, unwrap: &[&str]) -> Result<Self, ImportError> {
        let file = File::open(path).map_err(|e| ImportError::io(path, e))?;
        // SAFETY: read-only map of a file we do not expect to change while
        // the import reads it (as every mmap-based weight loader assumes).
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ImportError::io(path, e))?;
        let entries = zip_entries(path, &mmap)?;
        let pickle_name = entries
            .keys()
            .filter(|name| name.ends_with("data.pkl") && name.matches('/').count() <= 1)
            .min_by_key(|name| name.len())
            .cloned()
            .ok_or_else(|| ImportError::NotACheckpoint {
                path: path.to_path_buf(),
                reason: "a zip archive without data.pkl: not a PyTorch checkpoint".into(),
            })?;
        let prefix = pickle_name.trim_end_matches("data.pkl").to_string();
        let (start, len) = entries[&pickle_name];
        if len > MAX_PICKLE {
            return Err(ImportError::BadPickle {
                path: path.to_path_buf(),
                reason: format!("data.pkl is {len} bytes, over the {MAX_PICKLE}-byte limit"),
            });
        }
        let program = &mmap[start..start + len];
        let mut machine = Machine::new(path, program);
        let root = machine.run()?;
        let dict = machine.state_dict(root, unwrap)?;
        let (tensors, others) = machine.collect(dict)?;
        let mut checkpoint = Self { path: path.to_path_buf(), mmap, entries, prefix, tensors: BTreeMap::new(), others };
        for (key, tensor) in &tensors {
            checkpoint.check(key, tensor)?;
        }
        checkpoint.tensors = tensors;
        Ok(checkpoint)
    }

    /// The storage bytes of a tensor's storage, bounds-checked.
    fn storage_bytes(&self, key: &str, tensor: &PickledTensor) -> Result<&[u8], ImportError> {
        let name = format!("{}data/{}", self.prefix, tensor.storage);
        let &(start, len) = self.entries.get(&name).ok_or_else(|| ImportError::Truncated {
            path: self.path.clone(),
            reason: format!("tensor `{key}`: its storage `{name}` is not in the archive"),
        })?;
        Ok(&self.mmap[start..start + len])
    }

    /// The view must lie within its storage, and the storage within its entry.
    fn check(&self, key: &str, tensor: &PickledTensor) -> Result<(), ImportError> {
        let bytes = self.storage_bytes(key, tensor)?;
        let size = tensor.dtype.size();
        let available = bytes.len() / size;
        let bad = |reason: String| ImportError::Truncated {
            path: self.path.clone(),
            reason: format!("tensor `{key}`: {reason}"),
        };
        if tensor.storage_len > available {
            return Err(bad(format!(
                "its storage `{}` should hold {} elements ({} bytes) but has {} bytes",
                tensor.storage,
                tensor.storage_len,
                tensor.storage_len * size,
                bytes.len()
            )));
        }
        match tensor.extent() {
            Some(end) if end <= tensor.storage_len.min(available) => Ok(()),
            _ => Err(bad(format!(
                "the view (offset {}, shape {:?}, stride {:?}) reaches past its storage of {} elements",
                tensor.offset, tensor.shape, tensor.stride, tensor.storage_len
            ))),
        }
    }

    /// The tensor's elements in row-major order, as little-endian bytes of
    /// its own dtype (strided views are gathered).
    pub fn raw(&self, key: &str) -> Result<Vec<u8>, ImportError> {
        let tensor =
            self.tensors.get(key).ok_or_else(|| ImportError::NoTensor { path: self.path.clone(), key: key.into() })?;
        let bytes = self.storage_bytes(key, tensor)?;
        let size = tensor.dtype.size();
        if tensor.is_contiguous() {
            let start = tensor.offset * size;
            return Ok(bytes[start..start + tensor.len() * size].to_vec());
        }
        let mut out = Vec::with_capacity(tensor.len() * size);
        let mut index = vec![0usize; tensor.shape.len()];
        for _ in 0..tensor.len() {
            let element = tensor.offset + index.iter().zip(&tensor.stride).map(|(i, s)| i * s).sum::<usize>();
            out.extend_from_slice(&bytes[element * size..(element + 1) * size]);
            // Next index, last axis fastest.
            for axis in (0..index.len()).rev() {
                index[axis] += 1;
                if index[axis] < tensor.shape[axis] {
                    break;
                }
                index[axis] = 0;
            }
        }
        Ok(out)
    }
}

/// The stored entries of a zip archive, located in the map.
fn zip_entries(path: &Path, mmap: &Mmap) -> Result<HashMap<String, (usize, usize)>, ImportError> {
    let damaged = |reason: String| ImportError::Truncated { path: path.to_path_buf(), reason };
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(&mmap[..]))
        .map_err(|e| damaged(format!("not a complete zip archive ({e}); an interrupted download?")))?;
    let mut entries = HashMap::new();
    for index in 0..archive.len() {
        let entry = archive.by_index_raw(index).map_err(|e| damaged(format!("zip entry {index}: {e}")))?;
        if entry.is_dir() {
            continue;
        }
        let name = entry.name().to_string();
        if entry.compression() != zip::CompressionMethod::Stored {
            // torch.save never compresses; refusing also rules out zip bombs.
            return Err(ImportError::BadPickle {
                path: path.to_path_buf(),
                reason: format!(
                    "entry `{name}` is compressed ({:?}); torch.save writes stored entries",
                    entry.compression()
                ),
            });
        }
        let start = entry.data_start().ok_or_else(|| damaged(format!("entry `{name}` has no data offset")))? as usize;
        let len = entry.size() as usize;
        if start.checked_add(len).is_none_or(|end| end > mmap.len()) {
            return Err(damaged(format!("entry `{name}` ({len} bytes) reaches past the end of the file")));
        }
        entries.insert(name, (start, len));
    }
    Ok(entries)
}

// ---------------------------------------------------------------------------
// the pickle machine

type Id = usize;

// Payloads of scalars appear only in Debug output (error messages).
#[allow(dead_code)]
#[derive(Debug, Clone)]
enum Node {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Id>),
    List(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Set(Vec<Id>),
    /// A reference to a Python global, not resolved; calling it is checked.
    Global {
        module: String,
        name: String,
    },
    Storage {
        dtype: SrcDtype,
        key: String,
        len: usize,
    },
    Tensor(PickledTensor),
}

#[derive(Debug, Clone, Copy)]
enum Slot {
    Mark,
    Value(Id),
}

struct Machine<'a> {
    path: &'a Path,
    program: &'a [u8],
    pos: usize,
    nodes: Vec<Node>,
    stack: Vec<Slot>,
    memo: HashMap<u64, Id>,
}

/// Most nested containers walked when collecting tensors.
const MAX_DEPTH: usize = 8;

impl<'a> Machine<'a> {
    fn new(path: &'a Path, program: &'a [u8]) -> Self {
        Self { path, program, pos: 0, nodes: Vec::new(), stack: Vec::new(), memo: HashMap::new() }
    }

    fn bad(&self, reason: impl Into<String>) -> ImportError {
        ImportError::BadPickle {
            path: self.path.to_path_buf(),
            reason: format!("{} (at byte {} of data.pkl)", reason.into(), self.pos),
        }
    }

    fn forbidden(&self, module: &str, name: &str) -> ImportError {
        ImportError::ForbiddenGlobal { path: self.path.to_path_buf(), global: format!("{module}.{name}") }
    }

    // --- reading -----------------------------------------------------------

    fn take(&mut self, n: usize) -> Result<&'a [u8], ImportError> {
        let end =
            self.pos.checked_add(n).filter(|&end| end <= self.program.len()).ok_or_else(|| ImportError::Truncated {
                path: self.path.to_path_buf(),
                reason: "data.pkl ends in the middle of an opcode".into(),
            })?;
        let bytes = &self.program[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, ImportError> {
        Ok(self.take(1)?[0])
    }

    fn uint(&mut self, n: usize) -> Result<u64, ImportError> {
        let bytes = self.take(n)?;
        let mut buf = [0u8; 8];
        buf[..n].copy_from_slice(bytes);
        Ok(u64::from_le_bytes(buf))
    }

    fn len(&mut self, n: usize) -> Result<usize, ImportError> {
        let len = self.uint(n)?;
        usize::try_from(len)
            .ok()
            .filter(|&len| len <= self.program.len())
            .ok_or_else(|| self.bad(format!("length {len} exceeds the pickle")))
    }

    fn line(&mut self) -> Result<&'a str, ImportError> {
        let rest = &self.program[self.pos..];
        let end = rest.iter().position(|&b| b == b'\n').ok_or_else(|| self.bad("unterminated text argument"))?;
        self.pos += end + 1;
        std::str::from_utf8(&rest[..end]).map_err(|_| self.bad("text argument is not UTF-8"))
    }

    fn string(&self, bytes: &[u8]) -> Result<String, ImportError> {
        String::from_utf8(bytes.to_vec()).map_err(|_| self.bad("string is not UTF-8"))
    }

    // --- the stack ---------------------------------------------------------

    fn alloc(&mut self, node: Node) -> Id {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    fn push(&mut self, node: Node) {
        let id = self.alloc(node);
        self.stack.push(Slot::Value(id));
    }

    fn pop(&mut self) -> Result<Id, ImportError> {
        match self.stack.pop() {
            Some(Slot::Value(id)) => Ok(id),
            Some(Slot::Mark) => Err(self.bad("unexpected mark")),
            None => Err(self.bad("stack underflow")),
        }
    }

    fn top(&self) -> Result<Id, ImportError> {
        match self.stack.last() {
            Some(Slot::Value(id)) => Ok(*id),
            _ => Err(self.bad("no object on the stack")),
        }
    }

    fn pop_mark(&mut self) -> Result<Vec<Id>, ImportError> {
        let mark =
            self.stack.iter().rposition(|s| matches!(s, Slot::Mark)).ok_or_else(|| self.bad("no mark on the stack"))?;
        let items = self.stack.split_off(mark + 1);
        self.stack.pop();
        Ok(items
            .into_iter()
            .map(|s| if let Slot::Value(id) = s { id } else { unreachable!("marks stop the split") })
            .collect())
    }

    fn memo_put(&mut self, index: u64) -> Result<(), ImportError> {
        let id = self.top()?;
        self.memo.insert(index, id);
        Ok(())
    }

    fn memo_get(&mut self, index: u64) -> Result<(), ImportError> {
        let id = *self.memo.get(&index).ok_or_else(|| self.bad(format!("memo entry {index} was never stored")))?;
        self.stack.push(Slot::Value(id));
        Ok(())
    }

    // --- containers --------------------------------------------------------

    fn append(&mut self, list: Id, items: Vec<Id>) -> Result<(), ImportError> {
        match &mut self.nodes[list] {
            Node::List(values) | Node::Set(values) => {
                values.extend(items);
                Ok(())
            }
            _ => Err(self.bad("APPEND to something that is not a list")),
        }
    }

    fn set_items(&mut self, dict: Id, items: Vec<Id>) -> Result<(), ImportError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.bad("odd number of items for a dict"));
        }
        match &mut self.nodes[dict] {
            Node::Dict(entries) => {
                entries.extend(items.chunks(2).map(|kv| (kv[0], kv[1])));
                Ok(())
            }
            _ => Err(self.bad("SETITEM on something that is not a dict")),
        }
    }

    // --- the interpreter ---------------------------------------------------

    fn run(&mut self) -> Result<Id, ImportError> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    let protocol = self.u8()?;
                    if protocol > 5 {
                        return Err(self.bad(format!("pickle protocol {protocol} is newer than 5")));
                    }
                }
                0x95 => {
                    self.take(8)?; // FRAME: a length hint
                }
                b'.' => return self.pop(),
                b'(' => self.stack.push(Slot::Mark),
                b'0' => {
                    self.stack.pop().ok_or_else(|| self.bad("POP on an empty stack"))?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let id = self.top()?;
                    self.stack.push(Slot::Value(id));
                }
                // constants and numbers
                b'N' => self.push(Node::None),
                0x88 => self.push(Node::Bool(true)),
                0x89 => self.push(Node::Bool(false)),
                b'J' => {
                    let v = self.uint(4)? as u32 as i32 as i64;
                    self.push(Node::Int(v));
                }
                b'K' => {
                    let v = self.uint(1)? as i64;
                    self.push(Node::Int(v));
                }
                b'M' => {
                    let v = self.uint(2)? as i64;
                    self.push(Node::Int(v));
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a { self.uint(1)? as usize } else { self.len(4)? };
                    let bytes = self.take(n)?;
                    let node = long(bytes).map_or(Node::Float(f64::NAN), Node::Int);
                    self.push(node);
                }
                b'G' => {
                    let bits = u64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes"));
                    self.push(Node::Float(f64::from_bits(bits)));
                }
                b'I' => {
                    let text = self.line()?;
                    let node = match text {
                        "00" => Node::Bool(false),
                        "01" => Node::Bool(true),
                        _ => Node::Int(text.parse().map_err(|_| self.bad(format!("bad INT `{text}`")))?),
                    };
                    self.push(node);
                }
                b'L' => {
                    let text = self.line()?.trim_end_matches('L');
                    let node = text.parse().map(Node::Int).unwrap_or(Node::Float(f64::NAN));
                    self.push(node);
                }
                b'F' => {
                    let text = self.line()?;
                    let v = text.parse().map_err(|_| self.bad(format!("bad FLOAT `{text}`")))?;
                    self.push(Node::Float(v));
                }
                // strings and bytes
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        0x8c => self.uint(1)? as usize,
                        b'X' => self.len(4)?,
                        _ => self.len(8)?,
                    };
                    let bytes = self.take(n)?;
                    let s = self.string(bytes)?;
                    self.push(Node::Str(s));
                }
                b'V' => {
                    let s = self.line()?.to_string();
                    self.push(Node::Str(s));
                }
                b'T' | b'U' => {
                    // Python 2 `str`: bytes, read as Latin-1 text.
                    let n = if op == b'U' { self.uint(1)? as usize } else { self.len(4)? };
                    let s = self.take(n)?.iter().map(|&b| b as char).collect();
                    self.push(Node::Str(s));
                }
                b'S' => {
                    let text = self.line()?;
                    let s = text.trim_matches(|c| c == '\'' || c == '"').to_string();
                    self.push(Node::Str(s));
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'C' => self.uint(1)? as usize,
                        b'B' => self.len(4)?,
                        _ => self.len(8)?,
                    };
                    let bytes = self.take(n)?.to_vec();
                    self.push(Node::Bytes(bytes));
                }
                // containers
                b')' => self.push(Node::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Node::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Node::Tuple(items));
                }
                b']' => self.push(Node::List(Vec::new())),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Node::List(items));
                }
                b'a' => {
                    let item = self.pop()?;
                    let list = self.top()?;
                    self.append(list, vec![item])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let list = self.top()?;
                    self.append(list, items)?;
                }
                b'}' => self.push(Node::Dict(Vec::new())),
                b'd' => {
                    let items = self.pop_mark()?;
                    let dict = self.alloc(Node::Dict(Vec::new()));
                    self.set_items(dict, items)?;
                    self.stack.push(Slot::Value(dict));
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    let dict = self.top()?;
                    self.set_items(dict, vec![key, value])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let dict = self.top()?;
                    self.set_items(dict, items)?;
                }
                0x8f => self.push(Node::Set(Vec::new())),
                0x90 => {
                    let items = self.pop_mark()?;
                    let set = self.top()?;
                    self.append(set, items)?;
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push(Node::Set(items));
                }
                // memo
                b'p' => {
                    let text = self.line()?;
                    let index = text.parse().map_err(|_| self.bad(format!("bad PUT `{text}`")))?;
                    self.memo_put(index)?;
                }
                b'q' => {
                    let index = self.uint(1)?;
                    self.memo_put(index)?;
                }
                b'r' => {
                    let index = self.uint(4)?;
                    self.memo_put(index)?;
                }
                0x94 => {
                    let index = self.memo.len() as u64;
                    self.memo_put(index)?;
                }
                b'g' => {
                    let text = self.line()?;
                    let index = text.parse().map_err(|_| self.bad(format!("bad GET `{text}`")))?;
                    self.memo_get(index)?;
                }
                b'h' => {
                    let index = self.uint(1)?;
                    self.memo_get(index)?;
                }
                b'j' => {
                    let index = self.uint(4)?;
                    self.memo_get(index)?;
                }
                // globals and calls: names are recorded, calls are checked
                b'c' => {
                    let module = self.line()?.to_string();
                    let name = self.line()?.to_string();
                    self.push(Node::Global { module, name });
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (&self.nodes[module], &self.nodes[name]) {
                        (Node::Str(module), Node::Str(name)) => {
                            let node = Node::Global { module: module.clone(), name: name.clone() };
                            self.push(node);
                        }
                        _ => return Err(self.bad("STACK_GLOBAL without two strings")),
                    }
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let result = self.call(callable, args)?;
                    self.stack.push(Slot::Value(result));
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let result = self.call(callable, args)?;
                    self.stack.push(Slot::Value(result));
                }
                b'i' => {
                    let module = self.line()?.to_string();
                    let name = self.line()?.to_string();
                    let items = self.pop_mark()?;
                    let callable = self.alloc(Node::Global { module, name });
                    let args = self.alloc(Node::Tuple(items));
                    let result = self.call(callable, args)?;
                    self.stack.push(Slot::Value(result));
                }
                b'o' => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return Err(self.bad("OBJ without a class"));
                    }
                    let callable = items.remove(0);
                    let args = self.alloc(Node::Tuple(items));
                    let result = self.call(callable, args)?;
                    self.stack.push(Slot::Value(result));
                }
                b'b' => {
                    let _state = self.pop()?;
                    let target = self.top()?;
                    // An OrderedDict's `_metadata`, a tensor's Python attributes:
                    // neither carries weights. Anything else could only be an
                    // object we refused to build.
                    if !matches!(self.nodes[target], Node::Dict(_) | Node::Tensor(_)) {
                        return Err(self.bad("BUILD on an object that is neither a dict nor a tensor"));
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let storage = self.storage(pid)?;
                    self.push(storage);
                }
                b'P' => return Err(self.bad("text persistent ids are not used by torch.save")),
                0x82..=0x84 => return Err(self.bad("extension-registry globals (EXT1/2/4) are not allowed")),
                0x97 | 0x98 => return Err(self.bad("out-of-band buffers are not allowed")),
                other => return Err(self.bad(format!("unknown opcode 0x{other:02x}"))),
            }
        }
    }

    /// `('storage', torch.XStorage, key, location, numel)` → a storage.
    fn storage(&mut self, pid: Id) -> Result<Node, ImportError> {
        let Node::Tuple(items) = &self.nodes[pid] else {
            return Err(self.bad("persistent id is not a tuple"));
        };
        let items = items.clone();
        let field = |i: usize| items.get(i).map(|&id| &self.nodes[id]);
        match (field(0), field(1), field(2), field(4)) {
            (Some(Node::Str(tag)), Some(Node::Global { module, name }), Some(Node::Str(key)), Some(Node::Int(len)))
                if tag == "storage" =>
            {
                if module != "torch" {
                    return Err(self.bad(format!("storage type `{module}.{name}`")));
                }
                let dtype = SrcDtype::from_storage(name)
                    .ok_or_else(|| self.bad(format!("unsupported storage type `torch.{name}`")))?;
                let len = usize::try_from(*len).map_err(|_| self.bad("negative storage size"))?;
                Ok(Node::Storage { dtype, key: key.clone(), len })
            }
            _ => Err(self.bad("persistent id is not ('storage', type, key, location, size)")),
        }
    }

    fn int(&self, id: Id, what: &str) -> Result<usize, ImportError> {
        match self.nodes[id] {
            Node::Int(v) if v >= 0 => Ok(v as usize),
            _ => Err(self.bad(format!("{what} is not a non-negative integer"))),
        }
    }

    fn ints(&self, id: Id, what: &str) -> Result<Vec<usize>, ImportError> {
        match &self.nodes[id] {
            Node::Tuple(items) | Node::List(items) => items.iter().map(|&i| self.int(i, what)).collect(),
            _ => Err(self.bad(format!("{what} is not a tuple"))),
        }
    }

    fn tuple(&self, id: Id) -> Result<Vec<Id>, ImportError> {
        match &self.nodes[id] {
            Node::Tuple(items) => Ok(items.clone()),
            _ => Err(self.bad("call arguments are not a tuple")),
        }
    }

    /// Evaluates the few calls a state dict needs; refuses every other.
    fn call(&mut self, callable: Id, args: Id) -> Result<Id, ImportError> {
        let (module, name) = match &self.nodes[callable] {
            Node::Global { module, name } => (module.clone(), name.clone()),
            _ => return Err(self.bad("call of an object that is not a global")),
        };
        let args = self.tuple(args)?;
        match (module.as_str(), name.as_str()) {
            ("collections", "OrderedDict") | ("builtins", "dict") | ("__builtin__", "dict") => {
                let dict = self.alloc(Node::Dict(Vec::new()));
                if let Some(&items) = args.first() {
                    let pairs = match &self.nodes[items] {
                        Node::List(pairs) | Node::Tuple(pairs) => pairs.clone(),
                        _ => return Err(self.bad("OrderedDict built from something that is not a list")),
                    };
                    for pair in pairs {
                        match &self.nodes[pair] {
                            Node::Tuple(kv) | Node::List(kv) if kv.len() == 2 => {
                                let kv = kv.clone();
                                self.set_items(dict, kv)?;
                            }
                            _ => return Err(self.bad("OrderedDict item is not a pair")),
                        }
                    }
                }
                Ok(dict)
            }
            ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
                if args.len() < 4 {
                    return Err(self.bad(format!("{name} with {} arguments", args.len())));
                }
                let (dtype, storage, storage_len) = match &self.nodes[args[0]] {
                    Node::Storage { dtype, key, len } => (*dtype, key.clone(), *len),
                    _ => return Err(self.bad(format!("{name}: first argument is not a storage"))),
                };
                let offset = self.int(args[1], "storage offset")?;
                let shape = self.ints(args[2], "tensor size")?;
                let stride = self.ints(args[3], "tensor stride")?;
                if shape.len() != stride.len() {
                    return Err(self.bad("tensor size and stride differ in length"));
                }
                if shape.iter().try_fold(1usize, |acc, &n| acc.checked_mul(n)).is_none() {
                    return Err(self.bad(format!("tensor size {shape:?} overflows")));
                }
                Ok(self.alloc(Node::Tensor(PickledTensor { dtype, storage, storage_len, offset, shape, stride })))
            }
            ("torch._utils", "_rebuild_parameter") | ("torch._utils", "_rebuild_parameter_with_state") => {
                match args.first() {
                    Some(&data) if matches!(self.nodes[data], Node::Tensor(_)) => Ok(data),
                    _ => Err(self.bad(format!("{name} without a tensor"))),
                }
            }
            ("torch._tensor", "_rebuild_from_type_v2") => {
                // (func, type, args, state): a tensor subclass; only plain
                // tensors and parameters are accepted.
                if args.len() < 3 {
                    return Err(self.bad("_rebuild_from_type_v2 with too few arguments"));
                }
                match &self.nodes[args[1]] {
                    Node::Global { module, name }
                        if matches!(
                            (module.as_str(), name.as_str()),
                            ("torch", "Tensor") | ("torch._tensor", "Tensor") | ("torch.nn.parameter", "Parameter")
                        ) => {}
                    Node::Global { module, name } => return Err(self.forbidden(module, name)),
                    _ => return Err(self.bad("_rebuild_from_type_v2: the type is not a global")),
                }
                self.call(args[0], args[2])
            }
            ("torch", "Size") => {
                let items = match args.first().map(|&a| &self.nodes[a]) {
                    Some(Node::Tuple(items) | Node::List(items)) => items.clone(),
                    None => Vec::new(),
                    _ => return Err(self.bad("torch.Size of something that is not a tuple")),
                };
                Ok(self.alloc(Node::Tuple(items)))
            }
            _ => Err(self.forbidden(&module, &name)),
        }
    }

    // --- results -----------------------------------------------------------

    fn dict_entries(&self, id: Id) -> Option<&[(Id, Id)]> {
        match &self.nodes[id] {
            Node::Dict(entries) => Some(entries),
            _ => None,
        }
    }

    fn key_text(&self, id: Id) -> String {
        match &self.nodes[id] {
            Node::Str(s) => s.clone(),
            Node::Int(v) => v.to_string(),
            other => format!("{other:?}"),
        }
    }

    /// The state dict: under the first of `unwrap` found at the top, else the root.
    fn state_dict(&self, root: Id, unwrap: &[&str]) -> Result<Id, ImportError> {
        let entries = self.dict_entries(root).ok_or_else(|| ImportError::NotACheckpoint {
            path: self.path.to_path_buf(),
            reason: "the pickle holds no dict (a whole pickled model rather than a state dict?)".into(),
        })?;
        for wanted in unwrap {
            if let Some(&(_, value)) =
                entries.iter().find(|(k, _)| matches!(&self.nodes[*k], Node::Str(s) if s == wanted))
            {
                if self.dict_entries(value).is_none() {
                    return Err(ImportError::NotACheckpoint {
                        path: self.path.to_path_buf(),
                        reason: format!("top-level `{wanted}` is not a dict of tensors"),
                    });
                }
                return Ok(value);
            }
        }
        Ok(root)
    }

    /// Tensors of a state dict by their (dotted) names, and the names of
    /// entries that are not tensors. Nested dicts are flattened as
    /// `outer.inner`.
    #[allow(clippy::type_complexity)]
    fn collect(&self, dict: Id) -> Result<(BTreeMap<String, PickledTensor>, Vec<String>), ImportError> {
        let mut tensors = BTreeMap::new();
        let mut others = Vec::new();
        let mut pending = vec![(dict, String::new(), 0usize)];
        while let Some((id, prefix, depth)) = pending.pop() {
            if depth > MAX_DEPTH {
                others.push(prefix);
                continue;
            }
            for &(k, v) in self.dict_entries(id).unwrap_or_default() {
                let name = format!("{prefix}{}", self.key_text(k));
                match &self.nodes[v] {
                    Node::Tensor(t) => {
                        tensors.insert(name, t.clone());
                    }
                    Node::Dict(_) => pending.push((v, format!("{name}."), depth + 1)),
                    _ => others.push(name),
                }
            }
        }
        others.sort();
        Ok((tensors, others))
    }
}

/// A little-endian two's-complement integer, if it fits in an i64.
fn long(bytes: &[u8]) -> Option<i64> {
    if bytes.is_empty() {
        return Some(0);
    }
    if bytes.len() > 8 {
        let sign = if bytes[bytes.len() - 1] & 0x80 != 0 { 0xff } else { 0 };
        if bytes[8..].iter().any(|&b| b != sign) {
            return None;
        }
    }
    let negative = bytes[bytes.len().min(8) - 1] & 0x80 != 0;
    let mut buf = [if negative { 0xff } else { 0 }; 8];
    let n = bytes.len().min(8);
    buf[..n].copy_from_slice(&bytes[..n]);
    Some(i64::from_le_bytes(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_decodes_twos_complement() {
        assert_eq!(long(&[]), Some(0));
        assert_eq!(long(&[0xff]), Some(-1));
        assert_eq!(long(&[0x00, 0x01]), Some(256));
        assert_eq!(long(&[0xff, 0x7f]), Some(32767));
        assert_eq!(long(&[0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01]), None);
    }

    #[test]
    fn strided_views_know_their_extent() {
        let t = PickledTensor {
            dtype: SrcDtype::F32,
            storage: "0".into(),
            storage_len: 12,
            offset: 2,
            shape: vec![2, 3],
            stride: vec![1, 2],
        };
        assert!(!t.is_contiguous());
        assert_eq!(t.extent(), Some(2 + 1 + 4 + 1));
        let c = PickledTensor { stride: vec![3, 1], ..t };
        assert!(c.is_contiguous());
    }

    fn run(program: &[u8]) -> Result<Id, ImportError> {
        Machine::new(Path::new("test.pkl"), program).run()
    }

    #[test]
    fn calling_an_arbitrary_global_is_refused() {
        // cposix\nsystem\n(S'echo hi'\ntR.
        let program = b"cposix\nsystem\n(S'echo hi'\ntR.";
        let error = run(program).unwrap_err();
        assert!(matches!(&error, ImportError::ForbiddenGlobal { global, .. } if global == "posix.system"), "{error}");
        // The same through STACK_GLOBAL (protocol 4) and NEWOBJ.
        let program = b"\x80\x04\x8c\x08builtins\x8c\x04exec\x93\x8c\x01x\x85\x81.";
        let error = run(program).unwrap_err();
        assert!(matches!(&error, ImportError::ForbiddenGlobal { global, .. } if global == "builtins.exec"), "{error}");
        // And through INST.
        let error = run(b"(S'ls'\nios\nsystem\n.").unwrap_err();
        assert!(matches!(&error, ImportError::ForbiddenGlobal { global, .. } if global == "os.system"), "{error}");
    }

    #[test]
    fn truncated_program_is_an_error() {
        let error = run(b"\x80\x02}q\x00(X\x05\x00\x00\x00ab").unwrap_err();
        assert!(matches!(error, ImportError::Truncated { .. }), "{error}");
    }

    #[test]
    fn hostile_lengths_do_not_allocate() {
        let error = run(b"X\xff\xff\xff\xff").unwrap_err();
        assert!(error.to_string().contains("exceeds"), "{error}");
    }
}
