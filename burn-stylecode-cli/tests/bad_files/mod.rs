//! Bad files for `bad_input.rs`, made in the test's own folder: broken
//! images, broken safetensors, a read-only folder.

use burn_stylecode::weights::safetensors::TensorFile;
use std::path::{Path, PathBuf};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// A tensor SigLIP loads (the first patch embedding), so its faults show in `encode`.
pub const SIGLIP_KEY: &str = "vision_model.embeddings.patch_embedding.weight";

/// A tensor SigLIP loads that is not the one its prefix is found by, so
/// that removing it leaves a missing tensor rather than no model.
pub const SIGLIP_OTHER_KEY: &str = "vision_model.post_layernorm.weight";

/// A PNG whose header claims `width`×`height`, with an empty IDAT: a reader
/// has its dimensions, and no pixels.
pub fn png_header(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    for (kind, data) in [(b"IHDR", ihdr.as_slice()), (b"IDAT", &[]), (b"IEND", &[])] {
        bytes.extend((data.len() as u32).to_be_bytes());
        let chunk = [kind.as_slice(), data].concat();
        bytes.extend(&chunk);
        bytes.extend(crc32(&chunk).to_be_bytes());
    }
    bytes
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// One tensor of a raw safetensors file: name, dtype name, shape, bytes.
pub type RawTensor = (String, &'static str, Vec<usize>, Vec<u8>);

/// The tensors of `path`, as stored (F32 here: the fixtures are F32).
pub fn raw_tensors(path: &Path) -> Vec<RawTensor> {
    let file = TensorFile::open(path).unwrap();
    file.keys()
        .map(|key| {
            let values = file.read_f32(key).unwrap();
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (key.to_string(), "F32", file.shape(key).unwrap().to_vec(), bytes)
        })
        .collect()
}

/// Writes `tensors` as safetensors, by hand, so that a header may hold what
/// no writer would produce; `duplicate` repeats that tensor's entry.
pub fn write_raw(path: &Path, tensors: &[RawTensor], duplicate: Option<&str>) {
    let mut entries = Vec::new();
    let mut data: Vec<u8> = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let entry = format!(
            "{}:{{\"dtype\":\"{dtype}\",\"shape\":{shape:?},\"data_offsets\":[{},{}]}}",
            serde_json::to_string(name).unwrap(),
            data.len(),
            data.len() + bytes.len()
        );
        if duplicate == Some(name.as_str()) {
            entries.push(entry.clone());
        }
        entries.push(entry);
        data.extend(bytes);
    }
    let header = format!("{{{}}}", entries.join(","));
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend(header.as_bytes());
    file.extend(data);
    std::fs::write(path, file).unwrap();
}

/// Rewrites the safetensors file `path` with `edit` applied to its tensors.
pub fn edit_tensors(path: &Path, edit: impl FnOnce(&mut Vec<RawTensor>), duplicate: Option<&str>) {
    let mut tensors = raw_tensors(path);
    edit(&mut tensors);
    write_raw(path, &tensors, duplicate);
}

/// The tensor `key` of `tensors`.
pub fn tensor<'a>(tensors: &'a mut [RawTensor], key: &str) -> &'a mut RawTensor {
    tensors.iter_mut().find(|t| t.0 == key).unwrap_or_else(|| panic!("no `{key}`"))
}

/// A read-only folder that root cannot write to either. Tests run as root
/// here and in CI, where `chmod` stops nothing. Best: a read-only tmpfs
/// mounted over an empty folder (unmounted on drop). Where mounting is not
/// allowed (no CAP_SYS_ADMIN), the folder is a link to `/sys/kernel`, where
/// root can create neither files nor folders; the fallback is checked to be
/// unwritable, so the cases still fail if it is not.
pub struct ReadOnlyDir {
    pub path: PathBuf,
    /// Whether `path` is our own mount (then it must stay empty).
    pub mounted: bool,
}

/// What the OS says when writing into the read-only folder: "Read-only file
/// system" on the tmpfs; sysfs answers per operation (EACCES, EPERM), so
/// then only the path is required.
pub fn read_only_reason() -> &'static str {
    match READ_ONLY_MOUNTED.get() {
        Some(false) => "",
        _ => "Read-only file system",
    }
}

static READ_ONLY_MOUNTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

impl ReadOnlyDir {
    pub fn mount(path: PathBuf) -> Self {
        std::fs::create_dir_all(&path).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "ro,size=64k", "tmpfs"])
            .arg(&path)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !mounted {
            std::fs::remove_dir(&path).unwrap();
            std::os::unix::fs::symlink("/sys/kernel", &path).unwrap();
            let probe = path.join("stylecode-probe");
            assert!(
                std::fs::write(&probe, b"x").is_err() && std::fs::create_dir(&probe).is_err(),
                "no read-only folder: mounting a tmpfs is not allowed and {} is writable",
                path.display()
            );
        }
        READ_ONLY_MOUNTED.get_or_init(|| mounted);
        Self { path, mounted }
    }
}

impl Drop for ReadOnlyDir {
    fn drop(&mut self) {
        if self.mounted {
            let _ = std::process::Command::new("umount").arg(&self.path).status();
        }
    }
}
